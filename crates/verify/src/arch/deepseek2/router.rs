//! MoE routing for `deepseek2` (REFERENCE §5.5, llama.cpp `build_moe_ffn`): which experts each
//! token goes to and with what weight.
//!
//! DeepSeek-V3/R1 scores experts with a sigmoid, adds `exp_probs_b` (the checkpoint's
//! `e_score_correction_bias`) **for selection only**, restricts the choice to the best
//! `expert_group_used_count` groups (a group's score is the sum of its two best biased scores), picks
//! the top `expert_used_count` experts, and weights them by their **unbiased** scores, normalised to
//! sum 1 and multiplied by `expert_weights_scale`.
//!
//! Ties: ggml sorts with `std::sort` (not stable), so its choice among exactly equal scores is
//! unspecified; here the lower index always wins, which makes the result deterministic.

/// The floor of the selected weights' sum before normalising: 2⁻¹⁴ = 6.103515625e-5, the
/// smallest normal f16, which llama.cpp clamps to (HF adds 1e-20 instead).
pub const MIN_WEIGHT_SUM: f32 = 1.0 / 16384.0;

/// How router logits become expert probabilities (`deepseek2.expert_gating_func`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gating {
    /// `1`: softmax over all experts (DeepSeek-V2, and llama.cpp's default when the key is absent).
    Softmax,
    /// `2`: independent sigmoid per expert (DeepSeek-V3/R1).
    Sigmoid,
}

impl Gating {
    /// The GGUF code → gating function; `None` for codes this engine does not implement.
    pub fn from_code(code: u32) -> Option<Gating> {
        match code {
            1 => Some(Gating::Softmax),
            2 => Some(Gating::Sigmoid),
            _ => None,
        }
    }
}

/// Everything the router needs besides the logits and bias; copied from the model metadata.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterParams {
    /// Number of routed experts (`expert_count`).
    pub n_expert: usize,
    /// Experts chosen per token (`expert_used_count`).
    pub n_used: usize,
    /// Expert groups (`expert_group_count`); ≤ 1 disables the group limit.
    pub n_groups: usize,
    /// Groups kept per token (`expert_group_used_count`).
    pub n_groups_used: usize,
    /// Scoring function.
    pub gating: Gating,
    /// Divide the chosen weights by their sum (`expert_weights_norm`).
    pub norm_weights: bool,
    /// Multiply the weights by this (`expert_weights_scale`); 0 and 1 both mean "no scaling", as
    /// in llama.cpp.
    pub weights_scale: f32,
}

impl RouterParams {
    /// Checks the combination is one the router can evaluate without indexing past a group or
    /// choosing a masked-out expert; the message names the offending value.
    pub fn validate(&self) -> Result<(), String> {
        if self.n_expert == 0 || self.n_used == 0 || self.n_used > self.n_expert {
            return Err(format!(
                "expert_used_count {} must be in 1..={} (expert_count)",
                self.n_used, self.n_expert
            ));
        }
        if self.n_groups > 1 {
            if !self.n_expert.is_multiple_of(self.n_groups) {
                return Err(format!(
                    "expert_count {} is not a multiple of expert_group_count {}",
                    self.n_expert, self.n_groups
                ));
            }
            let per_group = self.n_expert / self.n_groups;
            if per_group < 2 {
                return Err(format!(
                    "{per_group} expert(s) per group: the group score needs at least 2"
                ));
            }
            if self.n_groups_used == 0 || self.n_groups_used > self.n_groups {
                return Err(format!(
                    "expert_group_used_count {} must be in 1..={} (expert_group_count)",
                    self.n_groups_used, self.n_groups
                ));
            }
            if self.n_used > self.n_groups_used * per_group {
                return Err(format!(
                    "expert_used_count {} exceeds the {} experts of {} kept groups",
                    self.n_used,
                    self.n_groups_used * per_group,
                    self.n_groups_used
                ));
            }
        }
        Ok(())
    }
}

/// The routing decision for a batch of tokens: `n_used` (expert, weight) pairs per token, in
/// descending order of biased score.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Experts per token (`n_used`).
    pub n_used: usize,
    /// `tokens · n_used` expert ids, token after token.
    pub experts: Vec<u32>,
    /// `tokens · n_used` weights, aligned with `experts`.
    pub weights: Vec<f32>,
}

