//! [`Checkpoint`]: a Hugging Face checkpoint (directory or single file) opened for zero-copy reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::config::{ModelConfig, DEFAULT_FP8_BLOCK};
use super::dtype::{decode_to_f32, Dtype};
use super::error::{CheckpointError, Result};
use super::fp8_block::{check_rows, check_scale, scale_name, Fp8BlockDecoder};
use super::index::{ShardIndex, INDEX_FILE};
use super::safetensors::Shard;

/// File name of an unsharded checkpoint's weights.
pub const SINGLE_FILE: &str = "model.safetensors";

/// File name of the model configuration.
pub const CONFIG_FILE: &str = "config.json";

/// What the header says about one tensor; listing these touches no tensor data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// Tensor name as in the checkpoint (e.g. `model.layers.0.mlp.gate_proj.weight`).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first (safetensors/PyTorch order).
    pub shape: Vec<usize>,
    /// The shard file holding it.
    pub file: PathBuf,
    /// Absolute byte offset of its data in `file`.
    pub offset: u64,
    /// Byte length of its data.
    pub len: u64,
}

impl TensorMeta {
    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A borrowed view of one tensor: its bytes are a slice of the shard's memory map (no copy).
///
/// Fields are public so callers (and tests, benchmarks) can build views over their own buffers;
/// every decoder re-checks `data` against `dtype` and `shape`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorView<'a> {
    /// Tensor name, for messages.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first.
    pub shape: &'a [usize],
    /// The raw little-endian bytes.
    pub data: &'a [u8],
    /// The file the bytes come from, for messages.
    pub file: &'a Path,
}

/// Decodes row ranges of any float tensor to f32: FP8 block-scaled weights through
/// [`Fp8BlockDecoder`], everything else element-wise. Rows are the outermost dimensions
/// flattened; a row is the last dimension (a 1-D tensor is one row, a scalar one element).
#[derive(Debug, Clone)]
pub enum RowDecoder<'a> {
    /// An F8_E4M3 weight with its `_scale_inv`.
    Fp8(Fp8BlockDecoder<'a>),
    /// Any other float tensor (F32, F16, BF16, F64, F8_E5M2).
    Plain {
        /// The tensor.
        view: TensorView<'a>,
        /// Outer dimensions flattened.
        rows: usize,
        /// Last dimension.
        cols: usize,
    },
}

impl RowDecoder<'_> {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        match self {
            RowDecoder::Fp8(d) => d.rows(),
            RowDecoder::Plain { rows, .. } => *rows,
        }
    }

    /// Elements per row.
    pub fn cols(&self) -> usize {
        match self {
            RowDecoder::Fp8(d) => d.cols(),
            RowDecoder::Plain { cols, .. } => *cols,
        }
    }

    /// Decodes rows `start_row ..` into `out` (a whole number of rows) on this thread.
    pub fn decode_rows(&self, start_row: usize, out: &mut [f32]) -> Result<()> {
        match self {
            RowDecoder::Fp8(d) => d.decode_rows(start_row, out),
            RowDecoder::Plain { view, rows, cols } => {
                let request = |problem: String| CheckpointError::BadRequest {
                    path: view.file.to_path_buf(),
                    tensor: view.name.to_string(),
                    problem,
                };
                check_rows(*rows, *cols, start_row, out.len()).map_err(request)?;
                let size = view.dtype.size();
                let start = start_row * cols * size;
                let src = view
                    .data
                    .get(start..start + out.len() * size)
                    .ok_or_else(|| request("row range outside the tensor data".into()))?;
                decode_to_f32(view.dtype, src, out).map_err(|source| CheckpointError::Decode {
                    path: view.file.to_path_buf(),
                    tensor: view.name.to_string(),
                    source,
                })
            }
        }
    }
}

/// A checkpoint opened for reading: every shard memory-mapped and validated, config parsed.
///
/// Exists so the converter, `inspect` and the forward pass see one strict view of the files:
/// [`Checkpoint::open`] rejects anything malformed (with the file and problem named) before any
/// tensor data is touched, then hands out zero-copy views.
pub struct Checkpoint {
    path: PathBuf,
    shards: Vec<Shard>,
    /// Sorted by name.
    metas: Vec<TensorMeta>,
    /// (shard, entry) of each meta.
    locs: Vec<(usize, usize)>,
    config: Option<ModelConfig>,
    config_path: Option<PathBuf>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("shards", &self.shards.len())
            .field("tensors", &self.metas.len())
            .field("config", &self.config)
            .finish()
    }
}

