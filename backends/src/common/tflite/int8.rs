//! Full-integer TFLite from the quantizer's QDQ model (the TFLite int8 spec: int8 activations per tensor
//! with a zero point, int8 weights symmetric per output channel, int32 biases with scale s_in·s_w).
//!
//! The QDQ graph already carries every decision: a QuantizeLinear on activation x gives x's scale and zero
//! point, so x's TFLite tensor is int8 and the Q/DQ pair disappears (the DQ output is an alias of x);
//! weights and biases are the int8/int32 constants behind their DequantizeLinear. A node becomes an integer
//! op when TFLite has an int8 kernel for it and all its data inputs and outputs are quantized; any other
//! node runs in float between a DEQUANTIZE and a QUANTIZE inserted on demand (mixed precision carries over
//! that way). Ops whose int8 kernels require it get their required output parameters: pass-through ops
//! (reshape, transpose, max-pool, pad, split, slice, gather) keep the input's, LOGISTIC and SOFTMAX use
//! (1/256, −128), TANH (1/128, 0).
use kiln_compiler::ir::{Act, BinOp, DType, NodeId, Op, TensorData, ValueId};
use kiln_compiler::Result;

use super::lower::Lowering;
use super::model::{Quant, TensorType};

pub use super::model::QParams;

fn quant(scale: f32, zp: i64) -> Quant {
    Quant { scale: vec![scale], zero_point: vec![zp], axis: 0 }
}

/// Record activation parameters from every activation QuantizeLinear and alias the DequantizeLinear
/// outputs to the quantized value; those Q/DQ nodes are skipped.
pub fn prepass(l: &mut Lowering) -> Result<()> {
    let g = l.g;
    for id in g.nodes.node_indices() {
        let n = &g.nodes[id];
        if !matches!(n.op, Op::QuantizeLinear { .. }) {
            continue;
        }
        let (Some(x), Some(q), Some(s)) = (n.input(0), n.output(0), n.input(1)) else { continue };
        if g.const_data(x).is_some() {
            continue;
        }
        let scale = g.const_data(s).and_then(|d| d.to_f32_vec()).unwrap_or_default();
        let zd = n.input(2).and_then(|z| g.const_data(z));
        let zp = zd.and_then(|d| d.to_i64_vec()).unwrap_or_else(|| vec![0]);
        let dtype = if zd.map(|d| d.dtype) == Some(DType::U8) {
            TensorType::UINT8
        } else {
            TensorType::INT8
        };
        if scale.len() != 1 || zp.len() != 1 {
            continue;
        }
        let consumers = g.consumers(q);
        if consumers.iter().any(|(c, _)| !matches!(g.nodes[*c].op, Op::DequantizeLinear { .. }))
            || g.is_output(q)
        {
            continue;
        }
        l.qp.insert(x, (quant(scale[0], zp[0]), dtype));
        l.skip.insert(id);
        for (c, _) in consumers {
            if let Some(d) = g.nodes[c].output(0) {
                l.aliases.insert(d, x);
            }
            l.skip.insert(c);
        }
    }
    Ok(())
}

/// The constant of `dtype` behind the DequantizeLinear producing `v`, its scales, and its zero points.
fn dq_const<'g>(
    l: &Lowering<'g>,
    v: ValueId,
    dtype: DType,
) -> Option<(&'g TensorData, Vec<f32>, Vec<i64>)> {
    let (p, _) = l.g.value(v).producer?;
    let n = l.g.node(p)?;
    if !matches!(n.op, Op::DequantizeLinear { .. }) {
        return None;
    }
    let d = l.g.const_data(n.input(0)?).filter(|d| d.dtype == dtype)?;
    let zp =
        n.input(2).and_then(|z| l.g.const_data(z)).and_then(|z| z.to_i64_vec()).unwrap_or_default();
    Some((d, l.g.const_data(n.input(1)?)?.to_f32_vec()?, zp))
}

