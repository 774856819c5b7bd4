use super::*;
use formats::gguf::GgufValue;

/// A source that only knows tensor dims (the collector needs nothing else).
struct Dims(Vec<(String, Vec<u64>)>);

impl WeightSource for Dims {
    fn metadata(&self) -> &[(String, GgufValue)] {
        &[]
    }
    fn get(&self, _key: &str) -> Option<&GgufValue> {
        None
    }
    fn tensor_dims(&self, name: &str) -> Option<Vec<u64>> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
    }
    fn tensor_bytes(&self, _name: &str) -> Option<u64> {
        None
    }
    fn tensor_names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.clone()).collect()
    }
    fn load_f32(&self, name: &str) -> crate::error::Result<Vec<f32>> {
        Err(self.missing(name))
    }
    fn description(&self) -> String {
        "test dims".into()
    }
}

fn source() -> Dims {
    Dims(vec![
        ("blk.0.attn_q.weight".into(), vec![3, 4]),
        ("blk.0.attn_k_b.weight".into(), vec![2, 5, 3]),
        ("blk.1.ffn_up_exps.weight".into(), vec![3, 6, 4]),
        ("output.weight".into(), vec![3, 10]),
        ("token_embd.weight".into(), vec![3, 10]),
    ])
}

fn mat(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f32) -> Mat {
    let mut m = Mat::zeros(rows, cols);
    for r in 0..rows {
        for c in 0..cols {
            m.data[r * cols + c] = f(r, c);
        }
    }
    m
}

#[test]
fn dense_sums_squares_and_counts_tokens() {
    let src = source();
    let c = ImatrixCollector::new(&src, CollectorOptions::default());
    let x = mat(20, 3, |r, c| (r + c) as f32);
    c.on_matmul(0, "blk.0.attn_q.weight", &x);
    c.on_matmul(0, "blk.0.attn_q.weight", &x);
    let im = c.to_imatrix(vec!["t".into()], 10).unwrap();
    let e = &im.entries["blk.0.attn_q.weight"];
    for col in 0..3 {
        let want: f32 = (0..20).map(|r| ((r + col) * (r + col)) as f32).sum::<f32>() * 2.0;
        assert_eq!(e.in_sum2[col], want);
    }
    assert_eq!(e.counts, vec![40.0]);
    assert_eq!(im.chunk_count, 4, "⌊40/10⌋");
    assert_eq!(im.chunk_size, 10);
}

#[test]
fn small_batches_non_blk_and_tied_output_are_skipped() {
    let src = source();
    let c = ImatrixCollector::new(&src, CollectorOptions::default());
    c.on_matmul(0, "blk.0.attn_q.weight", &mat(15, 3, |_, _| 1.0));
    c.on_matmul(2, "output.weight", &mat(20, 3, |_, _| 1.0));
    c.on_matmul(2, "token_embd.weight", &mat(20, 3, |_, _| 1.0));
    assert!(c.to_imatrix(vec![], 1).unwrap().entries.is_empty());

    // --process-output takes output.weight (never the tied token_embd); the rule can be checked
    // against llama's batch instead of the call's rows.
    let c = ImatrixCollector::new(
        &src,
        CollectorOptions {
            process_output: true,
            batch_rows: Some(128),
        },
    );
    c.on_matmul(2, "output.weight", &mat(3, 3, |_, _| 1.0));
    c.on_matmul(2, "token_embd.weight", &mat(20, 3, |_, _| 1.0));
    let im = c.to_imatrix(vec![], 1).unwrap();
    assert_eq!(im.entries.keys().collect::<Vec<_>>(), ["output.weight"]);
    assert_eq!(im.entries["output.weight"].counts, vec![3.0]);
}

#[test]
fn three_d_dense_weight_is_split_into_slices_with_one_count() {
    let src = source();
    let c = ImatrixCollector::new(&src, CollectorOptions::default());
    // [T, H·ncols] with H = 3 slices of 2 columns.
    let x = mat(16, 6, |r, c| if c / 2 == 1 { 2.0 } else { (r % 2) as f32 });
    c.on_matmul(0, "blk.0.attn_k_b.weight", &x);
    let e = &c.to_imatrix(vec![], 16).unwrap().entries["blk.0.attn_k_b.weight"];
    assert_eq!(e.in_sum2, vec![8.0, 8.0, 64.0, 64.0, 8.0, 8.0]);
    assert_eq!(e.counts, vec![16.0], "one count += tokens");
}

