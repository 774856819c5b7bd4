//! `general.*` keys as llama.cpp's converter writes them (REFERENCE §1.5), and r1q's own
//! provenance keys.
//!
//! Exists so every architecture gets the same header (`general.architecture` first, then type,
//! name and size label as `gguf-py`'s `Metadata.set_gguf_meta_model` writes them), the same
//! `general.file_type` numbering and the same trailer naming the source and the r1q version.
//!
//! Deliberate differences from `convert_hf_to_gguf.py`: no model-card (README) metadata, no
//! `_name_or_path` heuristics, and `general.size_label` is always computed from the parameter
//! count rather than parsed from the directory name (`…-7B` → `7B` there).

use std::path::Path;

use formats::ggml_type::GgmlType;
use formats::gguf::GgufValue;

use crate::plan::PlannedTensor;

/// Prefix of r1q's own keys, which come after every key llama.cpp itself writes.
pub const R1Q_PREFIX: &str = "r1q.";

/// `GGML_QNT_VERSION`.
pub const QUANTIZATION_VERSION: u32 = 2;

/// `llama_ftype` of a GGUF whose weight matrices are `outtype` (REFERENCE §1.5 table); `None`
/// for types with no "mostly" ftype.
pub fn llama_ftype(outtype: GgmlType) -> Option<u32> {
    Some(match outtype {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::BF16 => 32,
        _ => return None,
    })
}

/// `general.file_type` (u32) for `outtype`; 1024 (GUESSED) never arises for the supported
/// outtypes, which all have an ftype.
pub fn file_type(outtype: GgmlType) -> (String, GgufValue) {
    (
        "general.file_type".into(),
        GgufValue::U32(llama_ftype(outtype).unwrap_or(1024)),
    )
}

/// `general.quantization_version` = 2.
pub fn quantization_version() -> (String, GgufValue) {
    (
        "general.quantization_version".into(),
        GgufValue::U32(QUANTIZATION_VERSION),
    )
}

/// The leading keys: `general.architecture`, `general.type`, `general.name`,
/// `general.size_label` (when there are parameters).
pub fn header(arch: &str, name: &str, size_label: Option<String>) -> Vec<(String, GgufValue)> {
    let mut kv = vec![
        (
            "general.architecture".to_string(),
            GgufValue::String(arch.to_string()),
        ),
        (
            "general.type".to_string(),
            GgufValue::String("model".into()),
        ),
        (
            "general.name".to_string(),
            GgufValue::String(name.to_string()),
        ),
    ];
    if let Some(label) = size_label {
        kv.push(("general.size_label".to_string(), GgufValue::String(label)));
    }
    kv
}

/// `general.sampling.*` from `generation_config.json` in `dir`, as gguf-py's `Metadata.load` +
/// `set_gguf_meta_model` write them (in that order, between `general.type` and `general.name`):
/// llama.cpp's `common` takes them as the default sampling parameters (R1's recommended
/// temperature 0.6 and top_p 0.95). A missing or unparsable file, a null, or a value of the wrong
/// JSON kind gives no key, as the Python converter writes none for a missing or invalid file.
pub fn sampling(dir: &Path) -> Vec<(String, GgufValue)> {
    let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Object(cfg)) = serde_json::from_str::<serde_json::Value>(&text)
    else {
        return Vec::new();
    };
    enum Kind {
        Str,
        I32,
        F32,
    }
    // (gguf key suffix, generation_config.json fields in order of preference, value kind)
    const KEYS: [(&str, &[&str], Kind); 12] = [
        ("sequence", &["sequence"], Kind::Str),
        ("top_k", &["top_k"], Kind::I32),
        ("top_p", &["top_p"], Kind::F32),
        ("min_p", &["min_p"], Kind::F32),
        ("xtc_probability", &["xtc_probability"], Kind::F32),
        ("xtc_threshold", &["xtc_threshold"], Kind::F32),
        ("temp", &["temperature"], Kind::F32),
        ("penalty_last_n", &["penalty_last_n"], Kind::I32),
        (
            "penalty_repeat",
            &["penalty_repeat", "repetition_penalty"],
            Kind::F32,
        ),
        ("mirostat", &["mirostat"], Kind::I32),
        ("mirostat_tau", &["mirostat_tau"], Kind::F32),
        ("mirostat_eta", &["mirostat_eta"], Kind::F32),
    ];
    let mut kv = Vec::new();
    for (suffix, fields, kind) in &KEYS {
        let Some(v) = fields
            .iter()
            .find_map(|f| cfg.get(*f).filter(|v| !v.is_null()))
        else {
            continue;
        };
        let value = match kind {
            Kind::Str => v.as_str().map(|s| GgufValue::String(s.to_string())),
            Kind::I32 => v
                .as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .map(GgufValue::I32),
            Kind::F32 => v.as_f64().map(|f| GgufValue::F32(f as f32)),
        };
        if let Some(value) = value {
            kv.push((format!("general.sampling.{suffix}"), value));
        }
    }
    kv
}

/// r1q's trailer: `r1q.version`, `r1q.source.path`, `r1q.source.model_type`, and
/// `r1q.source.mtp_tensors_skipped` (u32) when MTP tensors were dropped, so `inspect` on the
/// GGUF can say what was left out.
pub fn provenance(dir: &Path, model_type: &str, mtp_tensors: usize) -> Vec<(String, GgufValue)> {
    let mut kv = vec![
        (
            "r1q.version".to_string(),
            GgufValue::String(env!("CARGO_PKG_VERSION").to_string()),
        ),
        (
            "r1q.source.path".to_string(),
            GgufValue::String(dir.display().to_string()),
        ),
        (
            "r1q.source.model_type".to_string(),
            GgufValue::String(model_type.to_string()),
        ),
    ];
    if mtp_tensors > 0 {
        kv.push((
            "r1q.source.mtp_tensors_skipped".to_string(),
            GgufValue::U32(u32::try_from(mtp_tensors).unwrap_or(u32::MAX)),
        ));
    }
    kv
}

