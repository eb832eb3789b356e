//! kiln-backends: one folder per backend, each with the same surface (a struct implementing
//! `kiln_compiler::backend::Backend`, its typed options and its rules); what several share is in `common`.
//! Backends only read the IR. Adding one: a folder, a line in [`all`], its docs.
pub mod common;
pub mod dump;
pub mod npu;
pub mod onnx;
pub mod tensorrt;
pub mod tflite;
pub mod vulkan;

use kiln_compiler::backend::Backend;

/// Every backend this build of kiln has.
pub fn all() -> Vec<Box<dyn Backend>> {
    vec![
        Box::new(onnx::OnnxBackend),
        Box::new(tflite::TfliteBackend),
        Box::new(npu::NpuBackend),
        Box::new(tensorrt::TensorRtBackend),
        Box::new(vulkan::VulkanBackend),
        Box::new(dump::DumpBackend),
    ]
}
