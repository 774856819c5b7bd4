//! Importance-matrix files (REFERENCE §6.3–6.5): the GGUF format `llama-imatrix` writes by default
//! and the legacy `.dat` format, read strictly, written byte-compatibly, converted either way the
//! way `llama-imatrix --in-file` does, and turned into per-column weights exactly as
//! `llama-quantize` does.
//!
//! Each entry keeps the numbers of the format it came from (raw Σx² and per-slice counts for GGUF;
//! the pre-divided values and `ncall` for `.dat`), so reading and writing the same format is
//! lossless; only a conversion between the formats changes numbers (see [`Imatrix::to_legacy`]
//! and [`Imatrix::to_gguf`]).

mod dat;
mod gguf;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::gguf::GgufProblem;

/// The metadata key holding the dataset names (array of strings).
pub const KEY_DATASETS: &str = "imatrix.datasets";
/// The metadata key holding the number of chunks processed (u32).
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
/// The metadata key holding the chunk size in tokens (u32).
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
/// Suffix of the tensor holding an entry's Σx².
pub const SUFFIX_IN_SUM2: &str = ".in_sum2";
/// Suffix of the tensor holding an entry's counts.
pub const SUFFIX_COUNTS: &str = ".counts";

/// Which of the two on-disk formats an [`Imatrix`] (and the meaning of its entries) follows.
///
/// Exists because the two formats store different numbers (raw sums vs. pre-divided means), so
/// the weights must be derived differently (REFERENCE §6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImatrixFormat {
    /// GGUF (`general.type = imatrix`): raw Σx² and per-slice counts.
    Gguf,
    /// Legacy `.dat`: values (Σx²/count)·ncall and one `ncall` per entry.
    Legacy,
}

/// The statistics of one weight tensor.
///
/// Exists so both formats are held without loss: GGUF entries have `ncall == None` and one count
/// per slice (expert or head group); legacy entries have `ncall == Some(n)`, `counts` empty and
/// `in_sum2` holding the stored (already divided, times `ncall`) values.
#[derive(Debug, Clone, PartialEq)]
pub struct ImatrixEntry {
    /// GGUF: raw Σx² per input column, slice-major (`n_slices × ncols`). Legacy: stored values.
    pub in_sum2: Vec<f32>,
    /// GGUF: the raw count of each slice as stored (f32; readers round it). Legacy: empty.
    pub counts: Vec<f32>,
    /// Legacy only: the entry's `ncall`.
    pub ncall: Option<i32>,
}

impl ImatrixEntry {
    /// Number of slices (experts / head groups) the values are split into; 1 for legacy entries,
    /// which do not record it.
    pub fn n_slices(&self) -> usize {
        if self.ncall.is_some() {
            1
        } else {
            self.counts.len().max(1)
        }
    }

    /// The per-column importance weights `llama-quantize` derives (REFERENCE §6.5): GGUF — per
    /// slice Σx²/round(count), a slice with count 0 gives all 1.0; legacy — value/ncall
    /// (`ncall ≤ 0` → value unchanged). Same f32 arithmetic as llama.cpp.
    pub fn weights(&self) -> Vec<f32> {
        if let Some(ncall) = self.ncall {
            return if ncall > 0 {
                let n = ncall as f32;
                self.in_sum2.iter().map(|v| v / n).collect()
            } else {
                self.in_sum2.clone()
            };
        }
        let n = self.counts.len().max(1);
        let ne0 = self.in_sum2.len() / n;
        let mut out = vec![1.0f32; self.in_sum2.len()];
        for (j, c) in self.counts.iter().enumerate() {
            // common_imatrix_load rounds with lround, quantize.cpp turns it back into a float.
            let count = c.round() as i64 as f32;
            if count > 0.0 {
                let lo = j * ne0;
                let hi = lo + ne0;
                if let (Some(dst), Some(src)) = (out.get_mut(lo..hi), self.in_sum2.get(lo..hi)) {
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d = s / count;
                    }
                }
            }
        }
        out
    }
}

