//! Calibration: the importance matrix llama-imatrix collects (REFERENCE §6), gathered by the
//! layer-major engine instead of token-batch decoding, so a model larger than RAM is calibrated
//! one layer resident at a time.
//!
//! [`ImatrixCollector`] is the engine's [`LayerObserver`]: per weight it sums x² per input column
//! (f32, in the order llama-imatrix adds them for dense matmuls) and counts tokens, with
//! llama-imatrix's rules (§6.2): dense `MUL_MAT` only for `blk.*` weights (and `output.weight` with
//! `process_output`) when the decode batch has ≥ 16 rows; 3-D dense weights (`attn_k_b`,
//! `attn_v_b`) as `n_mat` slices sharing one count; MoE stacks per expert (values and counts per
//! expert). [`run_imatrix`] is llama-imatrix's `compute_imatrix`: the whole text tokenized once,
//! chunks of `n_ctx` with BOS written over each first token, every position evaluated, an optional
//! running perplexity. [`stats`] is `--show-statistics`.
//!
//! Not for: writing files (`formats::imatrix` does, from the [`Imatrix`] this returns) or
//! printing (the CLI formats the events).

pub mod stats;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use formats::imatrix::{Imatrix, ImatrixEntry, ImatrixFormat};
use rayon::prelude::*;

use crate::engine::{Engine, EvalOptions, LayerObserver, LogitPositions, Progress};
use crate::error::VerifyError;
use crate::ppl::{token_nll, PplAccumulator};
use crate::source::WeightSource;
use crate::tensor::Mat;

/// llama-imatrix ignores dense matmuls whose activation has fewer rows than this (`src1->ne[1] <
/// 16` in `collect_imatrix`).
pub const MIN_ROWS: usize = 16;

/// llama.cpp's default physical batch (`n_ubatch`): the most rows one graph evaluation (and so
/// one `collect_imatrix` call) sees.
pub const LLAMA_UBATCH: usize = 512;

/// llama-imatrix's default logical batch (`n_batch`): how many chunks are decoded together.
pub const LLAMA_BATCH: usize = 2048;

/// Columns summed per parallel task in the dense accumulator (each task keeps llama's row order
/// within its columns, so the result does not depend on the thread count).
const COL_BLOCK: usize = 512;

/// Why a calibration run failed.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    /// The model could not be evaluated.
    #[error("{0}")]
    Engine(#[from] VerifyError),
    /// The text is too short (llama-imatrix needs two chunks).
    #[error("the text tokenizes to only {tokens} tokens; an imatrix with a context of {n_ctx} needs at least {need} (two chunks, like llama-imatrix)")]
    TooFewTokens {
        /// Tokens available (after `--from-chunk`).
        tokens: usize,
        /// The chunk length.
        n_ctx: usize,
        /// 2 · n_ctx.
        need: usize,
    },
    /// `--from-chunk` leaves fewer than two chunks.
    #[error("the text tokenizes to {tokens} tokens; after skipping {skip} chunks of {n_ctx} fewer than two chunks are left")]
    SkipTooFar {
        /// Tokens of the whole text.
        tokens: usize,
        /// Chunks skipped.
        skip: usize,
        /// The chunk length.
        n_ctx: usize,
    },
    /// Sums became NaN or infinite (llama-imatrix aborts the same way).
    #[error("non-finite activation sums in {tensor}{} (column {column}){}: the model produces NaN/inf activations on this text",
        expert.map(|e| format!(" expert {e}")).unwrap_or_default(),
        chunks.as_ref().map(|c| format!(" in chunks {}..{} of the text", c.start, c.end)).unwrap_or_default())]
    NonFinite {
        /// The weight tensor.
        tensor: String,
        /// The expert (MoE stacks).
        expert: Option<usize>,
        /// The first bad column.
        column: usize,
        /// The chunks (indices in the whole text) of the group in which the sums went bad, when
        /// known ([`run_imatrix`] fills it in).
        chunks: Option<Range<usize>>,
    },
    /// An activation does not fit the weight it feeds (a forward-pass bug or a foreign tensor).
    #[error("{tensor}: {detail}")]
    Shape {
        /// The weight tensor.
        tensor: String,
        /// What did not fit.
        detail: String,
    },
    /// Inconsistent arguments (the message says which).
    #[error("{0}")]
    Invalid(String),
}

