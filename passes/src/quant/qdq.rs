//! Post-training quantization to QDQ form: weights become int8 constants (per output channel or per
//! tensor, symmetric, range [−127, 127]) behind DequantizeLinear; biases become int32 with scale
//! s_in·s_w; activations get QuantizeLinear→DequantizeLinear pairs with per-tensor scales derived from
//! calibration statistics (asymmetric int8 by default, or uint8).
//!
//! Guarantees: a model that already carries QuantizeLinear (QAT export) keeps its learned scales and gets
//! nothing added; a value is never quantized twice; nodes named in `keep_float` (mixed precision) keep
//! float weights and values named in `keep_float_values` get no Q/DQ; graph outputs stay float; transcendental and index ops are not fed
//! quantized inputs.
use std::collections::{BTreeMap, HashSet};

use kiln_compiler::backend::QdqPlacement;
use kiln_compiler::calib::Calibration;
use kiln_compiler::ir::{DType, Graph, Model, Node, NodeId, Op, TensorData, ValueId};
use kiln_compiler::{Error, Result};

use super::params::{threshold, Fallback, Method};

/// What to quantize and how.
#[derive(Clone, Debug)]
pub struct QdqOptions {
    pub per_channel: bool,
    /// `I8` (asymmetric int8) or `U8`.
    pub activations: DType,
    pub method: Method,
    /// Node names whose weights stay float (their inputs follow `keep_float_values`).
    pub keep_float: HashSet<String>,
    /// Activation values left unquantized (no Q/DQ at all).
    pub keep_float_values: HashSet<String>,
    /// Full-integer (TFLite) rules: also quantize graph outputs (Q→DQ before the output, name kept), and use
    /// the fixed output parameters TFLite's int8 kernels require (LOGISTIC, SOFTMAX, TANH).
    pub quantize_outputs: bool,
    /// Value name → factor on its calibrated range (ranges.rs: loss-aware refinement of residual streams).
    pub range_scale: std::collections::BTreeMap<String, f32>,
    /// Value name → range method replacing `method` for that tensor (the quality guard's per-tensor repair).
    pub method_override: BTreeMap<String, Method>,
    /// Largest |q| of a weight: 127, or 64 for `reduce_range` (7-bit weights, as onnxruntime's quantizer
    /// offers): x86 int8 kernels without VNNI add pairs of u8×s8 products in 16 bits, and 2·255·64 fits
    /// where 2·255·127 saturates.
    pub weight_qmax: i32,
    /// Symmetric int8 activations: zero point 0, scale = max(|lo|, |hi|) / 127 (TensorRT).
    pub symmetric: bool,
    /// Where activation Q/DQ go.
    pub placement: QdqPlacement,
    /// Biases as int32 (s_in·s_w); otherwise they stay float.
    pub int32_bias: bool,
    /// Concat inputs/output and the values an op only moves share one scale (the largest of theirs).
    pub shared_scales: bool,
}

impl Default for QdqOptions {
    fn default() -> Self {
        QdqOptions {
            per_channel: true,
            activations: DType::I8,
            method: Method::MinMax,
            keep_float: HashSet::new(),
            keep_float_values: HashSet::new(),
            quantize_outputs: false,
            range_scale: Default::default(),
            method_override: BTreeMap::new(),
            weight_qmax: 127,
            symmetric: false,
            placement: QdqPlacement::Activations,
            int32_bias: true,
            shared_scales: false,
        }
    }
}

/// What the pass did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct QdqSummary {
    pub qat_kept: bool,
    pub weights: usize,
    pub biases: usize,
    pub activations: usize,
    pub kept_float: Vec<String>,
    /// Dead (all-zero-weight) channels whose constant was moved onto the quantization grid.
    pub snapped_channels: usize,
    /// Activation scale and zero point by value name.
    pub activation_params: BTreeMap<String, (f32, i64)>,
    /// Tensors whose searched range (entropy, MSE) was not trusted, by value name (params.rs).
    pub range_fallbacks: BTreeMap<String, super::params::Fallback>,
    /// Symmetric activations: amax (127·scale) of every activation with calibration statistics, Q/DQ
    /// placed on it or not, by value name.
    pub activation_amax: BTreeMap<String, f32>,
}

