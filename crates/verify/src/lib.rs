//! The reference forward pass per architecture, tokenization, perplexity, KL divergence and
//! calibration statistics (imatrix).
//!
//! Not for: writing models. Evaluation is layer-major (DESIGN.md): every token of every chunk
//! passes through layer L before layer L+1, so each layer's weights are dequantized once per run
//! and matmuls are large GEMMs.

pub mod tensor;