#[test]
fn experts_get_their_own_values_and_counts() {
    let src = source();
    let c = ImatrixCollector::new(&src, CollectorOptions::default());
    // MoE matmuls are always collected, even with few rows.
    c.on_expert_matmul(
        1,
        "blk.1.ffn_up_exps.weight",
        2,
        &mat(2, 3, |_, c| c as f32),
    );
    c.on_expert_matmul(1, "blk.1.ffn_up_exps.weight", 0, &mat(1, 3, |_, _| 3.0));
    let im = c.to_imatrix(vec![], 1).unwrap();
    let e = &im.entries["blk.1.ffn_up_exps.weight"];
    assert_eq!(e.counts, vec![1.0, 0.0, 2.0, 0.0]);
    assert_eq!(
        e.in_sum2,
        vec![9.0, 9.0, 9.0, 0.0, 0.0, 0.0, 0.0, 2.0, 8.0, 0.0, 0.0, 0.0]
    );
    let cov = coverage(&im);
    assert_eq!(
        cov,
        vec![LayerCoverage {
            layer: 1,
            n_expert: 4,
            unused: vec![1, 3]
        }]
    );
}

#[test]
fn non_finite_and_shape_errors_are_reported_once() {
    let src = source();
    let c = ImatrixCollector::new(&src, CollectorOptions::default());
    c.on_matmul(
        0,
        "blk.0.attn_q.weight",
        &mat(16, 3, |_, c| if c == 1 { f32::NAN } else { 1.0 }),
    );
    c.on_matmul(0, "blk.0.attn_q.weight", &mat(16, 4, |_, _| 1.0));
    let e = c.to_imatrix(vec![], 1).unwrap_err().to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("column 1"),
        "{e}"
    );

    let c = ImatrixCollector::new(&src, CollectorOptions::default());
    c.on_matmul(0, "blk.0.attn_q.weight", &mat(16, 4, |_, _| 1.0));
    let e = c.to_imatrix(vec![], 1).unwrap_err().to_string();
    assert!(
        e.starts_with("blk.0.attn_q.weight: activation rows of 4 values"),
        "{e}"
    );

    let c = ImatrixCollector::new(&src, CollectorOptions::default());
    c.on_expert_matmul(1, "blk.1.ffn_up_exps.weight", 9, &mat(1, 3, |_, _| 1.0));
    let e = c.to_imatrix(vec![], 1).unwrap_err().to_string();
    assert!(e.contains("expert 9 of a stack of 4"), "{e}");
}

#[test]
fn parallel_calls_agree_with_serial_ones() {
    let src = Dims(vec![("blk.0.ffn_down.weight".into(), vec![1500, 8])]);
    let x = mat(64, 1500, |r, c| ((r * 31 + c * 7) % 13) as f32 * 0.37 - 2.0);
    let serial = ImatrixCollector::new(&src, CollectorOptions::default());
    for _ in 0..8 {
        serial.on_matmul(0, "blk.0.ffn_down.weight", &x);
    }
    let par = ImatrixCollector::new(&src, CollectorOptions::default());
    (0..8)
        .into_par_iter()
        .for_each(|_| par.on_matmul(0, "blk.0.ffn_down.weight", &x));
    let (a, b) = (
        serial.to_imatrix(vec![], 1).unwrap(),
        par.to_imatrix(vec![], 1).unwrap(),
    );
    assert_eq!(a, b);
    assert_eq!(a.entries["blk.0.ffn_down.weight"].counts, vec![512.0]);
}

#[test]
fn plan_follows_llama_imatrix() {
    let tokens: Vec<u32> = (10..60).collect();
    let p = ImatrixPlan::new(&tokens, 16, None, 0, Some(1)).unwrap();
    assert_eq!((p.n_chunk, p.tokens.len()), (3, 48));
    let s = p.sequences();
    assert_eq!((s[1][0], s[1][1]), (1, 27));
    assert_eq!(p.scored_per_chunk(), 7);
    assert_eq!(
        p.llama_batch_rows(),
        48,
        "all three chunks in one 2048 batch"
    );

    let p = ImatrixPlan::new(&tokens, 16, None, 1, None).unwrap();
    assert_eq!((p.n_chunk, p.tokens[0]), (2, 26));
    let e = ImatrixPlan::new(&tokens, 16, None, 2, None).unwrap_err();
    assert!(e.to_string().contains("after skipping 2 chunks"), "{e}");
    let e = ImatrixPlan::new(&tokens, 26, None, 0, None).unwrap_err();
    assert!(
        e.to_string().contains("only 50 tokens") && e.to_string().contains("at least 52"),
        "{e}"
    );
    let p = ImatrixPlan::new(&tokens, 16, Some(2), 0, None).unwrap();
    assert_eq!(p.n_chunk, 2);
    assert!(ImatrixPlan::new(&tokens, 16, Some(0), 0, None).is_err());
    assert!(ImatrixPlan::new(&tokens, 0, None, 0, None).is_err());

    let long: Vec<u32> = vec![5; 4096];
    let p = ImatrixPlan::new(&long, 512, None, 0, None).unwrap();
    assert_eq!(p.llama_batch_rows(), 512, "physical batch of 512");
}

