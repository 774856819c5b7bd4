//! `GgufSource` over a real GGUF file: whole tensors, selected rows and row ranges (one expert of
//! a 3-D tensor) dequantize to the same values, for F32, F16 and Q8_0; out-of-range requests and
//! missing tensors are one-line errors naming the tensor.

use formats::ggml_type::GgmlType;
use formats::gguf::{GgufWriter, TensorDecl};
use verify::{GgufSource, WeightSource};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

#[test]
fn rows_and_ranges_equal_slices_of_the_whole_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    // (name, dims, type): a 2-D matrix per type and a 3-D "expert" tensor {64, 3, 4}.
    let specs = [
        ("a.f32", vec![64u64, 5], GgmlType::F32),
        ("b.f16", vec![64, 5], GgmlType::F16),
        ("c.q8_0", vec![64, 5], GgmlType::Q8_0),
        ("exps.q8_0", vec![64, 3, 4], GgmlType::Q8_0),
    ];
    let decls = specs
        .iter()
        .map(|(n, d, t)| TensorDecl::new(*n, d.clone(), *t))
        .collect();
    let mut w = GgufWriter::create(&path, &[], decls).unwrap();
    for (i, (_, dims, ty)) in specs.iter().enumerate() {
        let n: u64 = dims.iter().product();
        let src = values(n as usize, i as u32);
        let mut bytes = vec![0u8; ty.nbytes(dims).unwrap() as usize];
        quantize::quantize_rows(*ty, &src, dims[0] as usize, None, &mut bytes).unwrap();
        w.write_tensor(&bytes).unwrap();
    }
    w.finish().unwrap();

    let s = GgufSource::open(&path).unwrap();
    for (name, dims, _) in &specs {
        let all = s.load_f32(name).unwrap();
        let width = dims[0] as usize;
        if dims.len() == 2 {
            let rows = s.load_rows_f32(name, &[4, 0, 4]).unwrap();
            let want: Vec<f32> = [4, 0, 4]
                .iter()
                .flat_map(|&r| all[r * width..(r + 1) * width].to_vec())
                .collect();
            assert_eq!(rows, want, "{name}");
        }
        let n_rows: u64 = dims[1..].iter().product();
        let range = s.load_row_range_f32(name, 3..n_rows).unwrap();
        assert_eq!(range, all[3 * width..].to_vec(), "{name}");
        let err = s
            .load_row_range_f32(name, 0..n_rows + 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains(name) && err.contains("rows"), "{err}");
    }
    let err = s.load_rows_f32("a.f32", &[5]).unwrap_err().to_string();
    assert!(err.contains("'a.f32'") && err.contains("row 5"), "{err}");
    let err = s.load_f32("nope").unwrap_err().to_string();
    assert!(
        err.ends_with("tensor 'nope' is missing") && err.contains("m.gguf"),
        "{err}"
    );
    assert_eq!(s.tensor_names().len(), 4);
    assert_eq!(s.tensor_bytes("c.q8_0"), Some(5 * 34 * 2));
}