const FLOAT_ONLY: &[&str] = &[
    "Shape",
    "Size",
    "LSTM",
    "GRU",
    "RNN",
    "LayerNormalization",
    "Softmax",
    "Erf",
    "Exp",
    "Log",
    "Pow",
    "Sqrt",
    "Div",
    "Range",
    "Cast",
    "QuantizeLinear",
    "DequantizeLinear",
    "Gelu",
    "Tanh",
    "Reciprocal",
    "ReduceMax",
    "ReduceMin",
];

/// The range method for value `name`: its override, or the options' method.
pub fn method_for(opts: &QdqOptions, name: &str) -> Method {
    opts.method_override.get(name).copied().unwrap_or(opts.method)
}

/// Scale and zero point of value `name`, and the fallback its range method took (params.rs).
fn act_params(
    c: &Calibration,
    name: &str,
    opts: &QdqOptions,
) -> Option<((f32, i64), Option<Fallback>)> {
    let s = c.stats.get(name)?;
    let (t, fallback) = threshold(s, method_for(opts, name));
    let k = opts.range_scale.get(name).copied().unwrap_or(1.0);
    let lo = s.min.max(-t).min(0.0) * k;
    let hi = s.max.min(t).max(0.0) * k;
    if opts.symmetric {
        let amax = hi.max(-lo);
        return Some((((amax / 127.0).max(1e-8), 0), fallback));
    }
    let (qmin, qmax) =
        if opts.activations == DType::U8 { (0.0f32, 255.0f32) } else { (-128.0, 127.0) };
    let scale = ((hi - lo) / (qmax - qmin)).max(1e-8);
    let zp = (qmin - lo / scale).round().clamp(qmin, qmax) as i64;
    Some(((scale, zp), fallback))
}

fn zp_tensor(dt: DType, zp: i64, n: Option<usize>) -> TensorData {
    let dims = n.map(|n| vec![n as i64]).unwrap_or_default();
    let count = n.unwrap_or(1);
    let b = match dt {
        DType::U8 => vec![zp as u8; count],
        _ => vec![zp as i8 as u8; count],
    };
    TensorData::from_bytes(dt, dims, b)
}

fn scale_tensor(s: &[f32], per_axis: bool) -> TensorData {
    if per_axis {
        TensorData::from_f32(vec![s.len() as i64], s)
    } else {
        TensorData::from_f32(vec![], &s[..1])
    }
}

/// DequantizeLinear(q, scale, zp[, axis]) as a new node; returns the float output value.
fn add_dq(
    g: &mut Graph,
    base: &str,
    q: ValueId,
    scale: TensorData,
    zp: TensorData,
    axis: Option<i64>,
    dims: Vec<i64>,
) -> Result<ValueId> {
    let s = g.add_const(&format!("{base}_scale"), scale)?;
    let z = g.add_const(&format!("{base}_zero_point"), zp)?;
    let out = g.add_temp(
        &format!("{base}_dequantized"),
        DType::F32,
        Some(dims.iter().map(|d| kiln_compiler::ir::Dim::Known(*d)).collect()),
    )?;
    let name = g.fresh_node_name(&format!("{base}_DequantizeLinear"));
    g.add_node(Node::new(
        name,
        Op::DequantizeLinear { axis },
        vec![Some(q), Some(s), Some(z)],
        vec![Some(out)],
    ))?;
    Ok(out)
}