/// Which dense matmuls the collector takes, besides every MoE expert matmul.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectorOptions {
    /// Also collect `output.weight` (llama-imatrix `--process-output`). A tied output
    /// (`token_embd.weight`) is never collected, as in llama-imatrix.
    pub process_output: bool,
    /// Rows of one llama.cpp decode batch, against which the ≥ [`MIN_ROWS`] rule is checked.
    /// The engine hands a block all chunks of a memory group at once (and the logits in its own
    /// batches), so the rule must be checked against the batch llama-imatrix would have used, not
    /// against the rows of the call. `None`: the call's rows.
    pub batch_rows: Option<usize>,
}

/// One accumulator slice: Σx² per column and the number of rows added.
#[derive(Debug, Default)]
struct Acc {
    values: Vec<f32>,
    count: i64,
}

/// What the collector holds for one weight.
#[derive(Debug)]
enum Entry {
    /// A `MUL_MAT` weight {ncols, nrows, n2, n3}: `n_mat = n2·n3` slices of `ncols` values side
    /// by side, one count.
    Dense { ncols: usize, acc: Mutex<Acc> },
    /// A `MUL_MAT_ID` stack {ncols, nrows, n_expert}: one accumulator per expert, so experts
    /// evaluated on different threads never wait for each other.
    Experts {
        ncols: usize,
        slices: Vec<Mutex<Acc>>,
    },
}

/// Per-weight Σx² and counts, llama-imatrix's `IMatrixCollector`, as an engine observer.
///
/// Thread-safe without a global lock on the hot path: the map of entries is behind an `RwLock`
/// taken for writing only when a weight is seen for the first time; each entry (each expert of a
/// stack) has its own `Mutex`. Dense sums are spread over rayon by column blocks, each block
/// adding rows in order, so numbers are the same for any thread count.
#[derive(Debug)]
pub struct ImatrixCollector {
    /// Dims of every tensor of the model, to size entries and check activations.
    shapes: HashMap<String, Vec<u64>>,
    opts: CollectorOptions,
    entries: RwLock<HashMap<String, Arc<Entry>>>,
    failed: AtomicBool,
    failure: Mutex<Option<CalibrateError>>,
}

impl ImatrixCollector {
    /// A collector for the tensors of `source` (their dims size the entries).
    pub fn new(source: &dyn WeightSource, opts: CollectorOptions) -> ImatrixCollector {
        let shapes = source
            .tensor_names()
            .into_iter()
            .filter_map(|n| source.tensor_dims(&n).map(|d| (n, d)))
            .collect();
        ImatrixCollector {
            shapes,
            opts,
            entries: RwLock::new(HashMap::new()),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }

    /// Whether llama-imatrix would collect a dense matmul of `weight` with `rows` activation rows.
    pub fn wants_dense(&self, weight: &str, rows: usize) -> bool {
        let rows = self.opts.batch_rows.unwrap_or(rows);
        rows >= MIN_ROWS
            && (weight.starts_with("blk.")
                || (self.opts.process_output && weight == "output.weight"))
    }

    fn fail(&self, e: CalibrateError) {
        if !self.failed.swap(true, Ordering::SeqCst) {
            if let Ok(mut f) = self.failure.lock() {
                *f = Some(e);
            }
        }
    }

    /// The first error recorded by an observer call (observer methods cannot return one).
    pub fn take_error(&self) -> Option<CalibrateError> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }

