//! GPU plumbing shared by every op: context, buffers and read-back, compiled kernels and their
//! bound dispatches. Nothing here knows about Gemma.

mod context;
pub mod profile;
pub mod weights;

pub use context::{AdapterReport, ContextOptions, GpuContext};
pub use profile::{KernelTime, Profiler};

use std::marker::PhantomData;

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::shaders::Shader;

/// WebGPU's `maxComputeWorkgroupsPerDimension` default; larger grids fold into y.
pub const MAX_GROUPS_PER_DIM: u32 = 65535;

/// A grid of `groups` workgroups, folded into (x, y) when it exceeds one dimension. Shaders
/// recover the linear index as `wid.x + wid.y * nwg.x` and ignore indices past the end.
pub fn grid(groups: u32) -> [u32; 3] {
    if groups <= MAX_GROUPS_PER_DIM {
        [groups.max(1), 1, 1]
    } else {
        [MAX_GROUPS_PER_DIM, groups.div_ceil(MAX_GROUPS_PER_DIM), 1]
    }
}

impl GpuContext {
    /// A storage buffer holding `data` (also copyable both ways).
    pub fn storage_from(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
        self.check_buffer_size(label, data.len() as u64)?;
        let padded;
        let contents = if data.is_empty() || !data.len().is_multiple_of(4) {
            let mut v = data.to_vec();
            v.resize(data.len().next_multiple_of(4).max(4), 0);
            padded = v;
            &padded[..]
        } else {
            data
        };
        // Written through the queue, not mapped at creation: a buffer the device has no memory
        // for cannot be mapped (wgpu panics, a browser throws), while a write to it is only
        // an error the caller's scope (`allocating`) reports.
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: contents.len() as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buffer, 0, contents);
        Ok(buffer)
    }

    /// A zero-filled storage buffer of `bytes` bytes.
    pub fn storage_zeroed(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        self.check_buffer_size(label, bytes)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.next_multiple_of(4).max(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    fn check_buffer_size(&self, label: &str, bytes: u64) -> Result<()> {
        if bytes > self.report.max_buffer_size {
            return Err(Error::LimitTooSmall {
                adapter: format!("{} (buffer '{label}')", self.report.name),
                limit: "maxBufferSize",
                needed: bytes,
                available: self.report.max_buffer_size,
            });
        }
        Ok(())
    }

    /// Run `f`, which allocates GPU memory, and fail with `Error::OutOfMemory` if the device
    /// could not allocate it (WebGPU reports that through an error scope, after the fact; the
    /// buffers `f` made are then invalid and are dropped). `describe` names what `f` made and
    /// its size, for the error.
    pub async fn allocating<T>(&self, f: impl FnOnce() -> Result<T>, describe: impl FnOnce(&T) -> (String, u64)) -> Result<T> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let made = f();
        let popped = scope.pop();
        let made = made?;
        if let Some(e) = popped.await {
            let (what, bytes) = describe(&made);
            log::error!("wgpu: out of memory allocating {what}: {e}");
            return Err(Error::OutOfMemory { what, bytes });
        }
        Ok(made)
    }

    /// Copy `count` elements of `T` starting at element `first` of `buffer` back to the CPU.
    /// Waits for all work submitted before it.
    pub async fn read_back<T: Pod>(&self, buffer: &wgpu::Buffer, first: u64, count: u64) -> Result<Vec<T>> {
        let elem = std::mem::size_of::<T>() as u64;
        let (offset, bytes) = (first * elem, count * elem);
        if offset + bytes > buffer.size() || offset % 4 != 0 {
            return Err(Error::Readback(format!("range {offset}..{} is outside the {}-byte buffer or unaligned", offset + bytes, buffer.size())));
        }
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let padded = bytes.next_multiple_of(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back staging"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, padded);
        self.queue.submit([enc.finish()]);

        let bytes = self.map_read(&staging, padded).await?;
        let mut out = vec![T::zeroed(); count as usize];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&bytes[..(count * elem) as usize]);
        Ok(out)
    }

    /// Map the first `bytes` of a MAP_READ buffer that submitted work copied into, copy them
    /// out and unmap it again (waits for the work).
    pub async fn map_read(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            let _ = tx.send(r);
        });
        self.poll_wait()?;
        rx.await.map_err(|_| Error::Readback("the GPU dropped the mapping request (device lost?)".into()))?.map_err(|e| Error::Readback(e.to_string()))?;
        let out = staging.get_mapped_range(0..bytes).map_err(|e| Error::Readback(e.to_string()))?.to_vec();
        staging.unmap();
        Ok(out)
    }

    /// The u32 a decode step copied into its persistent 4-byte read-back buffer.
    pub async fn read_mapped_u32(&self, staging: &wgpu::Buffer) -> Result<u32> {
        let b = self.map_read(staging, 4).await?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A signal that fires once the submission `index` (the latest) and all work before it is
    /// done. Take it right after the submission and wait for it (`wait_for`) after submitting
    /// more, so the GPU keeps busy while the CPU waits.
    pub fn done_signal(&self, index: wgpu::SubmissionIndex) -> Done {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        Done { index, rx }
    }

    /// Wait for a `done_signal`: natively by blocking until that submission is done (not the
    /// ones after it); in the browser by yielding to the event loop, so the page and its abort
    /// signals run meanwhile.
    pub async fn wait_for(&self, done: Done) -> Result<()> {
        let lost = |reason: String| Error::Gpu { during: "waiting for the GPU".into(), reason };
        #[cfg(not(target_arch = "wasm32"))]
        self.device.poll(wgpu::PollType::Wait { submission_index: Some(done.index), timeout: None }).map_err(|e| lost(e.to_string()))?;
        #[cfg(target_arch = "wasm32")]
        let _ = done.index;
        done.rx.await.map_err(|_| lost("the device dropped the request (device lost?)".into()))
    }

    /// Submit one command buffer and surface any validation error it raised.
    pub async fn submit_checked(&self, during: &str, enc: wgpu::CommandEncoder) -> Result<wgpu::SubmissionIndex> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let index = self.queue.submit([enc.finish()]);
        if let Some(e) = scope.pop().await {
            return Err(Error::Gpu { during: during.into(), reason: e.to_string() });
        }
        Ok(index)
    }
}

