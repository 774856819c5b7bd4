//! llama-perplexity's KL-divergence base file (`--kl-divergence-base FILE`, REFERENCE §7.2) and
//! the statistics of a KL-divergence run (§7.3), reproduced operation for operation.
//!
//! Why bit-exact: a base file written by llama.cpp must be readable here and ours by llama.cpp,
//! so the community's published base files and numbers stay comparable. The record encoding
//! (u16 log-probabilities with `nearest_int`, round half to even) and every f32/f64 choice in the
//! statistics follow `tools/perplexity/perplexity.cpp`.
//!
//! Not for: evaluating models (that is [`crate::engine`]) or chunking text ([`crate::ppl`]).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The eight bytes a base file starts with.
pub const MAGIC: [u8; 8] = *b"_logits_";

/// Header bytes before the tokens: magic, n_ctx, n_vocab, n_chunk.
pub const HEADER_BYTES: u64 = 8 + 4 + 4 + 4;

/// u16 values in one record for `n_vocab`: f32 scale and f32 min_log_prob (4 u16), then one u16
/// per token, padded to an even count (`2·⌈n_vocab/2⌉ + 4`).
pub fn record_u16s(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// Scored positions per chunk of `n_ctx` tokens: `n_ctx − 1 − n_ctx/2`.
pub fn scored_per_chunk(n_ctx: usize) -> usize {
    n_ctx.saturating_sub(1 + n_ctx / 2)
}

/// llama.cpp's `nearest_int` (perplexity.cpp): round to nearest, ties to even, via the
/// 1.5·2²³ trick. Valid for |x| < 2²², which the 0…65535 range of the records satisfies.
pub fn nearest_int(x: f32) -> i32 {
    let val = x + 12_582_912.0f32;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// Encodes one position's logits as a record (`out.len() == record_u16s(logits.len())`) and
/// returns the negative log-likelihood of `tok` as llama.cpp computes it in this mode
/// (`max + ln Σ − logit[tok]`, in f32).
pub fn encode_record(logits: &[f32], tok: usize, out: &mut [u16]) -> f64 {
    let n = logits.len();
    debug_assert_eq!(out.len(), record_u16s(n));
    let Some(&l0) = logits.first() else {
        out.fill(0);
        return 0.0;
    };
    let (mut max, mut min) = (l0, l0);
    for &l in &logits[1..] {
        max = max.max(l);
        min = min.min(l);
    }
    min = min.max(max - 16.0);
    let mut sum_exp = 0f64;
    for &l in logits {
        sum_exp += f64::from((l - max).exp());
    }
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min - max - log_sum_exp;
    let scale = (max - min) / 65535.0;
    let (head, q) = out.split_at_mut(4);
    let s = scale.to_le_bytes();
    let m = min_log_prob.to_le_bytes();
    head[0] = u16::from_le_bytes([s[0], s[1]]);
    head[1] = u16::from_le_bytes([s[2], s[3]]);
    head[2] = u16::from_le_bytes([m[0], m[1]]);
    head[3] = u16::from_le_bytes([m[2], m[3]]);
    if scale != 0.0 {
        let inv_scale = 1.0 / scale;
        for (qi, &l) in q.iter_mut().zip(logits) {
            *qi = if l > min {
                nearest_int(inv_scale * (l - min)) as u16
            } else {
                0
            };
        }
    } else {
        q[..n].fill(0);
    }
    // The pad u16 (odd n_vocab) is never written by llama.cpp: its buffer starts zeroed.
    q[n..].fill(0);
    let lt = logits.get(tok).copied().unwrap_or(f32::NAN);
    f64::from(max + log_sum_exp - lt)
}

/// The (scale, min_log_prob) header of a record.
pub fn record_scale(rec: &[u16]) -> (f32, f32) {
    let w = |i: usize| rec.get(i).copied().unwrap_or(0).to_le_bytes();
    let (a, b, c, d) = (w(0), w(1), w(2), w(3));
    (
        f32::from_le_bytes([a[0], a[1], b[0], b[1]]),
        f32::from_le_bytes([c[0], c[1], d[0], d[1]]),
    )
}

/// Decoded log-probabilities of a record: `scale·q_i + min_log_prob` for each of `n_vocab`.
pub fn decode_record(rec: &[u16], n_vocab: usize) -> Vec<f32> {
    let (scale, min_log_prob) = record_scale(rec);
    rec.iter()
        .skip(4)
        .take(n_vocab)
        .map(|&q| scale * f32::from(q) + min_log_prob)
        .collect()
}

/// Why a base file could not be read or written. Always names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct BaseFileError {
    /// The base file.
    pub path: PathBuf,
    /// What was wrong.
    pub problem: String,
}

fn bf_err(path: &Path, problem: impl Into<String>) -> BaseFileError {
    BaseFileError {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// What a base file's header and token block say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseHeader {
    /// Chunk length.
    pub n_ctx: usize,
    /// Vocabulary size (logits per position).
    pub n_vocab: usize,
    /// Number of chunks.
    pub n_chunk: usize,
    /// `n_chunk · n_ctx` token ids, BOS substitution not applied.
    pub tokens: Vec<u32>,
}

impl BaseHeader {
    /// Exact file size the header implies.
    pub fn file_size(&self) -> u64 {
        HEADER_BYTES
            + 4 * (self.n_chunk * self.n_ctx) as u64
            + 2 * (self.n_chunk * scored_per_chunk(self.n_ctx) * record_u16s(self.n_vocab)) as u64
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_BYTES as usize + 4 * self.tokens.len());
        b.extend_from_slice(&MAGIC);
        for v in [self.n_ctx, self.n_vocab, self.n_chunk] {
            b.extend_from_slice(&(v as i32).to_le_bytes());
        }
        for &t in &self.tokens {
            b.extend_from_slice(&(t as i32).to_le_bytes());
        }
        b
    }
}

/// Writes a base file atomically (`FILE.partial`, fsync, rename), record by record.
pub struct BaseWriter {
    path: PathBuf,
    partial: PathBuf,
    out: Option<BufWriter<File>>,
    header: BaseHeader,
    records: usize,
    bytes: Vec<u8>,
}

impl BaseWriter {
    /// Creates `path.partial` and writes the header.
    pub fn create(path: &Path, header: BaseHeader) -> Result<BaseWriter, BaseFileError> {
        if header.tokens.len() != header.n_ctx * header.n_chunk {
            return Err(bf_err(path, "token count is not n_ctx · n_chunk"));
        }
        for v in [header.n_ctx, header.n_vocab, header.n_chunk] {
            if v == 0 || v > i32::MAX as usize {
                return Err(bf_err(path, format!("header value {v} out of range")));
            }
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file =
            File::create(&partial).map_err(|e| bf_err(&partial, format!("cannot create: {e}")))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header.bytes())
            .map_err(|e| bf_err(&partial, format!("write failed: {e}")))?;
        Ok(BaseWriter {
            path: path.to_path_buf(),
            partial,
            out: Some(out),
            header,
            records: 0,
            bytes: Vec::new(),
        })
    }

    /// The header being written.
    pub fn header(&self) -> &BaseHeader {
        &self.header
    }

    /// Appends one record (`record_u16s(n_vocab)` values).
    pub fn write_record(&mut self, rec: &[u16]) -> Result<(), BaseFileError> {
        if rec.len() != record_u16s(self.header.n_vocab) {
            return Err(bf_err(&self.partial, "record of the wrong length"));
        }
        self.bytes.clear();
        self.bytes.extend(rec.iter().flat_map(|v| v.to_le_bytes()));
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| bf_err(&self.partial, "already finished"))?;
        out.write_all(&self.bytes)
            .map_err(|e| bf_err(&self.partial, format!("write failed: {e}")))?;
        self.records += 1;
        Ok(())
    }

    /// Checks every record was written, flushes, fsyncs and renames to the final name.
    pub fn finish(mut self) -> Result<PathBuf, BaseFileError> {
        let want = self.header.n_chunk * scored_per_chunk(self.header.n_ctx);
        if self.records != want {
            return Err(bf_err(
                &self.partial,
                format!("{} records written, {want} expected", self.records),
            ));
        }
        let out = self
            .out
            .take()
            .ok_or_else(|| bf_err(&self.partial, "already finished"))?;
        let file = out
            .into_inner()
            .map_err(|e| bf_err(&self.partial, format!("flush failed: {e}")))?;
        file.sync_all()
            .map_err(|e| bf_err(&self.partial, format!("fsync failed: {e}")))?;
        std::fs::rename(&self.partial, &self.path)
            .map_err(|e| bf_err(&self.path, format!("rename failed: {e}")))?;
        Ok(self.path.clone())
    }
}

