// linear.wgsl: the uniform of both products with a packed weight, the tiled matmul and the
// matrix-vector kernel (prepended to them; mirrored by `ops::linear::MatMulParams`).

struct Params {
    m: u32,
    k: u32,
    n: u32,
    scales_offset: u32,
    out_offset: u32,
    out_stride: u32,
    _pad0: u32,
    _pad1: u32,
}
