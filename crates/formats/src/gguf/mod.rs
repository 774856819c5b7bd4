//! GGUF v3 (REFERENCE §1): a strict, bounded, memory-mapped reader and a streaming writer.
//!
//! The reader validates everything `gguf_init_from_reader` validates (and a little more) before
//! handing out any tensor bytes; the writer produces files that llama.cpp and gguf-py load, writes
//! tensor data as it arrives (no whole-file buffers) and makes the output appear atomically.

mod error;
mod reader;
mod value;
mod writer;

pub use error::{GgufError, GgufProblem};
pub use reader::{GgufFile, TensorInfo};
pub use value::{GgufArray, GgufValue, GgufValueType};
pub use writer::{GgufWriter, TensorDecl};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// The version the writer emits (the reader also accepts 2, which has the same layout).
pub const GGUF_VERSION: u32 = 3;

/// Data alignment when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The metadata key that overrides the data alignment (must be a UINT32 power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Longest string the reader accepts, in bytes (llama.cpp's limit: 1 GiB).
pub const MAX_STRING_LEN: u64 = 1 << 30;

/// Most elements an array may have (llama.cpp's limit: 2^30).
pub const MAX_ARRAY_LEN: u64 = 1 << 30;

/// Longest tensor name in bytes (`GGML_MAX_NAME` = 64 including the NUL terminator).
pub const MAX_TENSOR_NAME_LEN: usize = 63;

/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// Deepest nesting of arrays the reader accepts (llama.cpp accepts none; we accept a few, bounded
/// so a crafted file cannot exhaust the stack).
pub const MAX_ARRAY_NESTING: u32 = 8;

/// `x` rounded up to a multiple of `align` (a power of two); `None` on overflow.
pub(crate) fn pad_to(x: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    x.checked_add(mask).map(|v| v & !mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_rounds_up_to_alignment() {
        assert_eq!(pad_to(0, 32), Some(0));
        assert_eq!(pad_to(1, 32), Some(32));
        assert_eq!(pad_to(32, 32), Some(32));
        assert_eq!(pad_to(33, 64), Some(64));
        assert_eq!(pad_to(u64::MAX, 32), None);
        assert_eq!(pad_to(5, 0), None);
    }
}