impl Drop for BaseWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// Reads a base file strictly: magic, positive header values, tokens inside the vocabulary and the
/// exact size the header implies are checked on open, before any record is read.
pub struct BaseReader {
    path: PathBuf,
    header: BaseHeader,
    input: BufReader<File>,
    records: usize,
    buf: Vec<u8>,
}

impl BaseReader {
    /// Opens and validates `path`.
    pub fn open(path: &Path) -> Result<BaseReader, BaseFileError> {
        let file = File::open(path).map_err(|e| bf_err(path, format!("cannot open: {e}")))?;
        let size = file
            .metadata()
            .map_err(|e| bf_err(path, format!("cannot stat: {e}")))?
            .len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut head = [0u8; HEADER_BYTES as usize];
        if size < HEADER_BYTES {
            return Err(bf_err(
                path,
                format!("truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header"),
            ));
        }
        input
            .read_exact(&mut head)
            .map_err(|e| bf_err(path, format!("read failed: {e}")))?;
        if head[..8] != MAGIC {
            return Err(bf_err(
                path,
                "bad magic: not a KL-divergence base file (expected '_logits_')",
            ));
        }
        let field = |i: usize, name: &str| -> Result<usize, BaseFileError> {
            let o = 8 + 4 * i;
            let v = i32::from_le_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);
            if v <= 0 {
                return Err(bf_err(path, format!("{name} is {v}, must be positive")));
            }
            Ok(v as usize)
        };
        let n_ctx = field(0, "n_ctx")?;
        let n_vocab = field(1, "n_vocab")?;
        let n_chunk = field(2, "n_chunk")?;
        let mut header = BaseHeader {
            n_ctx,
            n_vocab,
            n_chunk,
            tokens: Vec::new(),
        };
        let expected = header.file_size();
        if size < expected {
            return Err(bf_err(
                path,
                format!(
                    "truncated: {size} bytes, the header (n_ctx {n_ctx}, n_vocab {n_vocab}, \
                     n_chunk {n_chunk}) needs {expected}"
                ),
            ));
        }
        if size > expected {
            return Err(bf_err(
                path,
                format!(
                    "{} trailing bytes after the last record (n_ctx {n_ctx}, n_vocab {n_vocab}, \
                     n_chunk {n_chunk} make {expected} bytes)",
                    size - expected
                ),
            ));
        }
        let mut raw = vec![0u8; 4 * n_ctx * n_chunk];
        input
            .read_exact(&mut raw)
            .map_err(|e| bf_err(path, format!("read failed: {e}")))?;
        header.tokens = raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .enumerate()
            .map(|(i, t)| {
                u32::try_from(t)
                    .ok()
                    .filter(|&t| (t as usize) < n_vocab)
                    .ok_or_else(|| {
                        bf_err(
                            path,
                            format!("token {i} is {t}, outside the vocabulary of {n_vocab}"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(BaseReader {
            path: path.to_path_buf(),
            header,
            input,
            records: 0,
            buf: Vec::new(),
        })
    }

    /// The file's header and tokens.
    pub fn header(&self) -> &BaseHeader {
        &self.header
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fails unless the file was written for a model with `n_vocab` logits (llama.cpp only
    /// warns and then reads garbage).
    pub fn check_vocab(&self, n_vocab: usize) -> Result<(), BaseFileError> {
        if self.header.n_vocab != n_vocab {
            return Err(bf_err(
                &self.path,
                format!(
                    "inconsistent vocabulary: the base file has n_vocab {}, the model {n_vocab}",
                    self.header.n_vocab
                ),
            ));
        }
        Ok(())
    }

    /// Reads the next record into `rec` (resized to `record_u16s(n_vocab)`).
    pub fn next_record(&mut self, rec: &mut Vec<u16>) -> Result<(), BaseFileError> {
        let nv = record_u16s(self.header.n_vocab);
        self.buf.resize(2 * nv, 0);
        self.input
            .read_exact(&mut self.buf)
            .map_err(|e| bf_err(&self.path, format!("reading record {}: {e}", self.records)))?;
        rec.clear();
        rec.extend(
            self.buf
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]])),
        );
        self.records += 1;
        Ok(())
    }
}

/// llama.cpp's `mean_and_uncertainty`: mean Σ/N and its standard error
/// √((Σ²/N − mean²)/(N − 1)), the error 0 unless N > 10 and the variance is positive.
pub fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count < 1 {
        return (0.0, 0.0);
    }
    let f = sum / count as f64;
    let df = sum2 / count as f64 - f * f;
    let df = if df > 0.0 && count > 10 {
        (df / (count - 1) as f64).sqrt()
    } else {
        0.0
    };
    (f, df)
}

/// llama.cpp's `covariance` of two series' means (0 below 10 samples).
pub fn covariance(suma: f64, sumb: f64, sumab: f64, count: usize) -> f64 {
    if count < 10 {
        return 0.0;
    }
    let n = count as f64;
    (sumab / n - (suma / n) * (sumb / n)) / (n - 1.0)
}

/// llama.cpp's `percentile` of sorted values: linear interpolation at `fraction·(N − 1)`,
/// computed in f32 as there. Empty input gives NaN.
pub fn percentile(sorted: &[f32], fraction: f32) -> f32 {
    let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) else {
        return f32::NAN;
    };
    if fraction <= 0.0 {
        return first;
    }
    if fraction >= 1.0 {
        return last;
    }
    let mut p = fraction * (sorted.len() - 1) as f32;
    let ip = p as usize;
    p -= ip as f32;
    let a = sorted.get(ip).copied().unwrap_or(last);
    let b = sorted
        .get((ip + 1).min(sorted.len() - 1))
        .copied()
        .unwrap_or(last);
    (1.0 - p) * a + p * b
}

/// The median as llama.cpp prints it: the mean of the two middle values for even N (f32).
pub fn median(sorted: &[f32]) -> f32 {
    let n = sorted.len();
    if n == 0 {
        return f32::NAN;
    }
    if n.is_multiple_of(2) {
        0.5 * (sorted[n / 2] + sorted[n / 2 - 1])
    } else {
        sorted[n / 2]
    }
}

/// Running sums of a KL-divergence run (llama.cpp's `kl_divergence_result`) plus every token's
/// KLD and Δp for the percentiles.
#[derive(Debug, Clone, Default)]
pub struct KldAccumulator {
    sum_nll: f64,
    sum_nll2: f64,
    sum_nll_base: f64,
    sum_nll_base2: f64,
    sum_nll_nll_base: f64,
    sum_kld: f64,
    sum_kld2: f64,
    sum_p_diff: f64,
    sum_p_diff2: f64,
    sum_p_diff4: f64,
    max_p_diff: f32,
    n_same_top: usize,
    count: usize,
    kld_values: Vec<f32>,
    p_diff_values: Vec<f32>,
}

impl KldAccumulator {
    /// An empty accumulator.
    pub fn new() -> KldAccumulator {
        KldAccumulator::default()
    }

