//! Every malformed imatrix case of `fixtures::bad::imatrix` is rejected by `Imatrix::load` with a
//! one-line error naming the file, the entry where there is one, and the problem.

use formats::imatrix::Imatrix;

fn check(name: &str) {
    let cases = fixtures::bad::imatrix::cases();
    let case = cases
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no bad imatrix case named {name}"));
    let dir = tempfile::tempdir().unwrap();
    let path = case.materialize(dir.path()).unwrap();
    let err = match Imatrix::load(&path) {
        Ok(_) => panic!("{name}: loaded without error"),
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
            let mut registry: Vec<_> =
                fixtures::bad::imatrix::cases().iter().map(|c| c.name).collect();
            listed.sort_unstable();
            registry.sort_unstable();
            assert_eq!(listed, registry);
        }
    };
}

bad_cases!(
    dat_empty_file,
    dat_zero_entries,
    dat_negative_entries,
    dat_oversized_entries,
    dat_negative_name_length,
    dat_oversized_nval,
    dat_nan_value,
    dat_inf_value,
    dat_duplicate_entry,
    dat_truncated_trailer,
    dat_negative_dataset_length,
    dat_trailing_bytes,
    gguf_missing_counts,
    gguf_missing_in_sum2,
    gguf_not_f32,
    gguf_size_mismatch,
    gguf_nan_in_sum2,
    gguf_inf_counts,
    gguf_negative_count,
    gguf_foreign_tensor,
    gguf_missing_chunk_size,
    gguf_model_file,
    gguf_no_entries,
    gguf_truncated,
);
