use super::*;

fn sample() -> Imatrix {
    let mut entries = BTreeMap::new();
    entries.insert(
        "blk.0.attn_q.weight".to_owned(),
        ImatrixEntry {
            in_sum2: vec![1.0, 2.0, 3.0, 4.0],
            counts: vec![4.0],
            ncall: None,
        },
    );
    entries.insert(
        "blk.1.ffn_down_exps.weight".to_owned(),
        ImatrixEntry {
            // 3 experts × 2 columns; expert 1 never used.
            in_sum2: vec![2.0, 6.0, 0.0, 0.0, 9.0, 3.0],
            counts: vec![2.0, 0.0, 3.0],
            ncall: None,
        },
    );
    entries.insert(
        "blk.2.unused.weight".to_owned(),
        ImatrixEntry {
            in_sum2: vec![0.0, 0.0],
            counts: vec![0.0],
            ncall: None,
        },
    );
    Imatrix {
        entries,
        datasets: vec!["a.txt".into(), "calibration.txt".into()],
        chunk_count: 2,
        chunk_size: 4,
        format: ImatrixFormat::Gguf,
    }
}

#[test]
fn gguf_weights_divide_per_slice_and_default_to_one() {
    let m = sample();
    assert_eq!(
        m.weights("blk.1.ffn_down_exps.weight").unwrap(),
        vec![1.0, 3.0, 1.0, 1.0, 3.0, 1.0]
    );
    assert_eq!(
        m.weights("blk.0.attn_q.weight").unwrap(),
        vec![0.25, 0.5, 0.75, 1.0]
    );
    assert_eq!(m.weights("missing"), None);
}

#[test]
fn legacy_weights_divide_by_ncall() {
    let e = ImatrixEntry {
        in_sum2: vec![4.0, 8.0],
        counts: vec![],
        ncall: Some(2),
    };
    assert_eq!(e.weights(), vec![2.0, 4.0]);
    let e = ImatrixEntry {
        ncall: Some(0),
        ..e
    };
    assert_eq!(e.weights(), vec![4.0, 8.0]);
}

#[test]
fn gguf_round_trip_is_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i.gguf");
    let m = sample();
    m.save_gguf(&p).unwrap();
    let back = Imatrix::load(&p).unwrap();
    assert_eq!(back, m);
    // Shapes as llama-imatrix writes them.
    let g = crate::gguf::GgufFile::open(&p).unwrap();
    assert_eq!(
        g.tensor("blk.0.attn_q.weight.in_sum2").unwrap().dims,
        vec![4]
    );
    assert_eq!(
        g.tensor("blk.0.attn_q.weight.counts").unwrap().dims,
        vec![1]
    );
    assert_eq!(
        g.tensor("blk.1.ffn_down_exps.weight.in_sum2").unwrap().dims,
        vec![2, 3]
    );
    assert_eq!(
        g.tensor("blk.1.ffn_down_exps.weight.counts").unwrap().dims,
        vec![1, 3]
    );
    assert_eq!(g.metadata()[0].0, "general.type");
}

#[test]
fn legacy_conversion_follows_save_imatrix_legacy() {
    let l = sample().to_legacy().unwrap();
    assert_eq!(l.format, ImatrixFormat::Legacy);
    // all-zero entry dropped
    assert_eq!(l.entries.len(), 2);
    // max count 3, chunk 4 → ncall 1; zero-count slice stores 1·ncall
    let e = &l.entries["blk.1.ffn_down_exps.weight"];
    assert_eq!(e.ncall, Some(1));
    assert_eq!(e.in_sum2, vec![1.0, 3.0, 1.0, 1.0, 3.0, 1.0]);
    assert_eq!(l.datasets, vec!["calibration.txt".to_owned()]);
    // the weights survive the conversion
    assert_eq!(
        e.weights(),
        sample().weights("blk.1.ffn_down_exps.weight").unwrap()
    );
}

#[test]
fn dat_round_trip_is_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i.dat");
    let l = sample().to_legacy().unwrap();
    l.save_dat(&p).unwrap();
    let back = Imatrix::load(&p).unwrap();
    assert_eq!(back, l);
    // and writing it again gives the same bytes
    let p2 = dir.path().join("j.dat");
    back.save_dat(&p2).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&p2).unwrap());
}

