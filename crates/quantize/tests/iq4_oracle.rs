//! IQ4_NL and IQ4_XS against llama.cpp's own `ggml-quants.c` (the `r1q-quant-oracle` peer), byte
//! for byte, without and with importance weights, on every generated row kind and several row
//! lengths; dequantization bit for bit against the oracle and against the PyPI `gguf` package.
//!
//! Without an imatrix llama-quantize goes through `quantize_iq4_nl` / `quantize_iq4_xs` (the
//! ntry = 7 search with weights x²), which is what the oracle calls too.

mod oracle;

use formats::ggml_type::GgmlType;

#[test]
fn iq4_nl_bytes_and_dequantization_match_llama_cpp() {
    let Some(n) = oracle::check_against_oracle(GgmlType::IQ4_NL, &[32, 256, 4096, 11 * 32]) else {
        return;
    };
    eprintln!("IQ4_NL: {n} rows identical to llama.cpp (bytes and dequantization)");
}

#[test]
fn iq4_xs_bytes_and_dequantization_match_llama_cpp() {
    let Some(n) = oracle::check_against_oracle(GgmlType::IQ4_XS, &[256, 4096, 3 * 256]) else {
        return;
    };
    eprintln!("IQ4_XS: {n} rows identical to llama.cpp (bytes and dequantization)");
}

#[test]
fn dequantization_matches_gguf_py() {
    for (ty, n) in [
        (GgmlType::IQ4_NL, 32),
        (GgmlType::IQ4_NL, 256),
        (GgmlType::IQ4_XS, 256),
    ] {
        let Some(rows) = oracle::check_dequant_against_gguf_py(ty, n) else {
            return;
        };
        eprintln!("{ty}: n={n}, {rows} rows dequantized identically to gguf-py");
    }
}

#[test]
fn bad_sizes_are_errors_not_panics() {
    let x = vec![0.5f32; 256];
    let mut dst = vec![0u8; 136];
    // IQ4_XS needs rows that are a multiple of 256
    assert!(quantize::quantize_rows(GgmlType::IQ4_XS, &x[..128], 128, None, &mut dst).is_err());
    assert!(quantize::quantize_rows(GgmlType::IQ4_XS, &x, 256, None, &mut dst[..135]).is_err());
    assert!(
        quantize::quantize_rows(GgmlType::IQ4_XS, &x, 256, Some(&[1.0; 255]), &mut dst).is_err()
    );
    assert!(quantize::dequantize_rows(GgmlType::IQ4_NL, &dst[..17], &mut [0f32; 32]).is_err());
    quantize::quantize_rows(GgmlType::IQ4_XS, &x, 256, Some(&[1.0; 256]), &mut dst).unwrap();
}

/// The same byte comparisons through the scalar reference paths (`R1Q_NO_SIMD=1`).
#[test]
fn scalar_paths_match_llama_cpp_too() {
    oracle::rerun_with_scalar_paths(&[
        "iq4_nl_bytes_and_dequantization_match_llama_cpp",
        "iq4_xs_bytes_and_dequantization_match_llama_cpp",
    ]);
}
