//! The streaming executor: runs a [`Plan`] against a checkpoint and writes the GGUF, tensor by
//! tensor, chunk by chunk, never holding more than a fixed number of row chunks.
//!
//! Exists because a DeepSeek-R1 checkpoint (690 GB of FP8) must become a GGUF in one pass with
//! memory independent of the model size: mmap → f32 rows (FP8 dequantized with its block scales,
//! transformed per [`Source`](crate::plan::Source)) → ggml blocks (`quantize`) → file, in order.
//!
//! How: each planned tensor is cut into chunks of whole rows of at most
//! [`ExecOptions::chunk_bytes`] of f32 (one row if a row is longer). Chunks are decoded,
//! transformed and quantized on a rayon pool of `T` threads with at most `W` (default `2·T`)
//! in flight; the calling thread writes finished chunks in file order to a
//! [`GgufWriter`] (which writes `OUT.partial` and renames it on success), reports progress and
//! polls the interrupt flag between chunks. After each chunk the checkpoint pages it read are
//! dropped from the resident set, and every `W` chunks all mapped checkpoint pages are (the
//! kernel's fault-around maps cached neighbours too; see `release.rs`).
//!
//! # Peak memory
//!
//! With `C = max(chunk_bytes, 4·L)` (L = the longest row, in elements), `T` threads and window
//! `W`:
//!
//! ```text
//! peak RSS ≈ base + W · (C        f32 rows of one chunk
//!                      + C        its output bytes (every output type is ≤ 4 bytes/element)
//!                      + C/2      checkpoint pages it touched (≤ 2 source bytes/element)
//!                      + K)       kv_b split scratch: one head's qk_nope × kv_lora_rank f32
//!                 + S + 1 MiB writer buffer
//! ```
//!
//! where `S` is the decoded FP8 block scales of the (at most W + 1) tensors with chunks in
//! flight (numel/16384 f32 each: 0.9 MB for a stacked R1 expert tensor) and `base` is the
//! process itself plus the plan's metadata (the tokenizer arrays). Nothing scales with the
//! number of tensors or the model size. Defaults (C = 8 MiB, W = 2T): about `20·W MiB + base`,
//! e.g. 80 MiB + base on 2 threads. `cargo xtask bench convert` measures it.

pub(crate) mod gguf_source;
mod release;
pub(crate) mod source;
pub(crate) mod weighted;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use formats::checkpoint::Checkpoint;
use formats::gguf::{GgufValue, GgufWriter, TensorDecl};

use crate::error::{ConvertError, Result};
use crate::plan::{Plan, PlannedTensor, Source};
use source::RowSource;
pub use weighted::{Extras, ImatrixWeights, Lookup};

/// Default f32 bytes per chunk (whole rows; a longer row is a chunk of its own).
pub const DEFAULT_CHUNK_BYTES: usize = 8 << 20;

/// How to execute a plan. Peak memory is about `W · (2.5·C + K) + S + base` (see the module
/// docs), `C` = [`ExecOptions::chunk_bytes`] (or one row's f32, if larger), `W` = [`window`]
/// chunks in flight.
///
/// [`window`]: ExecOptions::window
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// Worker threads; `None` = the machine's available parallelism.
    pub threads: Option<usize>,
    /// f32 bytes per chunk of rows; 0 = [`DEFAULT_CHUNK_BYTES`]. Smaller chunks lower peak
    /// memory, larger ones lower per-chunk overhead.
    pub chunk_bytes: usize,
    /// Chunks in flight at once (the memory bound's `W`); `None` = 2 × threads, enough to keep
    /// every thread busy while the writer drains finished chunks.
    pub window: Option<usize>,
    /// Interrupt flag polled between chunks; when it becomes true the conversion stops with
    /// [`ConvertError::Interrupted`] and no output. `None` = the process-wide flag set by the
    /// Ctrl-C handler of [`install_ctrlc_handler`].
    pub interrupt: Option<Arc<AtomicBool>>,
}

/// Receives progress from [`execute`] (called from the writing thread, in file order), so a
/// command-line front end can draw a bar while this crate stays free of any UI.
pub trait Progress: Sync {
    /// Called once before any data is written, with the total tensor bytes to write.
    fn begin(&self, total_bytes: u64) {
        let _ = total_bytes;
    }
    /// `bytes` more tensor data were written; they belong to tensor `tensor`.
    fn advance(&self, bytes: u64, tensor: &str) {
        let _ = (bytes, tensor);
    }
    /// Called once after the file is complete (not on error or interrupt).
    fn finish(&self) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// What a completed conversion wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The GGUF file (at its final name).
    pub path: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// Elements in all tensors.
    pub params: u64,
    /// Tensor data bytes written (without header and padding).
    pub tensor_bytes: u64,
    /// Size of the file.
    pub file_bytes: u64,
    /// Bytes of the distinct checkpoint tensors read (FP8 weights without their small scales).
    pub source_bytes: u64,
    /// Wall time of [`execute`], creation to rename.
    pub elapsed: Duration,
}