    /// Scores one position: current `logits`, the base model's `record` for the same position
    /// and the target token `tok`. Every operation in llama.cpp's precision.
    pub fn add(&mut self, logits: &[f32], record: &[u16], tok: usize) {
        if !logits.is_empty() {
            self.add_score(&TokenScore::new(logits, record, tok));
        }
    }

    /// Adds a position scored by [`TokenScore::new`] (possibly on another thread): the sums
    /// depend only on the order of these calls, so scoring a batch in parallel and adding in
    /// order gives the sequential numbers bit for bit.
    pub fn add_score(&mut self, t: &TokenScore) {
        let (nll, nll_base) = (t.nll, t.nll_base);
        self.sum_nll += f64::from(nll);
        self.sum_nll2 += f64::from(nll * nll);
        self.sum_nll_base += f64::from(nll_base);
        self.sum_nll_base2 += f64::from(nll_base * nll_base);
        self.sum_nll_nll_base += f64::from(nll * nll_base);
        self.sum_kld += t.kld;
        self.sum_kld2 += t.kld * t.kld;
        self.count += 1;
        if t.same_top {
            self.n_same_top += 1;
        }
        let p_base = (-nll_base).exp();
        let p = (-nll).exp();
        let p_diff = p - p_base;
        self.sum_p_diff += f64::from(p_diff);
        let p_diff2 = f64::from(p_diff * p_diff);
        self.sum_p_diff2 += p_diff2;
        self.sum_p_diff4 += p_diff2 * p_diff2;
        self.max_p_diff = self.max_p_diff.max(p_diff.abs());
        self.kld_values.push(t.kld as f32);
        self.p_diff_values.push(p_diff);
    }