    /// The entry for `weight`, created on first sight from the weight's dims.
    fn entry(&self, weight: &str, experts: bool) -> Result<Arc<Entry>, CalibrateError> {
        if let Ok(map) = self.entries.read() {
            if let Some(e) = map.get(weight) {
                return Ok(Arc::clone(e));
            }
        }
        let dims = self
            .shapes
            .get(weight)
            .ok_or_else(|| CalibrateError::Shape {
                tensor: weight.into(),
                detail: "the model has no such tensor".into(),
            })?;
        let ncols = dims.first().copied().unwrap_or(0) as usize;
        let higher: usize = dims.iter().skip(2).map(|&d| d as usize).product();
        let entry = if experts {
            Entry::Experts {
                ncols,
                slices: (0..higher)
                    .map(|_| {
                        Mutex::new(Acc {
                            values: vec![0.0; ncols],
                            count: 0,
                        })
                    })
                    .collect(),
            }
        } else {
            Entry::Dense {
                ncols,
                acc: Mutex::new(Acc {
                    values: vec![0.0; ncols * higher.max(1)],
                    count: 0,
                }),
            }
        };
        let mut map = self
            .entries
            .write()
            .map_err(|_| CalibrateError::Invalid("imatrix collector lock poisoned".into()))?;
        Ok(Arc::clone(
            map.entry(weight.to_string())
                .or_insert_with(|| Arc::new(entry)),
        ))
    }

    fn dense(&self, weight: &str, x: &Mat) -> Result<(), CalibrateError> {
        let entry = self.entry(weight, false)?;
        let Entry::Dense { ncols, acc } = &*entry else {
            return Err(CalibrateError::Shape {
                tensor: weight.into(),
                detail: "used both as an expert stack and as a dense matmul".into(),
            });
        };
        let ncols = *ncols;
        let mut acc = acc
            .lock()
            .map_err(|_| CalibrateError::Invalid("imatrix entry lock poisoned".into()))?;
        let n_mat = acc.values.len() / ncols.max(1);
        if ncols == 0 || x.cols != ncols * n_mat {
            return Err(CalibrateError::Shape {
                tensor: weight.into(),
                detail: format!(
                    "activation rows of {} values do not fit {n_mat} slice(s) of {ncols} input columns",
                    x.cols
                ),
            });
        }
        // Row r holds the n_mat slices side by side (head h in columns h·ncols..), which is the
        // element order of ggml's src1 {ncols, rows, n_mat} per slice: for every slice, rows in
        // order, exactly llama-imatrix's loop.
        let width = x.cols;
        let rows = x.rows;
        let data = &x.data;
        acc.values
            .par_chunks_mut(COL_BLOCK)
            .enumerate()
            .for_each(|(b, dst)| {
                let lo = b * COL_BLOCK;
                for r in 0..rows {
                    let start = r * width + lo;
                    if let Some(src) = data.get(start..start + dst.len()) {
                        for (a, &v) in dst.iter_mut().zip(src) {
                            *a += v * v;
                        }
                    }
                }
            });
        if let Some(col) = acc.values.iter().position(|v| !v.is_finite()) {
            return Err(CalibrateError::NonFinite {
                tensor: weight.into(),
                expert: None,
                column: col,
                chunks: None,
            });
        }
        // ggml_nrows(src1) / n_mat = tokens.
        acc.count += rows as i64;
        Ok(())
    }

    fn expert(&self, weight: &str, expert: usize, x: &Mat) -> Result<(), CalibrateError> {
        let entry = self.entry(weight, true)?;
        let Entry::Experts { ncols, slices } = &*entry else {
            return Err(CalibrateError::Shape {
                tensor: weight.into(),
                detail: "used both as a dense matmul and as an expert stack".into(),
            });
        };
        let n_expert = slices.len();
        let slice = slices.get(expert).ok_or_else(|| CalibrateError::Shape {
            tensor: weight.into(),
            detail: format!("expert {expert} of a stack of {n_expert}"),
        })?;
        if x.cols != *ncols {
            return Err(CalibrateError::Shape {
                tensor: weight.into(),
                detail: format!(
                    "expert {expert}: activation rows of {} values, the weight has {ncols} input columns",
                    x.cols
                ),
            });
        }
        let mut acc = slice
            .lock()
            .map_err(|_| CalibrateError::Invalid("imatrix entry lock poisoned".into()))?;
        for row in x.data.chunks_exact(x.cols.max(1)) {
            for (a, &v) in acc.values.iter_mut().zip(row) {
                *a += v * v;
            }
        }
        acc.count += x.rows as i64;
        if let Some(col) = acc.values.iter().position(|v| !v.is_finite()) {
            return Err(CalibrateError::NonFinite {
                tensor: weight.into(),
                expert: Some(expert),
                column: col,
                chunks: None,
            });
        }
        Ok(())
    }

