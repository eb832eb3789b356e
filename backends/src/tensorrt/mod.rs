//! The `tensorrt` backend: everything a Jetson needs to build a TensorRT engine, made off the device.
//! TensorRT engines are specific to the device and TensorRT version, so the bundle holds the inputs to
//! that build, quantized, checked and explained:
//! - `precision: int8`: `model.qdq.onnx`, explicit quantization by TensorRT's rules (symmetric int8, zero
//!   points 0, per-channel weights, float biases, Q/DQ at the inputs of weighted ops and on residual-Add
//!   skip inputs only, shared scales across Concat and MaxPool: the quantizer's rules from
//!   [`rules`]); `fp16`/`fp32`: `model.onnx` (float16 for TensorRT 11, whose networks are strongly typed);
//! - `dla: true`: `dla/model.onnx` without Q/DQ and, for int8, `dla/calib.cache` (dla.rs), plus
//!   `placement.json`/`placement.txt` (placement.rs);
//! - `build.sh` (the trtexec commands for the TensorRT version, script.rs) and `README.txt`.
//!
//! Keys: `device` (a Jetson profile: `agx-orin`, `orin-nano`, or a file), `dla`, `dla_core`,
//! `trt_version` (default: the profile's JetPack), `sparsity: "2:4"` (sparse tensor cores for the weights
//! the `prune: { method: sparse_2_4 }` pass, or a fine-tuned import, made 2:4; sparsity.rs).
pub mod dla;
pub mod placement;
pub mod profile;
pub mod script;
pub mod sparsity;

use kiln_compiler::backend::{
    parse_option, parse_options, ArtifactFile, Backend, Emitted, Fp16, Precision, QdqPlacement,
    QuantRules, TargetRules,
};
use kiln_compiler::config::Target;
use kiln_compiler::ir::{DType, Dim, Model, Op};
use kiln_compiler::onnx::{to_files, ExportOptions, ExternalData};
use kiln_compiler::{Error, Result};
use serde::Deserialize;

use script::{Engine, TrtVersion};

pub struct TensorRtBackend;

/// The `tensorrt` backend's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRtOptions {
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub dla: bool,
    #[serde(default)]
    pub dla_core: Option<u32>,
    #[serde(default)]
    pub trt_version: Option<String>,
    #[serde(default)]
    pub sparsity: Option<String>,
}

/// TensorRT's explicit-quantization rules (see the module doc); `dla`: the target also writes the DLA's
/// calibration cache, which needs the ranges of the tensors before fused activations too.
pub fn rules(dla: bool) -> QuantRules {
    QuantRules {
        full_integer: false,
        reduce_range: false,
        symmetric_activations: true,
        placement: QdqPlacement::FusionPoints,
        int32_bias: false,
        shared_scales: true,
        preactivation_ranges: dla,
        ..QuantRules::qdq()
    }
}

fn target_err(t: &Target, reason: String) -> Error {
    Error::Backend { backend: "tensorrt".into(), target: t.name.clone(), reason }
}

/// A target's options, checked against its device and precision.
struct Checked {
    o: TensorRtOptions,
    device: profile::Jetson,
    version: TrtVersion,
}

fn check(t: &Target) -> std::result::Result<Checked, String> {
    let o: TensorRtOptions = parse_options(t)?;
    let d = o.device.as_deref().ok_or_else(|| {
        format!("`device:` is required (one of {})", profile::builtin_names().join(", "))
    })?;
    let device = profile::load(d).map_err(|e| e.to_string())?;
    let version = TrtVersion::parse(o.trt_version.as_deref().unwrap_or(&device.trt_version))?;
    if let Some(s) = o.sparsity.as_deref().filter(|s| *s != "2:4") {
        return Err(format!("sparsity: \"{s}\": TensorRT's structured sparsity is \"2:4\""));
    }
    if t.activations.as_deref() == Some("uint8") {
        return Err("TensorRT takes symmetric int8 activations (zero point 0); `activations: uint8` is not TensorRT's".into());
    }
    if o.dla {
        if device.dla_cores == 0 {
            return Err(format!("`dla: true`, but {} has no DLA", device.title));
        }
        if t.precision == Precision::Fp32 || t.precision == Precision::Dynamic {
            return Err(format!(
                "the DLA runs fp16 and int8 only, not {}; set `precision: int8` or `fp16`",
                t.precision
            ));
        }
        if version.strongly_typed_only() {
            return Err(format!("`dla: true` with TensorRT {version}: TensorRT 11 removed implicit quantization, which int8 on the DLA needs, and kiln writes DLA bundles for TensorRT 8.5-10.x (JetPack 5 and 6)"));
        }
        if let Some(c) = o.dla_core.filter(|c| *c >= device.dla_cores) {
            return Err(format!(
                "dla_core {c}: {} has DLA cores 0..{}",
                device.title,
                device.dla_cores - 1
            ));
        }
    } else if o.dla_core.is_some() {
        return Err("`dla_core:` needs `dla: true`".into());
    }
    Ok(Checked { o, device, version })
}