    /// Tokens scored so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The running line llama-perplexity prints after chunk `chunk` (1-based), without newline:
    /// chunk, PPL ± unc, ln(PPL(Q)/PPL(base)) ± unc, mean KLD ± unc, RMS Δp ± unc %, same top ±
    /// unc %.
    pub fn chunk_line(&self, chunk: usize) -> String {
        let s = self.stats();
        format!(
            "{chunk:4}    {:9.4} ± {:9.4}    {:10.5} ± {:10.5}    {:10.5} ± {:10.5}    {:6.3} ± {:6.3} %    {:6.3} ± {:6.3} %",
            s.ppl,
            s.ppl_unc,
            s.ln_ratio,
            s.ln_ratio_unc,
            s.mean_kld,
            s.mean_kld_unc,
            100.0 * s.rms_p_diff,
            100.0 * s.rms_p_diff_unc,
            100.0 * s.same_top,
            100.0 * s.same_top_unc,
        )
    }

    /// All statistics of §7.3 from the sums and values so far.
    pub fn stats(&self) -> KldStats {
        let n = self.count;
        let log_ppl = mean_and_uncertainty(self.sum_nll, self.sum_nll2, n);
        let ppl = log_ppl.0.exp();
        let ppl_unc = ppl * log_ppl.1;
        let log_base = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, n);
        let ppl_base = log_base.0.exp();
        let ppl_base_unc = ppl_base * log_base.1;
        let cov = covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, n);
        let cor = cov / (log_ppl.1 * log_base.1);
        let ln_ratio = log_ppl.0 - log_base.0;
        let ln_ratio_unc = (log_ppl.1 * log_ppl.1 + log_base.1 * log_base.1 - 2.0 * cov).sqrt();
        let ratio = ln_ratio.exp();
        let ppl_cov = ppl * ppl_base * cov;
        let diff_unc = (ppl_unc * ppl_unc + ppl_base_unc * ppl_base_unc - 2.0 * ppl_cov).sqrt();
        let kld = mean_and_uncertainty(self.sum_kld, self.sum_kld2, n);
        let p_diff = mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, n);
        let mse = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, n);
        let rms = mse.0.sqrt();
        let same_top = self.n_same_top as f64 / n as f64;
        let mut kv = self.kld_values.clone();
        kv.sort_by(f32::total_cmp);
        let mut pv = self.p_diff_values.clone();
        pv.sort_by(f32::total_cmp);
        let pct = |v: &[f32], fs: &[f32]| fs.iter().map(|&f| percentile(v, f)).collect::<Vec<_>>();
        KldStats {
            count: n,
            ppl,
            ppl_unc,
            ppl_base,
            ppl_base_unc,
            cor_ln_ppl: cor,
            ln_ratio,
            ln_ratio_unc,
            ppl_ratio: ratio,
            ppl_ratio_unc: ratio * ln_ratio_unc,
            ppl_diff: ppl - ppl_base,
            ppl_diff_unc: diff_unc,
            mean_kld: kld.0,
            mean_kld_unc: kld.1,
            kld_max: kv.last().copied().unwrap_or(f32::NAN),
            kld_percentiles: pct(&kv, &KLD_FRACTIONS),
            kld_median: median(&kv),
            kld_min: kv.first().copied().unwrap_or(f32::NAN),
            mean_p_diff: p_diff.0,
            mean_p_diff_unc: p_diff.1,
            p_diff_max: pv.last().copied().unwrap_or(f32::NAN),
            p_diff_percentiles: pct(&pv, &P_DIFF_FRACTIONS),
            p_diff_median: median(&pv),
            p_diff_min: pv.first().copied().unwrap_or(f32::NAN),
            rms_p_diff: rms,
            rms_p_diff_unc: 0.5 / rms * mse.1,
            same_top,
            same_top_unc: (same_top * (1.0 - same_top) / (n as f64 - 1.0)).sqrt(),
        }
    }
}

