//! `Session`: a loaded bundle ready to run. Load creates everything once (instance, device, buffers,
//! pipelines, the recorded command buffer); `run` only submits and waits, without heap allocation.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ash::vk;

use crate::bundle::{Bundle, Manifest, Tensor};
use crate::commands;
use crate::device::DeviceCtx;
pub use crate::error::Error;
use crate::instance::InstanceCtx;
use crate::limits;
use crate::memory::{create_buffer, create_descriptors, upload};
use crate::pipelines::create_pipelines;
use crate::resources::{Resources, DATA, PARAMS, WEIGHTS16};
use crate::spirv::{self, Needs};

mod profile;

/// How a bundle is loaded.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// A `VkPipelineCache` file: read if it exists, written back after pipeline creation.
    pub pipeline_cache: Option<PathBuf>,
    /// Enable `VK_LAYER_KHRONOS_validation` (also switched on by the environment `KILN_VK_VALIDATION=1`).
    pub validation: bool,
}

/// Default limit for one run.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A loaded bundle on one Vulkan device.
pub struct Session {
    manifest: Manifest,
    dispatches: usize,
    pipeline_ms: f64,
    load_ms: f64,
    first_run_ms: Option<f64>,
    /// A submission whose fence has not been waited for (after a timeout).
    pending: bool,
    timeout: Duration,
    // Drop order matters: device objects, then the device, then the instance.
    res: Resources,
    dev: DeviceCtx,
    inst: InstanceCtx,
}

// SAFETY: the raw pointers are persistent mappings owned by the session; Vulkan objects may be used from
// any thread with external synchronisation, which `&mut self` on every mutating method provides. Methods
// taking `&self` only read host memory the device does not write outside `run(&mut self)`.
unsafe impl Send for Session {}
// SAFETY: see `Send`; shared access only reads.
unsafe impl Sync for Session {}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
    })
}

impl Session {
    /// Load a bundle from its bytes.
    pub fn load(bytes: &[u8], opts: &LoadOptions) -> Result<Session, Error> {
        let start = Instant::now();
        let bundle = Bundle::parse(bytes)?;
        let m = &bundle.manifest;
        let modules = spirv::modules(&bundle)?;
        let inst = InstanceCtx::new(opts.validation || env_flag("KILN_VK_VALIDATION"))?;
        let dev = DeviceCtx::new(&inst, &Needs::new(&m.requires, &modules))?;
        limits::check(m, &dev.limits, &dev.name)?;
        // Declared after `dev` and `inst`: on an early return it drops first.
        let mut res = Resources::new(dev.device.clone());
        let sizes = limits::buffer_bytes(m)?;
        for (buf, bytes) in res.buffers.iter_mut().zip(sizes) {
            create_buffer(&dev, bytes, buf)?;
        }
        let blob = |b, what: &str| {
            bundle.blob(b).ok_or_else(|| {
                Error::Bundle(crate::bundle::BundleError::Truncated(format!("blob '{what}'")))
            })
        };
        upload(&res.buffers[DATA], blob(m.constants, "constants")?)?;
        upload(&res.buffers[PARAMS], blob(m.params, "params")?)?;
        upload(&res.buffers[WEIGHTS16], blob(m.weights16, "weights16")?)?;
        create_descriptors(&mut res)?;
        let t = Instant::now();
        create_pipelines(&mut res, &modules, opts.pipeline_cache.as_deref())?;
        let pipeline_ms = ms(t.elapsed());
        let dispatches = commands::record(&mut res, dev.queue_family, &m.steps)?;
        Ok(Session {
            manifest: bundle.manifest,
            dispatches,
            pipeline_ms,
            load_ms: ms(start.elapsed()),
            first_run_ms: None,
            pending: false,
            timeout: DEFAULT_TIMEOUT,
            res,
            dev,
            inst,
        })
    }

    /// Load a bundle file.
    pub fn load_file(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Session, Error> {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Self::load(&bytes, opts)
    }

    fn wait(&mut self) -> Result<(), Error> {
        let fences = [self.res.fence];
        let ns = u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: the fence is live.
        match unsafe { self.dev.device.wait_for_fences(&fences, true, ns) } {
            Ok(()) => {
                self.pending = false;
                Ok(())
            }
            Err(vk::Result::TIMEOUT) => {
                Err(Error::Timeout(u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)))
            }
            Err(result) => Err(Error::Vk { call: "vkWaitForFences", result }),
        }
    }

