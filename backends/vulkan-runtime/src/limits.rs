//! Checks a bundle against the chosen device's limits before anything is created, so that an oversized
//! model fails with a message instead of a validation error or a device loss.
use ash::vk;

use crate::bundle::Manifest;
use crate::error::Error;

/// Byte sizes of the three buffers: `data`, `params`, `weights16` (before the minimum size is applied).
pub(crate) fn buffer_bytes(m: &Manifest) -> Result<[u64; 3], Error> {
    let data = m.data_elems.checked_mul(4).ok_or_else(|| {
        Error::Bundle(crate::bundle::BundleError::Manifest(format!(
            "data_elems {} overflows a byte size",
            m.data_elems
        )))
    })?;
    Ok([data, m.params.len, m.weights16.len])
}

/// Fail if a buffer, a workgroup size or a dispatch exceeds what `device` supports.
pub(crate) fn check(
    m: &Manifest,
    limits: &vk::PhysicalDeviceLimits,
    device: &str,
) -> Result<(), Error> {
    let over = |what, need: u64, max: u64| {
        if need > max {
            Err(Error::Limit { what, need, max, device: device.to_owned() })
        } else {
            Ok(())
        }
    };
    let max_range = u64::from(limits.max_storage_buffer_range);
    let [data, params, weights16] = buffer_bytes(m)?;
    over("data buffer bytes (maxStorageBufferRange)", data, max_range)?;
    over("params buffer bytes (maxStorageBufferRange)", params, max_range)?;
    over("weights16 buffer bytes (maxStorageBufferRange)", weights16, max_range)?;
    for module in &m.modules {
        for (i, &size) in module.workgroup_size.iter().enumerate() {
            over(
                "workgroup size (maxComputeWorkGroupSize)",
                size.into(),
                limits.max_compute_work_group_size[i].into(),
            )?;
        }
        let invocations = module.workgroup_size.iter().map(|&s| u64::from(s)).product();
        over(
            "workgroup invocations (maxComputeWorkGroupInvocations)",
            invocations,
            limits.max_compute_work_group_invocations.into(),
        )?;
    }
    for step in &m.steps {
        for (i, &g) in step.groups.iter().enumerate() {
            over(
                "dispatch groups (maxComputeWorkGroupCount)",
                g.into(),
                limits.max_compute_work_group_count[i].into(),
            )?;
        }
    }
    Ok(())
}
