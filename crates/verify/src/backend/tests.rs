//! Tests of the backend seam and its CPU references.

use std::collections::HashMap;

use formats::ggml_type::GgmlType;
use formats::gguf::GgufValue;

use super::*;
use crate::error::Result;
use crate::ops;
use crate::source::WeightSource;

/// Deterministic pseudo-random values in about [-2, 2) (xorshift).
pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// `(rows, cols, block)` of the FP8 test weight: ragged scale blocks at both edges.
pub(crate) const FP8_SHAPE: (usize, usize, [usize; 2]) = (300, 260, [128, 128]);

/// The FP8 test weight's bytes (E4M3 codes cycling through every value, NaN included) and
/// scales ([`values`] × `scale`), as an HF checkpoint stores them.
pub(crate) fn fp8_bytes(scale: f32) -> (Vec<u8>, Vec<u8>) {
    let (rows, cols, block) = FP8_SHAPE;
    let data: Vec<u8> = (0..rows * cols).map(|i| (i * 7 + i / 256) as u8).collect();
    let n_scales = rows.div_ceil(block[0]) * cols.div_ceil(block[1]);
    let scales: Vec<u8> = values(n_scales, 5)
        .iter()
        .flat_map(|v| (v * scale).to_le_bytes())
        .collect();
    (data, scales)
}

/// [`fp8_bytes`] as a [`RawTensor`].
pub(crate) fn fp8_raw<'a>(data: &'a [u8], scales: &'a [u8]) -> RawTensor<'a> {
    let (rows, cols, block) = FP8_SHAPE;
    RawTensor::Fp8Block {
        data,
        scales,
        rows,
        cols,
        block,
    }
}

/// ggml tensors in memory with their raw bytes (what a GGUF file gives), f32 loads through
/// the trait's defaults.
pub(crate) struct RawSource {
    tensors: HashMap<String, (Vec<u64>, GgmlType, Vec<u8>)>,
    /// A tensor to offer without raw bytes (f32 loads only), as an HF source does.
    pub(crate) no_raw: Option<&'static str>,
}

impl WeightSource for RawSource {
    fn metadata(&self) -> &[(String, GgufValue)] {
        &[]
    }
    fn get(&self, _key: &str) -> Option<&GgufValue> {
        None
    }
    fn tensor_dims(&self, name: &str) -> Option<Vec<u64>> {
        self.tensors.get(name).map(|t| t.0.clone())
    }
    fn tensor_bytes(&self, name: &str) -> Option<u64> {
        self.tensors.get(name).map(|t| t.2.len() as u64)
    }
    fn tensor_names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (dims, ty, data) = self.tensors.get(name).ok_or_else(|| self.missing(name))?;
        let mut out = vec![0f32; dims.iter().product::<u64>() as usize];
        quantize::dequantize_rows(*ty, data, &mut out).expect("dequantize");
        Ok(out)
    }
    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        if self.no_raw == Some(name) {
            return None;
        }
        let (_, ty, data) = self.tensors.get(name)?;
        Some(RawTensor::Ggml { ty: *ty, data })
    }
    fn description(&self) -> String {
        "raw test tensors".into()
    }
}

/// Expert width of [`expert_source`] (a K-quant block wide, as R1's 2048 is).
pub(crate) const N_FF: usize = 512;
/// Model width of [`expert_source`].
pub(crate) const N_EMBD: usize = 256;
/// Experts of [`expert_source`].
pub(crate) const N_EXPERT: usize = 3;
/// Names of the stacked expert tensors of [`expert_source`].
pub(crate) const EXPS: [&str; 3] = [
    "blk.1.ffn_gate_exps.weight",
    "blk.1.ffn_up_exps.weight",
    "blk.1.ffn_down_exps.weight",
];

/// A layer's stacked experts as a GGUF holds them: gate Q4_K, up Q8_0, down Q6_K.
pub(crate) fn expert_source() -> RawSource {
    let mut tensors = HashMap::new();
    let shapes = [
        (GgmlType::Q4_K, [N_EMBD, N_FF]),
        (GgmlType::Q8_0, [N_EMBD, N_FF]),
        (GgmlType::Q6_K, [N_FF, N_EMBD]),
    ];
    for (i, (name, (ty, [width, rows]))) in EXPS.iter().zip(shapes).enumerate() {
        let n_rows = rows * N_EXPERT;
        let scale = 0.5 / (width as f32).sqrt();
        let x: Vec<f32> = values(width * n_rows, 11 + i as u64)
            .iter()
            .map(|v| v * scale)
            .collect();
        let mut data = vec![0u8; ty.row_size(width as u64).unwrap() as usize * n_rows];
        quantize::quantize_rows(ty, &x, width, None, &mut data).expect("quantize");
        let dims = vec![width as u64, rows as u64, N_EXPERT as u64];
        tensors.insert(name.to_string(), (dims, ty, data));
    }
    RawSource {
        tensors,
        no_raw: None,
    }
}

