//! ggml block codecs (quantize with optional importance weights, dequantize), the per-tensor type
//! choice of each llama-quantize mix, and size planning.
//!
//! Not for: reading or writing files (that is `formats`) or choosing which tensors exist (that is
//! `convert`).
//!
//! Entry points: [`quantize_rows`] and [`dequantize_rows`] dispatch on the ggml type; every codec
//! produces the same bytes as llama.cpp's reference (or `*_impl`, with importance weights).
//!
//! Layout: one file per type (`q8_0.rs`, …), each a `#[repr(C)]` block struct with a compile-time
//! size assertion implementing the `Block` trait of `block.rs`; the float casts live in `cast.rs`;
//! `rows.rs` holds size checks, dispatch and threading.

mod block;
mod cast;
mod iq4_lanes;
mod iq4_nl;
mod iq4_xs;
mod k_scales;
mod lanes;
mod legacy;
pub mod mix;
mod q2_k;
mod q3_k;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5_0;
mod q5_1;
mod q5_k;
mod q6_k;
mod q8_0;
mod rows;
mod search;

pub use cast::{f32_view, first_non_finite};
pub use rows::{dequantize_rows, quantize_rows, supports, QuantizeError};
