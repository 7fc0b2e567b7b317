//! GPU time per kernel from timestamp queries (`gemma bench --profile`). Each profiled
//! dispatch runs in its own compute pass with a timestamp at its start and end; after each
//! submit the timestamps are resolved, read back and summed per (recorder label, kernel).
//! Where the adapter has no timestamp queries (`AdapterReport::has_timestamps`), there is no
//! profiler.

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Traffic};

/// Passes one submit may time; more are recorded untimed (and counted as such).
const CAPACITY: u32 = 2048;

/// The time one kernel took, summed over the steps since the last `reset`.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    /// `label/kernel`, e.g. `head/matvec.wgsl`.
    pub name: String,
    pub dispatches: u64,
    pub seconds: f64,
    /// Bytes its dispatches must move at least (`Traffic`), summed like `seconds`.
    pub traffic: Traffic,
}

impl KernelTime {
    /// Bytes read and written per second of its GPU time.
    pub fn bytes_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            (self.traffic.read as f64 + self.traffic.written as f64) / self.seconds
        } else {
            0.0
        }
    }
}

pub struct Profiler {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period: f64,
    /// The (label, kernel, traffic) of each pass timed in the submit being recorded.
    pending: Vec<(String, &'static str, Traffic)>,
    totals: Vec<KernelTime>,
    /// Dispatches recorded while the query set was full.
    pub untimed: u64,
}

impl Profiler {
    /// A profiler for `ctx`, or `None` where the device has no timestamp queries.
    pub fn new(ctx: &GpuContext) -> Option<Self> {
        if !ctx.report.has_timestamps {
            return None;
        }
        let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("profile"), ty: wgpu::QueryType::Timestamp, count: 2 * CAPACITY });
        let bytes = 2 * CAPACITY as u64 * 8;
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile staging"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let period = ctx.queue.get_timestamp_period() as f64;
        Some(Self { queries, resolve, staging, period, pending: Vec::new(), totals: Vec::new(), untimed: 0 })
    }

    /// The query set and pass index for the next dispatch, or `None` when this submit's
    /// queries are used up.
    pub(crate) fn next(&mut self, label: &str, kernel: &'static str, traffic: Traffic) -> Option<(&wgpu::QuerySet, u32)> {
        let i = self.pending.len() as u32;
        if i >= CAPACITY {
            self.untimed += 1;
            return None;
        }
        self.pending.push((label.to_string(), kernel, traffic));
        Some((&self.queries, i))
    }

    /// Append the resolve of this submit's timestamps to `enc` (its last commands).
    pub fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        let n = self.pending.len() as u32;
        if n > 0 {
            enc.resolve_query_set(&self.queries, 0..2 * n, &self.resolve, 0);
            enc.copy_buffer_to_buffer(&self.resolve, 0, &self.staging, 0, 2 * n as u64 * 8);
        }
    }

    /// After the submit: read the timestamps back and add each pass to its kernel's total.
    pub async fn collect(&mut self, ctx: &GpuContext) -> Result<()> {
        let n = self.pending.len();
        if n == 0 {
            return Ok(());
        }
        let bytes = ctx.map_read(&self.staging, 2 * n as u64 * 8).await?;
        let ticks: Vec<u64> = bytes.chunks_exact(8).map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])).collect();
        if ticks.len() != 2 * n {
            return Err(Error::Readback(format!("{} timestamps for {n} passes", ticks.len())));
        }
        for ((label, kernel, traffic), pair) in self.pending.drain(..).zip(ticks.chunks_exact(2)) {
            let seconds = pair[1].saturating_sub(pair[0]) as f64 * self.period * 1e-9;
            let name = format!("{label}/{kernel}");
            match self.totals.iter_mut().find(|t| t.name == name) {
                Some(t) => {
                    t.dispatches += 1;
                    t.seconds += seconds;
                    t.traffic.add(traffic);
                }
                None => self.totals.push(KernelTime { name, dispatches: 1, seconds, traffic }),
            }
        }
        Ok(())
    }

    /// The totals since the last reset, slowest first.
    pub fn report(&self) -> Vec<KernelTime> {
        let mut v = self.totals.clone();
        v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        v
    }

    pub fn reset(&mut self) {
        self.totals.clear();
        self.untimed = 0;
    }
}