/// The KLD percentiles llama-perplexity prints, in its order (max, median and min separate).
pub const KLD_FRACTIONS: [f32; 8] = [0.999, 0.990, 0.950, 0.900, 0.100, 0.050, 0.010, 0.001];
/// The Δp percentiles llama-perplexity prints, in its order.
pub const P_DIFF_FRACTIONS: [f32; 10] = [
    0.999, 0.990, 0.950, 0.900, 0.750, 0.250, 0.100, 0.050, 0.010, 0.001,
];

/// Everything a KL-divergence run reports (REFERENCE §7.3); uncertainties as llama.cpp computes
/// them.
#[derive(Debug, Clone, PartialEq)]
pub struct KldStats {
    /// Tokens scored.
    pub count: usize,
    /// PPL of the current model.
    pub ppl: f64,
    /// Its uncertainty.
    pub ppl_unc: f64,
    /// PPL of the base model, from the stored log-probabilities.
    pub ppl_base: f64,
    /// Its uncertainty.
    pub ppl_base_unc: f64,
    /// Correlation of the two nll series' means.
    pub cor_ln_ppl: f64,
    /// ln(PPL(Q)/PPL(base)).
    pub ln_ratio: f64,
    /// Its uncertainty (with the covariance).
    pub ln_ratio_unc: f64,
    /// PPL(Q)/PPL(base).
    pub ppl_ratio: f64,
    /// Its uncertainty.
    pub ppl_ratio_unc: f64,
    /// PPL(Q) − PPL(base).
    pub ppl_diff: f64,
    /// Its uncertainty.
    pub ppl_diff_unc: f64,
    /// Mean KLD.
    pub mean_kld: f64,
    /// Its standard error.
    pub mean_kld_unc: f64,
    /// Largest KLD.
    pub kld_max: f32,
    /// KLD at [`KLD_FRACTIONS`].
    pub kld_percentiles: Vec<f32>,
    /// Median KLD.
    pub kld_median: f32,
    /// Smallest KLD.
    pub kld_min: f32,
    /// Mean Δp = p(tok) − p_base(tok).
    pub mean_p_diff: f64,
    /// Its standard error.
    pub mean_p_diff_unc: f64,
    /// Largest Δp.
    pub p_diff_max: f32,
    /// Δp at [`P_DIFF_FRACTIONS`].
    pub p_diff_percentiles: Vec<f32>,
    /// Median Δp.
    pub p_diff_median: f32,
    /// Smallest Δp.
    pub p_diff_min: f32,
    /// RMS Δp.
    pub rms_p_diff: f64,
    /// Its uncertainty.
    pub rms_p_diff_unc: f64,
    /// Fraction of positions whose argmax equals the base's.
    pub same_top: f64,
    /// Its binomial uncertainty.
    pub same_top_unc: f64,
}

