//! Scalar helpers and scale-search helpers of `ggml-quants.c` shared by every codec (REFERENCE
//! §2.2, §2.5), transcribed operation for operation so that every f32 rounding happens where it
//! happens in C: the searches compare floating-point scores, so one differently rounded partial
//! sum can flip a choice and change the bytes.
//!
//! Bit-exactness rules followed throughout (REFERENCE §2.2): every expression is evaluated in f32
//! in C's left-to-right order (`w*x*l` is `(w·x)·l`, never `w·(x·l)`), sums are running f32 sums
//! in index order, integers meet floats by an exact `i32 → f32` conversion, and C's implicit
//! narrowing stores (`uint8_t L[i] = int`) are reproduced with wrapping `as u8` casts.
//!
//! Used by the K-quants (`make_q3_quants`, `make_qkx2_quants`, `make_qp_quants`, …), the legacy
//! `*_impl` quantizers (`make_qx_quants`, `make_qkx3_quants`) and IQ4_NL/IQ4_XS
//! ([`best_index_int8`], [`KVALUES_IQ4NL`]). No allocation: callers pass the level buffers.

/// Groups whose largest magnitude is below this quantize to zeros (`GROUP_MAX_EPS`).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: the 1.5·2²³ bit trick. Round half to even for |x| ≤ 4194303; outside
/// that range (and for NaN) it returns the same garbage as C, which keeps bytes identical even
/// for degenerate inputs.
#[inline(always)]
pub(crate) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0f32;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// `make_qx_quants`: symmetric signed levels in [−nmax, nmax−1] stored as `L = l + nmax`.
///
/// `qw = None` weighs by `rmse_type` (1: x², 2: 1, 3: |x|, else √|x|). Returns the group scale.
pub(crate) fn make_qx_quants(
    nmax: i32,
    x: &[f32],
    ls: &mut [i8],
    rmse_type: i32,
    qw: Option<&[f32]>,
) -> f32 {
    let n = x.len();
    let ls = &mut ls[..n];
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        ls.fill(0);
        return 0.0;
    }
    let fmax = nmax as f32;
    let mut iscale = -fmax / max;
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    if rmse_type == 0 {
        for (l, &v) in ls.iter_mut().zip(x) {
            *l = (nmax + clamp(nearest_int(iscale * v))) as i8;
        }
        return 1.0 / iscale;
    }
    let (rmse_type, return_early) = if rmse_type < 0 {
        (-rmse_type, true)
    } else {
        (rmse_type, false)
    };
    let weight = |i: usize, v: f32| -> f32 {
        match qw {
            Some(q) => q[i],
            None => match rmse_type {
                1 => v * v,
                2 => 1.0,
                3 => v.abs(),
                _ => v.abs().sqrt(),
            },
        }
    };
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for (i, &v) in x.iter().enumerate() {
        let l = clamp(nearest_int(iscale * v));
        ls[i] = (l + nmax) as i8;
        let w = weight(i, v);
        let lf = l as f32;
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(fmax + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for (i, &v) in x.iter().enumerate() {
            let lf = clamp(nearest_int(iscale * v)) as f32;
            let w = weight(i, v);
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in ls.iter_mut().zip(x) {
                *l = (nmax + clamp(nearest_int(iscale * v))) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants`: like [`make_qx_quants`] with w = x², then (with `do_rmse`) up to five sweeps
/// of coordinate descent on single levels. Levels stored as `l + nmax`, except an all-zero group
/// whose levels are left at 0 (as in C).
pub(crate) fn make_q3_quants(nmax: i32, x: &[f32], ls: &mut [i8], do_rmse: bool) -> f32 {
    let n = x.len();
    let ls = &mut ls[..n];
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        ls.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    if do_rmse {
        let mut sumlx = 0f32;
        let mut suml2 = 0f32;
        for (l8, &v) in ls.iter_mut().zip(x) {
            let l = clamp(nearest_int(iscale * v));
            *l8 = l as i8;
            let w = v * v;
            let lf = l as f32;
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        for _ in 0..5 {
            let mut n_changed = 0;
            for (l8, &v) in ls.iter_mut().zip(x) {
                let w = v * v;
                let cur = *l8 as f32;
                let mut slx = sumlx - w * v * cur;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * cur * cur;
                    let new_l = clamp(nearest_int(v * sl2 / slx));
                    if new_l != i32::from(*l8) {
                        let nf = new_l as f32;
                        slx += w * v * nf;
                        sl2 += w * nf * nf;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            *l8 = new_l as i8;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        for l8 in ls.iter_mut() {
            *l8 = l8.wrapping_add(nmax as i8);
        }
        return if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    }
    for (l8, &v) in ls.iter_mut().zip(x) {
        *l8 = (clamp(nearest_int(iscale * v)) + nmax) as i8;
    }
    1.0 / iscale
}

/// Shared body of `make_qkx2_quants` / `make_qkx3_quants` (identical once the weights are
/// materialised; their "all equal" tests `max == min` / `max <= min` agree because `max ≥ min`
/// always holds after the clamp of `min` to ≤ 0, and both are false for NaN).
///
/// Asymmetric levels in [0, nmax]; returns the scale and writes `−min` (≥ 0) to `the_min`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn make_qkx_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    ls: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    // The group sizes ggml uses get their own monomorphised copy (loops of known length unroll
    // and the level computation vectorises); other lengths take the generic copy.
    match x.len() {
        16 => make_qkx_quants_n::<16>(nmax, x, weights, ls, laux, rmin, rdelta, nstep, use_mad),
        32 => make_qkx_quants_n::<32>(nmax, x, weights, ls, laux, rmin, rdelta, nstep, use_mad),
        _ => make_qkx_quants_n::<0>(nmax, x, weights, ls, laux, rmin, rdelta, nstep, use_mad),
    }
}

/// [`make_qkx_quants`] for groups of `N` values (`N = 0`: any length). The levels of a candidate
/// scale are computed in one loop and its sums in a second, each sum still a running f32 sum in
/// index order, so the result is bit-identical to C's single loop.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn make_qkx_quants_n<const N: usize>(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    ls: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = if N == 0 { x.len() } else { N };
    if n == 0 {
        return (0.0, 0.0);
    }
    let (x, ls, laux, weights) = (&x[..n], &mut ls[..n], &mut laux[..n], &weights[..n]);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        ls.fill(0);
        return (0.0, -min);
    }
    let fnmax = nmax as f32;
    let mut iscale = fnmax / (max - min);
    let mut scale = 1.0 / iscale;
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        ls[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + fnmax) / (max - min);
        let mut sum_l = 0f32;
        let mut sum_l2 = 0f32;
        let mut sum_xl = 0f32;
        for i in 0..n {
            laux[i] = nearest_int(iscale * (x[i] - min)).min(nmax).max(0) as u8;
        }
        for i in 0..n {
            let w = weights[i];
            let lf = f32::from(laux[i]);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                ls.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qkx2_quants` (weights given): returns `(scale, the_min)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    ls: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    make_qkx_quants(nmax, x, weights, ls, laux, rmin, rdelta, nstep, use_mad)
}

/// `make_qkx3_quants`: as [`make_qkx2_quants`], but `weights = None` means w = x².
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx3_quants(
    nmax: i32,
    x: &[f32],
    weights: Option<&[f32]>,
    ls: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    match weights {
        Some(w) => make_qkx_quants(nmax, x, w, ls, laux, rmin, rdelta, nstep, use_mad),
        None => {
            let mut w = [0f32; 256];
            let n = x.len().min(256);
            for (wi, &v) in w.iter_mut().zip(&x[..n]) {
                *wi = v * v;
            }
            make_qkx_quants(
                nmax,
                &x[..n],
                &w[..n],
                ls,
                laux,
                rmin,
                rdelta,
                nstep,
                use_mad,
            )
        }
    }
}

/// `make_qp_quants`: quantizes non-negative values (sub-block scales or mins) to [0, nmax] with
/// weights `qw`; returns the super-scale. Negative inputs wrap through `uint8_t` exactly as in C.
pub(crate) fn make_qp_quants(nmax: i32, x: &[f32], ls: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    let (ls, qw) = (&mut ls[..n], &qw[..n]);
    let mut max = 0f32;
    for &v in x {
        // C's MAX(a, b) is `a > b ? a : b`.
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        ls.fill(0);
        return 0.0;
    }
    let fnmax = nmax as f32;
    let mut iscale = fnmax / max;
    for (l, &v) in ls.iter_mut().zip(x) {
        *l = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..n {
        let diff = x[i] - scale * f32::from(ls[i]);
        best_mse += qw[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1f32 * is as f32 + fnmax) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        ls[i] = l as u8;
        let w = qw[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = qw[i];
            let cur = f32::from(ls[i]);
            let mut slx = sumlx - w * x[i] * cur;
            let mut sl2 = suml2 - w * cur * cur;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != i32::from(ls[i]) {
                    let nf = new_l as f32;
                    slx += w * x[i] * nf;
                    sl2 += w * nf * nf;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        ls[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The 16 non-linear levels of IQ4_NL / IQ4_XS (`kvalues_iq4nl`, sorted ascending).
pub(crate) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// `best_index_int8`: index of the nearest entry of the ascending table `val` to `x`; at or
/// below the first entry → 0, at or above the last → 15, ties go to the upper neighbour.
/// Distances are f32 differences exactly as in C (NaN lands on the last index, as in C).
///
/// C's binary search ends on the bracket `val[mu−1] ≤ x < val[mu]`; here `mu` is counted
/// without branches (15 − the entries 1…14 above `x`), which is the same bracket, and needs no
/// edge cases: below `val[0]` the final comparison picks 0, above `val[15]` it picks 15, and NaN,
/// below no entry, ends at 15 as C's search does.
#[inline(always)]
pub(crate) fn best_index_int8(val: &[i8; 16], x: f32) -> usize {
    let mut mu = 15;
    for &v in &val[1..15] {
        mu -= usize::from(x < f32::from(v));
    }
    if x - f32::from(val[mu - 1]) < f32::from(val[mu]) - x {
        mu - 1
    } else {
        mu
    }
}

/// C's `(int8_t)(v)` / `(uint8_t)(v)` of a float as gcc compiles it for x86-64, as the low byte:
/// a 32-bit truncating `cvttss2si` (0x8000_0000 for NaN and out-of-range values) whose low byte
/// is kept. The legacy `_ref` quantizers only reach it with values in [0, 32); the odd case (1/d
/// overflowing to inf for subnormal blocks) gives 0, as in llama.cpp on x86-64, where Rust's
/// saturating `as u8` would give 255.
#[inline(always)]
pub(crate) fn c_trunc_u8(v: f32) -> u8 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        (v as i32) as u8
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
        assert_eq!(nearest_int(4194303.0), 4194303);
    }

    /// C's `best_index_int8` as written: early exits, then a binary search.
    fn best_index_int8_c(val: &[i8; 16], x: f32) -> usize {
        if x <= f32::from(val[0]) {
            return 0;
        }
        if x >= f32::from(val[15]) {
            return 15;
        }
        let (mut ml, mut mu) = (0usize, 15usize);
        while mu - ml > 1 {
            let mav = (ml + mu) / 2;
            if x < f32::from(val[mav]) {
                mu = mav;
            } else {
                ml = mav;
            }
        }
        if x - f32::from(val[mu - 1]) < f32::from(val[mu]) - x {
            mu - 1
        } else {
            mu
        }
    }

    #[test]
    fn best_index_int8_matches_the_c_binary_search() {
        let t = &KVALUES_IQ4NL;
        let check = |x: f32| assert_eq!(best_index_int8(t, x), best_index_int8_c(t, x), "{x}");
        // every multiple of 1/64 over the table's range and beyond (all midpoints and entries)
        for i in -140 * 64..=140 * 64 {
            check(i as f32 / 64.0);
        }
        // one in every 4099 bit patterns: every exponent, both signs, infinities' neighbours
        for bits in (0..=u32::MAX).step_by(4099) {
            check(f32::from_bits(bits));
        }
        for x in [
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -0.0,
            f32::MAX,
            f32::MIN,
        ] {
            check(x);
        }
        for (&a, &b) in t.iter().zip(&t[1..]) {
            let mid = (f32::from(a) + f32::from(b)) / 2.0;
            for x in [mid, mid.next_up(), mid.next_down(), f32::from(a).next_up()] {
                check(x);
            }
        }
    }

    #[test]
    fn best_index_int8_edges_and_ties() {
        let t = &KVALUES_IQ4NL;
        assert_eq!(best_index_int8(t, -500.0), 0);
        assert_eq!(best_index_int8(t, -127.0), 0);
        assert_eq!(best_index_int8(t, 113.0), 15);
        assert_eq!(best_index_int8(t, 1e9), 15);
        assert_eq!(best_index_int8(t, f32::NAN), 15);
        // 0 is 10 from −10 and 1 from 1.
        assert_eq!(best_index_int8(t, 0.0), 8);
        // the exact midpoint of −10 and 1 goes up
        assert_eq!(best_index_int8(t, -4.5), 8);
        assert_eq!(best_index_int8(t, -4.6), 7);
        for (i, &v) in t.iter().enumerate() {
            assert_eq!(best_index_int8(t, f32::from(v)), i);
        }
    }

    #[test]
    fn c_trunc_u8_matches_x86_conversion() {
        assert_eq!(c_trunc_u8(8.5), 8);
        assert_eq!(c_trunc_u8(0.49), 0);
        assert_eq!(c_trunc_u8(f32::INFINITY), 0);
        assert_eq!(c_trunc_u8(f32::NEG_INFINITY), 0);
        assert_eq!(c_trunc_u8(f32::NAN), 0);
        assert_eq!(c_trunc_u8(300.0), 44);
        assert_eq!(c_trunc_u8(-1.5), 255);
    }
}