/// Quantize weight input `slot` of node `id` along `axis` (None: per tensor). Returns the weight scales.
fn quantize_weight(
    g: &mut Graph,
    id: NodeId,
    slot: usize,
    axis: Option<usize>,
    qmax: i32,
    floor: &dyn Fn(usize) -> f32,
) -> Result<Option<Vec<f32>>> {
    let Some(w) = g.nodes[id].input(slot) else { return Ok(None) };
    let Some(d) = g.const_data(w).filter(|d| d.dtype == DType::F32).cloned() else {
        return Ok(None);
    };
    let Some(vals) = d.to_f32_vec() else { return Ok(None) };
    let dims = d.dims.clone();
    let (channels, chan_of): (usize, Box<dyn Fn(usize) -> usize>) = match axis {
        Some(a) if a < dims.len() => {
            let c = dims[a] as usize;
            let inner: usize = dims[a + 1..].iter().product::<i64>() as usize;
            (c, Box::new(move |i| (i / inner.max(1)) % c.max(1)))
        }
        _ => (1, Box::new(|_| 0)),
    };
    let mut amax = vec![0f32; channels];
    for (i, v) in vals.iter().enumerate() {
        let c = chan_of(i);
        amax[c] = amax[c].max(v.abs());
    }
    // A channel the pruner zeroed (or nearly) gets a scale no smaller than its bias needs: a tiny weight
    // scale makes s_in·s_w tiny and the int32 bias overflow (the failure mode of pruned models).
    let scales: Vec<f32> = amax
        .iter()
        .enumerate()
        .map(|(c, a)| {
            let s = if *a > 1e-30 { a / qmax as f32 } else { 0.0 };
            let s = s.max(floor(c));
            if s > 0.0 {
                s
            } else {
                1.0
            }
        })
        .collect();
    let q: Vec<u8> = vals
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (v / scales[chan_of(i)]).round().clamp(-(qmax as f32), qmax as f32) as i8 as u8
        })
        .collect();
    let base = g.value(w).name.clone();
    let qv = g.add_const(
        &format!("{base}_quantized"),
        TensorData::from_bytes(DType::I8, dims.clone(), q),
    )?;
    let per_axis = axis.is_some();
    let out = add_dq(
        g,
        &base,
        qv,
        scale_tensor(&scales, per_axis),
        zp_tensor(DType::I8, 0, per_axis.then_some(channels)),
        axis.map(|a| a as i64),
        dims,
    )?;
    if let Some(n) = g.node_mut(id) {
        n.inputs[slot] = Some(out);
    }
    Ok(Some(scales))
}

/// Bias as int32 with scale s_in·s_w[c].
fn quantize_bias(g: &mut Graph, id: NodeId, s_in: f32, s_w: &[f32]) -> Result<bool> {
    let Some(b) = g.nodes[id].input(2) else { return Ok(false) };
    let Some(d) = g.const_data(b).filter(|d| d.dtype == DType::F32 && d.dims.len() == 1).cloned()
    else {
        return Ok(false);
    };
    let Some(vals) = d.to_f32_vec() else { return Ok(false) };
    let n = vals.len();
    let scales: Vec<f32> = (0..n)
        .map(|i| s_in * if s_w.len() == 1 { s_w[0] } else { s_w.get(i).copied().unwrap_or(s_w[0]) })
        .collect();
    if scales.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
        return Ok(false);
    }
    let q: Vec<u8> = vals
        .iter()
        .zip(&scales)
        .flat_map(|(v, s)| {
            ((v / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32).to_le_bytes()
        })
        .collect();
    let base = g.value(b).name.clone();
    let qv = g.add_const(
        &format!("{base}_quantized"),
        TensorData::from_bytes(DType::I32, vec![n as i64], q),
    )?;
    let zp = TensorData::from_bytes(DType::I32, vec![n as i64], vec![0; 4 * n]);
    let out = add_dq(
        g,
        &base,
        qv,
        TensorData::from_f32(vec![n as i64], &scales),
        zp,
        Some(0),
        vec![n as i64],
    )?;
    if let Some(node) = g.node_mut(id) {
        node.inputs[2] = Some(out);
    }
    Ok(true)
}

/// Graph output `v` becomes v → Q → DQ → output (the DQ output takes the output's name).
fn output_qdq(g: &mut Graph, v: ValueId, scale: f32, zp: i64, dt: DType) -> Result<()> {
    let name = g.value(v).name.clone();
    let shape = g.value(v).shape.clone();
    let inner = g.fresh_name(&format!("{name}_float"));
    g.rename_value(v, &inner)?;
    let s = g.add_const(&format!("{name}_scale"), TensorData::from_f32(vec![], &[scale]))?;
    let z = g.add_const(&format!("{name}_zero_point"), zp_tensor(dt, zp, None))?;
    let q = g.add_temp(&format!("{name}_quantized"), dt, shape.clone())?;
    let mut out = kiln_compiler::ir::Value::new(name.clone());
    out.dtype = DType::F32;
    out.shape = shape;
    let dq = g.add_value(out)?;
    let qn = g.fresh_node_name(&format!("{name}_QuantizeLinear"));
    g.add_node(Node::new(
        qn,
        Op::QuantizeLinear { axis: None, saturate: None },
        vec![Some(v), Some(s), Some(z)],
        vec![Some(q)],
    ))?;
    let dn = g.fresh_node_name(&format!("{name}_DequantizeLinear"));
    g.add_node(Node::new(
        dn,
        Op::DequantizeLinear { axis: None },
        vec![Some(q), Some(s), Some(z)],
        vec![Some(dq)],
    ))?;
    for o in g.outputs.iter_mut() {
        if *o == v {
            *o = dq;
        }
    }
    Ok(())
}

