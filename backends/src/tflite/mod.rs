//! The `tflite` backend: the IR lowered straight to a TFLite flatbuffer that LiteRT (XNNPACK on the CPU)
//! runs. `precision: fp32`, or `fp16` — float16 constants, each behind a DEQUANTIZE to float32 that the
//! runtime folds at load, as TensorFlow's float16 models do (half the weight bytes, float math); `dynamic`
//! — int8 weights per channel, float activations (LiteRT's hybrid kernels); or `int8`, full integer.
//!
//! `int8` also writes `model.qdq.onnx`, the QDQ twin: the quantizer's decisions as a QDQ ONNX model that
//! onnxruntime runs, which is what the build report's accuracy for the target measures.
//!
//! Keys: `io_layout` (`nhwc`, the default, or `nchw`), `io_dtype` (`float`, the default, or `int8`
//! with precision int8) and `device` (the phone it runs on: a shipped phone CPU profile such as
//! `pixel-3`, or a profile .yaml with a `cost:` section; a build with `profile: true` then reports an
//! estimated latency on it, compiler/src/cost.rs). The lowering itself lives in `common::tflite`, shared with the `npu` backend.
use kiln_compiler::backend::{
    parse_option, parse_options, ArtifactFile, Backend, Emitted, Precision, TargetRules,
};
use kiln_compiler::config::Target;
use kiln_compiler::ir::{Model, TensorData};
use kiln_compiler::{Error, Result};
use serde::Deserialize;

use crate::common::tflite::model::{self, Code, Options as TfOptions, TensorType, TfModel};
use crate::common::tflite::{self as tfl, IoDtype, IoLayout};

pub struct TfliteBackend;

/// The `tflite` backend's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TfliteOptions {
    #[serde(default)]
    pub io_layout: IoLayout,
    #[serde(default)]
    pub io_dtype: Option<IoDtype>,
    #[serde(default)]
    pub device: Option<String>,
}

const KEYS: &[&str] = &["io_layout", "io_dtype", "device"];

fn options(t: &Target) -> std::result::Result<TfliteOptions, String> {
    let o: TfliteOptions = parse_options(t)?;
    tfl::check_io_dtype(o.io_dtype, t.precision == Precision::Int8)?;
    if let Some(d) = &o.device {
        kiln_compiler::cost::device(d).map_err(|e| format!("device: {e}"))?;
    }
    Ok(o)
}

fn target_err(t: &Target, reason: String) -> Error {
    Error::Backend { backend: "tflite".into(), target: t.name.clone(), reason }
}

/// Store every float constant as float16 behind a DEQUANTIZE (run first, folded by the runtime at load).
pub fn to_fp16(m: &mut TfModel) {
    let mut deq = Vec::new();
    for t in 0..m.tensors.len() {
        let tensor = &m.tensors[t];
        if tensor.dtype != TensorType::FLOAT32
            || tensor.data.is_none()
            || tensor.shape.len() <= 1
            || tensor.keep_f32
        {
            continue;
        }
        let Some(vals) = m.f32_data(t as i32) else { continue };
        let bytes = TensorData::from_f32_as_f16(Vec::new(), &vals).bytes().to_vec();
        let (name, shape) = (format!("{}_fp16", tensor.name), tensor.shape.clone());
        let half = m.constant(&name, shape, TensorType::FLOAT16, bytes);
        m.tensors[t].data = None;
        deq.push(model::Operator {
            code: Code::DEQUANTIZE,
            inputs: vec![half],
            outputs: vec![t as i32],
            options: TfOptions::None,
            origin: "fp16 weights".into(),
        });
    }
    deq.append(&mut m.operators);
    m.operators = deq;
}

