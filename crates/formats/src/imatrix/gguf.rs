//! The GGUF imatrix format (REFERENCE §6.3), read with and written through `formats::gguf`.

use std::collections::BTreeMap;
use std::path::Path;

use super::{
    first_non_finite, Imatrix, ImatrixEntry, ImatrixError, ImatrixFormat, ImatrixProblem,
    KEY_CHUNK_COUNT, KEY_CHUNK_SIZE, KEY_DATASETS, SUFFIX_COUNTS, SUFFIX_IN_SUM2,
};
use crate::ggml_type::GgmlType;
use crate::gguf::{GgufArray, GgufFile, GgufValue, GgufWriter, TensorDecl};

fn u32_key(file: &GgufFile, key: &str) -> Result<u32, ImatrixProblem> {
    match file.get(key) {
        Some(GgufValue::U32(v)) => Ok(*v),
        Some(other) => Err(ImatrixProblem::BadMetadata {
            key: key.into(),
            detail: format!("has type {}, expected uint32", other.value_type()),
        }),
        None => Err(ImatrixProblem::BadMetadata {
            key: key.into(),
            detail: "is missing".into(),
        }),
    }
}

fn f32s(file: &GgufFile, info: &crate::gguf::TensorInfo) -> Vec<f32> {
    file.tensor_data(info)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Reads and validates a GGUF imatrix.
pub(super) fn read(path: &Path) -> Result<Imatrix, ImatrixError> {
    let err = |problem| ImatrixError::new(path, problem);
    let file = GgufFile::open(path).map_err(|e| err(ImatrixProblem::Gguf(e.problem)))?;
    parse(&file).map_err(err)
}

fn parse(file: &GgufFile) -> Result<Imatrix, ImatrixProblem> {
    if let Some(v) = file.get("general.type") {
        if v.as_str() != Some("imatrix") {
            return Err(ImatrixProblem::BadMetadata {
                key: "general.type".into(),
                detail: format!("is {v:?}, expected \"imatrix\" (is this a model file?)"),
            });
        }
    }
    let datasets = match file.get(KEY_DATASETS) {
        Some(GgufValue::Array(a)) => a
            .as_strs()
            .map(|v| v.into_iter().map(String::from).collect()),
        _ => None,
    }
    .ok_or_else(|| ImatrixProblem::BadMetadata {
        key: KEY_DATASETS.into(),
        detail: "is missing or not an array of strings".into(),
    })?;
    let chunk_count = u32_key(file, KEY_CHUNK_COUNT)?;
    let chunk_size = u32_key(file, KEY_CHUNK_SIZE)?;

    // entry name → (in_sum2 tensor, counts tensor)
    type Pair<'a> = (
        Option<&'a crate::gguf::TensorInfo>,
        Option<&'a crate::gguf::TensorInfo>,
    );
    let mut pairs: BTreeMap<&str, Pair> = BTreeMap::new();
    for t in file.tensors() {
        if let Some(base) = t.name.strip_suffix(SUFFIX_IN_SUM2) {
            pairs.entry(base).or_default().0 = Some(t);
        } else if let Some(base) = t.name.strip_suffix(SUFFIX_COUNTS) {
            pairs.entry(base).or_default().1 = Some(t);
        } else {
            return Err(ImatrixProblem::BadEntry {
                entry: t.name.clone(),
                detail: format!("tensor name ends in neither {SUFFIX_IN_SUM2} nor {SUFFIX_COUNTS}"),
            });
        }
        if t.ggml_type != GgmlType::F32 {
            return Err(ImatrixProblem::NotF32 {
                tensor: t.name.clone(),
                ty: t.ggml_type.name().into(),
            });
        }
    }
    if pairs.is_empty() {
        return Err(ImatrixProblem::BadEntry {
            entry: "(none)".into(),
            detail: "the file has no entries".into(),
        });
    }
    let mut entries = BTreeMap::new();
    for (name, pair) in pairs {
        let (sums, counts) = match pair {
            (Some(s), Some(c)) => (s, c),
            (Some(s), None) | (None, Some(s)) => {
                let present = s.name.clone();
                let missing = if present.ends_with(SUFFIX_IN_SUM2) {
                    format!("{name}{SUFFIX_COUNTS}")
                } else {
                    format!("{name}{SUFFIX_IN_SUM2}")
                };
                return Err(ImatrixProblem::MissingPair {
                    entry: name.into(),
                    present,
                    missing,
                });
            }
            (None, None) => continue,
        };
        let bad = |detail: String| ImatrixProblem::BadEntry {
            entry: name.into(),
            detail,
        };
        // counts: {1, n} (or {1} when n = 1, trailing 1-dims dropped).
        let cd = &counts.dims;
        if cd.is_empty() || cd[0] != 1 || cd.len() > 2 {
            return Err(bad(format!(
                "counts has shape {cd:?}, expected [1, n_slices]"
            )));
        }
        let n = counts.n_elements();
        let sd = &sums.dims;
        let shape_ok = match sd.len() {
            1 => n == 1,
            2 => sd[1] == n,
            _ => false,
        };
        if !shape_ok || n == 0 || sd.first().is_none_or(|&c| c == 0) {
            return Err(bad(format!(
                "in_sum2 has shape {sd:?} but counts has {n} slices (expected [ncols, {n}])"
            )));
        }
        let in_sum2 = f32s(file, sums);
        let counts = f32s(file, counts);
        if let Some((index, value)) = first_non_finite(&in_sum2) {
            return Err(ImatrixProblem::NonFinite {
                entry: name.into(),
                what: "in_sum2",
                index,
                value,
            });
        }
        if let Some((index, value)) = first_non_finite(&counts) {
            return Err(ImatrixProblem::NonFinite {
                entry: name.into(),
                what: "counts",
                index,
                value,
            });
        }
        if let Some((i, c)) = counts.iter().enumerate().find(|(_, c)| **c < 0.0) {
            return Err(bad(format!("negative count {c} at index {i}")));
        }
        entries.insert(
            name.to_owned(),
            ImatrixEntry {
                in_sum2,
                counts,
                ncall: None,
            },
        );
    }
    Ok(Imatrix {
        entries,
        datasets,
        chunk_count,
        chunk_size,
        format: ImatrixFormat::Gguf,
    })
}

