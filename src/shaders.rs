//! The WGSL sources, one file per kernel family in `shaders/`, embedded at build time.
//!
//! WGSL has no `#include`; a kernel that needs shared helpers lists the library files it uses
//! (`common.wgsl`, `packed.wgsl`), which are prepended to it unchanged. Specialisation is by
//! WGSL `override` constants, never by editing source text; the one choice made per device is
//! which of two library files ends a team kernel (its cross-lane sum with subgroup operations,
//! or through workgroup memory).

const COMMON: &str = include_str!("../shaders/common.wgsl");
const PACKED: &str = include_str!("../shaders/packed.wgsl");
const LINEAR: &str = include_str!("../shaders/linear.wgsl");
const MATVEC_COMMON: &str = include_str!("../shaders/matvec_common.wgsl");
const ROPE_COMMON: &str = include_str!("../shaders/rope_common.wgsl");
const NORM_COMMON: &str = include_str!("../shaders/norm_common.wgsl");
const ATTENTION_COMMON: &str = include_str!("../shaders/attention_common.wgsl");
const SAMPLE_COMMON: &str = include_str!("../shaders/sample_common.wgsl");
const ORDER_KEY: &str = include_str!("../shaders/order_key.wgsl");
const TEAM_PLAIN: &str = include_str!("../shaders/team_plain.wgsl");
const TEAM_SUBGROUP: &str = include_str!("../shaders/team_subgroup.wgsl");

