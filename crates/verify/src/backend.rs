//! The device seam of the engine: which processor runs the heavy ops of a layer (the GEMMs
//! `x · wᵀ` over all tokens, and the dequantization of the layer's weights).
//!
//! Why a seam and not a second engine: the blocks (`arch/`) are written once, on host [`Mat`]s;
//! a [`Backend`] is consulted at the two places where the work is — [`crate::LayerCtx::matmul`]
//! (every projection) and the weight loads of a layer (through [`BackendSource`], which hands
//! the raw bytes of a tensor to [`Backend::dequantize`]). The CPU backend calls exactly the
//! existing ops, so `--device cpu` gives the same numbers at the same speed as before.
//!
//! The CUDA backend (feature `cuda`, [`crate::cuda`]) dequantizes on the GPU from the raw bytes,
//! keeps the layer's f32 weights resident there until [`Backend::end_layer`], and runs every
//! [`Backend::matmul`] on cuBLAS. What stays on the CPU is listed in the `cuda` module docs.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use formats::ggml_type::GgmlType;
use formats::gguf::GgufValue;

use crate::error::{Result, VerifyError};
use crate::ops;
use crate::source::WeightSource;
use crate::tensor::Mat;

/// Where a forward pass runs. Parsed from `--device` (`cpu`, `cuda`, `cuda:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The host CPU (rayon + the `gemm` crate); always available.
    #[default]
    Cpu,
    /// CUDA device with this ordinal (needs the `cuda` feature and a driver at run time).
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(0) => write!(f, "cuda"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = DeviceError;

    fn from_str(s: &str) -> std::result::Result<Device, DeviceError> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(DeviceError::BadName(s)),
            },
        }
    }
}

/// Why a device could not be used. One line each, naming what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// `--device` was not `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device '{0}': expected cpu, cuda or cuda:N")]
    BadName(String),
    /// The binary was built without the `cuda` feature.
    #[error("--device {0}: this r1q was built without CUDA support; rebuild with `cargo build --release --features cuda`, or use --device cpu")]
    NotBuilt(Device),
    /// `libcuda.so` (the driver library) could not be loaded: no NVIDIA driver on this machine.
    #[error("--device {0}: no CUDA driver found (libcuda.so could not be loaded); install the NVIDIA driver or use --device cpu")]
    NoDriver(Device),
    /// A CUDA library other than the driver (cuBLAS, NVRTC) is missing.
    #[error("--device {device}: the CUDA library {lib} could not be loaded; install the CUDA toolkit's runtime libraries (cuBLAS, NVRTC) or use --device cpu")]
    NoLibrary {
        /// The device asked for.
        device: Device,
        /// Which library (`libcublas.so`, `libnvrtc.so`).
        lib: &'static str,
    },
    /// The driver loaded but the device could not be initialised (no GPU, bad ordinal, …).
    #[error("--device {device}: {problem}")]
    Init {
        /// The device asked for.
        device: Device,
        /// The driver's message.
        problem: String,
    },
    /// A CUDA call failed while evaluating (out of memory, launch failure, …).
    #[error("CUDA error during {during}: {problem}")]
    Runtime {
        /// What was being done (`matmul blk.3.attn_q.weight`, `dequantize …`).
        during: String,
        /// The driver's or cuBLAS's message.
        problem: String,
    },
}

impl From<DeviceError> for VerifyError {
    fn from(e: DeviceError) -> VerifyError {
        VerifyError::Invalid(e.to_string())
    }
}

/// A tensor's bytes exactly as stored, for dequantization on a device (no host f32 copy).
#[derive(Debug, Clone, Copy)]
pub enum RawTensor<'a> {
    /// ggml blocks (any type the backend supports), rows of `ne[0]` values, row-major.
    Ggml {
        /// The block type.
        ty: GgmlType,
        /// The whole tensor's bytes.
        data: &'a [u8],
    },
    /// An HF FP8 E4M3 weight `[rows, cols]` with its `weight_scale_inv` (REFERENCE §4.1):
    /// w[r][c] = fp8(data[r·cols + c]) · scale[r / block[0]][c / block[1]].
    Fp8Block {
        /// `rows · cols` E4M3 bytes.
        data: &'a [u8],
        /// `⌈rows/block[0]⌉ · ⌈cols/block[1]⌉` little-endian f32 scales, row-major.
        scales: &'a [u8],
        /// Output features.
        rows: usize,
        /// Input features (row length).
        cols: usize,
        /// Scale block (`[128, 128]` for DeepSeek-V3/R1).
        block: [usize; 2],
    },
}

