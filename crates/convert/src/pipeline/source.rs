//! Row providers: for each [`Source`] of the plan, something that fills any range of the output
//! tensor's rows (ggml order, `ne[0]` values per row) with f32 values, straight from the mmap.
//!
//! Exists so the executor is one loop over row chunks whatever the transform: plain tensors,
//! stacked experts, the per-head `kv_b_proj` split and the llama rotary permutation all become
//! "rows `start..start+n` of this output tensor".

use std::path::Path;

use formats::checkpoint::{Checkpoint, RowDecoder};

use super::release::release_pages;
use crate::error::{ConvertError, Result};
use crate::plan::{KvBPart, PlannedTensor, Source};

/// One checkpoint tensor opened for row decoding, with its raw bytes (to release their pages once
/// a chunk has been decoded).
#[derive(Debug)]
pub(crate) struct Input<'a> {
    dec: RowDecoder<'a>,
    data: &'a [u8],
    row_bytes: usize,
}

impl<'a> Input<'a> {
    fn open(ckpt: &'a Checkpoint, name: &str) -> Result<Self> {
        let dec = ckpt.row_decoder(name)?;
        let data = ckpt.tensor(name)?.data;
        let row_bytes = data.len().checked_div(dec.rows()).unwrap_or(0);
        Ok(Input {
            dec,
            data,
            row_bytes,
        })
    }

    fn rows(&self) -> usize {
        self.dec.rows()
    }

    fn cols(&self) -> usize {
        self.dec.cols()
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        Ok(self.dec.decode_rows(start, out)?)
    }

    /// Drops the pages of rows `start..start+n` from this process's resident set.
    fn release(&self, start: usize, n: usize) {
        let a = start.saturating_mul(self.row_bytes);
        let b = start.saturating_add(n).saturating_mul(self.row_bytes);
        if let Some(bytes) = self.data.get(a..b.min(self.data.len())) {
            release_pages(bytes);
        }
    }
}

