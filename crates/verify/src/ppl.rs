//! Perplexity with llama-perplexity's methodology (REFERENCE §7.1), optionally writing or comparing
//! against a KL-divergence base file ([`crate::kld`]).
//!
//! Why exact: published PPL/KLD tables come from llama-perplexity; a number is only comparable
//! when the same tokens are scored the same way: the text tokenized once, cut into ⌊N/n_ctx⌋
//! chunks, each chunk's first token overwritten by BOS when the vocabulary adds BOS, and only
//! positions n_ctx/2+1 … n_ctx−1 of each chunk scored (logits at p score token p+1).
//!
//! Not for: printing (the CLI formats the events [`run`] reports) or tokenizing
//! ([`crate::tokenize`]).

use std::ops::Range;

use crate::engine::{Engine, EvalOptions, LogitPositions, Progress};
use crate::error::VerifyError;
use crate::kld::{
    self, BaseFileError, BaseReader, BaseWriter, KldAccumulator, KldStats, TokenScore,
};
use crate::tensor::Mat;

use rayon::prelude::*;

/// Rows scored in parallel at a time (their base-file records are held meanwhile: 64 × 2 bytes
/// × n_vocab, 19 MB for a 152k vocabulary).
const SCORE_ROWS: usize = 64;

/// Why a perplexity run failed.
#[derive(Debug, thiserror::Error)]
pub enum PplError {
    /// The model could not be evaluated.
    #[error("{0}")]
    Engine(#[from] VerifyError),
    /// The base file could not be read or written.
    #[error("{0}")]
    BaseFile(#[from] BaseFileError),
    /// The text is too short for two chunks.
    #[error("the text tokenizes to only {tokens} tokens; perplexity with a context of {n_ctx} needs at least {need}")]
    TooFewTokens {
        /// Tokens the text gave.
        tokens: usize,
        /// The context (chunk) length.
        n_ctx: usize,
        /// 2 · n_ctx.
        need: usize,
    },
    /// Inconsistent arguments or inputs (the message says which).
    #[error("{0}")]
    Invalid(String),
}

/// How the tokens are cut into chunks and which positions are scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlan {
    /// Chunk length.
    pub n_ctx: usize,
    /// Number of chunks evaluated.
    pub n_chunk: usize,
    /// The first `n_chunk · n_ctx` tokens of the text (original ids, no BOS substitution).
    pub tokens: Vec<u32>,
    /// The BOS id that overwrites each chunk's first token, when the vocabulary adds BOS.
    pub bos: Option<u32>,
}

impl ChunkPlan {
    /// Plans chunks over `tokens` (the whole text tokenized once, with BOS prepended iff
    /// add_bos): n_chunk = ⌊N/n_ctx⌋, or `chunks` if smaller. Needs N ≥ 2·n_ctx like
    /// llama-perplexity, and n_ctx ≥ 4 so at least one position is scored.
    pub fn new(
        tokens: &[u32],
        n_ctx: usize,
        chunks: Option<usize>,
        bos: Option<u32>,
    ) -> Result<ChunkPlan, PplError> {
        if n_ctx < 4 {
            return Err(PplError::Invalid(format!(
                "context {n_ctx} is too small: at least 4 tokens per chunk are needed"
            )));
        }
        if tokens.len() < 2 * n_ctx {
            return Err(PplError::TooFewTokens {
                tokens: tokens.len(),
                n_ctx,
                need: 2 * n_ctx,
            });
        }
        let max = tokens.len() / n_ctx;
        let n_chunk = match chunks {
            Some(0) => return Err(PplError::Invalid("--chunks must be at least 1".into())),
            Some(c) => c.min(max),
            None => max,
        };
        Ok(ChunkPlan {
            n_ctx,
            n_chunk,
            tokens: tokens[..n_chunk * n_ctx].to_vec(),
            bos,
        })
    }

