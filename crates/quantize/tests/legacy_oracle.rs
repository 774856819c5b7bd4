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

/// Quantizes every row kind (as one multi-row call) with us and with the oracle and compares.
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
            compared += names.len();
        }
    }
    Some(compared)
}

#[test]
fn bytes_and_dequantization_match_llama_cpp() {
    for &ty in TYPES {
        let Some(n) = check_type(ty) else { return };
        eprintln!("{ty}: {n} rows identical to llama.cpp");
    }
}
