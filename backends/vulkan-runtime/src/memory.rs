//! The three storage buffers (`data`, `params`, `weights16`): host-visible coherent memory (device-local when
//! the device offers it), mapped once; the descriptor set that binds them at 0, 1 and 2.
use ash::vk;

use crate::bundle::BundleError;
use crate::device::DeviceCtx;
use crate::error::Error;
use crate::resources::{Buffer, Resources};

/// Smallest buffer size: Vulkan forbids empty buffers and kernels may read one word of unused bindings.
pub(crate) const MIN_BUFFER_BYTES: u64 = 16;

/// Pick a HOST_VISIBLE|HOST_COHERENT memory type allowed by `bits`, preferring one that is also DEVICE_LOCAL.
fn memory_type(props: &vk::PhysicalDeviceMemoryProperties, bits: u32) -> Option<u32> {
    let host = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
    let types = props.memory_types.get(..props.memory_type_count as usize).unwrap_or(&[]);
    let fits = |want: vk::MemoryPropertyFlags| {
        types
            .iter()
            .enumerate()
            .position(|(i, t)| bits & (1 << i) != 0 && t.property_flags.contains(want))
            .map(|i| i as u32)
    };
    fits(host | vk::MemoryPropertyFlags::DEVICE_LOCAL).or_else(|| fits(host))
}

/// Create, bind and map a storage buffer of at least `bytes` bytes into `out` (filled step by step so that a
/// failure leaves only handles that [`Resources`] will destroy).
pub(crate) fn create_buffer(dev: &DeviceCtx, bytes: u64, out: &mut Buffer) -> Result<(), Error> {
    let d = &dev.device;
    let size = bytes.max(MIN_BUFFER_BYTES).next_multiple_of(16);
    let info = vk::BufferCreateInfo::default()
        .size(size)
        .usage(vk::BufferUsageFlags::STORAGE_BUFFER)
        .sharing_mode(vk::SharingMode::EXCLUSIVE);
    // SAFETY: valid create info; the handle is stored for destruction at once.
    out.buffer = unsafe { d.create_buffer(&info, None) }.map_err(Error::vk("vkCreateBuffer"))?;
    out.size = size;
    // SAFETY: plain query on a live buffer.
    let req = unsafe { d.get_buffer_memory_requirements(out.buffer) };
    let type_index = memory_type(&dev.memory, req.memory_type_bits).ok_or(Error::Vk {
        call: "vkAllocateMemory (no HOST_VISIBLE|HOST_COHERENT memory type for a storage buffer)",
        result: vk::Result::ERROR_FEATURE_NOT_PRESENT,
    })?;
    let alloc =
        vk::MemoryAllocateInfo::default().allocation_size(req.size).memory_type_index(type_index);
    // SAFETY: valid allocate info; stored for freeing at once.
    out.memory =
        unsafe { d.allocate_memory(&alloc, None) }.map_err(Error::vk("vkAllocateMemory"))?;
    // SAFETY: fresh buffer and memory of a compatible type and sufficient size.
    unsafe { d.bind_buffer_memory(out.buffer, out.memory, 0) }
        .map_err(Error::vk("vkBindBufferMemory"))?;
    // SAFETY: host-visible memory, mapped once for the session's lifetime.
    let ptr = unsafe { d.map_memory(out.memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()) }
        .map_err(Error::vk("vkMapMemory"))?;
    out.ptr = ptr.cast();
    // Start from zeros (the arena, and padding past the blobs).
    let len = usize::try_from(size).map_err(|_| Error::Vk {
        call: "vkMapMemory (buffer larger than the address space)",
        result: vk::Result::ERROR_OUT_OF_HOST_MEMORY,
    })?;
    // SAFETY: the mapping covers at least `size` bytes.
    unsafe { std::ptr::write_bytes(out.ptr, 0, len) };
    Ok(())
}

