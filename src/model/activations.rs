//! The engine's activation buffers, declared once as a table of (name, [rows, cols]): the
//! struct, its allocation and its byte count all come from that table. Buffers hold f32
//! unless noted and are sized for `chunk` prompt rows (decode uses row 0). Shapes use the
//! names of `docs/model.md`: T = chunk, H = hidden, I = intermediate, NH/NKV heads of D, V vocab.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::config::ModelConfig;

macro_rules! activations {
    (($c:ident, $chunk:ident) => { $( $(#[$doc:meta])* $name:ident: [$rows:expr, $cols:expr], )* }) => {
        #[derive(Debug)]
        pub struct Activations {
            $( $(#[$doc])* pub $name: wgpu::Buffer, )*
        }

        impl Activations {
            /// `(name, elements)` of every buffer for this config and chunk.
            pub fn table($c: &ModelConfig, $chunk: u32) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($name), $rows as u64 * $cols as u64), )*]
            }

            /// Allocate every buffer, zeroed.
            pub fn allocate(ctx: &GpuContext, $c: &ModelConfig, $chunk: u32) -> Result<Self> {
                Ok(Self { $( $name: ctx.storage_zeroed(stringify!($name), 4 * ($rows as u64 * $cols as u64))?, )* })
            }

            /// Bytes allocated on the GPU.
            pub fn bytes(&self) -> u64 {
                0 $( + self.$name.size() )*
            }
        }
    };
}

activations!((c, chunk) => {
    /// [T] u32 token ids in; the sampler writes the next token into element 0.
    ids: [chunk, 1],
    /// [T, H] the residual stream.
    x: [chunk, c.hidden_size],
    /// [T, H] the normed input of a sub-block.
    h: [chunk, c.hidden_size],
    /// [T, NH*D] Gemma 3: q before its per-head norm (one element otherwise, unused).
    q_pre: [chunk, if c.qk_norm { c.q_width() } else { 0 }],
    /// [T, NKV*D] Gemma 3: k before its per-head norm (one element otherwise, unused).
    k_pre: [chunk, if c.qk_norm { c.kv_width() } else { 0 }],
    /// [NH*D + 2*NKV*D] Gemma 3, decode: one token's q, k and v from the joined q/k/v product,
    /// before the per-head norms (one element otherwise, unused).
    qkv_pre: [1, if c.qk_norm { c.q_width() + 2 * c.kv_width() } else { 0 }],
    /// [T, NH*D] queries (rotated in place).
    q: [chunk, c.q_width()],
    /// [T, NKV*D] keys of the new tokens (rotated in place, then written to the cache).
    k: [chunk, c.kv_width()],
    /// [T, NKV*D] values of the new tokens.
    v: [chunk, c.kv_width()],
    /// [T, NH*D] attention output, heads concatenated.
    attn: [chunk, c.q_width()],
    /// Split decode attention's partial results: [NH, splits, D + 2] (`ops::attention`).
    attn_part: [c.num_attention_heads, crate::ops::attention::part_len_per_head(c.head_dim)],
    /// [T, H] a branch's output (attention after o_proj, or the MLP after down_proj).
    o: [chunk, c.hidden_size],
    /// [T, I] gate projection.
    gate: [chunk, c.intermediate_size],
    /// [T, I] up projection.
    up: [chunk, c.intermediate_size],
    /// [T, I] gelu_tanh(gate) * up.
    act: [chunk, c.intermediate_size],
    /// [H] the row of `h` (after the final norm) the head reads.
    h_last: [1, c.hidden_size],
    /// [V] logits (after the final soft-cap).
    logits: [1, c.vocab_size],
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_every_buffer_with_its_shape() {
        let c = crate::convert::preset("2b").expect("preset");
        let t = Activations::table(&c, 128);
        assert_eq!(t.len(), 17);
        assert_eq!(t[1], ("x", 128 * 2304));
        assert_eq!(t[3], ("q_pre", 0), "Gemma 2 has no q norm");
        assert_eq!(t[16], ("logits", 256_000));
    }
}