/// Values that keep their full calibrated range (min/max) whatever the method: graph outputs, and the values
/// an output is read from through ops that only pool, select or move values (GlobalAveragePool → Flatten
/// after a classifier conv, say). Clipping there flattens exactly the largest logits, which decide top-1.
pub fn full_range_values(g: &Graph) -> HashSet<ValueId> {
    let mut out: HashSet<ValueId> = g.outputs.iter().copied().collect();
    let mut stack: Vec<ValueId> = out.iter().copied().collect();
    while let Some(v) = stack.pop() {
        let Some((p, _)) = g.value(v).producer else { continue };
        let Some(n) = g.node(p) else { continue };
        let passes = n.act.is_none()
            && (matches!(
                n.op,
                Op::Reshape { .. }
                    | Op::Flatten { .. }
                    | Op::Transpose { .. }
                    | Op::Identity
                    | Op::Pool { .. }
                    | Op::GlobalAveragePool
            ) || matches!(
                n.op.op_type(),
                "Squeeze" | "Unsqueeze" | "ReduceMean" | "GlobalMaxPool"
            ));
        if let (true, Some(x)) = (passes, n.input(0)) {
            if g.const_data(x).is_none() && out.insert(x) {
                stack.push(x);
            }
        }
    }
    out
}

/// Activation (scale, zero point) for every value that will get Q/DQ.
pub fn activation_params(
    g: &Graph,
    calib: &Calibration,
    opts: &QdqOptions,
) -> BTreeMap<ValueId, (f32, i64)> {
    params_and_fallbacks(g, calib, opts).0
}

/// [`activation_params`], and the range fallbacks behind the parameters used (by value name): a value
/// whose parameters are fixed by the runtime or taken from its input has none.
fn params_and_fallbacks(
    g: &Graph,
    calib: &Calibration,
    opts: &QdqOptions,
) -> (BTreeMap<ValueId, (f32, i64)>, BTreeMap<String, Fallback>) {
    let mut params = BTreeMap::new();
    let mut fallbacks = BTreeMap::new();
    let full = full_range_values(g);
    for (i, v) in g.values.iter().enumerate() {
        let id = ValueId(i as u32);
        if v.dtype != DType::F32
            || (g.is_output(id) && !opts.quantize_outputs)
            || g.const_data(id).is_some()
        {
            continue;
        }
        let from_dq = v
            .producer
            .map(|(p, _)| g.node(p).is_some_and(|n| matches!(n.op, Op::DequantizeLinear { .. })))
            .unwrap_or(false);
        if from_dq || opts.keep_float_values.contains(&v.name) {
            continue;
        }
        // A graph output keeps its full calibrated range: clipping logits flattens exactly the largest
        // ones, which decide top-1.
        let p = if full.contains(&id) {
            act_params(
                calib,
                &v.name,
                &QdqOptions {
                    method: Method::MinMax,
                    method_override: BTreeMap::new(),
                    ..opts.clone()
                },
            )
        } else {
            act_params(calib, &v.name, opts)
        };
        if let Some((p, f)) = p {
            params.insert(id, p);
            if let Some(f) = f {
                fallbacks.insert(v.name.clone(), f);
            }
        }
    }
    // Full-integer (TFLite) rules: LOGISTIC and SOFTMAX outputs are (1/256, −128), TANH (1/128, 0) — fixed by
    // the int8 kernels, and finer than a calibrated range of [0, 1] or [−1, 1] would be.
    if opts.quantize_outputs && opts.activations == DType::I8 {
        for id in g.nodes.node_indices() {
            let n = &g.nodes[id];
            let fixed = match (&n.op, &n.act) {
                (Op::Softmax { .. }, None) | (Op::Act(kiln_compiler::ir::Act::Sigmoid), None) => {
                    Some((1.0 / 256.0, -128))
                }
                (Op::Act(kiln_compiler::ir::Act::Tanh), None) => Some((1.0 / 128.0, 0)),
                _ => None,
            };
            if let (Some(p), Some(o)) = (fixed, n.output(0)) {
                if let Some(slot) = params.get_mut(&o) {
                    *slot = p;
                    fallbacks.remove(&g.value(o).name);
                }
            }
        }
    }
    // Ops that only move or select values (reshape, transpose, max-pool, split, slice, ...) keep their
    // input's parameters, as the TFLite int8 spec requires: requantizing there only adds rounding.
    for id in g.topo_order().unwrap_or_default() {
        let n = &g.nodes[id];
        let moves = n.op.moves_values();
        let Some(p) = n.input(0).and_then(|x| params.get(&x)).copied() else { continue };
        if !moves || n.act.is_some() {
            continue;
        }
        for o in n.outputs.iter().flatten() {
            if params.contains_key(o) && !g.is_output(*o) {
                params.insert(*o, p);
                fallbacks.remove(&g.value(*o).name);
            }
        }
    }
    if opts.shared_scales && opts.symmetric {
        share_scales(g, &mut params);
    }
    (params, fallbacks)
}

