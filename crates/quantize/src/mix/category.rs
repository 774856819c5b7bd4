//! Which tensors may be quantized (`tensor_allows_quantization`, REFERENCE §3.2), the broad
//! category of each name (`tensor_get_category`, §3.3) and the loader's processing order (§3.1).

/// The category llama-quantize puts a tensor name in, by substring tests in a fixed order.
///
/// Exists because the heuristics key on it, not on exact names: DeepSeek's `attn_k_b` is OTHER,
/// `ffn_down_exps` is FFN_DOWN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// `output.weight`.
    Output,
    /// `token_embd.weight`, `per_layer_token_embd.weight`.
    TokenEmbd,
    /// `attn_qkv.weight`.
    AttentionQkv,
    /// `attn_kv_b.weight`.
    AttentionKvB,
    /// `attn_v.weight`.
    AttentionV,
    /// `attn_k.weight`.
    AttentionK,
    /// `attn_q.weight`.
    AttentionQ,
    /// `attn_output.weight`.
    AttentionOutput,
    /// `ffn_up*`.
    FfnUp,
    /// `ffn_gate*`.
    FfnGate,
    /// `ffn_down*`.
    FfnDown,
    /// Anything else.
    Other,
}

impl Category {
    /// The category of `name` (`tensor_get_category`).
    pub fn of(name: &str) -> Category {
        if name == "output.weight" {
            return Category::Output;
        }
        if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            return Category::TokenEmbd;
        }
        const ORDER: [(&str, Category); 9] = [
            ("attn_qkv.weight", Category::AttentionQkv),
            ("attn_kv_b.weight", Category::AttentionKvB),
            ("attn_v.weight", Category::AttentionV),
            ("attn_k.weight", Category::AttentionK),
            ("attn_q.weight", Category::AttentionQ),
            ("attn_output.weight", Category::AttentionOutput),
            ("ffn_up", Category::FfnUp),
            ("ffn_gate", Category::FfnGate),
            ("ffn_down", Category::FfnDown),
        ];
        ORDER
            .iter()
            .find(|(s, _)| name.contains(s))
            .map_or(Category::Other, |(_, c)| *c)
    }

    /// Whether the category counts as "attn_v-like" (`category_is_attn_v`).
    pub fn is_attn_v(self) -> bool {
        matches!(
            self,
            Category::AttentionV | Category::AttentionQkv | Category::AttentionKvB
        )
    }
}

/// Whether llama-quantize may change this tensor's type (`tensor_allows_quantization`), for the
/// architectures r1q handles (the GLM5-next list is applied only to `glm5-next`-like archs, which
/// r1q never sees, so it is left out; the other arch-independent exclusions are all here).
pub fn allows_quantization(
    arch: &str,
    name: &str,
    n_dims: usize,
    leave_output_tensor: bool,
) -> bool {
    if n_dims < 2 || !name.ends_with("weight") {
        return false;
    }
    if leave_output_tensor && name == "output.weight" {
        return false;
    }
    // LLM_TN(arch)(POS_EMBD / TOKEN_TYPES, "weight") are these names for every arch.
    if name == "position_embd.weight" || name == "token_types.weight" {
        return false;
    }
    let _ = arch;
    const EXCLUDED: &[&str] = &[
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    !EXCLUDED.iter().any(|s| name.contains(s))
}

/// `sscanf(name, "blk.%d.", &layer)`: the layer number after a leading `blk.` (optional
/// whitespace and sign, then digits), `None` when there is none.
pub fn parse_block(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("blk.")?;
    let rest = rest.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, rest) = match rest.as_bytes().first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    let digits: &str = &rest[..rest.bytes().take_while(u8::is_ascii_digit).count()];
    if digits.is_empty() {
        return None;
    }
    // Saturate instead of overflowing (sscanf's behaviour there is undefined anyway).
    let v = digits.parse::<i64>().unwrap_or(i64::MAX);
    Some(if neg { -v } else { v })
}