    /// Starts the sums from `im` (GGUF form, e.g. the `--in-file` inputs added up), so this run's
    /// x² are added onto them in llama-imatrix's order (it loads `--in-file` into its collector
    /// before evaluating). Every entry must fit the model ([`check_imatrix`]); a single count of
    /// an expert stack is broadcast to every expert, equal per-slice counts of a dense weight
    /// become its one count (both as llama-imatrix). Entries the run never touches are kept.
    pub fn seed(&self, im: &Imatrix) -> Result<(), CalibrateError> {
        check_fits(&|name| self.shapes.get(name).cloned(), im)?;
        let mut map = self
            .entries
            .write()
            .map_err(|_| CalibrateError::Invalid("imatrix collector lock poisoned".into()))?;
        for (name, e) in &im.entries {
            let ncols = self
                .shapes
                .get(name)
                .and_then(|d| d.first())
                .map_or(0, |&c| c as usize)
                .max(1);
            let counts: Vec<i64> = e.counts.iter().map(|c| c.round() as i64).collect();
            let entry = if is_expert_stack(name) {
                let n = e.in_sum2.len() / ncols;
                Entry::Experts {
                    ncols,
                    slices: e
                        .in_sum2
                        .chunks(ncols)
                        .enumerate()
                        .map(|(j, v)| {
                            Mutex::new(Acc {
                                values: v.to_vec(),
                                count: counts
                                    .get(if counts.len() == n { j } else { 0 })
                                    .copied()
                                    .unwrap_or(0),
                            })
                        })
                        .collect(),
                }
            } else {
                Entry::Dense {
                    ncols,
                    acc: Mutex::new(Acc {
                        values: e.in_sum2.clone(),
                        count: counts.first().copied().unwrap_or(0),
                    }),
                }
            };
            map.insert(name.clone(), Arc::new(entry));
        }
        Ok(())
    }

    /// The statistics so far as a GGUF-format [`Imatrix`] (raw Σx² and per-slice counts, entries
    /// sorted by name, zero-count experts kept): `chunk_count` is llama-imatrix's `m_last_chunk`,
    /// the largest count divided by `chunk_size`.
    pub fn to_imatrix(
        &self,
        datasets: Vec<String>,
        chunk_size: u32,
    ) -> Result<Imatrix, CalibrateError> {
        if let Some(e) = self.take_error() {
            return Err(e);
        }
        let map = self
            .entries
            .read()
            .map_err(|_| CalibrateError::Invalid("imatrix collector lock poisoned".into()))?;
        let mut entries = BTreeMap::new();
        let mut max_count = 0i64;
        let poisoned = || CalibrateError::Invalid("imatrix entry lock poisoned".into());
        for (name, e) in map.iter() {
            let (in_sum2, counts) = match &**e {
                Entry::Dense { acc, .. } => {
                    let a = acc.lock().map_err(|_| poisoned())?;
                    max_count = max_count.max(a.count);
                    (a.values.clone(), vec![a.count as f32])
                }
                Entry::Experts { slices, .. } => {
                    let mut values = Vec::new();
                    let mut counts = Vec::with_capacity(slices.len());
                    for s in slices {
                        let a = s.lock().map_err(|_| poisoned())?;
                        max_count = max_count.max(a.count);
                        values.extend_from_slice(&a.values);
                        counts.push(a.count as f32);
                    }
                    (values, counts)
                }
            };
            entries.insert(
                name.clone(),
                ImatrixEntry {
                    in_sum2,
                    counts,
                    ncall: None,
                },
            );
        }
        let chunk_count = if chunk_size > 0 {
            u32::try_from(max_count / i64::from(chunk_size)).unwrap_or(u32::MAX)
        } else {
            0
        };
        Ok(Imatrix {
            entries,
            datasets,
            chunk_count,
            chunk_size,
            format: ImatrixFormat::Gguf,
        })
    }
}

impl LayerObserver for ImatrixCollector {
    fn on_matmul(&self, _layer: usize, weight: &str, input: &Mat) {
        if self.failed.load(Ordering::Relaxed) || !self.wants_dense(weight, input.rows) {
            return;
        }
        if let Err(e) = self.dense(weight, input) {
            self.fail(e);
        }
    }

