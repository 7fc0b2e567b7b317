use gemma_webgpu::gpu::{run_pass, weights::GpuWeight, GpuContext};
use gemma_webgpu::ops::linear::MatVec;
use gemma_webgpu::quant::{DType, Packed};
use std::time::Instant;

fn main() {
    pollster::block_on(async {
        let ctx = GpuContext::new(&Default::default()).await.unwrap();
        for dtype in [DType::Int8, DType::Int4, DType::F16, DType::F32] {
            let (n, k) = (65536usize, 640usize);
            let data: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-4).collect();
            let w = Packed::pack(dtype, n, k, &data).unwrap();
            let wg = GpuWeight::upload(&ctx, "w", &w, 0).unwrap();
            let x = ctx.storage_from("x", bytemuck::cast_slice(&vec![0.5f32; k])).unwrap();
            let y = ctx.storage_zeroed("y", (n * 4) as u64).unwrap();
            let mv = MatVec::new(&ctx, dtype).await.unwrap();
            for team in [4u32, 16] {
                let b = mv.bind_team(&ctx, &x, &wg, &y, team).unwrap();
                run_pass(&ctx, "w", |p| b.dispatch(p).unwrap()).await.unwrap();
                ctx.read_back::<f32>(&y, 0, 1).await.unwrap();
                let reps = 5;
                let t = Instant::now();
                for _ in 0..reps {
                    run_pass(&ctx, "w", |p| b.dispatch(p).unwrap()).await.unwrap();
                }
                ctx.read_back::<f32>(&y, 0, 1).await.unwrap();
                let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
                println!("{} n={n} k={k} T={team}: {ms:.2} ms, {:.2} GB/s", dtype.name(), wg.bytes() as f64 / ms / 1e6);
            }
        }
    });
}