#[test]
fn stats_follow_show_statistics() {
    let mut entries = BTreeMap::new();
    entries.insert(
        "blk.0.ffn_down.weight".to_string(),
        ImatrixEntry {
            in_sum2: vec![2.0, 4.0, 0.0, 10.0],
            counts: vec![2.0],
            ncall: None,
        },
    );
    entries.insert(
        "blk.1.ffn_down.weight".to_string(),
        ImatrixEntry {
            in_sum2: vec![2.0, 4.0, 0.0, 10.0],
            counts: vec![4.0],
            ncall: None,
        },
    );
    entries.insert(
        "blk.1.ffn_up_exps.weight".to_string(),
        ImatrixEntry {
            in_sum2: vec![1.0, 1.0, 5.0, 5.0],
            counts: vec![0.0, 1.0],
            ncall: None,
        },
    );
    let im = Imatrix {
        entries,
        datasets: vec![],
        chunk_count: 1,
        chunk_size: 4,
        format: ImatrixFormat::Gguf,
    };
    let (ts, layers) = stats::compute(&im);
    assert_eq!(ts.len(), 3);
    // Sorted by short name, then Σ(Act²) descending.
    assert_eq!(ts[0].tensor, "blk.0.ffn_down.weight");
    assert_eq!(ts[1].tensor, "blk.1.ffn_down.weight");
    assert_eq!(ts[2].tensor, "blk.1.ffn_up_exps.weight");
    let t = &ts[0];
    assert_eq!((t.total, t.min, t.max, t.mean), (8.0, 0.0, 5.0, 2.0));
    assert_eq!(t.elements, 4);
    assert_eq!(t.active, 0.75);
    assert_eq!(t.zd, 0.25, "one column above μ+σ");
    assert_eq!(t.cossim, 0.0, "no block −1");
    assert!((ts[1].cossim - 1.0).abs() < 1e-6, "same direction");
    // Zero-count expert left out: N = 2, both 5.
    assert_eq!((ts[2].elements, ts[2].total), (2, 10.0));
    assert!((ts[2].entropy - 1.0).abs() < 1e-6);
    assert_eq!(layers.len(), 2);
    let out = stats::render("x.gguf", &ts, &layers);
    assert!(out.contains("ffn_down"), "{out}");
    assert!(out.contains("Computing weighted average statistics per layer (2 layers)"));
}

fn entry(in_sum2: Vec<f32>, counts: Vec<f32>) -> ImatrixEntry {
    ImatrixEntry {
        in_sum2,
        counts,
        ncall: None,
    }
}

fn imatrix(entries: Vec<(&str, ImatrixEntry)>) -> Imatrix {
    let mut im = Imatrix::empty(1);
    im.entries = entries
        .into_iter()
        .map(|(n, e)| (n.to_string(), e))
        .collect();
    im
}

#[test]
fn seeded_sums_continue_in_llama_imatrix_order() {
    let src = source();
    let x = mat(16, 3, |r, c| (r * 3 + c) as f32 * 0.1);
    // Collected in one collector: x then x again.
    let one = ImatrixCollector::new(&src, CollectorOptions::default());
    one.on_matmul(0, "blk.0.attn_q.weight", &x);
    let first = one.to_imatrix(vec![], 16).unwrap();
    one.on_matmul(0, "blk.0.attn_q.weight", &x);
    let both = one.to_imatrix(vec![], 16).unwrap();
    // The first half saved, then seeded into a new collector: bit-identical continuation.
    let two = ImatrixCollector::new(&src, CollectorOptions::default());
    two.seed(&first).unwrap();
    two.on_matmul(0, "blk.0.attn_q.weight", &x);
    assert_eq!(two.to_imatrix(vec![], 16).unwrap(), both);

    // One (legacy-style) count of an expert stack is broadcast to every expert; entries the run
    // never touches are kept.
    let c = ImatrixCollector::new(&src, CollectorOptions::default());
    c.seed(&imatrix(vec![
        ("blk.1.ffn_up_exps.weight", entry(vec![1.0; 12], vec![5.0])),
        ("output.weight", entry(vec![2.0; 3], vec![7.0])),
    ]))
    .unwrap();
    c.on_expert_matmul(1, "blk.1.ffn_up_exps.weight", 2, &mat(1, 3, |_, _| 2.0));
    let im = c.to_imatrix(vec![], 1).unwrap();
    let e = &im.entries["blk.1.ffn_up_exps.weight"];
    assert_eq!(e.counts, vec![5.0, 5.0, 6.0, 5.0]);
    assert_eq!(&e.in_sum2[6..9], &[5.0, 5.0, 5.0]);
    assert_eq!(im.entries["output.weight"].counts, vec![7.0]);
    assert_eq!(im.chunk_count, 7);
}