/// int8 weights (zero point 0) behind a DequantizeLinear: (dims, values, per-channel scales).
pub fn weight(l: &Lowering, w: ValueId) -> Option<(Vec<usize>, Vec<i8>, Vec<f32>)> {
    let (d, scales, zp) = dq_const(l, w, DType::I8)?;
    zp.iter().all(|z| *z == 0).then_some(())?;
    Some((
        d.dims.iter().map(|x| *x as usize).collect(),
        d.bytes().iter().map(|b| *b as i8).collect(),
        scales,
    ))
}

/// int32 bias behind a DequantizeLinear: (values, scales).
pub fn bias(l: &Lowering, b: ValueId) -> Option<(Vec<i32>, Vec<f32>)> {
    let (d, scales, _) = dq_const(l, b, DType::I32)?;
    Some((
        d.bytes().chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        scales,
    ))
}

/// TFLite can fuse this activation into the op (RELU, RELU6, RELU_N1_TO_1, TANH).
fn fusable(a: &Option<Act>) -> bool {
    super::act::fusable(a).is_some()
}

/// Activations with an int8 kernel as a standalone op.
fn int8_act(a: &Act) -> bool {
    fusable(&Some(a.clone()))
        || matches!(
            a,
            Act::HardSwish | Act::Sigmoid | Act::Tanh | Act::LeakyRelu { .. } | Act::Silu
        )
}

/// Fixed output parameters an int8 kernel requires, if any.
fn fixed_output(a: &Act) -> Option<Quant> {
    match a {
        Act::Sigmoid => Some(quant(1.0 / 256.0, -128)),
        Act::Tanh => Some(quant(1.0 / 128.0, 0)),
        _ => None,
    }
}

/// Decide whether node `id` runs as integer ops; when it does, settle its outputs' parameters.
pub fn decide(l: &mut Lowering, id: NodeId) -> bool {
    let n = l.g.nodes[id].clone();
    let data: Vec<ValueId> =
        n.inputs.iter().flatten().map(|v| l.resolve(*v)).filter(|v| !l.is_const(*v)).collect();
    let outs: Vec<ValueId> = n.outputs.iter().flatten().map(|v| l.resolve(*v)).collect();
    if data.is_empty()
        || !data.iter().all(|v| l.qp.contains_key(v))
        || !outs.iter().all(|v| l.qp.contains_key(v))
    {
        return false;
    }
    let pass_through = n.op.moves_values();
    let ok = match &n.op {
        Op::Conv { .. } => n.input(1).is_some_and(|w| weight(l, w).is_some()),
        Op::Gemm { alpha, beta, trans_a, .. } => {
            alpha.unwrap_or(1.0) == 1.0
                && beta.unwrap_or(1.0) == 1.0
                && trans_a.unwrap_or(0) == 0
                && n.input(1).is_some_and(|w| weight(l, w).is_some())
        }
        Op::MatMul => n.input(1).is_some_and(|w| weight(l, w).is_some()),
        Op::Binary(b) => matches!(b, BinOp::Add | BinOp::Sub | BinOp::Mul),
        Op::GlobalAveragePool | Op::Pool { .. } | Op::Concat { .. } | Op::Softmax { .. } => true,
        Op::Act(a) => int8_act(a),
        _ if pass_through => true,
        Op::Generic { op_type, .. } => op_type == "ReduceMean",
        _ => false,
    };
    if !ok {
        return false;
    }
    // The quantizer unfuses what TFLite cannot fuse (so the tensor before it has a range); a node still
    // carrying such an activation has no range for it and runs in float.
    if !fusable(&n.act) {
        return false;
    }
    let dtype = l.qp[&outs[0]].1;
    if pass_through {
        let p = l.qp[&data[0]].clone();
        for o in &outs {
            l.qp.insert(*o, p.clone());
        }
    }
    let fixed = match (&n.op, &n.act) {
        (Op::Softmax { .. }, _) => Some(quant(1.0 / 256.0, -128)),
        (_, Some(a)) => fixed_output(a),
        (Op::Act(a), None) => fixed_output(a),
        _ => None,
    };
    let needs_fixed = fixed.is_some();
    if let (Some(q), TensorType::INT8) = (fixed, dtype) {
        l.qp.insert(outs[0], (q, dtype));
    } else if needs_fixed {
        return false;
    }
    true
}
