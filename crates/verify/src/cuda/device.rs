//! The part of the CUDA backend that talks to the driver (cudarc, libraries loaded at run time).
//!
//! Why everything sits behind one mutex: blocks may call `matmul` from rayon workers, and the
//! backend uses one stream, one cuBLAS handle and one weight cache; serialising the calls keeps
//! the stream order trivially correct (the GPU is busy with one large GEMM at a time anyway).

use std::collections::HashMap;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use super::kernels::{
    self, kernel_for, launch_dims, CAUSAL_SOFTMAX_KERNEL, FP8_KERNEL, GATHER_KERNEL, KERNELS,
    SCATTER_ADD_KERNEL, SWIGLU_KERNEL,
};
use super::{
    attention_plan, gemm_params, head_matmul_plan, mqa_plan, AttnStep, BatchedGemm, GemmParams, Op,
    SoftmaxRows,
};
use crate::backend::{
    absorbed_mqa_cpu, check_fp8, check_head_matmul, ggml_rows, head_matmul_cpu, moe_experts_steps,
    Backend, Device, DeviceError, ExpertJob, ExpertObserver, ExpertOut, MoeJob, MqaJob, MqaOut,
    RawTensor,
};
use crate::ops::{self, AttnShape};
use crate::tensor::{Mat, SeqSpan};

/// Fraction of the free device memory (measured at start) that resident weights may use; the
/// rest is left for the activations and cuBLAS's workspace.
const WEIGHT_BUDGET_FRACTION: f64 = 0.6;

/// Device memory kept free of activations for cuBLAS's workspace and allocation slack.
const ACTIVATION_SLACK_BYTES: usize = 512 << 20;

/// What one group's activations may take of the `free` bytes the device had when the backend
/// opened: the part the resident weights may not use, less the attention score buffer
/// ([`super::ATTN_SCORES_BYTES`]) and [`ACTIVATION_SLACK_BYTES`].
fn activation_budget(free: usize) -> u64 {
    let rest = (free as f64 * (1.0 - WEIGHT_BUDGET_FRACTION)) as usize;
    rest.saturating_sub(super::ATTN_SCORES_BYTES + ACTIVATION_SLACK_BYTES) as u64
}

/// A dequantized weight (or row range of one) kept on the device until the layer ends.
struct Resident {
    /// Address of the host copy the block holds (the `Vec` the source returned), so `matmul`
    /// recognises the weight it is handed without comparing values.
    host_ptr: usize,
    /// Values in the host copy (`rows · width`).
    len: usize,
    /// The f32 values, row-major `[rows, width]`.
    buf: CudaSlice<f32>,
}

/// A weight on the device for one product: the layer's resident copy or a fresh upload.
enum WeightOnDevice<'s> {
    Resident(&'s CudaSlice<f32>),
    Uploaded(CudaSlice<f32>),
}

impl WeightOnDevice<'_> {
    fn get(&self) -> &CudaSlice<f32> {
        match self {
            WeightOnDevice::Resident(b) => b,
            WeightOnDevice::Uploaded(b) => b,
        }
    }
}

/// What the mutex guards.
struct State {
    /// Weights of the current layer by GGUF name (the latest row range of each).
    resident: HashMap<String, Resident>,
    /// Bytes held by `resident`.
    resident_bytes: usize,
    /// The first device error since the last `end_layer`.
    error: Option<DeviceError>,
}

/// cuBLAS + NVRTC kernels on one GPU. See the module docs of [`crate::cuda`] for what runs
/// here and what stays on the CPU.
pub struct CudaBackend {
    ordinal: usize,
    label: String,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// Kept alive for the functions loaded from it.
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
    weight_budget: usize,
    /// Bytes one group's activations may take ([`Backend::activation_budget`]).
    activation_budget: u64,
    state: Mutex<State>,
    /// Device memory in use (all processes, `total − free`) when the backend opened.
    start_used: usize,
    /// The most seen since, sampled after each expert and at each layer's end (before its
    /// weights are freed) — the points where this process holds the most.
    peak_used: AtomicUsize,
    /// Bytes moved across PCIe so far, by [`Traffic`] kind.
    moved: [AtomicU64; 4],
}

/// What a host↔device copy carries, for the end-of-run report: the evidence of what the
/// design keeps on the device (weights cross once per layer and group, activations only where
/// the blocks work on the host).
#[derive(Debug, Clone, Copy)]
enum Traffic {
    /// Stored weight bytes (raw blocks, FP8 with scales, or host f32) up.
    WeightsUp = 0,
    /// Dequantized weights copied back to the host blocks that hold them.
    WeightsDown = 1,
    /// Activations up (matmul inputs, attention operands, the MoE layer input, indices).
    ActivationsUp = 2,
    /// Activations down (products, outputs, g for the observer).
    ActivationsDown = 3,
}

impl CudaBackend {
    /// Opens GPU `ordinal`: checks that the driver, cuBLAS and NVRTC libraries can be loaded
    /// (cudarc panics on first use otherwise), creates the context, the cuBLAS handle, and
    /// compiles the dequantization kernels. Every failure is a [`DeviceError`], never a panic.
    pub fn new(ordinal: usize) -> Result<CudaBackend, DeviceError> {
        let device = Device::Cuda(ordinal);
        // SAFETY: these only try to dlopen the library by its usual names and report whether
        // that worked; no symbol is called.
        let (driver, cublas, nvrtc) = unsafe {
            (
                cudarc::driver::sys::is_culib_present(),
                cudarc::cublas::sys::is_culib_present(),
                cudarc::nvrtc::sys::is_culib_present(),
            )
        };
        if !driver {
            return Err(DeviceError::NoDriver(device));
        }
        for (present, lib) in [(cublas, "libcublas.so"), (nvrtc, "libnvrtc.so")] {
            if !present {
                return Err(DeviceError::NoLibrary { device, lib });
            }
        }
        // cudarc panics when a library lacks a symbol it expects (a driver older than the
        // CUDA 13.0 API it was built for); turn that into an error too.
        match catch_unwind(AssertUnwindSafe(|| CudaBackend::init(ordinal))) {
            Ok(r) => r,
            Err(_) => Err(DeviceError::Init {
                device,
                problem: "the CUDA libraries failed to initialise (a driver older than CUDA 13.0?)"
                    .into(),
            }),
        }
    }

