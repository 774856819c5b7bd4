//! Pieces shared by the legacy 32-element codecs Q4_0, Q4_1, Q5_0 and Q5_1 (REFERENCE §2.3,
//! §2.6): their `*_impl` quantizers (row σ², weights, and the scale searches run one block per
//! AVX2 lane, 8 or 16 blocks at a time, through [`crate::lanes`]) and the nibble / 5th-bit
//! packing.
//!
//! Why a file of its own: the four types differ only in level range and offset, and keeping the
//! common steps here lets each type's file read like its C counterpart.

use crate::lanes::{make_qkx_groups, make_qx_groups, QkxParams};
use crate::search::{make_qkx3_quants, make_qx_quants};

/// Elements per legacy block (`QK4_0` = `QK4_1` = `QK5_0` = `QK5_1`).
pub(crate) const QK: usize = 32;

/// The 32 values of the block that starts at `x[0]` (callers pass whole blocks).
#[inline]
pub(crate) fn block32(x: &[f32]) -> &[f32; QK] {
    x[..QK].try_into().expect("a whole block")
}

/// σ² of a whole row as the `*_impl` quantizers compute it: a running f32 Σx² in index order,
/// divided by the row length (converted to f32, as C converts the `int64_t`).
#[inline]
pub(crate) fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

/// The `*_impl` weights of one block: w_j = qw_j·√(σ² + x_j²).
#[inline]
pub(crate) fn impl_weights(xb: &[f32], qw: &[f32], sigma2: f32) -> [f32; QK] {
    let mut w = [0f32; QK];
    for ((wj, &x), &q) in w.iter_mut().zip(xb).zip(qw) {
        *wj = q * (sigma2 + x * x).sqrt();
    }
    w
}

/// Most blocks the lane-parallel searches ([`crate::lanes`]) take at once: 2 vectors of 8
/// lanes, one block per lane.
const LANE_BLOCKS: usize = 16;

/// Quantizes one row with the `*_impl` weights, a piece of blocks at a time: 16 while there are
/// that many, then 8 if there are, then the rest, which is what the lane-parallel searches
/// take (16 or 8 blocks; fewer go one at a time). `piece(x, w, out)` gets the piece's values,
/// their weights and its bytes.
#[inline]
fn weighted_row(
    x: &[f32],
    qw: &[f32],
    out: &mut [u8],
    block_bytes: usize,
    mut piece: impl FnMut(&[f32], &[f32], &mut [u8]),
) {
    let sigma2 = row_sigma2(x);
    let mut w = [0f32; LANE_BLOCKS * QK];
    let (mut at, blocks) = (0, x.len() / QK);
    while at < blocks {
        let k = match blocks - at {
            r if r >= 16 => 16,
            r if r >= 8 => 8,
            r => r,
        };
        let (xc, qc) = (&x[at * QK..(at + k) * QK], &qw[at * QK..(at + k) * QK]);
        for ((wb, xb), qb) in w
            .chunks_exact_mut(QK)
            .zip(xc.chunks_exact(QK))
            .zip(qc.chunks_exact(QK))
        {
            wb.copy_from_slice(&impl_weights(xb, qb, sigma2));
        }
        piece(
            xc,
            &w[..k * QK],
            &mut out[at * block_bytes..(at + k) * block_bytes],
        );
        at += k;
    }
}

/// Block `b` of a piece's values, weights or levels.
#[inline]
fn nth<T>(v: &[T], b: usize) -> &[T; QK] {
    v[b * QK..(b + 1) * QK].try_into().expect("a whole block")
}

