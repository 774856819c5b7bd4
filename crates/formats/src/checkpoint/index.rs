//! `model.safetensors.index.json`: which shard holds which tensor in a sharded checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{CheckpointError, Result};
use super::safetensors::Pairs;

/// File name of the shard index in a sharded Hugging Face checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The parsed index: tensor name → shard file name (relative to the checkpoint directory).
#[derive(Debug, Clone)]
pub(crate) struct ShardIndex {
    pub path: PathBuf,
    pub weight_map: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawIndex {
    weight_map: Pairs<String>,
}

impl ShardIndex {
    /// Reads the index at `path` and checks every shard it names is a plain file name present in
    /// `dir`.
    pub fn read(path: &Path, dir: &Path) -> Result<ShardIndex> {
        let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: RawIndex =
            serde_json::from_str(&text).map_err(|e| CheckpointError::IndexJson {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        let weight_map =
            raw.weight_map
                .into_unique()
                .map_err(|name| CheckpointError::IndexJson {
                    path: path.to_path_buf(),
                    detail: format!("tensor `{name}` is listed twice in weight_map"),
                })?;
        for shard in weight_map.values() {
            let plain =
                !shard.is_empty() && !shard.contains(['/', '\\']) && shard != "." && shard != "..";
            if !plain {
                return Err(CheckpointError::BadShard {
                    path: path.to_path_buf(),
                    shard: shard.clone(),
                    problem: "is not a plain file name in the checkpoint directory",
                });
            }
            if !dir.join(shard).is_file() {
                return Err(CheckpointError::BadShard {
                    path: path.to_path_buf(),
                    shard: shard.clone(),
                    problem: "does not exist",
                });
            }
        }
        Ok(ShardIndex {
            path: path.to_path_buf(),
            weight_map,
        })
    }

    /// The distinct shard file names, sorted.
    pub fn shards(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.weight_map.values().map(String::as_str).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}
