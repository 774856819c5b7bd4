//! `tensor_type_fallback` (REFERENCE §3.7): what a tensor gets when its row length is not a
//! multiple of the chosen type's block size.

use formats::ggml_type::GgmlType;

/// The type llama-quantize substitutes for `target` on rows of `ncols` elements: `target` itself
/// when it fits; otherwise the table of §3.7 (IQ 256-block types → IQ4_NL, Q2_K/Q3_K/TQ*/Q2_0 →
/// Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, types with blocks ≤ 32 unchanged), and F16 when
/// even that does not fit. `Err(target)` for types without a defined fallback (llama-quantize
/// aborts there).
pub fn fallback(target: GgmlType, ncols: u64) -> Result<GgmlType, GgmlType> {
    let block = target.block_size();
    if ncols.is_multiple_of(block) {
        return Ok(target);
    }
    use GgmlType as T;
    let ret = match target {
        T::IQ1_S
        | T::IQ1_M
        | T::IQ2_XXS
        | T::IQ2_XS
        | T::IQ2_S
        | T::IQ3_XXS
        | T::IQ3_S
        | T::IQ4_XS => T::IQ4_NL,
        T::Q2_0 | T::Q2_K | T::Q3_K | T::TQ1_0 | T::TQ2_0 => T::Q4_0,
        T::Q4_K => T::Q5_0,
        T::Q5_K => T::Q5_1,
        T::Q6_K => T::Q8_0,
        _ if block <= 32 => target,
        _ => return Err(target),
    };
    if !ncols.is_multiple_of(ret.block_size()) {
        return Ok(T::F16);
    }
    Ok(ret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType as T;

    #[test]
    fn fallback_table() {
        assert_eq!(fallback(T::Q4_K, 7168), Ok(T::Q4_K));
        assert_eq!(fallback(T::Q4_K, 128), Ok(T::Q5_0));
        assert_eq!(fallback(T::Q5_K, 128), Ok(T::Q5_1));
        assert_eq!(fallback(T::Q6_K, 128), Ok(T::Q8_0));
        assert_eq!(fallback(T::Q2_K, 128), Ok(T::Q4_0));
        assert_eq!(fallback(T::Q3_K, 64), Ok(T::Q4_0));
        assert_eq!(fallback(T::IQ4_XS, 96), Ok(T::IQ4_NL));
        // not a multiple of 32 either → F16
        assert_eq!(fallback(T::Q4_K, 100), Ok(T::F16));
        assert_eq!(fallback(T::Q8_0, 100), Ok(T::F16));
        assert_eq!(fallback(T::IQ4_NL, 48), Ok(T::F16));
        // 32-block types that fit stay
        assert_eq!(fallback(T::Q8_0, 96), Ok(T::Q8_0));
        assert_eq!(fallback(T::F32, 7), Ok(T::F32));
        // no fallback defined
        assert_eq!(fallback(T::Q1_0, 64), Err(T::Q1_0));
        assert_eq!(fallback(T::NVFP4, 32), Err(T::NVFP4));
    }
}
