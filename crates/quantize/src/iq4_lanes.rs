//! The two inner loops of `quantize_row_iq4_nl_impl` (IQ4_NL, IQ4_XS): the ntry = 7 scale search
//! of one 32-value block and the nearest-table-entry pick of its final levels, with an AVX2 path
//! (runtime detection and `R1Q_NO_SIMD` as in [`crate::lanes`]) and the scalar reference.
//!
//! Exists because the search is C's slowest loop: 16 candidate scales (the start scale, then
//! itry = −7…7) × 32 values × a binary search in `kvalues_iq4nl` whose branches the CPU cannot
//! predict. Here one candidate scale is one lane (two vectors of 8): each lane performs exactly
//! the scalar candidate's operations in the scalar order — `al = id·x`, the nearest entry `q` by
//! [`search::best_index_int8`]'s rule, `sumqx += (w·q)·x`, `sumq2 += (w·q)·q` over j = 0…31 — and
//! the candidates are compared afterwards in C's order, so the chosen scale is C's to the bit.
//! The nearest entry is found branch-free: the count of table entries 1…14 above `al` gives the
//! bracketing pair (NaN is below none, as C's search ends on the last entry), then C's
//! `x − lo < hi − x` picks one.

use crate::iq4_nl::QK4_NL;
use crate::search::{self, KVALUES_IQ4NL};

/// Candidate scales per block: the start scale 1/d plus itry = −7…7.
const CANDIDATES: usize = 16;

/// The ntry = 7 search of one block (`amax` ≥ `GROUP_MAX_EPS`, `max` its signed largest value):
/// returns `d`, the least-squares scale of the best candidate.
#[inline]
pub(crate) fn search_scale(xb: &[f32; QK4_NL], w: &[f32; QK4_NL], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::lanes::simd_enabled() {
        // SAFETY: AVX2 is available (checked at run time just above).
        return unsafe { avx2::search_scale(xb, w, max) };
    }
    search_scale_scalar(xb, w, max)
}

/// `L[j] = best_index_int8(16, kvalues_iq4nl, id·x[j])` for the 32 values of one block.
#[inline]
pub(crate) fn pick_levels(xb: &[f32; QK4_NL], id: f32, out: &mut [u8; QK4_NL]) {
    #[cfg(target_arch = "x86_64")]
    if crate::lanes::simd_enabled() {
        // SAFETY: AVX2 is available (checked at run time just above).
        unsafe { avx2::pick_levels(xb, id, out) };
        return;
    }
    pick_levels_scalar(xb, id, out);
}

/// The candidates' inverse scales in C's order: `1/d` with d = −max/`T[0]`, then
/// `(itry + T[0])/max` for itry = −7…7.
#[inline]
fn candidate_ids(max: f32) -> [f32; CANDIDATES] {
    let t0 = i32::from(KVALUES_IQ4NL[0]);
    let mut ids = [0f32; CANDIDATES];
    ids[0] = 1.0 / (-max / t0 as f32);
    for (itry, id) in (-7i32..).zip(ids.iter_mut().skip(1)) {
        *id = (itry + t0) as f32 / max;
    }
    ids
}

/// C's choice among the candidates' sums: the start candidate's least-squares scale, replaced
/// by each later candidate (in order) whose `sumqx²/sumq2` is larger.
#[inline]
fn choose(sumqx: &[f32; CANDIDATES], sumq2: &[f32; CANDIDATES]) -> f32 {
    let mut d = if sumq2[0] > 0.0 {
        sumqx[0] / sumq2[0]
    } else {
        0.0
    };
    let mut best = d * sumqx[0];
    for (&sx, &s2) in sumqx.iter().zip(sumq2).skip(1) {
        if s2 > 0.0 && sx * sx > best * s2 {
            d = sx / s2;
            best = d * sx;
        }
    }
    d
}

/// The scalar reference of [`search_scale`]: one candidate after the other.
pub(crate) fn search_scale_scalar(xb: &[f32; QK4_NL], w: &[f32; QK4_NL], max: f32) -> f32 {
    let ids = candidate_ids(max);
    let (mut sumqx, mut sumq2) = ([0f32; CANDIDATES], [0f32; CANDIDATES]);
    for ((&id, sx), s2) in ids.iter().zip(&mut sumqx).zip(&mut sumq2) {
        for (&v, &wj) in xb.iter().zip(w) {
            let q = f32::from(KVALUES_IQ4NL[search::best_index_int8(&KVALUES_IQ4NL, id * v)]);
            *sx += wj * q * v;
            *s2 += wj * q * q;
        }
    }
    choose(&sumqx, &sumq2)
}

