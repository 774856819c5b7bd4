//! Hugging Face checkpoints on disk: `config.json`, safetensors shards and their index, and the
//! decoding of stored dtypes (F8_E4M3 with 128×128 block scales, BF16, F16, F32) to f32 tiles.
//!
//! Not for: deciding what a tensor becomes in GGUF (that is `convert`). Everything here reads
//! headers strictly and hands out zero-copy views of memory-mapped shards; decoding writes into
//! caller-provided buffers so a 690 GB checkpoint streams through bounded memory.

pub mod config;
pub mod dtype;
pub mod error;
pub mod fp8_block;
pub mod index;
pub mod reader;
pub mod safetensors;

pub use config::{
    DeepseekV3Config, Llama3Scaling, LlamaConfig, ModelConfig, QuantizationConfig, Qwen2Config,
    RopeScaling, ScoringFunc, YarnScaling, DEFAULT_FP8_BLOCK,
};
pub use dtype::{
    decode_to_f32, fp8_e4m3_to_f32, round_to_bf16, DecodeError, Dtype, FP8_E4M3_TO_F32,
};
pub use error::{CheckpointError, Result};
pub use fp8_block::{expected_scale_shape, scale_name, Fp8BlockDecoder};
pub use index::INDEX_FILE;
pub use reader::{Checkpoint, RowDecoder, TensorMeta, TensorView, CONFIG_FILE, SINGLE_FILE};
pub use safetensors::MAX_HEADER_SIZE;
