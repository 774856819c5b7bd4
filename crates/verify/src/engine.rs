//! Layer-major evaluation (DESIGN.md): every token of every sequence goes through layer L before
//! layer L+1, so each layer's weights are dequantized once per run (per memory group), matmuls
//! are GEMMs over all tokens, and at most one layer's f32 weights are resident — of an MoE layer,
//! only its non-expert weights plus the few experts being multiplied (experts are dequantized
//! one at a time from the source when they received tokens, then freed).
//!
//! Peak memory of [`Engine::evaluate`] for one group of T tokens (longest sequence L):
//!
//! ```text
//! peak ≈ W + 4·T·k + 4·threads·ATTN_Q_BLOCK·L + LOGIT_BATCH_BYTES
//! ```
//!
//! * W = the largest f32 weight set resident at once ([`Engine::layer_weight_bytes`]): max over
//!   layers of the layer's non-expert tensors (n_elements × 4) plus, for an MoE layer,
//!   [`experts_in_flight`] × one expert's f32 gate/up/down (each `*_exps` tensor's
//!   n_elements / n_expert × 4), and of the output matrix (`output` or tied `token_embd`,
//!   n_vocab·n_embd·4). For R1: ~0.93 GB non-expert + 176 MB per expert in flight, instead of
//!   the ~45 GB all 256 experts of a layer would take;
//! * k = [`crate::arch::ArchSpec::floats_per_token`], the activation floats each token holds at
//!   the block's peak. Dense llama/qwen2: k = 3·n_embd + max(n_q + 2·n_kv + 2·n_q_v, 2·n_ff)
//!   (residual, normed input and a projection output of n_embd each, plus the attention phase's
//!   q, k, v, per-head outputs and merged output, or the FFN's gate and up);
//! * the attention working set: one `ATTN_Q_BLOCK × L` f32 score block per thread;
//! * the logits batch: at most [`LOGIT_BATCH_BYTES`] of f32 logits.
//!
//! `EvalOptions::max_memory` splits the sequences into consecutive groups whose peak fits
//! (without it, [`HOST_DEFAULT_FRACTION`] of the memory the OS reports available, where one
//! sequence fits, so a long run does not exhaust the host by default); a device backend's [`Backend::activation_budget`] does the same for the activations it holds
//! (`tokens · 4k` bytes each group), so a long calibration run fits a GPU without flags. Each
//! group re-reads every layer (the price of the bound).

use std::ops::Range;
use std::sync::Arc;

use crate::arch::{self, ArchSpec};
use crate::backend::{self, Backend, BackendSource, Device};
use crate::config::ModelConfig;
use crate::error::{Result, VerifyError};
use crate::ops::{self, attention::ATTN_Q_BLOCK};
use crate::source::WeightSource;
use crate::tensor::{Mat, SeqSpan};

/// At most this many bytes of logits are materialised at once (rows × n_vocab × 4).
pub const LOGIT_BATCH_BYTES: usize = 256 << 20;

/// The consumer of [`Engine::evaluate_batches`]: `(rows, logits)` with `rows[i] = (seq_idx,
/// pos)` for row i of `logits`.
pub type LogitsBatchFn<'a> = dyn FnMut(&[(usize, usize)], &Mat) + 'a;