/// TensorRT's Q/DQ rules on a finished model: int8 only, zero points 0. A uint8 zero point of 128 (a QAT
/// export's symmetric uint8) is the same numbers in int8, and is converted; anything else is refused.
fn trt_qdq(model: &Model) -> std::result::Result<Model, String> {
    let mut m = model.clone();
    let g = &mut m.graph;
    let ids: Vec<_> = g.nodes.node_indices().collect();
    for id in ids {
        let n = &g.nodes[id];
        if !matches!(n.op, Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. }) {
            continue;
        }
        let (x, z) = (n.input(0), n.input(2));
        let name = n.name.clone();
        let Some(z) = z else { continue };
        let Some(zd) = g.const_data(z).cloned() else {
            return Err(format!("'{name}': zero point is not a constant"));
        };
        match zd.dtype {
            DType::I8 if zd.bytes().iter().all(|b| *b == 0) => {}
            DType::I32 if x.and_then(|x| g.const_data(x)).is_some() => {
                return Err(format!("'{name}': an int32 bias behind DequantizeLinear; TensorRT adds float biases"));
            }
            DType::U8 if zd.bytes().iter().all(|b| *b == 128) => {
                let nz = g.add_const(
                    &format!("{}_int8", g.value(z).name),
                    kiln_compiler::ir::TensorData::from_bytes(DType::I8, zd.dims.clone(), vec![0; zd.bytes().len()]),
                ).map_err(|e| e.to_string())?;
                if let Some(node) = g.node_mut(id) {
                    node.inputs[2] = Some(nz);
                }
                let is_q = matches!(g.nodes[id].op, Op::QuantizeLinear { .. });
                if let (true, Some(q)) = (is_q, g.nodes[id].output(0)) {
                    g.value_mut(q).dtype = DType::I8;
                }
                if let Some(x) = x.filter(|x| g.const_data(*x).is_some()) {
                    let d = g.const_data(x).cloned();
                    if let Some(d) = d.filter(|d| d.dtype == DType::U8) {
                        let shifted = d.bytes().iter().map(|b| (*b as i16 - 128) as i8 as u8).collect();
                        g.value_mut(x).data = Some(kiln_compiler::ir::TensorData::from_bytes(DType::I8, d.dims.clone(), shifted));
                        g.value_mut(x).dtype = DType::I8;
                    }
                }
            }
            other => {
                return Err(format!(
                    "'{name}': {other:?} zero point {:?}: TensorRT takes int8 Q/DQ with zero point 0 (an asymmetric QAT export cannot be converted exactly)",
                    zd.bytes().iter().take(4).collect::<Vec<_>>()
                ))
            }
        }
    }
    pin_inputs(&mut m);
    m.graph.rebuild_edges();
    Ok(m)
}

/// Every graph input's unknown dims become 1: a static engine (the DLA takes nothing else).
fn pin_inputs(m: &mut Model) {
    let g = &mut m.graph;
    for v in g.inputs.clone() {
        if let Some(shape) = g.value_mut(v).shape.as_mut() {
            for d in shape.iter_mut() {
                if !matches!(d, Dim::Known(_)) {
                    *d = Dim::Known(1);
                }
            }
        }
    }
}

