//! ggml block codecs (quantize with optional importance weights, dequantize), the per-tensor type
//! choice of each llama-quantize mix, and size planning.
//!
//! Not for: reading or writing files (that is `formats`) or choosing which tensors exist (that is
//! `convert`). The codecs arrive with the quantize issue; until then this crate is only its place
//! in the workspace.