/// A submission to wait for (`GpuContext::done_signal`).
pub struct Done {
    index: wgpu::SubmissionIndex,
    rx: futures_channel::oneshot::Receiver<()>,
}

/// A compiled compute pipeline for one shader and one set of override constants.
#[derive(Debug, Clone)]
pub struct Kernel {
    name: &'static str,
    pipeline: wgpu::ComputePipeline,
}

impl Kernel {
    /// Compile `shader` with `constants` (WGSL `override`s). A WGSL or pipeline error becomes
    /// `Error::ShaderCompile`; nothing panics.
    pub async fn new(ctx: &GpuContext, shader: &Shader, constants: &[(&str, f64)]) -> Result<Self> {
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let source = shader.source_for(ctx.report.uses_subgroups);
        let module =
            ctx.device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(shader.name), source: wgpu::ShaderSource::Wgsl(source.into()) });
        let pipeline = ctx.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(shader.name),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
            cache: None,
        });
        if let Some(e) = scope.pop().await {
            return Err(Error::ShaderCompile { kernel: shader.name.to_string(), reason: e.to_string() });
        }
        Ok(Self { name: shader.name, pipeline })
    }

    /// Bind `buffers` to bindings 0..n of group 0 and a fresh params uniform to binding n.
    /// Done once per (op, tensors) at load time; a decode step only rewrites the params.
    pub fn bind<P: Pod + PartialEq>(&self, ctx: &GpuContext, buffers: &[&wgpu::Buffer]) -> Bound<P> {
        self.bind_with(ctx, buffers, &[])
    }

    /// `bind`, and `after` (shared buffers such as the engine's per-step uniform) to bindings
    /// n + 1.. after the params.
    pub fn bind_with<P: Pod + PartialEq>(&self, ctx: &GpuContext, buffers: &[&wgpu::Buffer], after: &[&wgpu::Buffer]) -> Bound<P> {
        let params = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(self.name),
            size: (std::mem::size_of::<P>() as u64).next_multiple_of(16),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut entries: Vec<wgpu::BindGroupEntry> =
            buffers.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() }).collect();
        entries.push(wgpu::BindGroupEntry { binding: buffers.len() as u32, resource: params.as_entire_binding() });
        for (i, b) in after.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: (buffers.len() + 1 + i) as u32, resource: b.as_entire_binding() });
        }
        let group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.name),
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Bound { name: self.name, pipeline: self.pipeline.clone(), group, params, last: std::sync::Mutex::new(None), _params: PhantomData }
    }
}

/// Bytes one dispatch must move at least: each input it reads once, each output it writes once
/// (re-reads that a cache can serve, such as every workgroup's copy of x in a matrix-vector
/// product, are not counted). The profile divides it by GPU time: the bandwidth achieved
/// against the traffic the work needs, comparable with the memory's peak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub read: u64,
    pub written: u64,
}

