//! Per-step timing (`Session::profile`): each dispatch recorded alone in a one-off command buffer,
//! submitted and waited for, timed on the host. Slower than `run` (a submit per step), so a profile
//! shows where the time goes, not the total; the plan itself is untouched.
use std::time::Instant;

use ash::vk;

use super::{ms, Error, Session};

impl Session {
    /// Median milliseconds of each step of the plan over `runs` runs (steps with zero groups: 0).
    pub fn profile(&mut self, runs: usize) -> Result<Vec<f64>, Error> {
        let d = self.dev.device.clone();
        let steps = self.manifest.steps.clone();
        let mut times = vec![Vec::with_capacity(runs.max(1)); steps.len()];
        for _ in 0..runs.max(1) {
            for (i, s) in steps.iter().enumerate() {
                if s.groups.contains(&0) {
                    times[i].push(0.0);
                    continue;
                }
                // A fresh command buffer per submission: the session's pool does not allow resets.
                let alloc = vk::CommandBufferAllocateInfo::default()
                    .command_pool(self.res.command_pool)
                    .level(vk::CommandBufferLevel::PRIMARY)
                    .command_buffer_count(1);
                // SAFETY: the pool is live; the buffer is freed below on every path.
                let cb = unsafe { d.allocate_command_buffers(&alloc) }
                    .map_err(Error::vk("vkAllocateCommandBuffers"))?
                    .first()
                    .copied()
                    .ok_or(Error::Vk {
                        call: "vkAllocateCommandBuffers",
                        result: vk::Result::ERROR_UNKNOWN,
                    })?;
                let t = self.time_step(&d, cb, s);
                // SAFETY: `cb` is not in flight (its submission was waited for, or never made).
                unsafe { d.free_command_buffers(self.res.command_pool, &[cb]) };
                times[i].push(t?);
            }
        }
        Ok(times
            .into_iter()
            .map(|mut t| {
                t.sort_by(f64::total_cmp);
                t.get(t.len() / 2).copied().unwrap_or(0.0)
            })
            .collect())
    }

    /// Record `s` alone into `cb`, submit it and wait: milliseconds from submit to completion.
    fn time_step(
        &mut self,
        d: &ash::Device,
        cb: vk::CommandBuffer,
        s: &crate::bundle::Step,
    ) -> Result<f64, Error> {
        let pipeline = *self.res.pipelines.get(s.module as usize).ok_or(Error::Vk {
            call: "profile (step names a module without a pipeline)",
            result: vk::Result::ERROR_UNKNOWN,
        })?;
        // SAFETY: `cb` is fresh; every handle recorded is live; the submission is waited for.
        unsafe {
            d.begin_command_buffer(
                cb,
                &vk::CommandBufferBeginInfo::default()
                    .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
            )
            .map_err(Error::vk("vkBeginCommandBuffer"))?;
            d.cmd_bind_descriptor_sets(
                cb,
                vk::PipelineBindPoint::COMPUTE,
                self.res.pipeline_layout,
                0,
                &[self.res.set],
                &[],
            );
            d.cmd_bind_pipeline(cb, vk::PipelineBindPoint::COMPUTE, pipeline);
            d.cmd_push_constants(
                cb,
                self.res.pipeline_layout,
                vk::ShaderStageFlags::COMPUTE,
                0,
                &s.params.to_ne_bytes(),
            );
            d.cmd_dispatch(cb, s.groups[0], s.groups[1], s.groups[2]);
            d.end_command_buffer(cb).map_err(Error::vk("vkEndCommandBuffer"))?;
            let fences = [self.res.fence];
            d.reset_fences(&fences).map_err(Error::vk("vkResetFences"))?;
            let cbs = [cb];
            let submit = [vk::SubmitInfo::default().command_buffers(&cbs)];
            let t0 = Instant::now();
            d.queue_submit(self.dev.queue, &submit, self.res.fence)
                .map_err(Error::vk("vkQueueSubmit"))?;
            self.pending = true;
            self.wait()?;
            Ok(ms(t0.elapsed()))
        }
    }
}
