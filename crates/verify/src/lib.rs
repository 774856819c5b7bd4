//! The reference forward pass per architecture, tokenization, perplexity, KL divergence and
//! calibration statistics (imatrix).
//!
//! Not for: writing models. Evaluation is layer-major (DESIGN.md): every token of every chunk
//! passes through layer L before layer L+1, so each layer's weights are dequantized once per run
//! and matmuls are large GEMMs.
//!
//! Layout: [`tensor`] (matrices, sequence spans), [`ops`] (numerical kernels), [`source`] (where
//! weights come from), [`config`] (hyper-parameters), [`engine`] (the layer loop, logits,
//! observer hooks), [`arch`] (one block type per architecture).

pub mod arch;
pub mod backend;
pub mod calibrate;
pub mod config;
pub mod cuda;
pub mod engine;
pub mod error;
pub mod kld;
pub mod ops;
pub mod ppl;
pub mod source;
pub mod tensor;
pub mod tokenize;

pub use backend::{Backend, Device, DeviceError};
pub use config::{Arch, Deepseek2Params, ModelConfig};
pub use engine::{Block, Engine, EvalOptions, LayerCtx, LayerObserver, LogitPositions, Progress};
pub use error::VerifyError;
pub use source::{GgufSource, WeightSource};
pub use tensor::{Mat, SeqSpan};
