//! Pieces the K-quant blocks share: the super-block size, the 12-byte packing of eight 6-bit
//! scales and eight 6-bit mins used by Q4_K and Q5_K (`get_scale_min_k4`, REFERENCE §2.3), and the
//! 2-bit packing of 256 levels used by Q2_K and Q3_K.
//!
//! Kept apart so the two packings exist once and are tested once, next to each other.

/// Elements per K-quant super-block (`QK_K`).
pub(crate) const QK_K: usize = 256;

/// Packs sub-block scale `ls` and min `lm` (6 bits each) of sub-block `j` (0..8) into the
/// 12-byte `scales` field, exactly as the Q4_K/Q5_K quantizers do (the bytes must start zeroed;
/// sub-blocks 0..4 must be written before 4..8, which OR their high bits into bytes 0..8).
#[inline]
pub(crate) fn pack_scale_min_k4(j: usize, ls: u8, lm: u8, scales: &mut [u8; 12]) {
    if j < 4 {
        scales[j] = ls;
        scales[j + 4] = lm;
    } else {
        scales[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
        scales[j - 4] |= (ls >> 4) << 6;
        scales[j] |= (lm >> 4) << 6;
    }
}

/// `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8).
#[inline]
pub(crate) fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs 256 two-bit levels into 64 bytes: byte `32h + l` holds elements `128h + l + 32k` in bits
/// `2k..2k+1` (Q2_K and Q3_K `qs`).
#[inline]
pub(crate) fn pack_2bit(levels: &[u8; QK_K], qs: &mut [u8; 64]) {
    for (h, out) in qs.chunks_exact_mut(32).enumerate() {
        let base = 128 * h;
        for (l, o) in out.iter_mut().enumerate() {
            let e = base + l;
            *o = levels[e] | (levels[e + 32] << 2) | (levels[e + 64] << 4) | (levels[e + 96] << 6);
        }
    }
}

/// Reads an fp16 (as ggml's `GGML_FP16_TO_FP32`, which is exact).
#[inline]
pub(crate) fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_packing_roundtrips_every_six_bit_pair() {
        for seed in 0u32..64 {
            let ls: Vec<u8> = (0..8).map(|j| ((seed * 7 + j * 13) % 64) as u8).collect();
            let lm: Vec<u8> = (0..8)
                .map(|j| ((seed * 11 + j * 5 + 3) % 64) as u8)
                .collect();
            let mut q = [0u8; 12];
            for j in 0..8 {
                pack_scale_min_k4(j, ls[j], lm[j], &mut q);
            }
            for j in 0..8 {
                assert_eq!(get_scale_min_k4(j, &q), (ls[j], lm[j]), "seed {seed} j {j}");
            }
        }
    }

    #[test]
    fn two_bit_packing_places_elements_as_documented() {
        let mut levels = [0u8; QK_K];
        levels[128 + 5 + 64] = 3; // h = 1, l = 5, k = 2
        let mut qs = [0u8; 64];
        pack_2bit(&levels, &mut qs);
        assert_eq!(qs[32 + 5], 3 << 4);
        assert_eq!(qs.iter().filter(|&&b| b != 0).count(), 1);
    }
}
