//! The GGUF reader: mmap, validate everything, then hand out metadata and tensor byte slices.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::{GgufError, GgufProblem};
use super::value::{GgufArray, GgufValue, GgufValueType};
use super::{
    pad_to, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_LEN, MAX_ARRAY_NESTING,
    MAX_DIMS, MAX_STRING_LEN, MAX_TENSOR_NAME_LEN,
};
use crate::ggml_type::GgmlType;

/// Where one tensor is and what it holds, as recorded in the file's tensor infos.
///
/// Exists so callers can plan (sizes, types, shapes) without touching tensor bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (< 64 bytes).
    pub name: String,
    /// Dimensions in ggml `ne` order, innermost (contiguous) first; as many as the file records.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes (without padding).
    pub nbytes: u64,
}

impl TensorInfo {
    /// Number of elements (product of `dims`; saturates at u64::MAX, which a validated file never
    /// reaches).
    pub fn n_elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX)
    }
}

/// An open, fully validated GGUF file (v2 or v3), memory-mapped.
///
/// Exists so every consumer (verify's forward pass, interop tests, the CLI's `inspect`) reads GGUF
/// through one strict reader: once `open` succeeds, every tensor lies inside the file and every
/// size is consistent, so later code can slice without checks.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens, maps and validates `path`. Errors name the file and the exact problem.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let err = |problem| GgufError::new(&path, problem);
        let file = File::open(&path).map_err(|e| err(GgufProblem::io("open", e)))?;
        let len = file
            .metadata()
            .map_err(|e| err(GgufProblem::io("stat", e)))?
            .len();
        if len < 4 {
            return Err(err(GgufProblem::Truncated {
                what: "magic".into(),
                offset: 0,
                need: 4,
                file_size: len,
            }));
        }
        // SAFETY: the mapping is read-only and private to this struct. As with every mmap-based
        // reader, another process truncating or rewriting the file while it is mapped is outside
        // what we can defend against; our own writer only ever renames complete files into place.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| err(GgufProblem::io("mmap", e)))?;
        let parsed = parse(&map).map_err(err)?;
        Ok(Self {
            path,
            map,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            key_index: parsed.key_index,
            tensors: parsed.tensors,
            tensor_index: parsed.tensor_index,
        })
    }

    /// The path given to `open`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment: `general.alignment` or 32.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where the data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The file's size in bytes.
    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    /// Every metadata pair, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        let i = *self.key_index.get(key)?;
        self.metadata.get(i).map(|(_, v)| v)
    }

    /// Every tensor info, in file order (which is also data order).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(*self.tensor_index.get(name)?)
    }

    /// The bytes of `info`'s data (without padding). `info` should come from this file; an info
    /// that does not fit inside this file yields an empty slice rather than a panic.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let range = self
            .data_offset
            .checked_add(info.offset)
            .and_then(|start| Some((start, start.checked_add(info.nbytes)?)))
            .and_then(|(s, e)| Some(usize::try_from(s).ok()?..usize::try_from(e).ok()?));
        range.and_then(|r| self.map.get(r)).unwrap_or(&[])
    }
}

struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// Parses and validates a whole GGUF image.
fn parse(buf: &[u8]) -> Result<Parsed, GgufProblem> {
    let file_size = buf.len() as u64;
    let mut c = Cursor { buf, pos: 0 };

    let magic: [u8; 4] = c.array(&|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufProblem::BadMagic { found: magic });
    }
    let version = c.u32(&|| "version".into())?;
    if version == 0 {
        return Err(GgufProblem::UnsupportedVersion { version });
    }
    if version & 0xFFFF == 0 {
        return Err(GgufProblem::ByteOrder { raw: version });
    }
    if version != 2 && version != 3 {
        return Err(GgufProblem::UnsupportedVersion { version });
    }

    let n_tensors = c.i64(&|| "n_tensors".into())?;
    let n_kv = c.i64(&|| "n_kv".into())?;
    // Lower bounds on the encoded size of one tensor info (empty name, 0 dims) and one KV pair
    // (empty key, type, one-byte value): counts beyond what the file can hold are rejected before
    // anything is allocated from them.
    let check_count = |what, count: i64, min: u64| match u64::try_from(count) {
        Ok(n) if n <= c.remaining() / min => Ok(n),
        _ => Err(GgufProblem::BadCount {
            what,
            count,
            file_size,
        }),
    };
    let n_tensors = check_count("n_tensors", n_tensors, 24)?;
    let n_kv = check_count("n_kv", n_kv, 13)?;

    let mut metadata = Vec::with_capacity(to_usize(n_kv));
    let mut key_index = HashMap::with_capacity(to_usize(n_kv));
    for i in 0..n_kv {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        if key.is_empty() {
            return Err(GgufProblem::EmptyKey { index: i });
        }
        let what = || format!("key '{key}'");
        let ty = c.value_type(&what)?;
        let value = c.value(ty, 0, &what)?;
        if key_index.contains_key(key) {
            return Err(GgufProblem::DuplicateKey { key: key.into() });
        }
        key_index.insert(key.to_owned(), metadata.len());
        metadata.push((key.to_owned(), value));
    }

    let alignment = match key_index.get(ALIGNMENT_KEY).and_then(|&i| metadata.get(i)) {
        None => DEFAULT_ALIGNMENT,
        Some((_, GgufValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
        Some((_, GgufValue::U32(a))) => {
            return Err(GgufProblem::BadAlignment {
                value: u64::from(*a),
            })
        }
        Some((_, other)) => {
            return Err(GgufProblem::AlignmentType {
                found: other.value_type(),
            })
        }
    };

    let mut tensors = Vec::with_capacity(to_usize(n_tensors));
    let mut tensor_index = HashMap::with_capacity(to_usize(n_tensors));
    for i in 0..n_tensors {
        let info = c.tensor_info(i)?;
        if tensor_index.contains_key(&info.name) {
            return Err(GgufProblem::DuplicateTensor { name: info.name });
        }
        tensor_index.insert(info.name.clone(), tensors.len());
        tensors.push(info);
    }

    let data_offset =
        pad_to(c.pos as u64, alignment).ok_or(GgufProblem::BadAlignment { value: alignment })?;
    let mut expected = 0u64;
    for t in &tensors {
        if t.offset != expected {
            return Err(GgufProblem::BadOffset {
                name: t.name.clone(),
                offset: t.offset,
                expected,
            });
        }
        let past_end = || GgufProblem::TensorPastEnd {
            name: t.name.clone(),
            start: data_offset.saturating_add(t.offset),
            end: data_offset
                .saturating_add(t.offset)
                .saturating_add(t.nbytes),
            file_size,
        };
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.nbytes))
            .ok_or_else(past_end)?;
        if end > file_size {
            return Err(past_end());
        }
        expected = pad_to(t.nbytes, alignment)
            .and_then(|p| expected.checked_add(p))
            .ok_or_else(past_end)?;
    }

    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        key_index,
        tensors,
        tensor_index,
    })
}

/// Decodes one fixed-size value from exactly `fixed_size()` bytes (shorter input decodes as
/// zero-extended; callers always pass exact chunks).
fn decode_fixed(ty: GgufValueType, c: &[u8]) -> GgufValue {
    fn le<const N: usize>(c: &[u8]) -> [u8; N] {
        let mut a = [0u8; N];
        for (d, s) in a.iter_mut().zip(c) {
            *d = *s;
        }
        a
    }
    match ty {
        GgufValueType::U8 => GgufValue::U8(u8::from_le_bytes(le(c))),
        GgufValueType::I8 => GgufValue::I8(i8::from_le_bytes(le(c))),
        GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(le(c))),
        GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(le(c))),
        GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(le(c))),
        GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(le(c))),
        GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(le(c))),
        GgufValueType::Bool => GgufValue::Bool(u8::from_le_bytes(le(c)) != 0),
        GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(le(c))),
        GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(le(c))),
        GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(le(c))),
        // Not fixed-size; never called with these.
        GgufValueType::String | GgufValueType::Array => GgufValue::U8(0),
    }
}