/// Copy `bytes` into a mapped buffer at byte offset 0 (byte-wise: the source may be unaligned).
pub(crate) fn upload(buf: &Buffer, bytes: &[u8]) -> Result<(), Error> {
    if bytes.len() as u64 > buf.size || buf.ptr.is_null() {
        return Err(Error::Bundle(BundleError::Manifest(format!(
            "a blob of {} bytes does not fit its buffer of {} bytes",
            bytes.len(),
            buf.size
        ))));
    }
    // SAFETY: the mapping holds `buf.size` >= `bytes.len()` bytes and does not overlap `bytes`.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.ptr, bytes.len()) };
    Ok(())
}

/// Buffer behind each binding: 0 `data`, 1 `params`, 2 `w16`, then 3 `data` and 4 `w16` again (for kernels
/// reading them as vectors: WGSL gives one binding one element type).
const BINDING_BUFFER: [usize; 5] = [0, 1, 2, 0, 2];

/// Descriptor set layout (bindings 0..5, storage buffers, compute), pool, set, and pipeline layout with a
/// 4-byte compute push constant; the set is written once.
pub(crate) fn create_descriptors(res: &mut Resources) -> Result<(), Error> {
    let d = res.device.clone();
    let bindings: [vk::DescriptorSetLayoutBinding<'_>; 5] = std::array::from_fn(|i| {
        vk::DescriptorSetLayoutBinding::default()
            .binding(i as u32)
            .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
            .descriptor_count(1)
            .stage_flags(vk::ShaderStageFlags::COMPUTE)
    });
    let info = vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings);
    // SAFETY: valid create infos below; each handle is stored in `res` at once.
    unsafe {
        res.set_layout = d
            .create_descriptor_set_layout(&info, None)
            .map_err(Error::vk("vkCreateDescriptorSetLayout"))?;
        let sizes = [vk::DescriptorPoolSize {
            ty: vk::DescriptorType::STORAGE_BUFFER,
            descriptor_count: BINDING_BUFFER.len() as u32,
        }];
        let pool = vk::DescriptorPoolCreateInfo::default().max_sets(1).pool_sizes(&sizes);
        res.descriptor_pool =
            d.create_descriptor_pool(&pool, None).map_err(Error::vk("vkCreateDescriptorPool"))?;
        let layouts = [res.set_layout];
        let alloc = vk::DescriptorSetAllocateInfo::default()
            .descriptor_pool(res.descriptor_pool)
            .set_layouts(&layouts);
        let sets =
            d.allocate_descriptor_sets(&alloc).map_err(Error::vk("vkAllocateDescriptorSets"))?;
        res.set = sets.first().copied().ok_or(Error::Vk {
            call: "vkAllocateDescriptorSets",
            result: vk::Result::ERROR_UNKNOWN,
        })?;
        let infos: [[vk::DescriptorBufferInfo; 1]; 5] = std::array::from_fn(|i| {
            [vk::DescriptorBufferInfo {
                buffer: res.buffers[BINDING_BUFFER[i]].buffer,
                offset: 0,
                range: vk::WHOLE_SIZE,
            }]
        });
        let writes: [vk::WriteDescriptorSet<'_>; 5] = std::array::from_fn(|i| {
            vk::WriteDescriptorSet::default()
                .dst_set(res.set)
                .dst_binding(i as u32)
                .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                .buffer_info(&infos[i])
        });
        d.update_descriptor_sets(&writes, &[]);
        let push = [vk::PushConstantRange {
            stage_flags: vk::ShaderStageFlags::COMPUTE,
            offset: 0,
            size: 4,
        }];
        let layout = vk::PipelineLayoutCreateInfo::default()
            .set_layouts(&layouts)
            .push_constant_ranges(&push);
        res.pipeline_layout =
            d.create_pipeline_layout(&layout, None).map_err(Error::vk("vkCreatePipelineLayout"))?;
    }
    Ok(())
}
