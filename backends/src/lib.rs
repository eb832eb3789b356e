//! kiln-backends: one folder per backend, each with the same surface (a struct implementing
//! `kiln_compiler::pipeline::Backend`). Backends only read the IR.
pub mod npu;
pub mod onnx;
pub mod tflite;

use kiln_compiler::pipeline::Backend;

/// Every backend this build of kiln has.
pub fn all() -> Vec<Box<dyn Backend>> {
    vec![Box::new(onnx::OnnxBackend), Box::new(tflite::TfliteBackend), Box::new(npu::NpuBackend)]
}
