//! Per-tensor statistics of an importance matrix: llama-imatrix's `--show-statistics`
//! (`compute_statistics`, `compute_cossim`, `show_statistics` in `tools/imatrix/imatrix.cpp`),
//! same columns, same f32 arithmetic, same order, same per-layer weighted averages.
//!
//! Why: before quantizing a 671B model with an imatrix, one wants to see that every tensor got
//! activations, which layers dominate, and whether a layer's statistics look like its
//! neighbours' (cosine similarity to the same tensor one block earlier).
//!
//! The statistic of a column is its mean squared activation, Σx²/count per slice (slices with
//! count 0 are left out, like llama-imatrix); for a legacy `.dat` entry value/ncall.

use std::collections::BTreeMap;

use formats::imatrix::{Imatrix, ImatrixEntry};

/// The statistics of one tensor (one row of the table).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorStats {
    /// The weight tensor's name (`blk.3.ffn_down_exps.weight`).
    pub tensor: String,
    /// The block index, `None` for tensors outside `blk.*` (`output.weight`).
    pub layer: Option<usize>,
    /// The short name llama-imatrix prints (`ffn_down_exps`).
    pub short: String,
    /// Σ over columns of the mean squared activation (`Σ(Act²)`).
    pub total: f32,
    /// Smallest column value.
    pub min: f32,
    /// Largest column value.
    pub max: f32,
    /// Mean column value (μ).
    pub mean: f32,
    /// Standard deviation of the column values (σ).
    pub stddev: f32,
    /// Fraction of columns above 1e-5 (`% Active` / 100).
    pub active: f32,
    /// Columns counted (N): all columns of the slices with a non-zero count.
    pub elements: usize,
    /// Entropy (bits) of the column values normalised to sum 1.
    pub entropy: f32,
    /// Fraction of columns more than one σ above the mean (`ZD`).
    pub zd: f32,
    /// Cosine similarity of the raw sums with the same tensor in the previous block (0 without
    /// one).
    pub cossim: f32,
    /// The entry's raw values (for the cosine similarity).
    raw: Vec<f32>,
}

impl TensorStats {
    /// Entropy as a percentage of its maximum log2(N) (`E (norm)`).
    pub fn entropy_norm(&self) -> f32 {
        if self.elements > 0 {
            100.0 * (self.entropy / (self.elements as f32).log2())
        } else {
            0.0
        }
    }
}

/// Per-layer averages weighted by N (`μΣ(Act²)`, `μZD`, `μCosSim`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerStats {
    /// The block index.
    pub layer: usize,
    /// Σ N·Σ(Act²) / Σ N.
    pub total: f32,
    /// Σ N·ZD / Σ N.
    pub zd: f32,
    /// Σ N·CosSim / Σ N.
    pub cossim: f32,
}

/// llama-imatrix's `process_tensor_name`: the layer after `blk`, the component before `weight`.
fn split_name(name: &str) -> (Option<usize>, String) {
    let parts: Vec<&str> = name.split('.').collect();
    let layer = parts
        .iter()
        .position(|p| *p == "blk")
        .and_then(|i| parts.get(i + 1))
        .and_then(|l| l.parse().ok());
    let short = parts
        .iter()
        .position(|p| *p == "weight")
        .filter(|&i| i > 0)
        .and_then(|i| parts.get(i - 1))
        .map_or_else(|| name.to_string(), |s| s.to_string());
    (layer, short)
}

/// The column statistics of one entry (`compute_statistics`); `None` when every slice has count
/// 0 (llama-imatrix then skips the tensor with a message).
fn tensor_stats(name: &str, e: &ImatrixEntry) -> Option<TensorStats> {
    let acts: Vec<f32> = match e.ncall {
        Some(_) => e.weights(),
        None => {
            let n = e.counts.len().max(1);
            let per = e.in_sum2.len() / n;
            let mut v = Vec::with_capacity(e.in_sum2.len());
            for (j, c) in e.counts.iter().enumerate() {
                let count = c.round() as i64;
                if count == 0 {
                    continue;
                }
                if let Some(src) = e.in_sum2.get(j * per..(j + 1) * per) {
                    v.extend(src.iter().map(|x| x / count as f32));
                }
            }
            v
        }
    };
    if acts.is_empty() {
        return None;
    }
    let n = acts.len() as f32;
    let total: f32 = acts.iter().fold(0.0f32, |a, &x| a + x);
    let max = acts.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = acts.iter().copied().fold(f32::INFINITY, f32::min);
    let mean = total / n;
    let sq: f32 = acts.iter().fold(0.0f32, |a, &x| a + x * x);
    let var = sq / n - mean * mean;
    let stddev = var.max(0.0).sqrt();
    let inactive = acts.iter().filter(|v| v.abs() <= 1e-5).count();
    let active = 1.0 - inactive as f32 / n;
    let mut entropy = 0.0f32;
    if total > 0.0 {
        for &a in &acts {
            let p = a / total;
            if p > 0.0 {
                entropy -= p * p.log2();
            }
        }
    }
    let mut z = 0usize;
    if stddev > 0.0 {
        z = acts.iter().filter(|&&a| (a - mean) / stddev > 1.0).count();
    }
    let (layer, short) = split_name(name);
    Some(TensorStats {
        tensor: name.to_string(),
        layer,
        short,
        total,
        min,
        max,
        mean,
        stddev,
        active,
        elements: acts.len(),
        entropy,
        zd: z as f32 / n,
        cossim: 0.0,
        raw: e.in_sum2.clone(),
    })
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |s, (x, y)| s + x * y)
}