/// `quantize_row_q4_0_impl` / `quantize_row_q5_0_impl`: `make_qx_quants(32, nmax, x, L, 1, w)`
/// per block (one block per AVX2 lane, 8 or 16 at a time), then `block(d, L)`.
pub(crate) fn quantize_row_qx<B: crate::block::Block>(
    x: &[f32],
    qw: &[f32],
    out: &mut [u8],
    nmax: i32,
    block: impl Fn(f32, &[i8; QK]) -> B,
) {
    weighted_row(x, qw, out, B::BYTES, |xc, w, oc| {
        let (mut l, mut d) = ([0i8; LANE_BLOCKS * QK], [0f32; LANE_BLOCKS]);
        match d.len().min(xc.len() / QK) {
            16 => make_qx_groups::<QK, 2>(nmax, xc, w, &mut l, &mut d),
            8 => make_qx_groups::<QK, 1>(nmax, xc, w, &mut l[..8 * QK], &mut d[..8]),
            k => {
                for b in 0..k {
                    let lb = &mut l[b * QK..(b + 1) * QK];
                    d[b] = make_qx_quants(nmax, nth(xc, b), lb, 1, Some(nth(w, b)));
                }
            }
        }
        for (b, ob) in oc.chunks_exact_mut(B::BYTES).enumerate() {
            block(d[b], nth(&l, b)).write(ob);
        }
    });
}

/// `quantize_row_q4_1_impl` / `quantize_row_q5_1_impl`: `make_qkx3_quants(32, nmax, x, w, L,
/// &the_min, Laux, −0.9, 0.05, 36, false)` per block (one block per AVX2 lane, 8 or 16 at a
/// time), then `block(d, the_min, L)`.
pub(crate) fn quantize_row_qkx<B: crate::block::Block>(
    x: &[f32],
    qw: &[f32],
    out: &mut [u8],
    nmax: i32,
    block: impl Fn(f32, f32, &[u8; QK]) -> B,
) {
    let p = QkxParams {
        nmax,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    };
    weighted_row(x, qw, out, B::BYTES, |xc, w, oc| {
        let mut l = [0u8; LANE_BLOCKS * QK];
        let (mut d, mut m) = ([0f32; LANE_BLOCKS], [0f32; LANE_BLOCKS]);
        match d.len().min(xc.len() / QK) {
            16 => make_qkx_groups::<QK, 2>(p, xc, w, &mut l, &mut d, &mut m),
            8 => make_qkx_groups::<QK, 1>(p, xc, w, &mut l[..8 * QK], &mut d[..8], &mut m[..8]),
            k => {
                let mut aux = [0u8; QK];
                for b in 0..k {
                    let lb = &mut l[b * QK..(b + 1) * QK];
                    let (xb, wb) = (nth(xc, b), Some(&nth(w, b)[..]));
                    (d[b], m[b]) = make_qkx3_quants(
                        nmax, xb, wb, lb, &mut aux, p.rmin, p.rdelta, p.nstep, p.use_mad,
                    );
                }
            }
        }
        for (b, ob) in oc.chunks_exact_mut(B::BYTES).enumerate() {
            block(d[b], m[b], nth(&l, b)).write(ob);
        }
    });
}

/// Packs 32 levels (< 16 in their low nibble) as ggml does: byte j = L[j] | L[j+16] << 4.
#[inline]
pub(crate) fn pack_nibbles(levels: &[u8; QK]) -> [u8; QK / 2] {
    let mut qs = [0u8; QK / 2];
    for (j, q) in qs.iter_mut().enumerate() {
        *q = (levels[j] & 0x0F) | (levels[j + 16] << 4);
    }
    qs
}

