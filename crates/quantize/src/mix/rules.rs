//! The mix heuristics (`llama_tensor_get_type_impl`, REFERENCE §3.5) for the mixes r1q offers,
//! with llama-quantize's running counters.

use formats::ggml_type::GgmlType;

use super::category::{parse_block, Category};
use super::{Mix, MixError, ModelInfo};

/// `use_more_bits(i, n)`: the first and last eighth of the layers plus every third in between
/// (C integer arithmetic; a negative remainder never equals 2).
pub fn use_more_bits(i: i64, n: i64) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// llama-quantize's per-run state (`quantize_state_impl`): counters advanced as tensors are
/// visited in processing order.
#[derive(Debug, Clone, Default)]
pub(super) struct State {
    pub n_attention_wv: i64,
    pub i_attention_wv: i64,
    pub n_ffn: i64,
    pub i_ffn_down: i64,
    pub i_ffn_gate: i64,
    pub i_ffn_up: i64,
    pub has_tied_embeddings: bool,
    pub has_imatrix: bool,
}

/// `layer_info`: the layer of an FFN tensor — the running counter for dense models, the `blk.N`
/// of the name when the model has experts (then it must lie in `[0, n_layer)`).
fn layer_info(counter: i64, n: i64, name: &str, model: &ModelInfo) -> Result<(i64, i64), MixError> {
    if model.n_expert.max(1) > 1 {
        let layer = parse_block(name).ok_or_else(|| MixError::NoLayer {
            tensor: name.to_owned(),
        })?;
        if layer < 0 || layer >= n {
            return Err(MixError::BadLayer {
                tensor: name.to_owned(),
                layer,
                n_layer: n,
            });
        }
        return Ok((layer, n));
    }
    Ok((counter, n))
}

