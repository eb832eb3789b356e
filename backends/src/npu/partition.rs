//! Which ops of a full-int8 TFLite model land on the NPU: each operator is checked against the device
//! profile (op list, element types, ranks, batch, op limits), then grouped into partitions by the device's
//! policy. The report says, per CPU op, why; and what share of the model's MACs the NPU runs.
use std::collections::BTreeMap;

use serde::Serialize;

use super::profile::{Partitioning, Profile};
use crate::common::tflite::model::{
    elements, macs, Code, Fused, Operator, Options, TensorType, TfModel,
};

#[derive(Clone, Debug, Serialize)]
pub struct OpPlacement {
    pub index: usize,
    pub op: String,
    /// The IR node it came from.
    pub node: String,
    pub npu: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub macs: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Partition {
    pub index: usize,
    pub ops: usize,
    pub first: String,
    pub last: String,
    pub macs: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub title: String,
    pub sources: Vec<String>,
    pub partitioning: Partitioning,
    pub ops_total: usize,
    pub ops_on_npu: usize,
    pub partitions: Vec<Partition>,
    /// Ops left to the CPU, with the reason, in execution order.
    pub cpu_ops: Vec<OpPlacement>,
    /// The first op the NPU cannot take, where execution falls back to the CPU.
    pub fallback_point: Option<OpPlacement>,
    pub macs_total: u64,
    pub macs_on_npu: u64,
    pub npu_mac_share: f64,
    pub ops: Vec<OpPlacement>,
}

fn name(c: Code) -> String {
    c.variant_name().unwrap_or("UNKNOWN").to_string()
}

fn dtype_name(t: TensorType) -> String {
    t.variant_name().unwrap_or("UNKNOWN").to_lowercase()
}

/// Why `o` cannot run on the device, if it cannot.
fn unsupported(m: &TfModel, o: &Operator, p: &Profile) -> Option<String> {
    let op = name(o.code);
    let Some(rule) = p.ops.get(&op) else {
        return Some(format!("{op} is not supported by {}", p.name));
    };
    let c = &p.constraints;
    for t in o.inputs.iter().chain(&o.outputs).filter(|t| **t >= 0) {
        let tensor = &m.tensors[*t as usize];
        // Shape operands and int32 biases are parameters, not data.
        if tensor.data.is_some() && matches!(tensor.dtype, TensorType::INT32 | TensorType::INT64) {
            continue;
        }
        let dt = dtype_name(tensor.dtype);
        if !c.dtypes.contains(&dt) {
            return Some(format!(
                "tensor '{}' is {dt}; {} computes in {}",
                tensor.name,
                p.name,
                c.dtypes.join("/")
            ));
        }
        if tensor.data.is_some() {
            continue;
        }
        let rank = tensor.shape.len();
        if c.max_rank.is_some_and(|r| rank > r) {
            return Some(format!(
                "tensor '{}' has rank {rank} (max {})",
                tensor.name,
                c.max_rank.unwrap_or(0)
            ));
        }
        if let Some(n) = c.max_nonunit_dims {
            if tensor.shape.iter().filter(|d| **d > 1).count() > n {
                return Some(format!(
                    "tensor '{}' {:?} has more than {n} dimensions larger than 1",
                    tensor.name, tensor.shape
                ));
            }
        }
        if let (Some(b), true) = (c.batch, rank >= 2) {
            if tensor.shape[0] != b {
                return Some(format!(
                    "tensor '{}' has batch {} (the device needs {b})",
                    tensor.name, tensor.shape[0]
                ));
            }
        }
        if let Some(d) = c.max_dim.filter(|d| tensor.shape.iter().any(|x| x > d)) {
            return Some(format!(
                "tensor '{}' {:?} has a dimension above {d}",
                tensor.name, tensor.shape
            ));
        }
    }
    let (stride, act) = match &o.options {
        Options::Conv { stride, act, .. }
        | Options::Depthwise { stride, act, .. }
        | Options::Pool { stride, act, .. } => (Some(*stride), *act),
        Options::Concat { act, .. }
        | Options::Binary { act }
        | Options::FullyConnected { act, .. } => (None, *act),
        _ => (None, Fused::NONE),
    };
    if rule.fused_activation == Some(false) && act != Fused::NONE {
        return Some(format!("{op} with a fused activation is not supported by {}", p.name));
    }
    if let (Some(max), Some((sh, sw))) = (rule.max_stride, stride) {
        if sh > max || sw > max {
            return Some(format!("stride {sh}x{sw} above {max}"));
        }
    }
    if let Some(max) = rule.max_kernel {
        let k = match (&o.options, o.inputs.get(1)) {
            (Options::Pool { filter, .. }, _) => Some(*filter),
            (Options::Conv { .. } | Options::Depthwise { .. }, Some(f)) if *f >= 0 => {
                m.shape(*f).get(1..3).map(|s| (s[0], s[1]))
            }
            _ => None,
        };
        if let Some((kh, kw)) = k.filter(|(kh, kw)| *kh > max || *kw > max) {
            return Some(format!("kernel {kh}x{kw} above {max}"));
        }
    }
    if rule.grouped == Some(false) && o.code == Code::CONV_2D {
        let last =
            |t: Option<&i32>| t.filter(|t| **t >= 0).and_then(|t| m.shape(*t).last().copied());
        if let (Some(cin), Some(fin)) = (last(o.inputs.first()), last(o.inputs.get(1))) {
            if fin != cin {
                return Some(format!(
                    "grouped convolution ({} groups) is not supported by {}",
                    cin / fin.max(1),
                    p.name
                ));
            }
        }
    }
    let out_shape = o.outputs.first().map(|t| m.shape(*t).to_vec()).unwrap_or_default();
    if let Some(r) = rule.max_output_rank.filter(|r| out_shape.len() > *r) {
        return Some(format!("output rank {} above {r}", out_shape.len()));
    }
    if let Some(n) = rule.max_elements.filter(|n| elements(&out_shape) > *n as u64) {
        return Some(format!("{} elements above {n}", elements(&out_shape)));
    }
    if rule.spatial_only {
        // PAD: paddings [rank, 2]; MEAN: axes. Only H and W (1, 2 of NHWC) may be touched.
        let param =
            o.inputs.get(1).filter(|t| **t >= 0).and_then(|t| m.tensors[*t as usize].data.as_ref());
        let vals: Vec<i32> = param
            .map(|b| {
                b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            })
            .unwrap_or_default();
        let ok = match o.code {
            Code::PAD | Code::PADV2 => {
                vals.len() == 8 && vals[0] == 0 && vals[1] == 0 && vals[6] == 0 && vals[7] == 0
            }
            Code::MEAN => !vals.is_empty() && vals.iter().all(|a| *a == 1 || *a == 2),
            _ => true,
        };
        if !ok {
            return Some(format!("{op} along a dimension other than height/width"));
        }
    }
    None
}

/// Place every op and group the NPU ones into partitions.
pub fn partition(m: &TfModel, p: &Profile) -> Report {
    let mut ops: Vec<OpPlacement> = m
        .operators
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let reason = unsupported(m, o, p);
            OpPlacement {
                index: i,
                op: name(o.code),
                node: o.origin.clone(),
                npu: reason.is_none(),
                reason,
                macs: macs(m, o),
            }
        })
        .collect();
    let fallback_point = ops.iter().find(|o| !o.npu).cloned();
    if p.partitioning == Partitioning::FirstUnsupportedStops {
        if let Some(first) = &fallback_point {
            let why = format!(
                "after the first unsupported op ({} of node '{}'): {} partitions once",
                first.op, first.node, p.name
            );
            for o in ops.iter_mut().skip(first.index + 1).filter(|o| o.npu) {
                o.npu = false;
                o.reason = Some(why.clone());
            }
        }
    }
    // Partitions: connected components of NPU ops (a tensor from one NPU op to another links them).
    let mut parent: Vec<usize> = (0..ops.len()).collect();
    fn find(p: &mut [usize], x: usize) -> usize {
        let mut r = x;
        while p[r] != r {
            r = p[r];
        }
        let mut c = x;
        while p[c] != r {
            let n = p[c];
            p[c] = r;
            c = n;
        }
        r
    }
    let mut producer: BTreeMap<i32, usize> = BTreeMap::new();
    for (i, o) in m.operators.iter().enumerate() {
        for t in &o.outputs {
            producer.insert(*t, i);
        }
    }
    for (i, o) in m.operators.iter().enumerate() {
        if !ops[i].npu {
            continue;
        }
        for t in &o.inputs {
            if let Some(&j) = producer.get(t) {
                if ops[j].npu {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                    parent[a] = b;
                }
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, o) in ops.iter().enumerate() {
        if o.npu {
            let r = find(&mut parent, i);
            groups.entry(r).or_default().push(i);
        }
    }
    let mut parts: Vec<Vec<usize>> = groups.into_values().collect();
    parts.sort_by_key(|g| g[0]);
    let partitions = parts
        .iter()
        .enumerate()
        .map(|(k, g)| Partition {
            index: k,
            ops: g.len(),
            first: format!("{} ({})", ops[g[0]].op, ops[g[0]].node),
            last: format!("{} ({})", ops[g[g.len() - 1]].op, ops[g[g.len() - 1]].node),
            macs: g.iter().map(|i| ops[*i].macs).sum(),
        })
        .collect();
    let macs_total: u64 = ops.iter().map(|o| o.macs).sum();
    let macs_on_npu: u64 = ops.iter().filter(|o| o.npu).map(|o| o.macs).sum();
    Report {
        device: p.name.clone(),
        title: p.title.clone(),
        sources: p.sources.clone(),
        partitioning: p.partitioning,
        ops_total: ops.len(),
        ops_on_npu: ops.iter().filter(|o| o.npu).count(),
        partitions,
        cpu_ops: ops.iter().filter(|o| !o.npu).cloned().collect(),
        fallback_point,
        macs_total,
        macs_on_npu,
        npu_mac_share: if macs_total > 0 { macs_on_npu as f64 / macs_total as f64 } else { 0.0 },
        ops,
    }
}

/// The report as text for people.
pub fn text(r: &Report) -> String {
    let mut s = format!("{} — {}\n", r.device, r.title);
    s += &format!(
        "ops on the NPU: {} of {}, in {} partition(s); MACs on the NPU: {:.1}% ({} of {})\n",
        r.ops_on_npu,
        r.ops_total,
        r.partitions.len(),
        100.0 * r.npu_mac_share,
        r.macs_on_npu,
        r.macs_total
    );
    for p in &r.partitions {
        s += &format!(
            "  partition {}: {} ops, {} MACs, from {} to {}\n",
            p.index, p.ops, p.macs, p.first, p.last
        );
    }
    match &r.fallback_point {
        Some(f) => {
            s += &format!(
                "CPU takes over at op {} {} (node '{}'): {}\n",
                f.index,
                f.op,
                f.node,
                f.reason.clone().unwrap_or_default()
            )
        }
        None => s += "no CPU fallback: every op runs on the NPU\n",
    }
    for o in &r.cpu_ops {
        s += &format!(
            "  cpu: op {} {} (node '{}'): {}\n",
            o.index,
            o.op,
            o.node,
            o.reason.clone().unwrap_or_default()
        );
    }
    s += &format!("sources: {}\n", r.sources.join(", "));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::tflite::model::TfModel;

    fn chain(codes: &[Code]) -> TfModel {
        let mut m = TfModel::default();
        let mut prev = m.tensor("in", vec![1, 8, 8, 4], TensorType::INT8);
        m.inputs.push(prev);
        for (i, c) in codes.iter().enumerate() {
            let out = m.tensor(&format!("t{i}"), vec![1, 8, 8, 4], TensorType::INT8);
            m.op(*c, vec![prev], vec![out], Options::None, &format!("node{i}"));
            prev = out;
        }
        m.outputs.push(prev);
        m
    }

    #[test]
    fn edgetpu_stops_at_the_first_unsupported_op_nnapi_does_not() {
        let m = chain(&[Code::RELU, Code::LEAKY_RELU, Code::RELU, Code::RELU]);
        let tpu = partition(&m, &super::super::profile::load("edgetpu").expect("profile"));
        assert_eq!(tpu.ops_on_npu, 1);
        assert_eq!(tpu.fallback_point.as_ref().map(|f| f.node.as_str()), Some("node1"));
        assert!(tpu.ops[3].reason.as_deref().is_some_and(|r| r.contains("partitions once")));
        let mut m2 = chain(&[Code::RELU, Code::GELU, Code::RELU, Code::RELU]);
        m2.tensors[0].dtype = TensorType::INT8;
        let nnapi = partition(&m2, &super::super::profile::load("nnapi").expect("profile"));
        // GELU is not in NNAPI: two partitions around it.
        assert_eq!((nnapi.ops_on_npu, nnapi.partitions.len()), (3, 2));
    }

    #[test]
    fn float_tensors_stay_on_the_cpu_of_an_int8_device() {
        let mut m = chain(&[Code::RELU]);
        m.tensors[1].dtype = TensorType::FLOAT32;
        let r = partition(&m, &super::super::profile::load("edgetpu").expect("profile"));
        assert_eq!(r.ops_on_npu, 0);
        assert!(r.cpu_ops[0].reason.as_deref().is_some_and(|s| s.contains("float32")));
    }
}
