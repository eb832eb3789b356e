//! Q/DQ lowered for evaluation: the same numbers, computed faster.
//!
//! kiln evaluates simulated-quantization models all the time (range refinement, mixed precision, the
//! quality guard, validation). tract runs a QuantizeLinear → DequantizeLinear pair as two element-wise
//! passes with an integer tensor between them, about 3.4 ns per element here; in MobileNetV2's Q/DQ
//! model they are 60 % of the run. Before an [`Evaluator`](super::Evaluator) is prepared:
//! - a DequantizeLinear of constants (weights, biases) becomes its float result, computed as onnxruntime
//!   does: (q − zero point) in float, times the scale;
//! - a per-tensor QuantizeLinear of a float tensor whose integer output only feeds DequantizeLinear nodes
//!   with the same scale and zero point becomes `Div(x, s) → Clip(qmin − z, qmax − z) → Add(M) → Sub(M)`
//!   (the clip as Max then Min before opset 11)
//!   and each DequantizeLinear a `Mul(·, s)`. With M = 1.5·2²³, the add and subtract round to the nearest
//!   integer, ties to even, exactly as QuantizeLinear does (every clipped value is far below 2²²); clipping
//!   before rounding is the same as saturating after it because the bounds are integers; and (q − z)·s is
//!   the clipped integer times s. The result is bit-identical to tract's own Q/DQ (tract also turns the
//!   division into a multiplication by 1/s), about 3.4× faster on those ops.
//!
//! Anything else (per-axis activation quantization, float8/int4 types, an integer tensor read by another op
//! or returned by the graph) is left as written. `kiln profile` measures the model as written
//! ([`Evaluator::as_written`](super::Evaluator::as_written)).
use crate::error::Result;
use crate::ir::{Act, BinOp, DType, Graph, Model, Node, NodeId, Op, TensorData, ValueId};

/// 1.5·2²³: adding it to a float of magnitude below 2²² leaves that float rounded to an integer.
const MAGIC: f32 = 12_582_912.0;

/// Does `m` have a QuantizeLinear or DequantizeLinear node?
pub fn has_qdq(m: &Model) -> bool {
    m.graph
        .nodes
        .node_weights()
        .any(|n| matches!(n.op, Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. }))
}

/// One activation Q/DQ pair [`lower`] replaced: the float tensor it quantized and the constants that now
/// carry its parameters (by value name), so a caller can turn them into inputs and try other parameters
/// without preparing the model again (range refinement does).
#[derive(Clone, Debug)]
pub struct LoweredPair {
    /// The quantized float tensor (the QuantizeLinear's input).
    pub tensor: String,
    /// The scale (read by the Div and by each Mul).
    pub scale: String,
    /// The clip bounds, qmin − zero point and qmax − zero point.
    pub bounds: (String, String),
    /// The integer type's range.
    pub qmin: f64,
    pub qmax: f64,
}

/// `m` with its constant DequantizeLinear folded and its activation Q/DQ pairs in float ops (module doc),
/// and the pairs lowered.
pub fn lower(m: &Model) -> Result<(Model, Vec<LoweredPair>)> {
    let mut m = m.clone();
    let opset = m.opset();
    let g = &mut m.graph;
    let mut changed = fold_constant_dq(g);
    let mut pairs = Vec::new();
    let qs: Vec<NodeId> = g
        .nodes
        .node_indices()
        .filter(|id| matches!(g.nodes[*id].op, Op::QuantizeLinear { .. }))
        .collect();
    for q in qs {
        if let Some(p) = lower_pair(g, q, opset)? {
            pairs.push(p);
            changed = true;
        }
    }
    if changed {
        g.rebuild_edges();
    }
    Ok((m, pairs))
}

/// A scalar (or one-element) constant as f64.
fn scalar(g: &Graph, v: Option<ValueId>) -> Option<f64> {
    let d = g.const_data(v?)?;
    match d.to_f64_vec()?.as_slice() {
        [x] => Some(*x),
        _ => None,
    }
}

/// The integer range of a quantized type, for the types whose values are exact in float32 well below 2²².
fn qrange(d: DType) -> Option<(f64, f64)> {
    match d {
        DType::U8 => Some((0.0, 255.0)),
        DType::I8 => Some((-128.0, 127.0)),
        DType::U16 => Some((0.0, 65535.0)),
        DType::I16 => Some((-32768.0, 32767.0)),
        _ => None,
    }
}

