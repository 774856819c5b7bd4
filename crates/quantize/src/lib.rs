//! ggml block codecs (quantize with optional importance weights, dequantize), the per-tensor type
//! choice of each llama-quantize mix, and size planning.
//!
//! Not for: reading or writing files (that is `formats`) or choosing which tensors exist (that is
//! `convert`).
//!
//! Entry points: [`quantize_rows`] and [`dequantize_rows`] dispatch on the ggml type; every codec
//! produces the same bytes as llama.cpp's reference (or `*_impl`, with importance weights).

mod rows;

pub use rows::{dequantize_rows, quantize_rows, supports, QuantizeError};