    fn on_expert_matmul(&self, _layer: usize, weight: &str, expert: usize, input: &Mat) {
        // llama-imatrix collects every MUL_MAT_ID, whatever its name or size.
        if self.failed.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.expert(weight, expert, input) {
            self.fail(e);
        }
    }
}

/// Whether `name` is a `MUL_MAT_ID` expert stack (`blk.N.ffn_{gate,up,down}_exps.weight`): one
/// count per expert rather than one per tensor.
fn is_expert_stack(name: &str) -> bool {
    name.contains("_exps.")
}

/// Checks that every entry of `im` (either format) fits the model whose tensor dims are `shapes`:
/// the tensor exists, its values are `ncols · n_mat` (per expert or head slice), and its counts
/// are one per expert for a stack (or one, broadcast), one (or equal ones) for a dense weight.
/// The error names the entry and says it looks like an imatrix of another model.
pub fn check_imatrix(source: &dyn WeightSource, im: &Imatrix) -> Result<(), CalibrateError> {
    check_fits(&|name| source.tensor_dims(name), im)
}

/// [`check_imatrix`] against any table of tensor dims.
fn check_fits(
    shapes: &dyn Fn(&str) -> Option<Vec<u64>>,
    im: &Imatrix,
) -> Result<(), CalibrateError> {
    for (name, e) in &im.entries {
        let bad = |detail: String| CalibrateError::Shape {
            tensor: name.clone(),
            detail: format!("{detail} (an imatrix of another model?)"),
        };
        let Some(dims) = shapes(name) else {
            return Err(bad("the model has no such tensor".into()));
        };
        let ncols = dims.first().copied().unwrap_or(0) as usize;
        let n_mat: usize = dims
            .iter()
            .skip(2)
            .map(|&d| d as usize)
            .product::<usize>()
            .max(1);
        if e.in_sum2.len() != ncols * n_mat {
            return Err(bad(format!(
                "{} values, but the model's tensor {dims:?} takes {} ({n_mat} × {ncols} input columns)",
                e.in_sum2.len(),
                ncols * n_mat
            )));
        }
        if e.ncall.is_some() || e.counts.len() <= 1 {
            continue;
        }
        let fits = if is_expert_stack(name) {
            e.counts.len() == n_mat
        } else {
            e.counts.windows(2).all(|w| w[0].round() == w[1].round())
        };
        if !fits {
            return Err(bad(format!(
                "{} counts, but the model's tensor {dims:?} has {}",
                e.counts.len(),
                if is_expert_stack(name) {
                    format!("{n_mat} experts")
                } else {
                    "one count".into()
                }
            )));
        }
    }
    Ok(())
}

/// Experts of one MoE layer that received no calibration tokens.
///
/// Exists because llama-quantize silently quantizes such experts without importance weights (a
/// zero count gives weights 1.0, REFERENCE §6.5); the user should know which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerCoverage {
    /// The block index.
    pub layer: usize,
    /// Experts in the layer's stacks.
    pub n_expert: usize,
    /// Experts with count 0 in any of the layer's `*_exps` entries, ascending.
    pub unused: Vec<usize>,
}

/// Per MoE layer, the experts with zero counts (only layers that have some), by layer.
pub fn coverage(im: &Imatrix) -> Vec<LayerCoverage> {
    let mut by_layer: BTreeMap<usize, (usize, std::collections::BTreeSet<usize>)> = BTreeMap::new();
    for (name, e) in &im.entries {
        if e.ncall.is_some() || e.counts.len() < 2 {
            continue;
        }
        let Some(layer) = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|l| l.parse::<usize>().ok())
        else {
            continue;
        };
        let slot = by_layer.entry(layer).or_default();
        slot.0 = slot.0.max(e.counts.len());
        for (i, c) in e.counts.iter().enumerate() {
            if c.round() as i64 == 0 {
                slot.1.insert(i);
            }
        }
    }
    by_layer
        .into_iter()
        .filter(|(_, (_, u))| !u.is_empty())
        .map(|(layer, (n_expert, unused))| LayerCoverage {
            layer,
            n_expert,
            unused: unused.into_iter().collect(),
        })
        .collect()
}