/// Dynamic-range quantization: the filters of CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED become int8,
/// symmetric per output channel ([−127, 127]), activations stay float; LiteRT runs them with its hybrid
/// kernels (weights dequantized or inputs quantized on the fly). Layers the quantizer kept float32 stay so.
pub fn to_dynamic(m: &mut TfModel) {
    let filters: Vec<(i32, i32)> = m
        .operators
        .iter()
        .filter_map(|o| match o.code {
            Code::CONV_2D | Code::FULLY_CONNECTED => o.inputs.get(1).map(|f| (*f, 0)),
            Code::DEPTHWISE_CONV_2D => o.inputs.get(1).map(|f| (*f, 3)),
            _ => None,
        })
        .collect();
    for (f, axis) in filters {
        let t = &m.tensors[f as usize];
        if t.keep_f32 || t.dtype != TensorType::FLOAT32 {
            continue;
        }
        let (Some(vals), shape) = (m.f32_data(f), t.shape.clone()) else { continue };
        let channels = shape.get(axis as usize).copied().unwrap_or(1).max(1) as usize;
        let inner: usize =
            shape[axis as usize + 1..].iter().map(|d| *d as usize).product::<usize>().max(1);
        let ch = |i: usize| (i / inner) % channels;
        let mut amax = vec![0f32; channels];
        for (i, v) in vals.iter().enumerate() {
            amax[ch(i)] = amax[ch(i)].max(v.abs());
        }
        let scales: Vec<f32> =
            amax.iter().map(|a| if *a > 0.0 { a / 127.0 } else { 1.0 }).collect();
        let q: Vec<u8> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| (v / scales[ch(i)]).round().clamp(-127.0, 127.0) as i8 as u8)
            .collect();
        let t = &mut m.tensors[f as usize];
        t.dtype = TensorType::INT8;
        t.data = Some(q);
        t.quant = Some(model::Quant { zero_point: vec![0; channels], scale: scales, axis });
    }
}

impl Backend for TfliteBackend {
    fn name(&self) -> &'static str {
        "tflite"
    }

    fn precisions(&self) -> &'static [Precision] {
        &[Precision::Fp32, Precision::Fp16, Precision::Int8, Precision::Dynamic]
    }

    fn option_keys(&self) -> &'static [&'static str] {
        KEYS
    }

    fn check_option(&self, key: &str, value: serde_yaml::Value) -> std::result::Result<(), String> {
        let o = parse_option::<TfliteOptions>(key, value)?;
        // A name must be a shipped phone profile (a .yaml path is read once resolved, in `check`).
        if let Some(d) = o.device.filter(|d| !d.ends_with(".yaml") && !d.ends_with(".yml")) {
            if !kiln_compiler::cost::DEVICES.iter().any(|(n, _)| *n == d) {
                let names: Vec<&str> =
                    kiln_compiler::cost::DEVICES.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "device '{d}': not a device with a cost model (known: {}, or a profile .yaml with a \
                     `cost:` section); an NPU is reached with `backend: npu`",
                    names.join(", ")
                ));
            }
        }
        Ok(())
    }

    fn check(&self, target: &Target) -> std::result::Result<TargetRules, String> {
        options(target)?;
        Ok(tfl::rules())
    }

    fn resolve_paths(&self, target: &mut Target, base: &std::path::Path) {
        crate::common::device::resolve_path(kiln_compiler::cost::DEVICES, target, base);
    }

    fn input_files(&self, target: &Target) -> Vec<std::path::PathBuf> {
        crate::common::device::input_files(kiln_compiler::cost::DEVICES, target)
    }

    fn emit(&self, model: &Model, target: &Target) -> Result<Emitted> {
        let o = options(target).map_err(|e| target_err(target, e))?;
        let int8 = target.precision == Precision::Int8;
        let mut m =
            tfl::lower_model(model, o.io_layout, int8, tfl::io_int8(o.io_dtype, int8, false))?;
        if target.precision == Precision::Fp16 {
            to_fp16(&mut m);
        }
        if target.precision == Precision::Dynamic {
            to_dynamic(&mut m);
        }
        let bytes = tfl::ser::write(
            &m,
            &format!("kiln {} {}", env!("CARGO_PKG_VERSION"), target.precision),
        );
        let mut files = vec![ArtifactFile { rel_path: "model.tflite".into(), bytes }];
        if int8 {
            // The QDQ twin: the same quantization decisions as ONNX, for checking the artifact in any runtime.
            let opts = kiln_compiler::onnx::ExportOptions {
                external: kiln_compiler::onnx::ExternalData::Inline,
                strip_value_info: true,
            };
            for (rel_path, bytes) in kiln_compiler::onnx::to_files(model, "model.qdq.onnx", &opts)?
            {
                files.push(ArtifactFile { rel_path, bytes });
            }
        }
        // For the build report: what the artifact contains.
        let mut ops: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
        for o in &m.operators {
            *ops.entry(o.code.variant_name().unwrap_or("UNKNOWN").to_string()).or_default() += 1;
        }
        let macs: u64 = m.operators.iter().map(|o| model::macs(&m, o)).sum();
        let summary = serde_json::json!({
            "operators": m.operators.len(),
            "macs": macs,
            "ops": ops,
            "layout_transposes": tfl::layout_transposes(model, &m),
        });
        Ok(Emitted { files, summary: Some(summary) })
    }
}
