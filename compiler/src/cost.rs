//! Estimated latency on a device kiln cannot run on: a roofline per layer from a device profile's `cost:`
//! section (configs/devices/*.yaml).
//!
//! Each node costs the larger of its compute time (MACs over the device's peak MAC rate for the
//! precision, scaled by the efficiency its kind of layer reaches) and its memory time (the bytes it reads
//! and writes over the memory bandwidth), plus a fixed dispatch overhead. Kinds: dense convolution,
//! depthwise convolution (group = channels), fully connected / MatMul, and everything else (element-wise,
//! pooling, data movement: memory-bound). Activations fused into a layer cost nothing extra, as in
//! TFLite's and TensorRT's kernels. The efficiencies and the overhead are fitted to published latencies of
//! other models on the device (the profile names them), never to the model being estimated; the result is
//! always reported as an estimate, beside a measurement where the artifact runs on this host.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ir::{DType, Model, Op};

/// A device profile's `cost:` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CostModel {
    /// Threads (cores) the published figures and the estimate use.
    pub threads: u32,
    /// Memory bandwidth, GB/s.
    pub bandwidth_gbs: f64,
    /// Per-node dispatch overhead, microseconds.
    pub overhead_us: f64,
    /// Peak rate and fitted efficiencies by precision (`fp32`, `fp16`, `int8`).
    pub precisions: BTreeMap<String, Rates>,
    /// What the efficiencies and overhead were fitted on (published figures of other models).
    pub fitted_on: Vec<String>,
}

/// One precision's peak and the fraction of it each kind of layer reaches.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    /// Peak multiply-accumulates per second, in billions, with `threads` cores: cores × clock × MACs per
    /// cycle per core.
    pub peak_gmacs: f64,
    pub conv: f64,
    pub depthwise: f64,
    pub fully_connected: f64,
}

/// One node's estimate.
#[derive(Clone, Debug, Serialize)]
pub struct LayerCost {
    pub name: String,
    pub op: String,
    pub kind: &'static str,
    pub macs: u64,
    pub bytes: u64,
    pub ms: f64,
    /// `compute` or `memory`: which side of the roofline set the time.
    pub bound: &'static str,
}

/// A model's estimate on a device.
#[derive(Clone, Debug, Serialize)]
pub struct Estimate {
    pub device: String,
    pub precision: String,
    pub threads: u32,
    pub layers: Vec<LayerCost>,
    pub total_ms: f64,
}

/// Device profiles with a cost model shipped with kiln (name, YAML text), for `kiln profile --device`
/// and the `device:` key of `tflite` targets.
pub const DEVICES: &[(&str, &str)] = &[
    ("pixel-3", include_str!("../../configs/devices/pixel-3.yaml")),
    ("pixel-3a", include_str!("../../configs/devices/pixel-3a.yaml")),
    ("jetson-agx-xavier", include_str!("../../configs/devices/jetson-agx-xavier.yaml")),
];

/// The cost model of the device `device` names: a shipped profile, or a path to a `.yaml` profile.
pub fn device(device: &str) -> Result<CostModel> {
    let text = match DEVICES.iter().find(|(n, _)| *n == device) {
        Some((_, t)) => (*t).to_string(),
        None => {
            let path = std::path::Path::new(device);
            if !path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let names: Vec<&str> = DEVICES.iter().map(|(n, _)| *n).collect();
                return Err(Error::invalid(format!(
                    "unknown device '{device}' for latency estimates (known: {}, or a path to a device \
                     profile .yaml with a `cost:` section)",
                    names.join(", ")
                )));
            }
            std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?
        }
    };
    CostModel::from_profile(&text)?.ok_or_else(|| {
        Error::invalid(format!("device profile '{device}' has no `cost:` section to estimate with"))
    })
}

