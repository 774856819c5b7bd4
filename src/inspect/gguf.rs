//! The GGUF view of `r1q inspect`.

use super::render::{bits_per_weight, human_bytes, human_count, shape, table};
use anyhow::Result;
use formats::gguf::{GgufFile, GgufValue};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Arrays longer than this are summarised (first few elements and the count) unless `--full`.
const ARRAY_PREVIEW: usize = 8;

/// Prints (or emits as JSON) the metadata, tensor table and totals of one GGUF file.
pub fn inspect(path: &Path, json_out: bool, full: bool, out: &mut dyn Write) -> Result<()> {
    let file = GgufFile::open(path)?;
    let params: u64 = file.tensors().iter().map(|t| t.n_elements()).sum();
    let bytes: u64 = file.tensors().iter().map(|t| t.nbytes).sum();
    if json_out {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&to_json(&file, params, bytes))?
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{}: GGUF v{}, {} metadata keys, {} tensors, alignment {}, data at byte {}",
        path.display(),
        file.version(),
        file.metadata().len(),
        file.tensors().len(),
        file.alignment(),
        file.data_offset()
    )?;
    writeln!(out, "\nmetadata:")?;
    let rows: Vec<Vec<String>> = file
        .metadata()
        .iter()
        .map(|(k, v)| vec![k.clone(), type_label(v), value_text(v, full)])
        .collect();
    write!(
        out,
        "{}",
        table(&["key", "type", "value"], &rows, &[false, false, false])
    )?;
    writeln!(out, "\ntensors:")?;
    let rows: Vec<Vec<String>> = file
        .tensors()
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.ggml_type.name().to_string(),
                shape(&t.dims),
                t.nbytes.to_string(),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        table(
            &["name", "type", "shape (ne)", "bytes"],
            &rows,
            &[false, false, false, true]
        )
    )?;
    writeln!(out, "\nby type:")?;
    let rows: Vec<Vec<String>> = per_type(&file)
        .into_iter()
        .map(|(name, (n, p, b))| {
            vec![
                name.to_string(),
                n.to_string(),
                human_count(p),
                human_bytes(b),
                format!("{:.4}", bits_per_weight(b, p)),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        table(
            &["type", "tensors", "params", "bytes", "bpw"],
            &rows,
            &[false, true, true, true, true]
        )
    )?;
    writeln!(out,
        "\ntotal: {} tensors, {} parameters ({params}), {} ({bytes} bytes of tensor data), {:.4} bits per weight; file {}",
        file.tensors().len(),
        human_count(params),
        human_bytes(bytes),
        bits_per_weight(bytes, params),
        human_bytes(file.file_size()),
    )?;
    Ok(())
}

/// Tensor count, parameters and bytes per ggml type, in type-name order.
fn per_type(file: &GgufFile) -> BTreeMap<&'static str, (u64, u64, u64)> {
    let mut by_type: BTreeMap<&'static str, (u64, u64, u64)> = BTreeMap::new();
    for t in file.tensors() {
        let e = by_type.entry(t.ggml_type.name()).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += t.nbytes;
    }
    by_type
}

fn to_json(file: &GgufFile, params: u64, bytes: u64) -> Value {
    let metadata: serde_json::Map<String, Value> = file
        .metadata()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                json!({"type": type_label(v), "value": value_json(v)}),
            )
        })
        .collect();
    let tensors: Vec<Value> = file
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "type": t.ggml_type.name(),
                "shape": t.dims,
                "offset": t.offset,
                "bytes": t.nbytes,
            })
        })
        .collect();
    json!({
        "format": "gguf",
        "path": file.path().display().to_string(),
        "version": file.version(),
        "alignment": file.alignment(),
        "data_offset": file.data_offset(),
        "file_size": file.file_size(),
        "metadata": metadata,
        "tensors": tensors,
        "totals": {
            "tensors": file.tensors().len(),
            "parameters": params,
            "bytes": bytes,
            "bits_per_weight": bits_per_weight(bytes, params),
        },
    })
}

/// `u32`, `string`, `[string; 129280]`, `[[i32; 2]; 3]`.
fn type_label(v: &GgufValue) -> String {
    match v {
        GgufValue::Array(a) => {
            let inner = match a.values.first() {
                Some(first @ GgufValue::Array(_)) => type_label(first),
                _ => a.elem_type.name().to_string(),
            };
            format!("[{inner}; {}]", a.values.len())
        }
        other => other.value_type().name().to_string(),
    }
}

fn value_text(v: &GgufValue, full: bool) -> String {
    match v {
        GgufValue::String(s) => {
            let one_line = s.replace('\n', "\\n");
            if !full && one_line.chars().count() > 80 {
                let head: String = one_line.chars().take(77).collect();
                format!("{head:?}… ({} bytes)", s.len())
            } else {
                format!("{one_line:?}")
            }
        }
        GgufValue::Array(a) => {
            let shown = if full {
                a.values.len()
            } else {
                a.values.len().min(ARRAY_PREVIEW)
            };
            let mut items: Vec<String> = a.values[..shown]
                .iter()
                .map(|e| value_text(e, full))
                .collect();
            if shown < a.values.len() {
                items.push(format!("… {} more", a.values.len() - shown));
            }
            format!("[{}]", items.join(", "))
        }
        other => scalar_text(other),
    }
}

fn scalar_text(v: &GgufValue) -> String {
    match v {
        GgufValue::U8(x) => x.to_string(),
        GgufValue::I8(x) => x.to_string(),
        GgufValue::U16(x) => x.to_string(),
        GgufValue::I16(x) => x.to_string(),
        GgufValue::U32(x) => x.to_string(),
        GgufValue::I32(x) => x.to_string(),
        GgufValue::U64(x) => x.to_string(),
        GgufValue::I64(x) => x.to_string(),
        GgufValue::F32(x) => x.to_string(),
        GgufValue::F64(x) => x.to_string(),
        GgufValue::Bool(x) => x.to_string(),
        GgufValue::String(s) => format!("{s:?}"),
        GgufValue::Array(a) => format!("[{} elements]", a.values.len()),
    }
}

fn value_json(v: &GgufValue) -> Value {
    match v {
        GgufValue::U8(x) => json!(x),
        GgufValue::I8(x) => json!(x),
        GgufValue::U16(x) => json!(x),
        GgufValue::I16(x) => json!(x),
        GgufValue::U32(x) => json!(x),
        GgufValue::I32(x) => json!(x),
        GgufValue::U64(x) => json!(x),
        GgufValue::I64(x) => json!(x),
        GgufValue::F32(x) => json!(x),
        GgufValue::F64(x) => json!(x),
        GgufValue::Bool(x) => json!(x),
        GgufValue::String(s) => json!(s),
        GgufValue::Array(a) => Value::Array(a.values.iter().map(value_json).collect()),
    }
}
