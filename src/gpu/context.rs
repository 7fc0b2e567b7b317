//! The GPU context: one adapter, one device, one queue, on every target.
//!
//! Kernels are written against WebGPU's *default* limits (8 storage buffers per stage, 16 KiB of
//! workgroup memory, 256 invocations per workgroup). Only the buffer-size limits are raised, to
//! what the adapter offers, because big tensors are cheaper in fewer bindings; tensors larger than
//! the granted binding size are split by the caller (see `gpu::weights`).

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// What the caller needs from the device. `Default` asks for nothing beyond WebGPU's defaults.
#[derive(Debug, Clone, Default)]
pub struct ContextOptions {
    /// The largest single storage binding the caller will create, in bytes (0: no requirement).
    pub min_storage_binding: u64,
    /// The largest buffer the caller will create, in bytes (0: no requirement).
    pub min_buffer_size: u64,
    /// Cap the storage-binding size below what the adapter allows (0: no cap). Tests use this
    /// to exercise tensor splitting; users can use it to emulate a phone's limits.
    pub max_storage_binding_cap: u64,
    /// Do not use subgroups even where the adapter has them: the matrix-vector kernels then
    /// reduce through workgroup memory, as on every browser (tests run both paths; `gemma
    /// bench --no-subgroups` compares them).
    pub no_subgroups: bool,
}

/// What the adapter is and what we got from it; printed by the CLI and returned to JS.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub driver: String,
    /// Integrated, discrete, CPU (software, e.g. lavapipe or a fallback adapter), ...
    pub device_type: String,
    /// Optional features the adapter has. Neither is required; a faster path may use them.
    pub has_subgroups: bool,
    /// Whether the kernels use subgroups (the adapter has them, their size is at most the
    /// matrix-vector workgroup's, and `ContextOptions::no_subgroups` is off).
    pub uses_subgroups: bool,
    /// The subgroup sizes the adapter may use, smallest and largest (wgpu's 4 and 128 where it
    /// does not say).
    pub subgroup_sizes: [u32; 2],
    pub has_shader_f16: bool,
    /// Timestamp queries (requested when offered; `gemma bench --profile` uses them).
    pub has_timestamps: bool,
    pub max_storage_binding: u64,
    pub max_buffer_size: u64,
    pub max_workgroup_storage: u32,
    pub max_invocations_per_workgroup: u32,
}

impl std::fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {}{}), storage binding {} MiB, buffer {} MiB, subgroups {}{}, shader-f16 {}",
            if self.name.is_empty() { "unnamed adapter" } else { &self.name },
            self.backend,
            self.device_type,
            if self.driver.is_empty() { String::new() } else { format!(", {}", self.driver) },
            self.max_storage_binding >> 20,
            self.max_buffer_size >> 20,
            if self.has_subgroups { format!("{}-{} lanes", self.subgroup_sizes[0], self.subgroup_sizes[1]) } else { "no".into() },
            match (self.has_subgroups, self.uses_subgroups) {
                (true, true) => " (used)",
                (true, false) => " (not used)",
                _ => "",
            },
            if self.has_shader_f16 { "yes" } else { "no" },
        )
    }
}

/// Device, queue and what we know about them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub report: AdapterReport,
    /// The last error the device reported outside an error scope (a lost device, an OOM in a
    /// submit). wgpu's default handler would panic; ours records it for `take_device_error`.
    device_error: Arc<Mutex<Option<String>>>,
    /// Why the device was lost, once it is (a driver reset, a GPU process crash, `destroy`).
    lost: Arc<Mutex<Option<String>>>,
}

