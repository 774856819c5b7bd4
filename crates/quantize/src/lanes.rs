//! The scale searches of [`crate::search`] run on many independent groups at once, one group per
//! SIMD lane (AVX2, 8 lanes per vector, `V` vectors), with the scalar search as the fallback and
//! as the reference the SIMD path is tested against.
//!
//! Exists because the searches are latency-bound chains of f32 operations (running sums in index
//! order, then a comparison that decides the next step), which bit-exactness forbids reordering
//! within a group. The groups of a super-block are independent, so putting each group in its own
//! lane keeps every lane's operations exactly the scalar sequence — same operands, same order,
//! separate `mul` and `add` (no FMA), true division where C divides, `nearest_int` by the same
//! bit trick — while 8 groups advance per instruction. Data-dependent branches become per-lane
//! masks: a lane that C would not update keeps its value.
//!
//! The chosen levels are not carried through the search: each lane remembers the `iscale` (and,
//! for the offset search, the `min`) its best levels were computed with, and the levels are
//! recomputed once at the end with the same operations, which gives the same integers.
//!
//! Not for: group sizes other than 16 and 32 (callers use [`crate::search`] directly).

use crate::search;

/// Whether the AVX2 lane kernels may run on this CPU (std caches the detection) and
/// `R1Q_NO_SIMD` is not set (to measure or debug the scalar path in a release binary).
#[inline]
pub(crate) fn simd_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            std::env::var_os("R1Q_NO_SIMD").is_none() && std::arch::is_x86_feature_detected!("avx2")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Parameters of `make_qkx2_quants` / `make_qkx3_quants` besides the data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QkxParams {
    /// Largest level.
    pub nmax: i32,
    /// First candidate's offset from `nmax`.
    pub rmin: f32,
    /// Candidate step.
    pub rdelta: f32,
    /// Candidates `0..=nstep` (none if < 1).
    pub nstep: i32,
    /// Absolute instead of squared error.
    pub use_mad: bool,
}

/// `make_qkx2_quants` on `8·V` consecutive groups of `N` values: `x`, `w` and `ls` hold the
/// groups one after another; `scales[g]`, `mins[g]` receive group `g`'s scale and `the_min`.
/// Same results as calling [`search::make_qkx2_quants`] per group.
pub(crate) fn make_qkx_groups<const N: usize, const V: usize>(
    p: QkxParams,
    x: &[f32],
    w: &[f32],
    ls: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if simd_enabled() {
        // SAFETY: AVX2 is available (checked at run time just above).
        unsafe { avx2::qkx::<N, V>(p, x, w, ls, scales, mins) };
        return;
    }
    make_qkx_groups_scalar::<N, V>(p, x, w, ls, scales, mins);
}

/// The scalar reference of [`make_qkx_groups`]: one [`search::make_qkx2_quants`] per group.
pub(crate) fn make_qkx_groups_scalar<const N: usize, const V: usize>(
    p: QkxParams,
    x: &[f32],
    w: &[f32],
    ls: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) {
    let mut laux = [0u8; N];
    for g in 0..8 * V {
        let r = g * N..(g + 1) * N;
        (scales[g], mins[g]) = search::make_qkx2_quants(
            p.nmax,
            &x[r.clone()],
            &w[r.clone()],
            &mut ls[r],
            &mut laux,
            p.rmin,
            p.rdelta,
            p.nstep,
            p.use_mad,
        );
    }
}

/// `make_qx_quants(N, nmax, x, L, 1, w)` (weights given; the caller passes x² for `qw = NULL`)
/// on `8·V` consecutive groups of `N` values. Same results as [`search::make_qx_quants`] per
/// group.
pub(crate) fn make_qx_groups<const N: usize, const V: usize>(
    nmax: i32,
    x: &[f32],
    w: &[f32],
    ls: &mut [i8],
    scales: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if simd_enabled() {
        // SAFETY: AVX2 is available (checked at run time just above).
        unsafe { avx2::qx::<N, V>(nmax, x, w, ls, scales) };
        return;
    }
    make_qx_groups_scalar::<N, V>(nmax, x, w, ls, scales);
}

