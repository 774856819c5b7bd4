//! The device seam of the engine: which processor runs the heavy ops of a layer (the GEMMs
//! `x · wᵀ` over all tokens, the dequantization of the layer's weights, and the routed MoE
//! experts).
//!
//! Why a seam and not a second engine: the blocks (`arch/`) are written once, on host [`Mat`]s;
//! a [`Backend`] is consulted at the four places where the work is — [`crate::LayerCtx::matmul`]
//! (every projection), [`crate::LayerCtx::attention`] (the causal attention of every block,
//! [`Backend::attention`]), the weight loads of a layer (through [`BackendSource`], which hands
//! the raw bytes of a tensor to [`Backend::dequantize`]), and each routed expert of an MoE layer
//! ([`Backend::expert_ffn`]: the block gathers the expert's tokens, the backend reads the
//! expert's weights from the source and returns its SwiGLU activations and output). The CPU
//! backend calls exactly the existing ops ([`ops::attention`]; [`expert_ffn_cpu`] is the former
//! in-block expert code, with its reused buffers and parallel waves of experts), so
//! `--device cpu` gives the same numbers at the same speed as before.
//!
//! The CUDA backend (feature `cuda`, [`crate::cuda`]) dequantizes on the GPU from the raw bytes,
//! keeps the layer's f32 weights resident there until [`Backend::end_layer`], runs every
//! [`Backend::matmul`] on cuBLAS, the attention as cuBLAS GEMMs around a causal-softmax kernel,
//! and each routed expert whole on the GPU from its raw rows ([`WeightSource::raw_rows`]), one
//! expert at a time. What stays on the CPU is listed in the `cuda` module docs.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use formats::ggml_type::GgmlType;
use formats::gguf::GgufValue;

use crate::error::{Result, VerifyError};
use crate::ops::{self, gemm_into, AttnShape, MatRef, Rhs};
use crate::source::WeightSource;
use crate::tensor::{Mat, SeqSpan};

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

impl<'a> RawTensor<'a> {
    /// Rows `rows` of this tensor (viewed 2-D, `width` values per row) as a tensor of their own,
    /// e.g. one expert of a stacked `*_exps` tensor, so a device uploads only those bytes.
    ///
    /// ggml blocks: a row range of a row-major tensor is the byte range
    /// `row_size(width) · rows`. FP8: the rows and their rows of the scale grid; the start must
    /// lie on a scale-block boundary (a multiple of `block[0]`), otherwise the slice's first
    /// scale row would cover rows before it, which [`RawTensor::Fp8Block`] cannot say. `None`
    /// when the bytes cannot be cut there (row length not whole blocks, range beyond the data,
    /// misaligned FP8 start, sizes that contradict the shape).
    pub fn slice_rows(self, width: usize, rows: Range<usize>) -> Option<RawTensor<'a>> {
        if rows.start > rows.end {
            return None;
        }
        match self {
            RawTensor::Ggml { ty, data } => {
                let row_bytes = ty.row_size(width as u64)? as usize;
                let data = data.get(rows.start * row_bytes..rows.end * row_bytes)?;
                Some(RawTensor::Ggml { ty, data })
            }
            RawTensor::Fp8Block {
                data,
                scales,
                rows: n_rows,
                cols,
                block,
            } => {
                check_fp8(data, scales, n_rows, cols, block).ok()?;
                if cols != width || rows.end > n_rows || !rows.start.is_multiple_of(block[0]) {
                    return None;
                }
                let scale_row_bytes = 4 * cols.div_ceil(block[1]);
                let first = rows.start / block[0];
                let n_scale_rows = rows.len().div_ceil(block[0]);
                Some(RawTensor::Fp8Block {
                    data: data.get(rows.start * cols..rows.end * cols)?,
                    scales: scales
                        .get(first * scale_row_bytes..(first + n_scale_rows) * scale_row_bytes)?,
                    rows: rows.len(),
                    cols,
                    block,
                })
            }
        }
    }
}

/// One routed expert of an MoE layer over the tokens routed to it ([`Backend::expert_ffn`]):
/// `g = silu(x · gateᵀ) ⊙ (x · upᵀ)` and `y = g · downᵀ`.
///
/// The stacked tensors are read as 2-D views: gate/up `[n_expert·n_ff, n_embd]` (expert e =
/// rows `e·n_ff .. (e+1)·n_ff`), down `[n_expert·n_embd, n_ff]` (rows `e·n_embd ..`).
#[derive(Clone, Copy)]
pub struct ExpertJob<'a> {
    /// Where the stacked expert tensors are read from.
    pub source: &'a dyn WeightSource,
    /// GGUF names of `ffn_gate_exps`, `ffn_up_exps`, `ffn_down_exps` (in that order).
    pub names: [&'a str; 3],
    /// The expert index e.
    pub expert: usize,
    /// Model width.
    pub n_embd: usize,
    /// Expert width.
    pub n_ff: usize,
    /// The routed tokens' inputs, gathered: `[n, n_embd]`.
    pub x: &'a Mat,
    /// Whether the CPU GEMMs may use all threads (false while several experts run at once).
    pub parallel: bool,
}