/// Expert `e`'s job over `x` on [`expert_source`].
pub(crate) fn expert_job<'a>(
    source: &'a dyn WeightSource,
    e: usize,
    x: &'a Mat,
    parallel: bool,
) -> ExpertJob<'a> {
    ExpertJob {
        source,
        names: EXPS,
        expert: e,
        n_embd: N_EMBD,
        n_ff: N_FF,
        x,
        parallel,
    }
}

/// The default (CPU) `expert_ffn` is the direct computation: the expert's rows dequantized,
/// `ops::matmul`, `ops::swiglu`, `ops::matmul` — bit for bit, with and without threads,
/// and with its buffers reused across experts and token counts.
#[test]
fn cpu_expert_ffn_is_the_direct_computation() {
    let src = expert_source();
    let backend = CpuBackend;
    let mut out = ExpertOut::default();
    for (e, n, parallel) in [(2, 9, true), (0, 3, false), (1, 17, true), (2, 1, false)] {
        let x = Mat::from_vec(n, N_EMBD, values(n * N_EMBD, 100 + n as u64));
        let job = expert_job(&src, e, &x, parallel);
        backend.expert_ffn(&job, &mut out).expect("expert");
        let w: Vec<Mat> = (0..3)
            .map(|i| {
                let (r, c) = job.shape(i);
                let data = src.load_row_range_f32(EXPS[i], job.rows(i)).expect("rows");
                Mat::from_vec(r, c, data)
            })
            .collect();
        let mut g = ops::matmul(&x, &w[0]);
        ops::swiglu(&mut g, &ops::matmul(&x, &w[1]));
        let y = ops::matmul(&g, &w[2]);
        assert_eq!(out.g, g, "expert {e}, {n} tokens: g");
        assert_eq!(out.y, y, "expert {e}, {n} tokens: y");
    }
    assert_eq!(
        backend.experts_at_once(40),
        crate::engine::experts_in_flight(40)
    );
}

/// ggml: an expert's raw rows, dequantized, are those rows of the whole tensor
/// dequantized; ranges beyond the tensor have no raw rows.
#[test]
fn raw_rows_of_ggml_are_rows_of_the_whole_tensor() {
    let src = expert_source();
    for name in EXPS {
        let all = src.load_f32(name).expect("whole");
        let dims = src.tensor_dims(name).expect("dims");
        let (width, n_rows) = (dims[0] as usize, (dims[1] * dims[2]) as usize);
        let per = dims[1] as usize;
        for rows in [0..per, per..2 * per, 2 * per..3 * per, 5..6, 7..7] {
            let raw = src
                .raw_rows(name, rows.start as u64..rows.end as u64)
                .expect("raw rows");
            let mut got = vec![0f32; rows.len() * width];
            dequantize_cpu(raw, width, 0..rows.len(), &mut got).expect("dequantize");
            assert_eq!(
                got,
                all[rows.start * width..rows.end * width],
                "{name} {rows:?}"
            );
        }
        assert!(src.raw_rows(name, 0..n_rows as u64 + 1).is_none());
        assert!(src.raw_rows("absent", 0..1).is_none());
    }
    // The BackendSource wrapper hands the inner source's rows on.
    let wrapped = BackendSource::new(&src, &CpuBackend);
    let (a, b) = (
        src.raw_rows(EXPS[2], 256..512),
        wrapped.raw_rows(EXPS[2], 256..512),
    );
    match (a, b) {
        (Some(RawTensor::Ggml { data: a, .. }), Some(RawTensor::Ggml { data: b, .. })) => {
            assert_eq!(a.as_ptr(), b.as_ptr());
            assert_eq!(a.len(), b.len());
        }
        _ => panic!("raw rows missing"),
    }
}

/// FP8: a slice starting on a scale block keeps its scale rows (full and ragged ends); a
/// slice starting inside one is refused, as are ranges beyond the tensor or a wrong width.
#[test]
fn raw_rows_of_fp8_keep_scale_block_alignment() {
    let (rows, cols, _) = FP8_SHAPE;
    let (data, scales) = fp8_bytes(1.0);
    let raw = fp8_raw(&data, &scales);
    let mut all = vec![0f32; rows * cols];
    dequantize_cpu(raw, cols, 0..rows, &mut all).expect("whole");
    for r in [
        0..rows,
        0..128,
        128..256,
        256..300,
        128..300,
        0..100,
        128..129,
        256..256,
    ] {
        let slice = raw.slice_rows(cols, r.clone()).expect("aligned slice");
        let mut got = vec![0f32; r.len() * cols];
        dequantize_cpu(slice, cols, 0..r.len(), &mut got).expect("slice");
        // Bits, not values: the E4M3 codes include NaN.
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
        assert_eq!(
            bits(&got),
            bits(&all[r.start * cols..r.end * cols]),
            "rows {r:?}"
        );
    }
    for r in [1..128, 100..200, 129..300, 0..301] {
        assert!(raw.slice_rows(cols, r.clone()).is_none(), "rows {r:?}");
    }
    assert!(raw.slice_rows(cols + 1, 0..128).is_none());
}