/// ggml_n_dims: trailing 1-dims dropped, at least one dimension.
fn n_dims(mut dims: Vec<u64>) -> Vec<u64> {
    while dims.len() > 1 && dims.last() == Some(&1) {
        dims.pop();
    }
    dims
}

/// Writes a GGUF-form imatrix exactly as `llama-imatrix` lays it out: `general.type`, datasets,
/// chunk count, chunk size; per entry in name order `<name>.in_sum2` {ncols, n} then
/// `<name>.counts` {1, n}, trailing 1-dims dropped.
pub(super) fn write(m: &Imatrix, path: &Path) -> Result<(), ImatrixError> {
    let err = |problem| ImatrixError::new(path, problem);
    let metadata = vec![
        ("general.type".to_owned(), GgufValue::from("imatrix")),
        (
            KEY_DATASETS.to_owned(),
            GgufValue::Array(GgufArray::strings(m.datasets.iter().cloned())),
        ),
        (KEY_CHUNK_COUNT.to_owned(), GgufValue::U32(m.chunk_count)),
        (KEY_CHUNK_SIZE.to_owned(), GgufValue::U32(m.chunk_size)),
    ];
    let mut decls = Vec::new();
    let mut data: Vec<&[f32]> = Vec::new();
    for (name, e) in &m.entries {
        let n = e.counts.len();
        if e.ncall.is_some() || n == 0 || e.in_sum2.is_empty() || e.in_sum2.len() % n != 0 {
            return Err(err(ImatrixProblem::BadEntry {
                entry: name.clone(),
                detail: format!("{} values cannot be split into {n} slices", e.in_sum2.len()),
            }));
        }
        let ncols = (e.in_sum2.len() / n) as u64;
        decls.push(TensorDecl::new(
            format!("{name}{SUFFIX_IN_SUM2}"),
            n_dims(vec![ncols, n as u64]),
            GgmlType::F32,
        ));
        decls.push(TensorDecl::new(
            format!("{name}{SUFFIX_COUNTS}"),
            n_dims(vec![1, n as u64]),
            GgmlType::F32,
        ));
        data.push(&e.in_sum2);
        data.push(&e.counts);
    }
    let gguf_err = |e: crate::gguf::GgufError| err(ImatrixProblem::Gguf(e.problem));
    let mut w = GgufWriter::create(path, &metadata, decls).map_err(gguf_err)?;
    for d in data {
        let bytes: Vec<u8> = d.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_tensor(&bytes).map_err(gguf_err)?;
    }
    w.finish().map_err(gguf_err)
}
