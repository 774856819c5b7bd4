//! The one error type of `verify`: what was wrong, naming the file, tensor or key.

use formats::gguf::GgufError;
use thiserror::Error;

/// Why a model could not be loaded or evaluated.
///
/// Exists so the CLI prints exactly one line that says which file, tensor or key was wrong and
/// what was expected. Causes are part of each message (no `source` chain), so printing the
/// chain never repeats text.
#[derive(Debug, Error)]
pub enum VerifyError {
    /// The GGUF file could not be opened or is malformed (the message names the file).
    #[error("{0}")]
    Gguf(GgufError),
    /// A metadata key the architecture needs is absent.
    #[error("{origin}: metadata key '{key}' is missing")]
    MissingKey {
        /// The weight source (`GGUF file /x.gguf`, `HF checkpoint /dir`).
        origin: String,
        /// The key.
        key: String,
    },
    /// A metadata key has the wrong type or an impossible value.
    #[error("{origin}: metadata key '{key}': {problem}")]
    BadKey {
        /// The weight source.
        origin: String,
        /// The key.
        key: String,
        /// What is wrong with it, including what was expected.
        problem: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("{origin}: tensor '{tensor}' is missing")]
    MissingTensor {
        /// The weight source.
        origin: String,
        /// The tensor name (GGUF naming).
        tensor: String,
    },
    /// A tensor's dimensions contradict the metadata.
    #[error(
        "{origin}: tensor '{tensor}' has dims {found:?}, expected {expected:?} from the metadata"
    )]
    TensorShape {
        /// The weight source.
        origin: String,
        /// The tensor name.
        tensor: String,
        /// Dims the metadata implies (ggml `ne` order, innermost first).
        expected: Vec<u64>,
        /// Dims the file records.
        found: Vec<u64>,
    },
    /// A tensor's data could not be turned into f32 (unsupported type, wrong size, read error).
    #[error("{origin}: tensor '{tensor}': {problem}")]
    TensorData {
        /// The weight source.
        origin: String,
        /// The tensor name.
        tensor: String,
        /// The cause.
        problem: String,
    },
    /// The model's architecture has no forward pass here (yet).
    #[error("{origin}: architecture '{arch}' is not supported{detail}")]
    UnsupportedArch {
        /// The weight source.
        origin: String,
        /// `general.architecture`.
        arch: String,
        /// Extra explanation (empty or starting with ": ").
        detail: String,
    },
    /// An input token id is not in the vocabulary.
    #[error(
        "token id {token} (sequence {seq}, position {pos}) is outside the vocabulary of {n_vocab}"
    )]
    BadToken {
        /// The id.
        token: u32,
        /// Sequence index.
        seq: usize,
        /// Position in the sequence.
        pos: usize,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// `max_memory` is too small for even one sequence.
    #[error("--max-memory {limit} bytes is too small: one layer's f32 weights plus one sequence of {tokens} tokens need {need} bytes")]
    MemoryLimit {
        /// The limit given.
        limit: u64,
        /// The smallest amount that would work.
        need: u64,
        /// Tokens of the longest sequence.
        tokens: usize,
    },
    /// The device cannot hold the activations of even one sequence.
    #[error("the device offers {budget} bytes for activations, but one sequence of {tokens} tokens needs {need}: use shorter chunks (-c) or --device cpu")]
    DeviceMemory {
        /// Bytes the device offers for one group's activations.
        budget: u64,
        /// What one sequence needs.
        need: u64,
        /// Tokens of the longest sequence.
        tokens: usize,
    },
    /// Invalid request (e.g. inconsistent arguments); the message says what.
    #[error("{0}")]
    Invalid(String),
}

impl From<GgufError> for VerifyError {
    fn from(e: GgufError) -> Self {
        VerifyError::Gguf(e)
    }
}

/// `Result` with [`VerifyError`].
pub type Result<T, E = VerifyError> = std::result::Result<T, E>;