impl Checkpoint {
    /// Opens `path`: a directory with `model.safetensors.index.json` and its shards, a directory
    /// with a single `model.safetensors`, or one `.safetensors` file. A directory's `config.json`
    /// is parsed when present. Runs [`Checkpoint::validate`] before returning.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let md = std::fs::metadata(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = None;
        let mut config_path = None;
        let mut index = None;
        let shard_paths: Vec<PathBuf> = if md.is_dir() {
            let cfg = path.join(CONFIG_FILE);
            if cfg.is_file() {
                config = Some(ModelConfig::from_file(&cfg)?);
                config_path = Some(cfg);
            }
            let index_path = path.join(INDEX_FILE);
            if index_path.is_file() {
                let idx = ShardIndex::read(&index_path, path)?;
                let shards = idx.shards().iter().map(|s| path.join(s)).collect();
                index = Some(idx);
                shards
            } else if path.join(SINGLE_FILE).is_file() {
                vec![path.join(SINGLE_FILE)]
            } else {
                return Err(CheckpointError::NotACheckpoint {
                    path: path.to_path_buf(),
                });
            }
        } else {
            vec![path.to_path_buf()]
        };

        let shards = shard_paths
            .iter()
            .map(|p| Shard::open(p))
            .collect::<Result<Vec<_>>>()?;

        if let Some(idx) = &index {
            let by_path: std::collections::HashMap<&Path, &Shard> =
                shards.iter().map(|s| (s.path.as_path(), s)).collect();
            for (name, shard_name) in &idx.weight_map {
                let shard_path = path.join(shard_name);
                let found = by_path.get(shard_path.as_path()).and_then(|s| s.find(name));
                if found.is_none() {
                    return Err(CheckpointError::MissingFromShard {
                        path: shard_path,
                        tensor: name.clone(),
                        index: idx.path.clone(),
                    });
                }
            }
        }

