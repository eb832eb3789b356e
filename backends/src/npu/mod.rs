//! The `npu` backend: full-int8 TFLite for an NPU delegate or compiler, with a partition report (JSON and
//! text) from the device profile: which ops land on the NPU, in how many partitions, where and why the CPU
//! takes over, and the share of MACs on the NPU. For profiles that ask for it (`qualcomm-htp`) it also
//! writes the QDQ ONNX that onnxruntime's QNN execution provider takes: uint8 activations (the same
//! numbers: q_u8 = q_i8 + 128 with zero point + 128), int8 weights, static shapes.
//!
//! Files: `model.tflite`, `partition.json`, `partition.txt`, and `model.qdq.onnx` where applicable.
pub mod partition;
pub mod profile;

use kiln_compiler::backend::{
    parse_option, parse_options, ArtifactFile, Backend, Emitted, Precision, TargetRules,
};
use kiln_compiler::config::Target;
use kiln_compiler::ir::{DType, Dim, Model, Op, TensorData};
use kiln_compiler::onnx::{to_files, ExportOptions, ExternalData};
use kiln_compiler::{Error, Result};
use serde::Deserialize;

use crate::common::tflite::{self as tfl, IoDtype, IoLayout};

pub struct NpuBackend;

/// The `npu` backend's keys: `device` (required: a profile name under configs/devices, or a path to a
/// profile .yaml), and the TFLite I/O keys (`io_dtype` defaults to the profile's).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NpuOptions {
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub io_layout: IoLayout,
    #[serde(default)]
    pub io_dtype: Option<IoDtype>,
}

fn target_err(t: &Target, reason: String) -> Error {
    Error::Backend { backend: "npu".into(), target: t.name.clone(), reason }
}

/// The QDQ model with uint8 activations and every graph input pinned to static dims.
pub fn qnn_qdq(model: &Model) -> Result<Model> {
    let mut m = model.clone();
    let g = &mut m.graph;
    let ids: Vec<_> = g.nodes.node_indices().collect();
    for id in ids {
        let n = &g.nodes[id];
        let (is_q, is_dq) = (
            matches!(n.op, Op::QuantizeLinear { .. }),
            matches!(n.op, Op::DequantizeLinear { .. }),
        );
        if !(is_q || is_dq) {
            continue;
        }
        let (Some(x), Some(z)) = (n.input(0), n.input(2)) else { continue };
        // Activations only: a Q reading a non-constant, or a DQ reading a Q's output. Weights stay int8.
        let from_q = g
            .value(x)
            .producer
            .and_then(|(p, _)| g.node(p))
            .is_some_and(|p| matches!(p.op, Op::QuantizeLinear { .. }));
        let activation = g.const_data(x).is_none() && (is_q || from_q);
        let Some(zd) = g.const_data(z).filter(|d| d.dtype == DType::I8).cloned() else { continue };
        if !activation {
            continue;
        }
        let shifted: Vec<u8> = zd.bytes().iter().map(|b| ((*b as i8) as i16 + 128) as u8).collect();
        let nz = g.add_const(
            &format!("{}_u8", g.value(z).name),
            TensorData::from_bytes(DType::U8, zd.dims.clone(), shifted),
        )?;
        if let Some(node) = g.node_mut(id) {
            node.inputs[2] = Some(nz);
        }
        if is_q {
            if let Some(q) = g.nodes[id].output(0) {
                g.value_mut(q).dtype = DType::U8;
            }
        }
    }
    for v in g.inputs.clone() {
        if let Some(shape) = g.value_mut(v).shape.as_mut() {
            for d in shape.iter_mut() {
                if !matches!(d, Dim::Known(_)) {
                    *d = Dim::Known(1);
                }
            }
        }
    }
    g.rebuild_edges();
    Ok(m)
}

impl NpuBackend {
    fn options(t: &Target) -> std::result::Result<(NpuOptions, profile::Profile), String> {
        let o: NpuOptions = parse_options(t)?;
        tfl::check_io_dtype(o.io_dtype, true)?;
        let p = Self::profile(o.device.as_deref())?;
        Ok((o, p))
    }