/// The heavy ops of one layer, on some device.
///
/// Contract: every method gives the numbers of the CPU reference ([`ops::matmul`],
/// `quantize::dequantize_rows`, the FP8 block decoder) up to f32 rounding order. Methods are
/// infallible where the blocks call them (`matmul` returns a [`Mat`]); a device error there is
/// recorded, the CPU result is used, and [`Backend::end_layer`] reports the error, so a failing
/// GPU stops the run with a clear message instead of a panic or silently wrong numbers.
pub trait Backend: Send + Sync {
    /// The device this backend runs on.
    fn device(&self) -> Device;

    /// One line for logs: `cpu`, `cuda:0 (NVIDIA H200, 139 GiB)`.
    fn describe(&self) -> String;

    /// `y = x · wᵀ` ([`ops::matmul`]); `name` is the weight's GGUF name (the backend may hold
    /// a device copy of it from [`Backend::dequantize`]).
    fn matmul(&self, name: &str, x: &Mat, w: &Mat) -> Mat;

    /// Whether [`Backend::dequantize`] should be offered the raw bytes of each layer weight.
    /// False for the CPU, whose sources already dequantize in place.
    fn dequantizes(&self) -> bool {
        false
    }

    /// Dequantizes rows `rows` of `raw` (viewed 2-D, `width` values per row) into `out`
    /// (`rows.len() · width` values). `name` identifies the tensor for a device-side cache.
    /// The default is the CPU reference.
    fn dequantize(
        &self,
        name: &str,
        raw: RawTensor<'_>,
        width: usize,
        rows: Range<usize>,
        out: &mut [f32],
    ) -> std::result::Result<(), String> {
        let _ = name;
        dequantize_cpu(raw, width, rows, out)
    }

    /// Called after each layer (and after the logits): frees the layer's device weights and
    /// reports any device error recorded since the last call.
    fn end_layer(&self) -> std::result::Result<(), DeviceError> {
        Ok(())
    }
}

/// The host CPU: the existing ops, unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn matmul(&self, _name: &str, x: &Mat, w: &Mat) -> Mat {
        ops::matmul(x, w)
    }
}

/// The backend for `device`: the CPU always; CUDA when built with the `cuda` feature and a
/// driver and GPU are present, otherwise the [`DeviceError`] saying which is missing (never a
/// panic).
pub fn open(device: Device) -> std::result::Result<Arc<dyn Backend>, DeviceError> {
    match device {
        Device::Cpu => Ok(Arc::new(CpuBackend)),
        #[cfg(feature = "cuda")]
        Device::Cuda(ordinal) => Ok(Arc::new(crate::cuda::CudaBackend::new(ordinal)?)),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(DeviceError::NotBuilt(device)),
    }
}

/// Whether this build includes the CUDA backend (the `cuda` feature).
pub const fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

/// The CPU reference of [`Backend::dequantize`]: `quantize::dequantize_rows` for ggml blocks,
/// the E4M3 table times the block scale for FP8 (REFERENCE §4.1). The GPU kernels are tested
/// against this.
pub fn dequantize_cpu(
    raw: RawTensor<'_>,
    width: usize,
    rows: Range<usize>,
    out: &mut [f32],
) -> std::result::Result<(), String> {
    let n_rows = rows.end.saturating_sub(rows.start);
    if out.len() != n_rows * width {
        return Err(format!(
            "output holds {} values, rows {rows:?} × {width} need {}",
            out.len(),
            n_rows * width
        ));
    }
    match raw {
        RawTensor::Ggml { ty, data } => {
            let row_bytes = ty
                .row_size(width as u64)
                .ok_or_else(|| format!("row length {width} is not whole {ty} blocks"))?
                as usize;
            let src = data
                .get(rows.start * row_bytes..rows.end * row_bytes)
                .ok_or_else(|| format!("rows {rows:?} lie beyond the tensor's data"))?;
            quantize::dequantize_rows(ty, src, out).map_err(|e| e.to_string())
        }
        RawTensor::Fp8Block {
            data,
            scales,
            rows: n,
            cols,
            block,
        } => {
            check_fp8(data, scales, n, cols, block)?;
            if cols != width || rows.end > n {
                return Err(format!(
                    "FP8 tensor is [{n}, {cols}], rows {rows:?} × {width} requested"
                ));
            }
            let scale_cols = cols.div_ceil(block[1]);
            for (i, r) in rows.enumerate() {
                let dst = &mut out[i * cols..(i + 1) * cols];
                let src = &data[r * cols..(r + 1) * cols];
                for (c, (d, &b)) in dst.iter_mut().zip(src).enumerate() {
                    let s = (r / block[0]) * scale_cols + c / block[1];
                    let sb = [
                        scales[4 * s],
                        scales[4 * s + 1],
                        scales[4 * s + 2],
                        scales[4 * s + 3],
                    ];
                    let fp8 = formats::checkpoint::dtype::fp8_e4m3_to_f32(b);
                    *d = fp8 * f32::from_le_bytes(sb);
                }
            }
            Ok(())
        }
    }
}

