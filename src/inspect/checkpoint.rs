//! The HF checkpoint view of `r1q inspect`: config, tensors by shard, totals.

use super::render::{bits_per_weight, human_bytes, human_count, shape, table};
use anyhow::{Context, Result};
use formats::checkpoint::{Checkpoint, ModelConfig, TensorMeta};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Prints (or emits as JSON) one checkpoint: its config, tensor table and totals. Opening
/// validates every header, the index and the FP8 scales, so a broken checkpoint fails here.
pub fn inspect(path: &Path, json_out: bool, out: &mut dyn Write) -> Result<()> {
    let ckpt = Checkpoint::open(path)?;
    ckpt.validate()?;
    let raw_config = match ckpt.config_path() {
        Some(p) => Some(read_json(p)?),
        None => None,
    };
    let summary = Summary::of(&ckpt);
    if json_out {
        let tensors: Vec<Value> = ckpt
            .tensors()
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "dtype": t.dtype.to_string(),
                    "shape": t.shape,
                    "bytes": t.len,
                    "file": file_name(&t.file),
                })
            })
            .collect();
        let doc = json!({
            "format": "safetensors",
            "path": path.display().to_string(),
            "model_type": ckpt.config().map(ModelConfig::model_type),
            "config": raw_config,
            "shards": ckpt.shard_files().iter().map(|p| file_name(p)).collect::<Vec<_>>(),
            "mtp_layers": summary.mtp_layers,
            "mtp_tensors": summary.mtp_tensors,
            "tensors": tensors,
            "totals": {
                "tensors": ckpt.tensors().len(),
                "parameters": summary.params,
                "bytes": summary.bytes,
                "bits_per_weight": bits_per_weight(summary.bytes, summary.params),
            },
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }

    writeln!(
        out,
        "{}: safetensors checkpoint, {} shard(s), {} tensors",
        path.display(),
        ckpt.shard_files().len(),
        ckpt.tensors().len()
    )?;
    if let (Some(cfg), Some(Value::Object(raw))) = (ckpt.config(), &raw_config) {
        writeln!(out, "\nconfig.json ({}):", cfg.model_type())?;
        let rows: Vec<Vec<String>> = raw
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect();
        write!(out, "{}", table(&["key", "value"], &rows, &[false, false]))?;
    }
    writeln!(out, "\ntensors:")?;
    let rows: Vec<Vec<String>> = ckpt
        .tensors()
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.dtype.to_string(),
                shape(&t.shape),
                t.len.to_string(),
                file_name(&t.file),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        table(
            &["name", "dtype", "shape", "bytes", "shard"],
            &rows,
            &[false, false, false, true, false]
        )
    )?;
    writeln!(out, "\nby dtype:")?;
    let rows: Vec<Vec<String>> = summary
        .by_dtype
        .iter()
        .map(|(d, (n, p, b))| vec![d.clone(), n.to_string(), human_count(*p), human_bytes(*b)])
        .collect();
    write!(
        out,
        "{}",
        table(
            &["dtype", "tensors", "elements", "bytes"],
            &rows,
            &[false, true, true, true]
        )
    )?;
    if summary.mtp_layers > 0 {
        writeln!(out,
            "\nmulti-token-prediction layers: {} ({} tensors); llama.cpp does not use them and convert skips them",
            summary.mtp_layers, summary.mtp_tensors
        )?;
    }
    writeln!(out,
        "\ntotal: {} tensors, {} parameters ({}) without block scales, {} ({} bytes), {:.4} bits per weight",
        ckpt.tensors().len(),
        human_count(summary.params),
        summary.params,
        human_bytes(summary.bytes),
        summary.bytes,
        bits_per_weight(summary.bytes, summary.params)
    )?;
    Ok(())
}

/// Totals of a checkpoint, computed once for both output forms.
struct Summary {
    /// Elements of all tensors except FP8 block scales (`*_scale_inv`), which are not weights.
    params: u64,
    /// Bytes of all tensors, scales included: what the checkpoint costs on disk.
    bytes: u64,
    /// Count, elements and bytes per dtype name.
    by_dtype: BTreeMap<String, (u64, u64, u64)>,
    /// Layers with index ≥ num_hidden_layers (DeepSeek's multi-token-prediction modules).
    mtp_layers: usize,
    /// Tensors inside those layers.
    mtp_tensors: usize,
}

impl Summary {
    fn of(ckpt: &Checkpoint) -> Summary {
        let mut by_dtype: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        let (mut params, mut bytes) = (0u64, 0u64);
        for t in ckpt.tensors() {
            let n = t.numel() as u64;
            let e = by_dtype.entry(t.dtype.to_string()).or_default();
            e.0 += 1;
            e.1 += n;
            e.2 += t.len;
            bytes += t.len;
            if !t.name.ends_with("_scale_inv") {
                params += n;
            }
        }
        let n_layers = match ckpt.config() {
            Some(ModelConfig::DeepseekV3(c)) => Some(c.num_hidden_layers),
            _ => None,
        };
        let mut mtp = std::collections::BTreeSet::new();
        let mut mtp_tensors = 0;
        if let Some(n_layers) = n_layers {
            for t in ckpt.tensors() {
                if let Some(layer) = layer_index(t).filter(|&l| l >= n_layers) {
                    mtp.insert(layer);
                    mtp_tensors += 1;
                }
            }
        }
        Summary {
            params,
            bytes,
            by_dtype,
            mtp_layers: mtp.len(),
            mtp_tensors,
        }
    }
}

/// The layer number of `model.layers.N.…`, if the tensor belongs to a layer.
fn layer_index(t: &TensorMeta) -> Option<usize> {
    let rest = t.name.strip_prefix("model.layers.")?;
    rest.split('.').next()?.parse().ok()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}
