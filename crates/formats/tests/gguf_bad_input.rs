//! Every malformed GGUF case of `fixtures::bad::gguf` is rejected by `GgufFile::open` with a
//! one-line error naming the file and the problem; the writer never leaves a final file behind
//! when it does not finish.

use formats::ggml_type::GgmlType;
use formats::gguf::{GgufFile, GgufWriter, TensorDecl};

fn check(name: &str) {
    let cases = fixtures::bad::gguf::cases();
    let case = cases
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no bad gguf case named {name}"));
    let dir = tempfile::tempdir().unwrap();
    let path = case.materialize(dir.path()).unwrap();
    let err = match GgufFile::open(&path) {
        Ok(_) => panic!("{name}: opened without error"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&path.display().to_string()),
        "{name}: error does not name the file: {err}"
    );
    assert!(
        err.contains(case.expect),
        "{name}: error {err:?} does not contain {:?}",
        case.expect
    );
    assert!(!err.contains('\n'), "{name}: multi-line error: {err}");
}

macro_rules! bad_cases {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { check(stringify!($name)); })*

        /// Every case in the registry has a test here, and vice versa.
        #[test]
        fn every_case_is_tested() {
            let mut listed = vec![$(stringify!($name)),*];
            let mut registry: Vec<_> = fixtures::bad::gguf::cases().iter().map(|c| c.name).collect();
            listed.sort_unstable();
            registry.sort_unstable();
            assert_eq!(listed, registry);
        }
    };
}

bad_cases!(
    bad_magic,
    unsupported_version,
    newer_version,
    byte_swapped_version,
    truncated_header,
    truncated_metadata,
    n_tensors_impossible,
    n_kv_negative,
    string_past_end_of_file,
    string_too_long,
    string_not_utf8,
    array_past_end_of_file,
    array_too_long,
    unknown_value_type,
    empty_key,
    duplicate_key,
    alignment_not_power_of_two,
    alignment_wrong_type,
    tensor_name_too_long,
    duplicate_tensor_name,
    too_many_dims,
    negative_dim,
    dims_overflow,
    unknown_tensor_type,
    tensor_type_out_of_range,
    row_not_multiple_of_block,
    non_contiguous_offsets,
    tensor_data_past_end_of_file,
);

#[test]
fn missing_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.gguf");
    let err = GgufFile::open(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("cannot open"), "{err}");
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.gguf");
    let meta = vec![
        ("general.architecture".to_string(), "llama".into()),
        (
            "tokenizer.ggml.tokens".to_string(),
            formats::gguf::GgufArray::strings(["a", "bc", "déf"]).into(),
        ),
    ];
    let decls = vec![
        TensorDecl::new("a", vec![4, 2], GgmlType::F32),
        TensorDecl::new("b", vec![32], GgmlType::Q8_0),
    ];
    let mut w = GgufWriter::create(&path, &meta, decls).unwrap();
    w.write_tensor(&[1; 32]).unwrap();
    w.write_tensor(&[2; 34]).unwrap();
    w.finish().unwrap();
    let full = std::fs::read(&path).unwrap();
    // The last tensor's trailing padding may be cut without harm; anything before must fail.
    let f = GgufFile::open(&path).unwrap();
    let b = f.tensor("b").unwrap();
    let needed = (f.data_offset() + b.offset + b.nbytes) as usize;
    let cut_path = dir.path().join("cut.gguf");
    for cut in 0..full.len() {
        std::fs::write(&cut_path, &full[..cut]).unwrap();
        let r = GgufFile::open(&cut_path);
        assert_eq!(r.is_ok(), cut >= needed, "cut at {cut}");
    }
}

fn decls() -> Vec<TensorDecl> {
    vec![
        TensorDecl::new("a", vec![8], GgmlType::F32),
        TensorDecl::new("b", vec![32, 2], GgmlType::Q8_0),
    ]
}

#[test]
fn writer_dropped_before_last_tensor_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    let partial = dir.path().join("out.gguf.partial");
    {
        let mut w = GgufWriter::create(&path, &[], decls()).unwrap();
        w.write_tensor(&[0; 32]).unwrap();
        assert!(partial.exists());
        assert!(!path.exists());
    }
    assert!(!path.exists());
    assert!(!partial.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn writer_panicking_midway_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    let p = path.clone();
    let r = std::panic::catch_unwind(move || {
        let mut w = GgufWriter::create(&p, &[], decls()).unwrap();
        w.begin_tensor().unwrap();
        w.write_chunk(&[0; 16]).unwrap();
        panic!("simulated failure mid-tensor");
    });
    assert!(r.is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn finishing_with_a_missing_tensor_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    let mut w = GgufWriter::create(&path, &[], decls()).unwrap();
    w.write_tensor(&[0; 32]).unwrap();
    let err = w.finish().unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains("finished after 1 of 2 tensors; first missing: 'b'"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn wrong_byte_count_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    // Too few bytes in one piece.
    let mut w = GgufWriter::create(&path, &[], decls()).unwrap();
    let err = w.write_tensor(&[0; 31]).unwrap_err().to_string();
    assert!(
        err.contains("tensor 'a' needs exactly 32 bytes, got 31"),
        "{err}"
    );
    assert!(w.finish().is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // Too few bytes in chunks: caught at end_tensor.
    let mut w = GgufWriter::create(&path, &[], decls()).unwrap();
    w.write_tensor(&[0; 32]).unwrap();
    w.begin_tensor().unwrap();
    w.write_chunk(&[0; 60]).unwrap();
    let err = w.end_tensor().unwrap_err().to_string();
    assert!(
        err.contains("tensor 'b' needs exactly 68 bytes, got 60"),
        "{err}"
    );
    assert!(w.finish().is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // Too many bytes from a reader.
    let mut w = GgufWriter::create(&path, &[], decls()).unwrap();
    let err = w.write_tensor_from(&[0u8; 40][..]).unwrap_err().to_string();
    assert!(err.contains("tensor 'a' needs exactly 32 bytes"), "{err}");
    drop(w);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