fn onnx_files(m: &Model, name: &str) -> Result<Vec<ArtifactFile>> {
    let opts = ExportOptions { external: ExternalData::Inline, strip_value_info: true };
    Ok(to_files(m, name, &opts)?
        .into_iter()
        .map(|(rel_path, bytes)| ArtifactFile { rel_path, bytes })
        .collect())
}

/// Layers kept in float32 (fp16 islands): `--layerPrecisions` names them.
fn fp32_layers(m: &Model) -> Vec<String> {
    m.graph
        .nodes
        .node_weights()
        .filter(|n| n.keeps_fp32_weights())
        .map(|n| n.name.clone())
        .collect()
}

/// Weighted layers the int8 model keeps in float (mixed precision): they run fp16 in the engine.
fn float_weighted_layers(m: &Model) -> Vec<String> {
    let g = &m.graph;
    g.nodes
        .node_weights()
        .filter(|n| matches!(n.op, Op::Conv { .. } | Op::Gemm { .. }))
        .filter(|n| n.input(1).is_some_and(|w| g.const_data(w).is_some()))
        .map(|n| n.name.clone())
        .collect()
}

fn layer_precisions(layers: &[String], p: &str) -> Vec<String> {
    if layers.is_empty() {
        return Vec::new();
    }
    let list: Vec<String> = layers.iter().map(|l| format!("{l}:{p}")).collect();
    vec!["--precisionConstraints=obey".into(), format!("--layerPrecisions={}", list.join(","))]
}

