//! The `onnx` backend: the model after the configured passes, as ONNX: `precision: fp32`; `fp16` — float16
//! weights and activations with float32 I/O and islands (fp16.rs); or `int8` — the QDQ model the quantizer
//! made (int8 weights per channel, int32 biases, Q/DQ on activations), which any ONNX runtime executes.
//!
//! Writes `<model stem>.onnx` (and `<model stem>.onnx.data` when `external_data: always`, or when the
//! model passes protobuf's 2 GiB limit). Output is byte-identical for identical inputs.
use kiln_compiler::config::{ExternalDataMode, Target};
use kiln_compiler::ir::Model;
use kiln_compiler::onnx::{to_files, ExportOptions, ExternalData};
use kiln_compiler::pipeline::{ArtifactFile, Backend};
use kiln_compiler::Result;

pub mod fp16;

/// ONNX out.
pub struct OnnxBackend;

impl Backend for OnnxBackend {
    fn name(&self) -> &'static str {
        "onnx"
    }

    fn precisions(&self) -> &'static [&'static str] {
        &["fp32", "fp16", "int8"]
    }

    fn emit(&self, model: &Model, target: &Target) -> Result<Vec<ArtifactFile>> {
        let external = match target.external_data {
            ExternalDataMode::Auto => ExternalData::Auto,
            ExternalDataMode::Always => ExternalData::Always,
            ExternalDataMode::Never => ExternalData::Inline,
        };
        let opts = ExportOptions { external, strip_value_info: false };
        let half;
        let model = if target.precision == "fp16" {
            half = fp16::to_fp16(model).map_err(|e| match e {
                kiln_compiler::Error::Backend { backend, reason, .. } => {
                    kiln_compiler::Error::Backend { backend, target: target.name.clone(), reason }
                }
                other => other,
            })?;
            &half.0
        } else {
            model
        };
        let files = to_files(model, "model.onnx", &opts)?;
        Ok(files.into_iter().map(|(rel_path, bytes)| ArtifactFile { rel_path, bytes }).collect())
    }
}
