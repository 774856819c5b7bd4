//! The streaming GGUF v3 writer: header first, then each tensor's bytes as they are produced,
//! into `NAME.partial`, renamed to `NAME` only when every declared tensor has been written.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::error::{GgufError, GgufProblem};
use super::value::GgufValue;
use super::{
    pad_to, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, MAX_ARRAY_LEN,
    MAX_ARRAY_NESTING, MAX_DIMS, MAX_STRING_LEN, MAX_TENSOR_NAME_LEN,
};
use crate::ggml_type::GgmlType;

/// One tensor the writer will receive: its name, shape and type, declared before any data so the
/// header (which holds every offset) can be written first.
///
/// Exists because GGUF puts all tensor infos before all data; streaming needs them up front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDecl {
    /// Tensor name (< 64 bytes, unique in the file).
    pub name: String,
    /// Dimensions in ggml `ne` order, innermost first (at most 4). Recorded as given.
    pub dims: Vec<u64>,
    /// Element type; `dims[0]` must be a multiple of its block size.
    pub ggml_type: GgmlType,
}

impl TensorDecl {
    /// A declaration from its parts.
    pub fn new(name: impl Into<String>, dims: impl Into<Vec<u64>>, ggml_type: GgmlType) -> Self {
        Self {
            name: name.into(),
            dims: dims.into(),
            ggml_type,
        }
    }

    /// Data size in bytes, `None` for a bad row length or on overflow.
    pub fn nbytes(&self) -> Option<u64> {
        self.ggml_type.nbytes(&self.dims)
    }
}

/// Size of the buffer between the writer and the file, and of `write_tensor_from`'s read buffer.
const BUF_SIZE: usize = 1 << 20;

/// Zeros for padding.
static ZEROS: [u8; 4096] = [0; 4096];

/// The file being written, with the count of bytes written so far (for padding).
struct Sink {
    w: BufWriter<File>,
    pos: u64,
}

impl Sink {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.w.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn put_str(&mut self, s: &str) -> std::io::Result<()> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s.as_bytes())
    }

    fn put_value(&mut self, v: &GgufValue) -> std::io::Result<()> {
        match v {
            GgufValue::U8(x) => self.put(&x.to_le_bytes()),
            GgufValue::I8(x) => self.put(&x.to_le_bytes()),
            GgufValue::U16(x) => self.put(&x.to_le_bytes()),
            GgufValue::I16(x) => self.put(&x.to_le_bytes()),
            GgufValue::U32(x) => self.put(&x.to_le_bytes()),
            GgufValue::I32(x) => self.put(&x.to_le_bytes()),
            GgufValue::F32(x) => self.put(&x.to_le_bytes()),
            GgufValue::Bool(x) => self.put(&[u8::from(*x)]),
            GgufValue::String(s) => self.put_str(s),
            GgufValue::U64(x) => self.put(&x.to_le_bytes()),
            GgufValue::I64(x) => self.put(&x.to_le_bytes()),
            GgufValue::F64(x) => self.put(&x.to_le_bytes()),
            GgufValue::Array(a) => {
                self.put(&a.elem_type.id().to_le_bytes())?;
                self.put(&(a.values.len() as u64).to_le_bytes())?;
                a.values.iter().try_for_each(|e| self.put_value(e))
            }
        }
    }

    /// Zero bytes up to the next multiple of `align`.
    fn pad(&mut self, align: u64) -> std::io::Result<()> {
        let target = pad_to(self.pos, align).unwrap_or(self.pos);
        let mut left = target - self.pos;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64);
            self.put(&ZEROS[..n as usize])?;
            left -= n;
        }
        Ok(())
    }
}

