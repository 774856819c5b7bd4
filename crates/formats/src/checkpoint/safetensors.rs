//! One safetensors file, memory-mapped: header parsed and validated once, tensor data handed out
//! as borrowed slices of the map (zero-copy).
//!
//! We parse the header ourselves to say precisely what is wrong (which tensor, which bytes); the
//! `safetensors` crate then validates the same bytes again as a backstop, and any error it still
//! finds is reported with the file's path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::Deserialize;

use super::dtype::Dtype;
use super::error::{CheckpointError, Result};

/// Largest JSON header accepted (the `safetensors` crate's own limit): a bound on what a corrupt
/// length prefix can make us parse.
pub const MAX_HEADER_SIZE: usize = 100_000_000;

/// Length of the little-endian u64 header-size prefix.
const N_LEN: usize = 8;

/// One tensor as described by a shard header (offsets absolute within the file).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

/// A validated, memory-mapped safetensors file.
pub(crate) struct Shard {
    pub path: PathBuf,
    map: Mmap,
    /// Entries in header order sorted by name.
    pub entries: Vec<Entry>,
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

impl Shard {
    /// Maps and validates `path`. Reads only the header (the map is lazy).
    pub fn open(path: &Path) -> Result<Shard> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        if file_len < N_LEN as u64 {
            return Err(CheckpointError::Truncated {
                path: path.to_path_buf(),
                detail: format!("{file_len} bytes, shorter than the 8-byte header length"),
            });
        }
        // SAFETY: the map is read-only and private to this process. If another process truncates
        // or rewrites the file while we hold it, reads may fault or see new bytes; this is the
        // accepted contract of every mmap-based checkpoint reader (safetensors, llama.cpp).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let entries = parse_header(path, &map)?;
        if let Err(source) = safetensors::SafeTensors::read_metadata(&map) {
            return Err(CheckpointError::Safetensors {
                path: path.to_path_buf(),
                source,
            });
        }
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            entries,
        })
    }

    /// The bytes of entry `i` (zero-copy), or `None` if `i` is out of range.
    pub fn data(&self, entry: &Entry) -> Option<&[u8]> {
        self.map.get(entry.start..entry.end)
    }

    /// Finds an entry by name.
    pub fn find(&self, name: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.entries.get(i))
    }
}

/// A JSON object read as its key/value pairs in file order, so duplicate keys (which a map type
/// would silently collapse) can be reported.
pub(crate) struct Pairs<V>(pub Vec<(String, V)>);

