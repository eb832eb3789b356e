//! Quantization: ranges from calibration statistics and QDQ insertion.
pub mod bias_correction;
pub mod params;
pub mod qdq;

use kiln_compiler::calib::Calibration;
use kiln_compiler::config::{CalibrationConfig, Target};
use kiln_compiler::ir::{DType, Model, TensorData};
use kiln_compiler::pipeline::{Pass, PassContext, Quantizer};
use kiln_compiler::{Error, Result};

/// Post-training quantization for `kiln build` targets with `precision: int8`.
pub struct Ptq;

impl Quantizer for Ptq {
    fn quantize(&self, model: &Model, t: &Target, calib: &Calibration, cfg: &CalibrationConfig, input: &str, samples: &[TensorData]) -> Result<(Model, serde_json::Value)> {
        let method = params::Method::parse(cfg.method.as_deref().unwrap_or("entropy"), cfg.percentile)
            .ok_or_else(|| Error::Pass { pass: "quantize".into(), reason: "unknown calibration method".into() })?;
        let opts = qdq::QdqOptions {
            per_channel: t.weights.as_deref() != Some("per_tensor"),
            activations: if t.activations.as_deref() == Some("uint8") { DType::U8 } else { DType::I8 },
            method,
            ..Default::default()
        };
        let mut m = model.clone();
        let summary = qdq::quantize(&mut m, calib, &opts)?;
        let mut corrected = 0;
        if t.bias_correction.unwrap_or(true) && !summary.qat_kept {
            corrected = bias_correction::correct(&mut m, model, input, samples)?;
        }
        crate::cleanup::dce::Dce.run(&mut m, &mut PassContext::default())?;
        let json = serde_json::json!({
            "method": format!("{method:?}"),
            "weights": if opts.per_channel { "per_channel" } else { "per_tensor" },
            "qat_scales_kept": summary.qat_kept,
            "quantized_weights": summary.weights,
            "quantized_biases": summary.biases,
            "quantized_activations": summary.activations,
            "bias_corrected_layers": corrected,
            "kept_float": summary.kept_float,
        });
        Ok((m, json))
    }
}
