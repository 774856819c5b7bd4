//! All routed experts of one MoE layer as one unit of work ([`super::Backend::moe_experts`]),
//! with the reference that runs them expert by expert through
//! [`super::Backend::expert_ffn`].
//!
//! Why a layer-wide call besides the per-expert one: a token routed to 8 experts is in 8
//! experts' gathered inputs and 8 outputs. Run expert by expert from the host, each of those
//! rows crosses PCIe (R1: 8 × 7,168 floats up and 8 × 9,216 down per token and layer, half of
//! all its activation traffic); a device that holds the layer's input and the weighted sum
//! gathers and scatters on board and moves each token's row once each way.

use rayon::prelude::*;

use crate::error::Result;
use crate::source::WeightSource;
use crate::tensor::Mat;

use super::{Backend, ExpertJob, ExpertOut};

/// The routed experts of one MoE layer ([`super::Backend::moe_experts`]).
#[derive(Clone, Copy)]
pub struct MoeJob<'a> {
    /// Where the stacked expert tensors are read from.
    pub source: &'a dyn WeightSource,
    /// GGUF names of `ffn_gate_exps`, `ffn_up_exps`, `ffn_down_exps` (in that order).
    pub names: [&'a str; 3],
    /// Model width.
    pub n_embd: usize,
    /// Expert width.
    pub n_ff: usize,
    /// The layer's (normed) input `[T, n_embd]`.
    pub x: &'a Mat,
    /// The experts that received tokens, in ascending order, each with its tokens (rows of
    /// `x`, each at most once) and their routing weights.
    pub active: &'a [(usize, &'a [(usize, f32)])],
}

impl MoeJob<'_> {
    /// The [`ExpertJob`] of expert `e` over the gathered inputs `x`.
    pub fn expert<'b>(&'b self, e: usize, x: &'b Mat, parallel: bool) -> ExpertJob<'b> {
        ExpertJob {
            source: self.source,
            names: self.names,
            expert: e,
            n_embd: self.n_embd,
            n_ff: self.n_ff,
            x,
            parallel,
        }
    }

    /// `dst` = the rows of `x` routed to an expert (`list`), in list order.
    pub fn gather(&self, list: &[(usize, f32)], dst: &mut Mat) {
        dst.reshape(list.len(), self.n_embd);
        for (d, &(tok, _)) in dst.data.chunks_exact_mut(self.n_embd).zip(list) {
            d.copy_from_slice(self.x.row(tok));
        }
    }
}

/// Sees each expert's gathered inputs and its down projection's input g, in expert order (the
/// calibration observer's per-expert rows): `(expert, x_e, g)`.
pub type ExpertObserver<'a> = dyn FnMut(usize, &Mat, &Mat) + 'a;

/// `y[tok] += w · out[r]` for each routed row r = (tok, w) of `list`, in order: the f32
/// products and sums of every backend's scatter.
pub fn scatter_add(y: &mut Mat, out: &Mat, list: &[(usize, f32)]) {
    let n = y.cols;
    for (src, &(tok, w)) in out.data.chunks_exact(n).zip(list) {
        for (a, v) in y.row_mut(tok).iter_mut().zip(src) {
            *a += w * v;
        }
    }
}

/// One expert slot: the gathered inputs and the backend's outputs (with its reused buffers);
/// one per expert in flight, reused across experts.
struct ExpertSlot {
    /// The expert handled in this slot.
    expert: usize,
    /// The routed tokens' inputs `[n, n_embd]`.
    x: Mat,
    /// g `[n, n_ff]` (the down projection's input) and y `[n, n_embd]`.
    out: ExpertOut,
}

/// The routed experts expert by expert through `backend`'s [`Backend::expert_ffn`], up to
/// [`Backend::experts_at_once`] in parallel (each in a reused buffer set); their outputs are
/// added to the result, and shown to `observe`, in expert order, so the sums and the
/// observer's calls are those of one expert at a time. [`Backend::moe_experts`]' default.
pub fn moe_experts_steps<B: Backend + ?Sized>(
    backend: &B,
    job: &MoeJob<'_>,
    mut observe: Option<&mut ExpertObserver<'_>>,
) -> Result<Mat> {
    let mut y = Mat::zeros(job.x.rows, job.n_embd);
    let slots = backend.experts_at_once(job.active.len()).max(1);
    let mut bufs: Vec<ExpertSlot> = (0..slots)
        .map(|_| ExpertSlot {
            expert: 0,
            x: Mat::zeros(0, 0),
            out: ExpertOut::default(),
        })
        .collect();
    // With fewer experts than threads, let each GEMM use the idle threads too.
    let parallel = job.active.len() < rayon::current_num_threads();
    for wave in job.active.chunks(slots) {
        bufs.par_iter_mut()
            .zip(wave.par_iter())
            .map(|(s, &(e, list))| {
                s.expert = e;
                job.gather(list, &mut s.x);
                backend.expert_ffn(&job.expert(e, &s.x, parallel), &mut s.out)
            })
            .collect::<Result<()>>()?;
        for (s, &(_, list)) in bufs.iter().zip(wave) {
            if let Some(f) = observe.as_mut() {
                f(s.expert, &s.x, &s.out.g);
            }
            scatter_add(&mut y, &s.out.y, list);
        }
    }
    Ok(y)
}