#[test]
fn device_names_parse_and_print() {
    assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
    assert_eq!("CUDA".parse::<Device>(), Ok(Device::Cuda(0)));
    assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
    assert!(matches!(
        "tpu".parse::<Device>(),
        Err(DeviceError::BadName(_))
    ));
    assert!("cuda:x".parse::<Device>().is_err());
    for d in [Device::Cpu, Device::Cuda(0), Device::Cuda(2)] {
        assert_eq!(d.to_string().parse::<Device>(), Ok(d));
    }
}

/// `--device cuda` never panics: without the feature it names the rebuild; with it on a
/// machine without libcuda (CI, this machine) it names the missing driver.
#[test]
fn cuda_refuses_cleanly_without_driver_or_feature() {
    match open(Device::Cuda(0)) {
        Ok(b) => assert_eq!(b.device(), Device::Cuda(0)), // a GPU machine
        Err(e) => {
            let msg = e.to_string();
            if cuda_built() {
                assert!(
                    matches!(
                        e,
                        DeviceError::NoDriver(_)
                            | DeviceError::NoLibrary { .. }
                            | DeviceError::Init { .. }
                    ),
                    "{msg}"
                );
            } else {
                assert_eq!(e, DeviceError::NotBuilt(Device::Cuda(0)));
                assert!(msg.contains("--features cuda"), "{msg}");
            }
        }
    }
}

/// The default `head_matmul` is, per head, `ops::matmul` of the head's input columns and
/// weight rows, written at the head's output columns; every other column keeps its value.
#[test]
fn cpu_head_matmul_is_per_head_matmul() {
    let (t, heads, inp, out) = (7, 3, 5, 4);
    let x = Mat::from_vec(t, heads * inp, values(t * heads * inp, 81));
    let w = Mat::from_vec(heads * out, inp, values(heads * out * inp, 82));
    for col_stride in [out, out + 2] {
        let cols = (heads - 1) * col_stride + out + 1;
        let mut y = Mat::from_vec(t, cols, vec![7.5; t * cols]);
        CpuBackend.head_matmul("w", &x, &w, heads, &mut y, col_stride);
        let mut want = Mat::from_vec(t, cols, vec![7.5; t * cols]);
        for h in 0..heads {
            let xh: Vec<f32> = (0..t)
                .flat_map(|r| x.row(r)[h * inp..(h + 1) * inp].to_vec())
                .collect();
            let wh = w.data[h * out * inp..(h + 1) * out * inp].to_vec();
            let yh = ops::matmul(&Mat::from_vec(t, inp, xh), &Mat::from_vec(out, inp, wh));
            for r in 0..t {
                want.row_mut(r)[h * col_stride..h * col_stride + out].copy_from_slice(yh.row(r));
            }
        }
        assert_eq!(y, want, "col_stride {col_stride}");
    }
}

#[test]
fn cpu_backend_is_ops_matmul() {
    let x = Mat::from_vec(2, 3, vec![1.0, 2.0, 3.0, -1.0, 0.5, 2.0]);
    let w = Mat::from_vec(2, 3, vec![0.1, 0.2, 0.3, 1.0, -1.0, 0.0]);
    let b = open(Device::Cpu).expect("cpu");
    assert_eq!(b.matmul("w", &x, &w), ops::matmul(&x, &w));
    assert!(!b.dequantizes());
}

#[test]
fn fp8_reference_applies_block_scales() {
    // [3, 5] with block [2, 4]: scales [2, 2].
    let data: Vec<u8> = (0..15u8).map(|i| i.wrapping_mul(37)).collect();
    let scales: Vec<u8> = [2.0f32, 0.5, -1.0, 4.0]
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    let raw = RawTensor::Fp8Block {
        data: &data,
        scales: &scales,
        rows: 3,
        cols: 5,
        block: [2, 4],
    };
    let mut out = vec![0f32; 10];
    dequantize_cpu(raw, 5, 1..3, &mut out).expect("fp8");
    let f = formats::checkpoint::dtype::fp8_e4m3_to_f32;
    assert_eq!(out[0], f(data[5]) * 2.0);
    assert_eq!(out[4], f(data[9]) * 0.5);
    assert_eq!(out[5], -f(data[10]));
    assert_eq!(out[9], f(data[14]) * 4.0);
    assert!(dequantize_cpu(raw, 5, 0..4, &mut [0f32; 20]).is_err());
}