/// The f32 rows of one planned tensor.
#[derive(Debug)]
pub(crate) enum RowSource<'a> {
    /// Row r is checkpoint row r.
    Plain(Input<'a>),
    /// Row r is row `r % per` of expert `r / per`.
    Stack { experts: Vec<Input<'a>>, per: usize },
    /// `attn_k_b`: row (h, c) = column c of the first `nope` rows of head h of `kv_b`.
    KvBK {
        input: Input<'a>,
        nope: usize,
        stride: usize,
        rank: usize,
    },
    /// `attn_v_b`: row (h, v) = row `stride·h + nope + v` of `kv_b`.
    KvBV {
        input: Input<'a>,
        nope: usize,
        v: usize,
        stride: usize,
    },
    /// Row `2i + j` of each head is checkpoint row `j·(d/2) + i` of that head.
    Permute { input: Input<'a>, head_dim: usize },
    /// Values computed by the planner.
    Values(&'a [f32]),
}

fn usz(x: u64) -> usize {
    usize::try_from(x).unwrap_or(usize::MAX)
}

impl<'a> RowSource<'a> {
    /// Opens the checkpoint tensors behind `t` and checks they produce exactly `t.dims`.
    pub(crate) fn open(ckpt: &'a Checkpoint, t: &'a PlannedTensor) -> Result<Self> {
        let (row_len, n_rows) = (usz(t.row_len()), usz(t.n_rows()));
        let bad = |detail: String| ConvertError::Mapping {
            path: ckpt.path().to_path_buf(),
            detail: format!("tensor `{}` {:?}: {detail}", t.name, t.dims),
        };
        let expect_rows = |input: &Input<'_>, name: &str, rows: usize, cols: usize| {
            if input.rows() != rows || input.cols() != cols {
                return Err(bad(format!(
                    "source `{name}` has {}×{} rows×cols, expected {rows}×{cols}",
                    input.rows(),
                    input.cols()
                )));
            }
            Ok(())
        };
        match &t.source {
            Source::Tensor { name } => {
                let input = Input::open(ckpt, name)?;
                expect_rows(&input, name, n_rows, row_len)?;
                Ok(RowSource::Plain(input))
            }
            Source::Stack { names } => {
                let (n, outer) = match t.dims.as_slice() {
                    [_, _, n] => (names.len(), usz(*n)),
                    _ => return Err(bad("stacked experts need a 3-D shape".into())),
                };
                if n != outer || n == 0 {
                    return Err(bad(format!("{n} source tensors for {outer} experts")));
                }
                let per = n_rows / n;
                let experts = names
                    .iter()
                    .map(|name| {
                        let input = Input::open(ckpt, name)?;
                        expect_rows(&input, name, per, row_len)?;
                        Ok(input)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(RowSource::Stack { experts, per })
            }
            Source::KvB {
                name,
                part,
                n_head,
                qk_nope,
                v_head,
            } => {
                let input = Input::open(ckpt, name)?;
                let (h, nope, v) = (usz(*n_head), usz(*qk_nope), usz(*v_head));
                let stride = nope.saturating_add(v);
                let rank = input.cols();
                expect_rows(&input, name, h.saturating_mul(stride), rank)?;
                let want: [usize; 3] = match part {
                    KvBPart::K => [nope, rank, h],
                    KvBPart::V => [rank, v, h],
                };
                let dims: Vec<usize> = t.dims.iter().map(|&d| usz(d)).collect();
                if dims != want {
                    return Err(bad(format!(
                        "kv_b split of `{name}` (heads {h}, nope {nope}, v {v}, rank {rank}) \
                         has ne {want:?}"
                    )));
                }
                Ok(match part {
                    KvBPart::K => RowSource::KvBK {
                        input,
                        nope,
                        stride,
                        rank,
                    },
                    KvBPart::V => RowSource::KvBV {
                        input,
                        nope,
                        v,
                        stride,
                    },
                })
            }
            Source::PermuteRope { name, n_head } => {
                let input = Input::open(ckpt, name)?;
                expect_rows(&input, name, n_rows, row_len)?;
                let heads = usz(*n_head);
                let head_dim = n_rows.checked_div(heads).unwrap_or(0);
                if head_dim == 0 || head_dim * heads != n_rows || head_dim % 2 != 0 {
                    return Err(bad(format!(
                        "{n_rows} rows do not split into {heads} heads of an even size"
                    )));
                }
                Ok(RowSource::Permute { input, head_dim })
            }
            Source::Values(v) => {
                if Some(v.len()) != n_rows.checked_mul(row_len) {
                    return Err(bad(format!("{} computed values", v.len())));
                }
                Ok(RowSource::Values(v))
            }
        }
    }

    /// Rows that belong together (a chunk should not split them): a head of `attn_k_b`, whose
    /// rows all come from one transposed block.
    pub(crate) fn granule(&self) -> usize {
        match self {
            RowSource::KvBK { rank, .. } => *rank,
            _ => 1,
        }
    }

    /// Fills `out` (a whole number of rows of `row_len`) with rows `start..` of the output.
    pub(crate) fn fill(&self, start: usize, row_len: usize, out: &mut [f32]) -> Result<()> {
        let n = out.len().checked_div(row_len).unwrap_or(0);
        match self {
            RowSource::Plain(input) => input.decode(start, out),
            RowSource::Stack { experts, per } => {
                for_segments(start, n, *per, |seg, first, len, at| {
                    let input = experts.get(seg).ok_or_else(|| out_of_range(start, n))?;
                    let dst = out
                        .get_mut(at * row_len..(at + len) * row_len)
                        .ok_or_else(|| out_of_range(start, n))?;
                    input.decode(first, dst)
                })
            }
            RowSource::KvBV {
                input,
                nope,
                v,
                stride,
            } => for_segments(start, n, *v, |h, first, len, at| {
                let dst = out
                    .get_mut(at * row_len..(at + len) * row_len)
                    .ok_or_else(|| out_of_range(start, n))?;
                input.decode(h * stride + nope + first, dst)
            }),
            RowSource::KvBK {
                input,
                nope,
                stride,
                rank,
            } => {
                // One head's k rows (nope × rank), transposed into rank rows of nope.
                let mut block = vec![0f32; nope * rank];
                for_segments(start, n, *rank, |h, first, len, at| {
                    input.decode(h * stride, &mut block)?;
                    for c in first..first + len {
                        let row = at + c - first;
                        let dst = out
                            .get_mut(row * nope..(row + 1) * nope)
                            .ok_or_else(|| out_of_range(start, n))?;
                        for (d, o) in dst.iter_mut().enumerate() {
                            *o = block.get(d * rank + c).copied().unwrap_or(0.0);
                        }
                    }
                    Ok(())
                })
            }
            RowSource::Permute { input, head_dim } => {
                let half = head_dim / 2;
                for (k, dst) in out.chunks_exact_mut(row_len).enumerate() {
                    let o = start + k;
                    let (head, within) = (o / head_dim, o % head_dim);
                    let (i, j) = (within / 2, within % 2);
                    input.decode(head * head_dim + j * half + i, dst)?;
                }
                Ok(())
            }
            RowSource::Values(v) => {
                let src = v
                    .get(start * row_len..start * row_len + out.len())
                    .ok_or_else(|| out_of_range(start, n))?;
                out.copy_from_slice(src);
                Ok(())
            }
        }
    }

    /// Releases the mmap pages read for rows `start..start+n` (they are in the page cache; this
    /// only keeps them out of our resident set, so RSS stays bounded by the chunks in flight).
    pub(crate) fn release(&self, start: usize, n: usize) {
        match self {
            RowSource::Plain(input) => input.release(start, n),
            RowSource::Stack { experts, per } => {
                let _ = for_segments(start, n, *per, |e, first, len, _| {
                    if let Some(input) = experts.get(e) {
                        input.release(first, len);
                    }
                    Ok(())
                });
            }
            RowSource::KvBK {
                input,
                nope,
                stride,
                rank,
            } => {
                let (h0, h1) = (start / rank, (start + n).div_ceil(*rank));
                for h in h0..h1 {
                    input.release(h * stride, *nope);
                }
            }
            RowSource::KvBV {
                input,
                nope,
                v,
                stride,
            } => {
                let _ = for_segments(start, n, *v, |h, first, len, _| {
                    input.release(h * stride + nope + first, len);
                    Ok(())
                });
            }
            RowSource::Permute { input, head_dim } => {
                // A chunk's rows come from the same heads; release those heads whole.
                let (h0, h1) = (start / head_dim, (start + n).div_ceil(*head_dim));
                input.release(h0 * head_dim, (h1 - h0) * head_dim);
            }
            RowSource::Values(_) => {}
        }
    }
}

/// Splits output rows `start..start+n` into runs inside one group of `per` rows: calls
/// `f(group, first row within the group, run length, offset of the run in the chunk)`.
fn for_segments(
    start: usize,
    n: usize,
    per: usize,
    mut f: impl FnMut(usize, usize, usize, usize) -> Result<()>,
) -> Result<()> {
    if per == 0 {
        return if n == 0 {
            Ok(())
        } else {
            Err(out_of_range(start, n))
        };
    }
    let mut row = start;
    while row < start + n {
        let (group, first) = (row / per, row % per);
        let len = (per - first).min(start + n - row);
        f(group, first, len, row - start)?;
        row += len;
    }
    Ok(())
}

fn out_of_range(start: usize, n: usize) -> ConvertError {
    ConvertError::Mapping {
        path: Path::new("<plan>").to_path_buf(),
        detail: format!("rows {start}..{} requested outside the tensor", start + n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_the_range_in_order() {
        let mut got = Vec::new();
        for_segments(5, 9, 4, |g, f, l, at| {
            got.push((g, f, l, at));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, [(1, 1, 3, 0), (2, 0, 4, 3), (3, 0, 2, 7)]);
        assert!(for_segments(0, 1, 0, |_, _, _, _| Ok(())).is_err());
    }
}