impl GpuContext {
    /// Pick an adapter and open a device with the limits `opts` needs.
    pub async fn new(opts: &ContextOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(instance_descriptor());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, ..Default::default() })
            .await
            .map_err(|e| Error::NoAdapter { backend: format!("{BACKEND_NAME}: {e}") })?;

        let info = adapter.get_info();
        let have = adapter.limits();
        let features = adapter.features();

        let mut storage_binding = have.max_storage_buffer_binding_size;
        if opts.max_storage_binding_cap > 0 {
            storage_binding = storage_binding.min(opts.max_storage_binding_cap);
        }
        let limit_check = |limit: &'static str, needed: u64, available: u64| {
            if needed > available {
                let adapter = if info.name.is_empty() { "(unnamed)".to_string() } else { info.name.clone() };
                Err(Error::LimitTooSmall { adapter, limit, needed, available })
            } else {
                Ok(())
            }
        };
        limit_check("maxStorageBufferBindingSize", opts.min_storage_binding, storage_binding)?;
        limit_check("maxBufferSize", opts.min_buffer_size, have.max_buffer_size)?;

        // Subgroup kernels assume a power-of-two size (Vulkan, Metal and D3D12 guarantee it)
        // that divides the matrix-vector workgroup: at most MV_WG lanes.
        let has_subgroups = features.contains(wgpu::Features::SUBGROUP);
        let uses_subgroups = has_subgroups && !opts.no_subgroups && info.subgroup_max_size <= crate::shaders::consts::MV_WG && info.subgroup_min_size >= 4;
        let mut wanted = features & wgpu::Features::TIMESTAMP_QUERY;
        if uses_subgroups {
            wanted |= wgpu::Features::SUBGROUP;
        }

        let mut limits = wgpu::Limits::defaults().or_worse_values_from(&have);
        limits.max_storage_buffer_binding_size = storage_binding;
        limits.max_buffer_size = have.max_buffer_size;

        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("gemma-webgpu"),
                required_features: wanted,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::DeviceRequest { adapter: info.name.clone(), reason: e.to_string() })?;

        let device_error = Arc::new(Mutex::new(None));
        let sink = device_error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("wgpu: {e}");
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| e.to_string());
            }
        }));

        let lost = Arc::new(Mutex::new(None));
        let sink = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            log::error!("wgpu: device lost ({reason:?}): {message}");
            if let Ok(mut slot) = sink.lock() {
                let why = match reason {
                    wgpu::DeviceLostReason::Destroyed => "the device was destroyed".to_string(),
                    wgpu::DeviceLostReason::Unknown if message.is_empty() => "the browser or driver reset the GPU".to_string(),
                    wgpu::DeviceLostReason::Unknown => message,
                };
                slot.get_or_insert(why);
            }
        });

        let report = AdapterReport {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            driver: [info.driver.as_str(), info.driver_info.as_str()].iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join(" "),
            device_type: format!("{:?}", info.device_type),
            has_subgroups,
            uses_subgroups,
            subgroup_sizes: [info.subgroup_min_size, info.subgroup_max_size],
            has_shader_f16: features.contains(wgpu::Features::SHADER_F16),
            has_timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        };
        Ok(Self { device, queue, report, device_error, lost })
    }

    /// The largest storage binding this device accepts, in bytes.
    pub fn max_storage_binding(&self) -> u64 {
        self.report.max_storage_binding
    }

    /// `Error::DeviceLost` once the device is lost: nothing on it works any more, and the model
    /// must be loaded again on a new one.
    pub fn check_lost(&self) -> Result<()> {
        match self.lost.lock().ok().and_then(|slot| slot.clone()) {
            Some(reason) => Err(Error::DeviceLost { reason }),
            None => Ok(()),
        }
    }

    /// An error the device reported asynchronously since the last call, if any.
    pub fn take_device_error(&self) -> Option<String> {
        self.device_error.lock().ok().and_then(|mut slot| slot.take())
    }

    /// Block (natively) or yield (in the browser) until submitted work is done.
    pub(crate) fn poll_wait(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu { during: "waiting for the GPU".into(), reason: e.to_string() })?;
        }
        Ok(())
    }
}

#[cfg(not(target_arch = "wasm32"))]
const BACKEND_NAME: &str = "native wgpu (Vulkan/Metal/DX12, or GL with WGPU_BACKEND=gl)";
#[cfg(target_arch = "wasm32")]
const BACKEND_NAME: &str = "browser WebGPU (navigator.gpu)";

#[cfg(not(target_arch = "wasm32"))]
fn instance_descriptor() -> wgpu::InstanceDescriptor {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    // GL only when asked for by name: where Vulkan works, a GL adapter on the same device (or
    // Mesa's llvmpipe beside lavapipe) must not be picked instead.
    if std::env::var_os("WGPU_BACKEND").is_none() {
        desc.backends = wgpu::Backends::PRIMARY;
    }
    desc
}

#[cfg(target_arch = "wasm32")]
fn instance_descriptor() -> wgpu::InstanceDescriptor {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::BROWSER_WEBGPU;
    desc
}