fn lower_pair(g: &mut Graph, qid: NodeId, opset: i64) -> Result<Option<LoweredPair>> {
    let n = &g.nodes[qid];
    let (Some(x), Some(s), Some(qv)) = (n.input(0), n.input(1), n.output(0)) else {
        return Ok(None);
    };
    let zv = n.input(2);
    let Some(scale) = scalar(g, Some(s)) else { return Ok(None) };
    let zero = match zv {
        Some(_) => match scalar(g, zv) {
            Some(z) => z,
            None => return Ok(None),
        },
        None => 0.0,
    };
    let qtype = match zv {
        Some(z) => g.value(z).dtype,
        None => DType::U8,
    };
    let Some((qmin, qmax)) = qrange(qtype) else { return Ok(None) };
    if g.value(x).dtype != DType::F32
        || g.is_output(qv)
        || scale.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        || !scale.is_finite()
    {
        return Ok(None);
    }
    // Every reader of the integer tensor must be a DequantizeLinear with the same parameters.
    let readers = g.consumers(qv);
    if readers.is_empty() {
        return Ok(None);
    }
    let mut dqs = Vec::with_capacity(readers.len());
    for (r, slot) in &readers {
        let d = &g.nodes[*r];
        let same = *slot == 0
            && matches!(d.op, Op::DequantizeLinear { .. })
            && scalar(g, d.input(1)).is_some_and(|v| v as f32 == scale as f32)
            && match d.input(2) {
                Some(_) => scalar(g, d.input(2)) == Some(zero),
                None => zero == 0.0,
            }
            && d.output(0).is_some_and(|y| g.value(y).dtype == DType::F32);
        if !same {
            return Ok(None);
        }
        dqs.push(*r);
    }
    let shape = g.value(x).shape.clone();
    let base = g.nodes[qid].name.clone();
    let f = |v: f64| TensorData::from_f32(vec![], &[v as f32]);
    let s_c = g.add_const(&format!("{base}__fq_scale"), f(scale))?;
    let m_c = g.add_const(&format!("{base}__fq_magic"), f(MAGIC as f64))?;
    let (lo, hi) = (qmin - zero, qmax - zero);
    let div = g.add_temp(&format!("{base}__fq_div"), DType::F32, shape.clone())?;
    let clip = g.add_temp(&format!("{base}__fq_clip"), DType::F32, shape.clone())?;
    let add = g.add_temp(&format!("{base}__fq_add"), DType::F32, shape.clone())?;
    let round = g.add_temp(&format!("{base}__fq_round"), DType::F32, shape.clone())?;
    // One node `op(inputs) → out`, named after the QuantizeLinear.
    let node = |g: &mut Graph, what: &str, op: Op, ins: &[ValueId], out: ValueId| -> Result<()> {
        let name = g.fresh_node_name(&format!("{base}__fq_{what}"));
        g.add_node(Node::new(name, op, ins.iter().map(|v| Some(*v)).collect(), vec![Some(out)]))?;
        Ok(())
    };
    node(g, "div", Op::Binary(BinOp::Div), &[x, s_c], div)?;
    // The clip bounds are constants either way (so callers can make them inputs): Clip's min/max inputs
    // from opset 11, Max then Min before it (Clip took them as attributes).
    let lo_c = g.add_const(&format!("{base}__fq_lo"), f(lo))?;
    let hi_c = g.add_const(&format!("{base}__fq_hi"), f(hi))?;
    let bounds = (g.value(lo_c).name.clone(), g.value(hi_c).name.clone());
    if opset >= 11 {
        node(g, "clip", Op::Act(Act::Clip { min: None, max: None }), &[div, lo_c, hi_c], clip)?;
    } else {
        let low = g.add_temp(&format!("{base}__fq_max"), DType::F32, shape.clone())?;
        node(g, "max", Op::from_onnx("", "Max", vec![]), &[div, lo_c], low)?;
        node(g, "min", Op::from_onnx("", "Min", vec![]), &[low, hi_c], clip)?;
    }
    node(g, "add", Op::Binary(BinOp::Add), &[clip, m_c], add)?;
    node(g, "round", Op::Binary(BinOp::Sub), &[add, m_c], round)?;
    for d in dqs {
        let (dname, y) = (g.nodes[d].name.clone(), g.nodes[d].output(0));
        g.remove_node(d);
        g.add_node(Node::new(
            dname,
            Op::Binary(BinOp::Mul),
            vec![Some(round), Some(s_c)],
            vec![y],
        ))?;
    }
    g.remove_node(qid);
    Ok(Some(LoweredPair {
        tensor: g.value(x).name.clone(),
        scale: g.value(s_c).name.clone(),
        bounds,
        qmin,
        qmax,
    }))
}

/// Replace every DequantizeLinear of constants by its float result; true when one was.
fn fold_constant_dq(g: &mut Graph) -> bool {
    let dqs: Vec<_> = g
        .nodes
        .node_indices()
        .filter(|id| matches!(g.nodes[*id].op, Op::DequantizeLinear { .. }))
        .collect();
    let mut changed = false;
    for id in dqs {
        let n = &g.nodes[id];
        let Op::DequantizeLinear { axis } = n.op else {
            continue;
        };
        let (Some(x), Some(s), Some(y)) = (n.input(0), n.input(1), n.output(0)) else {
            continue;
        };
        let zp = n.input(2);
        let (Some(xd), Some(sd)) = (g.const_data(x), g.const_data(s)) else {
            continue;
        };
        let zd = match zp {
            Some(z) => match g.const_data(z).and_then(|d| d.to_f64_vec()) {
                Some(v) => v,
                None => continue,
            },
            None => vec![0.0],
        };
        let (Some(q), Some(sc)) = (xd.to_f64_vec(), sd.to_f32_vec()) else {
            continue;
        };
        if g.is_output(y) || sc.is_empty() || zd.is_empty() || g.value(y).dtype != DType::F32 {
            continue;
        }
        let dims = xd.dims.clone();
        let rank = dims.len() as i64;
        let ax = axis.unwrap_or(1);
        let ax = if ax < 0 { ax + rank } else { ax };
        let (c, inner) = if sc.len() == 1 {
            (1usize, 1usize)
        } else if (0..rank).contains(&ax) && dims[ax as usize] as usize == sc.len() {
            (sc.len(), dims[ax as usize + 1..].iter().product::<i64>().max(1) as usize)
        } else {
            continue;
        };
        let vals: Vec<f32> = q
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let ch = (i / inner) % c;
                ((*v - zd.get(ch).or(zd.first()).copied().unwrap_or(0.0)) as f32) * sc[ch]
            })
            .collect();
        let data = TensorData::from_f32(dims, &vals);
        let val = g.value_mut(y);
        val.dtype = data.dtype;
        val.data = Some(data);
        val.producer = None;
        if !g.initializers.contains(&y) {
            g.initializers.push(y);
        }
        g.remove_node(id);
        changed = true;
    }
    changed
}
