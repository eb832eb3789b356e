//! Every Vulkan object a session creates from its device, owned in one place so that a load failing halfway
//! and a finished session both tear down the same way (null handles are skipped by Vulkan's destroy calls).
use ash::vk;

/// A host-visible, coherent buffer mapped for the session's lifetime.
pub(crate) struct Buffer {
    pub(crate) buffer: vk::Buffer,
    pub(crate) memory: vk::DeviceMemory,
    /// Start of the mapping (null until mapped).
    pub(crate) ptr: *mut u8,
    /// Size in bytes.
    pub(crate) size: u64,
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer {
            buffer: vk::Buffer::null(),
            memory: vk::DeviceMemory::null(),
            ptr: std::ptr::null_mut(),
            size: 0,
        }
    }
}

/// Index of each buffer in [`Resources::buffers`] (= its binding).
pub(crate) const DATA: usize = 0;
pub(crate) const PARAMS: usize = 1;
pub(crate) const WEIGHTS16: usize = 2;

/// The session's device objects. Dropped before the device.
pub(crate) struct Resources {
    pub(crate) device: ash::Device,
    pub(crate) pipelines: Vec<vk::Pipeline>,
    pub(crate) cache: vk::PipelineCache,
    pub(crate) modules: Vec<vk::ShaderModule>,
    pub(crate) pipeline_layout: vk::PipelineLayout,
    pub(crate) set_layout: vk::DescriptorSetLayout,
    pub(crate) descriptor_pool: vk::DescriptorPool,
    pub(crate) set: vk::DescriptorSet,
    pub(crate) buffers: [Buffer; 3],
    pub(crate) fence: vk::Fence,
    pub(crate) command_pool: vk::CommandPool,
    pub(crate) command_buffer: vk::CommandBuffer,
}

impl Resources {
    pub(crate) fn new(device: ash::Device) -> Self {
        Resources {
            device,
            pipelines: Vec::new(),
            cache: vk::PipelineCache::null(),
            modules: Vec::new(),
            pipeline_layout: vk::PipelineLayout::null(),
            set_layout: vk::DescriptorSetLayout::null(),
            descriptor_pool: vk::DescriptorPool::null(),
            set: vk::DescriptorSet::null(),
            buffers: Default::default(),
            fence: vk::Fence::null(),
            command_pool: vk::CommandPool::null(),
            command_buffer: vk::CommandBuffer::null(),
        }
    }

    /// Destroy the shader modules (not needed once the pipelines exist).
    pub(crate) fn destroy_modules(&mut self) {
        for m in self.modules.drain(..) {
            // SAFETY: no pipeline creation is in flight; pipelines do not reference their modules.
            unsafe { self.device.destroy_shader_module(m, None) };
        }
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        let d = &self.device;
        // SAFETY: the owner waited for the device to go idle (or nothing was submitted); every handle was
        // created from `d` or is null, and each is destroyed once.
        unsafe {
            for p in self.pipelines.drain(..) {
                d.destroy_pipeline(p, None);
            }
            d.destroy_pipeline_cache(self.cache, None);
            self.destroy_modules();
            let d = &self.device;
            d.destroy_pipeline_layout(self.pipeline_layout, None);
            d.destroy_descriptor_set_layout(self.set_layout, None);
            d.destroy_descriptor_pool(self.descriptor_pool, None);
            for b in &self.buffers {
                d.destroy_buffer(b.buffer, None);
            }
            for b in &self.buffers {
                // Freeing mapped memory unmaps it.
                d.free_memory(b.memory, None);
            }
            d.destroy_fence(self.fence, None);
            d.destroy_command_pool(self.command_pool, None);
        }
    }
}
