//! The transformer blocks per architecture, and the helpers every block uses to load weights
//! with their dims checked against the configuration.
//!
//! Dispatch: [`spec`] maps the model's [`Arch`] to an [`ArchSpec`] (how to load one layer's
//! [`Block`]). llama and qwen2 share [`dense::DenseBlock`]; deepseek2 lives in `deepseek2/`.

pub mod deepseek2;
pub mod dense;

use crate::config::{Arch, ModelConfig};
use crate::engine::Block;
use crate::error::{Result, VerifyError};
use crate::source::WeightSource;
use crate::tensor::Mat;

/// Loads layer `layer` of one architecture as a boxed [`Block`] (which may borrow the source).
pub type LoadFn =
    for<'s> fn(&'s dyn WeightSource, &ModelConfig, usize) -> Result<Box<dyn Block<'s> + 's>>;

/// What the engine needs to know about an architecture's block type.
#[derive(Clone, Copy)]
pub struct ArchSpec {
    /// Loads one layer.
    pub load: LoadFn,
    /// The block's activation floats per token at its peak ([`Block::floats_per_token`]).
    pub floats_per_token: fn(&ModelConfig) -> usize,
}

impl ArchSpec {
    /// The spec of block type `B` (one that keeps no reference to the source).
    pub fn of<B: for<'s> Block<'s> + 'static>() -> ArchSpec {
        ArchSpec {
            load: load_boxed::<B>,
            floats_per_token: B::floats_per_token,
        }
    }
}

fn load_boxed<'s, B>(
    source: &'s dyn WeightSource,
    config: &ModelConfig,
    layer: usize,
) -> Result<Box<dyn Block<'s> + 's>>
where
    B: for<'x> Block<'x> + 'static,
{
    Ok(Box::new(B::load(source, config, layer)?))
}

/// The block implementation for `config.arch`.
pub fn spec(config: &ModelConfig, _source: &dyn WeightSource) -> Result<ArchSpec> {
    match config.arch {
        Arch::Llama | Arch::Qwen2 => Ok(ArchSpec::of::<dense::DenseBlock>()),
        Arch::Deepseek2 => Ok(ArchSpec {
            load: |source, config, layer| {
                Ok(Box::new(deepseek2::Deepseek2Block::load_layer(
                    source, config, layer,
                )?))
            },
            floats_per_token: deepseek2::Deepseek2Block::peak_floats_per_token,
        }),
    }
}

/// Checks that tensor `name` exists with exactly `dims` (ggml order, innermost first).
pub fn check_dims(source: &dyn WeightSource, name: &str, dims: &[u64]) -> Result<()> {
    let found = source
        .tensor_dims(name)
        .ok_or_else(|| source.missing(name))?;
    if found != dims {
        return Err(VerifyError::TensorShape {
            origin: source.description(),
            tensor: name.to_string(),
            expected: dims.to_vec(),
            found,
        });
    }
    Ok(())
}

/// Loads tensor `name` with exactly `dims` as f32 (any rank; e.g. 3-D expert tensors
/// `[in, out, n_expert]` come back expert after expert).
pub fn load_tensor(source: &dyn WeightSource, name: &str, dims: &[u64]) -> Result<Vec<f32>> {
    check_dims(source, name, dims)?;
    let data = source.load_f32(name)?;
    let n: u64 = dims.iter().product();
    if data.len() as u64 != n {
        return Err(VerifyError::TensorData {
            origin: source.description(),
            tensor: name.to_string(),
            problem: format!("source returned {} values for {n} elements", data.len()),
        });
    }
    Ok(data)
}

/// Loads a weight `[rows = out, cols = in]` (ggml dims `[in, out]`).
pub fn load_matrix(source: &dyn WeightSource, name: &str, rows: usize, cols: usize) -> Result<Mat> {
    let data = load_tensor(source, name, &[cols as u64, rows as u64])?;
    Ok(Mat::from_vec(rows, cols, data))
}

/// Loads a 1-D tensor of `len` values (norm weights, biases).
pub fn load_vector(source: &dyn WeightSource, name: &str, len: usize) -> Result<Vec<f32>> {
    load_tensor(source, name, &[len as u64])
}

/// Loads a 1-D tensor if present (optional biases).
pub fn load_optional_vector(
    source: &dyn WeightSource,
    name: &str,
    len: usize,
) -> Result<Option<Vec<f32>>> {
    if source.tensor_dims(name).is_none() {
        return Ok(None);
    }
    load_vector(source, name, len).map(Some)
}
