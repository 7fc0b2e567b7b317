// norm_common.wgsl: the row reduction of the RMSNorm kernels (prepended to them).

var<workgroup> partial: array<f32, WG_NORM>;

// The sum of every invocation's `v` over the workgroup, returned to all of them (a tree:
// 2 + log2 WG_NORM barriers). Called in uniform control flow, as often as needed: the last
// barrier keeps a second call's writes after every read of the first's result.
fn workgroup_sum(v: f32, lid: u32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var stride = WG_NORM / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    // Every invocation has read partial[0] before any starts a second sum.
    workgroupBarrier();
    return total;
}
