// team_plain.wgsl: the team reduction of the matrix-vector kernels through workgroup memory
// (appended to them where the device has no subgroups, or they are turned off). Its twin,
// team_subgroup.wgsl, defines the same three names.

// The entry point's view of its invocation: the team layout follows the workgroup's own order.
struct Invocation {
    @builtin(local_invocation_index) index: u32,
}

// 0..MV_WG-1: lane = thread_index % T, team = thread_index / T.
fn thread_index(inv: Invocation) -> u32 {
    return inv.index;
}

// The reduction's scratch: one pair of vec4 per invocation (2 KiB). It is kept this small on
// purpose: WebGPU zero-fills workgroup memory before every workgroup, and emulators
// (SwiftShader) pay for that per byte, while a real GPU fits more workgroups per core.
var<workgroup> red: array<array<vec4<f32>, MV_WG>, 2>;

struct Pair {
    a: vec4<f32>,
    b: vec4<f32>,
}

// a and b summed over the T lanes of this invocation's team (a tree: 1 + log2 T barriers),
// returned to every lane of the team. Called in uniform control flow; a second call needs a
// barrier first (the team's lanes read the first lane's slots last).
fn team_sum(a: vec4<f32>, b: vec4<f32>, inv: Invocation, lane: u32) -> Pair {
    let lid = inv.index;
    red[0][lid] = a;
    red[1][lid] = b;
    workgroupBarrier();
    for (var stride = T / 2u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            red[0][lid] += red[0][lid + stride];
            red[1][lid] += red[1][lid + stride];
        }
        workgroupBarrier();
    }
    return Pair(red[0][lid - lane], red[1][lid - lane]);
}