/// The process-wide interrupt flag that [`install_ctrlc_handler`]'s handler sets.
fn global_interrupt() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Makes Ctrl-C (SIGINT, and SIGTERM/SIGHUP) set the flag that [`execute`] polls when
/// [`ExecOptions::interrupt`] is `None`, so an interrupted conversion stops between chunks and
/// removes its `.partial` instead of dying mid-write. Idempotent; for binaries, not libraries'
/// tests (a process has one handler).
pub fn install_ctrlc_handler() -> std::result::Result<(), String> {
    static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let flag = Arc::clone(global_interrupt());
            ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
                .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))
        })
        .clone()
}

/// Opens the checkpoint in `dir`, plans its conversion ([`crate::arch::plan`]) and executes it
/// into `out`.
pub fn convert(
    dir: &Path,
    out: &Path,
    opts: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<Summary> {
    let ckpt = Checkpoint::open(dir)?;
    let plan = crate::arch::plan(&ckpt, &opts.plan)?;
    execute(&ckpt, &plan, out, &opts.exec, progress)
}

/// Everything [`convert`] needs besides the paths.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// What to write (output type, tokenizer override, name).
    pub plan: crate::arch::PlanOptions,
    /// How to run (threads, chunk size, interrupt flag).
    pub exec: ExecOptions,
}

/// One chunk of rows of one tensor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chunk {
    tensor: usize,
    start: usize,
    rows: usize,
    first: bool,
    last: bool,
}

/// A chunk's reusable buffers (one set per window slot).
#[derive(Default)]
pub(crate) struct Bufs {
    /// f32 rows (decoded input).
    pub(crate) f32s: Vec<f32>,
    /// The chunk's output bytes, exactly `rows · row_size` long once produced.
    pub(crate) bytes: Vec<u8>,
}

/// Produces the output bytes of one tensor, any range of whole rows at a time, from worker
/// threads.
///
/// Exists so one executor (chunking, window, ordered atomic writing) serves every input: HF
/// checkpoints (`convert`) and GGUF files (`requantize`).
pub(crate) trait TensorRows: Send + Sync {
    /// Rows that belong together (a chunk should not split them).
    fn granule(&self) -> usize {
        1
    }
    /// Fills `bufs.bytes` with the output bytes of rows `start..start + rows`.
    fn produce(&self, start: usize, rows: usize, bufs: &mut Bufs) -> Result<()>;
    /// Called after a chunk's rows were produced (drop their input pages).
    fn release(&self, start: usize, rows: usize) {
        let _ = (start, rows);
    }
}

/// Opens the [`TensorRows`] of each output tensor, in file order.
pub(crate) trait RowsFactory: Sync {
    /// The producer of output tensor `index`.
    fn open<'s>(&'s self, index: usize) -> Result<Box<dyn TensorRows + 's>>;
    /// Called every `window` written chunks (drop mapped input pages from the resident set).
    fn sweep(&self) {}
}

/// A finished chunk, sent from a worker to the writing thread.
struct Done {
    seq: u64,
    chunk: Chunk,
    result: Result<()>,
    bufs: Bufs,
}

/// Walks the plan's tensors, cutting each into chunks.
struct Cursor<'p> {
    tensors: &'p [TensorDecl],
    chunk_bytes: usize,
    tensor: usize,
    row: usize,
    /// Rows per chunk of the current tensor.
    step: usize,
}

impl Cursor<'_> {
    /// The tensor the next chunk belongs to.
    fn peek_tensor(&self) -> Option<usize> {
        (self.tensor < self.tensors.len()).then_some(self.tensor)
    }

    /// The next chunk; `granule` = rows the tensor's source wants kept together.
    fn next(&mut self, granule: usize) -> Option<Chunk> {
        let t = self.tensors.get(self.tensor)?;
        let n_rows = usize::try_from(t.dims.iter().skip(1).product::<u64>()).unwrap_or(usize::MAX);
        if self.row == 0 {
            let row_f32 = usize::try_from(t.dims.first().copied().unwrap_or(1))
                .unwrap_or(usize::MAX)
                .saturating_mul(4)
                .max(1);
            let mut step = (self.chunk_bytes / row_f32).max(1);
            let g = granule.max(1);
            if step >= g {
                step -= step % g;
            }
            self.step = step;
        }
        let rows = self.step.min(n_rows - self.row.min(n_rows));
        let chunk = Chunk {
            tensor: self.tensor,
            start: self.row,
            rows,
            first: self.row == 0,
            last: self.row + rows >= n_rows,
        };
        if chunk.last {
            self.tensor += 1;
            self.row = 0;
        } else {
            self.row += rows;
        }
        Some(chunk)
    }
}

