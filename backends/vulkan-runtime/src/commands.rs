//! The command buffer, recorded once at load: host-write barrier, descriptor set, then per step: pipeline
//! (when it changes), push constant, dispatch, with compute→compute barriers between steps and a final
//! compute→host barrier. Also the fence every run waits on.
use ash::vk;

use crate::bundle::Step;
use crate::error::Error;
use crate::resources::Resources;

fn barrier(
    d: &ash::Device,
    cb: vk::CommandBuffer,
    (src_stage, src): (vk::PipelineStageFlags, vk::AccessFlags),
    (dst_stage, dst): (vk::PipelineStageFlags, vk::AccessFlags),
) {
    let b = [vk::MemoryBarrier::default().src_access_mask(src).dst_access_mask(dst)];
    // SAFETY: `cb` is recording.
    unsafe {
        d.cmd_pipeline_barrier(cb, src_stage, dst_stage, vk::DependencyFlags::empty(), &b, &[], &[])
    };
}

/// Create the command pool, command buffer and fence, and record `steps`. Returns the number of dispatches
/// recorded (steps with zero groups are skipped).
pub(crate) fn record(
    res: &mut Resources,
    queue_family: u32,
    steps: &[Step],
) -> Result<usize, Error> {
    let d = res.device.clone();
    let pool = vk::CommandPoolCreateInfo::default().queue_family_index(queue_family);
    // SAFETY: valid create infos; handles stored in `res` at once.
    unsafe {
        res.command_pool =
            d.create_command_pool(&pool, None).map_err(Error::vk("vkCreateCommandPool"))?;
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(res.command_pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        let cbs =
            d.allocate_command_buffers(&alloc).map_err(Error::vk("vkAllocateCommandBuffers"))?;
        res.command_buffer = cbs.first().copied().ok_or(Error::Vk {
            call: "vkAllocateCommandBuffers",
            result: vk::Result::ERROR_UNKNOWN,
        })?;
        res.fence = d
            .create_fence(&vk::FenceCreateInfo::default(), None)
            .map_err(Error::vk("vkCreateFence"))?;
    }
    let cb = res.command_buffer;
    // SAFETY: a fresh command buffer; every handle recorded below is live for the session's lifetime.
    unsafe {
        d.begin_command_buffer(cb, &vk::CommandBufferBeginInfo::default())
            .map_err(Error::vk("vkBeginCommandBuffer"))?;
    }
    let compute = vk::PipelineStageFlags::COMPUTE_SHADER;
    let shader_rw = vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE;
    barrier(
        &d,
        cb,
        (vk::PipelineStageFlags::HOST, vk::AccessFlags::HOST_WRITE),
        (compute, shader_rw),
    );
    // SAFETY: recording with a live layout and set.
    unsafe {
        d.cmd_bind_descriptor_sets(
            cb,
            vk::PipelineBindPoint::COMPUTE,
            res.pipeline_layout,
            0,
            &[res.set],
            &[],
        );
    }
    let mut bound = None;
    let mut dispatches = 0usize;
    for step in steps.iter().filter(|s| s.groups.iter().all(|&g| g > 0)) {
        let pipeline = res.pipelines.get(step.module as usize).copied().ok_or(Error::Vk {
            call: "vkCmdBindPipeline (step names a module without a pipeline)",
            result: vk::Result::ERROR_UNKNOWN,
        })?;
        if dispatches > 0 {
            barrier(&d, cb, (compute, vk::AccessFlags::SHADER_WRITE), (compute, shader_rw));
        }
        let [x, y, z] = step.groups;
        // SAFETY: recording with live pipeline and layout; the push constant range is {COMPUTE, 0, 4}.
        unsafe {
            if bound != Some(pipeline) {
                d.cmd_bind_pipeline(cb, vk::PipelineBindPoint::COMPUTE, pipeline);
                bound = Some(pipeline);
            }
            d.cmd_push_constants(
                cb,
                res.pipeline_layout,
                vk::ShaderStageFlags::COMPUTE,
                0,
                &step.params.to_ne_bytes(),
            );
            d.cmd_dispatch(cb, x, y, z);
        }
        dispatches += 1;
    }
    barrier(
        &d,
        cb,
        (compute, vk::AccessFlags::SHADER_WRITE),
        (vk::PipelineStageFlags::HOST, vk::AccessFlags::HOST_READ),
    );
    // SAFETY: ends the recording begun above.
    unsafe { d.end_command_buffer(cb) }.map_err(Error::vk("vkEndCommandBuffer"))?;
    Ok(dispatches)
}
