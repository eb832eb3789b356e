//! The `onnx` backend: the model after the configured passes, as ONNX: `precision: fp32`; `fp16` — float16
//! weights and activations with float32 I/O and islands (fp16.rs); or `int8` — the QDQ model the quantizer
//! made (int8 weights per channel, int32 biases, Q/DQ on activations), which any ONNX runtime executes.
//!
//! Writes `<model stem>.onnx` (and `<model stem>.onnx.data` when `external_data: always`, or when the
//! model passes protobuf's 2 GiB limit). Output is byte-identical for identical inputs.
use kiln_compiler::backend::{
    parse_option, parse_options, ArtifactFile, Backend, Emitted, Fp16, Precision, QuantRules,
    TargetRules,
};
use kiln_compiler::config::Target;
use kiln_compiler::ir::Model;
use kiln_compiler::onnx::{to_files, ExportOptions, ExternalData};
use kiln_compiler::Result;
use serde::Deserialize;

pub use crate::common::onnx_fp16 as fp16;

/// ONNX out.
pub struct OnnxBackend;

/// Where an ONNX artifact's tensor data goes (`external_data:`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExternalDataMode {
    /// External only when the model passes protobuf's 2 GiB limit.
    #[default]
    Auto,
    Always,
    Never,
}

/// The `onnx` backend's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxOptions {
    #[serde(default)]
    pub external_data: ExternalDataMode,
}

/// QDQ: Q/DQ around the ops with integer kernels, the rest float; runtimes fuse activations themselves;
/// 7-bit weights on request (x86 kernels without VNNI). `kiln quantize` uses these rules too.
pub fn int8_rules() -> QuantRules {
    QuantRules::qdq()
}

impl Backend for OnnxBackend {
    fn name(&self) -> &'static str {
        "onnx"
    }

    fn precisions(&self) -> &'static [Precision] {
        &[Precision::Fp32, Precision::Fp16, Precision::Int8]
    }

    fn option_keys(&self) -> &'static [&'static str] {
        &["external_data"]
    }

    fn check_option(&self, key: &str, value: serde_yaml::Value) -> std::result::Result<(), String> {
        parse_option::<OnnxOptions>(key, value).map(|_| ())
    }

    fn check(&self, target: &Target) -> std::result::Result<TargetRules, String> {
        parse_options::<OnnxOptions>(target)?;
        Ok(TargetRules { quant: int8_rules(), fp16: Fp16::Compute })
    }

    fn emit(&self, model: &Model, target: &Target) -> Result<Emitted> {
        let o: OnnxOptions =
            parse_options(target).map_err(|reason| kiln_compiler::Error::Backend {
                backend: "onnx".into(),
                target: target.name.clone(),
                reason,
            })?;
        let external = match o.external_data {
            ExternalDataMode::Auto => ExternalData::Auto,
            ExternalDataMode::Always => ExternalData::Always,
            ExternalDataMode::Never => ExternalData::Inline,
        };
        let opts = ExportOptions { external, strip_value_info: false };
        let half;
        let model = if target.precision == Precision::Fp16 {
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
        let files =
            files.into_iter().map(|(rel_path, bytes)| ArtifactFile { rel_path, bytes }).collect();
        Ok(Emitted { files, summary: None })
    }
}
