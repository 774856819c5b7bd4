//! The hub client (`pull`), the HF → GGUF architecture mappings and the streaming pipeline that
//! reads, transforms, quantizes and writes one tensor at a time.
//!
//! Not for: byte formats (that is `formats`) or block codecs (that is `quantize`). The mappings
//! arrive with the convert issue; until then this crate is only its place in the workspace.
