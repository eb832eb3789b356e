//! Physical-device choice (`KILN_VK_DEVICE=<index>`, else discrete > integrated > virtual > CPU), feature
//! checks against what the bundle needs (its `requires` and its modules' SPIR-V capabilities), and the logical device with one compute queue.
use std::ffi::{c_char, CStr};

use ash::vk;

use crate::error::Error;
use crate::instance::InstanceCtx;
use crate::spirv::Needs;

/// The logical device and its compute queue; destroys the device on drop.
pub(crate) struct DeviceCtx {
    pub(crate) device: ash::Device,
    pub(crate) queue: vk::Queue,
    pub(crate) queue_family: u32,
    pub(crate) name: String,
    pub(crate) limits: vk::PhysicalDeviceLimits,
    pub(crate) memory: vk::PhysicalDeviceMemoryProperties,
}

/// A candidate physical device.
struct Candidate {
    physical: vk::PhysicalDevice,
    props: vk::PhysicalDeviceProperties,
    queue_family: Option<u32>,
}

impl Candidate {
    fn name(&self) -> String {
        self.props
            .device_name_as_c_str()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Lower is better; `None`: not usable (no compute queue or below Vulkan 1.1).
    fn rank(&self) -> Option<u32> {
        self.queue_family?;
        if self.props.api_version < vk::API_VERSION_1_1 {
            return None;
        }
        Some(match self.props.device_type {
            vk::PhysicalDeviceType::DISCRETE_GPU => 0,
            vk::PhysicalDeviceType::INTEGRATED_GPU => 1,
            vk::PhysicalDeviceType::VIRTUAL_GPU => 2,
            vk::PhysicalDeviceType::CPU => 3,
            _ => 4,
        })
    }
}

fn candidates(inst: &InstanceCtx) -> Result<Vec<Candidate>, Error> {
    let i = &inst.instance;
    // SAFETY: plain queries on a live instance.
    let devices = unsafe { i.enumerate_physical_devices() }
        .map_err(Error::vk("vkEnumeratePhysicalDevices"))?;
    Ok(devices
        .into_iter()
        .map(|physical| {
            let props = unsafe { i.get_physical_device_properties(physical) };
            let families = unsafe { i.get_physical_device_queue_family_properties(physical) };
            // Prefer a compute queue without graphics (a dedicated compute family), else any compute family.
            let compute = |f: &vk::QueueFamilyProperties| {
                f.queue_flags.contains(vk::QueueFlags::COMPUTE) && f.queue_count > 0
            };
            let dedicated = families
                .iter()
                .position(|f| compute(f) && !f.queue_flags.contains(vk::QueueFlags::GRAPHICS));
            let queue_family =
                dedicated.or_else(|| families.iter().position(compute)).map(|q| q as u32);
            Candidate { physical, props, queue_family }
        })
        .collect())
}

fn pick(inst: &InstanceCtx) -> Result<Candidate, Error> {
    let mut all = candidates(inst)?;
    if all.is_empty() {
        return Err(Error::NoDevice("the Vulkan loader reports no physical devices".into()));
    }
    if let Ok(v) = std::env::var("KILN_VK_DEVICE") {
        let index: usize = v
            .trim()
            .parse()
            .map_err(|_| Error::NoDevice(format!("KILN_VK_DEVICE='{v}' is not a device index")))?;
        let n = all.len();
        if index >= n {
            return Err(Error::NoDevice(format!(
                "KILN_VK_DEVICE={index} but there are only {n} devices (0..{n})"
            )));
        }
        let c = all.swap_remove(index);
        if c.rank().is_none() {
            return Err(Error::NoDevice(format!(
                "device {index} ('{}') has no compute queue or is below Vulkan 1.1",
                c.name()
            )));
        }
        return Ok(c);
    }
    let names: Vec<String> = all.iter().map(Candidate::name).collect();
    all.into_iter()
        .filter_map(|c| Some((c.rank()?, c)))
        .min_by_key(|(r, _)| *r)
        .map(|(_, c)| c)
        .ok_or_else(|| {
            Error::NoDevice(format!(
                "none of [{}] has a compute queue and Vulkan 1.1",
                names.join(", ")
            ))
        })
}

fn device_extensions(
    inst: &InstanceCtx,
    physical: vk::PhysicalDevice,
) -> Result<Vec<vk::ExtensionProperties>, Error> {
    // SAFETY: plain query.
    unsafe { inst.instance.enumerate_device_extension_properties(physical) }
        .map_err(Error::vk("vkEnumerateDeviceExtensionProperties"))
}

/// Feature structs to enable at device creation.
#[derive(Default)]
struct Enable {
    core: vk::PhysicalDeviceFeatures,
    storage16: vk::PhysicalDevice16BitStorageFeatures<'static>,
    float16: vk::PhysicalDeviceShaderFloat16Int8Features<'static>,
}

/// The device's core, 16-bit storage and (if the extension exists) float16 features.
fn query(
    inst: &InstanceCtx,
    physical: vk::PhysicalDevice,
    float16_ext: bool,
) -> (
    vk::PhysicalDeviceFeatures,
    vk::PhysicalDevice16BitStorageFeatures<'static>,
    vk::PhysicalDeviceShaderFloat16Int8Features<'static>,
) {
    let mut storage16 = vk::PhysicalDevice16BitStorageFeatures::default();
    let mut float16 = vk::PhysicalDeviceShaderFloat16Int8Features::default();
    let core = {
        let mut query = vk::PhysicalDeviceFeatures2::default().push_next(&mut storage16);
        if float16_ext {
            query = query.push_next(&mut float16);
        }
        // SAFETY: the chain holds valid structs that outlive the call; Vulkan 1.1 core query.
        unsafe { inst.instance.get_physical_device_features2(physical, &mut query) };
        query.features
    };
    // Detach the chain pointers from the copies handed back.
    storage16.p_next = std::ptr::null_mut();
    float16.p_next = std::ptr::null_mut();
    (core, storage16, float16)
}

impl DeviceCtx {
    /// Choose a device, check that it has every optional feature in `needs`, and create it with those on.
    pub(crate) fn new(inst: &InstanceCtx, needs: &Needs) -> Result<Self, Error> {
        let c = pick(inst)?;
        let name = c.name();
        let queue_family = c.queue_family.unwrap_or(0);
        let available = device_extensions(inst, c.physical)?;
        let has = |n: &CStr| available.iter().any(|e| e.extension_name_as_c_str() == Ok(n));
        let mut extensions: Vec<*const c_char> = Vec::new();
        if inst.portability && has(ash::khr::portability_subset::NAME) {
            extensions.push(ash::khr::portability_subset::NAME.as_ptr());
        }
        let float16_ext = has(ash::khr::shader_float16_int8::NAME);
        let (core, storage16, float16) = query(inst, c.physical, float16_ext);
        let mut enable = Enable::default();
        let need = |wanted: bool, supported: vk::Bool32, feature: &'static str| {
            if !wanted {
                Ok(vk::FALSE)
            } else if supported == vk::TRUE {
                Ok(vk::TRUE)
            } else {
                Err(Error::MissingFeature { feature, device: name.clone() })
            }
        };
        enable.core.shader_int16 = need(needs.int16, core.shader_int16, "shaderInt16")?;
        enable.core.shader_int64 = need(needs.int64, core.shader_int64, "shaderInt64")?;
        enable.core.shader_float64 = need(needs.float64, core.shader_float64, "shaderFloat64")?;
        enable.storage16.storage_buffer16_bit_access = need(
            needs.storage_buffer16,
            storage16.storage_buffer16_bit_access,
            "storageBuffer16BitAccess",
        )?;
        enable.storage16.uniform_and_storage_buffer16_bit_access = need(
            needs.uniform_and_storage_buffer16,
            storage16.uniform_and_storage_buffer16_bit_access,
            "uniformAndStorageBuffer16BitAccess (SPIR-V capability UniformAndStorageBuffer16BitAccess)",
        )?;
        enable.storage16.storage_push_constant16 = need(
            needs.storage_push_constant16,
            storage16.storage_push_constant16,
            "storagePushConstant16 (SPIR-V capability StoragePushConstant16)",
        )?;
        enable.storage16.storage_input_output16 = need(
            needs.storage_input_output16,
            storage16.storage_input_output16,
            "storageInputOutput16 (SPIR-V capability StorageInputOutput16)",
        )?;
        enable.float16.shader_float16 = need(
            needs.float16,
            float16.shader_float16,
            "shaderFloat16 (VK_KHR_shader_float16_int8)",
        )?;
        if needs.float16 {
            extensions.push(ash::khr::shader_float16_int8::NAME.as_ptr());
        }
        let priorities = [1.0f32];
        let queues = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(queue_family)
            .queue_priorities(&priorities)];
        let mut features = vk::PhysicalDeviceFeatures2::default().features(enable.core);
        let mut info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_extension_names(&extensions)
            .push_next(&mut features)
            .push_next(&mut enable.storage16);
        if needs.float16 {
            info = info.push_next(&mut enable.float16);
        }
        // SAFETY: every pointer in `info` outlives the call.
        let device = unsafe { inst.instance.create_device(c.physical, &info, None) }
            .map_err(Error::vk("vkCreateDevice"))?;
        // SAFETY: queue 0 of a family created above.
        let queue = unsafe { device.get_device_queue(queue_family, 0) };
        // SAFETY: plain query.
        let memory = unsafe { inst.instance.get_physical_device_memory_properties(c.physical) };
        Ok(DeviceCtx { device, queue, queue_family, name, limits: c.props.limits, memory })
    }

    /// Wait until the device is idle (errors ignored: used before teardown).
    pub(crate) fn wait_idle(&self) {
        // SAFETY: the device is live.
        let _ = unsafe { self.device.device_wait_idle() };
    }
}

impl Drop for DeviceCtx {
    fn drop(&mut self) {
        // SAFETY: every object made from this device is destroyed before this context drops.
        unsafe { self.device.destroy_device(None) };
    }
}
