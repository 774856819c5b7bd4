//! Bytes on disk: HF checkpoint directories (config.json, safetensors shards and their index),
//! dtype decoding (F8_E4M3 with block scales, BF16, F16, F32), GGUF read and streaming write, the
//! ggml type table and imatrix files.
//!
//! Not for: deciding what a tensor becomes (that is `convert`) or how blocks are quantized (that is
//! `quantize`). Every reader here is strict and bounded: input from disk is validated before it is
//! touched, and every error names the file and the problem.

pub mod checkpoint;
pub mod ggml_type;
pub mod gguf;
pub mod imatrix;
pub mod pages;
pub mod tokenizer_pre;