/// Writes `plan` for `ckpt` to `out` (via `out.partial`, renamed when complete).
///
/// Checks every tensor's type and size before creating anything; on any error or interrupt the
/// partial file is removed and nothing appears at `out`. Memory: see the module docs.
pub fn execute(
    ckpt: &Checkpoint,
    plan: &Plan,
    out: &Path,
    opts: &ExecOptions,
    progress: &dyn Progress,
) -> Result<Summary> {
    execute_with(ckpt, plan, out, opts, &Extras::default(), progress)
}

/// [`execute`] with importance weights and the FP8 rounding choice of the direct quantizing path
/// (`convert --outtype Q4_K_M --imatrix F`): each tensor quantized to a block type uses its
/// imatrix slice (per expert for 3-D tensors) exactly as llama-quantize would on the f32 GGUF.
pub fn execute_with(
    ckpt: &Checkpoint,
    plan: &Plan,
    out: &Path,
    opts: &ExecOptions,
    extras: &Extras<'_>,
    progress: &dyn Progress,
) -> Result<Summary> {
    let began = Instant::now();
    let mut decls = Vec::with_capacity(plan.tensors.len());
    let mut params = 0u64;
    for t in &plan.tensors {
        if !quantize::supports(t.ggml_type) {
            return Err(ConvertError::Quantize {
                tensor: t.name.clone(),
                error: quantize::QuantizeError::Unsupported {
                    ty: t.ggml_type,
                    direction: "quantize",
                },
            });
        }
        params = params.saturating_add(t.dims.iter().product::<u64>());
        decls.push(TensorDecl::new(t.name.clone(), t.dims.clone(), t.ggml_type));
    }
    check_sizes(&decls)?;
    // The imatrix slice of each tensor that is quantized from f32 (size errors before any output).
    let weights = plan
        .tensors
        .iter()
        .map(|t| match extras.imatrix {
            Some(w) if t.ggml_type != formats::ggml_type::GgmlType::F32 => {
                w.for_tensor(&t.name, &t.dims)
            }
            _ => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    // Open every source once up front (headers and scales only): a plan that disagrees with the
    // checkpoint fails here, before an output file exists.
    for t in &plan.tensors {
        RowSource::open(ckpt, t)?;
    }
    let factory = CheckpointRows {
        ckpt,
        plan,
        weights,
        round_bf16: extras.fp8_via_bf16,
        sweeper: release::Sweeper::new(ckpt),
    };
    let total = stream(decls, &plan.metadata, out, opts, progress, &factory)?;
    let file_bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(Summary {
        path: out.to_path_buf(),
        tensors: plan.tensors.len(),
        params,
        tensor_bytes: total,
        file_bytes,
        source_bytes: source_bytes(ckpt, plan),
        elapsed: began.elapsed(),
    })
}

/// Total data bytes of `decls`, or an error naming the first tensor whose row length its type
/// does not allow.
pub(crate) fn check_sizes(decls: &[TensorDecl]) -> Result<u64> {
    let mut total = 0u64;
    for d in decls {
        total = d
            .nbytes()
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| ConvertError::Quantize {
                tensor: d.name.clone(),
                error: quantize::QuantizeError::RowLength {
                    ty: d.ggml_type,
                    n_per_row: usize::try_from(d.dims.first().copied().unwrap_or(1))
                        .unwrap_or(usize::MAX),
                    block: d.ggml_type.block_size(),
                },
            })?;
    }
    Ok(total)
}

/// The executor shared by every input: cuts `decls` into row chunks, has `factory`'s producers
/// fill them on a pool of threads with at most `W` in flight, and writes them in order to a
/// [`GgufWriter`] at `out` (atomically). Returns the tensor bytes written.
pub(crate) fn stream(
    decls: Vec<TensorDecl>,
    metadata: &[(String, GgufValue)],
    out: &Path,
    opts: &ExecOptions,
    progress: &dyn Progress,
    factory: &dyn RowsFactory,
) -> Result<u64> {
    let total = check_sizes(&decls)?;
    check_output_dir(out)?;

    let threads = opts
        .threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let window = opts.window.filter(|&w| w > 0).unwrap_or(2 * threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("r1q-convert-{i}"))
        .build()
        .map_err(|e| ConvertError::Io {
            path: out.to_path_buf(),
            error: std::io::Error::other(format!("cannot start {threads} threads: {e}")),
        })?;
    let interrupt = opts
        .interrupt
        .clone()
        .unwrap_or_else(|| Arc::clone(global_interrupt()));

    let names: Vec<String> = decls.iter().map(|d| d.name.clone()).collect();
    let mut writer = GgufWriter::create(out, metadata, decls.clone())?;
    progress.begin(total);

    let chunk_bytes = if opts.chunk_bytes == 0 {
        DEFAULT_CHUNK_BYTES
    } else {
        opts.chunk_bytes
    };
    let mut cursor = Cursor {
        tensors: &decls,
        chunk_bytes,
        tensor: 0,
        row: 0,
        step: 1,
    };
    let mut failure: Option<ConvertError> = None;
    let mut interrupted = false;
    let (tx, rx) = mpsc::channel::<Done>();
    pool.in_place_scope(|scope| {
        let mut free: Vec<Bufs> = (0..window).map(|_| Bufs::default()).collect();
        let mut current: Option<(usize, Arc<Box<dyn TensorRows + '_>>)> = None;
        let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
        let (mut issued, mut written) = (0u64, 0u64);
        loop {
            interrupted |= interrupt.load(Ordering::Relaxed);
            // Issue chunks while a window slot is free.
            while failure.is_none() && !interrupted && !free.is_empty() {
                let Some(ti) = cursor.peek_tensor() else {
                    break;
                };
                if current.as_ref().map(|c| c.0) != Some(ti) {
                    match factory.open(ti) {
                        Ok(s) => current = Some((ti, Arc::new(s))),
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                let Some((_, src)) = current.as_ref() else {
                    break;
                };
                let Some(chunk) = cursor.next(src.granule()) else {
                    break;
                };
                let (src, tx) = (Arc::clone(src), tx.clone());
                let mut bufs = free.pop().unwrap_or_default();
                let seq = issued;
                issued += 1;
                scope.spawn(move |_| {
                    let result = src.produce(chunk.start, chunk.rows, &mut bufs);
                    src.release(chunk.start, chunk.rows);
                    let _ = tx.send(Done {
                        seq,
                        chunk,
                        result,
                        bufs,
                    });
                });
            }
            if written == issued {
                break;
            }
            let Ok(done) = rx.recv() else { break };
            pending.insert(done.seq, done);
            while let Some(done) = pending.remove(&written) {
                written += 1;
                if written % window as u64 == 0 {
                    factory.sweep();
                }
                if failure.is_none() && !interrupted {
                    if let Err(e) = write_chunk(&mut writer, &names, &done, progress) {
                        failure = Some(e);
                    }
                }
                free.push(done.bufs);
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    if interrupted {
        drop(writer);
        return Err(ConvertError::Interrupted {
            path: out.to_path_buf(),
        });
    }
    writer.finish()?;
    progress.finish();
    Ok(total)
}

/// The checkpoint side of [`execute_with`]: each tensor's rows decoded from the mmap (FP8 with
/// its scales), transformed per [`Source`], optionally rounded through bf16, then quantized with
/// the tensor's imatrix slice.
struct CheckpointRows<'a> {
    ckpt: &'a Checkpoint,
    plan: &'a Plan,
    weights: Vec<Option<Arc<[f32]>>>,
    round_bf16: bool,
    sweeper: release::Sweeper,
}

/// One planned tensor's [`RowSource`] with what its quantization needs.
struct CheckpointTensor<'a> {
    t: &'a PlannedTensor,
    src: RowSource<'a>,
    weights: Option<Arc<[f32]>>,
    round_bf16: bool,
}

impl RowsFactory for CheckpointRows<'_> {
    fn open<'s>(&'s self, index: usize) -> Result<Box<dyn TensorRows + 's>> {
        let t = self
            .plan
            .tensors
            .get(index)
            .ok_or_else(|| ConvertError::Mapping {
                path: self.ckpt.path().to_path_buf(),
                detail: format!("no planned tensor {index}"),
            })?;
        Ok(Box::new(CheckpointTensor {
            t,
            src: RowSource::open(self.ckpt, t)?,
            weights: self.weights.get(index).cloned().flatten(),
            round_bf16: self.round_bf16,
        }))
    }

    fn sweep(&self) {
        self.sweeper.sweep();
    }
}

impl TensorRows for CheckpointTensor<'_> {
    fn granule(&self) -> usize {
        self.src.granule()
    }

    fn produce(&self, start: usize, rows: usize, bufs: &mut Bufs) -> Result<()> {
        run_chunk(self, start, rows, bufs)
    }

    fn release(&self, start: usize, rows: usize) {
        self.src.release(start, rows);
    }
}

/// Decodes, transforms and quantizes one chunk into `bufs.bytes`.
fn run_chunk(ct: &CheckpointTensor<'_>, start: usize, rows: usize, bufs: &mut Bufs) -> Result<()> {
    let t = ct.t;
    let row_len = usize::try_from(t.row_len()).unwrap_or(usize::MAX);
    let quant = |error| ConvertError::Quantize {
        tensor: t.name.clone(),
        error,
    };
    let n = rows
        .checked_mul(row_len)
        .ok_or_else(|| quant(quantize::QuantizeError::Size("chunk too large".into())))?;
    let row_bytes = t
        .ggml_type
        .row_size(t.row_len())
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| {
            quant(quantize::QuantizeError::RowLength {
                ty: t.ggml_type,
                n_per_row: row_len,
                block: t.ggml_type.block_size(),
            })
        })?;
    bufs.f32s.resize(n, 0.0);
    bufs.bytes.resize(rows * row_bytes, 0);
    ct.src.fill(start, row_len, &mut bufs.f32s)?;
    if t.ggml_type != formats::ggml_type::GgmlType::F32 {
        if ct.round_bf16 {
            formats::checkpoint::round_to_bf16(&mut bufs.f32s);
        }
        if t.ggml_type.is_quantized() {
            weighted::check_finite(&t.name, &bufs.f32s, start, row_len)?;
        }
    }
    let per_slice = usize::try_from(t.dims.get(1).copied().unwrap_or(1)).unwrap_or(usize::MAX);
    weighted::quantize_chunk(
        &t.name,
        t.ggml_type,
        &bufs.f32s,
        row_len,
        start,
        per_slice,
        ct.weights.as_deref(),
        &mut bufs.bytes,
    )
}

/// Writes a finished chunk (opening and closing its tensor as needed).
fn write_chunk(
    writer: &mut GgufWriter,
    names: &[String],
    done: &Done,
    progress: &dyn Progress,
) -> Result<()> {
    done.result.as_ref().map_err(clone_err)?;
    let name = names.get(done.chunk.tensor).map_or("", String::as_str);
    if done.chunk.first {
        writer.begin_tensor()?;
    }
    writer.write_chunk(&done.bufs.bytes)?;
    if done.chunk.last {
        writer.end_tensor()?;
    }
    progress.advance(done.bufs.bytes.len() as u64, name);
    Ok(())
}

/// Moves a worker's error out of a shared reference (errors are not `Clone`; keep the message).
fn clone_err(e: &ConvertError) -> ConvertError {
    match e {
        ConvertError::Mapping { path, detail } => ConvertError::Mapping {
            path: path.clone(),
            detail: detail.clone(),
        },
        other => ConvertError::Mapping {
            path: PathBuf::new(),
            detail: other.to_string(),
        },
    }
}

/// A clear error when the output's directory does not exist (rather than the writer's "create
/// OUT.partial: No such file or directory").
fn check_output_dir(out: &Path) -> Result<()> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => return Ok(()),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ConvertError::Io {
            path: out.to_path_buf(),
            error: std::io::Error::other(format!("{} is not a directory", dir.display())),
        }),
        Err(e) => Err(ConvertError::Io {
            path: out.to_path_buf(),
            error: std::io::Error::new(
                e.kind(),
                format!("output directory {} does not exist", dir.display()),
            ),
        }),
    }
}

/// Bytes of the distinct checkpoint tensors the plan reads.
fn source_bytes(ckpt: &Checkpoint, plan: &Plan) -> u64 {
    let mut names: Vec<&str> = Vec::new();
    for t in &plan.tensors {
        match &t.source {
            Source::Tensor { name }
            | Source::PermuteRope { name, .. }
            | Source::KvB { name, .. } => names.push(name),
            Source::Stack { names: n } => names.extend(n.iter().map(String::as_str)),
            Source::Values(_) => {}
        }
    }
    names.sort_unstable();
    names.dedup();
    names
        .iter()
        .filter_map(|n| ckpt.meta(n))
        .map(|m| m.len)
        .sum()
}
