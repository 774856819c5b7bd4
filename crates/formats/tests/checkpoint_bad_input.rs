//! Every malformed safetensors checkpoint in `fixtures::bad::safetensors` must be rejected by
//! `Checkpoint::open` (+ `validate`) with one error naming the file and the problem, never a panic.

use formats::checkpoint::Checkpoint;

fn check(name: &str) {
    let case = fixtures::bad::safetensors::cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no bad case named {name}"));
    let dir = tempfile::tempdir().unwrap();
    let path = case.materialize(dir.path()).unwrap();
    let result = Checkpoint::open(&path).and_then(|c| c.validate());
    let err = match result {
        Ok(()) => panic!("{name}: opened without error"),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains('\n'), "{name}: multi-line message: {err}");
    assert!(
        err.contains(&case.open),
        "{name}: message does not name {}: {err}",
        case.open
    );
    assert!(
        err.contains(case.expect),
        "{name}: message lacks {:?}: {err}",
        case.expect
    );
}

macro_rules! bad_cases {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { check(stringify!($name)); })*

        /// Every registered case has a test here.
        #[test]
        fn every_case_is_tested() {
            let tested = [$(stringify!($name)),*];
            for case in fixtures::bad::safetensors::cases() {
                assert!(tested.contains(&case.name), "no test for bad case {}", case.name);
            }
        }
    };
}

bad_cases!(
    truncated_safetensors,
    truncated_length_prefix,
    header_length_past_end,
    invalid_header_json,
    data_offsets_out_of_bounds,
    overlapping_offsets,
    offsets_not_covering_buffer,
    duplicate_tensor_in_header,
    unknown_dtype,
    byte_length_mismatch,
    fp8_weight_without_scale,
    fp8_scale_wrong_shape,
    index_names_missing_shard,
    index_invalid_json,
    index_tensor_missing_from_shard,
    tensor_in_two_shards,
    config_missing_field,
    config_mistyped_field,
);