impl<V> Pairs<V> {
    /// The pairs as a sorted map, or the first key that appears twice.
    pub fn into_unique(self) -> std::result::Result<BTreeMap<String, V>, String> {
        let mut map = BTreeMap::new();
        for (k, v) in self.0 {
            if map.contains_key(&k) {
                return Err(k);
            }
            map.insert(k, v);
        }
        Ok(map)
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Pairs<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
            type Value = Pairs<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> std::result::Result<Pairs<V>, A::Error> {
                let mut v = Vec::new();
                while let Some(pair) = access.next_entry()? {
                    v.push(pair);
                }
                Ok(Pairs(v))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// Parses and validates the header of a whole safetensors file held in `buf`.
///
/// Checks, each with its own message: header length within the file and the limit; valid UTF-8
/// JSON object; each entry has a known dtype, a shape whose size fits, ordered offsets, and a byte
/// length equal to shape × dtype size; offsets within the data area; no two tensors overlapping;
/// every data byte belonging to some tensor.
pub(crate) fn parse_header(path: &Path, buf: &[u8]) -> Result<Vec<Entry>> {
    let p = || path.to_path_buf();
    let file_len = buf.len() as u64;
    let Some(prefix) = buf.first_chunk::<N_LEN>() else {
        return Err(CheckpointError::Truncated {
            path: p(),
            detail: format!("{file_len} bytes, shorter than the 8-byte header length"),
        });
    };
    let header_len = u64::from_le_bytes(*prefix);
    if header_len > file_len - N_LEN as u64 {
        return Err(CheckpointError::HeaderPastEnd {
            path: p(),
            header_len,
            file_len,
        });
    }
    // header_len ≤ file_len, which fits in usize because buf exists.
    let n = header_len as usize;
    if n > MAX_HEADER_SIZE {
        return Err(CheckpointError::HeaderTooLarge {
            path: p(),
            header_len,
            limit: MAX_HEADER_SIZE,
        });
    }
    let data_start = N_LEN + n;
    let header = buf.get(N_LEN..data_start).unwrap_or_default();
    let data_len = buf.len() - data_start;
    let json_err = |detail: String| CheckpointError::HeaderJson { path: p(), detail };
    let text = std::str::from_utf8(header).map_err(|e| json_err(format!("not UTF-8: {e}")))?;
    let pairs: Pairs<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| json_err(e.to_string()))?;
    let raw = pairs
        .into_unique()
        .map_err(|name| json_err(format!("tensor `{name}` appears twice in the header")))?;

    let mut entries = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        if name == "__metadata__" {
            // Free-form string map; the crate's backstop validates its type.
            continue;
        }
        let e = RawEntry::deserialize(&value)
            .map_err(|e| json_err(format!("entry of tensor `{name}`: {e}")))?;
        let Some(dtype) = Dtype::from_name(&e.dtype) else {
            return Err(CheckpointError::UnknownDtype {
                path: p(),
                tensor: name,
                dtype: e.dtype,
            });
        };
        let [start, end] = e.data_offsets;
        let expected = e
            .shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
        let Some(expected) = expected else {
            return Err(CheckpointError::ShapeOverflow {
                path: p(),
                tensor: name,
                shape: e.shape,
            });
        };
        if start > end {
            return Err(CheckpointError::OffsetsOutOfBounds {
                path: p(),
                tensor: name,
                start,
                end,
                data_len,
            });
        }
        if end - start != expected {
            return Err(CheckpointError::ByteLength {
                path: p(),
                tensor: name,
                dtype,
                shape: e.shape,
                expected,
                actual: end - start,
            });
        }
        entries.push(Entry {
            name,
            dtype,
            shape: e.shape,
            start,
            end,
        });
    }

    // Layout checks on offsets relative to the data area, in file order.
    let mut order: Vec<&Entry> = entries.iter().collect();
    order.sort_by_key(|e| (e.start, e.end));
    let described_end = order.iter().map(|e| e.end).max().unwrap_or(0);
    let contiguous = order
        .iter()
        .try_fold(0usize, |pos, e| (e.start == pos).then_some(e.end))
        .is_some();
    if contiguous && described_end > data_len {
        // Tensors tile the data area as written, but the file stops early: a cut download.
        return Err(CheckpointError::Truncated {
            path: p(),
            detail: format!(
                "header describes {} bytes, the file has {file_len}",
                data_start as u64 + described_end as u64
            ),
        });
    }
    if let Some(e) = order.iter().find(|e| e.end > data_len) {
        return Err(CheckpointError::OffsetsOutOfBounds {
            path: p(),
            tensor: e.name.clone(),
            start: e.start,
            end: e.end,
            data_len,
        });
    }
    let mut pos = 0usize;
    let mut prev: Option<&Entry> = None;
    for e in &order {
        if e.start < pos {
            if let Some(prev) = prev {
                return Err(CheckpointError::OverlappingOffsets {
                    path: p(),
                    first: prev.name.clone(),
                    second: e.name.clone(),
                });
            }
        }
        if e.start > pos {
            return Err(CheckpointError::UncoveredBytes {
                path: p(),
                start: pos,
                end: e.start,
            });
        }
        if e.end > pos || prev.is_none() {
            prev = Some(e);
        }
        pos = pos.max(e.end);
    }
    if pos < data_len {
        return Err(CheckpointError::UncoveredBytes {
            path: p(),
            start: pos,
            end: data_len,
        });
    }

    for e in &mut entries {
        e.start += data_start;
        e.end += data_start;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data_len, 0);
        v
    }

    #[test]
    fn accepts_empty_zero_sized_and_metadata() {
        let p = Path::new("/t/a.safetensors");
        assert!(parse_header(p, &file("{}", 0)).unwrap().is_empty());
        let h = r#"{"__metadata__":{"format":"pt"},"z":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}"#;
        let e = parse_header(p, &file(h, 4)).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "z"]);
        assert_eq!(e[0].start, 8 + h.len());
    }

    #[test]
    fn duplicate_tensor_names_are_rejected() {
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let err = parse_header(Path::new("/t/a.safetensors"), &file(h, 8))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tensor `a` appears twice in the header"),
            "{err}"
        );
    }

    #[test]
    fn trailing_bytes_are_uncovered() {
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let err = parse_header(Path::new("/t/a.safetensors"), &file(h, 8))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bytes 4..8 of the data area belong to no tensor"),
            "{err}"
        );
    }
}