/// One transformer block of some architecture, loaded for one layer.
///
/// Exists so the engine's layer loop is architecture-independent: llama/qwen2 implement it in
/// `arch/dense.rs`, deepseek2 in `arch/deepseek2/`.
///
/// `'s` is the weight source's lifetime: a block may keep a reference to it and read weights
/// during `forward` (deepseek2 dequantizes each routed expert only when it received tokens).
pub trait Block<'s>: Send + Sync {
    /// Loads (dequantizes to f32) and validates layer `layer`'s weights — or, for weights read
    /// lazily during `forward`, checks their dims. Every tensor's dims are checked against
    /// `config`, with an error naming the tensor.
    fn load(source: &'s dyn WeightSource, config: &ModelConfig, layer: usize) -> Result<Self>
    where
        Self: Sized;

    /// Activation floats per token at this block's peak (the `k` of the module's memory
    /// formula), used to size groups under `max_memory`.
    fn floats_per_token(config: &ModelConfig) -> usize
    where
        Self: Sized;

    /// Applies the block to all tokens: `x` is `[T, n_embd]` (the residual stream, updated in
    /// place), `seqs` says which rows form each sequence (positions restart at 0 in each).
    fn forward(&self, x: &mut Mat, seqs: &[SeqSpan], ctx: &mut LayerCtx<'_>) -> Result<()>;
}

/// Sees every matmul's input, for calibration (imatrix: Σx² per input column of each weight).
///
/// Methods take `&self` and the trait is `Sync` because blocks may run expert matmuls in
/// parallel; implementations accumulate behind a `Mutex` (or per-thread sums).
pub trait LayerObserver: Sync {
    /// Called before `input · weightᵀ` with the GGUF weight name (`blk.3.attn_q.weight`,
    /// `output.weight` — or `token_embd.weight` when the output is tied — with `layer ==
    /// n_layer`, only for the positions that get logits) and the input activations, one row per
    /// token.
    fn on_matmul(&self, layer: usize, weight: &str, input: &Mat);

    /// Called before an MoE expert matmul: `weight` is the 3-D expert tensor's name
    /// (`blk.3.ffn_up_exps.weight`), `expert` the expert index, `input` only the rows routed to
    /// that expert. The default does nothing.
    fn on_expert_matmul(&self, layer: usize, weight: &str, expert: usize, input: &Mat) {
        let _ = (layer, weight, expert, input);
    }
}

/// What a block may use during `forward` besides its weights: the configuration, the layer
/// index and the matmul entry points that report to the observer.
pub struct LayerCtx<'a> {
    /// The layer being evaluated (0-based; `n_layer` for the output projection).
    pub layer: usize,
    /// The model's hyper-parameters.
    pub config: &'a ModelConfig,
    observer: Option<&'a dyn LayerObserver>,
    /// Runs the matmuls; `None` = [`ops::matmul`] on the CPU.
    backend: Option<&'a dyn Backend>,
}

