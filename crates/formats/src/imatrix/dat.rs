//! The legacy `.dat` imatrix format (REFERENCE §6.4): i32/f32 little-endian, entries sorted by
//! name, an optional trailer (chunk count, dataset name).

use std::collections::BTreeMap;

use super::{first_non_finite, Imatrix, ImatrixEntry, ImatrixFormat, ImatrixProblem};

/// A bounds-checked little-endian cursor over the whole file.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], ImatrixProblem> {
        match self.bytes.get(self.pos..self.pos.saturating_add(n)) {
            Some(s) if self.pos.checked_add(n).is_some() => {
                self.pos += n;
                Ok(s)
            }
            _ => Err(ImatrixProblem::Truncated {
                what: what(),
                offset: self.pos as u64,
                need: n as u64,
                file_size: self.bytes.len() as u64,
            }),
        }
    }

    fn i32(&mut self, what: &dyn Fn() -> String) -> Result<i32, ImatrixProblem> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A length field: non-negative and (times `elem` bytes) within what is left of the file.
    fn len(&mut self, elem: usize, what: &dyn Fn() -> String) -> Result<usize, ImatrixProblem> {
        let v = self.i32(what)?;
        let bad = || ImatrixProblem::BadLength {
            what: what(),
            value: i64::from(v),
        };
        let n = usize::try_from(v).map_err(|_| bad())?;
        if n.checked_mul(elem).is_none_or(|b| b > self.remaining()) {
            return Err(bad());
        }
        Ok(n)
    }
}

/// Parses a whole `.dat` file.
pub(super) fn parse(bytes: &[u8]) -> Result<Imatrix, ImatrixProblem> {
    let mut c = Cursor { bytes, pos: 0 };
    let n_entries = c.i32(&|| "n_entries".into())?;
    // Each entry needs at least 4 (name_len) + 1 (name) + 4 (ncall) + 4 (nval) + 4 (one value).
    if n_entries < 1 || n_entries as usize > c.remaining() / 17 {
        return Err(ImatrixProblem::BadLength {
            what: "n_entries".into(),
            value: i64::from(n_entries),
        });
    }
    let mut entries = BTreeMap::new();
    for i in 0..n_entries as usize {
        let name_len = c.len(1, &|| format!("entry {i} name length"))?;
        if name_len == 0 {
            return Err(ImatrixProblem::BadLength {
                what: format!("entry {i} name length"),
                value: 0,
            });
        }
        let raw = c.take(name_len, &|| format!("entry {i} name"))?;
        let name = std::str::from_utf8(raw)
            .map_err(|_| ImatrixProblem::BadEntry {
                entry: String::from_utf8_lossy(raw).into_owned(),
                detail: "name is not UTF-8".into(),
            })?
            .to_owned();
        let ncall = c.i32(&|| format!("entry '{name}' ncall"))?;
        let nval = c.len(4, &|| format!("entry '{name}' nval"))?;
        if nval == 0 {
            return Err(ImatrixProblem::BadLength {
                what: format!("entry '{name}' nval"),
                value: 0,
            });
        }
        let data = c.take(nval * 4, &|| format!("entry '{name}' values"))?;
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some((index, value)) = first_non_finite(&values) {
            return Err(ImatrixProblem::NonFinite {
                entry: name,
                what: "value",
                index,
                value,
            });
        }
        let entry = ImatrixEntry {
            in_sum2: values,
            counts: Vec::new(),
            ncall: Some(ncall),
        };
        if entries.insert(name.clone(), entry).is_some() {
            return Err(ImatrixProblem::BadEntry {
                entry: name,
                detail: "appears twice".into(),
            });
        }
    }
    let mut chunk_count = 0u32;
    let mut datasets = Vec::new();
    if c.remaining() > 0 {
        let n = c.i32(&|| "trailer chunk count".into())?;
        chunk_count = u32::try_from(n).map_err(|_| ImatrixProblem::BadLength {
            what: "trailer chunk count".into(),
            value: i64::from(n),
        })?;
        let len = c.len(1, &|| "trailer dataset length".into())?;
        let raw = c.take(len, &|| "trailer dataset".into())?;
        if len > 0 {
            let s = std::str::from_utf8(raw).map_err(|_| ImatrixProblem::BadEntry {
                entry: "trailer dataset".into(),
                detail: "is not UTF-8".into(),
            })?;
            datasets.push(s.to_owned());
        }
        if c.remaining() > 0 {
            return Err(ImatrixProblem::TrailingBytes {
                n: c.remaining() as u64,
                offset: c.pos as u64,
            });
        }
    }
    Ok(Imatrix {
        entries,
        datasets,
        chunk_count,
        chunk_size: 0,
        format: ImatrixFormat::Legacy,
    })
}

/// The bytes of a legacy-form imatrix, exactly as `save_imatrix_legacy` lays them out (entries in
/// name order, then chunk count and the last dataset name).
pub(super) fn serialize(m: &Imatrix) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(m.entries.len() as i32).to_le_bytes());
    for (name, e) in &m.entries {
        out.extend_from_slice(&(name.len() as i32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&e.ncall.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&(e.in_sum2.len() as i32).to_le_bytes());
        for v in &e.in_sum2 {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.extend_from_slice(&(m.chunk_count as i32).to_le_bytes());
    let ds = m.datasets.last().map_or("", String::as_str);
    out.extend_from_slice(&(ds.len() as i32).to_le_bytes());
    out.extend_from_slice(ds.as_bytes());
    out
}