    fn init(ordinal: usize) -> Result<CudaBackend, DeviceError> {
        let device = Device::Cuda(ordinal);
        let init = |problem: String| DeviceError::Init { device, problem };
        let count = CudaContext::device_count().map_err(|e| init(format!("cuInit: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(init(format!(
                "no such GPU: this machine has {count} CUDA device(s)"
            )));
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| init(format!("creating a context: {e}")))?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| init(format!("cuBLAS: {e}")))?;
        let ptx = compile_kernels().map_err(init)?;
        let module = ctx
            .load_module(ptx)
            .map_err(|e| init(format!("loading the kernels: {e}")))?;
        let mut functions = HashMap::new();
        for name in kernel_names() {
            let f = module
                .load_function(name)
                .map_err(|e| init(format!("kernel {name}: {e}")))?;
            functions.insert(name, f);
        }
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (free, total) = ctx
            .mem_get_info()
            .map_err(|e| init(format!("querying memory: {e}")))?;
        Ok(CudaBackend {
            ordinal,
            label: format!(
                "cuda:{ordinal} ({name}, {:.0} GiB, {:.0} GiB free)",
                total as f64 / (1u64 << 30) as f64,
                free as f64 / (1u64 << 30) as f64
            ),
            ctx,
            stream,
            blas,
            _module: module,
            functions,
            weight_budget: (free as f64 * WEIGHT_BUDGET_FRACTION) as usize,
            activation_budget: activation_budget(free),
            state: Mutex::new(State {
                resident: HashMap::new(),
                resident_bytes: 0,
                error: None,
            }),
            start_used: total.saturating_sub(free),
            peak_used: AtomicUsize::new(total.saturating_sub(free)),
            moved: Default::default(),
        })
    }

    /// Samples the device's memory in use into `peak_used` (best effort: a failed query is
    /// skipped, the report only gets less precise).
    fn note_memory(&self) {
        if let Ok((free, total)) = self.ctx.mem_get_info() {
            self.peak_used
                .fetch_max(total.saturating_sub(free), Ordering::Relaxed);
        }
    }

    /// `data` copied to a new device buffer, counted as `kind`.
    fn up<T: DeviceRepr>(&self, data: &[T], kind: Traffic) -> Result<CudaSlice<T>, String> {
        self.moved[kind as usize].fetch_add(std::mem::size_of_val(data) as u64, Ordering::Relaxed);
        self.stream.clone_htod(data).map_err(|e| e.to_string())
    }

    /// `buf` copied into `dst` on the host (queued on the stream), counted as `kind`.
    fn down<T: DeviceRepr>(
        &self,
        buf: &CudaSlice<T>,
        dst: &mut [T],
        kind: Traffic,
    ) -> Result<(), String> {
        self.moved[kind as usize].fetch_add(std::mem::size_of_val(dst) as u64, Ordering::Relaxed);
        self.stream.memcpy_dtoh(buf, dst).map_err(|e| e.to_string())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only a cache behind; keep using it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `device` under the lock unless a device error is already recorded; a new error is
    /// recorded (as `during`). `None` in both cases: the infallible ops (`matmul`,
    /// `head_matmul`, `attention`) then use the CPU result, which keeps the numbers right, and
    /// [`Backend::end_layer`] reports the error.
    fn on_device<T>(
        &self,
        during: impl FnOnce() -> String,
        device: impl FnOnce(&State) -> Result<T, String>,
    ) -> Option<T> {
        let mut state = self.lock();
        if state.error.is_some() {
            return None;
        }
        match device(&state) {
            Ok(v) => Some(v),
            Err(problem) => {
                state.error = Some(DeviceError::Runtime {
                    during: during(),
                    problem,
                });
                None
            }
        }
    }

    fn function(&self, name: &str) -> Result<&CudaFunction, String> {
        self.functions
            .get(name)
            .ok_or_else(|| format!("kernel {name} was not loaded"))
    }

    /// Launches a `(src, dst, n)` dequantization kernel over `n` elements.
    fn launch_ggml(
        &self,
        kernel: &str,
        src: &CudaSlice<u8>,
        dst: &mut CudaSlice<f32>,
        n: u64,
    ) -> Result<(), String> {
        let Some(cfg) = launch_config(n) else {
            return Ok(());
        };
        let f = self.function(kernel)?;
        let mut args = self.stream.launch_builder(f);
        args.arg(src).arg(dst).arg(&n);
        // SAFETY: the kernel reads bytes (i / QK)·BYTES .. +BYTES of `src` for i < n, and the
        // caller sized `src` to n/QK whole blocks (checked against the type's row size) and
        // `dst` to n floats; argument types match the kernel's (const u8*, float*, u64).
        unsafe { args.launch(cfg) }
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Dequantizes on the device; returns the device buffer and copies it into `out`.
    fn dequantize_device(
        &self,
        raw: RawTensor<'_>,
        width: usize,
        rows: Range<usize>,
        out: &mut [f32],
    ) -> Result<CudaSlice<f32>, String> {
        if out.len() != rows.len() * width {
            return Err(format!(
                "output holds {} values, rows {rows:?} × {width} need {}",
                out.len(),
                rows.len() * width
            ));
        }
        let dst = self.dequantize_on_device(raw, width, rows)?;
        self.down(&dst, out, Traffic::WeightsDown)?;
        self.stream.synchronize().map_err(|e| e.to_string())?;
        Ok(dst)
    }

    /// Uploads rows `rows` of `raw` (`width` values each) and dequantizes them into a new
    /// device buffer (nothing comes back to the host).
    fn dequantize_on_device(
        &self,
        raw: RawTensor<'_>,
        width: usize,
        rows: Range<usize>,
    ) -> Result<CudaSlice<f32>, String> {
        let n = rows.len() * width;
        self.ctx.bind_to_thread().map_err(|e| e.to_string())?;
        let mut dst = self
            .stream
            .alloc_zeros::<f32>(n.max(1))
            .map_err(|e| e.to_string())?;
        match raw {
            RawTensor::Ggml { ty, data } => {
                let k = kernel_for(ty).ok_or_else(|| format!("no GPU kernel for {ty}"))?;
                let bytes = ggml_rows(ty, data, width, &rows)?;
                let blocks = n / k.block as usize;
                if !n.is_multiple_of(k.block as usize) || blocks * k.bytes as usize != bytes.len() {
                    return Err(format!(
                        "{} bytes of {ty} cannot hold {n} values",
                        bytes.len()
                    ));
                }
                let src = self.up(bytes, Traffic::WeightsUp)?;
                self.launch_ggml(k.kernel, &src, &mut dst, n as u64)?;
            }
            RawTensor::Fp8Block {
                data,
                scales,
                rows: n_rows,
                cols,
                block,
            } => {
                check_fp8(data, scales, n_rows, cols, block)?;
                if cols != width || rows.end > n_rows || n != rows.len() * cols {
                    return Err(format!(
                        "FP8 tensor is [{n_rows}, {cols}], rows {rows:?} × {width} requested"
                    ));
                }
                let scale_values: Vec<f32> = scales
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let bytes = data
                    .get(rows.start * cols..rows.end * cols)
                    .ok_or_else(|| format!("rows {rows:?} lie beyond the FP8 tensor"))?;
                let src = self.up(bytes, Traffic::WeightsUp)?;
                let sc = self.up(&scale_values, Traffic::WeightsUp)?;
                if let Some(cfg) = launch_config(n as u64) {
                    let f = self.function(FP8_KERNEL)?;
                    let (n64, cols64, row0) = (n as u64, cols as u64, rows.start as u64);
                    let scale_cols = cols.div_ceil(block[1]) as u64;
                    let (b0, b1) = (block[0] as u64, block[1] as u64);
                    let mut args = self.stream.launch_builder(f);
                    args.arg(&src)
                        .arg(&sc)
                        .arg(&mut dst)
                        .arg(&n64)
                        .arg(&cols64)
                        .arg(&row0)
                        .arg(&scale_cols)
                        .arg(&b0)
                        .arg(&b1);
                    // SAFETY: `src` holds exactly the n = rows·cols bytes of the requested rows,
                    // `sc` the whole ⌈rows/b0⌉·⌈cols/b1⌉ grid (check_fp8), so every index the
                    // kernel forms (i < n; scale row (row0 + i/cols)/b0 < ⌈rows/b0⌉) is in
                    // bounds; `dst` holds n floats; argument types match the kernel signature.
                    unsafe { args.launch(cfg) }.map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(dst)
    }

    /// `y[tokens, out] = x[tokens, inp] · w[out, inp]ᵀ` on cuBLAS, all three on the device.
    fn gemm_device(
        &self,
        (x, tokens, inp): (&CudaSlice<f32>, usize, usize),
        (w, out): (&CudaSlice<f32>, usize),
        y: &mut CudaSlice<f32>,
    ) -> Result<(), String> {
        let p = gemm_params(tokens, inp, out)?;
        if tokens == 0 || out == 0 || inp == 0 {
            return Ok(());
        }
        if x.len() < tokens * inp || w.len() < out * inp || y.len() < tokens * out {
            return Err(format!(
                "device buffers of {}, {} and {} floats cannot hold [{tokens}, {inp}] · [{out}, {inp}]ᵀ",
                x.len(),
                w.len(),
                y.len()
            ));
        }
        // SAFETY: gemm_params maps the row-major shapes to column-major ones that address
        // exactly w's out·in, x's T·in and y's T·out floats (tested in cuda/tests.rs against
        // an emulation of SGEMM); the three buffers hold at least that many (checked above).
        unsafe { self.blas.gemm(gemm_config(&p), w, x, y) }.map_err(|e| e.to_string())
    }

    /// One strided-batched SGEMM of an attention plan on device buffers (row-major lhs, rhs,
    /// out as [`BatchedGemm`] names them).
    fn gemm_batched(
        &self,
        g: &BatchedGemm,
        lhs: &CudaSlice<f32>,
        rhs: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), String> {
        let [el, er, eo] = g.extents();
        if el > lhs.len() || er > rhs.len() || eo > out.len() {
            return Err(format!(
                "device buffers of {}, {} and {} floats cannot hold {g:?}",
                lhs.len(),
                rhs.len(),
                out.len()
            ));
        }
        let stride = |s: usize| i64::try_from(s).map_err(|_| format!("stride {s} exceeds i64"));
        let cfg = StridedBatchedConfig {
            gemm: gemm_config(&g.params),
            batch_size: g.batch as i32,
            stride_a: stride(g.rhs.stride)?,
            stride_b: stride(g.lhs.stride)?,
            stride_c: stride(g.out.stride)?,
        };
        let a = rhs.slice(g.rhs.offset..);
        let b = lhs.slice(g.lhs.offset..);
        let mut c = out.slice_mut(g.out.offset..);
        // SAFETY: cuBLAS reads rhs as A, lhs as B and writes out as C at the plan's offsets,
        // leading dimensions and batch strides; `extents` is the last float each touches
        // (row_major_batched checked ld ≥ row length, and the mapping is tested against an
        // emulation of SGEMM in cuda/tests.rs), and every buffer holds that many (checked
        // above). The batch count fits i32 (row_major_batched).
        unsafe { self.blas.gemm_strided_batched(cfg, &a, &b, &mut c) }.map_err(|e| e.to_string())
    }

    /// The causal softmax kernel over the first `m.rows · m.n` floats of `scores`.
    fn softmax_device(
        &self,
        m: &SoftmaxRows,
        scale: f32,
        scores: &mut CudaSlice<f32>,
    ) -> Result<(), String> {
        if m.rows * m.n > scores.len() || m.group == 0 {
            return Err(format!(
                "score buffer of {} floats cannot hold {m:?}",
                scores.len()
            ));
        }
        let Some(cfg) = launch_config(m.rows as u64) else {
            return Ok(());
        };
        let f = self.function(CAUSAL_SOFTMAX_KERNEL)?;
        let (rows, n, group, first) = (m.rows as u64, m.n as u64, m.group as u64, m.first as u64);
        let mut args = self.stream.launch_builder(f);
        args.arg(scores)
            .arg(&rows)
            .arg(&n)
            .arg(&group)
            .arg(&first)
            .arg(&scale);
        // SAFETY: the kernel touches floats r·n .. (r+1)·n for r < rows, all within `scores`
        // (checked above), and divides by group ≠ 0; argument types match the kernel
        // signature (float*, u64, u64, u64, u64, float).
        unsafe { args.launch(cfg) }
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Causal attention on the device ([`super::attention_plan`]): q, k and v uploaded once,
    /// per span, block of queries and K/V group a (batched) SGEMM for the scores, the causal
    /// softmax kernel, a (batched) SGEMM for P·V into the resident output; the output comes
    /// down once. The score buffer holds at most `max_scores` floats (unless a single query
    /// of one group needs more).
    pub(super) fn attention_device(
        &self,
        (q, k, v): (&Mat, &Mat, &Mat),
        seqs: &[SeqSpan],
        s: &AttnShape,
        max_scores: usize,
    ) -> Result<Mat, String> {
        let (steps, scores_len) = attention_plan(q.rows, seqs, s, max_scores)?;
        let mut y = Mat::zeros(q.rows, s.n_head * s.head_dim_v);
        if steps.is_empty() {
            return Ok(y);
        }
        self.ctx.bind_to_thread().map_err(|e| e.to_string())?;
        let up = |m: &Mat| self.up(&m.data, Traffic::ActivationsUp);
        let (qd, kd, vd) = (up(q)?, up(k)?, up(v)?);
        let mut yd = self.alloc(y.data.len())?;
        self.attention_steps(&steps, scores_len, s.scale, (&qd, &kd, &vd), &mut yd)?;
        self.note_memory();
        self.down(&yd, &mut y.data, Traffic::ActivationsDown)?;
        self.stream.synchronize().map_err(|e| e.to_string())?;
        Ok(y)
    }

    /// A zeroed device buffer of `len` floats.
    fn alloc(&self, len: usize) -> Result<CudaSlice<f32>, String> {
        self.stream
            .alloc_zeros::<f32>(len)
            .map_err(|e| e.to_string())
    }

    /// The steps of an [`attention_plan`] on device buffers: per step the scores SGEMM, the
    /// causal softmax kernel and the P·V SGEMM into `yd`, with one score buffer for all.
    fn attention_steps(
        &self,
        steps: &[AttnStep],
        scores_len: usize,
        scale: f32,
        (qd, kd, vd): (&CudaSlice<f32>, &CudaSlice<f32>, &CudaSlice<f32>),
        yd: &mut CudaSlice<f32>,
    ) -> Result<(), String> {
        if steps.is_empty() {
            return Ok(());
        }
        let mut scores = self.alloc(scores_len)?;
        for st in steps {
            self.gemm_batched(&st.scores, qd, kd, &mut scores)?;
            self.softmax_device(&st.softmax, scale, &mut scores)?;
            self.gemm_batched(&st.pv, &scores, vd, yd)?;
        }
        Ok(())
    }

    /// MLA's absorbed attention on the device ([`mqa_plan`]): the roped queries, the latent K
    /// and V go up; absorption (`attn_k_b`, resident or uploaded, read against the queries'
    /// nope slices in place), the rope slices' copy (an identity SGEMM), the attention steps
    /// and the decompression (`attn_v_b`) run on board; the heads' output comes down, and the
    /// latent attention output too when the observer wants it.
    fn mqa_device(
        &self,
        state: &State,
        job: &MqaJob<'_>,
        max_scores: usize,
    ) -> Result<MqaOut, String> {
        let (d, t) = (job.dims, job.q.rows);
        let plan = mqa_plan(t, (d.n_head, d.nope, d.rope, d.kv_lora, d.v_head))?;
        let shape = job.shape();
        let (steps, scores_len) = attention_plan(t, job.seqs, &shape, max_scores)?;
        self.ctx.bind_to_thread().map_err(|e| e.to_string())?;
        let up = |data: &[f32]| self.up(data, Traffic::ActivationsUp);
        let (qd, kd, vd) = (up(&job.q.data)?, up(&job.k.data)?, up(&job.v.data)?);
        let k_b = self.weight_device(state, job.names[0], job.k_b)?;
        let v_b = self.weight_device(state, job.names[1], job.v_b)?;
        let mut q_abs = self.alloc(t * d.n_head * d.k_abs())?;
        self.gemm_batched(&plan.absorb, &qd, k_b.get(), &mut q_abs)?;
        if let Some(copy) = &plan.rope_copy {
            let mut identity = vec![0f32; d.rope * d.rope];
            identity
                .iter_mut()
                .step_by(d.rope + 1)
                .for_each(|x| *x = 1.0);
            self.gemm_batched(copy, &qd, &up(&identity)?, &mut q_abs)?;
        }
        drop(qd);
        let mut latent = self.alloc(t * d.n_head * d.kv_lora)?;
        self.attention_steps(
            &steps,
            scores_len,
            shape.scale,
            (&q_abs, &kd, &vd),
            &mut latent,
        )?;
        drop((q_abs, kd, vd));
        let mut od = self.alloc(t * d.n_head * d.v_head)?;
        self.gemm_batched(&plan.decompress, &latent, v_b.get(), &mut od)?;
        self.note_memory();
        let down = |buf: &CudaSlice<f32>, cols: usize| -> Result<Mat, String> {
            let mut m = Mat::zeros(t, cols);
            self.down(buf, &mut m.data, Traffic::ActivationsDown)?;
            Ok(m)
        };
        let o = down(&od, d.n_head * d.v_head)?;
        let latent = if job.keep_latent {
            Some(down(&latent, d.n_head * d.kv_lora)?)
        } else {
            None
        };
        self.stream.synchronize().map_err(|e| e.to_string())?;
        Ok(MqaOut { o, latent })
    }

    /// One routed expert on the device: each weight's raw rows (or, where `raws[i]` is `None`,
    /// the host f32 copy in `out.weights[i]`) uploaded and dequantized there, x uploaded, three
    /// SGEMMs and the SwiGLU kernel; only g and y come back.
    fn expert_device(
        &self,
        job: &ExpertJob<'_>,
        raws: &[Option<RawTensor<'_>>; 3],
        out: &mut ExpertOut,
    ) -> Result<(), String> {
        let (n, n_embd, n_ff) = (job.x.rows, job.n_embd, job.n_ff);
        out.g.reshape(n, n_ff);
        out.y.reshape(n, n_embd);
        if n == 0 || n_embd == 0 || n_ff == 0 {
            out.g.data.fill(0.0);
            out.y.data.fill(0.0);
            return Ok(());
        }
        if job.x.cols != n_embd {
            return Err(format!(
                "expert input is {} wide, the model {n_embd}",
                job.x.cols
            ));
        }
        self.ctx.bind_to_thread().map_err(|e| e.to_string())?;
        let x = self.up(&job.x.data, Traffic::ActivationsUp)?;
        let (g, y) = self.expert_on_device(job, n, raws, &out.weights, &x)?;
        self.down(&g, &mut out.g.data, Traffic::ActivationsDown)?;
        self.down(&y, &mut out.y.data, Traffic::ActivationsDown)?;
        self.stream.synchronize().map_err(|e| e.to_string())
    }

    /// g `[n, n_ff]` and y `[n, n_embd]` of expert `job.expert` over the device inputs `x`
    /// (`n` rows; `job.x` is not read): the weights dequantized on the device from `raws`, or
    /// uploaded from the host copies `host[i]` where `raws[i]` is `None`; x·gateᵀ, x·upᵀ,
    /// SwiGLU, g·downᵀ. The weights are freed on return.
    fn expert_on_device(
        &self,
        job: &ExpertJob<'_>,
        n: usize,
        raws: &[Option<RawTensor<'_>>; 3],
        host: &[Vec<f32>; 3],
        x: &CudaSlice<f32>,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>), String> {
        let (n_embd, n_ff) = (job.n_embd, job.n_ff);
        let mut w = Vec::with_capacity(3);
        for (i, raw) in raws.iter().enumerate() {
            let (rows, width) = job.shape(i);
            w.push(match raw {
                Some(raw) => self.dequantize_on_device(*raw, width, 0..rows)?,
                None => self.up(&host[i], Traffic::WeightsUp)?,
            });
        }
        let (mut g, mut u) = (self.alloc(n * n_ff)?, self.alloc(n * n_ff)?);
        let mut y = self.alloc(n * n_embd)?;
        self.gemm_device((x, n, n_embd), (&w[0], n_ff), &mut g)?;
        self.gemm_device((x, n, n_embd), (&w[1], n_ff), &mut u)?;
        if let Some(cfg) = launch_config((n * n_ff) as u64) {
            let f = self.function(SWIGLU_KERNEL)?;
            let len = (n * n_ff) as u64;
            let mut args = self.stream.launch_builder(f);
            args.arg(&mut g).arg(&u).arg(&len);
            // SAFETY: g and u were allocated with n·n_ff floats and the kernel touches indices
            // below `len` = n·n_ff only; argument types match (float*, const float*, u64).
            unsafe { args.launch(cfg) }.map_err(|e| e.to_string())?;
        }
        drop(u);
        self.gemm_device((&g, n, n_ff), (&w[2], n_embd), &mut y)?;
        self.note_memory();
        Ok((g, y))
    }

    /// One expert of [`Backend::moe_experts`] on the device: its tokens gathered from the
    /// resident layer input `x` ([`GATHER_KERNEL`]), its FFN ([`Self::expert_on_device`]), its
    /// weighted output added into the resident sum `acc` ([`SCATTER_ADD_KERNEL`]); g comes down
    /// into `out.g` only when `want_g` (the observer's).
    fn moe_expert_device(
        &self,
        job: &ExpertJob<'_>,
        list: &[(usize, f32)],
        raws: &[Option<RawTensor<'_>>; 3],
        (x, acc, tokens): (&CudaSlice<f32>, &mut CudaSlice<f32>, usize),
        out: &mut ExpertOut,
        want_g: bool,
    ) -> Result<(), String> {
        let (n, n_embd) = (list.len(), job.n_embd);
        if n == 0 || n_embd == 0 || job.n_ff == 0 {
            // Nothing routed: the observer sees an empty g, not the previous expert's.
            out.g.reshape(n, job.n_ff);
            return Ok(());
        }
        let idx = list
            .iter()
            .map(|&(tok, _)| {
                u32::try_from(tok)
                    .ok()
                    .filter(|_| tok < tokens)
                    .ok_or_else(|| format!("token {tok} routed to an expert, of {tokens}"))
            })
            .collect::<Result<Vec<u32>, String>>()?;
        let weights: Vec<f32> = list.iter().map(|&(_, w)| w).collect();
        self.ctx.bind_to_thread().map_err(|e| e.to_string())?;
        let idx = self.up(&idx, Traffic::ActivationsUp)?;
        let weights = self.up(&weights, Traffic::ActivationsUp)?;
        let (rows, cols) = (n as u64, n_embd as u64);
        let mut xe = self.alloc(n * n_embd)?;
        if let Some(cfg) = launch_config(rows * cols) {
            let mut args = self.stream.launch_builder(self.function(GATHER_KERNEL)?);
            args.arg(x).arg(&idx).arg(&mut xe).arg(&rows).arg(&cols);
            // SAFETY: every idx is below `tokens` (checked above) and x holds tokens·n_embd
            // floats (the layer input); xe holds n·n_embd = rows·cols, the indices the kernel
            // writes; argument types match (const float*, const u32*, float*, u64, u64).
            unsafe { args.launch(cfg) }.map_err(|e| e.to_string())?;
        }
        let (g, y) = self.expert_on_device(job, n, raws, &out.weights, &xe)?;
        drop(xe);
        if let Some(cfg) = launch_config(rows * cols) {
            let mut args = self
                .stream
                .launch_builder(self.function(SCATTER_ADD_KERNEL)?);
            args.arg(acc)
                .arg(&y)
                .arg(&idx)
                .arg(&weights)
                .arg(&rows)
                .arg(&cols);
            // SAFETY: acc holds tokens·n_embd floats and every idx is below `tokens`; y holds
            // rows·cols, idx and weights `rows` values; the idx are distinct (one routing entry
            // per token and expert), so no two threads write the same float; argument types
            // match (float*, const float*, const u32*, const float*, u64, u64).
            unsafe { args.launch(cfg) }.map_err(|e| e.to_string())?;
        }
        if want_g {
            out.g.reshape(n, job.n_ff);
            self.down(&g, &mut out.g.data, Traffic::ActivationsDown)?;
            self.stream.synchronize().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// w's resident device copy (dequantized under `name` from the buffer the block holds),
    /// or a new upload of it.
    fn weight_device<'s>(
        &self,
        state: &'s State,
        name: &str,
        w: &Mat,
    ) -> Result<WeightOnDevice<'s>, String> {
        Ok(match state.resident.get(name) {
            Some(r) if r.host_ptr == w.data.as_ptr() as usize && r.len == w.data.len() => {
                WeightOnDevice::Resident(&r.buf)
            }
            _ => WeightOnDevice::Uploaded(self.up(&w.data, Traffic::WeightsUp)?),
        })
    }

    /// Per-head products on cuBLAS ([`super::head_matmul_plan`]): x (and y, unless the heads
    /// cover all its columns) uploaded, w resident or uploaded, one strided-batched SGEMM,
    /// y downloaded.
    fn head_matmul_device(
        &self,
        state: &State,
        name: &str,
        (x, w, heads): (&Mat, &Mat, usize),
        y: &mut Mat,
        col_stride: usize,
    ) -> Result<(), String> {
        let (inp, out) = (w.cols, w.rows / heads);
        let plan = head_matmul_plan(x.rows, (heads, inp, out), x.cols, (y.cols, col_stride))?;
        self.ctx.bind_to_thread().map_err(|e| e.to_string())?;
        let w_dev = self.weight_device(state, name, w)?;
        let x_dev = self.up(&x.data, Traffic::ActivationsUp)?;
        // Columns outside the heads keep their values: upload y unless there are none.
        let mut y_dev = if heads * out == y.cols && col_stride == out {
            self.alloc(y.data.len())
        } else {
            self.up(&y.data, Traffic::ActivationsUp)
        }?;
        self.gemm_batched(&plan, &x_dev, w_dev.get(), &mut y_dev)?;
        self.down(&y_dev, &mut y.data, Traffic::ActivationsDown)?;
        self.stream.synchronize().map_err(|e| e.to_string())
    }

    /// `yᵢ = x · wᵢᵀ` on cuBLAS for each `(name, wᵢ)`: x uploaded once, each w's resident
    /// device copy used if there is one, the products downloaded.
    fn matmuls_device(
        &self,
        state: &State,
        x: &Mat,
        ws: &[(&str, &Mat)],
    ) -> Result<Vec<Mat>, String> {
        for &(_, w) in ws {
            gemm_params(x.rows, x.cols, w.rows)?;
        }
        let mut ys: Vec<Mat> = ws.iter().map(|(_, w)| Mat::zeros(x.rows, w.rows)).collect();
        if x.rows == 0 || x.cols == 0 {
            return Ok(ys);
        }
        self.ctx.bind_to_thread().map_err(|e| e.to_string())?;
        let x_dev = self.up(&x.data, Traffic::ActivationsUp)?;
        for (&(name, w), y) in ws.iter().zip(&mut ys) {
            if w.rows == 0 {
                continue;
            }
            let w_dev = self.weight_device(state, name, w)?;
            let mut y_dev = self.alloc(y.data.len())?;
            self.gemm_device((&x_dev, x.rows, x.cols), (w_dev.get(), w.rows), &mut y_dev)?;
            self.down(&y_dev, &mut y.data, Traffic::ActivationsDown)?;
        }
        self.stream.synchronize().map_err(|e| e.to_string())?;
        Ok(ys)
    }
}

impl Backend for CudaBackend {
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    fn describe(&self) -> String {
        self.label.clone()
    }

    fn matmul(&self, name: &str, x: &Mat, w: &Mat) -> Mat {
        let mut ys = self.matmuls(x, &[(name, w)]);
        ys.pop().expect("one product")
    }

    fn matmuls(&self, x: &Mat, ws: &[(&str, &Mat)]) -> Vec<Mat> {
        for &(_, w) in ws {
            assert_eq!(x.cols, w.cols, "matmul: input widths differ");
        }
        let during = || {
            let names: Vec<&str> = ws.iter().map(|&(n, _)| n).collect();
            format!("matmul {}", names.join(", "))
        };
        self.on_device(during, |state| self.matmuls_device(state, x, ws))
            .unwrap_or_else(|| ws.iter().map(|&(_, w)| ops::matmul(x, w)).collect())
    }

    fn head_matmul(
        &self,
        name: &str,
        x: &Mat,
        w: &Mat,
        heads: usize,
        y: &mut Mat,
        col_stride: usize,
    ) {
        check_head_matmul(x, w, heads, y, col_stride);
        if x.rows == 0 || w.rows == 0 || w.cols == 0 {
            return head_matmul_cpu(x, w, heads, y, col_stride);
        }
        let during = || format!("per-head matmul {name}");
        let device = |state: &State| {
            self.head_matmul_device(state, name, (x, w, heads), &mut *y, col_stride)
        };
        if self.on_device(during, device).is_none() {
            head_matmul_cpu(x, w, heads, y, col_stride);
        }
    }

    fn attention(&self, q: &Mat, k: &Mat, v: &Mat, seqs: &[SeqSpan], shape: &AttnShape) -> Mat {
        shape.check(q, k, v);
        let during = || {
            format!(
                "attention of {} tokens ({} heads on {} K/V heads)",
                q.rows, shape.n_head, shape.n_head_kv
            )
        };
        let max_scores = super::ATTN_SCORES_BYTES / 4;
        let device = |_: &State| self.attention_device((q, k, v), seqs, shape, max_scores);
        self.on_device(during, device)
            .unwrap_or_else(|| ops::attention(q, k, v, seqs, shape))
    }

    fn absorbed_mqa(&self, job: &MqaJob<'_>) -> MqaOut {
        job.check();
        let d = job.dims;
        if [job.q.rows, d.n_head, d.nope, d.kv_lora, d.v_head].contains(&0) {
            return absorbed_mqa_cpu(job);
        }
        let during = || {
            format!(
                "absorbed attention of {} tokens ({} heads)",
                job.q.rows, d.n_head
            )
        };
        let max_scores = super::ATTN_SCORES_BYTES / 4;
        self.on_device(during, |state| self.mqa_device(state, job, max_scores))
            .unwrap_or_else(|| absorbed_mqa_cpu(job))
    }

    fn dequantizes(&self) -> bool {
        true
    }

    fn dequantize(
        &self,
        name: &str,
        raw: RawTensor<'_>,
        width: usize,
        rows: Range<usize>,
        out: &mut [f32],
    ) -> Result<(), String> {
        let mut state = self.lock();
        if let Some(old) = state.resident.remove(name) {
            state.resident_bytes -= old.len * 4;
        }
        let buf = match self.dequantize_device(raw, width, rows.clone(), out) {
            Ok(buf) => buf,
            Err(problem) => {
                drop(state);
                // Unsupported types (or a device failure) fall back to the CPU reference;
                // a device failure is also reported at the end of the layer.
                if raw_supported(raw) {
                    let mut s = self.lock();
                    s.error.get_or_insert(DeviceError::Runtime {
                        during: format!("dequantize {name}"),
                        problem,
                    });
                }
                return crate::backend::dequantize_cpu(raw, width, rows, out);
            }
        };
        let bytes = out.len() * 4;
        if state.resident_bytes + bytes <= self.weight_budget {
            state.resident_bytes += bytes;
            state.resident.insert(
                name.to_string(),
                Resident {
                    host_ptr: out.as_ptr() as usize,
                    len: out.len(),
                    buf,
                },
            );
        }
        Ok(())
    }

    /// One at a time: the device runs one kernel stream under one lock anyway, and each expert
    /// already fills the GPU (an R1 expert's GEMMs are 2048×7168 over all its tokens); running
    /// several would only hold more host buffers while they wait for the lock.
    fn experts_at_once(&self, _active: usize) -> usize {
        1
    }

    fn expert_ffn(&self, job: &ExpertJob<'_>, out: &mut ExpertOut) -> crate::error::Result<()> {
        let raws = expert_raws(job, out)?;
        let mut state = self.lock();
        // A device error recorded earlier in the layer (a matmul) stops the run here.
        if let Some(e) = state.error.take() {
            return Err(e.into());
        }
        self.expert_device(job, &raws, out)
            .map_err(|problem| expert_error(job, problem))
    }

    fn moe_experts(
        &self,
        job: &MoeJob<'_>,
        mut observe: Option<&mut ExpertObserver<'_>>,
    ) -> crate::error::Result<Mat> {
        let (t, n_embd) = (job.x.rows, job.n_embd);
        if t == 0 || n_embd == 0 || job.n_ff == 0 || job.x.cols != n_embd {
            return moe_experts_steps(self, job, observe);
        }
        let device_error = |during: &str, problem: String| -> crate::error::VerifyError {
            DeviceError::Runtime {
                during: during.into(),
                problem,
            }
            .into()
        };
        let (x, mut acc) = {
            let mut state = self.lock();
            if let Some(e) = state.error.take() {
                return Err(e.into());
            }
            let up = || -> Result<_, String> {
                self.ctx.bind_to_thread().map_err(|e| e.to_string())?;
                let x = self.up(&job.x.data, Traffic::ActivationsUp)?;
                Ok((x, self.alloc(t * n_embd)?))
            };
            up().map_err(|p| device_error("the MoE layer's input", p))?
        };
        let (mut out, mut xe) = (ExpertOut::default(), Mat::zeros(0, 0));
        let none = Mat::zeros(0, n_embd);
        for &(e, list) in job.active {
            let ej = job.expert(e, &none, false);
            // Raw bytes (or host f32) before taking the lock, as `expert_ffn`.
            let raws = expert_raws(&ej, &mut out)?;
            {
                let mut state = self.lock();
                if let Some(e) = state.error.take() {
                    return Err(e.into());
                }
                let buffers = (&x, &mut acc, t);
                self.moe_expert_device(&ej, list, &raws, buffers, &mut out, observe.is_some())
                    .map_err(|problem| expert_error(&ej, problem))?;
            }
            if let Some(f) = observe.as_mut() {
                job.gather(list, &mut xe);
                f(e, &xe, &out.g);
            }
        }
        let mut y = Mat::zeros(t, n_embd);
        let _state = self.lock();
        self.down(&acc, &mut y.data, Traffic::ActivationsDown)
            .and_then(|_| self.stream.synchronize().map_err(|e| e.to_string()))
            .map_err(|p| device_error("the MoE layer's output", p))?;
        Ok(y)
    }

    fn activation_budget(&self) -> Option<u64> {
        Some(self.activation_budget)
    }

    fn memory_report(&self) -> Option<String> {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        let peak = self.peak_used.load(Ordering::Relaxed);
        let moved = |k: Traffic| gib(self.moved[k as usize].load(Ordering::Relaxed) as usize);
        Some(format!(
            "cuda:{}: peak device memory in use {:.2} GiB ({:.2} GiB at start, so {:.2} GiB for this run); \
             PCIe: weights {:.2} GiB up ({:.2} GiB back as f32), activations {:.2} GiB up, {:.2} GiB down",
            self.ordinal,
            gib(peak),
            gib(self.start_used),
            gib(peak.saturating_sub(self.start_used)),
            moved(Traffic::WeightsUp),
            moved(Traffic::WeightsDown),
            moved(Traffic::ActivationsUp),
            moved(Traffic::ActivationsDown),
        ))
    }

    fn end_layer(&self) -> Result<(), DeviceError> {
        self.note_memory();
        let mut state = self.lock();
        state.resident.clear();
        state.resident_bytes = 0;
        match state.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Every kernel the backend loads from [`kernels::SOURCE`].
pub(crate) fn kernel_names() -> impl Iterator<Item = &'static str> {
    KERNELS.iter().map(|k| k.kernel).chain([
        FP8_KERNEL,
        SWIGLU_KERNEL,
        CAUSAL_SOFTMAX_KERNEL,
        GATHER_KERNEL,
        SCATTER_ADD_KERNEL,
    ])
}

/// [`kernels::SOURCE`] compiled to PTX by NVRTC, with the options the backend uses. NVRTC runs
/// on the host and needs no GPU or driver, so this is also tested where only `libnvrtc` is
/// present (`cuda::tests::nvrtc_compiles_every_kernel`).
pub(crate) fn compile_kernels() -> Result<cudarc::nvrtc::Ptx, String> {
    let opts = CompileOptions {
        // Separate multiplies and adds, as the CPU reference rounds them.
        fmad: Some(false),
        name: Some("r1q_dequant.cu".into()),
        ..CompileOptions::default()
    };
    compile_ptx_with_opts(kernels::SOURCE, opts)
        .map_err(|e| format!("NVRTC compiling the kernels: {e}"))
}

/// Which of an expert's weights go up as raw bytes (a kernel for their type, bytes cut at the
/// expert's rows); the others are dequantized by the source into host f32 (`out.weights`)
/// now — before taking the lock: a wrapped source (`BackendSource`) may call `dequantize`,
/// which locks too.
fn expert_raws<'s>(
    job: &ExpertJob<'s>,
    out: &mut ExpertOut,
) -> crate::error::Result<[Option<RawTensor<'s>>; 3]> {
    let mut raws: [Option<RawTensor<'s>>; 3] = [None; 3];
    for (i, raw) in raws.iter_mut().enumerate() {
        let (name, rows) = (job.names[i], job.rows(i));
        *raw = job
            .source
            .raw_rows(name, rows.clone())
            .filter(|r| raw_supported(*r));
        if raw.is_none() {
            let (r, c) = job.shape(i);
            out.weights[i].resize(r * c, 0.0);
            job.source
                .load_row_range_into(name, rows, &mut out.weights[i])?;
        }
    }
    Ok(raws)
}

/// A device failure while running expert `job.expert`, naming it.
fn expert_error(job: &ExpertJob<'_>, problem: String) -> crate::error::VerifyError {
    DeviceError::Runtime {
        during: format!(
            "expert {} of {}/{}/{}",
            job.expert, job.names[0], job.names[1], job.names[2]
        ),
        problem,
    }
    .into()
}

/// Whether the device has a kernel for `raw` (otherwise the CPU reference is used, silently).
fn raw_supported(raw: RawTensor<'_>) -> bool {
    match raw {
        RawTensor::Ggml { ty, .. } => kernel_for(ty).is_some(),
        RawTensor::Fp8Block { .. } => true,
    }
}

/// cudarc's configuration of the column-major SGEMM `p` (α = 1, β = 0).
fn gemm_config(p: &GemmParams) -> GemmConfig<f32> {
    let op = |o: Op| match o {
        Op::N => cublasOperation_t::CUBLAS_OP_N,
        Op::T => cublasOperation_t::CUBLAS_OP_T,
    };
    GemmConfig {
        transa: op(p.transa),
        transb: op(p.transb),
        m: p.m,
        n: p.n,
        k: p.k,
        alpha: 1.0f32,
        lda: p.lda,
        ldb: p.ldb,
        beta: 0.0f32,
        ldc: p.ldc,
    }
}

/// The launch of an elementwise kernel over `n` elements (`None` for none): [`launch_dims`].
fn launch_config(n: u64) -> Option<LaunchConfig> {
    let (grid, threads) = launch_dims(n)?;
    Some(LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}