impl<'a> LayerCtx<'a> {
    /// A context for `layer`, reporting to `observer`.
    pub fn new(
        layer: usize,
        config: &'a ModelConfig,
        observer: Option<&'a dyn LayerObserver>,
    ) -> LayerCtx<'a> {
        LayerCtx {
            layer,
            config,
            observer,
            backend: None,
        }
    }

    /// The same context with its matmuls on `backend` (the engine's device).
    pub fn with_backend(mut self, backend: &'a dyn Backend) -> LayerCtx<'a> {
        self.backend = Some(backend);
        self
    }

    /// The backend running this layer's heavy ops ([`backend::CpuBackend`] without one), for
    /// blocks that hand it more than a matmul (the MoE experts, [`Backend::expert_ffn`]).
    pub fn backend(&self) -> &'a dyn Backend {
        self.backend.unwrap_or(&backend::CpuBackend)
    }

    /// `x · wᵀ` on the context's backend (the CPU's [`ops::matmul`] without one).
    fn product(&self, weight_name: &str, x: &Mat, w: &Mat) -> Mat {
        match self.backend {
            Some(b) => b.matmul(weight_name, x, w),
            None => ops::matmul(x, w),
        }
    }

    /// `x · wᵀ` ([`ops::matmul`]), first showing `x` to the observer under `weight_name`.
    pub fn matmul(&self, weight_name: &str, x: &Mat, w: &Mat) -> Mat {
        self.observe(weight_name, x);
        self.product(weight_name, x, w)
    }

    /// `x · wᵢᵀ` for each `(name, wᵢ)` of projections sharing their input
    /// ([`Backend::matmuls`]: a device uploads x once), showing `x` to the observer under each
    /// name first.
    pub fn matmuls(&self, x: &Mat, ws: &[(&str, &Mat)]) -> Vec<Mat> {
        for &(name, _) in ws {
            self.observe(name, x);
        }
        match self.backend {
            Some(b) => b.matmuls(x, ws),
            None => ws.iter().map(|&(_, w)| ops::matmul(x, w)).collect(),
        }
    }

    /// `x · wᵀ` for expert `expert` of an MoE tensor, `x` holding only the rows routed to it.
    pub fn expert_matmul(&self, weight_name: &str, expert: usize, x: &Mat, w: &Mat) -> Mat {
        if let Some(o) = self.observer {
            o.on_expert_matmul(self.layer, weight_name, expert, x);
        }
        self.product(weight_name, x, w)
    }

    /// Causal attention over each span on the context's backend ([`Backend::attention`];
    /// [`ops::attention`] on the CPU). Nothing is reported to the observer: attention has no
    /// weight.
    pub fn attention(
        &self,
        q: &Mat,
        k: &Mat,
        v: &Mat,
        seqs: &[SeqSpan],
        shape: &ops::AttnShape,
    ) -> Mat {
        self.backend().attention(q, k, v, seqs, shape)
    }

    /// Per-head products `y[:, h·col_stride ..] = x[:, h·in ..] · w_hᵀ` on the context's
    /// backend ([`Backend::head_matmul`]), first showing `x` to the observer under
    /// `weight_name` (a 3-D weight's input rows hold the heads' slices side by side, as
    /// llama-imatrix sees them).
    pub fn head_matmul(
        &self,
        weight_name: &str,
        x: &Mat,
        w: &Mat,
        heads: usize,
        y: &mut Mat,
        col_stride: usize,
    ) {
        self.observe(weight_name, x);
        self.backend()
            .head_matmul(weight_name, x, w, heads, y, col_stride);
    }

    /// MLA's absorbed attention core on the context's backend ([`Backend::absorbed_mqa`]),
    /// showing the observer `attn_k_b`'s input (q_nope, the heads' slices side by side) before
    /// and `attn_v_b`'s (the latent attention output) after: the backend hands the latter back
    /// only when there is an observer, so a device keeps it on board otherwise.
    pub fn absorbed_mqa(&self, job: &backend::MqaJob<'_>) -> Mat {
        let Some(o) = self.observer else {
            return self.backend().absorbed_mqa(job).o;
        };
        o.on_matmul(self.layer, job.names[0], &backend::q_nope(job.q, job.dims));
        let out = self.backend().absorbed_mqa(&backend::MqaJob {
            keep_latent: true,
            ..*job
        });
        if let Some(latent) = &out.latent {
            o.on_matmul(self.layer, job.names[1], latent);
        }
        out.o
    }

    /// Whether an observer sees this layer's inputs (so that a backend must hand back what it
    /// could otherwise keep on a device).
    pub fn observing(&self) -> bool {
        self.observer.is_some()
    }

    /// Reports `x` as the input of expert `expert` of the 3-D MoE tensor `weight_name` without
    /// multiplying: blocks that stream experts from the source multiply through slices of their
    /// own buffers, not a [`Mat`] per expert, but the observer must still see each expert's
    /// rows (imatrix's per-expert sums).
    pub fn observe_expert(&self, weight_name: &str, expert: usize, x: &Mat) {
        if let Some(o) = self.observer {
            o.on_expert_matmul(self.layer, weight_name, expert, x);
        }
    }

    /// Reports `x` as the input of `weight_name` without multiplying (for blocks that compute a
    /// product another way, e.g. MLA's absorbed per-head matmuls).
    pub fn observe(&self, weight_name: &str, x: &Mat) {
        if let Some(o) = self.observer {
            o.on_matmul(self.layer, weight_name, x);
        }
    }
}

/// The memory one group of sequences may use ([`Engine::plan_groups`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Peak host bytes (`--max-memory`): a sequence that does not fit is an error.
    pub host: Option<u64>,
    /// Peak host bytes when `host` is not given (most of the available memory): groups are cut
    /// to fit it where one sequence fits, otherwise each sequence is its own group (the least
    /// memory a run can take) — never an error.
    pub host_default: Option<u64>,
    /// Bytes of activations the device offers ([`Backend::activation_budget`]).
    pub device: Option<u64>,
}

/// Which positions of each sequence get logits.
pub enum LogitPositions<'a> {
    /// Every position.
    All,
    /// The same position range in every sequence (clamped to its length). llama-perplexity with
    /// chunk n: `n/2 .. n−1` (logits at p score token p+1).
    Range(Range<usize>),
    /// `f(seq_idx, pos)` decides.
    Predicate(&'a (dyn Fn(usize, usize) -> bool + Sync)),
}

impl LogitPositions<'_> {
    fn wants(&self, seq: usize, pos: usize) -> bool {
        match self {
            LogitPositions::All => true,
            LogitPositions::Range(r) => r.contains(&pos),
            LogitPositions::Predicate(f) => f(seq, pos),
        }
    }
}