impl Backend for TensorRtBackend {
    fn name(&self) -> &'static str {
        "tensorrt"
    }

    fn precisions(&self) -> &'static [Precision] {
        &[Precision::Fp32, Precision::Fp16, Precision::Int8]
    }

    fn option_keys(&self) -> &'static [&'static str] {
        &["device", "dla", "dla_core", "trt_version", "sparsity"]
    }

    fn check_option(&self, key: &str, value: serde_yaml::Value) -> std::result::Result<(), String> {
        let o = parse_option::<TensorRtOptions>(key, value)?;
        if let Some(d) = o.device.filter(|d| profile::file(d).is_none()) {
            profile::load(&d).map_err(|e| e.to_string())?;
        }
        if let Some(v) = o.trt_version {
            TrtVersion::parse(&v)?;
        }
        Ok(())
    }

    fn check(&self, target: &Target) -> std::result::Result<TargetRules, String> {
        let c = check(target)?;
        Ok(TargetRules { quant: rules(c.o.dla), fp16: Fp16::Compute })
    }

    fn resolve_paths(&self, target: &mut Target, base: &std::path::Path) {
        crate::common::device::resolve_path(profile::BUILTIN, target, base);
    }

    fn input_files(&self, target: &Target) -> Vec<std::path::PathBuf> {
        crate::common::device::input_files(profile::BUILTIN, target)
    }

    fn emit(&self, model: &Model, target: &Target) -> Result<Emitted> {
        let c = check(target).map_err(|e| target_err(target, e))?;
        let v = c.version;
        let kiln = env!("CARGO_PKG_VERSION");
        let mut files: Vec<ArtifactFile> = Vec::new();
        let mut engines: Vec<Engine> = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        let mut summary = serde_json::json!({
            "device": c.device.title,
            "trt_version": v.to_string(),
            "trt_version_number": v.number(),
        });
        let engine_flags = |int8: bool, fp16: bool| -> Vec<String> {
            if v.strongly_typed_only() {
                return Vec::new();
            }
            let mut f = Vec::new();
            if int8 {
                f.push("--int8".to_string());
            }
            if fp16 {
                f.push("--fp16".to_string());
            }
            f
        };
        match target.precision {
            Precision::Int8 => {
                let q = trt_qdq(model).map_err(|e| target_err(target, e))?;
                files.extend(onnx_files(&q, "model.qdq.onnx")?);
                let kept = float_weighted_layers(&q);
                if !kept.is_empty() {
                    notes.push(format!("{} weighted layer(s) kept in float by the accuracy budget: {} (fp16 in the engine{})", kept.len(), kept.join(", "), if v.strongly_typed_only() { "; TensorRT 11 runs the model's float layers in fp32" } else { "" }));
                }
                let flags = engine_flags(true, true);
                if v.strongly_typed_only() {
                    notes.push("TensorRT 11 networks are strongly typed: the Q/DQ set int8, float layers run in fp32".into());
                }
                engines.push(Engine {
                    what: "GPU engine: explicit quantization (Q/DQ int8), the rest fp16".into(),
                    onnx: "model.qdq.onnx".into(),
                    engine: "model.engine".into(),
                    precision: flags,
                    dla: false,
                });
                summary["kept_float_layers"] = serde_json::json!(kept);
            }
            Precision::Fp16 => {
                let islands = fp32_layers(model);
                let mut m = model.clone();
                pin_inputs(&mut m);
                let flags = if v.strongly_typed_only() {
                    let (h, _) = crate::common::onnx_fp16::to_fp16(&m)?;
                    m = h;
                    Vec::new()
                } else {
                    let mut f = engine_flags(false, true);
                    f.extend(layer_precisions(&islands, "fp32"));
                    f
                };
                files.extend(onnx_files(&m, "model.onnx")?);
                engines.push(Engine {
                    what: format!(
                        "GPU engine: fp16{}",
                        if islands.is_empty() {
                            String::new()
                        } else {
                            format!(", {} layer(s) kept fp32", islands.len())
                        }
                    ),
                    onnx: "model.onnx".into(),
                    engine: "model.engine".into(),
                    precision: flags,
                    dla: false,
                });
                summary["fp32_layers"] = serde_json::json!(islands);
            }
            _ => {
                let mut m = model.clone();
                pin_inputs(&mut m);
                files.extend(onnx_files(&m, "model.onnx")?);
                engines.push(Engine {
                    what: "GPU engine: fp32".into(),
                    onnx: "model.onnx".into(),
                    engine: "model.engine".into(),
                    precision: Vec::new(),
                    dla: false,
                });
            }
        }
        if c.o.sparsity.is_some() {
            let (sparse, eligible) = sparsity::sparse_layers(model);
            if sparse.is_empty() {
                return Err(target_err(target, format!("sparsity: \"2:4\", but none of the {eligible} weighted layer(s) with a multiple of 4 input channels is 2:4 sparse: add `{{ prune: {{ method: sparse_2_4 }} }}` to passes (one-shot, it changes the model: fine-tune with the mask for accuracy) or import a model fine-tuned 2:4")));
            }
            for e in engines.iter_mut().filter(|e| !e.dla) {
                e.precision.push("--sparsity=enable".into());
            }
            notes.push(format!("{} of {eligible} eligible weighted layers are 2:4 sparse: --sparsity=enable lets TensorRT pick sparse kernels for them where faster", sparse.len()));
            summary["sparse_2_4_layers"] =
                serde_json::json!({ "sparse": sparse.len(), "eligible": eligible });
        }
        if c.o.dla {
            let limits = c.device.dla.as_ref().ok_or_else(|| {
                target_err(target, format!("{} has no DLA limits in its profile", c.device.title))
            })?;
            let int8 = target.precision == Precision::Int8;
            let float = dla::float_model(model)?;
            files.extend(onnx_files(&float, "dla/model.onnx")?);
            let mut flags = engine_flags(int8, true);
            if int8 {
                // kiln's calibrated ranges, or a QAT model's own (its trained Q/DQ scales).
                let amax = if model.activation_amax.is_empty() {
                    dla::amax_from_qdq(model)
                } else {
                    model.activation_amax.clone()
                };
                if amax.is_empty() {
                    return Err(target_err(target, "the quantized model carries no activation ranges: neither kiln's calibration nor symmetric Q/DQ of its own".into()));
                }
                let ranges = dla::cache_ranges(&float, &amax);
                files.push(ArtifactFile {
                    rel_path: "dla/calib.cache".into(),
                    bytes: dla::cache_text(v.number(), &ranges).into_bytes(),
                });
                flags.push("--calib=dla/calib.cache".into());
                // Layers the int8 model keeps float run fp16 on the DLA.
                let kept = float_weighted_layers(model);
                flags.extend(layer_precisions(&kept, "fp16"));
                summary["dla_calibration_tensors"] = serde_json::json!(ranges.len());
            }
            // fp16 islands run in float32, which the DLA cannot: on the GPU, and TensorRT told so.
            let islands = fp32_layers(model);
            if !int8 {
                flags.extend(layer_precisions(&islands, "fp32"));
            }
            let fp32: std::collections::HashSet<String> = islands.into_iter().collect();
            let p = placement::place(&float, &c.device, limits, target.precision.as_str(), &fp32)?;
            let json = serde_json::to_vec_pretty(&p).map_err(|e| Error::invalid(e.to_string()))?;
            files.push(ArtifactFile { rel_path: "placement.json".into(), bytes: json });
            files.push(ArtifactFile {
                rel_path: "placement.txt".into(),
                bytes: placement::text(&p).into_bytes(),
            });
            engines.push(Engine {
                what: format!(
                    "DLA engine ({}): {} of {} layers on the DLA in {} loadable(s), the rest on the GPU",
                    target.precision, p.layers_on_dla, p.layers_total, p.loadables
                ),
                onnx: "dla/model.onnx".into(),
                engine: "model.dla.engine".into(),
                precision: flags,
                dla: true,
            });
            summary["dla"] = serde_json::json!({
                "layers_on_dla": p.layers_on_dla,
                "layers_total": p.layers_total,
                "loadables": p.loadables,
                "transitions": p.transitions,
                "dla_mac_share": p.dla_mac_share,
                "placement": p.layers.iter().map(|l| if l.device == "DLA" { 'D' } else { 'G' }).collect::<String>(),
            });
        }
        let sh = script::build_sh(&c.device.title, v, &engines, kiln);
        files.push(ArtifactFile { rel_path: "build.sh".into(), bytes: sh.into_bytes() });
        files.push(ArtifactFile {
            rel_path: "README.txt".into(),
            bytes: readme(&c, target, &engines, &notes).into_bytes(),
        });
        summary["engines"] =
            serde_json::json!(engines.iter().map(|e| &e.engine).collect::<Vec<_>>());
        Ok(Emitted { files, summary: Some(summary) })
    }
}

