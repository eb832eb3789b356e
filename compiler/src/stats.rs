//! Model statistics for `kiln inspect` and build reports: op histogram, parameters, MACs per op type.
//!
//! MACs (multiply-accumulates) are counted for the ops that dominate compute: Conv, ConvTranspose, Gemm,
//! MatMul, LSTM/GRU/RNN. They need static shapes, so callers run shape inference (pinning dynamic dims)
//! first; an op whose shapes are still unknown contributes nothing and is listed in `macs_unknown`.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::ir::{Dim, Graph, Model, Op};

/// A tensor signature for reports.
#[derive(Clone, Debug, Serialize)]
pub struct TensorSig {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<String>,
}

/// Statistics of a model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelStats {
    pub inputs: Vec<TensorSig>,
    pub outputs: Vec<TensorSig>,
    pub opsets: BTreeMap<String, i64>,
    pub ir_version: i64,
    pub producer: String,
    pub nodes: usize,
    pub op_types: BTreeMap<String, usize>,
    pub params: u64,
    pub param_bytes: u64,
    pub macs: u64,
    pub macs_by_op: BTreeMap<String, u64>,
    pub macs_unknown: Vec<String>,
    pub dynamic_dims: Vec<String>,
    pub external_data: Vec<String>,
}

fn sig(g: &Graph, v: crate::ir::ValueId) -> TensorSig {
    let val = g.value(v);
    TensorSig {
        name: val.name.clone(),
        dtype: val.dtype.to_string(),
        shape: val
            .shape
            .as_ref()
            .map(|s| s.iter().map(|d| d.to_string()).collect())
            .unwrap_or_default(),
    }
}

fn prod(s: &[i64]) -> u64 {
    s.iter().fold(1u64, |acc, d| acc.saturating_mul((*d).max(0) as u64))
}

/// MACs of one node, when its shapes are known.
pub fn node_macs(g: &Graph, n: &crate::ir::Node) -> Option<u64> {
    let shape = |i: usize| n.input(i).and_then(|v| g.value(v).static_shape());
    let out = |i: usize| n.output(i).and_then(|v| g.value(v).static_shape());
    match &n.op {
        Op::Conv { .. } => {
            let w = shape(1)?;
            Some(prod(&out(0)?).saturating_mul(prod(w.get(1..)?)))
        }
        Op::Gemm { trans_a, .. } => {
            let a = shape(0)?;
            let k = if trans_a.unwrap_or(0) != 0 { *a.first()? } else { *a.get(1)? };
            Some(prod(&out(0)?).saturating_mul(k.max(0) as u64))
        }
        Op::MatMul => {
            let a = shape(0)?;
            Some(prod(&out(0)?).saturating_mul((*a.last()?).max(0) as u64))
        }
        Op::Attention { .. } => {
            let (q, v) = (shape(0)?, shape(2)?);
            let o = out(0)?;
            let scores = prod(o.get(..o.len().checked_sub(1)?)?)
                .saturating_mul((*v.get(v.len().checked_sub(2)?)?).max(0) as u64);
            Some(
                scores
                    .saturating_mul((*q.last()?).max(0) as u64)
                    .saturating_add(prod(&o).saturating_mul((*v.get(v.len() - 2)?).max(0) as u64)),
            )
        }
        Op::Generic { op_type, .. } => match op_type.as_str() {
            "ConvTranspose" => {
                let w = shape(1)?;
                Some(prod(&shape(0)?).saturating_mul(prod(w.get(1..)?)))
            }
            "LSTM" | "GRU" | "RNN" => {
                let gates = match op_type.as_str() {
                    "LSTM" => 4,
                    "GRU" => 3,
                    _ => 1,
                };
                let x = shape(0)?;
                let w = shape(1)?; // [dirs, gates*hidden, input]
                let r = shape(2)?; // [dirs, gates*hidden, hidden]
                let batch_first = n.op.attr_int("layout").unwrap_or(0) == 1;
                let (x0, x1) = (*x.first()?, *x.get(1)?);
                let (seq, batch) = if batch_first { (x1, x0) } else { (x0, x1) };
                let _ = gates;
                Some(prod(&[seq, batch]).saturating_mul(prod(&w).saturating_add(prod(&r))))
            }
            _ => None,
        },
        _ => None,
    }
}

fn is_mac_op(op: &Op) -> bool {
    matches!(op, Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul | Op::Attention { .. })
        || matches!(op, Op::Generic { op_type, .. } if matches!(op_type.as_str(), "ConvTranspose" | "LSTM" | "GRU" | "RNN"))
}

/// Gather statistics. Call after shape inference for MACs.
pub fn model_stats(m: &Model) -> ModelStats {
    let g = &m.graph;
    let mut op_types = BTreeMap::new();
    let mut macs_by_op: BTreeMap<String, u64> = BTreeMap::new();
    let mut macs_unknown = Vec::new();
    for n in g.nodes.node_weights() {
        *op_types.entry(n.op.op_type().to_string()).or_insert(0) += 1;
        if is_mac_op(&n.op) {
            match node_macs(g, n) {
                Some(x) => {
                    let e = macs_by_op.entry(n.op.op_type().to_string()).or_insert(0);
                    *e = e.saturating_add(x);
                }
                None => macs_unknown.push(n.name.clone()),
            }
        }
    }
    let (params, param_bytes) = g.param_stats();
    let mut dynamic_dims = Vec::new();
    for v in g.inputs.iter().chain(g.outputs.iter()) {
        if let Some(s) = &g.value(*v).shape {
            for (i, d) in s.iter().enumerate() {
                if !matches!(d, Dim::Known(_)) {
                    dynamic_dims.push(format!("{}[{i}]={d}", g.value(*v).name));
                }
            }
        }
    }
    ModelStats {
        inputs: g
            .inputs
            .iter()
            .filter(|v| !g.initializers.contains(v))
            .map(|v| sig(g, *v))
            .collect(),
        outputs: g.outputs.iter().map(|v| sig(g, *v)).collect(),
        opsets: m
            .opset_imports
            .iter()
            .map(|(d, v)| (if d.is_empty() { "ai.onnx".to_string() } else { d.clone() }, *v))
            .collect(),
        ir_version: m.ir_version,
        producer: format!("{} {}", m.producer_name, m.producer_version).trim().to_string(),
        nodes: g.node_count(),
        op_types,
        params,
        param_bytes,
        macs: macs_by_op.values().fold(0u64, |a, b| a.saturating_add(*b)),
        macs_by_op,
        macs_unknown,
        dynamic_dims,
        external_data: m.external_files.iter().map(|p| p.display().to_string()).collect(),
    }
}

/// A count for people: 1234567 → "1.23 M".
pub fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// A size for people: 3879731 → "3.7 MiB".
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