impl KldStats {
    /// The KLD at percentile `fraction` (one of [`KLD_FRACTIONS`]), e.g. 0.99 for p99.
    pub fn kld_percentile(&self, fraction: f32) -> Option<f32> {
        KLD_FRACTIONS
            .iter()
            .position(|&f| f == fraction)
            .and_then(|i| self.kld_percentiles.get(i).copied())
    }

    /// The three final blocks llama-perplexity prints (Perplexity, KL divergence, token
    /// probability statistics), one line each, in its format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line("====== Perplexity statistics ======".into());
        line(format!(
            "Mean PPL(Q)                   : {:10.6} ± {:10.6}",
            self.ppl, self.ppl_unc
        ));
        line(format!(
            "Mean PPL(base)                : {:10.6} ± {:10.6}",
            self.ppl_base, self.ppl_base_unc
        ));
        line(format!(
            "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%",
            100.0 * self.cor_ln_ppl
        ));
        line(format!(
            "Mean ln(PPL(Q)/PPL(base))     : {:10.6} ± {:10.6}",
            self.ln_ratio, self.ln_ratio_unc
        ));
        line(format!(
            "Mean PPL(Q)/PPL(base)         : {:10.6} ± {:10.6}",
            self.ppl_ratio, self.ppl_ratio_unc
        ));
        line(format!(
            "Mean PPL(Q)-PPL(base)         : {:10.6} ± {:10.6}",
            self.ppl_diff, self.ppl_diff_unc
        ));
        line(String::new());
        line("====== KL divergence statistics ======".into());
        line(format!(
            "Mean    KLD: {:10.6} ± {:10.6}",
            self.mean_kld, self.mean_kld_unc
        ));
        line(format!("Maximum KLD: {:10.6}", self.kld_max));
        let kp = |i: usize| self.kld_percentiles.get(i).copied().unwrap_or(f32::NAN);
        for (i, label) in ["99.9%", "99.0%", "95.0%", "90.0%"].iter().enumerate() {
            line(format!("{label}   KLD: {:10.6}", kp(i)));
        }
        line(format!("Median  KLD: {:10.6}", self.kld_median));
        for (i, label) in ["10.0%", " 5.0%", " 1.0%", " 0.1%"].iter().enumerate() {
            line(format!("{label}   KLD: {:10.6}", kp(4 + i)));
        }
        line(format!("Minimum KLD: {:10.6}", self.kld_min));
        line(String::new());
        line("====== Token probability statistics ======".into());
        line(format!(
            "Mean    Δp: {:6.3} ± {:5.3} %",
            100.0 * self.mean_p_diff,
            100.0 * self.mean_p_diff_unc
        ));
        line(format!("Maximum Δp: {:6.3}%", 100.0 * self.p_diff_max));
        let pp = |i: usize| {
            100.0 * f64::from(self.p_diff_percentiles.get(i).copied().unwrap_or(f32::NAN))
        };
        for (i, label) in ["99.9%", "99.0%", "95.0%", "90.0%", "75.0%"]
            .iter()
            .enumerate()
        {
            line(format!("{label}   Δp: {:6.3}%", pp(i)));
        }
        line(format!(
            "Median  Δp: {:6.3}%",
            100.0 * f64::from(self.p_diff_median)
        ));
        for (i, label) in ["25.0%", "10.0%", " 5.0%", " 1.0%", " 0.1%"]
            .iter()
            .enumerate()
        {
            line(format!("{label}   Δp: {:6.3}%", pp(5 + i)));
        }
        line(format!(
            "Minimum Δp: {:6.3}%",
            100.0 * f64::from(self.p_diff_min)
        ));
        line(format!(
            "RMS Δp    : {:6.3} ± {:5.3} %",
            100.0 * self.rms_p_diff,
            100.0 * self.rms_p_diff_unc
        ));
        line(format!(
            "Same top p: {:6.3} ± {:5.3} %",
            100.0 * self.same_top,
            100.0 * self.same_top_unc
        ));
        s
    }
}

/// One position compared with the base model: the per-token work of a KLD run (two
/// softmaxes over the vocabulary), separate from [`KldAccumulator::add_score`] so that the rows
/// of a logits batch can be scored in parallel.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenScore {
    /// −log p(tok) under the current model, in f32 as llama.cpp.
    pub nll: f32,
    /// −log p(tok) under the base model (from its record).
    pub nll_base: f32,
    /// KL(base ‖ current) over the vocabulary (terms with log p_base > −16).
    pub kld: f64,
    /// Whether both models' most likely token is the same.
    pub same_top: bool,
}