/// The element of largest magnitude with its sign, as C's `if (amax < fabsf(v)) { amax =
/// fabsf(v); max = v; }` loop finds it (the first such element; 0 if every |x| is 0 or NaN).
///
/// Exists because C's loop is a 32-long chain of dependent compares: the maximum magnitude is
/// the same whatever order it is taken in (NaN ignored as C ignores it; equal magnitudes have
/// equal bits), so it is reduced in 8 independent lanes, and the first element reaching it is
/// the one C's last update stored, found without branches as the lowest bit of a mask of 32
/// equality tests at a time.
#[inline]
pub(crate) fn signed_absmax(x: &[f32; QK]) -> f32 {
    let mut acc = [0f32; 8];
    for c in x.chunks_exact(8) {
        for (a, &v) in acc.iter_mut().zip(c) {
            let av = v.abs();
            // `a < av ? av : a`: ignores NaN like C's comparison.
            *a = if *a < av { av } else { *a };
        }
    }
    let amax = acc.into_iter().fold(0f32, |m, a| if m < a { a } else { m });
    let mut hits = 0u32;
    for (i, &v) in x.iter().enumerate() {
        hits |= u32::from(v.abs() == amax) << i;
    }
    if amax > 0.0 {
        x[hits.trailing_zeros() as usize % QK]
    } else {
        0.0
    }
}

/// The 5th bits of 32 levels as `qh`: bit j = bit 4 of L[j], bit j+16 = bit 4 of L[j+16].
#[inline]
pub(crate) fn pack_high_bits(levels: &[u8; QK]) -> u32 {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        qh |= u32::from((levels[j] & 0x10) >> 4) << j;
        qh |= u32::from((levels[j + 16] & 0x10) >> 4) << (j + QK / 2);
    }
    qh
}

/// The 32 levels of a block back from `qs` (and `qh` for the 5-bit types; 0 for 4-bit ones).
#[inline]
pub(crate) fn unpack(qs: &[u8; QK / 2], qh: u32) -> [u8; QK] {
    let mut l = [0u8; QK];
    for j in 0..QK / 2 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        l[j] = (qs[j] & 0x0F) | xh0;
        l[j + 16] = (qs[j] >> 4) | xh1;
    }
    l
}

/// Reads `d` (and the rest) little-endian from a block's bytes; a shorter slice (never passed by
/// `rows.rs`, which checks sizes) reads as zeros instead of panicking.
#[inline]
pub(crate) fn le_u16(bytes: &[u8], at: usize) -> u16 {
    match bytes.get(at..at + 2) {
        Some(&[a, b]) => u16::from_le_bytes([a, b]),
        _ => 0,
    }
}

