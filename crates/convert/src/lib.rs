//! The hub client (`pull`), the HF → GGUF architecture mappings and the streaming pipeline that
//! reads, transforms, quantizes and writes one tensor at a time.
//!
//! Not for: byte formats (that is `formats`) or block codecs (that is `quantize`).
//!
//! A conversion is two steps: an architecture module turns a checkpoint into a [`plan::Plan`]
//! (names, shapes, types, sources, metadata — no data touched), then the pipeline executes it.

pub mod arch;
pub mod error;
pub mod hub;
pub mod pipeline;
pub mod plan;
pub mod requantize;
pub mod tensors;
pub mod tokenizer;

pub use error::{ConvertError, Result};