/// The scalar reference of [`make_qx_groups`].
pub(crate) fn make_qx_groups_scalar<const N: usize, const V: usize>(
    nmax: i32,
    x: &[f32],
    w: &[f32],
    ls: &mut [i8],
    scales: &mut [f32],
) {
    for (g, s) in scales.iter_mut().enumerate().take(8 * V) {
        let r = g * N..(g + 1) * N;
        *s = search::make_qx_quants(nmax, &x[r.clone()], &mut ls[r.clone()], 1, Some(&w[r]));
    }
}

/// `make_q3_quants(N, nmax, x, L, true)` on `8·V` consecutive groups of `N` values. Same
/// results as [`search::make_q3_quants`] per group.
pub(crate) fn make_q3_groups<const N: usize, const V: usize>(
    nmax: i32,
    x: &[f32],
    ls: &mut [i8],
    scales: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if simd_enabled() {
        // SAFETY: AVX2 is available (checked at run time just above).
        unsafe { avx2::q3::<N, V>(nmax, x, ls, scales) };
        return;
    }
    make_q3_groups_scalar::<N, V>(nmax, x, ls, scales);
}

/// The scalar reference of [`make_q3_groups`].
pub(crate) fn make_q3_groups_scalar<const N: usize, const V: usize>(
    nmax: i32,
    x: &[f32],
    ls: &mut [i8],
    scales: &mut [f32],
) {
    for (g, s) in scales.iter_mut().enumerate().take(8 * V) {
        let r = g * N..(g + 1) * N;
        *s = search::make_q3_quants(nmax, &x[r.clone()], &mut ls[r], true);
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::QkxParams;
    use crate::search::GROUP_MAX_EPS;
    use std::arch::x86_64::*;

    /// Loads 8 floats.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn ld(a: &[f32; 8]) -> __m256 {
        // SAFETY: `a` is 8 contiguous initialised f32 (32 bytes); loadu needs no alignment.
        unsafe { _mm256_loadu_ps(a.as_ptr()) }
    }

    /// Stores 8 i32.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn st_i(a: &mut [i32; 8], v: __m256i) {
        // SAFETY: `a` is 8 contiguous i32 (32 bytes); storeu needs no alignment.
        unsafe { _mm256_storeu_si256(a.as_mut_ptr().cast(), v) }
    }

    /// Stores 8 floats.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn st(a: &mut [f32; 8], v: __m256) {
        // SAFETY: `a` is 8 contiguous f32 (32 bytes); storeu needs no alignment.
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) }
    }

    /// `nearest_int` per lane: the same 1.5·2²³ addition and bit extraction as the scalar one.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn nearest_int(f: __m256) -> __m256i {
        let v = _mm256_add_ps(f, _mm256_set1_ps(12_582_912.0));
        _mm256_sub_epi32(
            _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x007f_ffff)),
            _mm256_set1_epi32(0x0040_0000),
        )
    }

    /// `mask ? b : a` per lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn sel(a: __m256, b: __m256, mask: __m256) -> __m256 {
        _mm256_blendv_ps(a, b, mask)
    }

    /// The largest of the 8 lanes of `m` (none of them NaN: then the order does not matter).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn hmax(m: __m256) -> f32 {
        let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps::<1>(h, h)))
    }

    /// The 32 values of a block as 32 bytes in element order, from four vectors of 8 i32 each
    /// in [−128, 127] (`t[k]` holds elements 8k…8k+7): the saturating packs keep them exactly.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn pack_bytes(t: &[__m256i; 4]) -> __m256i {
        // per 128-bit lane: [t0 t1 t2 t3] quarters interleave; restore element order
        let b = _mm256_packs_epi16(
            _mm256_packs_epi32(t[0], t[1]),
            _mm256_packs_epi32(t[2], t[3]),
        );
        _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// C's `(int8_t)` of a 32-bit `cvttps2dq` result: its low byte, sign-extended (NaN and
    /// out-of-range values convert to 0x8000_0000, whose low byte is 0, as with gcc's
    /// `cvttss2si`).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn low_byte_i8(c: __m256i) -> __m256i {
        _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(c))
    }

    /// [`crate::legacy::signed_absmax`] of one 32-value block: the magnitudes' maximum by
    /// `maxps` (which, like C's `amax < |v|`, keeps the running value when `|v|` is NaN), then
    /// the first element of that magnitude from the equality masks.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn signed_absmax(x: &[f32; 32]) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        let mut a = [_mm256_setzero_ps(); 4];
        let mut m = _mm256_setzero_ps();
        for (ak, x8) in a.iter_mut().zip(x.chunks_exact(8)) {
            *ak = _mm256_andnot_ps(sign, ld(x8.try_into().expect("8 values")));
            m = _mm256_max_ps(*ak, m);
        }
        let amax = hmax(m);
        if amax <= 0.0 {
            return 0.0;
        }
        let am = _mm256_set1_ps(amax);
        let mut hits = 0u32;
        for (k, ak) in a.iter().enumerate() {
            let eq = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(*ak, am)) as u32;
            hits |= eq << (8 * k);
        }
        x[hits.trailing_zeros() as usize % 32]
    }

    /// Lays `N`-value groups out lane-major: `t[i][v][k]` = element `i` of group `8v + k`.
    #[inline]
    fn transpose<const N: usize, const V: usize>(x: &[f32]) -> [[[f32; 8]; V]; N] {
        let mut t = [[[0f32; 8]; V]; N];
        for (g, grp) in x.chunks_exact(N).take(8 * V).enumerate() {
            for (i, &v) in grp.iter().enumerate() {
                t[i][g / 8][g % 8] = v;
            }
        }
        t
    }

    /// Lane-parallel `make_qkx2_quants` (see [`super::make_qkx_groups`]); every lane performs
    /// `search::make_qkx_quants_n`'s operations in its order.
    #[target_feature(enable = "avx2")]
    pub(super) fn qkx<const N: usize, const V: usize>(
        p: QkxParams,
        x: &[f32],
        w: &[f32],
        ls: &mut [u8],
        scales: &mut [f32],
        mins: &mut [f32],
    ) {
        let g = 8 * V;
        assert!(
            N > 0
                && x.len() == g * N
                && w.len() == g * N
                && ls.len() == g * N
                && scales.len() == g
                && mins.len() == g
        );
        let xt = transpose::<N, V>(x);
        let wt = transpose::<N, V>(w);
        let zero = _mm256_setzero_ps();
        let one = _mm256_set1_ps(1.0);
        let sign = _mm256_set1_ps(-0.0);
        let nmax_i = _mm256_set1_epi32(p.nmax);
        let zero_i = _mm256_setzero_si256();
        let fnmax = p.nmax as f32;
        let level = |iscale: __m256, xm: __m256| -> __m256i {
            _mm256_min_epi32(
                _mm256_max_epi32(nearest_int(_mm256_mul_ps(iscale, xm)), zero_i),
                nmax_i,
            )
        };
        let err = |d: __m256| -> __m256 {
            if p.use_mad {
                _mm256_andnot_ps(sign, d)
            } else {
                _mm256_mul_ps(d, d)
            }
        };

        let mut min = [zero; V];
        let mut max = [zero; V];
        let mut sum_w = [zero; V];
        let mut sum_x = [zero; V];
        for v in 0..V {
            let (x0, w0) = (ld(&xt[0][v]), ld(&wt[0][v]));
            min[v] = x0;
            max[v] = x0;
            sum_w[v] = w0;
            sum_x[v] = _mm256_mul_ps(w0, x0);
        }
        for i in 1..N {
            for v in 0..V {
                let (xi, wi) = (ld(&xt[i][v]), ld(&wt[i][v]));
                // minps/maxps return the second operand unless the first is strictly smaller
                // (larger): C's `if (x[i] < min) min = x[i];`.
                min[v] = _mm256_min_ps(xi, min[v]);
                max[v] = _mm256_max_ps(xi, max[v]);
                sum_w[v] = _mm256_add_ps(sum_w[v], wi);
                sum_x[v] = _mm256_add_ps(sum_x[v], _mm256_mul_ps(wi, xi));
            }
        }
        let mut flat = [zero; V];
        let mut min0 = [zero; V];
        let mut scale = [zero; V];
        let mut best_err = [zero; V];
        let mut best_is = [zero; V];
        let mut best_mu = [zero; V];
        for v in 0..V {
            min[v] = sel(min[v], zero, _mm256_cmp_ps::<_CMP_GT_OQ>(min[v], zero));
            min0[v] = min[v];
            flat[v] = _mm256_cmp_ps::<_CMP_EQ_OQ>(max[v], min[v]);
            let iscale = _mm256_div_ps(_mm256_set1_ps(fnmax), _mm256_sub_ps(max[v], min[v]));
            scale[v] = _mm256_div_ps(one, iscale);
            best_is[v] = iscale;
            best_mu[v] = min[v];
        }
        for i in 0..N {
            for v in 0..V {
                let (xi, wi) = (ld(&xt[i][v]), ld(&wt[i][v]));
                let lf = _mm256_cvtepi32_ps(level(best_is[v], _mm256_sub_ps(xi, min[v])));
                let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale[v], lf), min[v]), xi);
                best_err[v] = _mm256_add_ps(best_err[v], _mm256_mul_ps(wi, err(diff)));
            }
        }
        if p.nstep >= 1 {
            let mut lbuf = [[zero; V]; N];
            for is in 0..=p.nstep {
                let num = _mm256_set1_ps(p.rmin + p.rdelta * is as f32 + fnmax);
                let mut iscale = [zero; V];
                let mut sum_l = [zero; V];
                let mut sum_l2 = [zero; V];
                let mut sum_xl = [zero; V];
                for v in 0..V {
                    iscale[v] = _mm256_div_ps(num, _mm256_sub_ps(max[v], min[v]));
                }
                for i in 0..N {
                    for v in 0..V {
                        let (xi, wi) = (ld(&xt[i][v]), ld(&wt[i][v]));
                        let lf = _mm256_cvtepi32_ps(level(iscale[v], _mm256_sub_ps(xi, min[v])));
                        lbuf[i][v] = lf;
                        let wl = _mm256_mul_ps(wi, lf);
                        sum_l[v] = _mm256_add_ps(sum_l[v], wl);
                        sum_l2[v] = _mm256_add_ps(sum_l2[v], _mm256_mul_ps(wl, lf));
                        sum_xl[v] = _mm256_add_ps(sum_xl[v], _mm256_mul_ps(wl, xi));
                    }
                }
                let mut this_scale = [zero; V];
                let mut this_min = [zero; V];
                let mut dpos = [zero; V];
                for v in 0..V {
                    let d = _mm256_sub_ps(
                        _mm256_mul_ps(sum_w[v], sum_l2[v]),
                        _mm256_mul_ps(sum_l[v], sum_l[v]),
                    );
                    dpos[v] = _mm256_cmp_ps::<_CMP_GT_OQ>(d, zero);
                    let s = _mm256_div_ps(
                        _mm256_sub_ps(
                            _mm256_mul_ps(sum_w[v], sum_xl[v]),
                            _mm256_mul_ps(sum_x[v], sum_l[v]),
                        ),
                        d,
                    );
                    let m = _mm256_div_ps(
                        _mm256_sub_ps(
                            _mm256_mul_ps(sum_l2[v], sum_x[v]),
                            _mm256_mul_ps(sum_l[v], sum_xl[v]),
                        ),
                        d,
                    );
                    let mpos = _mm256_cmp_ps::<_CMP_GT_OQ>(m, zero);
                    this_min[v] = sel(m, zero, mpos);
                    this_scale[v] = sel(s, _mm256_div_ps(sum_xl[v], sum_l2[v]), mpos);
                }
                let mut cur = [zero; V];
                for i in 0..N {
                    for v in 0..V {
                        let xi = ld(&xt[i][v]);
                        let wi = ld(&wt[i][v]);
                        let diff = _mm256_sub_ps(
                            _mm256_add_ps(_mm256_mul_ps(this_scale[v], lbuf[i][v]), this_min[v]),
                            xi,
                        );
                        cur[v] = _mm256_add_ps(cur[v], _mm256_mul_ps(wi, err(diff)));
                    }
                }
                for v in 0..V {
                    let acc =
                        _mm256_and_ps(dpos[v], _mm256_cmp_ps::<_CMP_LT_OQ>(cur[v], best_err[v]));
                    best_err[v] = sel(best_err[v], cur[v], acc);
                    scale[v] = sel(scale[v], this_scale[v], acc);
                    best_is[v] = sel(best_is[v], iscale[v], acc);
                    best_mu[v] = sel(best_mu[v], min[v], acc);
                    min[v] = sel(min[v], this_min[v], acc);
                }
            }
        }
        // Outputs: flat groups get zero levels, scale 0 and −min of the clamped minimum.
        let mut lv = [0i32; 8];
        let mut out = [0f32; 8];
        for v in 0..V {
            let flat_i = _mm256_castps_si256(flat[v]);
            for i in 0..N {
                let l = level(best_is[v], _mm256_sub_ps(ld(&xt[i][v]), best_mu[v]));
                st_i(&mut lv, _mm256_andnot_si256(flat_i, l));
                for (k, &l) in lv.iter().enumerate() {
                    ls[(8 * v + k) * N + i] = l as u8;
                }
            }
            st(&mut out, sel(scale[v], zero, flat[v]));
            scales[8 * v..8 * v + 8].copy_from_slice(&out);
            let m = sel(min[v], min0[v], flat[v]);
            st(&mut out, _mm256_xor_ps(m, sign));
            mins[8 * v..8 * v + 8].copy_from_slice(&out);
        }
    }

    /// Lane-parallel `make_qx_quants(N, nmax, x, L, 1, w)` (see [`super::make_qx_groups`]);
    /// every lane performs `search::make_qx_quants`'s operations in its order.
    #[target_feature(enable = "avx2")]
    pub(super) fn qx<const N: usize, const V: usize>(
        nmax: i32,
        x: &[f32],
        w: &[f32],
        ls: &mut [i8],
        scales: &mut [f32],
    ) {
        let g = 8 * V;
        assert!(
            N > 0 && x.len() == g * N && w.len() == g * N && ls.len() == g * N && scales.len() == g
        );
        let xt = transpose::<N, V>(x);
        let wt = transpose::<N, V>(w);
        let zero = _mm256_setzero_ps();
        let sign = _mm256_set1_ps(-0.0);
        let lo = _mm256_set1_epi32(-nmax);
        let hi = _mm256_set1_epi32(nmax - 1);
        let fmax = nmax as f32;
        let level = |iscale: __m256, xi: __m256| -> __m256i {
            _mm256_min_epi32(
                _mm256_max_epi32(nearest_int(_mm256_mul_ps(iscale, xi)), lo),
                hi,
            )
        };
        let mut amax = [zero; V];
        let mut max = [zero; V];
        for xti in &xt {
            for v in 0..V {
                let xi = ld(&xti[v]);
                let ax = _mm256_andnot_ps(sign, xi);
                let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax[v]);
                amax[v] = sel(amax[v], ax, gt);
                max[v] = sel(max[v], xi, gt);
            }
        }
        // C's `w*x[i]*l` is `(w·x)·l`: the first product is the same for every candidate.
        let mut wx = [[zero; V]; N];
        for i in 0..N {
            for v in 0..V {
                wx[i][v] = _mm256_mul_ps(ld(&wt[i][v]), ld(&xt[i][v]));
            }
        }
        // Sums of the levels for `iscale` (per lane), in index order.
        let sums = |iscale: &[__m256; V]| -> ([__m256; V], [__m256; V]) {
            let mut sumlx = [zero; V];
            let mut suml2 = [zero; V];
            for i in 0..N {
                for v in 0..V {
                    let (xi, wi) = (ld(&xt[i][v]), ld(&wt[i][v]));
                    let lf = _mm256_cvtepi32_ps(level(iscale[v], xi));
                    sumlx[v] = _mm256_add_ps(sumlx[v], _mm256_mul_ps(wx[i][v], lf));
                    suml2[v] = _mm256_add_ps(suml2[v], _mm256_mul_ps(_mm256_mul_ps(wi, lf), lf));
                }
            }
            (sumlx, suml2)
        };
        let mut best_is = [zero; V];
        for v in 0..V {
            best_is[v] = _mm256_div_ps(_mm256_set1_ps(-fmax), max[v]);
        }
        let (sumlx, suml2) = sums(&best_is);
        let mut scale = [zero; V];
        let mut best = [zero; V];
        for v in 0..V {
            let s = _mm256_div_ps(sumlx[v], suml2[v]);
            scale[v] = sel(s, zero, _mm256_cmp_ps::<_CMP_EQ_OQ>(suml2[v], zero));
            best[v] = _mm256_mul_ps(scale[v], sumlx[v]);
        }
        for is in -9i32..=9 {
            if is == 0 {
                continue;
            }
            let num = _mm256_set1_ps(-(fmax + 0.1f32 * is as f32));
            let mut iscale = [zero; V];
            for v in 0..V {
                iscale[v] = _mm256_div_ps(num, max[v]);
            }
            let (sumlx, suml2) = sums(&iscale);
            for v in 0..V {
                let acc = _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_GT_OQ>(suml2[v], zero),
                    _mm256_cmp_ps::<_CMP_GT_OQ>(
                        _mm256_mul_ps(sumlx[v], sumlx[v]),
                        _mm256_mul_ps(best[v], suml2[v]),
                    ),
                );
                let s = _mm256_div_ps(sumlx[v], suml2[v]);
                scale[v] = sel(scale[v], s, acc);
                best[v] = sel(best[v], _mm256_mul_ps(s, sumlx[v]), acc);
                best_is[v] = sel(best_is[v], iscale[v], acc);
            }
        }
        let nmax_i = _mm256_set1_epi32(nmax);
        let eps = _mm256_set1_ps(GROUP_MAX_EPS);
        let mut lv = [0i32; 8];
        let mut out = [0f32; 8];
        for v in 0..V {
            let small = _mm256_cmp_ps::<_CMP_LT_OQ>(amax[v], eps);
            let small_i = _mm256_castps_si256(small);
            for i in 0..N {
                let l = _mm256_add_epi32(level(best_is[v], ld(&xt[i][v])), nmax_i);
                st_i(&mut lv, _mm256_andnot_si256(small_i, l));
                for (k, &l) in lv.iter().enumerate() {
                    ls[(8 * v + k) * N + i] = l as i8;
                }
            }
            st(&mut out, sel(scale[v], zero, small));
            scales[8 * v..8 * v + 8].copy_from_slice(&out);
        }
    }

    /// Lane-parallel `make_q3_quants(N, nmax, x, L, true)` (see [`super::make_q3_groups`]):
    /// the coordinate descent runs in every lane until no lane changes (at most 5 sweeps); a
    /// lane whose sweep changed nothing would change nothing in a later sweep either, so the
    /// extra sweeps C would have skipped leave it as it is.
    #[target_feature(enable = "avx2")]
    pub(super) fn q3<const N: usize, const V: usize>(
        nmax: i32,
        x: &[f32],
        ls: &mut [i8],
        scales: &mut [f32],
    ) {
        let g = 8 * V;
        assert!(N > 0 && x.len() == g * N && ls.len() == g * N && scales.len() == g);
        let xt = transpose::<N, V>(x);
        let zero = _mm256_setzero_ps();
        let sign = _mm256_set1_ps(-0.0);
        let lo = _mm256_set1_epi32(-nmax);
        let hi = _mm256_set1_epi32(nmax - 1);
        let clamp = |l: __m256i| _mm256_min_epi32(_mm256_max_epi32(l, lo), hi);
        let mut amax = [zero; V];
        let mut max = [zero; V];
        for xti in &xt {
            for v in 0..V {
                let xi = ld(&xti[v]);
                let ax = _mm256_andnot_ps(sign, xi);
                let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax[v]);
                amax[v] = sel(amax[v], ax, gt);
                max[v] = sel(max[v], xi, gt);
            }
        }
        let mut iscale = [zero; V];
        for v in 0..V {
            iscale[v] = _mm256_div_ps(_mm256_set1_ps(-(nmax as f32)), max[v]);
        }
        // Current levels as floats (small integers, exact).
        let mut lf = [[zero; V]; N];
        let mut sumlx = [zero; V];
        let mut suml2 = [zero; V];
        for i in 0..N {
            for v in 0..V {
                let xi = ld(&xt[i][v]);
                let l = _mm256_cvtepi32_ps(clamp(nearest_int(_mm256_mul_ps(iscale[v], xi))));
                lf[i][v] = l;
                let w = _mm256_mul_ps(xi, xi);
                sumlx[v] = _mm256_add_ps(sumlx[v], _mm256_mul_ps(_mm256_mul_ps(w, xi), l));
                suml2[v] = _mm256_add_ps(suml2[v], _mm256_mul_ps(_mm256_mul_ps(w, l), l));
            }
        }
        for _ in 0..5 {
            let mut changed = _mm256_setzero_ps();
            for i in 0..N {
                for v in 0..V {
                    let xi = ld(&xt[i][v]);
                    let w = _mm256_mul_ps(xi, xi);
                    let cur = lf[i][v];
                    let wx = _mm256_mul_ps(w, xi);
                    let mut slx = _mm256_sub_ps(sumlx[v], _mm256_mul_ps(wx, cur));
                    let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(slx, zero);
                    let mut sl2 =
                        _mm256_sub_ps(suml2[v], _mm256_mul_ps(_mm256_mul_ps(w, cur), cur));
                    let new_l = _mm256_cvtepi32_ps(clamp(nearest_int(_mm256_div_ps(
                        _mm256_mul_ps(xi, sl2),
                        slx,
                    ))));
                    let differs = _mm256_cmp_ps::<_CMP_NEQ_OQ>(new_l, cur);
                    slx = _mm256_add_ps(slx, _mm256_mul_ps(wx, new_l));
                    sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(_mm256_mul_ps(w, new_l), new_l));
                    let better = _mm256_and_ps(
                        _mm256_cmp_ps::<_CMP_GT_OQ>(sl2, zero),
                        _mm256_cmp_ps::<_CMP_GT_OQ>(
                            _mm256_mul_ps(_mm256_mul_ps(slx, slx), suml2[v]),
                            _mm256_mul_ps(_mm256_mul_ps(sumlx[v], sumlx[v]), sl2),
                        ),
                    );
                    let acc = _mm256_and_ps(_mm256_and_ps(pos, differs), better);
                    lf[i][v] = sel(cur, new_l, acc);
                    sumlx[v] = sel(sumlx[v], slx, acc);
                    suml2[v] = sel(suml2[v], sl2, acc);
                    changed = _mm256_or_ps(changed, acc);
                }
            }
            if _mm256_movemask_ps(changed) == 0 {
                break;
            }
        }
        let nmax_i = _mm256_set1_epi32(nmax);
        let eps = _mm256_set1_ps(GROUP_MAX_EPS);
        let mut lv = [0i32; 8];
        let mut out = [0f32; 8];
        for v in 0..V {
            let small = _mm256_cmp_ps::<_CMP_LT_OQ>(amax[v], eps);
            let small_i = _mm256_castps_si256(small);
            for i in 0..N {
                let l = _mm256_add_epi32(_mm256_cvtps_epi32(lf[i][v]), nmax_i);
                st_i(&mut lv, _mm256_andnot_si256(small_i, l));
                for (k, &l) in lv.iter().enumerate() {
                    ls[(8 * v + k) * N + i] = l as i8;
                }
            }
            let s = _mm256_div_ps(sumlx[v], suml2[v]);
            let s = sel(zero, s, _mm256_cmp_ps::<_CMP_GT_OQ>(suml2[v], zero));
            st(&mut out, sel(s, zero, small));
            scales[8 * v..8 * v + 8].copy_from_slice(&out);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random rows with the awkward cases the searches branch on: zeros,
    /// constant groups, all-positive groups, ties, outliers, tiny and huge magnitudes.
    pub(crate) fn cases(n: usize) -> Vec<Vec<f32>> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let mut out = Vec::new();
        for kind in 0..12 {
            let v: Vec<f32> = (0..n)
                .map(|i| {
                    let r = rnd();
                    match kind {
                        0 => r,
                        1 => r.abs() + 0.1,
                        2 => 0.0,
                        3 => 0.25,
                        4 => (i % 7) as f32 * 0.5 - 1.5,
                        5 => r * 1e-20,
                        6 => r * 1e20,
                        7 => {
                            if i % 37 == 0 {
                                50.0 * r
                            } else {
                                r * 0.01
                            }
                        }
                        8 => {
                            if i % 16 == 0 {
                                0.0
                            } else {
                                r
                            }
                        }
                        9 => (r * 8.0).round() / 8.0,
                        10 => -r.abs(),
                        _ => {
                            if (i / 16) % 3 == 0 {
                                0.0
                            } else {
                                r * (i % 5) as f32
                            }
                        }
                    }
                })
                .collect();
            out.push(v);
        }
        out
    }

    /// [`cases`] plus rows of the degenerate inputs the block codecs must survive like C does:
    /// NaN among normals and subnormals, ±inf, blocks so small that 1/d overflows.
    pub(crate) fn edge_cases(n: usize) -> Vec<Vec<f32>> {
        let mut rows = cases(n);
        rows.push(
            (0..n)
                .map(|i| [1.0, f32::NAN, -1.0, 1e-40][i % 4])
                .collect(),
        );
        rows.push((0..n).map(|i| [f32::INFINITY, -2.0][i % 2]).collect());
        rows.push((0..n).map(|i| (i % 3) as f32 * -1e-42).collect());
        rows
    }

    fn check_qkx<const N: usize, const V: usize>(p: QkxParams, mad_weights: bool) {
        let g = 8 * V;
        for x in cases(g * N) {
            let w: Vec<f32> = if mad_weights {
                x.iter().map(|v| v.abs()).collect()
            } else {
                x.iter()
                    .enumerate()
                    .map(|(i, v)| 0.3 + v.abs() + (i % 3) as f32 * 0.1)
                    .collect()
            };
            let (mut l1, mut l2) = (vec![0u8; g * N], vec![0u8; g * N]);
            let (mut s1, mut s2, mut m1, mut m2) =
                (vec![0f32; g], vec![0f32; g], vec![0f32; g], vec![0f32; g]);
            make_qkx_groups_scalar::<N, V>(p, &x, &w, &mut l1, &mut s1, &mut m1);
            make_qkx_groups::<N, V>(p, &x, &w, &mut l2, &mut s2, &mut m2);
            assert_eq!(l1, l2, "{p:?} levels");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&s1), bits(&s2), "{p:?} scales");
            assert_eq!(bits(&m1), bits(&m2), "{p:?} mins");
        }
    }

    fn check_qx<const N: usize, const V: usize>(nmax: i32) {
        let g = 8 * V;
        for x in cases(g * N) {
            let w: Vec<f32> = x.iter().map(|v| v * v).collect();
            let (mut l1, mut l2) = (vec![0i8; g * N], vec![0i8; g * N]);
            let (mut s1, mut s2) = (vec![0f32; g], vec![0f32; g]);
            make_qx_groups_scalar::<N, V>(nmax, &x, &w, &mut l1, &mut s1);
            make_qx_groups::<N, V>(nmax, &x, &w, &mut l2, &mut s2);
            assert_eq!(l1, l2, "nmax {nmax} levels");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&s1), bits(&s2), "nmax {nmax} scales");
        }
    }

    #[test]
    fn simd_qkx_matches_scalar() {
        if !simd_enabled() {
            eprintln!("no AVX2: only the scalar path exists here");
        }
        let p = |nmax, rmin, rdelta, nstep, use_mad| QkxParams {
            nmax,
            rmin,
            rdelta,
            nstep,
            use_mad,
        };
        check_qkx::<32, 1>(p(15, -1.0, 0.1, 20, false), false);
        check_qkx::<32, 1>(p(31, -0.5, 0.1, 15, false), false);
        check_qkx::<32, 2>(p(15, -0.9, 0.05, 36, false), false);
        check_qkx::<16, 2>(p(3, -0.5, 0.1, 15, true), true);
        check_qkx::<16, 2>(p(3, -0.9, 0.05, 36, false), false);
        check_qkx::<16, 1>(p(3, -0.5, 0.1, 0, true), true);
    }

    #[test]
    fn simd_q3_matches_scalar() {
        for x in cases(16 * 16) {
            let (mut l1, mut l2) = (vec![0i8; 256], vec![0i8; 256]);
            let (mut s1, mut s2) = (vec![0f32; 16], vec![0f32; 16]);
            make_q3_groups_scalar::<16, 2>(4, &x, &mut l1, &mut s1);
            make_q3_groups::<16, 2>(4, &x, &mut l2, &mut s2);
            assert_eq!(l1, l2, "levels");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&s1), bits(&s2), "scales");
        }
    }

    #[test]
    fn simd_qx_matches_scalar() {
        check_qx::<16, 2>(32);
        check_qx::<16, 2>(4);
        check_qx::<32, 1>(8);
    }
}