#[test]
fn dat_without_trailer_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i.dat");
    let mut b = Vec::new();
    b.extend_from_slice(&1i32.to_le_bytes());
    b.extend_from_slice(&3i32.to_le_bytes());
    b.extend_from_slice(b"abc");
    b.extend_from_slice(&5i32.to_le_bytes());
    b.extend_from_slice(&1i32.to_le_bytes());
    b.extend_from_slice(&2.5f32.to_le_bytes());
    std::fs::write(&p, b).unwrap();
    let m = Imatrix::load(&p).unwrap();
    assert_eq!(m.entries["abc"].ncall, Some(5));
    assert_eq!(m.chunk_count, 0);
    assert!(m.datasets.is_empty());
}

#[test]
fn legacy_to_gguf_follows_llama_imatrix_in_file() {
    let l = sample().to_legacy().unwrap();
    let g = l.to_gguf(4).unwrap();
    let e = &g.entries["blk.1.ffn_down_exps.weight"];
    assert_eq!(e.counts, vec![4.0]);
    assert_eq!(e.in_sum2, vec![4.0, 12.0, 4.0, 4.0, 12.0, 4.0]);
    assert_eq!(g.chunk_count, 1);
    assert!(l.to_gguf(0).is_err());
}

#[test]
fn add_follows_llama_imatrix_load_imatrix() {
    let mut m = Imatrix::empty(4);
    m.add(&sample()).unwrap();
    // 0 + a is a: the first input comes through unchanged (counts rounded).
    assert_eq!(m.entries, sample().entries);
    assert_eq!(m.chunk_count, 1, "⌊4/4⌋");
    m.add(&sample()).unwrap();
    let e = &m.entries["blk.1.ffn_down_exps.weight"];
    assert_eq!(e.in_sum2, vec![4.0, 12.0, 0.0, 0.0, 18.0, 6.0]);
    assert_eq!(e.counts, vec![4.0, 0.0, 6.0]);
    assert_eq!(m.entries["blk.0.attn_q.weight"].counts, vec![8.0]);
    assert_eq!(m.chunk_count, 2);
    assert_eq!(m.datasets.len(), 4, "datasets appended");

    // A legacy input: value·chunk_size, ncall·chunk_size added to every expert's count.
    let l = sample().to_legacy().unwrap();
    let mut g = Imatrix::empty(4);
    g.add(&sample()).unwrap();
    g.add(&l).unwrap();
    let e = &g.entries["blk.1.ffn_down_exps.weight"];
    assert_eq!(e.counts, vec![6.0, 4.0, 7.0]);
    assert_eq!(e.in_sum2, vec![6.0, 18.0, 4.0, 4.0, 21.0, 7.0]);
    assert_eq!(
        g.datasets.last().map(String::as_str),
        Some("calibration.txt")
    );
    // The other order: the one count held is broadcast over the experts first.
    let mut h = Imatrix::empty(4);
    h.add(&l).unwrap();
    h.add(&sample()).unwrap();
    assert_eq!(h.entries["blk.1.ffn_down_exps.weight"].counts, e.counts);
    assert_eq!(h.entries["blk.1.ffn_down_exps.weight"].in_sum2, e.in_sum2);
}

#[test]
fn add_refuses_another_model_and_overflow() {
    let mut m = Imatrix::empty(4);
    m.add(&sample()).unwrap();
    let mut other = sample();
    other
        .entries
        .get_mut("blk.0.attn_q.weight")
        .unwrap()
        .in_sum2
        .push(1.0);
    let e = m.add(&other).unwrap_err().to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("5 values"),
        "{e}"
    );
    let mut other = sample();
    other
        .entries
        .get_mut("blk.1.ffn_down_exps.weight")
        .unwrap()
        .counts = vec![1.0, 1.0];
    let e = m.add(&other).unwrap_err().to_string();
    assert!(e.contains("2 counts") && e.contains("3"), "{e}");
    let mut big = sample();
    big.entries.get_mut("blk.0.attn_q.weight").unwrap().in_sum2[0] = f32::MAX;
    let mut m = Imatrix::empty(4);
    m.add(&big).unwrap();
    let e = m.add(&big).unwrap_err().to_string();
    assert!(
        e.contains("non-finite") && e.contains("blk.0.attn_q.weight"),
        "{e}"
    );
    assert!(Imatrix::empty(0).add(&sample()).is_err());
    // Absurd counts from a file saturate instead of overflowing (a panic in debug builds).
    let mut huge = sample();
    huge.entries.get_mut("blk.0.attn_q.weight").unwrap().counts = vec![f32::MAX];
    let mut m = Imatrix::empty(4);
    m.add(&huge).unwrap();
    m.add(&huge).unwrap();
    assert_eq!(
        m.entries["blk.0.attn_q.weight"].counts,
        vec![i64::MAX as f32]
    );
}