/// Where an evaluation stands, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Memory group being evaluated (0-based).
    pub group: usize,
    /// Number of groups.
    pub n_groups: usize,
    /// Layer about to run (`n_layer` = output norm and logits).
    pub layer: usize,
    /// Number of layers.
    pub n_layer: usize,
}

/// How to run [`Engine::evaluate`].
pub struct EvalOptions<'a> {
    /// Positions that get logits.
    pub logit_positions: LogitPositions<'a>,
    /// Peak-memory bound in bytes (module docs); `None` = all sequences in one group.
    pub max_memory: Option<u64>,
    /// Calibration hook.
    pub observer: Option<&'a dyn LayerObserver>,
    /// Called before each layer of each group.
    pub progress: Option<&'a (dyn Fn(&Progress) + Sync)>,
}

impl Default for EvalOptions<'_> {
    fn default() -> Self {
        EvalOptions {
            logit_positions: LogitPositions::All,
            max_memory: None,
            observer: None,
            progress: None,
        }
    }
}

/// How many routed experts of an MoE layer are dequantized at once: one per worker thread
/// (they are multiplied in parallel), never more than the layer has.
pub fn experts_in_flight(n_expert: usize) -> usize {
    rayon::current_num_threads().clamp(1, n_expert.max(1))
}

/// The forward pass of one model over a [`WeightSource`].
pub struct Engine<'a> {
    source: &'a dyn WeightSource,
    config: ModelConfig,
    spec: ArchSpec,
    /// The device of the heavy ops (`backend.rs`); the CPU unless chosen otherwise.
    backend: Arc<dyn Backend>,
    /// The host memory a run may fill when `max_memory` is not given
    /// ([`MemoryLimits::host_default`]): [`HOST_DEFAULT_FRACTION`] of what the OS reported
    /// available when the engine was made.
    host_default: Option<u64>,
}

/// The fraction of the host's available memory (`MemAvailable`) a run without `max_memory`
/// plans its groups for, leaving room for the page cache the weights stream through.
pub const HOST_DEFAULT_FRACTION: f64 = 0.8;

/// `MemAvailable` of `/proc/meminfo` in bytes (`None` elsewhere or when unreadable).
pub fn host_available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

/// The `MemAvailable:  N kB` line of a meminfo text, in bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        _ => None,
    }
}