/// Every tensor's statistics, sorted like llama-imatrix (by short name, then by Σ(Act²)
/// descending), and the per-layer weighted averages by layer. Tensors whose slices all have
/// count 0 are left out, as llama-imatrix does.
pub fn compute(im: &Imatrix) -> (Vec<TensorStats>, Vec<LayerStats>) {
    let mut ts: Vec<TensorStats> = im
        .entries
        .iter()
        .filter_map(|(n, e)| tensor_stats(n, e))
        .collect();
    // compute_cossim: against blk.(L−1) of the same tensor, on the raw sums.
    let by_name: BTreeMap<String, usize> = ts
        .iter()
        .enumerate()
        .map(|(i, t)| (t.tensor.clone(), i))
        .collect();
    let sims: Vec<f32> = ts
        .iter()
        .map(|t| {
            let Some(layer) = t.layer.filter(|&l| l > 0) else {
                return 0.0;
            };
            let prev =
                t.tensor
                    .replacen(&format!("blk.{layer}."), &format!("blk.{}.", layer - 1), 1);
            let Some(p) = by_name.get(&prev).and_then(|&i| ts.get(i)) else {
                return 0.0;
            };
            let dp = dot(&t.raw, &p.raw);
            let a = dot(&t.raw, &t.raw).sqrt();
            let b = dot(&p.raw, &p.raw).sqrt();
            dp / (a * b)
        })
        .collect();
    for (t, s) in ts.iter_mut().zip(sims) {
        t.cossim = s;
    }
    ts.sort_by(|a, b| {
        a.short.cmp(&b.short).then(
            b.total
                .partial_cmp(&a.total)
                .unwrap_or(std::cmp::Ordering::Equal),
        )
    });
    let mut ws: BTreeMap<usize, (f32, f32, f32, usize)> = BTreeMap::new();
    for t in &ts {
        let Some(layer) = t.layer else { continue };
        let w = ws.entry(layer).or_default();
        let n = t.elements as f32;
        w.0 += n * t.total;
        w.1 += n * t.zd;
        w.2 += n * t.cossim;
        w.3 += t.elements;
    }
    let layers = ws
        .into_iter()
        .filter(|(_, w)| w.3 > 0)
        .map(|(layer, (b, z, c, n))| LayerStats {
            layer,
            total: b / n as f32,
            zd: z / n as f32,
            cossim: c / n as f32,
        })
        .collect();
    (ts, layers)
}

/// The table llama-imatrix prints, tab-separated with its printf widths, then the per-layer
/// averages.
pub fn render(path: &str, tensors: &[TensorStats], layers: &[LayerStats]) -> String {
    let mut s = format!(
        "Computing statistics for {path} ({} tensors)\n\n",
        tensors.len()
    );
    s.push_str(
        " Layer\t       Tensor\t          Σ(Act²)\t  Min\t            Max\t           μ\t   σ\t % Active\tN\t   Entropy\tE (norm)\tZD\t  CosSim\n",
    );
    s.push_str(&"=".repeat(169));
    s.push('\n');
    for t in tensors {
        let layer = t.layer.map_or_else(|| "-".to_string(), |l| l.to_string());
        s.push_str(&format!(
            "{layer:>5}\t{:<20}\t{:>10.2}\t{:>8.4}\t{:>11.4}\t{:>6.2}\t{:>6.2}\t{:>8.2}%\t{:>6}\t{:>10.4}\t{:>6.2}%\t{:>10.2}%\t{:>8.4}\n",
            t.short,
            t.total,
            t.min,
            t.max,
            t.mean,
            t.stddev,
            t.active * 100.0,
            t.elements,
            t.entropy,
            t.entropy_norm(),
            100.0 * t.zd,
            t.cossim
        ));
    }
    s.push_str(&format!(
        "\nComputing weighted average statistics per layer ({} layers)\n\n",
        layers.len()
    ));
    s.push_str("  Layer\t     μΣ(Act²)\t      μZD\tμCosSim\n");
    s.push_str(&"=".repeat(48));
    s.push('\n');
    for l in layers {
        s.push_str(&format!(
            "{:>5}\t{:>14.2}\t{:>10.4}%\t{:>6.4}\n",
            l.layer,
            l.total,
            100.0 * l.zd,
            l.cossim
        ));
    }
    s
}