/// Streams one GGUF v3 file to disk: metadata and tensor infos at `create`, then each declared
/// tensor's bytes in declaration order, then `finish` to make the file appear at its final name.
///
/// Exists so a 700 GB model can be written tensor by tensor with bounded memory (u64 sizes
/// throughout, a 1 MiB buffer, no whole-file staging) and so that an interrupted run never leaves
/// a file that looks complete: data goes to `NAME.partial`, which `finish` fsyncs and renames; if
/// the writer is dropped unfinished (error, panic, early return) the `.partial` is deleted.
pub struct GgufWriter {
    path: PathBuf,
    partial: PathBuf,
    sink: Option<Sink>,
    alignment: u64,
    /// (name, nbytes) of each declared tensor, in order.
    tensors: Vec<(String, u64)>,
    /// Index of the next tensor to write.
    next: usize,
    /// Bytes received so far for tensor `next`, while it is in progress.
    current: Option<u64>,
    poisoned: bool,
    done: bool,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("path", &self.path)
            .field("next", &self.next)
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufWriter {
    /// Validates the metadata and tensor declarations, creates `<path>.partial` and writes the
    /// header, metadata, tensor infos and padding. The data alignment is `general.alignment` if
    /// present in `metadata` (must be a UINT32 power of two), else 32.
    pub fn create(
        path: impl AsRef<Path>,
        metadata: &[(String, GgufValue)],
        tensors: Vec<TensorDecl>,
    ) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let err = |problem| GgufError::new(&path, problem);
        let alignment = validate_metadata(metadata).map_err(err)?;
        let sizes = validate_decls(&tensors, alignment).map_err(err)?;

        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(|e| err(GgufProblem::io(format!("create {}", partial.display()), e)))?;
        // From here on, dropping `writer` (including on the error paths below) deletes `partial`.
        let mut writer = Self {
            path,
            partial,
            sink: Some(Sink {
                w: BufWriter::with_capacity(BUF_SIZE, file),
                pos: 0,
            }),
            alignment,
            tensors: tensors
                .iter()
                .zip(&sizes)
                .map(|(t, &n)| (t.name.clone(), n))
                .collect(),
            next: 0,
            current: None,
            poisoned: false,
            done: false,
        };
        writer
            .write_header(metadata, &tensors, &sizes)
            .map_err(|e| writer.fail(GgufProblem::io("write header", e)))?;
        Ok(writer)
    }

    fn write_header(
        &mut self,
        metadata: &[(String, GgufValue)],
        tensors: &[TensorDecl],
        sizes: &[u64],
    ) -> std::io::Result<()> {
        let align = self.alignment;
        let Some(s) = self.sink.as_mut() else {
            return Err(std::io::Error::other("writer already closed"));
        };
        s.put(&GGUF_MAGIC)?;
        s.put(&GGUF_VERSION.to_le_bytes())?;
        s.put(&(tensors.len() as u64).to_le_bytes())?;
        s.put(&(metadata.len() as u64).to_le_bytes())?;
        for (key, value) in metadata {
            s.put_str(key)?;
            s.put(&value.value_type().id().to_le_bytes())?;
            s.put_value(value)?;
        }
        let mut offset = 0u64;
        for (t, &nbytes) in tensors.iter().zip(sizes) {
            s.put_str(&t.name)?;
            s.put(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                s.put(&d.to_le_bytes())?;
            }
            s.put(&t.ggml_type.id().to_le_bytes())?;
            s.put(&offset.to_le_bytes())?;
            // validate_decls checked that the padded running total fits in u64.
            offset += pad_to(nbytes, align).unwrap_or(nbytes);
        }
        s.pad(align)
    }

    /// The final path (the file appears there only after a successful `finish`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The data alignment in use.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Name and byte size of the next tensor to write, `None` when all have been written.
    pub fn next_tensor(&self) -> Option<(&str, u64)> {
        self.tensors.get(self.next).map(|(n, b)| (n.as_str(), *b))
    }

    /// Bytes written to the `.partial` so far (header and padding included).
    pub fn bytes_written(&self) -> u64 {
        self.sink.as_ref().map_or(0, |s| s.pos)
    }

    /// Records an error: the output can no longer be completed.
    fn fail(&mut self, problem: GgufProblem) -> GgufError {
        self.poisoned = true;
        GgufError::new(&self.path, problem)
    }

    fn check_usable(&mut self) -> Result<(), GgufError> {
        if self.poisoned {
            return Err(GgufError::new(&self.path, GgufProblem::Poisoned));
        }
        Ok(())
    }

    fn next_name(&self) -> String {
        self.tensors
            .get(self.next)
            .map_or_else(String::new, |(n, _)| n.clone())
    }