/// The scalar reference of [`pick_levels`].
pub(crate) fn pick_levels_scalar(xb: &[f32; QK4_NL], id: f32, out: &mut [u8; QK4_NL]) {
    for (l, &v) in out.iter_mut().zip(xb) {
        *l = search::best_index_int8(&KVALUES_IQ4NL, id * v) as u8;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{candidate_ids, choose, CANDIDATES};
    use crate::iq4_nl::QK4_NL;
    use crate::lanes::avx2::{ld, sel, st, st_i};
    use crate::search::KVALUES_IQ4NL;
    use std::arch::x86_64::*;

    /// The table as two vectors of f32 (entries 0–7 and 8–15).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn table() -> (__m256, __m256) {
        let t: [f32; 16] = KVALUES_IQ4NL.map(f32::from);
        let (lo, hi) = t.split_at(8);
        (
            ld(lo.try_into().expect("8 entries")),
            ld(hi.try_into().expect("8 entries")),
        )
    }

    /// Entry `idx` (0–15 per lane) of the table.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lookup(t: (__m256, __m256), idx: __m256i) -> __m256 {
        let a = _mm256_permutevar8x32_ps(t.0, idx);
        let b = _mm256_permutevar8x32_ps(t.1, idx);
        let upper = _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7));
        sel(a, b, _mm256_castsi256_ps(upper))
    }

    /// `best_index_int8` per lane: the index and the table value there.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn nearest(t: (__m256, __m256), al: __m256) -> (__m256i, __m256) {
        // mu = 15 − #{i in 1..=14 : al < T[i]}: the bracket T[mu−1] ≤ al < T[mu] of C's
        // binary search, as in the scalar `best_index_int8` (no edge cases: below T[0] the
        // comparison picks 0, above T[15] it picks 15, NaN ends at 15 as in C).
        let mut mu = _mm256_set1_epi32(15);
        for &v in &KVALUES_IQ4NL[1..15] {
            let above = _mm256_cmp_ps::<_CMP_LT_OQ>(al, _mm256_set1_ps(f32::from(v)));
            mu = _mm256_add_epi32(mu, _mm256_castps_si256(above));
        }
        let below = _mm256_sub_epi32(mu, _mm256_set1_epi32(1));
        let (lo, hi) = (lookup(t, below), lookup(t, mu));
        let take_lo = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_sub_ps(al, lo), _mm256_sub_ps(hi, al));
        // mask −1 where the lower entry wins: mu − 1
        let idx = _mm256_add_epi32(mu, _mm256_castps_si256(take_lo));
        (idx, sel(hi, lo, take_lo))
    }

    /// [`super::search_scale`] with the 16 candidates in the lanes of two vectors.
    #[target_feature(enable = "avx2")]
    pub(super) fn search_scale(xb: &[f32; QK4_NL], w: &[f32; QK4_NL], max: f32) -> f32 {
        let t = table();
        let ids = candidate_ids(max);
        let (ids_a, ids_b) = ids.split_at(8);
        let id = [
            ld(ids_a.try_into().expect("8 ids")),
            ld(ids_b.try_into().expect("8 ids")),
        ];
        let mut sx = [_mm256_setzero_ps(); 2];
        let mut s2 = [_mm256_setzero_ps(); 2];
        for (&v, &wj) in xb.iter().zip(w) {
            let (x, wv) = (_mm256_set1_ps(v), _mm256_set1_ps(wj));
            for k in 0..2 {
                let (_, q) = nearest(t, _mm256_mul_ps(id[k], x));
                let wq = _mm256_mul_ps(wv, q);
                sx[k] = _mm256_add_ps(sx[k], _mm256_mul_ps(wq, x));
                s2[k] = _mm256_add_ps(s2[k], _mm256_mul_ps(wq, q));
            }
        }
        let (mut sumqx, mut sumq2) = ([0f32; CANDIDATES], [0f32; CANDIDATES]);
        for k in 0..2 {
            let r = 8 * k..8 * k + 8;
            st((&mut sumqx[r.clone()]).try_into().expect("8 sums"), sx[k]);
            st((&mut sumq2[r]).try_into().expect("8 sums"), s2[k]);
        }
        choose(&sumqx, &sumq2)
    }

    /// [`super::pick_levels`], 8 values per vector.
    #[target_feature(enable = "avx2")]
    pub(super) fn pick_levels(xb: &[f32; QK4_NL], id: f32, out: &mut [u8; QK4_NL]) {
        let t = table();
        let idv = _mm256_set1_ps(id);
        let mut li = [0i32; 8];
        for (x8, o8) in xb.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
            let (idx, _) = nearest(t, _mm256_mul_ps(idv, ld(x8.try_into().expect("8 values"))));
            st_i(&mut li, idx);
            for (o, &l) in o8.iter_mut().zip(&li) {
                *o = l as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lanes::tests::cases;

    #[test]
    fn simd_search_and_levels_match_scalar() {
        if !crate::lanes::simd_enabled() {
            eprintln!("no AVX2 (or R1Q_NO_SIMD): only the scalar path exists here");
        }
        let mut blocks = 0;
        for x in cases(8 * QK4_NL) {
            for (b, xb) in x.chunks_exact(QK4_NL).enumerate() {
                let xb: &[f32; QK4_NL] = xb.try_into().unwrap();
                let w: [f32; QK4_NL] = if b % 2 == 0 {
                    xb.map(|v| v * v)
                } else {
                    std::array::from_fn(|j| 0.3 + xb[j].abs() + (j % 3) as f32 * 0.1)
                };
                let max = xb
                    .iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                if max.abs() < search::GROUP_MAX_EPS {
                    continue;
                }
                let d1 = search_scale_scalar(xb, &w, max);
                let d2 = search_scale(xb, &w, max);
                assert_eq!(d1.to_bits(), d2.to_bits(), "scale of {xb:?}");
                for id in [1.0 / d1, 0.0, f32::INFINITY, f32::NAN, -3.7e5, 1e-3] {
                    let (mut l1, mut l2) = ([0u8; QK4_NL], [0u8; QK4_NL]);
                    pick_levels_scalar(xb, id, &mut l1);
                    pick_levels(xb, id, &mut l2);
                    assert_eq!(l1, l2, "levels at id {id} of {xb:?}");
                }
                blocks += 1;
            }
        }
        assert!(blocks > 50);
    }
}