    fn profile(device: Option<&str>) -> std::result::Result<profile::Profile, String> {
        let d = device.ok_or_else(|| {
            format!("`device:` is required (one of {})", profile::builtin_names().join(", "))
        })?;
        profile::load(d).map_err(|e| e.to_string())
    }
}

impl Backend for NpuBackend {
    fn name(&self) -> &'static str {
        "npu"
    }

    fn precisions(&self) -> &'static [Precision] {
        &[Precision::Int8]
    }

    fn option_keys(&self) -> &'static [&'static str] {
        &["device", "io_layout", "io_dtype"]
    }

    fn check_option(&self, key: &str, value: serde_yaml::Value) -> std::result::Result<(), String> {
        let o = parse_option::<NpuOptions>(key, value)?;
        match o.device {
            // A profile file is read by `check`, once its path is resolved against the config's folder.
            Some(d) if profile::file(&d).is_some() => Ok(()),
            Some(d) => Self::profile(Some(&d)).map(|_| ()),
            None => Ok(()),
        }
    }

    fn check(&self, target: &Target) -> std::result::Result<TargetRules, String> {
        Self::options(target)?;
        Ok(tfl::rules())
    }

    fn resolve_paths(&self, target: &mut Target, base: &std::path::Path) {
        crate::common::device::resolve_path(profile::BUILTIN, target, base);
    }

    fn input_files(&self, target: &Target) -> Vec<std::path::PathBuf> {
        crate::common::device::input_files(profile::BUILTIN, target)
    }

    fn emit(&self, model: &Model, target: &Target) -> Result<Emitted> {
        let (o, p) = Self::options(target).map_err(|e| target_err(target, e))?;
        let io_int8 = tfl::io_int8(o.io_dtype, true, p.io_dtype.as_deref() == Some("int8"));
        // A device without grouped CONV_2D gets grouped convolutions group by group.
        let split = p.ops.get("CONV_2D").is_some_and(|r| r.grouped == Some(false));
        let m = tfl::lower_model_for(model, o.io_layout, true, io_int8, split)?;
        let bytes =
            tfl::ser::write(&m, &format!("kiln {} int8 for {}", env!("CARGO_PKG_VERSION"), p.name));
        let report = partition::partition(&m, &p);
        let json = serde_json::to_value(&report).map_err(|e| Error::invalid(e.to_string()))?;
        let mut pretty =
            serde_json::to_vec_pretty(&json).map_err(|e| Error::invalid(e.to_string()))?;
        pretty.push(b'\n');
        let mut files = vec![
            ArtifactFile { rel_path: "model.tflite".into(), bytes },
            ArtifactFile { rel_path: "partition.json".into(), bytes: pretty },
            ArtifactFile {
                rel_path: "partition.txt".into(),
                bytes: partition::text(&report).into_bytes(),
            },
        ];
        if p.emit_qdq_onnx {
            let q = qnn_qdq(model)?;
            for (rel_path, bytes) in to_files(
                &q,
                "model.qdq.onnx",
                &ExportOptions { external: ExternalData::Inline, strip_value_info: true },
            )? {
                files.push(ArtifactFile { rel_path, bytes });
            }
        }
        let summary = serde_json::json!({
            "device": report.device,
            "ops_on_npu": report.ops_on_npu,
            "ops_total": report.ops_total,
            "partitions": report.partitions.len(),
            "npu_mac_share": report.npu_mac_share,
            "macs_total": report.macs_total,
            // One letter per op in execution order: N on the NPU, C on the CPU (report.html's map).
            "placement": report.ops.iter().map(|o| if o.npu { 'N' } else { 'C' }).collect::<String>(),
            "layout_transposes": tfl::layout_transposes(model, &m),
            "fallback_point": report.fallback_point.as_ref().map(|f| format!("op {} {} (node '{}'): {}", f.index, f.op, f.node, f.reason.clone().unwrap_or_default())),
        });
        Ok(Emitted { files, summary: Some(summary) })
    }
}