/// How the tokens are cut into chunks: llama-imatrix's `compute_imatrix` bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImatrixPlan {
    /// Chunk length.
    pub n_ctx: usize,
    /// Chunks evaluated.
    pub n_chunk: usize,
    /// Index in the whole text of the first chunk evaluated (`--from-chunk`).
    pub first_chunk: usize,
    /// The evaluated tokens (after `from_chunk`), original ids, `n_chunk · n_ctx` of them.
    pub tokens: Vec<u32>,
    /// BOS written over each chunk's first token (when the vocabulary adds BOS).
    pub bos: Option<u32>,
}

impl ImatrixPlan {
    /// Plans over `tokens` (the whole text tokenized once with BOS iff add_bos): the first
    /// `from_chunk` chunks are dropped (an error unless `(from_chunk + 2)·n_ctx < N`), at least
    /// 2·n_ctx tokens must remain, and n_chunk = ⌊N/n_ctx⌋ or `chunks` if smaller — all exactly
    /// as llama-imatrix.
    pub fn new(
        tokens: &[u32],
        n_ctx: usize,
        chunks: Option<usize>,
        from_chunk: usize,
        bos: Option<u32>,
    ) -> Result<ImatrixPlan, CalibrateError> {
        if n_ctx == 0 {
            return Err(CalibrateError::Invalid(
                "the context (-c) must be at least 1 token".into(),
            ));
        }
        let mut rest = tokens;
        if from_chunk > 0 {
            let skip = from_chunk.saturating_mul(n_ctx);
            if from_chunk.saturating_add(2).saturating_mul(n_ctx) >= tokens.len() {
                return Err(CalibrateError::SkipTooFar {
                    tokens: tokens.len(),
                    skip: from_chunk,
                    n_ctx,
                });
            }
            rest = tokens.get(skip..).unwrap_or(&[]);
        }
        if rest.len() < 2 * n_ctx {
            return Err(CalibrateError::TooFewTokens {
                tokens: rest.len(),
                n_ctx,
                need: 2 * n_ctx,
            });
        }
        let max = rest.len() / n_ctx;
        let n_chunk = match chunks {
            Some(0) => {
                return Err(CalibrateError::Invalid(
                    "--chunks must be at least 1".into(),
                ))
            }
            Some(c) => c.min(max),
            None => max,
        };
        Ok(ImatrixPlan {
            n_ctx,
            n_chunk,
            first_chunk: from_chunk,
            tokens: rest.get(..n_chunk * n_ctx).unwrap_or(rest).to_vec(),
            bos,
        })
    }

    /// The chunks as the model sees them: BOS written over each first token when add_bos.
    pub fn sequences(&self) -> Vec<Vec<u32>> {
        self.tokens
            .chunks_exact(self.n_ctx)
            .map(|c| {
                let mut s = c.to_vec();
                if let (Some(b), Some(f)) = (self.bos, s.first_mut()) {
                    *f = b;
                }
                s
            })
            .collect()
    }

    /// Rows of one llama-imatrix decode with its defaults (`n_batch` 2048, `n_ubatch` 512):
    /// n_seq = max(1, 2048/n_ctx) chunks per decode, split into physical batches of at most 512
    /// rows. What the ≥ 16-rows rule sees.
    pub fn llama_batch_rows(&self) -> usize {
        let n_seq = (LLAMA_BATCH / self.n_ctx).max(1).min(self.n_chunk.max(1));
        (n_seq * self.n_ctx).min(LLAMA_BATCH).min(LLAMA_UBATCH)
    }

    /// Scored tokens per chunk for the running perplexity: n_ctx − 1 − n_ctx/2.
    pub fn scored_per_chunk(&self) -> usize {
        self.n_ctx.saturating_sub(1 + self.n_ctx / 2)
    }
}

/// How to run [`run_imatrix`].
#[derive(Debug, Clone, Default)]
pub struct ImatrixOptions {
    /// Collect `output.weight` too (`--process-output`).
    pub process_output: bool,
    /// Compute the running perplexity (llama-imatrix's default; `--no-ppl` turns it off).
    pub compute_ppl: bool,
    /// Peak-memory bound for the engine's groups of chunks.
    pub max_memory: Option<u64>,
    /// The dataset name recorded in the file (the `-f` path as given).
    pub dataset: String,
    /// Sums to start from (`--in-file`, added up): this run's x² are added onto them and their
    /// datasets come first.
    pub initial: Option<Imatrix>,
    /// Evaluate at most this many chunks per group, with group ends where the running chunk
    /// count (inputs included) is a multiple of it, so each checkpoint (`--save-frequency`)
    /// falls on one. Combined with `max_memory`'s grouping: the smaller group wins.
    pub save_frequency: Option<usize>,
}