/// Symmetric scales shared across each Concat (inputs and output) and each op that only moves values
/// (MaxPool, Reshape, Slice, ...): every member takes the group's largest scale, so no member clips.
fn share_scales(g: &Graph, params: &mut BTreeMap<ValueId, (f32, i64)>) {
    let mut groups = kiln_compiler::groups::Groups::default();
    for n in g.nodes.node_weights() {
        let members: Vec<ValueId> = match &n.op {
            Op::Concat { .. } => {
                n.inputs.iter().flatten().chain(n.outputs.iter().flatten()).copied().collect()
            }
            op if op.moves_values() && n.act.is_none() => {
                n.input(0).into_iter().chain(n.outputs.iter().flatten().copied()).collect()
            }
            _ => continue,
        };
        let members: Vec<ValueId> =
            members.into_iter().filter(|v| params.contains_key(v)).collect();
        groups.union_all(&members);
    }
    let mut best: BTreeMap<ValueId, f32> = BTreeMap::new();
    let vals = groups.members();
    for v in &vals {
        let r = groups.root(*v);
        let s = params[v].0;
        let e = best.entry(r).or_insert(s);
        *e = e.max(s);
    }
    for v in vals {
        let r = groups.root(v);
        params.insert(v, (best[&r], 0));
    }
}

/// A weighted op: its activation input is quantized where TensorRT fuses Q/DQ into it.
fn weighted(op: &Op) -> bool {
    matches!(op, Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul)
        || matches!(op, Op::Generic { op_type, .. } if op_type == "ConvTranspose")
}

