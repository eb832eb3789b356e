//! The runtime's error type: every message names what failed and, where it helps, what to do about it.
use std::path::PathBuf;

use ash::vk;

use crate::bundle::BundleError;

/// Errors loading or running a bundle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Vulkan loader (libvulkan) could not be loaded.
    #[error(
        "cannot load the Vulkan loader (libvulkan): {0}; install a Vulkan driver, e.g. Debian's \
         mesa-vulkan-drivers (plus libvulkan1)"
    )]
    NoVulkan(String),
    /// No physical device fits (none at all, none with a compute queue, or `KILN_VK_DEVICE` out of range).
    #[error("no usable Vulkan device: {0}")]
    NoDevice(String),
    /// Validation was requested but the Khronos validation layer is not installed.
    #[error(
        "Vulkan validation was requested (LoadOptions::validation or KILN_VK_VALIDATION=1) but the layer \
         VK_LAYER_KHRONOS_validation is not installed (Debian: vulkan-validationlayers)"
    )]
    NoValidationLayer,
    /// A required instance or device extension is missing.
    #[error("the Vulkan extension {extension} is not available on {on}")]
    MissingExtension { extension: &'static str, on: String },
    /// The bundle needs a device feature the chosen device lacks.
    #[error(
        "the bundle needs the Vulkan feature {feature}, which device '{device}' does not support; \
         choose another device with KILN_VK_DEVICE=<index> or compile the model without it (e.g. fp32)"
    )]
    MissingFeature { feature: &'static str, device: String },
    /// The bundle exceeds a device limit.
    #[error("the bundle needs {what} = {need}, above device '{device}''s limit of {max}")]
    Limit { what: &'static str, need: u64, max: u64, device: String },
    /// A Vulkan call failed.
    #[error("Vulkan call {call} failed: {result}")]
    Vk { call: &'static str, result: vk::Result },
    /// The bundle could not be parsed or is inconsistent.
    #[error("bad bundle: {0}")]
    Bundle(#[from] BundleError),
    /// Reading the bundle or reading/writing the pipeline cache failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An input's data does not fit the tensor (or an output buffer does not fit the output).
    #[error("tensor '{name}': {reason}")]
    Input { name: String, reason: String },
    /// An input or output index out of range.
    #[error("index out of range: {0}")]
    Index(String),
    /// The device did not finish a run in time.
    #[error("the device did not finish the run within {0} ms (device hung or model too slow)")]
    Timeout(u64),
}

impl Error {
    /// Shorthand for a failed Vulkan call.
    pub(crate) fn vk(call: &'static str) -> impl FnOnce(vk::Result) -> Error {
        move |result| Error::Vk { call, result }
    }
}