/// The heuristic type of one quantizable tensor, starting from `new_type` (the mix default).
/// (The argument list mirrors `llama_tensor_get_type_impl`'s inputs one to one.)
#[allow(clippy::too_many_arguments)]
pub(super) fn heuristic_type(
    st: &mut State,
    model: &ModelInfo,
    mix: Mix,
    output_tensor_type: Option<GgmlType>,
    name: &str,
    ncols: u64,
    cat: Category,
    mut new_type: GgmlType,
) -> Result<GgmlType, MixError> {
    use GgmlType as T;
    let falcon = model.arch == "falcon";
    let n_gqa = model.n_gqa();
    let n_expert = model.n_expert;

    if cat == Category::Output || (st.has_tied_embeddings && cat == Category::TokenEmbd) {
        if let Some(t) = output_tensor_type {
            new_type = t;
        } else if falcon || !ncols.is_multiple_of(new_type.block_size()) {
            new_type = T::Q8_0;
        } else if new_type != T::Q8_0 {
            new_type = T::Q6_K;
        }
    } else if cat == Category::TokenEmbd {
        // Only the IQ1/IQ2/IQ3_XXS/TQ mixes change an untied token_embd; none of ours does.
    } else if cat.is_attn_v() {
        match mix {
            Mix::Q2_K => new_type = if n_gqa >= 4 { T::Q4_K } else { T::Q3_K },
            Mix::Q2_K_S if n_gqa >= 4 => new_type = T::Q4_K,
            Mix::Q3_K_M => {
                new_type = if st.i_attention_wv < 2 {
                    T::Q5_K
                } else {
                    T::Q4_K
                }
            }
            Mix::Q3_K_L => new_type = T::Q5_K,
            Mix::IQ4_NL | Mix::IQ4_XS if n_gqa >= 4 => new_type = T::Q5_K,
            Mix::Q4_K_M | Mix::Q5_K_M if use_more_bits(st.i_attention_wv, st.n_attention_wv) => {
                new_type = T::Q6_K
            }
            Mix::Q4_K_S if st.i_attention_wv < 4 => new_type = T::Q5_K,
            _ => {}
        }
        if model.is_70b() && (new_type == T::Q3_K || new_type == T::Q4_K) {
            new_type = T::Q5_K;
        }
        if n_expert == 8 {
            new_type = T::Q8_0;
        }
        st.i_attention_wv += 1;
    } else if cat == Category::AttentionK {
        if n_expert == 8 {
            new_type = T::Q8_0;
        }
    } else if cat == Category::AttentionQ {
        // Only the IQ3 mixes change attn_q.
    } else if cat == Category::FfnDown {
        let (i, n) = layer_info(st.i_ffn_down, st.n_ffn, name, model)?;
        match mix {
            Mix::Q2_K => new_type = T::Q3_K,
            Mix::Q2_K_S if i < n / 8 => new_type = T::Q4_K,
            Mix::Q3_K_M => {
                new_type = if i < n / 16 {
                    T::Q5_K
                } else if !falcon || use_more_bits(i, n) {
                    T::Q4_K
                } else {
                    T::Q3_K
                }
            }
            Mix::Q3_K_L => new_type = if falcon { T::Q4_K } else { T::Q5_K },
            Mix::Q4_K_M => {
                if falcon {
                    new_type = if i < n / 16 {
                        T::Q6_K
                    } else if use_more_bits(i, n) {
                        T::Q5_K
                    } else {
                        T::Q4_K
                    };
                } else if use_more_bits(i, n) {
                    new_type = T::Q6_K
                }
            }
            Mix::IQ4_NL | Mix::IQ4_XS if i < n / 8 && !st.has_imatrix => new_type = T::Q5_K,
            Mix::Q5_K_M if use_more_bits(i, n) => new_type = T::Q6_K,
            Mix::Q4_K_S if !falcon && i < n / 8 => new_type = T::Q5_K,
            Mix::Q4_0 if st.has_imatrix && i < n / 8 => new_type = T::Q4_1,
            Mix::Q5_0 if st.has_imatrix && i < n / 8 => new_type = T::Q5_1,
            _ => {}
        }
        st.i_ffn_down += 1;
    } else if cat == Category::AttentionOutput {
        if !falcon {
            if n_expert == 8 {
                if matches!(
                    mix,
                    Mix::Q2_K
                        | Mix::Q3_K_S
                        | Mix::Q3_K_M
                        | Mix::IQ4_NL
                        | Mix::Q4_K_S
                        | Mix::Q4_K_M
                        | Mix::IQ4_XS
                ) {
                    new_type = T::Q5_K;
                }
            } else {
                match mix {
                    Mix::Q2_K => new_type = T::Q3_K,
                    Mix::Q3_K_M => new_type = T::Q4_K,
                    Mix::Q3_K_L => new_type = T::Q5_K,
                    _ => {}
                }
            }
        } else if mix == Mix::Q3_K_L {
            new_type = T::Q4_K;
        }
    } else if cat == Category::AttentionQkv {
        // Unreachable: attn_qkv is attn_v-like and handled above (as in llama.cpp).
    } else if cat == Category::FfnGate {
        layer_info(st.i_ffn_gate, st.n_ffn, name, model)?;
        st.i_ffn_gate += 1;
    } else if cat == Category::FfnUp {
        layer_info(st.i_ffn_up, st.n_ffn, name, model)?;
        st.i_ffn_up += 1;
    }
    Ok(new_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_more_bits_sets() {
        let set = |n: i64| (0..n).filter(|&i| use_more_bits(i, n)).collect::<Vec<_>>();
        let s61 = set(61);
        assert_eq!(s61.len(), 30);
        assert_eq!(&s61[..7], &[0, 1, 2, 3, 4, 5, 6]);
        assert!(s61.contains(&9) && s61.contains(&51) && !s61.contains(&52) && s61.contains(&53));
        let s28 = set(28);
        assert_eq!(s28.len(), 14);
        assert_eq!(s28, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]);
        let s80 = set(80);
        assert_eq!(&s80[..11], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12]);
    }
}