/// A whole importance matrix: entries by weight-tensor name plus the run's bookkeeping.
///
/// Exists as the one in-memory form of both file formats so calibration (`verify`), quantization
/// and the CLI share it.
#[derive(Debug, Clone, PartialEq)]
pub struct Imatrix {
    /// Entries keyed by the weight tensor's GGUF name (`blk.3.ffn_down_exps.weight`).
    pub entries: BTreeMap<String, ImatrixEntry>,
    /// Dataset names (GGUF: all; legacy: at most the one in the trailer).
    pub datasets: Vec<String>,
    /// Chunks processed (legacy: the trailer's count, 0 when there is no trailer).
    pub chunk_count: u32,
    /// Tokens per chunk (GGUF only; 0 for legacy files, which do not record it).
    pub chunk_size: u32,
    /// Which format the entries follow.
    pub format: ImatrixFormat,
}

impl Imatrix {
    /// Reads `path`, detecting the format by its magic (`GGUF` → GGUF, anything else → legacy),
    /// and validates everything (REFERENCE §6.3/§6.4); errors name the file and the entry.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ImatrixError> {
        let path = path.as_ref();
        let err = |problem| ImatrixError::new(path, problem);
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f =
                std::fs::File::open(path).map_err(|e| err(ImatrixProblem::io("open", e)))?;
            let mut got = 0;
            while got < 4 {
                match f.read(&mut magic[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(err(ImatrixProblem::io("read", e))),
                }
            }
        }
        if magic == crate::gguf::GGUF_MAGIC {
            gguf::read(path)
        } else {
            let bytes = std::fs::read(path).map_err(|e| err(ImatrixProblem::io("read", e)))?;
            dat::parse(&bytes).map_err(err)
        }
    }

    /// Writes the GGUF imatrix format (atomically, via the GGUF writer), converting legacy entries
    /// first with [`Imatrix::to_gguf`] using `self.chunk_size` (which must then be > 0).
    pub fn save_gguf(&self, path: impl AsRef<Path>) -> Result<(), ImatrixError> {
        let path = path.as_ref();
        match self.format {
            ImatrixFormat::Gguf => gguf::write(self, path),
            ImatrixFormat::Legacy => {
                let conv = self
                    .to_gguf(self.chunk_size)
                    .map_err(|p| ImatrixError::new(path, p))?;
                gguf::write(&conv, path)
            }
        }
    }

    /// Writes the legacy `.dat` format (atomically: `.partial`, fsync, rename), converting GGUF
    /// entries first with [`Imatrix::to_legacy`].
    pub fn save_dat(&self, path: impl AsRef<Path>) -> Result<(), ImatrixError> {
        let path = path.as_ref();
        let bytes = match self.format {
            ImatrixFormat::Legacy => dat::serialize(self),
            ImatrixFormat::Gguf => {
                let conv = self.to_legacy().map_err(|p| ImatrixError::new(path, p))?;
                dat::serialize(&conv)
            }
        };
        write_atomic(path, &bytes).map_err(|p| ImatrixError::new(path, p))
    }

    /// The legacy form `llama-imatrix --output-format dat` writes for the same statistics
    /// (`save_imatrix_legacy`): entries whose counts are all zero are dropped; ncall =
    /// ⌈max(count)/chunk_size⌉; value = (Σx²/count)·ncall in f32, a zero-count slice storing
    /// 1·ncall; the dataset is the last one. Exact (same f32 operations) but lossy: per-slice
    /// counts become one `ncall`. A legacy input is returned unchanged.
    pub fn to_legacy(&self) -> Result<Imatrix, ImatrixProblem> {
        if self.format == ImatrixFormat::Legacy {
            return Ok(self.clone());
        }
        if self.chunk_size == 0 {
            return Err(ImatrixProblem::BadMetadata {
                key: KEY_CHUNK_SIZE.into(),
                detail: "is 0; cannot compute ncall".into(),
            });
        }
        let chunk = i64::from(self.chunk_size);
        let mut entries = BTreeMap::new();
        for (name, e) in &self.entries {
            let counts: Vec<i64> = e.counts.iter().map(|c| c.round() as i64).collect();
            if counts.iter().all(|&c| c == 0) {
                continue;
            }
            let max = counts.iter().copied().max().unwrap_or(0);
            let ncall = i32::try_from((max + (chunk - 1)) / chunk).map_err(|_| {
                ImatrixProblem::BadEntry {
                    entry: name.clone(),
                    detail: format!("count {max} too large for the legacy format"),
                }
            })?;
            let nval = e.in_sum2.len();
            let per = nval / counts.len().max(1);
            let values = e
                .in_sum2
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let mut count = counts.get(i / per.max(1)).copied().unwrap_or(0) as f32;
                    let mut value = v;
                    if count == 0.0 {
                        value = 1.0;
                        count = 1.0;
                    }
                    (value / count) * ncall as f32
                })
                .collect();
            entries.insert(
                name.clone(),
                ImatrixEntry {
                    in_sum2: values,
                    counts: Vec::new(),
                    ncall: Some(ncall),
                },
            );
        }
        Ok(Imatrix {
            entries,
            datasets: self.datasets.last().cloned().into_iter().collect(),
            chunk_count: self.chunk_count,
            chunk_size: 0,
            format: ImatrixFormat::Legacy,
        })
    }

    /// The GGUF form `llama-imatrix --in-file X.dat` produces with chunk size `chunk_size`
    /// (`IMatrixCollector::load_imatrix`): Σx² = value·chunk_size, one count = ncall·chunk_size,
    /// chunk_count = max(count)/chunk_size. Lossy in the other direction too: the per-slice counts
    /// were never stored, so every slice gets the same count. A GGUF input is returned unchanged.
    pub fn to_gguf(&self, chunk_size: u32) -> Result<Imatrix, ImatrixProblem> {
        if self.format == ImatrixFormat::Gguf {
            return Ok(self.clone());
        }
        if chunk_size == 0 {
            return Err(ImatrixProblem::BadMetadata {
                key: KEY_CHUNK_SIZE.into(),
                detail: "must be > 0 to convert a legacy imatrix".into(),
            });
        }
        let cs = chunk_size as i32;
        let mut entries = BTreeMap::new();
        let mut max_count = 0i64;
        for (name, e) in &self.entries {
            let ncall = e.ncall.unwrap_or(0);
            let count = i64::from(ncall) * i64::from(cs);
            max_count = max_count.max(count);
            entries.insert(
                name.clone(),
                ImatrixEntry {
                    in_sum2: e.in_sum2.iter().map(|v| v * cs as f32).collect(),
                    counts: vec![count as f32],
                    ncall: None,
                },
            );
        }
        Ok(Imatrix {
            entries,
            datasets: self.datasets.clone(),
            chunk_count: u32::try_from(max_count / i64::from(cs)).unwrap_or(u32::MAX),
            chunk_size,
            format: ImatrixFormat::Gguf,
        })
    }

    /// An empty GGUF-form imatrix with chunks of `chunk_size` tokens: what [`Imatrix::add`]
    /// accumulates into (llama-imatrix's collector before any `--in-file`).
    pub fn empty(chunk_size: u32) -> Imatrix {
        Imatrix {
            entries: BTreeMap::new(),
            datasets: Vec::new(),
            chunk_count: 0,
            chunk_size,
            format: ImatrixFormat::Gguf,
        }
    }

    /// Adds `other` to this GGUF-form imatrix the way `llama-imatrix --in-file` accumulates
    /// (`IMatrixCollector::load_imatrix`): a legacy `other` is first converted with
    /// [`Imatrix::to_gguf`] at `self.chunk_size` (Σx² = value·chunk_size, count = ncall·chunk_size);
    /// Σx² are added per column in f32, counts (rounded, as the loader does) as integers;
    /// `other`'s datasets are appended; `chunk_count` becomes ⌊largest count / chunk_size⌋.
    ///
    /// Counts of different lengths: a single count meets per-expert counts by being broadcast to
    /// every expert (llama-imatrix does this for a one-count entry already held and for every
    /// legacy input; here also for a one-count GGUF input, which llama-imatrix refuses in that
    /// order only). Any other difference in the number of values or counts is an error naming the
    /// entry: the two files are not of the same model.
    pub fn add(&mut self, other: &Imatrix) -> Result<(), ImatrixProblem> {
        if self.format != ImatrixFormat::Gguf || self.chunk_size == 0 {
            return Err(ImatrixProblem::BadMetadata {
                key: KEY_CHUNK_SIZE.into(),
                detail: "must be > 0 (and the sum a GGUF-form imatrix) to add imatrices".into(),
            });
        }
        let other = other.to_gguf(self.chunk_size)?;
        for (name, e) in &other.entries {
            let bad = |detail: String| ImatrixProblem::BadEntry {
                entry: name.clone(),
                detail,
            };
            let counts: Vec<i64> = e.counts.iter().map(|c| c.round() as i64).collect();
            let Some(have) = self.entries.get_mut(name) else {
                self.entries.insert(
                    name.clone(),
                    ImatrixEntry {
                        in_sum2: e.in_sum2.clone(),
                        counts: counts.iter().map(|&c| c as f32).collect(),
                        ncall: None,
                    },
                );
                continue;
            };
            if have.in_sum2.len() != e.in_sum2.len() {
                return Err(bad(format!(
                    "has {} values, the imatrix it is added to {} (not the same model?)",
                    e.in_sum2.len(),
                    have.in_sum2.len()
                )));
            }
            let mut sum: Vec<i64> = have.counts.iter().map(|c| c.round() as i64).collect();
            match (sum.len(), counts.len()) {
                // Saturating: counts come from files (an absurd f32 count saturates to i64::MAX).
                (a, b) if a == b => sum
                    .iter_mut()
                    .zip(&counts)
                    .for_each(|(s, c)| *s = s.saturating_add(*c)),
                (_, 1) => sum
                    .iter_mut()
                    .for_each(|s| *s = s.saturating_add(counts[0])),
                (1, _) => {
                    let base = sum[0];
                    sum = counts.iter().map(|c| c.saturating_add(base)).collect();
                }
                (a, b) => {
                    return Err(bad(format!(
                        "has {b} counts (experts), the imatrix it is added to {a} (not the same model?)"
                    )))
                }
            }
            for (h, v) in have.in_sum2.iter_mut().zip(&e.in_sum2) {
                *h += v;
            }
            if let Some((index, value)) = first_non_finite(&have.in_sum2) {
                return Err(ImatrixProblem::NonFinite {
                    entry: name.clone(),
                    what: "in_sum2 (after adding)",
                    index,
                    value,
                });
            }
            have.counts = sum.iter().map(|&c| c as f32).collect();
        }
        self.datasets.extend(other.datasets.iter().cloned());
        let max = self
            .entries
            .values()
            .flat_map(|e| e.counts.iter())
            .map(|c| c.round() as i64)
            .max()
            .unwrap_or(0);
        self.chunk_count = u32::try_from(max / i64::from(self.chunk_size)).unwrap_or(u32::MAX);
        Ok(())
    }

    /// The importance weights of tensor `name` as `llama-quantize` derives them (REFERENCE §6.5),
    /// `None` when the file has no entry for it.
    pub fn weights(&self, name: &str) -> Option<Vec<f32>> {
        self.entries.get(name).map(ImatrixEntry::weights)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImatrixProblem> {
    use std::io::Write;
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let res = (|| {
        let mut f = std::fs::File::create(&partial)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&partial, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&partial);
        return Err(ImatrixProblem::io("write", e));
    }
    Ok(())
}

/// An imatrix read or write failure: the file and exactly what was wrong.
///
/// Exists so the CLI can print one line naming the file, the entry and the problem.
#[derive(Debug, Error)]
#[error("imatrix file {}: {problem}", path.display())]
pub struct ImatrixError {
    /// The file read or written.
    pub path: PathBuf,
    /// What was wrong.
    pub problem: ImatrixProblem,
}

impl ImatrixError {
    /// Pairs a problem with its file.
    pub fn new(path: impl Into<PathBuf>, problem: ImatrixProblem) -> Self {
        Self {
            path: path.into(),
            problem,
        }
    }
}

/// The kinds of imatrix problems, one line each.
///
/// Exists so tests and callers match on the kind, not on message text.
#[derive(Debug, Error)]
pub enum ImatrixProblem {
    /// An operating-system call failed.
    #[error("cannot {op}: {err}")]
    Io {
        /// What was being done.
        op: String,
        /// The underlying error.
        err: std::io::Error,
    },
    /// The GGUF container itself is malformed.
    #[error("{0}")]
    Gguf(GgufProblem),
    /// The file ends inside a field.
    #[error("truncated: {what} at byte {offset} needs {need} bytes, but the file ends at byte {file_size}")]
    Truncated {
        /// The field.
        what: String,
        /// Where it starts.
        offset: u64,
        /// Bytes it needs.
        need: u64,
        /// The file's size.
        file_size: u64,
    },
    /// A length or count field is negative, zero where not allowed, or larger than the file.
    #[error("bad length: {what} is {value}")]
    BadLength {
        /// The field.
        what: String,
        /// Its value.
        value: i64,
    },
    /// Bytes left over after the last field.
    #[error("{n} unexpected trailing bytes at byte {offset}")]
    TrailingBytes {
        /// How many.
        n: u64,
        /// Where they start.
        offset: u64,
    },
    /// A value is NaN or infinite.
    #[error("entry '{entry}': non-finite {what} {value} at index {index}")]
    NonFinite {
        /// The entry.
        entry: String,
        /// `in_sum2`, `counts` or `value`.
        what: &'static str,
        /// The first bad index.
        index: usize,
        /// The value.
        value: f32,
    },
    /// Only one tensor of an `.in_sum2`/`.counts` pair is present.
    #[error("entry '{entry}': has {present} but no {missing}")]
    MissingPair {
        /// The entry.
        entry: String,
        /// The tensor that exists.
        present: String,
        /// The tensor that does not.
        missing: String,
    },
    /// A tensor is not F32.
    #[error("tensor '{tensor}' is {ty}, expected f32")]
    NotF32 {
        /// The tensor.
        tensor: String,
        /// Its type name.
        ty: String,
    },
    /// Sizes or shapes of an entry do not fit together, or a name is unusable.
    #[error("entry '{entry}': {detail}")]
    BadEntry {
        /// The entry (or tensor) name.
        entry: String,
        /// What was wrong.
        detail: String,
    },
    /// A metadata key is missing or has the wrong type or value.
    #[error("metadata key '{key}' {detail}")]
    BadMetadata {
        /// The key.
        key: String,
        /// What was wrong.
        detail: String,
    },
}

impl ImatrixProblem {
    /// Wraps an I/O error with what was being done.
    pub fn io(op: impl Into<String>, err: std::io::Error) -> Self {
        Self::Io { op: op.into(), err }
    }
}

/// First non-finite value of `v`, as (index, value).
fn first_non_finite(v: &[f32]) -> Option<(usize, f32)> {
    v.iter()
        .enumerate()
        .find(|(_, x)| !x.is_finite())
        .map(|(i, &x)| (i, x))
}

#[cfg(test)]
mod tests;
