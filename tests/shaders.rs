//! CPU-only checks of every WGSL kernel: it parses and validates with naga (so a WGSL typo
//! fails `cargo test` without any GPU), and its `Params` uniform has exactly the layout of the
//! Rust struct that fills it.
#![cfg(not(target_arch = "wasm32"))]

use gemma_webgpu::ops::{attention, embedding, geglu, kv_cache, linear, rmsnorm, rope, sample, Uniform};
use gemma_webgpu::shaders::{self, Shader};

fn parse(shader: &Shader) -> naga::Module {
    parse_for(shader, false)
}

/// `shader` as a device with (`subgroups`) or without subgroups compiles it, validated with
/// exactly the capabilities that device grants.
fn parse_for(shader: &Shader, subgroups: bool) -> naga::Module {
    let source = shader.source_for(subgroups);
    let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(&source)));
    // SHADER_FLOAT16_IN_FLOAT32 is naga's name for core WGSL's pack2x16float/unpack2x16float
    // (f16 <-> f32 conversion inside f32 code); it is not the `shader-f16` feature, and no
    // other capability is granted (but subgroups, to a team kernel's subgroup variant).
    let mut caps = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if subgroups {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
    if subgroups {
        validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE).subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    validator.validate(&module).unwrap_or_else(|e| panic!("{} (subgroups: {subgroups}): {}", shader.name, e.emit_to_string(&source)));
    module
}

/// Every variant a device may compile: both reductions for the team kernels.
fn variants() -> Vec<(Shader, bool)> {
    shaders::ALL.iter().flat_map(|s| if s.teams { vec![(*s, false), (*s, true)] } else { vec![(*s, false)] }).collect()
}

#[test]
fn team_kernels_have_a_subgroup_variant_and_only_they_use_subgroups() {
    let teams: Vec<&str> = shaders::ALL.iter().filter(|s| s.teams).map(|s| s.name).collect();
    assert_eq!(teams, ["matvec.wgsl", "matvec_geglu.wgsl", "matvec_qkv.wgsl"]);
    for (shader, subgroups) in variants() {
        let source = shader.source_for(subgroups);
        assert_eq!(source.contains("subgroupShuffleXor"), subgroups, "{}", shader.name);
        // naga rejects the directive (it takes subgroup built-ins without it).
        assert!(!source.contains("enable subgroups"), "{}", shader.name);
    }
}

#[test]
fn every_shader_parses_and_validates_without_optional_features() {
    for (shader, subgroups) in variants() {
        let module = parse_for(&shader, subgroups);
        assert_eq!(module.entry_points.len(), 1, "{}: one entry point expected", shader.name);
        assert_eq!(module.entry_points[0].name, "main", "{}", shader.name);
        assert!(!shader.source().contains("enable f16"), "{} must not need shader-f16", shader.name);
    }
}

#[test]
fn kernels_fit_webgpu_default_limits() {
    for (shader, subgroups) in variants() {
        let module = parse_for(&shader, subgroups);
        let [x, y, z] = module.entry_points[0].workgroup_size;
        assert!(x * y * z <= 256 && x <= 256 && y <= 256 && z <= 64, "{}: workgroup {x}x{y}x{z}", shader.name);
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).expect("layout");
        let shared: u32 = module.global_variables.iter().filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup).map(|(_, g)| layouter[g.ty].size).sum();
        assert!(shared <= 16 * 1024, "{}: {shared} bytes of workgroup memory", shader.name);
        let storage = module.global_variables.iter().filter(|(_, g)| matches!(g.space, naga::AddressSpace::Storage { .. })).count();
        assert!(storage <= 8, "{}: {storage} storage buffers", shader.name);
    }
}

fn check_uniform<U: Uniform>(shader: &Shader) {
    let module = parse(shader);
    let (_, var) =
        module.global_variables.iter().find(|(_, g)| g.space == naga::AddressSpace::Uniform).unwrap_or_else(|| panic!("{}: no uniform", shader.name));
    let naga::TypeInner::Struct { members, span } = &module.types[var.ty].inner else { panic!("{}: uniform is not a struct", shader.name) };
    let wgsl: Vec<(String, usize)> = members.iter().map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize)).collect();
    let rust: Vec<(String, usize)> = U::FIELDS.iter().map(|(n, o)| (n.to_string(), *o)).collect();
    assert_eq!(wgsl, rust, "{}: WGSL Params vs Rust {}", shader.name, std::any::type_name::<U>());
    assert_eq!(*span as usize, std::mem::size_of::<U>(), "{}: size", shader.name);
    assert_eq!(std::mem::size_of::<U>() % 16, 0, "{}: uniform size must be a multiple of 16", shader.name);
}

#[test]
fn uniform_structs_match_their_rust_mirrors() {
    check_uniform::<embedding::EmbeddingParams>(&shaders::EMBEDDING);
    check_uniform::<rmsnorm::RmsNormParams>(&shaders::RMSNORM);
    check_uniform::<rope::RopeParams>(&shaders::ROPE);
    check_uniform::<linear::MatMulParams>(&shaders::MATMUL);
    check_uniform::<linear::MatMulParams>(&shaders::MATVEC);
    check_uniform::<geglu::GeGluParams>(&shaders::GEGLU);
    check_uniform::<kv_cache::KvWriteParams>(&shaders::KV_CACHE);
    check_uniform::<attention::AttentionParams>(&shaders::ATTENTION);
    check_uniform::<attention::AttentionParams>(&shaders::ATTENTION_SPLIT);
    check_uniform::<attention::AttentionParams>(&shaders::ATTENTION_PREFILL);
    check_uniform::<attention::CombineParams>(&shaders::ATTENTION_COMBINE);
    check_uniform::<sample::SampleParams>(&shaders::SAMPLE);
}