/// Checks an FP8 tensor's byte counts against its shape and block.
pub fn check_fp8(
    data: &[u8],
    scales: &[u8],
    rows: usize,
    cols: usize,
    block: [usize; 2],
) -> std::result::Result<(), String> {
    if block[0] == 0 || block[1] == 0 {
        return Err(format!("FP8 scale block {block:?} has a zero side"));
    }
    let n_scales = rows.div_ceil(block[0]) * cols.div_ceil(block[1]);
    if data.len() != rows * cols || scales.len() != 4 * n_scales {
        return Err(format!(
            "FP8 tensor [{rows}, {cols}] with block {block:?} needs {} bytes and {n_scales} scales, found {} bytes and {} scale bytes",
            rows * cols,
            data.len(),
            scales.len()
        ));
    }
    Ok(())
}

/// A [`WeightSource`] that hands every tensor with raw bytes to a [`Backend`] for
/// dequantization (everything else is delegated unchanged). The engine wraps its source in this
/// for devices whose [`Backend::dequantizes`] is true.
pub struct BackendSource<'a> {
    inner: &'a dyn WeightSource,
    backend: &'a dyn Backend,
}

impl<'a> BackendSource<'a> {
    /// Wraps `inner` for `backend`.
    pub fn new(inner: &'a dyn WeightSource, backend: &'a dyn Backend) -> BackendSource<'a> {
        BackendSource { inner, backend }
    }

    /// The raw bytes, row width and row range (all rows for `None`) of `name`, or `None` if
    /// the source has no raw bytes for it or the range is invalid (the inner source's own
    /// error is then the better message).
    fn plan(
        &self,
        name: &str,
        rows: Option<Range<u64>>,
    ) -> Option<(RawTensor<'a>, usize, Range<usize>)> {
        let raw = self.inner.raw(name)?;
        let dims = self.inner.tensor_dims(name)?;
        let width = dims.first().copied().unwrap_or(1) as usize;
        let n_rows = dims.iter().skip(1).product::<u64>() as usize;
        let rows = rows.map_or(0..n_rows, |r| r.start as usize..r.end as usize);
        if rows.start > rows.end || rows.end > n_rows {
            return None;
        }
        Some((raw, width, rows))
    }

    /// Dequantizes on the backend into `out` (which must match the rows).
    fn device_into(
        &self,
        name: &str,
        (raw, width, rows): (RawTensor<'_>, usize, Range<usize>),
        out: &mut [f32],
    ) -> Result<()> {
        self.backend
            .dequantize(name, raw, width, rows, out)
            .map_err(|problem| VerifyError::TensorData {
                origin: self.inner.description(),
                tensor: name.to_string(),
                problem: format!("cannot dequantize on {}: {problem}", self.backend.device()),
            })
    }

    /// Dequantizes rows `rows` of `name` on the backend, or `None` if the source has no raw
    /// bytes for it.
    fn device_rows(&self, name: &str, rows: Option<Range<u64>>) -> Option<Result<Vec<f32>>> {
        let plan = self.plan(name, rows)?;
        let mut out = vec![0f32; plan.2.len() * plan.1];
        Some(self.device_into(name, plan, &mut out).map(|()| out))
    }
}

impl WeightSource for BackendSource<'_> {
    fn metadata(&self) -> &[(String, GgufValue)] {
        self.inner.metadata()
    }
    fn get(&self, key: &str) -> Option<&GgufValue> {
        self.inner.get(key)
    }
    fn tensor_dims(&self, name: &str) -> Option<Vec<u64>> {
        self.inner.tensor_dims(name)
    }
    fn tensor_bytes(&self, name: &str) -> Option<u64> {
        self.inner.tensor_bytes(name)
    }
    fn tensor_names(&self) -> Vec<String> {
        self.inner.tensor_names()
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        match self.device_rows(name, None) {
            Some(r) => r,
            None => self.inner.load_f32(name),
        }
    }
    fn load_rows_f32(&self, name: &str, rows: &[u32]) -> Result<Vec<f32>> {
        // A few embedding rows: not worth a device round trip.
        self.inner.load_rows_f32(name, rows)
    }
    fn load_row_range_f32(&self, name: &str, rows: Range<u64>) -> Result<Vec<f32>> {
        match self.device_rows(name, Some(rows.clone())) {
            Some(r) => r,
            None => self.inner.load_row_range_f32(name, rows),
        }
    }
    fn load_row_range_into(&self, name: &str, rows: Range<u64>, out: &mut [f32]) -> Result<()> {
        match self.plan(name, Some(rows.clone())) {
            Some(plan) if out.len() == plan.2.len() * plan.1 => self.device_into(name, plan, out),
            _ => self.inner.load_row_range_into(name, rows, out),
        }
    }
    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        self.inner.raw(name)
    }
    fn description(&self) -> String {
        self.inner.description()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