/// `general.name` from the checkpoint directory's name, as `gguf-py`'s `Metadata.id_to_title`
/// does: `-` becomes a space, all-lowercase words are title-cased unless they look like a
/// version (`v3`, `v2.5`) or start with a digit (`7b`). `DeepSeek-R1` → `DeepSeek R1`.
pub fn name_from_dir(dir: &Path) -> String {
    let id = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if id.is_empty() {
        // llama.cpp falls back to the directory name; with none, its writer's default name.
        return "ggml-model".into();
    }
    if id.contains(' ') {
        // A human sentence, used as is (`get_model_id_components`).
        return id;
    }
    id_to_title(&id)
}

/// `Metadata.id_to_title`.
pub fn id_to_title(id: &str) -> String {
    id.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            if is_lower(w) && !looks_like_version_or_number(w) {
                py_title(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Python's `str.islower()`: at least one cased character and no uppercase ones.
fn is_lower(w: &str) -> bool {
    w.chars().any(|c| c.is_lowercase()) && !w.chars().any(|c| c.is_uppercase())
}

/// `^(v\d+(?:\.\d+)*|\d.*)$`.
fn looks_like_version_or_number(w: &str) -> bool {
    let mut chars = w.chars();
    match chars.next() {
        Some(c) if c.is_ascii_digit() => true,
        Some('v') => {
            let rest = chars.as_str();
            !rest.is_empty()
                && rest
                    .split('.')
                    .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()))
        }
        _ => false,
    }
}

/// Python's `str.title()`: uppercase a letter that follows a non-letter, lowercase the rest.
fn py_title(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    let mut prev_letter = false;
    for c in w.chars() {
        if c.is_alphabetic() {
            if prev_letter {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            prev_letter = true;
        } else {
            out.push(c);
            prev_letter = false;
        }
    }
    out
}

/// `general.size_label` from the output tensors, as `GGUFWriter.get_total_parameter_count` +
/// `gguf.utility.size_label` compute it: dense models `"{total}"` (e.g. `8.0B`), MoE models
/// `"{experts}x{shared + one expert}"` where `_exps` tensors count one expert's slice
/// (DeepSeek-R1: `256x20B`). `None` for a model without parameters.
pub fn size_label(tensors: &[PlannedTensor]) -> Option<String> {
    let mut total: u64 = 0;
    let mut shared: u64 = 0;
    let mut expert: u64 = 0;
    let mut expert_sum: u64 = 0;
    let mut n_expert_tensors: u64 = 0;
    for t in tensors {
        let size: u64 = t.dims.iter().product();
        total += size;
        if t.name.contains("_exps.") && t.dims.len() >= 3 {
            // numpy shape[-3] (or [-2] for biases) = ne[2] (or ne[1]).
            let idx = if t.name.contains(".bias") { 1 } else { 2 };
            let count = t.dims.get(idx).copied().unwrap_or(1).max(1);
            expert += size / count;
            expert_sum += count;
            n_expert_tensors += 1;
        } else {
            shared += size;
        }
    }
    if total == 0 {
        return None;
    }
    let expert_count = expert_sum.checked_div(n_expert_tensors).unwrap_or(0);
    Some(if expert_count > 0 {
        format!("{expert_count}x{}", rounded_notation(shared + expert, 2))
    } else {
        rounded_notation(total, 2)
    })
}

/// `model_weight_count_rounded_notation`: the count in K/M/B/T with at least `min_digits`
/// significant digits (`8030261248` → `8.0B`, `671026419200` → `671B`, `1500000` → `1.5M`).
pub fn rounded_notation(count: u64, min_digits: usize) -> String {
    let n = count as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    // Python: len(str(round(scaled)).lstrip('0')), with round-half-to-even.
    let int_digits = format!("{}", scaled.round_ties_even() as u64)
        .trim_start_matches('0')
        .len();
    let fix = min_digits.saturating_sub(int_digits);
    format!("{scaled:.fix$}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_like_gguf_py() {
        assert_eq!(id_to_title("DeepSeek-R1"), "DeepSeek R1");
        assert_eq!(
            id_to_title("DeepSeek-R1-Distill-Qwen-1.5B"),
            "DeepSeek R1 Distill Qwen 1.5B"
        );
        assert_eq!(id_to_title("deepseek-v3-base"), "Deepseek v3 Base");
        assert_eq!(id_to_title("tiny-llama-7b"), "Tiny Llama 7b");
        assert_eq!(id_to_title("qwen2.5-x"), "Qwen2.5 X");
        assert_eq!(name_from_dir(Path::new("/m/my model")), "my model");
    }

    #[test]
    fn notation_like_gguf_py() {
        // Values checked against gguf.utility.model_weight_count_rounded_notation.
        assert_eq!(rounded_notation(8_030_261_248, 2), "8.0B");
        assert_eq!(rounded_notation(671_026_419_200, 2), "671B");
        assert_eq!(rounded_notation(1_500_000, 2), "1.5M");
        assert_eq!(rounded_notation(20_000, 2), "20K");
        assert_eq!(rounded_notation(500, 2), "0.50K");
        assert_eq!(rounded_notation(1_777_088_000, 2), "1.8B");
        assert_eq!(rounded_notation(2_000_000_000_000, 2), "2.0T");
    }
}
