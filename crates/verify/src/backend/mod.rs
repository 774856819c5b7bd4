//! The device seam of the engine: which processor runs the heavy ops of a layer (the GEMMs
//! `x · wᵀ` over all tokens, the dequantization of the layer's weights, the attention and the
//! routed MoE experts).
//!
//! Why a seam and not a second engine: the blocks (`arch/`) are written once, on host [`Mat`]s;
//! a [`Backend`] is consulted at the places where the work is — [`crate::LayerCtx::matmul`] and
//! [`crate::LayerCtx::matmuls`] (every projection; several sharing an input in one call),
//! [`crate::LayerCtx::attention`] (the dense blocks' causal attention, [`Backend::attention`]),
//! [`crate::LayerCtx::absorbed_mqa`] (MLA's attention core with its per-head products,
//! [`Backend::absorbed_mqa`]), the weight loads of a layer (through [`BackendSource`], which
//! hands the raw bytes of a tensor to [`Backend::dequantize`]), and the routed experts of an
//! MoE layer ([`Backend::moe_experts`]: the block routes, the backend reads each expert's
//! weights from the source and returns the weighted sum of their outputs). The defaults are
//! the CPU's ops, composed as the blocks composed them before ([`absorbed_mqa_steps`],
//! [`moe_experts_steps`] over [`Backend::expert_ffn`] with its reused buffers and parallel
//! waves of experts), so `--device cpu` gives the same numbers at the same speed as before.
//!
//! The CUDA backend (feature `cuda`, [`crate::cuda`]) dequantizes on the GPU from the raw bytes,
//! keeps the layer's f32 weights resident there until [`Backend::end_layer`], runs every
//! product on cuBLAS, MLA's attention core with its wide intermediates on the device, and the
//! routed experts from their raw rows ([`crate::WeightSource::raw_rows`]) with the gather and
//! the weighted sum on the device. What stays on the CPU is listed in the `cuda` module docs.

mod device;
mod expert;
mod moe;
mod mqa;
mod raw;
mod source;

pub use device::{Device, DeviceError};
#[cfg(feature = "cuda")]
pub(crate) use expert::check_head_matmul;
pub use expert::{expert_ffn_cpu, head_matmul_cpu, ExpertJob, ExpertOut};
pub use moe::{moe_experts_steps, scatter_add, ExpertObserver, MoeJob};
pub use mqa::{
    absorbed_mqa_cpu, absorbed_mqa_steps, q_nope, AttentionFn, HeadMatmulFn, MqaDims, MqaJob,
    MqaOut,
};
pub use raw::{check_fp8, dequantize_cpu, ggml_rows, RawTensor};
pub use source::BackendSource;

use std::ops::Range;
use std::sync::Arc;

use crate::error::Result;
use crate::ops::{self, AttnShape};
use crate::tensor::{Mat, SeqSpan};

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

    /// Bytes of device memory one group of sequences may fill with activations, so that the
    /// engine splits a long run into groups that fit the device (a GPU smaller than one group's
    /// activations would otherwise fail mid-run); `None` for the CPU, whose limit is
    /// `--max-memory`.
    fn activation_budget(&self) -> Option<u64> {
        None
    }

    /// `y = x · wᵀ` ([`ops::matmul`]); `name` is the weight's GGUF name (the backend may hold
    /// a device copy of it from [`Backend::dequantize`]).
    fn matmul(&self, name: &str, x: &Mat, w: &Mat) -> Mat;

    /// Several products of one input, `x · wᵢᵀ` for each `(name, wᵢ)` (projections that share
    /// their input: MLA's `attn_q_a` and `attn_kv_a_mqa`, an FFN's gate and up). The default is
    /// [`Backend::matmul`] for each; a device uploads x once. Infallible with the contract of
    /// [`Backend::matmul`].
    fn matmuls(&self, x: &Mat, ws: &[(&str, &Mat)]) -> Vec<Mat> {
        ws.iter()
            .map(|&(name, w)| self.matmul(name, x, w))
            .collect()
    }

    /// Causal attention over each span ([`ops::attention`], the default): `q` `[T, n_head·dk]`,
    /// `k` `[T, n_head_kv·dk]`, `v` `[T, n_head_kv·dv]` → `[T, n_head·dv]`, rows outside every
    /// span zero. Called through [`crate::LayerCtx::attention`] by the dense blocks (GQA) and
    /// by [`Backend::absorbed_mqa`]'s default (MLA's MQA over the latent). Infallible like [`Backend::matmul`], with the same
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

    /// MLA's absorbed attention core ([`MqaJob`]: absorb the queries with `attn_k_b`, MQA over
    /// the latent, decompress with `attn_v_b`). The default runs it as separate
    /// [`Backend::head_matmul`] and [`Backend::attention`] calls ([`absorbed_mqa_steps`]); a
    /// device overrides it to keep the wide intermediates on board. Infallible with the
    /// contract of [`Backend::matmul`]; shape mismatches panic.
    fn absorbed_mqa(&self, job: &MqaJob<'_>) -> MqaOut {
        absorbed_mqa_steps(
            job,
            &|name, x, w, heads, y, stride| self.head_matmul(name, x, w, heads, y, stride),
            &|q, k, v, seqs, shape| self.attention(q, k, v, seqs, shape),
        )
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

    /// All routed experts of one MoE layer ([`MoeJob`]): `Σ weight · expert(x)` over each
    /// token's experts (the shared expert is not included), with `observe` shown each
    /// expert's gathered inputs and g in expert order. The default runs them expert by expert
    /// through [`Backend::expert_ffn`] ([`moe_experts_steps`]); a device overrides it to gather
    /// and scatter on board. Errors: the source's or the device's, as
    /// [`Backend::expert_ffn`].
    fn moe_experts(
        &self,
        job: &MoeJob<'_>,
        observe: Option<&mut ExpertObserver<'_>>,
    ) -> Result<Mat> {
        moe_experts_steps(self, job, observe)
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

#[cfg(test)]
pub(crate) mod tests;