impl ExpertJob<'_> {
    /// `[rows, cols]` of expert weight `i` (0 gate, 1 up, 2 down).
    pub fn shape(&self, i: usize) -> (usize, usize) {
        if i == 2 {
            (self.n_embd, self.n_ff)
        } else {
            (self.n_ff, self.n_embd)
        }
    }

    /// The rows of weight `i`'s 2-D view that hold this expert.
    pub fn rows(&self, i: usize) -> Range<u64> {
        let per = self.shape(i).0 as u64;
        let e = self.expert as u64;
        e * per..(e + 1) * per
    }
}

/// What [`Backend::expert_ffn`] produces, plus the host buffers the CPU path reuses from expert
/// to expert (`Vec`s keep their capacity: after the first expert nothing is allocated).
#[derive(Debug, Clone)]
pub struct ExpertOut {
    /// `silu(x · gateᵀ) ⊙ (x · upᵀ)` `[n, n_ff]`: the down projection's input, which the
    /// calibration observer sees for `ffn_down_exps`.
    pub g: Mat,
    /// The expert's output `[n, n_embd]`.
    pub y: Mat,
    /// gate, up, down as host f32 (the CPU path; a device backend's fallback for weights it
    /// has no raw bytes for).
    pub(crate) weights: [Vec<f32>; 3],
    /// `x · upᵀ` `[n, n_ff]` (the CPU path).
    u: Mat,
}

impl Default for ExpertOut {
    fn default() -> ExpertOut {
        ExpertOut {
            g: Mat::zeros(0, 0),
            y: Mat::zeros(0, 0),
            weights: Default::default(),
            u: Mat::zeros(0, 0),
        }
    }
}

/// The CPU reference of [`Backend::expert_ffn`] (and its default): each weight dequantized by
/// the source into the reused host buffers (`load_row_range_into`), three `gemm_into` on
/// slices of them, [`ops::swiglu`] between.
pub fn expert_ffn_cpu(job: &ExpertJob<'_>, out: &mut ExpertOut) -> Result<()> {
    let (n, n_embd, n_ff) = (job.x.rows, job.n_embd, job.n_ff);
    // Each of the three matrices holds n_ff·n_embd values.
    for (i, buf) in out.weights.iter_mut().enumerate() {
        buf.resize(n_ff * n_embd, 0.0);
        job.source
            .load_row_range_into(job.names[i], job.rows(i), buf)?;
    }
    let [gate, up, down] = &out.weights;
    out.g.reshape(n, n_ff);
    out.u.reshape(n, n_ff);
    let gw = MatRef::slice(gate, n_embd, 0, n_ff, 0, n_embd);
    let uw = MatRef::slice(up, n_embd, 0, n_ff, 0, n_embd);
    let xv = ops::view(job.x);
    // `dst = a · wᵀ`.
    let mm = |dst: &mut [f32], n_out, a, w| {
        gemm_into(dst, n_out, a, w, Rhs::Transposed, false, job.parallel);
    };
    mm(&mut out.g.data, n_ff, xv, gw);
    mm(&mut out.u.data, n_ff, xv, uw);
    ops::swiglu(&mut out.g, &out.u);
    out.y.reshape(n, n_embd);
    let dw = MatRef::slice(down, n_ff, 0, n_embd, 0, n_ff);
    mm(&mut out.y.data, n_embd, ops::view(&out.g), dw);
    Ok(())
}

/// The CPU reference of [`Backend::head_matmul`] (and its default): one multithreaded
/// `gemm_into` per head on column slices of x and row slices of w, straight into y's columns.
pub fn head_matmul_cpu(x: &Mat, w: &Mat, heads: usize, y: &mut Mat, col_stride: usize) {
    check_head_matmul(x, w, heads, y, col_stride);
    let (inp, out) = (w.cols, w.rows / heads.max(1));
    for head in 0..heads {
        let xv = MatRef::slice(&x.data, x.cols, 0, x.rows, head * inp, inp);
        let wv = MatRef::slice(&w.data, inp, head * out, out, 0, inp);
        gemm_into(
            &mut y.data[head * col_stride..],
            y.cols,
            xv,
            wv,
            Rhs::Transposed,
            false,
            true,
        );
    }
}

/// Panics (internal invariant) unless x, w and y fit [`Backend::head_matmul`]'s layout.
pub(crate) fn check_head_matmul(x: &Mat, w: &Mat, heads: usize, y: &Mat, col_stride: usize) {
    assert!(
        heads > 0 && w.rows.is_multiple_of(heads),
        "head_matmul: {} weight rows for {heads} heads",
        w.rows
    );
    let out = w.rows / heads;
    assert_eq!(x.cols, heads * w.cols, "head_matmul: input width");
    assert_eq!(x.rows, y.rows, "head_matmul: row counts");
    assert!(
        col_stride >= out && (heads - 1) * col_stride + out <= y.cols,
        "head_matmul: output columns"
    );
}