impl Routing {
    /// Number of tokens routed.
    pub fn tokens(&self) -> usize {
        self.experts.len().checked_div(self.n_used).unwrap_or(0)
    }

    /// For each expert, the (token, weight) pairs routed to it, tokens ascending: the gather lists
    /// of grouped expert evaluation.
    pub fn by_expert(&self, n_expert: usize) -> Vec<Vec<(usize, f32)>> {
        let mut lists = vec![Vec::new(); n_expert];
        for (i, (&e, &w)) in self.experts.iter().zip(&self.weights).enumerate() {
            if let Some(list) = lists.get_mut(e as usize) {
                list.push((i / self.n_used.max(1), w));
            }
        }
        lists
    }
}

/// Indices of the `k` largest values, largest first, ties to the lower index (a strict total
/// order, so the result never depends on the sort algorithm). NaN sorts last.
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let key = |i: &usize| values.get(*i).copied().unwrap_or(f32::NEG_INFINITY);
    idx.sort_by(|a, b| {
        let (va, vb) = (key(a), key(b));
        match vb.partial_cmp(&va) {
            Some(std::cmp::Ordering::Equal) | None => {
                // NaN last, then the lower index first.
                va.is_nan().cmp(&vb.is_nan()).then(a.cmp(b))
            }
            Some(o) => o,
        }
    });
    idx.truncate(k);
    idx
}

/// ggml's `ggml_vec_sigmoid_f32`: `1 / (1 + e^{-x})` in f32.
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Routes each row of `logits` (`tokens × n_expert`, the router matmul's output). `bias`, when
/// present, has `n_expert` values added to the probabilities for selection only.
///
/// Panics never: rows are read with their declared width; the caller validated `params`
/// ([`RouterParams::validate`]) and the bias length at load.
pub fn route(
    logits: &[f32],
    tokens: usize,
    bias: Option<&[f32]>,
    params: &RouterParams,
) -> Routing {
    let n = params.n_expert;
    let k = params.n_used;
    let mut experts = Vec::with_capacity(tokens * k);
    let mut weights = Vec::with_capacity(tokens * k);
    let mut probs = vec![0f32; n];
    let mut sel = vec![0f32; n];
    for row in logits.chunks_exact(n).take(tokens) {
        match params.gating {
            Gating::Sigmoid => {
                for (p, &l) in probs.iter_mut().zip(row) {
                    *p = sigmoid(l);
                }
            }
            Gating::Softmax => {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f64;
                for (p, &l) in probs.iter_mut().zip(row) {
                    *p = (l - max).exp();
                    sum += f64::from(*p);
                }
                let inv = (1.0 / sum) as f32;
                for p in probs.iter_mut() {
                    *p *= inv;
                }
            }
        }
        sel.copy_from_slice(&probs);
        if let Some(b) = bias {
            for (s, &b) in sel.iter_mut().zip(b) {
                *s += b;
            }
        }
        if params.n_groups > 1 {
            let per_group = n / params.n_groups;
            let group_scores: Vec<f32> = sel
                .chunks_exact(per_group)
                .map(|g| top_k(g, 2).iter().map(|&i| g[i]).sum())
                .collect();
            let mut keep = vec![false; params.n_groups];
            for g in top_k(&group_scores, params.n_groups_used) {
                keep[g] = true;
            }
            for (g, chunk) in sel.chunks_exact_mut(per_group).enumerate() {
                if !keep[g] {
                    chunk.fill(f32::NEG_INFINITY);
                }
            }
        }
        let chosen = top_k(&sel, k);
        let mut w: Vec<f32> = chosen.iter().map(|&e| probs[e]).collect();
        if params.norm_weights {
            let sum: f32 = w.iter().sum();
            let sum = sum.max(MIN_WEIGHT_SUM);
            for x in w.iter_mut() {
                *x /= sum;
            }
        }
        if params.weights_scale != 0.0 && params.weights_scale != 1.0 {
            for x in w.iter_mut() {
                *x *= params.weights_scale;
            }
        }
        experts.extend(chosen.iter().map(|&e| e as u32));
        weights.extend(w);
    }
    Routing {
        n_used: k,
        experts,
        weights,
    }
}
