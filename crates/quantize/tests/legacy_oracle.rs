//! The legacy 32-element codecs (Q4_0, Q4_1, Q5_0, Q5_1, and Q8_0 as a control) against
//! llama.cpp's own `ggml-quants.c` (the `r1q-quant-oracle` peer), byte for byte, without and with
//! importance weights, on every generated row kind and several row lengths; dequantization bit
//! for bit against the oracle and against the PyPI `gguf` package.

mod oracle;

use formats::ggml_type::GgmlType;

const TYPES: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

/// Row lengths: one block, one superblock, a long row (the row-wide σ² of the `_impl`
/// quantizers), and an odd number of blocks.
const LENGTHS: &[usize] = &[32, 256, 4096, 11 * 32];

#[test]
fn bytes_and_dequantization_match_llama_cpp() {
    for &ty in TYPES {
        let Some(n) = oracle::check_against_oracle(ty, LENGTHS) else {
            return;
        };
        eprintln!("{ty}: {n} rows identical to llama.cpp (bytes and dequantization)");
    }
}

#[test]
fn dequantization_matches_gguf_py() {
    for &ty in TYPES {
        for n in [32, 256] {
            let Some(rows) = oracle::check_dequant_against_gguf_py(ty, n) else {
                return;
            };
            eprintln!("{ty}: n={n}, {rows} rows dequantized identically to gguf-py");
        }
    }
}

/// Large inputs are split across rayon's pool; the bytes must not depend on it (with and
/// without weights, whose σ² is per row).
#[test]
fn parallel_split_gives_the_same_bytes_as_one_call_per_row() {
    let n = 4096;
    let rows = 70; // 286720 values: above the single-thread threshold
    let x: Vec<f32> = (0..rows)
        .flat_map(|r| oracle::test_rows(n).swap_remove(r % 3).1)
        .collect();
    let w = oracle::imatrix_positive(n, 9);
    for &ty in TYPES.iter().chain(&[GgmlType::IQ4_NL, GgmlType::IQ4_XS]) {
        for imatrix in [None, Some(&w[..])] {
            let rb = ty.row_size(n as u64).unwrap() as usize;
            let mut whole = vec![0u8; rb * rows];
            quantize::quantize_rows(ty, &x, n, imatrix, &mut whole).unwrap();
            for (r, (s, d)) in x.chunks(n).zip(whole.chunks(rb)).enumerate() {
                let mut one = vec![0u8; rb];
                quantize::quantize_rows(ty, s, n, imatrix, &mut one).unwrap();
                assert!(one == d, "{ty} row {r} differs when quantized alone");
            }
        }
    }
}

#[test]
fn bad_sizes_are_errors_not_panics() {
    let x = vec![0.25f32; 64];
    for &ty in TYPES {
        let rb = ty.row_size(64).unwrap() as usize;
        let mut dst = vec![0u8; rb];
        assert!(quantize::quantize_rows(ty, &x, 48, None, &mut dst).is_err());
        assert!(quantize::quantize_rows(ty, &x, 64, None, &mut dst[..rb - 1]).is_err());
        assert!(quantize::quantize_rows(ty, &x, 64, Some(&[1.0; 63]), &mut dst).is_err());
        assert!(quantize::quantize_rows(ty, &x[..40], 32, Some(&[1.0; 32]), &mut dst).is_err());
        assert!(quantize::dequantize_rows(ty, &dst[..rb - 1], &mut [0f32; 64]).is_err());
        quantize::quantize_rows(ty, &x, 64, Some(&[1.0; 64]), &mut dst).unwrap();
    }
}

/// The same byte comparisons through the scalar reference paths (`R1Q_NO_SIMD=1`).
#[test]
fn scalar_paths_match_llama_cpp_too() {
    oracle::rerun_with_scalar_paths(&["bytes_and_dequantization_match_llama_cpp"]);
}