#[test]
fn an_imatrix_of_another_model_is_named() {
    let src = source();
    let cases = [
        (
            imatrix(vec![(
                "blk.9.attn_q.weight",
                entry(vec![1.0; 3], vec![1.0]),
            )]),
            "blk.9.attn_q.weight: the model has no such tensor",
        ),
        (
            imatrix(vec![(
                "blk.0.attn_q.weight",
                entry(vec![1.0; 4], vec![1.0]),
            )]),
            "blk.0.attn_q.weight: 4 values, but the model's tensor [3, 4] takes 3",
        ),
        (
            imatrix(vec![(
                "blk.1.ffn_up_exps.weight",
                entry(vec![1.0; 12], vec![1.0, 2.0]),
            )]),
            "2 counts, but the model's tensor [3, 6, 4] has 4 experts",
        ),
        (
            imatrix(vec![(
                "blk.0.attn_k_b.weight",
                entry(vec![1.0; 6], vec![1.0, 2.0, 1.0]),
            )]),
            "3 counts, but the model's tensor [2, 5, 3] has one count",
        ),
    ];
    for (im, want) in cases {
        let e = check_imatrix(&src, &im).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("another model"), "{e}");
        let c = ImatrixCollector::new(&src, CollectorOptions::default());
        assert!(c.seed(&im).is_err());
    }
    // Equal per-head counts of a dense 3-D weight (older files) are one count.
    let ok = imatrix(vec![(
        "blk.0.attn_k_b.weight",
        entry(vec![1.0; 6], vec![4.0, 4.0, 4.0]),
    )]);
    let c = ImatrixCollector::new(&src, CollectorOptions::default());
    c.seed(&ok).unwrap();
    assert_eq!(
        c.to_imatrix(vec![], 1).unwrap().entries["blk.0.attn_k_b.weight"].counts,
        vec![4.0]
    );
}

#[test]
fn chunk_groups_respect_memory_and_checkpoints() {
    assert_eq!(chunk_groups(5, usize::MAX, None, 0), vec![0..5]);
    assert_eq!(chunk_groups(5, 2, None, 0), vec![0..2, 2..4, 4..5]);
    assert_eq!(
        chunk_groups(5, usize::MAX, Some(2), 0),
        vec![0..2, 2..4, 4..5]
    );
    // The smaller bound wins, and checkpoints stay on multiples of N.
    assert_eq!(chunk_groups(6, 3, Some(2), 0), vec![0..2, 2..4, 4..6]);
    assert_eq!(chunk_groups(6, 2, Some(3), 0), vec![0..2, 2..3, 3..5, 5..6]);
    // 3 chunks already in the --in-file inputs: checkpoints at 4, 6, 8 chunks in all.
    assert_eq!(
        chunk_groups(6, usize::MAX, Some(2), 3),
        vec![0..1, 1..3, 3..5, 5..6]
    );
    assert!(chunk_groups(0, 2, Some(2), 0).is_empty());
}

#[test]
fn non_finite_sums_name_tensor_expert_and_chunks() {
    let e = CalibrateError::NonFinite {
        tensor: "blk.3.ffn_down_exps.weight".into(),
        expert: Some(7),
        column: 5,
        chunks: Some(10..12),
    }
    .to_string();
    assert!(
        e.contains("blk.3.ffn_down_exps.weight expert 7 (column 5) in chunks 10..12"),
        "{e}"
    );
    // Sums that overflow f32 (each square finite) are caught at the call that overflows.
    let src = source();
    let c = ImatrixCollector::new(&src, CollectorOptions::default());
    let big = mat(1, 3, |_, c| if c == 2 { 1.5e19 } else { 1.0 });
    c.on_expert_matmul(1, "blk.1.ffn_up_exps.weight", 3, &big);
    assert!(c.take_error().is_none(), "2.25e38 is finite");
    c.on_expert_matmul(1, "blk.1.ffn_up_exps.weight", 3, &big);
    let e = c.take_error().unwrap().to_string();
    assert!(
        e.contains("blk.1.ffn_up_exps.weight expert 3 (column 2)"),
        "{e}"
    );
}