    /// Run the model once on the current inputs; outputs are readable when this returns. Allocation-free.
    pub fn run(&mut self) -> Result<(), Error> {
        let start = Instant::now();
        if self.pending {
            // A previous run timed out: its submission must finish before the fence is reused.
            self.wait()?;
        }
        let d = &self.dev.device;
        let fences = [self.res.fence];
        let cbs = [self.res.command_buffer];
        let submit = [vk::SubmitInfo::default().command_buffers(&cbs)];
        // SAFETY: the fence is unsignalled-or-idle (no pending submission), the command buffer was recorded
        // at load without ONE_TIME_SUBMIT and is not in flight, and `&mut self` serialises queue access.
        unsafe {
            d.reset_fences(&fences).map_err(Error::vk("vkResetFences"))?;
            d.queue_submit(self.dev.queue, &submit, self.res.fence)
                .map_err(Error::vk("vkQueueSubmit"))?;
        }
        self.pending = true;
        self.wait()?;
        if self.first_run_ms.is_none() {
            self.first_run_ms = Some(ms(start.elapsed()));
        }
        Ok(())
    }

    /// Limit for one run (default 60 s); past it `run` returns `Error::Timeout`.
    pub fn set_run_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn inputs(&self) -> &[Tensor] {
        &self.manifest.inputs
    }

    pub fn outputs(&self) -> &[Tensor] {
        &self.manifest.outputs
    }

    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.manifest.inputs.iter().position(|t| t.name == name)
    }

    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.manifest.outputs.iter().position(|t| t.name == name)
    }

    /// The tensor's first element in the mapped `data` buffer, and its element count.
    fn locate(&self, t: &Tensor) -> Result<(*mut f32, usize), Error> {
        let bad = |reason: &str| Error::Input { name: t.name.clone(), reason: reason.to_owned() };
        let n =
            t.elements().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| bad("too large"))?;
        let off = usize::try_from(t.offset).map_err(|_| bad("offset too large"))?;
        // `Bundle::parse` checked offset + n <= data_elems; the buffer holds data_elems * 4 bytes.
        // SAFETY: in bounds of the mapping (see above); the mapping is at least 4-byte aligned.
        let ptr = unsafe { self.res.buffers[DATA].ptr.cast::<f32>().add(off) };
        Ok((ptr, n))
    }

    fn tensor<'a>(list: &'a [Tensor], kind: &str, i: usize) -> Result<&'a Tensor, Error> {
        list.get(i).ok_or_else(|| {
            Error::Index(format!("{kind} {i} (the model has {} {kind}s)", list.len()))
        })
    }

    /// Copy an input's values (row-major, exactly the shape's element count) into device memory.
    pub fn set_input(&mut self, i: usize, values: &[f32]) -> Result<(), Error> {
        let t = Self::tensor(&self.manifest.inputs, "input", i)?;
        let (ptr, n) = self.locate(t)?;
        if values.len() != n {
            return Err(Error::Input {
                name: t.name.clone(),
                reason: format!("got {} values, the shape {:?} holds {n}", values.len(), t.shape),
            });
        }
        // SAFETY: `n` elements from `ptr` lie in the mapping (see `locate`); no run is in flight.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), ptr, n) };
        Ok(())
    }

    /// An output's values in device memory (valid after `run`).
    pub fn output(&self, i: usize) -> Result<&[f32], Error> {
        let t = Self::tensor(&self.manifest.outputs, "output", i)?;
        let (ptr, n) = self.locate(t)?;
        // SAFETY: in bounds (see `locate`); the device writes this memory only during `run(&mut self)`.
        Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
    }

    /// Copy an output into `out`, which must hold exactly its element count.
    pub fn output_into(&self, i: usize, out: &mut [f32]) -> Result<(), Error> {
        let values = self.output(i)?;
        if out.len() != values.len() {
            let t = &self.manifest.outputs[i];
            return Err(Error::Input {
                name: t.name.clone(),
                reason: format!(
                    "output buffer of {} values, the output holds {}",
                    out.len(),
                    values.len()
                ),
            });
        }
        out.copy_from_slice(values);
        Ok(())
    }

    /// Dispatches per run (steps with zero groups are skipped).
    pub fn dispatches(&self) -> usize {
        self.dispatches
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn device_name(&self) -> &str {
        &self.dev.name
    }

    /// Milliseconds spent creating the compute pipelines.
    pub fn pipeline_ms(&self) -> f64 {
        self.pipeline_ms
    }

    /// Milliseconds the whole load took.
    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    /// Milliseconds the first `run` took, once there was one.
    pub fn first_run_ms(&self) -> Option<f64> {
        self.first_run_ms
    }

    /// With validation on: the number of ERROR messages so far and the first (up to 20) ERROR and WARNING
    /// texts. `(0, [])` when validation is off.
    pub fn validation_messages(&self) -> (u64, Vec<String>) {
        self.inst.validation_messages()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Then the fields drop in order: device objects, device, instance.
        self.dev.wait_idle();
    }
}