/// TensorRT's fusion points: for each activation value, the (consumer, input slot)s that read it through
/// Q/DQ: the activation inputs of weighted ops (both inputs of an activation×activation MatMul), and the
/// skip input of a residual Add whose other input a weighted op writes alone (Conv+Add fuses, and the
/// skip's precision sets the fused output's). Nodes for which `keep` holds (kept in float) take none.
pub fn fusion_points(
    g: &Graph,
    keep: &dyn Fn(NodeId) -> bool,
) -> Result<BTreeMap<ValueId, Vec<(NodeId, usize)>>> {
    let order = g.topo_order()?;
    let rank: std::collections::HashMap<NodeId, usize> =
        order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut points: BTreeMap<ValueId, Vec<(NodeId, usize)>> = BTreeMap::new();
    let runtime = |v: ValueId| g.const_data(v).is_none() && g.value(v).dtype == DType::F32;
    for &id in &order {
        let n = &g.nodes[id];
        if weighted(&n.op) {
            if keep(id) {
                continue;
            }
            let slots: &[usize] = if matches!(n.op, Op::MatMul) { &[0, 1] } else { &[0] };
            for &slot in slots {
                if let Some(x) = n.input(slot).filter(|x| runtime(*x)) {
                    points.entry(x).or_default().push((id, slot));
                }
            }
        } else if matches!(n.op, Op::Binary(kiln_compiler::ir::BinOp::Add)) {
            let ins: Vec<(usize, ValueId)> = n
                .inputs
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.filter(|v| runtime(*v)).map(|v| (i, v)))
                .collect();
            if ins.len() != 2 {
                continue;
            }
            // The branch TensorRT fuses: written by a weighted op with no activation of its own, read
            // only here; the latest such producer when both are.
            let fused = ins
                .iter()
                .filter_map(|(slot, v)| {
                    let (p, _) = g.value(*v).producer?;
                    let pn = g.node(p)?;
                    (weighted(&pn.op) && pn.act.is_none() && g.consumers(*v).len() == 1)
                        .then(|| (rank.get(&p).copied().unwrap_or(0), *slot))
                })
                .max();
            let Some((_, fused_slot)) = fused else { continue };
            for (slot, v) in ins {
                if slot != fused_slot {
                    points.entry(v).or_default().push((id, slot));
                }
            }
        }
    }
    Ok(points)
}

/// Quantized range of the activation type.
pub fn act_range(opts: &QdqOptions) -> (i64, i64) {
    if opts.activations == DType::U8 {
        (0, 255)
    } else {
        (-128, 127)
    }
}