impl<'a> Engine<'a> {
    /// Reads the configuration and picks the architecture's block. Fails for architectures
    /// without a forward pass.
    pub fn new(source: &'a dyn WeightSource) -> Result<Engine<'a>> {
        let config = ModelConfig::from_metadata(source)?;
        let spec = arch::spec(&config, source)?;
        Ok(Engine {
            source,
            config,
            spec,
            backend: Arc::new(backend::CpuBackend),
            host_default: host_available_memory()
                .map(|b| (b as f64 * HOST_DEFAULT_FRACTION) as u64),
        })
    }

    /// [`Engine::new`] on `device` (`--device`): a clear error when the device cannot be used
    /// (no `cuda` feature, no driver, no GPU), never a panic.
    pub fn new_with_device(source: &'a dyn WeightSource, device: Device) -> Result<Engine<'a>> {
        let backend = backend::open(device)?;
        Ok(Engine::new(source)?.with_backend(backend))
    }

    /// The same engine with its matmuls and weight dequantization on `backend`.
    pub fn with_backend(mut self, backend: Arc<dyn Backend>) -> Engine<'a> {
        self.backend = backend;
        self
    }

    /// The backend running the heavy ops.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The weight source.
    pub fn source(&self) -> &dyn WeightSource {
        self.source
    }

    /// Evaluates every sequence (each an independent context starting at position 0) and calls
    /// `on_logits(seq_idx, pos, logits)` for each requested position, sequence by sequence in
    /// position order within each group. Logits are f32, `n_vocab` long, never all held at once.
    pub fn evaluate(
        &self,
        seqs: &[Vec<u32>],
        opts: &EvalOptions<'_>,
        on_logits: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        self.evaluate_batches(seqs, opts, &mut |rows, logits| {
            for (i, &(si, pos)) in rows.iter().enumerate() {
                on_logits(si, pos, logits.row(i));
            }
        })
    }

    /// [`Engine::evaluate`] handing over each batch of logits whole: `on_batch(rows, logits)`
    /// with `rows[i] = (seq_idx, pos)` for row i of `logits` (`[rows.len(), n_vocab]`), in the
    /// same order. Exists so that a consumer can score the rows of a batch in parallel (the
    /// per-token softmax over a 129k–152k vocabulary is a tenth of an evaluation when done one
    /// row at a time) and still add the results up in order.
    pub fn evaluate_batches(
        &self,
        seqs: &[Vec<u32>],
        opts: &EvalOptions<'_>,
        on_batch: &mut LogitsBatchFn<'_>,
    ) -> Result<()> {
        let n_vocab = self.config.n_vocab;
        for (si, s) in seqs.iter().enumerate() {
            if let Some((pos, &token)) = s.iter().enumerate().find(|(_, &t)| t as usize >= n_vocab)
            {
                return Err(VerifyError::BadToken {
                    token,
                    seq: si,
                    pos,
                    n_vocab,
                });
            }
        }
        let limits = MemoryLimits {
            host: opts.max_memory,
            host_default: self.host_default,
            device: self.backend.activation_budget(),
        };
        let groups = self.plan_groups(seqs, limits)?;
        let n_groups = groups.len();
        for (gi, group) in groups.into_iter().enumerate() {
            self.evaluate_group(seqs, group, gi, n_groups, opts, on_batch)?;
        }
        Ok(())
    }

    /// Bytes of f32 weights resident while evaluating layer `layer`: every `blk.{layer}.` tensor,
    /// except that of the 3-D MoE expert tensors (`*_exps`, `[in, out, n_expert]`) only
    /// [`experts_in_flight`] experts are resident at once (module docs).
    pub fn layer_weight_bytes(&self, layer: usize) -> u64 {
        let prefix = format!("blk.{layer}.");
        let (mut dense, mut per_expert, mut n_expert) = (0u64, 0u64, 0u64);
        for name in self.source.tensor_names() {
            if !name.starts_with(&prefix) {
                continue;
            }
            let Some(dims) = self.source.tensor_dims(&name) else {
                continue;
            };
            let bytes = dims.iter().product::<u64>() * 4;
            match dims.as_slice() {
                [_, _, n] if name.contains("_exps.") && *n > 0 => {
                    per_expert += bytes / n;
                    n_expert = n_expert.max(*n);
                }
                _ => dense += bytes,
            }
        }
        dense + per_expert * experts_in_flight(n_expert as usize) as u64
    }

    /// The `W + attention working set + logits batch` part of the memory formula, and the
    /// per-token bytes `4·k`.
    pub fn memory_model(&self, max_seq_len: usize) -> (u64, u64) {
        let c = &self.config;
        let out_w = (c.n_vocab * c.n_embd * 4) as u64;
        let w = (0..c.n_layer)
            .map(|l| self.layer_weight_bytes(l))
            .max()
            .unwrap_or(0)
            .max(out_w);
        let attn = (4 * rayon::current_num_threads() * ATTN_Q_BLOCK * max_seq_len) as u64;
        let logits = LOGIT_BATCH_BYTES.min(c.n_vocab * 4 * max_seq_len.max(1)) as u64;
        let per_token = 4 * (self.spec.floats_per_token)(c) as u64;
        (w + attn + logits, per_token)
    }

    /// Consecutive groups of sequence indices for [`Engine::evaluate`]: each group's peak host
    /// memory fits `limits.host` (`EvalOptions::max_memory`; the module's formula; without it
    /// `limits.host_default` where it can) and its
    /// activations fit `limits.device` (what the backend's device offers,
    /// [`Backend::activation_budget`]; `tokens × per-token floats × 4`, the same per-token
    /// bound as the host's, which the device's working set stays below). One group when
    /// neither is set. Errors when one sequence alone exceeds a limit.
    pub fn plan_groups(
        &self,
        seqs: &[Vec<u32>],
        limits: MemoryLimits,
    ) -> Result<Vec<Range<usize>>> {
        let max_len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let (fixed, per_token) = self.memory_model(max_len);
        let one = per_token * max_len as u64;
        let mut max_tokens: Option<u64> = None;
        if let Some(limit) = limits.host {
            if fixed + one > limit {
                return Err(VerifyError::MemoryLimit {
                    limit,
                    need: fixed + one,
                    tokens: max_len,
                });
            }
            max_tokens = Some((limit - fixed) / per_token.max(1));
        } else if let Some(soft) = limits.host_default {
            let t = soft.saturating_sub(fixed) / per_token.max(1);
            max_tokens = Some(t.max(max_len as u64));
        }
        if let Some(budget) = limits.device {
            if one > budget {
                return Err(VerifyError::DeviceMemory {
                    budget,
                    need: one,
                    tokens: max_len,
                });
            }
            let t = budget / per_token.max(1);
            max_tokens = Some(max_tokens.map_or(t, |m| m.min(t)));
        }
        let Some(budget) = max_tokens else {
            let all = 0..seqs.len();
            return Ok(vec![all]);
        };
        let mut groups = Vec::new();
        let (mut start, mut tokens) = (0, 0u64);
        for (i, s) in seqs.iter().enumerate() {
            let n = s.len() as u64;
            if tokens + n > budget && i > start {
                groups.push(start..i);
                start = i;
                tokens = 0;
            }
            tokens += n;
        }
        groups.push(start..seqs.len());
        Ok(groups)
    }

    fn evaluate_group(
        &self,
        seqs: &[Vec<u32>],
        group: Range<usize>,
        gi: usize,
        n_groups: usize,
        opts: &EvalOptions<'_>,
        on_batch: &mut LogitsBatchFn<'_>,
    ) -> Result<()> {
        let c = &self.config;
        let mut spans = Vec::with_capacity(group.len());
        let mut tokens: Vec<u32> = Vec::new();
        for s in &seqs[group.clone()] {
            spans.push(SeqSpan {
                start: tokens.len(),
                len: s.len(),
            });
            tokens.extend_from_slice(s);
        }
        if tokens.is_empty() {
            return Ok(());
        }
        let progress = |layer| {
            if let Some(p) = opts.progress {
                p(&Progress {
                    group: gi,
                    n_groups,
                    layer,
                    n_layer: c.n_layer,
                });
            }
        };

        // Embeddings: only the rows of the tokens present.
        let embd_dims = vec![c.n_embd as u64, c.n_vocab as u64];
        arch::check_dims(self.source, "token_embd.weight", &embd_dims)?;
        let embd = self.source.load_rows_f32("token_embd.weight", &tokens)?;
        // Layer weights reach a device backend as raw bytes (dequantized there); the CPU
        // backend reads the source directly.
        let wrapped = BackendSource::new(self.source, &*self.backend);
        let source: &dyn WeightSource = if self.backend.dequantizes() {
            &wrapped
        } else {
            self.source
        };
        let mut x = Mat::from_vec(tokens.len(), c.n_embd, embd);

        for layer in 0..c.n_layer {
            progress(layer);
            let block = (self.spec.load)(source, c, layer)?;
            let mut ctx = LayerCtx::new(layer, c, opts.observer).with_backend(&*self.backend);
            block.forward(&mut x, &spans, &mut ctx)?;
            drop(block);
            self.backend.end_layer()?;
        }
        progress(c.n_layer);

        // Logits for the requested positions only, in bounded batches.
        let mut wanted: Vec<(usize, usize, usize)> = Vec::new(); // (row, seq, pos)
        for (k, span) in spans.iter().enumerate() {
            let si = group.start + k;
            for pos in 0..span.len {
                if opts.logit_positions.wants(si, pos) {
                    wanted.push((span.start + pos, si, pos));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let norm = arch::load_vector(self.source, "output_norm.weight", c.n_embd)?;
        let out_name = if self.source.tensor_dims("output.weight").is_some() {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        let w_out = arch::load_matrix(source, out_name, c.n_vocab, c.n_embd)?;
        let ctx = LayerCtx::new(c.n_layer, c, opts.observer).with_backend(&*self.backend);
        let batch = (LOGIT_BATCH_BYTES / (4 * c.n_vocab.max(1))).max(1);
        let mut rows = Vec::with_capacity(batch.min(wanted.len()));
        for chunk in wanted.chunks(batch) {
            let mut h = Mat::zeros(chunk.len(), c.n_embd);
            for (i, &(row, _, _)) in chunk.iter().enumerate() {
                h.row_mut(i).copy_from_slice(x.row(row));
            }
            ops::rms_norm(&mut h, &norm, c.rms_eps);
            let logits = ctx.matmul(out_name, &h, &w_out);
            rows.clear();
            rows.extend(chunk.iter().map(|&(_, si, pos)| (si, pos)));
            on_batch(&rows, &logits);
        }
        self.backend.end_layer()?;
        Ok(())
    }
}