impl Traffic {
    pub fn new(read: u64, written: u64) -> Self {
        Self { read, written }
    }

    /// `read` and `written` 4-byte elements.
    pub fn words(read: u64, written: u64) -> Self {
        Self { read: 4 * read, written: 4 * written }
    }

    pub fn add(&mut self, other: Traffic) {
        self.read = self.read.saturating_add(other.read);
        self.written = self.written.saturating_add(other.written);
    }
}

/// A kernel with its tensors bound: set its params, then dispatch it inside a compute pass.
/// Params are written with `queue.write_buffer`, which lands before the next submit, so one
/// `Bound` may be dispatched once per command buffer. Unchanged params are not rewritten: in a
/// decode step only the position-dependent uniforms change.
#[derive(Debug)]
pub struct Bound<P> {
    /// The kernel's shader file (what the profiler reports it as).
    name: &'static str,
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    params: wgpu::Buffer,
    last: std::sync::Mutex<Option<P>>,
    _params: PhantomData<P>,
}

impl<P: Pod + PartialEq> Bound<P> {
    /// Set the params (if they changed) and record one dispatch of `groups` workgroups, which
    /// moves `traffic` bytes.
    pub fn dispatch(&self, rec: &mut Recorder<'_>, params: &P, groups: [u32; 3], traffic: Traffic) {
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.as_ref() != Some(params) {
            rec.ctx.queue.write_buffer(&self.params, 0, bytemuck::bytes_of(params));
            rec.uniform_writes += 1;
            *last = Some(*params);
        }
        drop(last);
        rec.dispatches += 1;
        rec.traffic.add(traffic);
        let pass = rec.pass(self.name, traffic);
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }
}

/// Compute work being recorded into an encoder, with the count of what went into it: every
/// bound kernel dispatches through it, so the engine never counts dispatches by hand. All
/// dispatches share one compute pass, except when profiling: then each dispatch gets its own
/// pass with timestamps at its start and end.
pub struct Recorder<'a> {
    pub ctx: &'a GpuContext,
    enc: &'a mut wgpu::CommandEncoder,
    pass: Option<wgpu::ComputePass<'static>>,
    label: &'a str,
    profiler: Option<&'a mut Profiler>,
    /// Dispatches recorded so far (each is a pipeline barrier on WebGPU).
    pub dispatches: u32,
    /// Uniform buffers rewritten for those dispatches (each a `queue.write_buffer`).
    pub uniform_writes: u32,
    /// Bytes those dispatches must read and write at least (`Traffic`).
    pub traffic: Traffic,
}

impl<'a> Recorder<'a> {
    /// Record into `enc`; the pass opens at the first dispatch and ends when the recorder is
    /// dropped.
    pub fn begin(ctx: &'a GpuContext, enc: &'a mut wgpu::CommandEncoder, label: &'a str) -> Self {
        Self { ctx, enc, pass: None, label, profiler: None, dispatches: 0, uniform_writes: 0, traffic: Traffic::default() }
    }

    /// Time every dispatch with `profiler` (when given), under this recorder's label.
    pub fn profiled(mut self, profiler: Option<&'a mut Profiler>) -> Self {
        self.profiler = profiler;
        self
    }

    /// The pass the next dispatch (of kernel `kernel`) goes into.
    fn pass(&mut self, kernel: &'static str, traffic: Traffic) -> &mut wgpu::ComputePass<'static> {
        let timed = self.profiler.as_mut().and_then(|p| p.next(self.label, kernel, traffic));
        let pass = match (timed, self.pass.take()) {
            (None, Some(open)) => open,
            (timed, previous) => {
                // End the previous pass before the encoder opens the next one.
                drop(previous);
                let timestamp_writes = timed.map(|(query_set, i)| wgpu::ComputePassTimestampWrites {
                    query_set,
                    beginning_of_pass_write_index: Some(2 * i),
                    end_of_pass_write_index: Some(2 * i + 1),
                });
                self.enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(self.label), timestamp_writes }).forget_lifetime()
            }
        };
        self.pass.insert(pass)
    }
}

/// Convenience for tests and one-off calls: run `f` in one compute pass and submit it.
pub async fn run_pass(ctx: &GpuContext, label: &str, f: impl FnOnce(&mut Recorder<'_>)) -> Result<()> {
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
    f(&mut Recorder::begin(ctx, &mut enc, label));
    ctx.submit_checked(label, enc).await.map(|_| ())
}
