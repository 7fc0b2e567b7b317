//! The WGSL sources, one file per kernel family in `shaders/`, embedded at build time.
//!
//! WGSL has no `#include`; a kernel that needs shared helpers lists the library files it uses
//! (`common.wgsl`, `packed.wgsl`), which are prepended to it unchanged. Specialisation is by
//! WGSL `override` constants, never by editing source text.

const COMMON: &str = include_str!("../shaders/common.wgsl");
const PACKED: &str = include_str!("../shaders/packed.wgsl");

/// One kernel's WGSL: its library files, then its own file.
#[derive(Debug, Clone, Copy)]
pub struct Shader {
    pub name: &'static str,
    pub parts: &'static [&'static str],
}

impl Shader {
    pub fn source(&self) -> String {
        self.parts.join("\n")
    }
}

macro_rules! shader {
    ($id:ident, $file:literal, [$($lib:ident),*]) => {
        pub const $id: Shader = Shader { name: $file, parts: &[$($lib,)* include_str!(concat!("../shaders/", $file))] };
    };
}

shader!(EMBEDDING, "embedding.wgsl", [COMMON, PACKED]);
shader!(RMSNORM, "rmsnorm.wgsl", [COMMON]);
shader!(ROPE, "rope.wgsl", [COMMON]);
shader!(MATMUL, "matmul.wgsl", [COMMON, PACKED]);
shader!(MATVEC, "matvec.wgsl", [COMMON, PACKED]);
shader!(GEGLU, "geglu.wgsl", [COMMON]);
shader!(SOFTCAP, "softcap.wgsl", [COMMON]);
shader!(KV_CACHE, "kv_cache.wgsl", [COMMON]);
shader!(ATTENTION, "attention.wgsl", [COMMON]);
shader!(SAMPLE, "sample.wgsl", []);

/// Every kernel, for validation tests.
pub const ALL: &[Shader] = &[EMBEDDING, RMSNORM, ROPE, MATMUL, MATVEC, GEGLU, SOFTCAP, KV_CACHE, ATTENTION, SAMPLE];