/// Insert Q/DQ for the whole model.
pub fn quantize(model: &mut Model, calib: &Calibration, opts: &QdqOptions) -> Result<QdqSummary> {
    let mut sum = QdqSummary::default();
    let opset = model.opset();
    let g = &mut model.graph;
    if g.nodes.node_weights().any(|n| matches!(n.op, Op::QuantizeLinear { .. })) {
        sum.qat_kept = true;
        return Ok(sum);
    }
    if model.opset_imports.iter().any(|(d, v)| (d.is_empty() || d == "ai.onnx") && *v < 13)
        && opts.per_channel
    {
        return Err(Error::Pass {
            pass: "quantize".into(),
            reason: "per-channel quantization needs opset 13 or newer".into(),
        });
    }
    let keep = |g: &Graph, id: NodeId| opts.keep_float.contains(&g.nodes[id].name);
    let (params, fallbacks) = params_and_fallbacks(g, calib, opts);
    sum.range_fallbacks = fallbacks;
    // Where the target fuses Q/DQ only at some points (TensorRT), decided on the float graph.
    let points = match opts.placement {
        QdqPlacement::FusionPoints => Some(fusion_points(g, &|id| keep(g, id))?),
        QdqPlacement::Activations => None,
    };
    // Every activation's symmetric range (amax = 127·scale), placed or not: what an implicit-quantization
    // runtime needs (TensorRT's calibration cache for the DLA).
    if opts.symmetric {
        for (v, (scale, _)) in &params {
            sum.activation_amax.insert(g.value(*v).name.clone(), scale * 127.0);
        }
        // And the tensors fused away here that a runtime may still see as layer outputs (`<y>__preact`,
        // a conv's output before its activation).
        for name in calib.stats.keys() {
            if !sum.activation_amax.contains_key(name) && !opts.keep_float_values.contains(name) {
                if let Some(((scale, _), _)) = act_params(calib, name, opts) {
                    sum.activation_amax.insert(name.clone(), scale * 127.0);
                }
            }
        }
    }
    // Weights and biases.
    for id in g.topo_order()? {
        let Some(n) = g.node(id) else { continue };
        if keep(g, id) {
            sum.kept_float.push(n.name.clone());
            continue;
        }
        let axis = match &n.op {
            Op::Conv { .. } => Some(0),
            Op::Gemm { trans_b, .. } => Some(if trans_b.unwrap_or(0) != 0 { 0 } else { 1 }),
            Op::MatMul => g.nodes[id]
                .input(1)
                .and_then(|w| g.const_data(w))
                .map(|d| d.dims.len().saturating_sub(1)),
            // ConvTranspose weights are [C_in, C_out/group, k...]: per channel on axis 1 (one group only).
            Op::Generic { op_type, attrs }
                if op_type == "ConvTranspose" && opts.placement == QdqPlacement::FusionPoints =>
            {
                let group =
                    kiln_compiler::ir::attr::AttrReader::new(attrs).int("group").unwrap_or(1);
                if group == 1 {
                    Some(1)
                } else {
                    None
                }
            }
            _ => continue,
        };
        let axis = if opts.per_channel { axis } else { None };
        let s_in = g.nodes[id].input(0).and_then(|x| params.get(&x)).map(|p| p.0);
        let bias: Vec<f32> = match (&g.nodes[id].op, g.nodes[id].input(2)) {
            (Op::Conv { .. } | Op::Gemm { .. }, Some(b)) => {
                g.const_data(b).and_then(|d| d.to_f32_vec()).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let floor = |c: usize| -> f32 {
            match s_in {
                Some(si) if si > 0.0 => {
                    let b = if axis.is_some() {
                        bias.get(c).copied().unwrap_or(0.0).abs()
                    } else {
                        bias.iter().fold(0f32, |m, v| m.max(v.abs()))
                    };
                    b / (si * (1u64 << 30) as f32)
                }
                _ => 0.0,
            }
        };
        let Some(s_w) = quantize_weight(g, id, 1, axis, opts.weight_qmax.clamp(1, 127), &floor)?
        else {
            continue;
        };
        sum.weights += 1;
        if let (Some(s_in), true) =
            (s_in, opts.int32_bias && matches!(g.nodes[id].op, Op::Conv { .. } | Op::Gemm { .. }))
        {
            if quantize_bias(g, id, s_in, &s_w)? {
                sum.biases += 1;
            }
        }
    }
    // Activations: Q→DQ in front of every consumer that takes quantized input (and of the graph output).
    for (v, (scale, zp)) in params {
        if g.is_output(v) {
            output_qdq(g, v, scale, zp, opts.activations)?;
            sum.activations += 1;
            sum.activation_params.insert(g.value(v).name.clone(), (scale, zp));
            continue;
        }
        let consumers: Vec<(NodeId, usize)> = match &points {
            Some(p) => p.get(&v).cloned().unwrap_or_default(),
            None => g.consumers(v),
        };
        let consumers: Vec<(NodeId, usize)> = consumers
            .into_iter()
            .filter(|(c, _)| {
                let n = &g.nodes[*c];
                !FLOAT_ONLY.contains(&n.op.op_type())
                    && n.op.subgraphs().is_empty()
                    && (n.domain.is_empty() || n.domain == "ai.onnx")
            })
            .collect();
        if consumers.is_empty() {
            continue;
        }
        let base = g.value(v).name.clone();
        let shape = g.value(v).shape.clone();
        let s = g.add_const(&format!("{base}_scale"), TensorData::from_f32(vec![], &[scale]))?;
        let z =
            g.add_const(&format!("{base}_zero_point"), zp_tensor(opts.activations, zp, None))?;
        let q = g.add_temp(&format!("{base}_quantized"), opts.activations, shape.clone())?;
        let dq = g.add_temp(&format!("{base}_dequantized"), DType::F32, shape)?;
        let qn = g.fresh_node_name(&format!("{base}_QuantizeLinear"));
        g.add_node(Node::new(
            qn,
            Op::QuantizeLinear { axis: None, saturate: None },
            vec![Some(v), Some(s), Some(z)],
            vec![Some(q)],
        ))?;
        let dn = g.fresh_node_name(&format!("{base}_DequantizeLinear"));
        g.add_node(Node::new(
            dn,
            Op::DequantizeLinear { axis: None },
            vec![Some(q), Some(s), Some(z)],
            vec![Some(dq)],
        ))?;
        for (c, slot) in consumers {
            if let Some(n) = g.node_mut(c) {
                n.inputs[slot] = Some(dq);
            }
        }
        sum.activations += 1;
        sum.activation_params.insert(base, (scale, zp));
    }
    g.rebuild_edges();
    kiln_compiler::shape::infer_graph(g, opset)?;
    kiln_compiler::ir::verify::verify(&model.graph)?;
    model.activation_amax = sum.activation_amax.clone();
    Ok(sum)
}