        let mut by_name: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for (si, shard) in shards.iter().enumerate() {
            for (ei, e) in shard.entries.iter().enumerate() {
                if let Some(&(first, _)) = by_name.get(e.name.as_str()) {
                    let other = shards
                        .get(first)
                        .map(|s| s.path.clone())
                        .unwrap_or_default();
                    return Err(CheckpointError::DuplicateTensor {
                        path: shard.path.clone(),
                        tensor: e.name.clone(),
                        other,
                    });
                }
                by_name.insert(&e.name, (si, ei));
            }
        }
        let mut metas = Vec::with_capacity(by_name.len());
        let mut locs = Vec::with_capacity(by_name.len());
        for &(si, ei) in by_name.values() {
            let Some(e) = shards
                .get(si)
                .and_then(|s| s.entries.get(ei).map(|e| (s, e)))
            else {
                continue;
            };
            let (shard, e) = e;
            metas.push(TensorMeta {
                name: e.name.clone(),
                dtype: e.dtype,
                shape: e.shape.clone(),
                file: shard.path.clone(),
                offset: e.start as u64,
                len: (e.end - e.start) as u64,
            });
            locs.push((si, ei));
        }
        drop(by_name);
        let ckpt = Checkpoint {
            path: path.to_path_buf(),
            shards,
            metas,
            locs,
            config,
            config_path,
        };
        ckpt.validate()?;
        Ok(ckpt)
    }

    /// The path this checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shard files, sorted by name.
    pub fn shard_files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Every tensor, **sorted by name** (byte order), across all shards; headers only. Sort by
    /// (`file`, `offset`) for sequential disk reads.
    pub fn tensors(&self) -> &[TensorMeta] {
        &self.metas
    }

    /// Header facts of one tensor, if present.
    pub fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.index_of(name).and_then(|i| self.metas.get(i))
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.metas
            .binary_search_by(|m| m.name.as_str().cmp(name))
            .ok()
    }

    /// A zero-copy view of tensor `name`.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let not_found = || CheckpointError::TensorNotFound {
            path: self.path.clone(),
            tensor: name.to_string(),
        };
        let i = self.index_of(name).ok_or_else(not_found)?;
        let &(si, ei) = self.locs.get(i).ok_or_else(not_found)?;
        let shard = self.shards.get(si).ok_or_else(not_found)?;
        let entry = shard.entries.get(ei).ok_or_else(not_found)?;
        let data = shard
            .data(entry)
            .ok_or_else(|| CheckpointError::Truncated {
                path: shard.path.clone(),
                detail: format!("tensor `{name}` lies past the end of the mapped file"),
            })?;
        Ok(TensorView {
            name: &entry.name,
            dtype: entry.dtype,
            shape: &entry.shape,
            data,
            file: &shard.path,
        })
    }

    /// The parsed `config.json`, when the checkpoint directory has one.
    pub fn config(&self) -> Option<&ModelConfig> {
        self.config.as_ref()
    }

    /// Where `config.json` was read from, when it was.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// FP8 block size: `quantization_config.weight_block_size` from the config, else [128, 128].
    pub fn fp8_block(&self) -> [usize; 2] {
        self.config
            .as_ref()
            .map_or(DEFAULT_FP8_BLOCK, ModelConfig::fp8_block)
    }

    /// Cross-tensor checks from headers alone (already run by [`Checkpoint::open`]): every
    /// F8_E4M3 weight is 2-D and has a float `<name>_scale_inv` of shape
    /// [⌈rows/B0⌉, ⌈cols/B1⌉].
    pub fn validate(&self) -> Result<()> {
        let block = self.fp8_block();
        for m in self.metas.iter().filter(|m| m.dtype == Dtype::F8E4M3) {
            let scale = scale_name(&m.name);
            if self.index_of(&scale).is_none() {
                return Err(CheckpointError::MissingScale {
                    path: m.file.clone(),
                    tensor: m.name.clone(),
                });
            }
            let view = self.tensor(&scale)?;
            check_scale((&m.name, &m.shape), &view, block)?;
        }
        Ok(())
    }

    /// A row decoder for float tensor `name`; F8_E4M3 weights are paired with their
    /// `<name>_scale_inv` and the checkpoint's block size.
    pub fn row_decoder(&self, name: &str) -> Result<RowDecoder<'_>> {
        let view = self.tensor(name)?;
        if view.dtype == Dtype::F8E4M3 {
            let scale = scale_name(name);
            if self.index_of(&scale).is_none() {
                return Err(CheckpointError::MissingScale {
                    path: view.file.to_path_buf(),
                    tensor: name.to_string(),
                });
            }
            let scale = self.tensor(&scale)?;
            return Ok(RowDecoder::Fp8(Fp8BlockDecoder::new(
                view,
                scale,
                self.fp8_block(),
            )?));
        }
        if !view.dtype.is_float() {
            return Err(CheckpointError::Decode {
                path: view.file.to_path_buf(),
                tensor: name.to_string(),
                source: super::dtype::DecodeError::Unsupported(view.dtype),
            });
        }
        let cols = view.shape.last().copied().unwrap_or(1);
        let numel: usize = view.shape.iter().product();
        let rows = numel.checked_div(cols).unwrap_or(0);
        Ok(RowDecoder::Plain { view, rows, cols })
    }

    /// Decodes rows `start_row ..` of tensor `name` to f32 into `out` (a whole number of rows;
    /// rows as in [`RowDecoder`]). F8_E4M3 weights are dequantized with their block scales.
    ///
    /// Convenience for one-off reads; loops over many tiles of one tensor should keep a
    /// [`Checkpoint::row_decoder`] (which decodes the scales once).
    pub fn f32_rows(&self, name: &str, start_row: usize, out: &mut [f32]) -> Result<()> {
        self.row_decoder(name)?.decode_rows(start_row, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_single(path: &Path) {
        let w: Vec<u8> = (0..=255u8).collect();
        let s: Vec<u8> = [0.5f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = vec![
            (
                "x.weight",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F8_E4M3, vec![2, 128], &w)
                    .unwrap(),
            ),
            (
                "x.weight_scale_inv",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 1], &s[..4])
                    .unwrap(),
            ),
        ];
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn opens_every_fixture_and_decodes_every_float_tensor() {
        for arch in fixtures::Arch::ALL {
            let dir = tempfile::tempdir().unwrap();
            fixtures::write_fixture(arch, dir.path(), &fixtures::Options::default()).unwrap();
            let ckpt = Checkpoint::open(dir.path()).unwrap();
            let config = ckpt.config().expect("fixture has config.json");
            let want = match arch {
                fixtures::Arch::DeepseekV3 => "deepseek_v3",
                fixtures::Arch::Qwen2 => "qwen2",
                fixtures::Arch::Llama => "llama",
            };
            assert_eq!(config.model_type(), want);
            let names: Vec<&str> = ckpt.tensors().iter().map(|m| m.name.as_str()).collect();
            assert!(
                names.windows(2).all(|w| w[0] < w[1]),
                "tensors() not sorted"
            );
            for m in ckpt.tensors() {
                let v = ckpt.tensor(&m.name).unwrap();
                assert_eq!(v.data.len() as u64, m.len);
                assert_eq!(v.shape, m.shape.as_slice());
                if m.dtype.is_float() {
                    let mut out = vec![0f32; m.numel()];
                    ckpt.f32_rows(&m.name, 0, &mut out).unwrap();
                    if m.dtype == Dtype::BF16 {
                        assert!(out.iter().all(|x| x.is_finite()), "{}", m.name);
                    }
                }
            }
            let err = ckpt.tensor("no.such.tensor").unwrap_err().to_string();
            assert!(err.contains("no tensor named `no.such.tensor`"), "{err}");
        }
    }

    #[test]
    fn opens_single_file_and_single_file_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(SINGLE_FILE);
        write_single(&file);
        for path in [file.as_path(), dir.path()] {
            let ckpt = Checkpoint::open(path).unwrap();
            assert!(ckpt.config().is_none());
            assert_eq!(ckpt.tensors().len(), 2);
            let mut out = vec![0f32; 128];
            ckpt.f32_rows("x.weight", 1, &mut out).unwrap();
            assert_eq!(out[0x38], -0.5, "code 0xb8 is -1.0, scale 0.5");
            let err = ckpt
                .f32_rows("x.weight", 1, &mut vec![0f32; 256])
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains("rows 1..3 requested, tensor has 2"),
                "{err}"
            );
        }
    }

    #[test]
    fn rejects_paths_that_are_not_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let err = Checkpoint::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a checkpoint"), "{err}");
        let missing = dir.path().join("nope");
        let err = Checkpoint::open(&missing).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