impl TokenScore {
    /// Scores one position: current `logits`, the base model's `record` for the same position
    /// and the target token `tok`. Every operation in llama.cpp's precision.
    pub fn new(logits: &[f32], record: &[u16], tok: usize) -> TokenScore {
        let n_vocab = logits.len();
        let Some(&l0) = logits.first() else {
            return TokenScore::default();
        };
        let mut max_logit = l0;
        let mut imax = 0usize;
        for (i, &l) in logits.iter().enumerate().skip(1) {
            if l > max_logit {
                max_logit = l;
                imax = i;
            }
        }
        let mut sum_exp = 0f64;
        for &l in logits {
            sum_exp += f64::from((l - max_logit).exp());
        }
        let log_sum_exp = sum_exp.ln() as f32;
        let (scale, min_log_prob) = record_scale(record);
        let q = record.get(4..).unwrap_or(&[]);
        let qt = f32::from(q.get(tok).copied().unwrap_or(0));
        let lt = logits.get(tok).copied().unwrap_or(f32::NAN);

        let nll: f32 = max_logit + log_sum_exp - lt;
        let nll_base: f32 = -(scale * qt + min_log_prob);
        let max_lse = max_logit + log_sum_exp;
        let mut sum = 0f64;
        let mut imax_base = usize::MAX;
        let mut p_log_base_max = 0f32;
        for (i, (&qi, &l)) in q.iter().zip(logits).take(n_vocab).enumerate() {
            let p_log_base = scale * f32::from(qi) + min_log_prob;
            if i == 0 || p_log_base > p_log_base_max {
                p_log_base_max = p_log_base;
                imax_base = i;
            }
            if p_log_base > -16.0 {
                let p_base = p_log_base.exp();
                sum += f64::from(p_base * (p_log_base - l + max_lse));
            }
        }
        TokenScore {
            nll,
            nll_base,
            kld: sum,
            same_top: imax == imax_base,
        }
    }
}

