// matvec_qkv.wgsl: a decode step's attention input in one pass. From the q, k and v weights
// joined by rows in one buffer ([q: NH*D][k: NKV*D][v: NKV*D] rows from buffer row w_row0) and
// the normed input x, it computes q, k and v, rotates q and k (RoPE, rotate-half pairing, the
// angles from the CPU's table as rope.wgsl reads them), writes q, and writes k and v straight
// into the layer's cache at slot pos % capacity (fp16 pairs as kv_cache.wgsl packs them, or
// f32 with KV_F32): one dispatch where there were six (three products, two rotations, the KV
// write), and no k/v round trip through memory.
//
// Teams of T lanes compute 8 rows of W each (as matvec.wgsl): for q and k, rows j..j+3 of a
// head and the rows D/2 later that RoPE pairs them with; for v, 8 consecutive rows. The team
// sum leaves all 8 in every lane, so lanes 0-3 rotate and pack without another exchange.
// Needs k % 32 == 0 and head_dim % 8 == 0.

override T: u32 = 4u;          // lanes per team: 4, 16 or 64
override KV_F32: bool = false;

struct QkvParams {
    k: u32,             // row length (H)
    scales_offset: u32,
    w_row0: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    capacity: u32,      // cache slots (a ring for sliding-window layers)
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> xv: array<vec4<f32>>;      // x [k] as vec4
@group(0) @binding(1) var<storage, read> w: array<u32>;             // packed, q/k/v rows joined
@group(0) @binding(2) var<storage, read> wv: array<vec4<u32>>;      // w again, as vec4
@group(0) @binding(3) var<storage, read_write> q: array<f32>;       // [NH * D], rotated
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>; // kv_cache.wgsl's layout
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(6) var<storage, read> table: array<f32>;         // rope.wgsl's (cos, sin) table
@group(0) @binding(7) var<uniform> now: Step;
@group(0) @binding(8) var<uniform> p: QkvParams;

fn put_k(word: u32, lo: f32, hi: f32) {
    k_cache[word] = pack2x16float(vec2<f32>(lo, hi));
}

@compute @workgroup_size(MV_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        inv: Invocation) {
    let lid = thread_index(inv);
    let lane = lid % T;
    let d = p.head_dim;
    let half_d = d / 2u;
    let per_head = d / 8u;                                   // teams per q or k head
    let rope_teams = (p.n_heads + p.n_kv_heads) * per_head;
    let teams = rope_teams + p.n_kv_heads * per_head;
    let team = linear_group(wid, nwg) * (MV_WG / T) + lid / T;
    // Teams past the end compute the last team's rows again (in bounds, no branch around the
    // reduction) and write nothing.
    let t = min(team, teams - 1u);
    var lo_row: u32;                                         // rows lo_row..+3 and hi_row..+3
    var hi_row: u32;
    if t < rope_teams {
        lo_row = (t / per_head) * d + (t % per_head) * 4u;
        hi_row = lo_row + half_d;
    } else {
        lo_row = rope_teams * 8u + (t - rope_teams) * 8u;
        hi_row = lo_row + 4u;
    }
    let r = lo_row + p.w_row0;
    let h = hi_row + p.w_row0;
    var lo = vec4<f32>();
    var hi = vec4<f32>();
    for (var c = lane; c < p.k / 32u; c += T) {
        let xc = x_chunk(0u, c);
        let sx = x_sum(xc);
        lo += vec4<f32>(chunk_dot(chunk_codes(r, c), xc, sx), chunk_dot(chunk_codes(r + 1u, c), xc, sx),
                        chunk_dot(chunk_codes(r + 2u, c), xc, sx), chunk_dot(chunk_codes(r + 3u, c), xc, sx));
        hi += vec4<f32>(chunk_dot(chunk_codes(h, c), xc, sx), chunk_dot(chunk_codes(h + 1u, c), xc, sx),
                        chunk_dot(chunk_codes(h + 2u, c), xc, sx), chunk_dot(chunk_codes(h + 3u, c), xc, sx));
    }
    let s = team_sum(lo, hi, inv, lane);
    if team >= teams || lane >= 4u {
        return;
    }
    let width = p.n_kv_heads * d;
    let slot = now.pos % p.capacity;
    if t < p.n_heads * per_head {
        // A query head: lane i rotates the pair (j0 + i, j0 + i + D/2).
        let j = (t % per_head) * 4u + lane;
        let base = (t / per_head) * d;
        let y = rotate(s.a[lane], s.b[lane], j);
        q[base + j] = y.x;
        q[base + j + half_d] = y.y;
    } else if t < rope_teams {
        // A key head: rotated into the cache. fp16: lanes 0-1 pack the low rows' pairs, lanes
        // 2-3 the high rows'; f32: lane i writes its pair.
        let j0 = (t % per_head) * 4u;
        let col = (t / per_head - p.n_heads) * d + j0;       // column of row j0 in the cache
        if KV_F32 {
            let y = rotate(s.a[lane], s.b[lane], j0 + lane);
            k_cache[slot * width + col + lane] = bitcast<u32>(y.x);
            k_cache[slot * width + col + half_d + lane] = bitcast<u32>(y.y);
        } else {
            let i = (lane % 2u) * 2u;                        // the first of this lane's pair
            let y0 = rotate(s.a[i], s.b[i], j0 + i);
            let y1 = rotate(s.a[i + 1u], s.b[i + 1u], j0 + i + 1u);
            if lane < 2u {
                put_k((slot * width + col + i) / 2u, y0.x, y1.x);
            } else {
                put_k((slot * width + col + half_d + i) / 2u, y0.y, y1.y);
            }
        }
    } else {
        // Values: 8 consecutive rows of v, from column col of the cache.
        let col = lo_row - rope_teams * 8u;
        if KV_F32 {
            v_cache[slot * width + col + lane] = bitcast<u32>(s.a[lane]);
            v_cache[slot * width + col + 4u + lane] = bitcast<u32>(s.b[lane]);
        } else {
            let pair = select(s.b, s.a, lane < 2u);
            let i = (lane % 2u) * 2u;
            v_cache[(slot * width + col) / 2u + lane] = pack2x16float(vec2<f32>(pair[i], pair[i + 1u]));
        }
    }
}
