// team_subgroup.wgsl: the team reduction of the matrix-vector kernels through subgroup
// operations (appended to them where the device has the `subgroups` feature; team_plain.wgsl
// is the fallback and defines the same three names).
//
// Teams are laid out along the hardware's own lane order (subgroup by subgroup), so a team of
// T <= subgroup-size lanes lies inside one subgroup, aligned to T, and its sum is a butterfly
// of log2 T shuffles with no workgroup memory and no barrier. A team wider than a subgroup
// (T = 64 on a device with 8- or 32-lane subgroups) sums each subgroup with `subgroupAdd`, then
// adds its T / size subgroup sums through workgroup memory: one barrier. The context uses this
// only where the subgroup size is at most MV_WG (it is always a power of two, at least 4).
// naga takes subgroup built-ins without the WGSL `enable` directive for them (it rejects the
// directive), so none is written; wgpu does not offer the feature in the browser.

struct Invocation {
    @builtin(subgroup_id) group: u32,
    @builtin(subgroup_size) size: u32,
    @builtin(subgroup_invocation_id) lane: u32,
}

// 0..MV_WG-1 in hardware lane order: lane = thread_index % T, team = thread_index / T.
fn thread_index(inv: Invocation) -> u32 {
    return inv.group * inv.size + inv.lane;
}

// Subgroup sums of teams wider than a subgroup: one pair per subgroup (at least 4 lanes each).
var<workgroup> red: array<array<vec4<f32>, MV_WG / 4u>, 2>;

struct Pair {
    a: vec4<f32>,
    b: vec4<f32>,
}

// a and b summed over the T lanes of this invocation's team, returned to every lane of the
// team. Called in uniform control flow; a second call needs a barrier first (as the plain
// version's does).
fn team_sum(a: vec4<f32>, b: vec4<f32>, inv: Invocation, lane: u32) -> Pair {
    if T <= inv.size {
        var s = Pair(a, b);
        for (var mask = T / 2u; mask > 0u; mask >>= 1u) {
            s.a += subgroupShuffleXor(s.a, mask);
            s.b += subgroupShuffleXor(s.b, mask);
        }
        return s;
    }
    let sa = subgroupAdd(a);
    let sb = subgroupAdd(b);
    if inv.lane == 0u {
        red[0][inv.group] = sa;
        red[1][inv.group] = sb;
    }
    workgroupBarrier();
    let first = (thread_index(inv) - lane) / inv.size;   // the team's first subgroup
    var s = Pair(vec4<f32>(), vec4<f32>());
    for (var g = first; g < first + T / inv.size; g++) {
        s.a += red[0][g];
        s.b += red[1][g];
    }
    return s;
}