/// The header line llama-perplexity prints above the running KLD lines.
pub const CHUNK_HEADER: &str = "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(2.4999), 2);
        assert_eq!(nearest_int(65534.5), 65534);
        assert_eq!(nearest_int(65535.0), 65535);
        assert_eq!(nearest_int(-1.5), -2);
    }

    #[test]
    fn record_sizes() {
        assert_eq!(record_u16s(129_280), 129_284);
        assert_eq!(2 * record_u16s(129_280), 258_568);
        assert_eq!(record_u16s(5), 10);
        assert_eq!(scored_per_chunk(512), 255);
        assert_eq!(scored_per_chunk(128), 63);
    }

    #[test]
    fn record_encodes_and_decodes() {
        let logits = [2.0f32, -1.0, 0.5, 2.0, -30.0];
        let mut rec = vec![7u16; record_u16s(5)];
        let nll = encode_record(&logits, 2, &mut rec);
        let lse = logits
            .iter()
            .map(|&l| f64::from(l - 2.0).exp())
            .sum::<f64>()
            .ln();
        assert!((nll - (2.0 + lse - 0.5)).abs() < 1e-6);
        // min clamps to max − 16; -30 is below it and stored as 0; the pad is 0.
        let (scale, min_lp) = record_scale(&rec);
        assert_eq!(scale, 16.0 / 65535.0);
        assert!((f64::from(min_lp) - (-16.0 - lse)).abs() < 1e-5);
        assert_eq!(rec[4 + 4], 0);
        assert_eq!(rec[9], 0);
        let lp = decode_record(&rec, 5);
        for i in 0..4 {
            let exact = f64::from(logits[i] - 2.0) - lse;
            assert!((f64::from(lp[i]) - exact).abs() <= f64::from(scale), "{i}");
        }
        // Constant logits: scale 0, all q 0.
        let mut rec = vec![7u16; record_u16s(4)];
        encode_record(&[1.0; 4], 0, &mut rec);
        assert_eq!(record_scale(&rec).0, 0.0);
        assert!(rec[4..].iter().all(|&q| q == 0));
    }

    #[test]
    fn statistics_helpers_match_hand_values() {
        // Mean 2.5 of 1..4; SE needs N > 10.
        assert_eq!(mean_and_uncertainty(10.0, 30.0, 4), (2.5, 0.0));
        // 1..=11: mean 6, Σx² = 506, var = 506/11 − 36 = 10, SE = √(10/10) = 1.
        let (m, se) = mean_and_uncertainty(66.0, 506.0, 11);
        assert!((m - 6.0).abs() < 1e-12 && (se - 1.0).abs() < 1e-12);
        assert_eq!(mean_and_uncertainty(0.0, 0.0, 0), (0.0, 0.0));
        // Covariance of x = y = 1..=10: (385/10 − 5.5²)/9 = 8.25/9.
        assert!((covariance(55.0, 55.0, 385.0, 10) - 8.25 / 9.0).abs() < 1e-12);
        assert_eq!(covariance(1.0, 1.0, 1.0, 9), 0.0);
        let v = [1.0f32, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert!((percentile(&v, 0.9) - (0.4 * 4.0 + 0.6 * 10.0)).abs() < 1e-5);
        assert_eq!(percentile(&v, 1.0), 10.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(median(&v), 3.0);
        assert_eq!(median(&[1.0, 2.0, 3.0, 5.0]), 2.5);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn identical_model_has_zero_kld_and_full_agreement() {
        let mut acc = KldAccumulator::new();
        let mut rec = vec![0u16; record_u16s(6)];
        for k in 0..50 {
            let logits: Vec<f32> = (0..6).map(|i| ((i * 7 + k) % 5) as f32 * 0.7).collect();
            encode_record(&logits, k % 6, &mut rec);
            acc.add(&logits, &rec, k % 6);
        }
        let s = acc.stats();
        assert_eq!(s.count, 50);
        assert!(s.mean_kld.abs() < 1e-4, "{}", s.mean_kld);
        assert_eq!(s.same_top, 1.0);
        assert!((s.ppl / s.ppl_base - 1.0).abs() < 1e-3);
        assert!(s.render().contains("Same top p: 100.000 ±"));
    }

    #[test]
    fn kld_of_a_known_pair() {
        // Base p = (0.5, 0.25, 0.25), current q = (0.25, 0.5, 0.25):
        // KLD = 0.5 ln 2 + 0.25 ln 0.5 = 0.25 ln 2.
        let base = [0.5f64.ln() as f32, 0.25f64.ln() as f32, 0.25f64.ln() as f32];
        let cur = [0.25f64.ln() as f32, 0.5f64.ln() as f32, 0.25f64.ln() as f32];
        let mut rec = vec![0u16; record_u16s(3)];
        encode_record(&base, 0, &mut rec);
        let mut acc = KldAccumulator::new();
        acc.add(&cur, &rec, 0);
        let s = acc.stats();
        assert!(
            (s.mean_kld - 0.25 * 2f64.ln()).abs() < 1e-3,
            "{}",
            s.mean_kld
        );
        assert_eq!(s.same_top, 0.0);
        // Δp = q(0) − p(0) = −0.25.
        assert!((s.mean_p_diff + 0.25).abs() < 1e-3);
        assert!((s.ppl - 4.0).abs() < 1e-3 && (s.ppl_base - 2.0).abs() < 1e-2);
    }

    #[test]
    fn base_file_round_trip_and_strict_reader() {
        let dir = std::env::temp_dir().join(format!("r1q-kld-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("base.kld");
        let (n_ctx, n_vocab, n_chunk) = (8usize, 5usize, 2usize);
        let header = BaseHeader {
            n_ctx,
            n_vocab,
            n_chunk,
            tokens: (0..16).map(|i| (i % 5) as u32).collect(),
        };
        let mut w = BaseWriter::create(&path, header.clone()).unwrap();
        let mut recs = Vec::new();
        for k in 0..n_chunk * scored_per_chunk(n_ctx) {
            let logits: Vec<f32> = (0..n_vocab).map(|i| (i * k) as f32 * 0.1).collect();
            let mut rec = vec![0u16; record_u16s(n_vocab)];
            encode_record(&logits, 1, &mut rec);
            w.write_record(&rec).unwrap();
            recs.push(rec);
        }
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, header.file_size());
        let mut r = BaseReader::open(&path).unwrap();
        assert_eq!(r.header(), &header);
        r.check_vocab(5).unwrap();
        assert!(r
            .check_vocab(6)
            .unwrap_err()
            .to_string()
            .contains("inconsistent vocabulary"));
        let mut rec = Vec::new();
        for want in &recs {
            r.next_record(&mut rec).unwrap();
            assert_eq!(&rec, want);
        }
        assert!(r.next_record(&mut rec).is_err());

        let bad = dir.join("bad.kld");
        std::fs::write(&bad, &bytes[..bytes.len() - 1]).unwrap();
        let e = BaseReader::open(&bad).err().unwrap().to_string();
        assert!(e.contains("bad.kld") && e.contains("truncated"), "{e}");
        let mut b2 = bytes.clone();
        b2[0] = b'X';
        std::fs::write(&bad, &b2).unwrap();
        let e = BaseReader::open(&bad).err().unwrap().to_string();
        assert!(e.contains("bad magic"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