/// The loader's `weights_map` order (`weight_name_comparer`): by block number (non-block
/// tensors count as −1 and come first), then by name, bytewise.
pub fn processing_order<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
    let names: Vec<&str> = names.into_iter().collect();
    let mut idx: Vec<usize> = (0..names.len()).collect();
    let key = |i: usize| {
        let n = names[i];
        // The C comparator stores into an int: clamp to its range so the order matches.
        let layer =
            parse_block(n).map_or(-1, |l| l.clamp(i64::from(i32::MIN), i64::from(i32::MAX)));
        (layer, n)
    };
    idx.sort_by(|&a, &b| key(a).cmp(&key(b)));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_follow_substring_order() {
        assert_eq!(Category::of("output.weight"), Category::Output);
        assert_eq!(Category::of("token_embd.weight"), Category::TokenEmbd);
        assert_eq!(
            Category::of("blk.0.attn_qkv.weight"),
            Category::AttentionQkv
        );
        assert_eq!(
            Category::of("blk.0.attn_kv_b.weight"),
            Category::AttentionKvB
        );
        assert_eq!(Category::of("blk.0.attn_v.weight"), Category::AttentionV);
        assert_eq!(Category::of("blk.0.attn_k.weight"), Category::AttentionK);
        assert_eq!(Category::of("blk.0.attn_q.weight"), Category::AttentionQ);
        assert_eq!(
            Category::of("blk.0.attn_output.weight"),
            Category::AttentionOutput
        );
        // DeepSeek's MLA tensors are OTHER
        for n in [
            "attn_q_a",
            "attn_q_b",
            "attn_kv_a_mqa",
            "attn_k_b",
            "attn_v_b",
        ] {
            assert_eq!(
                Category::of(&format!("blk.3.{n}.weight")),
                Category::Other,
                "{n}"
            );
        }
        assert_eq!(Category::of("blk.3.ffn_up_exps.weight"), Category::FfnUp);
        assert_eq!(
            Category::of("blk.3.ffn_gate_shexp.weight"),
            Category::FfnGate
        );
        assert_eq!(
            Category::of("blk.3.ffn_down_exps.weight"),
            Category::FfnDown
        );
        // ffn_gate_inp is FFN_GATE by category (it is excluded from quantization elsewhere)
        assert_eq!(Category::of("blk.3.ffn_gate_inp.weight"), Category::FfnGate);
        assert!(Category::AttentionKvB.is_attn_v() && !Category::AttentionK.is_attn_v());
    }

    #[test]
    fn unquantized_set() {
        let q = |n: &str, d| allows_quantization("deepseek2", n, d, false);
        assert!(q("blk.0.attn_q_a.weight", 2));
        assert!(q("blk.0.ffn_down_exps.weight", 3));
        assert!(!q("blk.0.attn_norm.weight", 1));
        assert!(!q("blk.0.attn_q_a_norm.weight", 2));
        assert!(!q("blk.0.ffn_gate_inp.weight", 2));
        assert!(!q("blk.0.exp_probs_b.bias", 1));
        assert!(!q("blk.0.attn_q.bias", 2));
        assert!(!q("rope_freqs.weight", 1));
        assert!(q("output.weight", 2));
        assert!(!allows_quantization("llama", "output.weight", 2, true));
    }

    #[test]
    fn block_numbers_and_order() {
        assert_eq!(parse_block("blk.12.ffn_up.weight"), Some(12));
        assert_eq!(parse_block("blk.x.ffn_up.weight"), None);
        assert_eq!(parse_block("output.weight"), None);
        let names = [
            "blk.10.a.weight",
            "blk.2.b.weight",
            "output.weight",
            "blk.2.a.weight",
            "token_embd.weight",
        ];
        let order: Vec<&str> = processing_order(names)
            .into_iter()
            .map(|i| names[i])
            .collect();
        assert_eq!(
            order,
            [
                "output.weight",
                "token_embd.weight",
                "blk.2.a.weight",
                "blk.2.b.weight",
                "blk.10.a.weight"
            ]
        );
    }
}