    /// Starts the next declared tensor, to be fed with `write_chunk` and closed with `end_tensor`.
    pub fn begin_tensor(&mut self) -> Result<(), GgufError> {
        self.check_usable()?;
        if self.current.is_some() {
            let msg = format!(
                "begin_tensor while tensor '{}' is in progress",
                self.next_name()
            );
            return Err(self.fail(GgufProblem::WriterMisuse(msg)));
        }
        if self.next >= self.tensors.len() {
            let msg = format!(
                "all {} declared tensors were already written",
                self.tensors.len()
            );
            return Err(self.fail(GgufProblem::WriterMisuse(msg)));
        }
        self.current = Some(0);
        Ok(())
    }

    /// Appends bytes to the tensor in progress; more bytes than declared is an error.
    pub fn write_chunk(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        self.check_usable()?;
        let Some(done) = self.current else {
            let msg = "write_chunk without begin_tensor".to_string();
            return Err(self.fail(GgufProblem::WriterMisuse(msg)));
        };
        let expected = self.tensors.get(self.next).map_or(0, |t| t.1);
        let got = done.saturating_add(bytes.len() as u64);
        if got > expected {
            let name = self.next_name();
            return Err(self.fail(GgufProblem::TensorSizeMismatch {
                name,
                expected,
                got,
            }));
        }
        let res = match self.sink.as_mut() {
            Some(s) => s.put(bytes),
            None => Err(std::io::Error::other("writer already closed")),
        };
        if let Err(e) = res {
            let op = format!("write data of tensor '{}'", self.next_name());
            return Err(self.fail(GgufProblem::io(op, e)));
        }
        self.current = Some(got);
        Ok(())
    }

    /// Closes the tensor in progress: it must have received exactly its declared size. Writes the
    /// zero padding after it (after the last tensor too, as gguf-py does).
    pub fn end_tensor(&mut self) -> Result<(), GgufError> {
        self.check_usable()?;
        let Some(got) = self.current else {
            let msg = "end_tensor without begin_tensor".to_string();
            return Err(self.fail(GgufProblem::WriterMisuse(msg)));
        };
        let expected = self.tensors.get(self.next).map_or(0, |t| t.1);
        if got != expected {
            let name = self.next_name();
            return Err(self.fail(GgufProblem::TensorSizeMismatch {
                name,
                expected,
                got,
            }));
        }
        let align = self.alignment;
        let res = match self.sink.as_mut() {
            Some(s) => s.pad(align),
            None => Err(std::io::Error::other("writer already closed")),
        };
        if let Err(e) = res {
            let op = format!("write padding after tensor '{}'", self.next_name());
            return Err(self.fail(GgufProblem::io(op, e)));
        }
        self.current = None;
        self.next += 1;
        Ok(())
    }

    /// Writes the next declared tensor in one piece; `bytes` must be exactly its size.
    pub fn write_tensor(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        self.check_usable()?;
        if self.current.is_none() {
            if let Some((name, expected)) = self.next_tensor() {
                if bytes.len() as u64 != expected {
                    let problem = GgufProblem::TensorSizeMismatch {
                        name: name.to_owned(),
                        expected,
                        got: bytes.len() as u64,
                    };
                    return Err(self.fail(problem));
                }
            }
        }
        self.begin_tensor()?;
        self.write_chunk(bytes)?;
        self.end_tensor()
    }