    /// A plan over a base file's tokens (KLD runs use the file's tokens and n_ctx, not the
    /// text).
    pub fn from_base(header: &kld::BaseHeader, bos: Option<u32>) -> Result<ChunkPlan, PplError> {
        if header.n_ctx < 4 {
            return Err(PplError::Invalid(format!(
                "base file context {} is too small",
                header.n_ctx
            )));
        }
        Ok(ChunkPlan {
            n_ctx: header.n_ctx,
            n_chunk: header.n_chunk,
            tokens: header.tokens.clone(),
            bos,
        })
    }

    /// First position whose logits are requested: n_ctx/2.
    pub fn first(&self) -> usize {
        self.n_ctx / 2
    }

    /// Positions whose logits are used: first … n_ctx−2 (each scores the next token).
    pub fn logit_range(&self) -> Range<usize> {
        self.first()..self.n_ctx - 1
    }

    /// Scored tokens per chunk: n_ctx − 1 − n_ctx/2.
    pub fn scored_per_chunk(&self) -> usize {
        kld::scored_per_chunk(self.n_ctx)
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

    /// The token that the logits at (`chunk`, `pos`) score: the original token at pos + 1.
    pub fn target(&self, chunk: usize, pos: usize) -> Option<u32> {
        self.tokens.get(chunk * self.n_ctx + pos + 1).copied()
    }
}

/// −log p(tok) as llama-perplexity computes it in plain mode: f32 logits, max subtracted, the
/// exponentials summed in f64.
pub fn token_nll(logits: &[f32], tok: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum_exp = 0f64;
    for &l in logits {
        sum_exp += f64::from((l - max).exp());
    }
    let lt = logits.get(tok).copied().unwrap_or(f32::NAN);
    -(f64::from(lt - max) - sum_exp.ln())
}

/// Σnll, Σnll² and the count, with llama-perplexity's estimate and its delta-method error.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PplAccumulator {
    /// Σ nll.
    pub nll: f64,
    /// Σ nll².
    pub nll2: f64,
    /// Tokens scored.
    pub count: usize,
}

impl PplAccumulator {
    /// Adds one token's nll.
    pub fn add(&mut self, nll: f64) {
        self.nll += nll;
        self.nll2 += nll * nll;
        self.count += 1;
    }

    /// exp(mean nll) so far (the running `[k]X,` value).
    pub fn ppl(&self) -> f64 {
        (self.nll / self.count as f64).exp()
    }