/// The heavy ops of one layer, on some device.
///
/// Contract: every method gives the numbers of the CPU reference ([`ops::matmul`],
/// [`ops::attention`], `quantize::dequantize_rows`, the FP8 block decoder, [`expert_ffn_cpu`])
/// up to f32 rounding order. Methods are infallible where the blocks call them (`matmul` and
/// `attention` return a [`Mat`]); a
/// device error there is recorded, the CPU result is used, and [`Backend::end_layer`] reports
/// the error, so a failing GPU stops the run with a clear message instead of a panic or
/// silently wrong numbers. [`Backend::expert_ffn`] can fail anyway (its source may), so it
/// returns device errors directly.
pub trait Backend: Send + Sync {
    /// The device this backend runs on.
    fn device(&self) -> Device;

    /// One line for logs: `cpu`, `cuda:0 (NVIDIA H200, 139 GiB)`.
    fn describe(&self) -> String;

    /// One line for the end of a run: the most device memory the run had in use, for devices
    /// whose memory is the limit (a GPU); `None` for the CPU. This is the evidence that a model
    /// larger than the device runs one layer at a time: the peak is about one layer's weights
    /// plus the activations, whatever the model's size.
    fn memory_report(&self) -> Option<String> {
        None
    }

    /// `y = x · wᵀ` ([`ops::matmul`]); `name` is the weight's GGUF name (the backend may hold
    /// a device copy of it from [`Backend::dequantize`]).
    fn matmul(&self, name: &str, x: &Mat, w: &Mat) -> Mat;

    /// Causal attention over each span ([`ops::attention`], the default): `q` `[T, n_head·dk]`,
    /// `k` `[T, n_head_kv·dk]`, `v` `[T, n_head_kv·dv]` → `[T, n_head·dv]`, rows outside every
    /// span zero. Called through [`crate::LayerCtx::attention`] by every block (MLA's absorbed
    /// MQA, the dense blocks' GQA). Infallible like [`Backend::matmul`], with the same
    /// contract: a device error is recorded, the CPU result is returned, and
    /// [`Backend::end_layer`] reports the error. Shape mismatches are internal invariants and
    /// panic, as in [`ops::attention`].
    fn attention(&self, q: &Mat, k: &Mat, v: &Mat, seqs: &[SeqSpan], shape: &AttnShape) -> Mat {
        ops::attention(q, k, v, seqs, shape)
    }

    /// Per-head products, as MLA's absorbed `attn_k_b` / `attn_v_b` ([`head_matmul_cpu`], the
    /// default): for each head h < `heads`, `y[:, h·col_stride ..][..out] = x[:, h·in ..][..in]
    /// · w_hᵀ`, where w is `[heads·out, in]` (head h = rows `h·out ..`, `in = w.cols`) and x is
    /// `[T, heads·in]`. y's other columns are left as they are. `name` is w's GGUF name (a
    /// device may hold it from [`Backend::dequantize`]). Infallible with the contract of
    /// [`Backend::matmul`]; shape mismatches panic.
    fn head_matmul(
        &self,
        name: &str,
        x: &Mat,
        w: &Mat,
        heads: usize,
        y: &mut Mat,
        col_stride: usize,
    ) {
        let _ = name;
        head_matmul_cpu(x, w, heads, y, col_stride);
    }

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

    /// How many routed experts of an MoE layer run at once, `active` of them having tokens.
    /// The default, for the CPU, is one per worker thread
    /// ([`crate::engine::experts_in_flight`]): experts are independent, so each thread
    /// dequantizes and multiplies its own. A device that serialises its work returns 1.
    fn experts_at_once(&self, active: usize) -> usize {
        crate::engine::experts_in_flight(active)
    }

    /// Runs one routed expert over its gathered tokens into `out` ([`ExpertJob`]). `out` is
    /// reused from expert to expert. The default is [`expert_ffn_cpu`]. Errors: the source's
    /// (an expert that cannot be read), or a device error (returned at once, with any error
    /// recorded earlier in the layer).
    fn expert_ffn(&self, job: &ExpertJob<'_>, out: &mut ExpertOut) -> Result<()> {
        expert_ffn_cpu(job, out)
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
    fn raw_rows(&self, name: &str, rows: Range<u64>) -> Option<RawTensor<'_>> {
        self.inner.raw_rows(name, rows)
    }
    fn description(&self) -> String {
        self.inner.description()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

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
                    want.row_mut(r)[h * col_stride..h * col_stride + out]
                        .copy_from_slice(yh.row(r));
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
}