fn readme(c: &Checked, t: &Target, engines: &[Engine], notes: &[String]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "TensorRT bundle for {} ({}), target '{}', precision {}, made by kiln {} for TensorRT {} (JetPack {} ships {}).\n\n",
        c.device.title,
        c.device.gpu_arch,
        t.name,
        t.precision,
        env!("CARGO_PKG_VERSION"),
        c.version,
        c.device.jetpack,
        c.device.trt_version
    ));
    s.push_str("On the Jetson, in this folder:\n\n    ./build.sh\n\nwhich runs trtexec (TRTEXEC=... to choose one) and writes:\n");
    for e in engines {
        s.push_str(&format!("  {}  from {}: {}\n", e.engine, e.onnx, e.what));
    }
    s.push_str("\nThen `trtexec --loadEngine=<engine>` measures it, and TensorRT's runtime loads it in an app.\n\nFiles:\n");
    match t.precision {
        Precision::Int8 => s.push_str("  model.qdq.onnx     explicit quantization: int8 Q/DQ (zero points 0) at the inputs of weighted layers and\n                     residual-Add skips, per-channel weights, float biases; kiln measured its accuracy\n                     (report.json) with the Q/DQ executed as written.\n"),
        _ => s.push_str("  model.onnx         the optimized float model.\n"),
    }
    if c.o.dla {
        s.push_str("  dla/model.onnx     the same model without Q/DQ, for the DLA (which takes no Q/DQ): static shapes.\n");
        if t.precision == Precision::Int8 {
            s.push_str(&format!("  dla/calib.cache    kiln's calibrated ranges for TensorRT's implicit int8 (header for TensorRT v{}: it must\n                     match the device's TensorRT). kiln does not measure the DLA engine's accuracy: check it on the device.\n", c.version.number()));
        }
        s.push_str("  placement.txt/json which layers TensorRT can run on the DLA, and why the others fall back to the GPU.\n");
    }
    s.push_str("  build.sh           the trtexec commands.\n");
    if !notes.is_empty() {
        s.push_str("\nNotes:\n");
        for n in notes {
            s.push_str(&format!("  - {n}\n"));
        }
    }
    s
}
