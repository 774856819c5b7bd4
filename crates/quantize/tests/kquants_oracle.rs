//! The K-quant codecs (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) against llama.cpp's own `ggml-quants.c`
//! (the `r1q-quant-oracle` peer), byte for byte, without an imatrix (`quantize_row_qN_K_ref`) and
//! with one (`quantize_row_qN_K_impl`: random positive weights, and weights with zeros), on every
//! generated row kind and row lengths 256, 512 and 4096; dequantization bit for bit against the
//! oracle and against the PyPI `gguf` package.

mod oracle;

use formats::ggml_type::GgmlType;

const TYPES: &[GgmlType] = &[
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Row lengths: one super-block, two (per-super-block σ² and imatrix offsets), and a long row.
const LENGTHS: &[usize] = &[256, 512, 4096];

/// Quantizes every row kind (as one multi-row call) with us and with the oracle and compares
/// bytes, then dequantization against the oracle and gguf-py. Returns rows compared.
fn check_type(ty: GgmlType) -> Option<usize> {
    let mut compared = 0;
    for &n in LENGTHS {
        let (names, rows): (Vec<String>, Vec<Vec<f32>>) = oracle::test_rows(n).into_iter().unzip();
        let x = rows.concat();
        let row_bytes = ty.row_size(n as u64).unwrap() as usize;
        for (label, imatrix) in oracle::imatrix_variants(n) {
            let theirs = oracle::oracle_quantize(ty, &x, n, imatrix.as_deref())?;
            let mut ours = vec![0u8; theirs.len()];
            quantize::quantize_rows(ty, &x, n, imatrix.as_deref(), &mut ours).unwrap();
            for (r, name) in names.iter().enumerate() {
                let span = r * row_bytes..(r + 1) * row_bytes;
                oracle::assert_same_bytes(
                    &format!("{ty} n={n} {label} row {name:?}"),
                    ty,
                    n,
                    &ours[span.clone()],
                    &theirs[span],
                );
            }
            let back_theirs = oracle::oracle_dequantize(ty, &theirs, n)?;
            let mut back = vec![0f32; x.len()];
            quantize::dequantize_rows(ty, &ours, &mut back).unwrap();
            oracle::assert_same_bits(&format!("{ty} n={n} {label} dequant"), &back, &back_theirs);
            if let Some(py) = oracle::gguf_py_dequantize(ty, &ours, n) {
                assert_gguf_py_agrees(&format!("{ty} n={n} {label}"), &back, &py);
            }
            compared += names.len();
        }
    }
    Some(compared)
}

/// gguf-py dequantizes in numpy with its own vectorised code; for the K-quants it reproduces
/// llama.cpp's f32 operation order, so it is held to the same bits (NaNs compared as NaN).
fn assert_gguf_py_agrees(what: &str, ours: &[f32], py: &[f32]) {
    assert_eq!(ours.len(), py.len(), "{what}: gguf-py lengths differ");
    for (i, (&u, &v)) in ours.iter().zip(py).enumerate() {
        let same = u.to_bits() == v.to_bits() || (u.is_nan() && v.is_nan());
        assert!(
            same,
            "{what}: value {i}: ours {u} ({:#010x}), gguf-py {v} ({:#010x})",
            u.to_bits(),
            v.to_bits()
        );
    }
}

#[test]
fn bytes_and_dequantization_match_llama_cpp() {
    for &ty in TYPES {
        let Some(n) = check_type(ty) else { return };
        eprintln!("{ty}: {n} rows identical to llama.cpp (bytes and dequantization)");
    }
}

/// Rows that are not whole super-blocks, and buffers of the wrong size, are errors, not panics.
#[test]
fn bad_sizes_are_errors() {
    let x = vec![0.5f32; 512];
    for &ty in TYPES {
        let rb = ty.row_size(256).unwrap() as usize;
        let mut dst = vec![0u8; 2 * rb];
        assert!(matches!(
            quantize::quantize_rows(ty, &x, 128, None, &mut dst),
            Err(quantize::QuantizeError::RowLength { .. })
        ));
        assert!(matches!(
            quantize::quantize_rows(ty, &x, 256, None, &mut dst[..rb]),
            Err(quantize::QuantizeError::Size(_))
        ));
        assert!(matches!(
            quantize::quantize_rows(ty, &x, 256, Some(&[1.0; 128]), &mut dst),
            Err(quantize::QuantizeError::Size(_))
        ));
        assert!(matches!(
            quantize::dequantize_rows(ty, &dst[..rb - 1], &mut [0f32; 256]),
            Err(quantize::QuantizeError::Size(_))
        ));
        quantize::quantize_rows(ty, &x, 256, Some(&[1.0; 256]), &mut dst).unwrap();
        let mut back = vec![0f32; 512];
        quantize::dequantize_rows(ty, &dst, &mut back).unwrap();
    }
}

/// Splitting across rayon's pool (large inputs) gives the same bytes as row-by-row calls, with and
/// without an imatrix (whose columns must stay aligned with each row's super-blocks).
#[test]
fn parallel_split_matches_row_by_row() {
    let n = 4096;
    let rows = 80; // 327,680 values: above the parallel threshold
    let mut r = oracle::Rng::new(3);
    let x: Vec<f32> = (0..n * rows).map(|_| r.heavy()).collect();
    let qw = oracle::imatrix_positive(n, 9);
    for &ty in TYPES {
        let rb = ty.row_size(n as u64).unwrap() as usize;
        for w in [None, Some(&qw[..])] {
            let mut whole = vec![0u8; rb * rows];
            quantize::quantize_rows(ty, &x, n, w, &mut whole).unwrap();
            let mut by_row = vec![0u8; rb * rows];
            for (s, d) in x.chunks(n).zip(by_row.chunks_mut(rb)) {
                quantize::quantize_rows(ty, s, n, w, d).unwrap();
            }
            assert!(whole == by_row, "{ty} imatrix={}", w.is_some());
        }
    }
}

/// The same byte comparisons through the scalar reference paths (`R1Q_NO_SIMD=1`).
#[test]
fn scalar_paths_match_llama_cpp_too() {
    oracle::rerun_with_scalar_paths(&["bytes_and_dequantization_match_llama_cpp"]);
}