/// Counts were bounded by the file size, which fits in memory; saturate on 32-bit just in case.
fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Bounds-checked little-endian reads from the mapped file. Context strings are built only when an
/// error is reported, so the hot path (130k-string tokenizer arrays) allocates nothing extra.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Ctx<'c> = &'c dyn Fn() -> String;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    fn take(&mut self, n: u64, what: Ctx) -> Result<&'a [u8], GgufProblem> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .and_then(|end| Some((end, self.buf.get(self.pos..end)?)));
        match slice {
            Some((end, s)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufProblem::Truncated {
                what: what(),
                offset: self.pos as u64,
                need: n,
                file_size: self.buf.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: Ctx) -> Result<[u8; N], GgufProblem> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: Ctx) -> Result<u8, GgufProblem> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }
    fn u16(&mut self, what: Ctx) -> Result<u16, GgufProblem> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: Ctx) -> Result<u32, GgufProblem> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: Ctx) -> Result<u64, GgufProblem> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn i64(&mut self, what: Ctx) -> Result<i64, GgufProblem> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    /// A u64-length-prefixed UTF-8 string, at most 1 GiB.
    fn string(&mut self, what: Ctx) -> Result<&'a str, GgufProblem> {
        let len = self.u64(&|| format!("{} (string length)", what()))?;
        if len > MAX_STRING_LEN {
            return Err(GgufProblem::StringTooLong { what: what(), len });
        }
        if len > self.remaining() {
            return Err(GgufProblem::StringPastEnd {
                what: what(),
                len,
                offset: self.pos as u64,
                file_size: self.buf.len() as u64,
            });
        }
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| GgufProblem::InvalidUtf8 { what: what() })
    }

    fn value_type(&mut self, what: Ctx) -> Result<GgufValueType, GgufProblem> {
        let id = self.u32(&|| format!("{} (value type)", what()))?;
        GgufValueType::from_id(id).ok_or_else(|| GgufProblem::UnknownValueType { what: what(), id })
    }

    fn value(
        &mut self,
        ty: GgufValueType,
        depth: u32,
        what: Ctx,
    ) -> Result<GgufValue, GgufProblem> {
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(self.u8(what)?),
            GgufValueType::I8 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            GgufValueType::U16 => GgufValue::U16(self.u16(what)?),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            GgufValueType::U32 => GgufValue::U32(self.u32(what)?),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            GgufValueType::Bool => GgufValue::Bool(self.u8(what)? != 0),
            GgufValueType::String => GgufValue::String(self.string(what)?.to_owned()),
            GgufValueType::U64 => GgufValue::U64(self.u64(what)?),
            GgufValueType::I64 => GgufValue::I64(self.i64(what)?),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            GgufValueType::Array => GgufValue::Array(self.array_value(depth, what)?),
        })
    }

    fn array_value(&mut self, depth: u32, what: Ctx) -> Result<GgufArray, GgufProblem> {
        if depth >= MAX_ARRAY_NESTING {
            return Err(GgufProblem::ArrayTooDeep {
                what: what(),
                max: MAX_ARRAY_NESTING,
            });
        }
        let elem_type = self.value_type(&|| format!("{} (array element type)", what()))?;
        let count = self.u64(&|| format!("{} (array length)", what()))?;
        if count > MAX_ARRAY_LEN {
            return Err(GgufProblem::ArrayTooLong {
                what: what(),
                count,
            });
        }
        if count > self.remaining() / elem_type.min_encoded_size() {
            return Err(GgufProblem::ArrayPastEnd {
                what: what(),
                count,
                elem_type,
                offset: self.pos as u64,
                file_size: self.buf.len() as u64,
            });
        }
        // Bounded above: count · min_encoded_size ≤ bytes left in the file.
        let mut values = Vec::with_capacity(to_usize(count));
        if let Some(size) = elem_type.fixed_size() {
            // Fast path for numeric arrays: one bounds check, then decode in place.
            let bytes = self.take(count * size, what)?;
            for c in bytes.chunks_exact(size as usize) {
                values.push(decode_fixed(elem_type, c));
            }
            return Ok(GgufArray { elem_type, values });
        }
        for i in 0..count {
            let elem_what = || format!("{} element #{i}", what());
            values.push(self.value(elem_type, depth + 1, &elem_what)?);
        }
        Ok(GgufArray { elem_type, values })
    }

    fn tensor_info(&mut self, index: u64) -> Result<TensorInfo, GgufProblem> {
        let name = self.string(&|| format!("tensor #{index} name"))?;
        let what = || format!("tensor '{name}'");
        if name.len() > MAX_TENSOR_NAME_LEN {
            return Err(GgufProblem::TensorNameTooLong {
                name: name.into(),
                len: name.len() as u64,
            });
        }
        let n_dims = self.u32(&|| format!("{} n_dims", what()))?;
        if n_dims as usize > MAX_DIMS {
            return Err(GgufProblem::TooManyDims {
                name: name.into(),
                n_dims: n_dims.into(),
            });
        }
        let mut dims = Vec::with_capacity(MAX_DIMS);
        for j in 0..n_dims as usize {
            let ne = self.i64(&|| format!("{} dimension {j}", what()))?;
            let ne = u64::try_from(ne).map_err(|_| GgufProblem::NegativeDim {
                name: name.into(),
                index: j,
                value: ne,
            })?;
            dims.push(ne);
        }
        let type_id = i32::from_le_bytes(self.array(&|| format!("{} type", what()))?);
        let offset = self.u64(&|| format!("{} offset", what()))?;

        let overflow = || GgufProblem::ElementOverflow {
            name: name.into(),
            dims: dims.clone(),
        };
        let elements = dims
            .iter()
            .try_fold(1i64, |acc, &d| acc.checked_mul(i64::try_from(d).ok()?));
        if elements.is_none() {
            return Err(overflow());
        }
        let ggml_type = u32::try_from(type_id)
            .ok()
            .and_then(GgmlType::from_id)
            .ok_or_else(|| GgufProblem::UnknownTensorType {
                name: name.into(),
                id: type_id.into(),
            })?;
        let ne0 = dims.first().copied().unwrap_or(1);
        if ne0 % ggml_type.block_size() != 0 {
            return Err(GgufProblem::BadRowLength {
                name: name.into(),
                ne0,
                ggml_type,
                block: ggml_type.block_size(),
            });
        }
        let nbytes = ggml_type.nbytes(&dims).ok_or_else(overflow)?;
        Ok(TensorInfo {
            name: name.into(),
            dims,
            ggml_type,
            offset,
            nbytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny little-endian byte builder for hand-made files.
    #[derive(Default)]
    struct B(Vec<u8>);
    impl B {
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn u32(self, v: u32) -> Self {
            self.raw(&v.to_le_bytes())
        }
        fn u64(self, v: u64) -> Self {
            self.raw(&v.to_le_bytes())
        }
        fn s(self, v: &str) -> Self {
            self.u64(v.len() as u64).raw(v.as_bytes())
        }
        fn header(n_tensors: u64, n_kv: u64) -> Self {
            B::default().raw(b"GGUF").u32(3).u64(n_tensors).u64(n_kv)
        }
    }

    fn problem(bytes: &[u8]) -> GgufProblem {
        match parse(bytes) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn minimal_file_parses() {
        let b = B::header(1, 1)
            .s("a")
            .u32(4)
            .u32(7)
            .s("t")
            .u32(1)
            .u64(8)
            .u32(0)
            .u64(0);
        let pad = pad_to(b.0.len() as u64, 32).unwrap() as usize - b.0.len();
        let b = b.raw(&vec![0; pad]).raw(&[1; 32]);
        let p = parse(&b.0).unwrap();
        assert_eq!(p.metadata, vec![("a".to_string(), GgufValue::U32(7))]);
        assert_eq!(p.tensors[0].dims, vec![8]);
        assert_eq!(p.tensors[0].nbytes, 32);
        assert_eq!(p.data_offset % 32, 0);
    }

    #[test]
    fn version_checks() {
        let v = |n: u32| problem(&B::default().raw(b"GGUF").u32(n).u64(0).u64(0).0);
        assert!(matches!(
            v(1),
            GgufProblem::UnsupportedVersion { version: 1 }
        ));
        assert!(matches!(
            v(0),
            GgufProblem::UnsupportedVersion { version: 0 }
        ));
        assert!(matches!(
            v(4),
            GgufProblem::UnsupportedVersion { version: 4 }
        ));
        assert!(matches!(v(0x0300_0000), GgufProblem::ByteOrder { .. }));
        assert!(v(0x0300_0000).to_string().contains("byte order"));
        let ok = B::default().raw(b"GGUF").u32(2).u64(0).u64(0);
        assert_eq!(parse(&ok.0).unwrap().version, 2);
    }

    #[test]
    fn counts_are_bounded_by_file_size() {
        let p = problem(&B::header(u64::MAX, 0).0);
        assert!(matches!(
            p,
            GgufProblem::BadCount {
                what: "n_tensors",
                count: -1,
                ..
            }
        ));
        let p = problem(&B::header(0, 1 << 40).0);
        assert!(matches!(p, GgufProblem::BadCount { what: "n_kv", .. }));
    }

    #[test]
    fn array_limits() {
        let base = || B::header(0, 1).s("k").u32(9);
        let p = problem(&base().u32(4).u64((1 << 30) + 1).0);
        assert!(matches!(p, GgufProblem::ArrayTooLong { .. }));
        let p = problem(&base().u32(4).u64(3).u32(1).0);
        assert!(
            matches!(p, GgufProblem::ArrayPastEnd { count: 3, .. }),
            "{p}"
        );
        let p = problem(&base().u32(77).u64(0).0);
        assert!(matches!(p, GgufProblem::UnknownValueType { id: 77, .. }));
        // Arrays nested deeper than the limit: each level is type ARRAY, count 1.
        let mut b = base();
        for _ in 0..MAX_ARRAY_NESTING + 1 {
            b = b.u32(9).u64(1);
        }
        let p = problem(&b.u32(0).u64(0).0);
        assert!(matches!(p, GgufProblem::ArrayTooDeep { .. }), "{p}");
    }

    #[test]
    fn nested_and_string_arrays_parse() {
        let b = B::header(0, 1)
            .s("k")
            .u32(9)
            .u32(9)
            .u64(2)
            .u32(8)
            .u64(2)
            .s("x")
            .s("üñ")
            .u32(8)
            .u64(0);
        let p = parse(&b.0).unwrap();
        let GgufValue::Array(outer) = &p.metadata[0].1 else {
            panic!("not an array")
        };
        assert_eq!(outer.elem_type, GgufValueType::Array);
        assert_eq!(
            outer.values[0],
            GgufValue::Array(GgufArray::strings(["x", "üñ"]))
        );
        assert_eq!(
            outer.values[1],
            GgufValue::Array(GgufArray::strings(Vec::<String>::new()))
        );
    }

    #[test]
    fn string_limits() {
        let p = problem(&B::header(0, 1).u64((1 << 30) + 1).raw(&[0; 16]).0);
        assert!(matches!(p, GgufProblem::StringTooLong { .. }));
        let p = problem(&B::header(0, 1).s("k").u32(8).u64(10).raw(b"abc").0);
        assert!(matches!(p, GgufProblem::StringPastEnd { len: 10, .. }));
        assert!(
            p.to_string().starts_with("key 'k': string runs past"),
            "{p}"
        );
        let p = problem(&B::header(0, 1).s("k").u32(8).u64(1).raw(&[0xff]).0);
        assert!(matches!(p, GgufProblem::InvalidUtf8 { .. }));
    }

    #[test]
    fn empty_key_and_alignment_type() {
        let p = problem(&B::header(0, 1).s("").u32(0).raw(&[0]).0);
        assert!(matches!(p, GgufProblem::EmptyKey { index: 0 }));
        let p = problem(&B::header(0, 1).s(ALIGNMENT_KEY).u32(10).u64(64).0);
        assert!(matches!(
            p,
            GgufProblem::AlignmentType {
                found: GgufValueType::U64
            }
        ));
        let p = problem(&B::header(0, 1).s(ALIGNMENT_KEY).u32(4).u32(0).0);
        assert!(matches!(p, GgufProblem::BadAlignment { value: 0 }));
    }

    #[test]
    fn tensor_info_checks() {
        let info = |name: &str, dims: &[i64], ty: u32| {
            let mut b = B::header(1, 0).s(name).u32(dims.len() as u32);
            for &d in dims {
                b = b.u64(d as u64);
            }
            b.u32(ty).u64(0)
        };
        let long = "x".repeat(64);
        assert!(matches!(
            problem(&info(&long, &[1], 0).0),
            GgufProblem::TensorNameTooLong { len: 64, .. }
        ));
        assert!(matches!(
            problem(&info("t", &[-1], 0).0),
            GgufProblem::NegativeDim {
                index: 0,
                value: -1,
                ..
            }
        ));
        assert!(matches!(
            problem(&info("t", &[1 << 40, 1 << 40], 0).0),
            GgufProblem::ElementOverflow { .. }
        ));
        assert!(matches!(
            problem(&info("t", &[32], 4).0),
            GgufProblem::UnknownTensorType { id: 4, .. }
        ));
        assert!(matches!(
            problem(&info("t", &[32], u32::MAX).0),
            GgufProblem::UnknownTensorType { id: -1, .. }
        ));
        assert!(matches!(
            problem(&info("t", &[33], 8).0),
            GgufProblem::BadRowLength { ne0: 33, .. }
        ));
        assert!(matches!(
            problem(&info("t", &[1, 1, 1, 1, 1], 0).0),
            GgufProblem::TooManyDims { n_dims: 5, .. }
        ));
        // Valid info, but no data at all.
        assert!(matches!(
            problem(&info("t", &[8], 0).0),
            GgufProblem::TensorPastEnd { .. }
        ));
    }

    #[test]
    fn truncated_anywhere_is_an_error_never_a_panic() {
        let b = B::header(1, 2)
            .s("a")
            .u32(8)
            .s("hello")
            .s("b")
            .u32(9)
            .u32(5)
            .u64(2)
            .u32(1)
            .u32(2)
            .s("t")
            .u32(2)
            .u64(32)
            .u64(2)
            .u32(8)
            .u64(0);
        let pad = pad_to(b.0.len() as u64, 32).unwrap() as usize - b.0.len();
        let full = b.raw(&vec![0; pad]).raw(&[0; 68]).0;
        assert!(parse(&full).is_ok());
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).is_err(), "cut at {cut}");
        }
    }
}
