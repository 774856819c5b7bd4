//! The one error type of checkpoint reading: every variant names the file (and the tensor or key)
//! and says in one line what was wrong, so the CLI can print it as is.

use std::path::PathBuf;

use super::dtype::{DecodeError, Dtype};

/// Shorthand for results of this module.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// Everything that can be wrong with a checkpoint on disk (or with a request against it).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file or directory could not be read at all (missing, permissions, I/O).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The path is neither a `.safetensors` file nor a directory holding a checkpoint.
    #[error("{}: no model.safetensors.index.json or model.safetensors here (not a checkpoint)", path.display())]
    NotACheckpoint {
        /// The path given.
        path: PathBuf,
    },
    /// The file ends before the data its header describes (or before the 8-byte length prefix).
    #[error("{}: truncated: {detail}", path.display())]
    Truncated {
        /// The shard.
        path: PathBuf,
        /// What was expected versus found.
        detail: String,
    },
    /// The 8-byte header length points past the end of the file.
    #[error("{}: header length {header_len} runs past the end of the file ({file_len} bytes)", path.display())]
    HeaderPastEnd {
        /// The shard.
        path: PathBuf,
        /// The declared JSON header length.
        header_len: u64,
        /// The file's length.
        file_len: u64,
    },
    /// The header is larger than [`super::safetensors::MAX_HEADER_SIZE`].
    #[error("{}: header length {header_len} exceeds the limit of {limit} bytes", path.display())]
    HeaderTooLarge {
        /// The shard.
        path: PathBuf,
        /// The declared JSON header length.
        header_len: u64,
        /// The limit.
        limit: usize,
    },
    /// The JSON header does not parse, or an entry in it is malformed.
    #[error("{}: invalid header JSON: {detail}", path.display())]
    HeaderJson {
        /// The shard.
        path: PathBuf,
        /// The parser's message, with the tensor name where known.
        detail: String,
    },
    /// A tensor's dtype string is not one safetensors defines (or one we can't address).
    #[error("{}: tensor `{tensor}` has unknown dtype \"{dtype}\"", path.display())]
    UnknownDtype {
        /// The shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The dtype string as written.
        dtype: String,
    },
    /// A tensor's data offsets are reversed or end past the data area.
    #[error("{}: tensor `{tensor}` data offsets [{start}, {end}] out of bounds of the {data_len}-byte data area", path.display())]
    OffsetsOutOfBounds {
        /// The shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Declared start (relative to the data area).
        start: usize,
        /// Declared end.
        end: usize,
        /// Size of the data area.
        data_len: usize,
    },
    /// Two tensors claim the same bytes.
    #[error("{}: tensors `{first}` and `{second}` have overlapping data offsets", path.display())]
    OverlappingOffsets {
        /// The shard.
        path: PathBuf,
        /// The tensor starting first.
        first: String,
        /// The tensor overlapping it.
        second: String,
    },
    /// Some bytes of the data area belong to no tensor.
    #[error("{}: bytes {start}..{end} of the data area belong to no tensor (offsets must cover the data area)", path.display())]
    UncoveredBytes {
        /// The shard.
        path: PathBuf,
        /// First uncovered byte (relative to the data area).
        start: usize,
        /// End of the uncovered range.
        end: usize,
    },
    /// The byte length given by the offsets differs from shape × dtype size.
    #[error("{}: tensor `{tensor}` has {actual} bytes but shape {shape:?} of {dtype} needs {expected}", path.display())]
    ByteLength {
        /// The shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<usize>,
        /// Bytes implied by shape and dtype.
        expected: usize,
        /// Bytes given by the offsets.
        actual: usize,
    },
    /// The shape's element count overflows.
    #[error("{}: tensor `{tensor}` shape {shape:?} overflows the address space", path.display())]
    ShapeOverflow {
        /// The shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// The safetensors crate rejected a file our own checks let through.
    #[error("{}: {source}", path.display())]
    Safetensors {
        /// The shard.
        path: PathBuf,
        /// The crate's error.
        source: safetensors::SafeTensorError,
    },
    /// `model.safetensors.index.json` does not parse or lacks `weight_map`.
    #[error("{}: invalid index JSON: {detail}", path.display())]
    IndexJson {
        /// The index file.
        path: PathBuf,
        /// The parser's message.
        detail: String,
    },
    /// The index names a shard that is not in the directory (or is not a plain file name).
    #[error("{}: index names shard \"{shard}\" which {problem}", path.display())]
    BadShard {
        /// The index file.
        path: PathBuf,
        /// The shard name as written.
        shard: String,
        /// "does not exist" or "is not a plain file name".
        problem: &'static str,
    },
    /// The index lists a tensor its shard does not contain.
    #[error("{}: tensor `{tensor}` listed in {} is missing from this shard", path.display(), index.display())]
    MissingFromShard {
        /// The shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The index that listed it.
        index: PathBuf,
    },
    /// The same tensor name appears in two shards.
    #[error("{}: tensor `{tensor}` is also in {}", path.display(), other.display())]
    DuplicateTensor {
        /// The second shard holding it.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The first shard holding it.
        other: PathBuf,
    },
    /// A requested tensor is not in the checkpoint.
    #[error("{}: no tensor named `{tensor}`", path.display())]
    TensorNotFound {
        /// The checkpoint path.
        path: PathBuf,
        /// The name asked for.
        tensor: String,
    },
    /// An FP8 weight has no `<name>_scale_inv` sibling.
    #[error("{}: FP8 weight `{tensor}` without its weight_scale_inv (`{tensor}_scale_inv` not found)", path.display())]
    MissingScale {
        /// The shard holding the weight.
        path: PathBuf,
        /// The weight.
        tensor: String,
    },
    /// An FP8 weight's scale tensor has the wrong shape, dtype or the weight is not 2-D.
    #[error("{}: scale `{scale}` {problem}", path.display())]
    BadScale {
        /// The shard holding the scale.
        path: PathBuf,
        /// The scale tensor.
        scale: String,
        /// e.g. "has shape [2, 2], expected [3, 2] for weight `w` [300, 200] in 128×128 blocks".
        problem: String,
    },
    /// A request against a tensor does not fit it (row range, buffer length, dimensionality).
    #[error("{}: tensor `{tensor}`: {problem}", path.display())]
    BadRequest {
        /// The shard holding the tensor.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What does not fit.
        problem: String,
    },
    /// Decoding a tensor's bytes failed (unsupported dtype, length mismatch).
    #[error("{}: tensor `{tensor}`: {source}", path.display())]
    Decode {
        /// The shard holding the tensor.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The decoder's error.
        source: DecodeError,
    },
    /// `config.json` is not valid JSON or not an object.
    #[error("{}: invalid JSON: {detail}", path.display())]
    ConfigJson {
        /// The config file.
        path: PathBuf,
        /// The parser's message.
        detail: String,
    },
    /// A required config field is absent.
    #[error("{}: missing required field `{field}`", path.display())]
    ConfigMissing {
        /// The config file.
        path: PathBuf,
        /// Dotted field name, e.g. `rope_scaling.factor`.
        field: String,
    },
    /// A config field has the wrong JSON type or an unsupported value.
    #[error("{}: field `{field}`: {detail}", path.display())]
    ConfigField {
        /// The config file.
        path: PathBuf,
        /// Dotted field name.
        field: String,
        /// What was wrong with it.
        detail: String,
    },
    /// `model_type` names an architecture r1q does not convert.
    #[error("{}: unsupported model_type \"{model_type}\" (expected deepseek_v3, deepseek_v2, qwen2 or llama)", path.display())]
    UnknownModelType {
        /// The config file.
        path: PathBuf,
        /// The value found.
        model_type: String,
    },
    /// Config values contradict each other.
    #[error("{}: inconsistent config: {detail}", path.display())]
    ConfigInconsistent {
        /// The config file.
        path: PathBuf,
        /// Which values disagree.
        detail: String,
    },
}
