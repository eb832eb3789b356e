//! The `onnx` backend: the model after the configured passes, as ONNX: `precision: fp32`, or `int8` — the
//! QDQ model the quantizer made (int8 weights per channel, int32 biases, Q/DQ on activations), which any
//! ONNX runtime executes.
//!
//! Writes `<model stem>.onnx` (and `<model stem>.onnx.data` when `external_data: always`, or when the
//! model passes protobuf's 2 GiB limit). Output is byte-identical for identical inputs.
use kiln_compiler::config::{ExternalDataMode, Target};
use kiln_compiler::ir::Model;
use kiln_compiler::onnx::{to_files, ExportOptions, ExternalData};
use kiln_compiler::pipeline::{ArtifactFile, Backend};
use kiln_compiler::Result;

/// ONNX out.
pub struct OnnxBackend;

impl Backend for OnnxBackend {
    fn name(&self) -> &'static str {
        "onnx"
    }

    fn precisions(&self) -> &'static [&'static str] {
        &["fp32", "int8"]
    }

    fn emit(&self, model: &Model, target: &Target) -> Result<Vec<ArtifactFile>> {
        let external = match target.external_data {
            ExternalDataMode::Auto => ExternalData::Auto,
            ExternalDataMode::Always => ExternalData::Always,
            ExternalDataMode::Never => ExternalData::Inline,
        };
        let opts = ExportOptions { external, strip_value_info: false };
        let files = to_files(model, "model.onnx", &opts)?;
        Ok(files.into_iter().map(|(rel_path, bytes)| ArtifactFile { rel_path, bytes }).collect())
    }
}