impl CostModel {
    /// The `cost:` section of a device profile's YAML text, if it has one.
    pub fn from_profile(yaml: &str) -> Result<Option<Self>> {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml)
            .map_err(|e| Error::invalid(format!("device profile: {e}")))?;
        match v.get("cost") {
            None => Ok(None),
            Some(c) => serde_yaml::from_value(c.clone())
                .map(Some)
                .map_err(|e| Error::invalid(format!("device profile `cost:`: {e}"))),
        }
    }

    fn rates(&self, precision: &str) -> Result<&Rates> {
        let r = self.precisions.get(precision).ok_or_else(|| {
            Error::invalid(format!(
                "the device's cost model has no figures for precision '{precision}' (it has: {})",
                self.precisions.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let ok = |x: f64| x.is_finite() && x > 0.0;
        if !(ok(r.peak_gmacs)
            && ok(self.bandwidth_gbs)
            && ok(r.conv)
            && ok(r.depthwise)
            && ok(r.fully_connected)
            && self.overhead_us.is_finite()
            && self.overhead_us >= 0.0)
        {
            return Err(Error::invalid(
                "the device's cost model needs positive peak, bandwidth and efficiencies"
                    .to_string(),
            ));
        }
        Ok(r)
    }
}

/// Bytes per element of activations and weights at `precision` (float tensors take the precision's size;
/// integer tensors such as indices keep theirs).
fn elem_bytes(d: DType, precision: &str) -> u64 {
    let float = match precision {
        "int8" => 1,
        "fp16" => 2,
        _ => 4,
    };
    match d {
        DType::F32 | DType::F16 | DType::F64 => float,
        DType::I8 | DType::U8 | DType::Bool => 1,
        DType::I16 | DType::U16 => 2,
        DType::I32 | DType::U32 => 4,
        _ => 8,
    }
}

/// Is `n` a ReLU/ReLU6-style activation whose input only it reads, written by a conv, fully connected or
/// element-wise add (what TFLite and TensorRT fuse)?
fn fused_activation(g: &crate::ir::Graph, n: &crate::ir::Node) -> bool {
    use crate::ir::{Act, BinOp};
    let fusable = matches!(&n.op, Op::Act(Act::Relu) | Op::Act(Act::Clip { .. }));
    let Some(x) = n.input(0).filter(|_| fusable) else { return false };
    let Some((p, _)) = g.value(x).producer else { return false };
    let producer_fuses = g.node(p).is_some_and(|p| {
        p.act.is_none()
            && matches!(
                p.op,
                Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul | Op::Binary(BinOp::Add)
            )
    });
    producer_fuses && g.consumers(x).len() == 1 && !g.is_output(x)
}

/// Estimate `model` (shapes inferred, static) on the device `device` described by `cost`, at `precision`.
pub fn estimate(
    model: &Model,
    device: &str,
    cost: &CostModel,
    precision: &str,
) -> Result<Estimate> {
    let rates = cost.rates(precision)?;
    let peak = rates.peak_gmacs * 1e9;
    let bw = cost.bandwidth_gbs * 1e9;
    let g = &model.graph;
    let mut layers = Vec::new();
    for id in g.topo_order()? {
        let n = &g.nodes[id];
        // Constants folded away and Q/DQ pairs (fused into integer kernels) are not layers of the
        // deployed model.
        if matches!(n.op, Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. }) {
            continue;
        }
        // An activation the runtime fuses into the layer before it (TFLite's and TensorRT's
        // Conv/FullyConnected/Add with ReLU, ReLU6, ...): no layer of its own.
        if fused_activation(g, n) {
            continue;
        }
        let macs = crate::stats::node_macs(g, n).unwrap_or(0);
        let bytes: u64 = n
            .inputs
            .iter()
            .chain(n.outputs.iter())
            .flatten()
            .filter_map(|v| {
                let val = g.value(*v);
                let dims = val.static_shape()?;
                let count = dims.iter().try_fold(1u64, |a, d| a.checked_mul((*d).max(0) as u64))?;
                Some(count.saturating_mul(elem_bytes(val.dtype, precision)))
            })
            .sum();
        let (kind, eff) = match &n.op {
            Op::Conv { group, .. } => {
                let group = group.unwrap_or(1);
                let out_c = n
                    .output(0)
                    .and_then(|v| g.value(v).static_shape())
                    .and_then(|s| s.get(1).copied());
                if group > 1 && Some(group) == out_c {
                    ("depthwise", rates.depthwise)
                } else {
                    ("conv", rates.conv)
                }
            }
            Op::Gemm { .. } | Op::MatMul => ("fully_connected", rates.fully_connected),
            _ => ("other", 1.0),
        };
        let compute = macs as f64 / (peak * eff);
        let memory = bytes as f64 / bw;
        let bound = if compute >= memory { "compute" } else { "memory" };
        let ms = (compute.max(memory) + cost.overhead_us * 1e-6) * 1e3;
        layers.push(LayerCost {
            name: n.name.clone(),
            op: n.op.op_type().to_string(),
            kind,
            macs,
            bytes,
            ms,
            bound,
        });
    }
    let total_ms = layers.iter().map(|l| l.ms).sum();
    Ok(Estimate {
        device: device.to_string(),
        precision: precision.to_string(),
        threads: cost.threads,
        layers,
        total_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> CostModel {
        let r = Rates { peak_gmacs: 10.0, conv: 0.5, depthwise: 0.25, fully_connected: 1.0 };
        CostModel {
            threads: 1,
            bandwidth_gbs: 10.0,
            overhead_us: 0.0,
            precisions: [("fp32".to_string(), r)].into_iter().collect(),
            fitted_on: vec![],
        }
    }

    #[test]
    fn profile_section_parses_and_unknown_keys_are_refused() {
        let y = "name: x\ncost:\n  threads: 4\n  bandwidth_gbs: 29.9\n  overhead_us: 5\n  precisions:\n    fp32: {peak_gmacs: 89.6, conv: 0.4, depthwise: 0.1, fully_connected: 0.3}\n  fitted_on: [a]\n";
        let c = CostModel::from_profile(y).unwrap().unwrap();
        assert_eq!(c.threads, 4);
        assert!(CostModel::from_profile("name: x\n").unwrap().is_none());
        let bad = y.replace("overhead_us", "overhead_ms");
        assert!(CostModel::from_profile(&bad).is_err());
        assert!(model().rates("int8").is_err());
    }

    #[test]
    fn compute_bound_conv_costs_macs_over_effective_peak() {
        use crate::ir::{Dim, Graph, Node, TensorData, Value};
        let mut g = Graph::default();
        let mut x = Value::new("x");
        x.dtype = DType::F32;
        x.shape = Some([1, 64, 32, 32].iter().map(|d| Dim::Known(*d)).collect());
        let x = g.add_value(x).unwrap();
        g.inputs.push(x);
        let w = g
            .add_const("w", TensorData::from_f32(vec![64, 64, 3, 3], &vec![0.0; 64 * 64 * 9]))
            .unwrap();
        let y = g
            .add_temp(
                "y",
                DType::F32,
                Some([1, 64, 32, 32].iter().map(|d| Dim::Known(*d)).collect()),
            )
            .unwrap();
        let op =
            Op::from_onnx("", "Conv", vec![crate::ir::Attribute::ints("pads", vec![1, 1, 1, 1])]);
        g.add_node(Node::new("conv", op, vec![Some(x), Some(w)], vec![Some(y)])).unwrap();
        g.outputs.push(y);
        let m = Model { graph: g, ..Default::default() };
        let e = estimate(&m, "d", &model(), "fp32").unwrap();
        let macs = 64 * 32 * 32 * 64 * 9;
        assert_eq!(e.layers[0].macs, macs);
        assert_eq!(e.layers[0].bound, "compute");
        let want = macs as f64 / (10e9 * 0.5) * 1e3;
        assert!((e.total_ms - want).abs() < 1e-9, "{} vs {want}", e.total_ms);
    }
}