/// [`le_u16`] for the 4-byte `qh` field.
#[inline]
pub(crate) fn le_u32(bytes: &[u8], at: usize) -> u32 {
    match bytes.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// Copies `N` bytes starting at `at` (zeros if `bytes` is too short).
#[inline]
pub(crate) fn le_bytes<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

/// Writes `src` into `out` at `at` (nothing if `out` is too short).
#[inline]
pub(crate) fn put(out: &mut [u8], at: usize, src: &[u8]) {
    if let Some(dst) = out.get_mut(at..at + src.len()) {
        dst.copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_absmax_matches_the_c_loop() {
        let c_loop = |x: &[f32]| {
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in x {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            max
        };
        let rows: [&[f32]; 8] = [
            &[0.0; 32],
            &[-0.0; 32],
            &[1.0, -1.0, 2.0, -2.0, 0.5, 2.0, -2.0, 0.0],
            &[-3.0, 3.0, 1.0, f32::NAN, -3.0],
            &[f32::NAN, 0.0, -0.0],
            &[f32::NAN, -1e-30, 1e-30],
            &[0.1, 0.2, -0.7, 0.7, 0.69, -0.1, 0.3, 0.2, 0.1, -0.7, 0.7],
            &[],
        ];
        for x in rows {
            // zeros after the row change nothing C's loop finds
            let mut block = [0f32; QK];
            block[..x.len()].copy_from_slice(x);
            assert_eq!(
                signed_absmax(&block).to_bits(),
                c_loop(x).to_bits(),
                "{x:?}"
            );
        }
        let long: [f32; QK] = std::array::from_fn(|i| ((i * 7919 % 31) as f32 - 15.0) * 0.1);
        assert_eq!(signed_absmax(&long).to_bits(), c_loop(&long).to_bits());
    }

    /// Rows of `blocks` blocks from [`crate::lanes::tests::cases`] (zeros, constants, ties,
    /// outliers, tiny and huge magnitudes) with uneven importance weights.
    fn weighted_cases(blocks: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
        crate::lanes::tests::cases(blocks * QK)
            .into_iter()
            .map(|x| {
                let qw = (0..x.len()).map(|i| (i % 7) as f32 * 0.3).collect();
                (x, qw)
            })
            .collect()
    }

    /// Every piece size of `weighted_row` (16, 8, fewer) and their mixes.
    const BLOCK_COUNTS: [usize; 7] = [1, 7, 8, 9, 16, 27, 43];

    #[test]
    fn lane_rows_match_the_block_by_block_scalar_searches() {
        use crate::q4_0::BlockQ4_0;
        use std::cell::RefCell;
        let dummy = || BlockQ4_0 {
            d: 0,
            qs: [0; QK / 2],
        };
        for blocks in BLOCK_COUNTS {
            for (x, qw) in weighted_cases(blocks) {
                let sigma2 = row_sigma2(&x);
                let weights = || {
                    x.chunks_exact(QK)
                        .zip(qw.chunks_exact(QK))
                        .map(|(xb, qb)| (xb, impl_weights(xb, qb, sigma2)))
                };
                let mut out = vec![0u8; blocks * 18];
                for nmax in [8, 16] {
                    let got = RefCell::new(Vec::new());
                    quantize_row_qx(&x, &qw, &mut out, nmax, |d, l| {
                        got.borrow_mut().push((d.to_bits(), *l));
                        dummy()
                    });
                    let want: Vec<_> = weights()
                        .map(|(xb, w)| {
                            let mut l = [0i8; QK];
                            let d = make_qx_quants(nmax, xb, &mut l, 1, Some(&w));
                            (d.to_bits(), l)
                        })
                        .collect();
                    assert!(got.into_inner() == want, "qx: {blocks} blocks, nmax {nmax}");
                }
                for nmax in [15, 31] {
                    let got = RefCell::new(Vec::new());
                    quantize_row_qkx(&x, &qw, &mut out, nmax, |d, m, l| {
                        got.borrow_mut().push((d.to_bits(), m.to_bits(), *l));
                        dummy()
                    });
                    let want: Vec<_> = weights()
                        .map(|(xb, w)| {
                            let (mut l, mut aux) = ([0u8; QK], [0u8; QK]);
                            let (d, m) = make_qkx3_quants(
                                nmax,
                                xb,
                                Some(&w),
                                &mut l,
                                &mut aux,
                                -0.9,
                                0.05,
                                36,
                                false,
                            );
                            (d.to_bits(), m.to_bits(), l)
                        })
                        .collect();
                    assert!(
                        got.into_inner() == want,
                        "qkx: {blocks} blocks, nmax {nmax}"
                    );
                }
            }
        }
    }

    #[test]
    fn packing_roundtrips_five_bit_levels() {
        let mut l = [0u8; QK];
        for (i, v) in l.iter_mut().enumerate() {
            *v = (i as u8 * 7 + 3) % 32;
        }
        assert_eq!(unpack(&pack_nibbles(&l), pack_high_bits(&l)), l);
        let four: [u8; QK] = std::array::from_fn(|i| (i % 16) as u8);
        assert_eq!(unpack(&pack_nibbles(&four), 0), four);
    }

    #[test]
    fn short_buffers_read_as_zero_and_are_not_written() {
        assert_eq!(le_u16(&[1], 0), 0);
        assert_eq!(le_u32(&[1, 2, 3], 0), 0);
        assert_eq!(le_bytes::<4>(&[1, 2], 0), [0; 4]);
        let mut out = [9u8; 2];
        put(&mut out, 1, &[1, 2]);
        assert_eq!(out, [9, 9]);
    }
}
