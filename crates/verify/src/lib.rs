//! The reference forward pass per architecture, tokenization, perplexity, KL divergence and
//! calibration statistics (imatrix).
//!
//! Not for: writing models. The engine arrives with the verify issue; until then this crate is only
//! its place in the workspace.
