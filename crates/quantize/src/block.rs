//! The shape every ggml block codec shares: a `#[repr(C)]` struct laid out exactly like the C
//! `block_*` type (with a compile-time size check beside it), one function that quantizes one
//! block of f32 values and one that dequantizes it.
//!
//! Exists so that each type lives in its own small file and reads side by side with the others
//! (as in `ggml-quants.c`), while the row loops, size checks and threading live once in
//! [`crate::rows`].

use formats::ggml_type::GgmlType;

/// One ggml block type.
///
/// Blocks are (de)serialised through [`Block::read`] / [`Block::write`] rather than by casting
/// byte slices, so the codecs need no `unsafe` and no alignment assumptions about `dst`.
pub(crate) trait Block: Sized + Send + Sync {
    /// The ggml type this block encodes.
    const TYPE: GgmlType;
    /// Elements per block (`QK*` in ggml).
    const ELEMS: usize;
    /// Bytes per block on disk (`sizeof(block_*)` in ggml).
    const BYTES: usize;

    /// Quantizes exactly [`Block::ELEMS`] values with the reference algorithm.
    fn quantize(x: &[f32]) -> Self;
    /// Writes the values this block encodes into `y` ([`Block::ELEMS`] values).
    fn dequantize(&self, y: &mut [f32]);
    /// Decodes a block from exactly [`Block::BYTES`] little-endian bytes.
    fn read(bytes: &[u8]) -> Self;
    /// Encodes the block into exactly [`Block::BYTES`] bytes.
    fn write(&self, out: &mut [u8]);
}
