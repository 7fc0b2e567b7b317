//! Loading a model directory from the local file system (native builds).

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{Manifest, MANIFEST_FILE};
use crate::gpu::GpuContext;
use crate::model::engine::{Engine, EngineOptions};
use crate::model::weights::{verify_shard, WeightLoader};

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Format(format!("cannot read {}: {e} (is this a directory made by `gemma convert`?)", path.display())))?;
    Manifest::from_json(&text)
}

/// Read shard `index` and check its size and SHA-256.
pub fn read_shard(dir: &Path, manifest: &Manifest, index: usize) -> Result<Vec<u8>> {
    let path = dir.join(&manifest.shards[index].file);
    let bytes = std::fs::read(&path).map_err(|e| Error::Format(format!("cannot read {}: {e}", path.display())))?;
    verify_shard(manifest, index, &bytes)?;
    Ok(bytes)
}

impl Engine {
    /// Load a converted model directory onto `ctx`'s device.
    pub async fn load_dir(ctx: GpuContext, dir: &Path, options: EngineOptions) -> Result<Self> {
        let manifest = read_manifest(dir)?;
        let mut loader = WeightLoader::new(&ctx, &manifest);
        for i in 0..manifest.shards.len() {
            loader.add_shard(i, &read_shard(dir, &manifest, i)?)?;
        }
        let weights = loader.finish()?;
        Engine::new(ctx.clone(), manifest.config.clone(), weights, options).await
    }
}