    /// (PPL, PPL·√((⟨nll²⟩ − ⟨nll⟩²)/(N − 1))); `None` when the variance is not positive (llama
    /// prints an error then instead of the final line).
    pub fn estimate(&self) -> Option<(f64, f64)> {
        let n = self.count as f64;
        let mean = self.nll / n;
        let var = self.nll2 / n - mean * mean;
        let ppl = mean.exp();
        (var > 0.0 && self.count > 1).then(|| (ppl, (var / (n - 1.0)).sqrt() * ppl))
    }
}

/// What a run does besides computing perplexity.
pub enum Mode<'a> {
    /// Plain perplexity.
    Plain,
    /// Also write every scored position's log-probabilities to a base file.
    SaveBase(&'a mut BaseWriter),
    /// Compare against a base file's log-probabilities (KL divergence).
    Compare(&'a mut BaseReader),
}

/// Reported to the caller while a run progresses.
pub enum Event<'a> {
    /// The engine is at a layer.
    Layer(&'a Progress),
    /// Chunk `chunk` (1-based) is scored: the running PPL, and in compare mode the running KLD
    /// sums.
    Chunk {
        /// 1-based chunk number.
        chunk: usize,
        /// The perplexity accumulator so far.
        ppl: &'a PplAccumulator,
        /// The KLD accumulator so far (compare mode).
        kld: Option<&'a KldAccumulator>,
    },
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Perplexity sums.
    pub ppl: PplAccumulator,
    /// KLD statistics (compare mode).
    pub kld: Option<KldStats>,
}

/// Evaluates the plan's chunks layer-major and scores them; chunk events arrive in chunk order.
/// In compare mode nll is computed as llama.cpp's KLD mode does (f32), otherwise as its
/// perplexity mode.
pub fn run(
    engine: &Engine<'_>,
    plan: &ChunkPlan,
    mut mode: Mode<'_>,
    max_memory: Option<u64>,
    on_event: &mut (dyn FnMut(Event<'_>) + Send),
) -> Result<Outcome, PplError> {
    let n_vocab = engine.config().n_vocab;
    match &mode {
        Mode::Compare(r) => {
            r.check_vocab(n_vocab)?;
            let h = r.header();
            if h.n_ctx != plan.n_ctx || h.n_chunk != plan.n_chunk || h.tokens != plan.tokens {
                return Err(PplError::Invalid(format!(
                    "{}: the base file's tokens (n_ctx {}, {} chunks) are not this run's (n_ctx {}, {} chunks)",
                    r.path().display(),
                    h.n_ctx,
                    h.n_chunk,
                    plan.n_ctx,
                    plan.n_chunk
                )));
            }
        }
        Mode::SaveBase(w) => {
            let h = w.header();
            if h.n_vocab != n_vocab || h.tokens != plan.tokens || h.n_ctx != plan.n_ctx {
                return Err(PplError::Invalid(
                    "base file header does not match the run".into(),
                ));
            }
        }
        Mode::Plain => {}
    }
    let seqs = plan.sequences();
    let per_chunk = plan.scored_per_chunk();
    let last_pos = plan.n_ctx - 2;
    let mut ppl = PplAccumulator::default();
    let mut kld_acc = matches!(mode, Mode::Compare(_)).then(KldAccumulator::new);
    let mut failure: Option<PplError> = None;
    let events = std::sync::Mutex::new(on_event);
    let progress = |p: &Progress| {
        if let Ok(mut f) = events.lock() {
            f(Event::Layer(p));
        }
    };
    let opts = EvalOptions {
        logit_positions: LogitPositions::Range(plan.logit_range()),
        max_memory,
        progress: Some(&progress),
        ..EvalOptions::default()
    };
    let mut scored_in_chunk = 0usize;
    // Plain runs hold no records.
    let rec_len = match mode {
        Mode::Plain => 0,
        _ => kld::record_u16s(n_vocab),
    };
    let mut recs: Vec<Vec<u16>> = Vec::new();
    let mut targets: Vec<(usize, usize, usize)> = Vec::new(); // (row, pos, token)
    let mut scores: Vec<(f64, Option<TokenScore>)> = Vec::new();
    let mut on_batch =
        |rows: &[(usize, usize)], logits: &Mat| {
            targets.clear();
            targets.extend(rows.iter().enumerate().filter_map(|(i, &(si, pos))| {
                plan.target(si, pos).map(|tok| (i, pos, tok as usize))
            }));
            let si_of = |row: usize| rows.get(row).map_or(0, |r| r.0);
            for part in targets.chunks(SCORE_ROWS) {
                if failure.is_some() {
                    return;
                }
                // The per-token softmaxes in parallel; the file I/O and the sums in order below.
                if recs.len() < part.len() {
                    recs.resize_with(part.len(), || vec![0u16; rec_len]);
                }
                let recs = &mut recs[..part.len()];
                if let Mode::Compare(r) = &mut mode {
                    for rec in recs.iter_mut() {
                        if let Err(e) = r.next_record(rec) {
                            failure = Some(e.into());
                            return;
                        }
                    }
                }
                let plain = matches!(mode, Mode::Plain);
                let save = matches!(mode, Mode::SaveBase(_));
                part.par_iter()
                    .zip(recs.par_iter_mut())
                    .map(|(&(row, _, tok), rec)| {
                        let logits = logits.row(row);
                        if plain {
                            (token_nll(logits, tok), None)
                        } else if save {
                            (kld::encode_record(logits, tok, rec), None)
                        } else {
                            // llama.cpp's KLD mode accumulates nll in f32 per token.
                            let t = TokenScore::new(logits, rec, tok);
                            (f64::from(t.nll), Some(t))
                        }
                    })
                    .collect_into_vec(&mut scores);
                if let Mode::SaveBase(w) = &mut mode {
                    for rec in recs.iter() {
                        if let Err(e) = w.write_record(rec) {
                            failure = Some(e.into());
                            return;
                        }
                    }
                }
                for (&(row, pos, _), (nll, score)) in part.iter().zip(&scores) {
                    if let (Some(acc), Some(t)) = (kld_acc.as_mut(), score) {
                        acc.add_score(t);
                    }
                    ppl.add(*nll);
                    scored_in_chunk += 1;
                    if pos == last_pos || scored_in_chunk == per_chunk {
                        scored_in_chunk = 0;
                        if let Ok(mut f) = events.lock() {
                            f(Event::Chunk {
                                chunk: si_of(row) + 1,
                                ppl: &ppl,
                                kld: kld_acc.as_ref(),
                            });
                        }
                    }
                }
            }
        };
    engine.evaluate_batches(&seqs, &opts, &mut on_batch)?;
    if let Some(e) = failure {
        return Err(e);
    }
    if ppl.count != plan.n_chunk * per_chunk {
        return Err(PplError::Invalid(format!(
            "the engine delivered {} scored positions, {} expected",
            ppl.count,
            plan.n_chunk * per_chunk
        )));
    }
    Ok(Outcome {
        ppl,
        kld: kld_acc.map(|a| a.stats()),
    })
}

/// llama-perplexity's running line for chunk `k`: `[k]X,` with X = running PPL to 4 decimals.
pub fn chunk_text(chunk: usize, ppl: &PplAccumulator) -> String {
    format!("[{chunk}]{:.4},", ppl.ppl())
}

/// llama-perplexity's final line, or its error line when the variance is not positive.
pub fn final_text(ppl: &PplAccumulator) -> String {
    match ppl.estimate() {
        Some((p, e)) => format!("Final estimate: PPL = {p:.4} +/- {e:.5}"),
        None => "Unexpected negative standard deviation of log(prob)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_cuts_chunks_and_substitutes_bos() {
        let tokens: Vec<u32> = (10..60).collect();
        let p = ChunkPlan::new(&tokens, 16, None, Some(1)).unwrap();
        assert_eq!(p.n_chunk, 3);
        assert_eq!(p.tokens.len(), 48);
        let s = p.sequences();
        assert_eq!(s[1][0], 1);
        assert_eq!(s[1][1], 27);
        assert_eq!(p.tokens[16], 26, "original token kept");
        assert_eq!(p.logit_range(), 8..15);
        assert_eq!(p.scored_per_chunk(), 7);
        assert_eq!(p.target(1, 8), Some(10 + 16 + 9));
        let p = ChunkPlan::new(&tokens, 16, Some(2), None).unwrap();
        assert_eq!((p.n_chunk, p.sequences()[1][0]), (2, 26));
        let e = ChunkPlan::new(&tokens, 32, None, None).unwrap_err();
        assert!(
            e.to_string().contains("only 50 tokens") && e.to_string().contains("64"),
            "{e}"
        );
    }

    #[test]
    fn nll_and_estimate() {
        let logits = [0.0f32, 0.0, 0.0, 0.0];
        assert!((token_nll(&logits, 2) - 4f64.ln()).abs() < 1e-12);
        let mut a = PplAccumulator::default();
        for v in [1.0, 2.0, 3.0] {
            a.add(v);
        }
        let (p, e) = a.estimate().unwrap();
        assert!((p - 2f64.exp()).abs() < 1e-12);
        // var = 14/3 − 4 = 2/3; SE = √((2/3)/2) = √(1/3).
        assert!((e - p * (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(chunk_text(3, &a), format!("[3]{:.4},", 2f64.exp()));
        assert!(final_text(&a).starts_with("Final estimate: PPL = 7.3891 +/- "));
    }
}
