//! The one load path: a manifest and its shards, from wherever they come (files natively,
//! `fetch` and the Cache API in the browser, memory in tests), become a ready `Engine`. Shards
//! are uploaded as they arrive, so at most `concurrency` of them are held in memory.

use std::cell::{Cell, RefCell};

use crate::error::Result;
use crate::format::Manifest;
use crate::gpu::GpuContext;
use crate::model::engine::{Engine, EngineOptions};
use crate::model::weights::{verify_shard, WeightLoader};

/// What `load` reports to its source as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadPhase {
    /// Shard `i` arrived and is being uploaded to the GPU.
    Upload(usize),
    /// Every shard is on the GPU; the kernels are being compiled.
    Compile,
}

/// Where shards come from.
// The futures are awaited where they are made (no Send bound is needed, and none can be had
// in the browser).
#[allow(async_fn_in_trait)]
pub trait ShardSource {
    /// Shard `index`'s bytes, checked against the manifest with `verify_shard`.
    async fn shard(&self, index: usize) -> Result<Vec<u8>>;

    /// Shards in flight at once.
    fn concurrency(&self) -> usize {
        1
    }

    fn progress(&self, _phase: LoadPhase) {}
}

/// Load the model `manifest` describes: options are checked against its config first (before
/// any shard is read), then the shards are fetched `source.concurrency()` at a time and each
/// uploaded as it arrives, then the engine is built.
pub async fn load(ctx: GpuContext, manifest: &Manifest, source: &impl ShardSource, options: EngineOptions) -> Result<Engine> {
    let options = options.resolve(&manifest.config)?;
    // The KV cache and activations first: a context the GPU has no room for is refused before
    // a shard is read.
    let state = Engine::allocate_state(&ctx, &manifest.config, options).await?;
    let loader = RefCell::new(WeightLoader::new(&ctx, manifest));
    let next = Cell::new(0usize);
    let worker = || async {
        loop {
            let i = next.get();
            if i >= manifest.shards.len() {
                return Ok::<_, crate::Error>(());
            }
            next.set(i + 1);
            let bytes = source.shard(i).await?;
            source.progress(LoadPhase::Upload(i));
            let size = bytes.len() as u64;
            let file = manifest.shards.get(i).map_or("?", |s| s.file.as_str());
            ctx.allocating(|| loader.borrow_mut().add_shard(i, &bytes), |_| (format!("the weights of {file}"), size)).await?;
        }
    };
    futures_util::future::try_join_all((0..source.concurrency().max(1)).map(|_| worker())).await?;
    let weights = loader.into_inner().finish()?;
    source.progress(LoadPhase::Compile);
    Engine::with_state(ctx, manifest.config.clone(), weights, options, state).await
}

/// Shards held in memory (a conversion done in memory, in tests and in the browser).
pub struct InMemory<'a> {
    pub manifest: &'a Manifest,
    pub shards: &'a [Vec<u8>],
}

impl ShardSource for InMemory<'_> {
    async fn shard(&self, index: usize) -> Result<Vec<u8>> {
        let bytes = self.shards.get(index).ok_or_else(|| crate::Error::Format(format!("shard {index} is missing")))?;
        verify_shard(self.manifest, index, bytes)?;
        Ok(bytes.clone())
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::{read_manifest, read_shard, Dir};

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::Path;

    use super::*;
    use crate::error::Error;
    use crate::format::MANIFEST_FILE;

    pub fn read_manifest(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Format(format!("cannot read {}: {e} (is this a directory made by `gemma convert`?)", path.display())))?;
        Manifest::from_json(&text)
    }

    /// Read shard `index` and check its size and SHA-256.
    pub fn read_shard(dir: &Path, manifest: &Manifest, index: usize) -> Result<Vec<u8>> {
        let entry = manifest.shards.get(index).ok_or_else(|| Error::Format(format!("shard {index} is not in the manifest")))?;
        let path = dir.join(&entry.file);
        let bytes = std::fs::read(&path).map_err(|e| Error::Format(format!("cannot read {}: {e}", path.display())))?;
        verify_shard(manifest, index, &bytes)?;
        Ok(bytes)
    }

    /// A model directory made by `gemma convert`.
    pub struct Dir<'a> {
        pub dir: &'a Path,
        pub manifest: &'a Manifest,
    }

    impl ShardSource for Dir<'_> {
        async fn shard(&self, index: usize) -> Result<Vec<u8>> {
            read_shard(self.dir, self.manifest, index)
        }
    }

    impl Engine {
        /// Load a converted model directory onto `ctx`'s device.
        pub async fn load_dir(ctx: GpuContext, dir: &Path, options: EngineOptions) -> Result<Self> {
            let manifest = read_manifest(dir)?;
            load(ctx, &manifest, &Dir { dir, manifest: &manifest }, options).await
        }
    }
}