    /// Writes the next declared tensor from a reader, which must yield exactly its size before
    /// EOF. Reads through a bounded buffer; returns the bytes copied.
    pub fn write_tensor_from(&mut self, mut reader: impl Read) -> Result<u64, GgufError> {
        self.begin_tensor()?;
        let expected = self.tensors.get(self.next).map_or(0, |t| t.1);
        // One byte more than needed lets us notice a reader that yields too much.
        let cap = usize::try_from(expected.saturating_add(1))
            .unwrap_or(BUF_SIZE)
            .min(BUF_SIZE);
        let mut buf = vec![0u8; cap.max(1)];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let op = format!("read data for tensor '{}'", self.next_name());
                    return Err(self.fail(GgufProblem::io(op, e)));
                }
            };
            self.write_chunk(buf.get(..n).unwrap_or(&[]))?;
        }
        self.end_tensor()?;
        Ok(expected)
    }

    /// Completes the file: checks every declared tensor was written, flushes, fsyncs, renames
    /// `.partial` to the final name (replacing any existing file) and fsyncs the directory. On
    /// error nothing is left at either name.
    pub fn finish(mut self) -> Result<(), GgufError> {
        self.check_usable()?;
        if self.current.is_some() {
            let msg = format!("finish while tensor '{}' is in progress", self.next_name());
            return Err(self.fail(GgufProblem::WriterMisuse(msg)));
        }
        if self.next < self.tensors.len() {
            let problem = GgufProblem::MissingTensors {
                written: self.next,
                declared: self.tensors.len(),
                missing: self.next_name(),
            };
            return Err(self.fail(problem));
        }
        let Some(sink) = self.sink.take() else {
            return Err(self.fail(GgufProblem::Poisoned));
        };
        let file = match sink.w.into_inner() {
            Ok(f) => f,
            Err(e) => return Err(self.fail(GgufProblem::io("flush", e.into_error()))),
        };
        if let Err(e) = file.sync_all() {
            return Err(self.fail(GgufProblem::io("fsync", e)));
        }
        drop(file);
        if let Err(e) = std::fs::rename(&self.partial, &self.path) {
            let op = format!("rename {} into place", self.partial.display());
            return Err(self.fail(GgufProblem::io(op, e)));
        }
        if let Err(e) = sync_parent_dir(&self.path) {
            // The data is complete but its name may not survive a crash: report and retract it.
            let _ = std::fs::remove_file(&self.path);
            return Err(self.fail(GgufProblem::io("fsync the directory", e)));
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        if !self.done {
            drop(self.sink.take());
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

#[cfg(unix)]
fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_parent_dir(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Checks keys and values can be written and read back; returns the alignment to use.
fn validate_metadata(metadata: &[(String, GgufValue)]) -> Result<u64, GgufProblem> {
    let mut seen = HashSet::with_capacity(metadata.len());
    let mut alignment = DEFAULT_ALIGNMENT;
    for (index, (key, value)) in metadata.iter().enumerate() {
        if key.is_empty() {
            return Err(GgufProblem::EmptyKey {
                index: index as u64,
            });
        }
        if !seen.insert(key.as_str()) {
            return Err(GgufProblem::DuplicateKey { key: key.clone() });
        }
        check_key_string(key, key)?;
        validate_value(key, value, 0)?;
        if key == ALIGNMENT_KEY {
            alignment = match value {
                GgufValue::U32(a) if a.is_power_of_two() => u64::from(*a),
                GgufValue::U32(a) => {
                    return Err(GgufProblem::BadAlignment {
                        value: u64::from(*a),
                    })
                }
                other => {
                    return Err(GgufProblem::AlignmentType {
                        found: other.value_type(),
                    })
                }
            };
        }
    }
    Ok(alignment)
}

fn check_key_string(key: &str, s: &str) -> Result<(), GgufProblem> {
    if s.len() as u64 > MAX_STRING_LEN {
        return Err(GgufProblem::StringTooLong {
            what: format!("key '{key}'"),
            len: s.len() as u64,
        });
    }
    Ok(())
}

fn validate_value(key: &str, value: &GgufValue, depth: u32) -> Result<(), GgufProblem> {
    match value {
        GgufValue::String(s) => check_key_string(key, s),
        GgufValue::Array(a) => {
            if depth >= MAX_ARRAY_NESTING {
                return Err(GgufProblem::ArrayTooDeep {
                    what: format!("key '{key}'"),
                    max: MAX_ARRAY_NESTING,
                });
            }
            if a.values.len() as u64 > MAX_ARRAY_LEN {
                return Err(GgufProblem::ArrayTooLong {
                    what: format!("key '{key}'"),
                    count: a.values.len() as u64,
                });
            }
            for (index, v) in a.values.iter().enumerate() {
                if v.value_type() != a.elem_type {
                    return Err(GgufProblem::MixedArray {
                        key: key.to_owned(),
                        index,
                        found: v.value_type(),
                        expected: a.elem_type,
                    });
                }
                validate_value(key, v, depth + 1)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks every declaration as the reader would; returns each tensor's byte size.
fn validate_decls(tensors: &[TensorDecl], alignment: u64) -> Result<Vec<u64>, GgufProblem> {
    let mut seen = HashSet::with_capacity(tensors.len());
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut total = 0u64;
    for t in tensors {
        let name = t.name.clone();
        if t.name.len() > MAX_TENSOR_NAME_LEN {
            return Err(GgufProblem::TensorNameTooLong {
                len: t.name.len() as u64,
                name,
            });
        }
        if !seen.insert(t.name.as_str()) {
            return Err(GgufProblem::DuplicateTensor { name });
        }
        if t.dims.len() > MAX_DIMS {
            return Err(GgufProblem::TooManyDims {
                name,
                n_dims: t.dims.len() as u64,
            });
        }
        let overflow = || GgufProblem::ElementOverflow {
            name: t.name.clone(),
            dims: t.dims.clone(),
        };
        let elements = t
            .dims
            .iter()
            .try_fold(1i64, |acc, &d| acc.checked_mul(i64::try_from(d).ok()?));
        if elements.is_none() {
            return Err(overflow());
        }
        let block = t.ggml_type.block_size();
        let ne0 = t.dims.first().copied().unwrap_or(1);
        if ne0 % block != 0 {
            return Err(GgufProblem::BadRowLength {
                name,
                ne0,
                ggml_type: t.ggml_type,
                block,
            });
        }
        let nbytes = t.nbytes().ok_or_else(overflow)?;
        total = pad_to(nbytes, alignment)
            .and_then(|p| total.checked_add(p))
            .ok_or_else(overflow)?;
        sizes.push(nbytes);
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::super::{GgufArray, GgufFile, GgufValueType};
    use super::*;

    fn meta() -> Vec<(String, GgufValue)> {
        vec![
            ("general.architecture".into(), "llama".into()),
            ("a.u32".into(), GgufValue::U32(7)),
            (
                "a.nested".into(),
                GgufValue::Array(GgufArray::new(
                    GgufValueType::Array,
                    vec![
                        GgufValue::Array(GgufArray::u32s([1, 2])),
                        GgufValue::Array(GgufArray::strings(["x"])),
                    ],
                )),
            ),
        ]
    }

    #[test]
    fn round_trip_through_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let decls = vec![
            TensorDecl::new("a", vec![3], GgmlType::F32),
            TensorDecl::new("b", vec![32, 2], GgmlType::Q8_0),
            TensorDecl::new("c", vec![], GgmlType::F16),
        ];
        let mut w = GgufWriter::create(&path, &meta(), decls).unwrap();
        assert_eq!(w.next_tensor(), Some(("a", 12)));
        w.write_tensor(&[1; 12]).unwrap();
        w.begin_tensor().unwrap();
        w.write_chunk(&[2; 30]).unwrap();
        w.write_chunk(&[3; 38]).unwrap();
        w.end_tensor().unwrap();
        assert_eq!(w.write_tensor_from(&[4u8, 5][..]).unwrap(), 2);
        assert!(!path.exists());
        w.finish().unwrap();
        assert!(path.exists());
        assert!(!dir.path().join("m.gguf.partial").exists());

        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.metadata(), &meta()[..]);
        assert_eq!(f.version(), 3);
        assert_eq!(f.tensors().len(), 3);
        let b = f.tensor("b").unwrap();
        assert_eq!(b.dims, vec![32, 2]);
        assert_eq!(b.offset, 32);
        assert_eq!(&f.tensor_data(b)[..30], &[2; 30]);
        assert_eq!(&f.tensor_data(b)[30..], &[3; 38]);
        assert_eq!(f.tensor_data(f.tensor("c").unwrap()), &[4, 5]);
        // Padded after the last tensor too.
        assert_eq!(f.file_size() % 32, 0);
    }

    #[test]
    fn custom_alignment_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let mut m = meta();
        m.push((ALIGNMENT_KEY.into(), GgufValue::U32(256)));
        let decls = vec![
            TensorDecl::new("a", vec![1], GgmlType::F32),
            TensorDecl::new("b", vec![1], GgmlType::F32),
        ];
        let mut w = GgufWriter::create(&path, &m, decls).unwrap();
        w.write_tensor(&[1; 4]).unwrap();
        w.write_tensor(&[2; 4]).unwrap();
        w.finish().unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.alignment(), 256);
        assert_eq!(f.data_offset() % 256, 0);
        assert_eq!(f.tensor("b").unwrap().offset, 256);
        assert_eq!(f.file_size() % 256, 0);
    }

    #[test]
    fn bad_declarations_are_rejected_before_any_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        type Case = (Vec<(String, GgufValue)>, Vec<TensorDecl>, &'static str);
        let cases: Vec<Case> = vec![
            (
                vec![],
                vec![TensorDecl::new("x".repeat(64), vec![1], GgmlType::F32)],
                "at most 63",
            ),
            (
                vec![],
                vec![
                    TensorDecl::new("a", vec![1], GgmlType::F32),
                    TensorDecl::new("a", vec![1], GgmlType::F32),
                ],
                "duplicate tensor name 'a'",
            ),
            (
                vec![],
                vec![TensorDecl::new("a", vec![1; 5], GgmlType::F32)],
                "5 dimensions",
            ),
            (
                vec![],
                vec![TensorDecl::new("a", vec![33], GgmlType::Q8_0)],
                "not a multiple",
            ),
            (
                vec![],
                vec![TensorDecl::new("a", vec![1 << 32, 1 << 32], GgmlType::F32)],
                "overflows",
            ),
            (
                vec![(ALIGNMENT_KEY.into(), GgufValue::U32(48))],
                vec![],
                "not a power of two",
            ),
            (
                vec![(ALIGNMENT_KEY.into(), GgufValue::U64(64))],
                vec![],
                "expected UINT32",
            ),
            (
                vec![("k".into(), 1u32.into()), ("k".into(), 2u32.into())],
                vec![],
                "duplicate key 'k'",
            ),
            (vec![("".into(), 1u32.into())], vec![], "is empty"),
            (
                vec![(
                    "k".into(),
                    GgufValue::Array(GgufArray::new(GgufValueType::U32, vec![GgufValue::I32(1)])),
                )],
                vec![],
                "array element #0 is INT32",
            ),
        ];
        for (m, d, expect) in cases {
            let e = GgufWriter::create(&path, &m, d).unwrap_err().to_string();
            assert!(e.contains(expect), "{e} should contain {expect}");
            assert!(e.contains("m.gguf"), "{e}");
            assert!(!path.exists());
            assert!(!dir.path().join("m.gguf.partial").exists());
        }
    }

    #[test]
    fn misuse_poisons_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b"old").unwrap();
        let decls = vec![TensorDecl::new("a", vec![4], GgmlType::F32)];
        let mut w = GgufWriter::create(&path, &[], decls.clone()).unwrap();
        assert!(dir.path().join("m.gguf.partial").exists());
        let e = w.write_tensor(&[0; 15]).unwrap_err().to_string();
        assert!(e.contains("needs exactly 16 bytes, got 15"), "{e}");
        assert!(w.write_tensor(&[0; 16]).is_err());
        assert!(w.finish().is_err());
        assert!(!dir.path().join("m.gguf.partial").exists());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"old",
            "existing file kept on failure"
        );

        let mut w = GgufWriter::create(&path, &[], decls.clone()).unwrap();
        w.begin_tensor().unwrap();
        w.write_chunk(&[0; 10]).unwrap();
        let e = w.write_chunk(&[0; 10]).unwrap_err().to_string();
        assert!(e.contains("got 20"), "{e}");
        drop(w);

        let mut w = GgufWriter::create(&path, &[], decls.clone()).unwrap();
        let e = w.write_tensor_from(&[0u8; 17][..]).unwrap_err().to_string();
        assert!(e.contains("needs exactly 16 bytes"), "{e}");
        drop(w);

        let mut w = GgufWriter::create(&path, &[], decls).unwrap();
        w.write_tensor(&[0; 16]).unwrap();
        let e = w.write_tensor(&[0; 16]).unwrap_err().to_string();
        assert!(e.contains("already written"), "{e}");
        drop(w);
        assert!(!dir.path().join("m.gguf.partial").exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn success_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b"old").unwrap();
        let w = GgufWriter::create(&path, &meta(), vec![]).unwrap();
        w.finish().unwrap();
        assert_eq!(GgufFile::open(&path).unwrap().metadata().len(), 3);
    }
}