macro_rules! shared_consts {
    ($( $(#[$doc:meta])* $name:ident = $value:expr; )*) => {
        /// Constants shared by the Rust launchers and the WGSL kernels.
        pub mod consts {
            $( $(#[$doc])* pub const $name: u32 = $value; )*
            /// `(name, value)` of each, as the WGSL prelude declares them.
            pub const ALL: &[(&str, u32)] = &[$( (stringify!($name), $name), )*];
        }
    };
}

shared_consts! {
    /// Invocations per workgroup of the one-dimensional kernels (elementwise ops, row
    /// reductions, the sampler).
    WG = 256;
    /// Invocations per matrix-vector workgroup (teams of 4, 16 or 64 lanes), the rows of W one
    /// team computes, and the rows of x one workgroup of the batched variant takes (the kernel
    /// writes these two out by hand: 8 and 4).
    MV_WG = 64;
    MV_NR = 8;
    MV_MB = 4;
    /// Invocations per RMSNorm workgroup (one row each): a quarter of `WG`, so a norm of one
    /// row pays 7 barriers instead of 9 and zero-fills 256 bytes of workgroup memory, not 1 KiB.
    WG_NORM = 64;
    /// Invocations per RoPE workgroup (one rotation pair each).
    WG_ROPE = 64;
    /// Keys per attention tile, one per invocation (the attention workgroup size).
    ATTN_KEYS = 64;
    /// The largest head dimension attention supports (Gemma: 256; 128 for the 27B models).
    MAX_HEAD_DIM = 256;
    /// Split decode attention: the most query heads one KV head serves (Gemma 2: 2, Gemma 3:
    /// 2 or 4; more take the one-workgroup-per-head kernel), and the most splits of the keys.
    ATTN_MAX_GROUP = 4;
    ATTN_MAX_SPLITS = 128;
    /// Prefill attention (`attention_prefill.wgsl`): query rows (query, head) per workgroup,
    /// all of one KV head, and keys per tile (the workgroup is AP_KEYS x AP_ROWS / 2).
    AP_ROWS = 8;
    AP_KEYS = 16;
    /// Sampler: logits per `sample_select.wgsl` workgroup (`WG` threads, 16 each), and the
    /// most candidates one chunk hands to `sample.wgsl` (the largest top-k that never reads
    /// the logits twice).
    SAMPLE_CHUNK = 4096;
    SAMPLE_LOCAL = 128;
    /// The most top log-probabilities one draw reports (`logprobs.wgsl`; OpenAI's limit).
    LOGPROB_K = 20;
    /// Matmul output tile: rows of x and rows of W per workgroup.
    MATMUL_TILE = 64;
    /// Invocations per matmul workgroup (8 x 8, each an 8 x 8 block of the tile).
    MATMUL_WG = 64;
    /// Matmul K step through workgroup memory.
    MATMUL_BK = 16;
    /// Weight storage types, the `WTYPE` override of the weight-reading kernels.
    WTYPE_F32 = 0;
    WTYPE_F16 = 1;
    WTYPE_BF16 = 2;
    WTYPE_INT4 = 3;
    WTYPE_INT8 = 4;
    WTYPE_Q4_0 = 5;
    WTYPE_Q5_0 = 6;
    WTYPE_Q5_1 = 7;
    WTYPE_Q4_K = 8;
    WTYPE_Q5_K = 9;
    WTYPE_Q6_K = 10;
}

/// The shared constants as WGSL `const` declarations, which every kernel's source starts with.
pub fn prelude() -> String {
    consts::ALL.iter().map(|(name, value)| format!("const {name}: u32 = {value}u;\n")).collect()
}

/// One kernel's WGSL: its library files, then its own file.
#[derive(Debug, Clone, Copy)]
pub struct Shader {
    pub name: &'static str,
    pub parts: &'static [&'static str],
    /// Whether the kernel sums across the lanes of a team (the matrix-vector family): it then
    /// ends with team_subgroup.wgsl where the device has subgroups, else team_plain.wgsl.
    pub teams: bool,
}

impl Shader {
    /// The source for a device without subgroups (what every WebGPU device runs).
    pub fn source(&self) -> String {
        self.source_for(false)
    }

    /// The prelude of shared constants, the library files, the kernel, then (for team
    /// kernels) the team reduction: subgroup operations if `subgroups`, else workgroup memory.
    pub fn source_for(&self, subgroups: bool) -> String {
        let mut source = prelude() + &self.parts.join("\n");
        if self.teams {
            source.push('\n');
            source.push_str(if subgroups { TEAM_SUBGROUP } else { TEAM_PLAIN });
        }
        source
    }
}

macro_rules! shader {
    ($id:ident, $file:literal, [$($lib:ident),*]) => {
        shader!($id, $file, [$($lib),*], false);
    };
    ($id:ident, $file:literal, [$($lib:ident),*], $teams:expr) => {
        pub const $id: Shader = Shader { name: $file, parts: &[$($lib,)* include_str!(concat!("../shaders/", $file))], teams: $teams };
    };
}

shader!(EMBEDDING, "embedding.wgsl", [COMMON, PACKED]);
shader!(RMSNORM, "rmsnorm.wgsl", [COMMON, NORM_COMMON]);
shader!(ADD_RMSNORM, "add_rmsnorm.wgsl", [COMMON, NORM_COMMON]);
shader!(ROPE, "rope.wgsl", [COMMON]);
shader!(MATMUL, "matmul.wgsl", [COMMON, PACKED, LINEAR]);
shader!(MATVEC, "matvec.wgsl", [COMMON, PACKED, LINEAR, MATVEC_COMMON], true);
shader!(MATVEC_GEGLU, "matvec_geglu.wgsl", [COMMON, PACKED, LINEAR, MATVEC_COMMON], true);
shader!(MATVEC_QKV, "matvec_qkv.wgsl", [COMMON, PACKED, MATVEC_COMMON, ROPE_COMMON], true);
shader!(QK_NORM_ROPE, "qk_norm_rope.wgsl", [COMMON, NORM_COMMON, ROPE_COMMON]);
shader!(GEGLU, "geglu.wgsl", [COMMON]);
shader!(KV_CACHE, "kv_cache.wgsl", [COMMON]);
shader!(ATTENTION, "attention.wgsl", [COMMON, ATTENTION_COMMON]);
shader!(ATTENTION_SPLIT, "attention_split.wgsl", [COMMON, ATTENTION_COMMON]);
shader!(ATTENTION_PREFILL, "attention_prefill.wgsl", [COMMON, ATTENTION_COMMON]);
shader!(ATTENTION_COMBINE, "attention_combine.wgsl", [COMMON]);
shader!(SAMPLE_ARGMAX, "sample_argmax.wgsl", [ORDER_KEY, SAMPLE_COMMON]);
shader!(SAMPLE_SELECT, "sample_select.wgsl", [ORDER_KEY, SAMPLE_COMMON]);
shader!(SAMPLE, "sample.wgsl", [ORDER_KEY, SAMPLE_COMMON]);
shader!(LOGIT_PENALTY, "logit_penalty.wgsl", []);
shader!(LOGPROBS, "logprobs.wgsl", [ORDER_KEY]);

/// Every kernel, for validation tests.
pub const ALL: &[Shader] = &[
    EMBEDDING,
    RMSNORM,
    ADD_RMSNORM,
    ROPE,
    MATMUL,
    MATVEC,
    MATVEC_GEGLU,
    MATVEC_QKV,
    QK_NORM_ROPE,
    GEGLU,
    KV_CACHE,
    ATTENTION,
    ATTENTION_SPLIT,
    ATTENTION_PREFILL,
    ATTENTION_COMBINE,
    SAMPLE_ARGMAX,
    SAMPLE_SELECT,
    SAMPLE,
    LOGIT_PENALTY,
    LOGPROBS,
];
