//! The one error type of GGUF reading and writing: the file plus exactly what was wrong.

use std::path::PathBuf;

use thiserror::Error;

use super::value::GgufValueType;
use crate::ggml_type::GgmlType;

/// A GGUF read or write failure: which file, and the problem.
///
/// Exists so every caller (the CLI in particular) can print one line that names the file and the
/// problem: `GGUF file /x/y.gguf: tensor 'blk.0.attn_q.weight' has 5 dimensions (at most 4)`.
#[derive(Debug, Error)]
#[error("GGUF file {}: {problem}", path.display())]
pub struct GgufError {
    /// The file being read, or the final (not `.partial`) path being written.
    pub path: PathBuf,
    /// What was wrong (already part of the Display text, so not also reported as a `source`).
    pub problem: GgufProblem,
}

impl GgufError {
    /// Pairs a problem with the file it concerns.
    pub fn new(path: impl Into<PathBuf>, problem: GgufProblem) -> Self {
        Self {
            path: path.into(),
            problem,
        }
    }
}

/// Exactly what was wrong with a GGUF file or a write request. Each message is one line.
///
/// Exists so tests and callers can match on the kind of problem, not on message text.
#[derive(Debug, Error)]
pub enum GgufProblem {
    /// An operating-system call failed (open, mmap, read, write, fsync, rename).
    #[error("cannot {op}: {err}")]
    Io {
        /// What was being done, e.g. "open", "write tensor data".
        op: String,
        /// The underlying error (part of the Display text, so not a `source`).
        err: std::io::Error,
    },
    /// The file is shorter than a field that must be there.
    #[error("truncated: {what} at byte {offset} needs {need} bytes, but the file ends at byte {file_size}")]
    Truncated {
        /// The field being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// How many bytes it needs.
        need: u64,
        /// The file's size.
        file_size: u64,
    },
    /// The first four bytes are not `GGUF`.
    #[error("bad magic {found:02x?} (expected \"GGUF\"): not a GGUF file")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// The version's low 16 bits are zero: written for the other byte order.
    #[error("version field {raw:#010x} looks byte-swapped: the file was written for the other byte order (big-endian GGUF is not supported)")]
    ByteOrder {
        /// The raw version field.
        raw: u32,
    },
    /// A version other than 2 or 3.
    #[error("unsupported GGUF version {version} (supported: 2 and 3)")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// The tensor or KV count is negative or cannot fit in the file.
    #[error("{what} is {count}, impossible for a {file_size}-byte file")]
    BadCount {
        /// "n_tensors" or "n_kv".
        what: &'static str,
        /// The count as a signed i64 (as llama.cpp reads it).
        count: i64,
        /// The file's size.
        file_size: u64,
    },
    /// A string length above the 1 GiB limit.
    #[error("{what}: string length {len} exceeds the 1 GiB limit")]
    StringTooLong {
        /// Which string.
        what: String,
        /// The length field.
        len: u64,
    },
    /// A string whose bytes would extend past the end of the file.
    #[error("{what}: string runs past the end of the file (length {len} at byte {offset}, file is {file_size} bytes)")]
    StringPastEnd {
        /// Which string.
        what: String,
        /// The length field.
        len: u64,
        /// Where the string's bytes start.
        offset: u64,
        /// The file's size.
        file_size: u64,
    },
    /// A string that is not UTF-8.
    #[error("{what}: string is not valid UTF-8")]
    InvalidUtf8 {
        /// Which string.
        what: String,
    },
    /// An array count above the 2^30 limit.
    #[error("{what}: array of {count} elements exceeds the 2^30 limit")]
    ArrayTooLong {
        /// Which array.
        what: String,
        /// The count field.
        count: u64,
    },
    /// An array whose elements cannot fit in the rest of the file.
    #[error("{what}: array runs past the end of the file ({count} elements of {elem_type} at byte {offset}, file is {file_size} bytes)")]
    ArrayPastEnd {
        /// Which array.
        what: String,
        /// The count field.
        count: u64,
        /// The element type.
        elem_type: GgufValueType,
        /// Where the elements start.
        offset: u64,
        /// The file's size.
        file_size: u64,
    },
    /// Arrays nested deeper than `MAX_ARRAY_NESTING`.
    #[error("{what}: arrays nested more than {max} deep")]
    ArrayTooDeep {
        /// Which array.
        what: String,
        /// The limit.
        max: u32,
    },
    /// A value type id outside 0..=12.
    #[error("{what}: unknown value type id {id}")]
    UnknownValueType {
        /// Which value.
        what: String,
        /// The id found.
        id: u32,
    },
    /// An empty metadata key.
    #[error("metadata key #{index} is empty")]
    EmptyKey {
        /// The KV pair's index.
        index: u64,
    },
    /// A metadata key that appears twice.
    #[error("duplicate key '{key}'")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// `general.alignment` is not a UINT32.
    #[error("key 'general.alignment' has type {found}, expected UINT32")]
    AlignmentType {
        /// The type found.
        found: GgufValueType,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("key 'general.alignment' is {value}, not a power of two")]
    BadAlignment {
        /// The value found.
        value: u64,
    },
    /// An array element whose type differs from the array's element type (writer).
    #[error("key '{key}': array element #{index} is {found}, but the array holds {expected}")]
    MixedArray {
        /// The key.
        key: String,
        /// The element's index.
        index: usize,
        /// The element's type.
        found: GgufValueType,
        /// The declared element type.
        expected: GgufValueType,
    },
    /// A tensor name of 64 bytes or more.
    #[error("tensor '{name}' name is {len} bytes (at most 63)")]
    TensorNameTooLong {
        /// The name (possibly lossily decoded).
        name: String,
        /// Its length in bytes.
        len: u64,
    },
    /// A tensor name that appears twice.
    #[error("duplicate tensor name '{name}'")]
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// More than four dimensions.
    #[error("tensor '{name}' has {n_dims} dimensions (at most 4)")]
    TooManyDims {
        /// The tensor.
        name: String,
        /// The dimension count.
        n_dims: u64,
    },
    /// A negative dimension.
    #[error("tensor '{name}' dimension {index} is negative ({value})")]
    NegativeDim {
        /// The tensor.
        name: String,
        /// Which dimension.
        index: usize,
        /// The value found.
        value: i64,
    },
    /// The product of the dimensions does not fit in i64 (or the byte size in u64).
    #[error("tensor '{name}' element count overflows (dims {dims:?})")]
    ElementOverflow {
        /// The tensor.
        name: String,
        /// Its dimensions.
        dims: Vec<u64>,
    },
    /// A type id that is unknown or removed.
    #[error("tensor '{name}' has unknown or removed ggml type id {id}")]
    UnknownTensorType {
        /// The tensor.
        name: String,
        /// The id found.
        id: i64,
    },
    /// `ne[0]` is not a multiple of the type's block size.
    #[error(
        "tensor '{name}' row length {ne0} is not a multiple of the {ggml_type} block size {block}"
    )]
    BadRowLength {
        /// The tensor.
        name: String,
        /// `ne[0]`.
        ne0: u64,
        /// The tensor type.
        ggml_type: GgmlType,
        /// Its block size.
        block: u64,
    },
    /// A tensor offset that breaks contiguity (REFERENCE §1.3).
    #[error("tensor '{name}' has offset {offset}, expected {expected} (tensor data must be contiguous and aligned in info order)")]
    BadOffset {
        /// The tensor.
        name: String,
        /// The offset found.
        offset: u64,
        /// The only acceptable offset.
        expected: u64,
    },
    /// A tensor whose data extends past the end of the file.
    #[error("tensor '{name}' data runs past the end of the file (bytes {start}..{end}, file is {file_size} bytes)")]
    TensorPastEnd {
        /// The tensor.
        name: String,
        /// Absolute start of its data.
        start: u64,
        /// Absolute end of its data.
        end: u64,
        /// The file's size.
        file_size: u64,
    },
    /// Writer: a write call when no tensor is left to write, or out of sequence.
    #[error("{0}")]
    WriterMisuse(String),
    /// Writer: a tensor received a different number of bytes than its declaration needs.
    #[error("tensor '{name}' needs exactly {expected} bytes, got {got}")]
    TensorSizeMismatch {
        /// The tensor.
        name: String,
        /// Its declared byte size.
        expected: u64,
        /// Bytes received (so far, when too many).
        got: u64,
    },
    /// Writer: `finish` before every declared tensor was written.
    #[error("finished after {written} of {declared} tensors; first missing: '{missing}'")]
    MissingTensors {
        /// Tensors written.
        written: usize,
        /// Tensors declared.
        declared: usize,
        /// The first tensor not written.
        missing: String,
    },
    /// Writer: an earlier error left the output unusable.
    #[error("an earlier error aborted this write")]
    Poisoned,
}

impl GgufProblem {
    /// An I/O failure while doing `op`.
    pub fn io(op: impl Into<String>, err: std::io::Error) -> Self {
        Self::Io { op: op.into(), err }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_naming_file_and_problem() {
        let e = GgufError::new(
            "/x/y.gguf",
            GgufProblem::TooManyDims {
                name: "blk.0.attn_q.weight".into(),
                n_dims: 5,
            },
        );
        assert_eq!(
            e.to_string(),
            "GGUF file /x/y.gguf: tensor 'blk.0.attn_q.weight' has 5 dimensions (at most 4)"
        );
        let e = GgufError::new(
            "/a.gguf",
            GgufProblem::io("open", std::io::Error::other("boom")),
        );
        assert_eq!(e.to_string(), "GGUF file /a.gguf: cannot open: boom");
        assert!(!e.to_string().contains('\n'));
    }
}