/// Reported while [`run_imatrix`] progresses.
pub enum ImatrixEvent<'a> {
    /// The engine is at a layer of a group of chunks.
    Layer(&'a Progress),
    /// Chunk `chunk` (1-based) is scored: the running perplexity (only with `compute_ppl`).
    Chunk {
        /// 1-based chunk number.
        chunk: usize,
        /// The perplexity so far.
        ppl: &'a PplAccumulator,
    },
    /// A group of chunks other than the last has passed every layer: the statistics so far are
    /// complete for the chunks done and can be saved as a checkpoint.
    Checkpoint {
        /// Everything collected so far (inputs included); `chunk_count` as it would be saved.
        imatrix: &'a Imatrix,
        /// The chunks of the text done (indices in the whole text, `first_chunk`-based).
        chunks: Range<usize>,
    },
}

/// What [`run_imatrix`] produced.
#[derive(Debug, Clone)]
pub struct ImatrixOutcome {
    /// The statistics (GGUF form).
    pub imatrix: Imatrix,
    /// The perplexity sums, when computed.
    pub ppl: Option<PplAccumulator>,
}

/// llama-imatrix's `compute_imatrix` on the layer-major engine: evaluates the plan's chunks
/// (each its own sequence, every position), collects Σx² and counts with [`ImatrixCollector`]
/// (starting from `opts.initial`), and scores positions n_ctx/2 … n_ctx−2 for the running
/// perplexity as llama-imatrix prints it.
///
/// The chunks go through the engine in groups ([`chunk_groups`]: bounded by `max_memory` and
/// `save_frequency`). Statistics are complete only when a whole group has passed every layer, so
/// after each group the sums are checked (non-finite → [`CalibrateError::NonFinite`] naming the
/// group's chunks; nothing more is evaluated) and, except after the last group, a
/// [`ImatrixEvent::Checkpoint`] is reported.
pub fn run_imatrix(
    engine: &Engine<'_>,
    plan: &ImatrixPlan,
    opts: &ImatrixOptions,
    on_event: &mut (dyn FnMut(ImatrixEvent<'_>) + Send),
) -> Result<ImatrixOutcome, CalibrateError> {
    let chunk_size = u32::try_from(plan.n_ctx)
        .map_err(|_| CalibrateError::Invalid(format!("context {} is too large", plan.n_ctx)))?;
    let collector = ImatrixCollector::new(
        engine.source(),
        CollectorOptions {
            process_output: opts.process_output,
            batch_rows: Some(plan.llama_batch_rows()),
        },
    );
    let mut datasets = Vec::new();
    if let Some(init) = &opts.initial {
        let init = init
            .to_gguf(chunk_size)
            .map_err(|e| CalibrateError::Invalid(e.to_string()))?;
        collector.seed(&init)?;
        datasets.clone_from(&init.datasets);
    }
    datasets.push(opts.dataset.clone());
    let base_chunks = collector.to_imatrix(Vec::new(), chunk_size)?.chunk_count as usize;
    let seqs = plan.sequences();
    let per_chunk = plan.scored_per_chunk();
    let compute_ppl = opts.compute_ppl && per_chunk > 0;
    let first = plan.n_ctx / 2;
    let scored = first..plan.n_ctx.saturating_sub(1);
    let none = |_: usize, _: usize| false;
    let groups = chunk_groups(
        plan.n_chunk,
        memory_group_chunks(engine, plan.n_ctx, opts.max_memory),
        opts.save_frequency,
        base_chunks,
    );
    let n_groups = groups.len();
    let events = Mutex::new(on_event);
    let mut ppl = PplAccumulator::default();
    let mut in_chunk = 0usize;
    for (gi, group) in groups.into_iter().enumerate() {
        let offset = group.start;
        let logit_positions = if opts.process_output {
            LogitPositions::All
        } else if compute_ppl {
            LogitPositions::Range(scored.clone())
        } else {
            LogitPositions::Predicate(&none)
        };
        let progress = |p: &Progress| {
            if let Ok(mut f) = events.lock() {
                f(ImatrixEvent::Layer(&Progress {
                    group: gi,
                    n_groups,
                    ..*p
                }));
            }
        };
        let eval = EvalOptions {
            logit_positions,
            max_memory: opts.max_memory,
            observer: Some(&collector),
            progress: Some(&progress),
        };
        let mut nlls: Vec<f64> = Vec::new();
        let mut on_batch = |rows: &[(usize, usize)], logits: &Mat| {
            if !compute_ppl {
                return;
            }
            // (row, seq, pos, target) of the scored rows; the softmaxes in parallel, the sums
            // in order.
            let targets: Vec<(usize, usize, usize, usize)> = rows
                .iter()
                .enumerate()
                .filter(|(_, &(_, pos))| scored.contains(&pos))
                .filter_map(|(i, &(si, pos))| {
                    let si = si + offset;
                    let tok = *plan.tokens.get(si * plan.n_ctx + pos + 1)?;
                    Some((i, si, pos, tok as usize))
                })
                .collect();
            targets
                .par_iter()
                .map(|&(i, _, _, tok)| token_nll(logits.row(i), tok))
                .collect_into_vec(&mut nlls);
            for (&(_, si, _, _), &nll) in targets.iter().zip(&nlls) {
                ppl.add(nll);
                in_chunk += 1;
                if in_chunk == per_chunk {
                    in_chunk = 0;
                    if let Ok(mut f) = events.lock() {
                        f(ImatrixEvent::Chunk {
                            chunk: si + 1,
                            ppl: &ppl,
                        });
                    }
                }
            }
        };
        let text_chunks = plan.first_chunk + group.start..plan.first_chunk + group.end;
        engine.evaluate_batches(seqs.get(group).unwrap_or(&[]), &eval, &mut on_batch)?;
        if let Some(e) = collector.take_error() {
            return Err(match e {
                CalibrateError::NonFinite {
                    tensor,
                    expert,
                    column,
                    ..
                } => CalibrateError::NonFinite {
                    tensor,
                    expert,
                    column,
                    chunks: Some(text_chunks),
                },
                other => other,
            });
        }
        if gi + 1 < n_groups {
            let im = collector.to_imatrix(datasets.clone(), chunk_size)?;
            if let Ok(mut f) = events.lock() {
                f(ImatrixEvent::Checkpoint {
                    imatrix: &im,
                    chunks: plan.first_chunk..text_chunks.end,
                });
            }
        }
    }
    let imatrix = collector.to_imatrix(datasets, chunk_size)?;
    Ok(ImatrixOutcome {
        imatrix,
        ppl: compute_ppl.then_some(ppl),
    })
}

/// How many chunks of `n_ctx` tokens fit one engine group under `max_memory` (the engine's
/// memory formula, [`Engine::memory_model`]); unbounded without a limit. At least 1: a limit too
/// small for one chunk is the engine's error to report.
fn memory_group_chunks(engine: &Engine<'_>, n_ctx: usize, max_memory: Option<u64>) -> usize {
    let Some(limit) = max_memory else {
        return usize::MAX;
    };
    let (fixed, per_token) = engine.memory_model(n_ctx);
    let tokens = limit.saturating_sub(fixed) / per_token.max(1);
    usize::try_from(tokens / n_ctx.max(1) as u64)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Cuts chunks `0..n` into consecutive groups of at most `mem` chunks that never straddle a point
/// where the running chunk count `base + end` is a multiple of `every` (the checkpoints of
/// `--save-frequency`, numbered like llama-imatrix's `.at_N` files, which count the chunks of
/// `--in-file` inputs too).
pub fn chunk_groups(n: usize, mem: usize, every: Option<usize>, base: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < n {
        let mut end = n.min(start.saturating_add(mem.max(1)));
        if let Some(every) = every.filter(|&e| e > 0) {
            let done = base + start;
            end = end.min(start + (every - done % every));
        }
        groups.push(start..end);
        start = end;
    }
    groups
}

#[cfg(test)]
mod tests;
