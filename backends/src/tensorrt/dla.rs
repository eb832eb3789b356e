//! The DLA route. TensorRT's DLA takes no Q/DQ: int8 on the DLA goes through implicit quantization, an
//! ONNX without Q/DQ plus a calibration cache of per-tensor ranges (NVIDIA's qdq-translator makes the same
//! from a QDQ model). From kiln's TensorRT-quantized model this makes:
//! - the float model: activation Q/DQ pairs removed, int8 weights dequantized (the values on kiln's grid,
//!   which TensorRT's per-channel max-abs requantization reproduces), activations as layers of their own;
//! - the cache: `TRT-<version>-EntropyCalibration2`, then `name: <hex of the float32 scale amax/127>` per
//!   tensor of that model, with the ranges the DLA needs equal made equal (a pooling layer's input and
//!   output, an elementwise layer's inputs): the largest of the group, so no member clips.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use kiln_compiler::calib::stats::unfuse_activations;
use kiln_compiler::ir::{BinOp, DType, Dim, Model, Op, TensorData, ValueId};
use kiln_compiler::{Error, Result};

/// `q` dequantized: (q − zp)·scale along `axis` of `dims`.
fn dequantize(q: &TensorData, scale: &[f64], zp: &[f64], axis: Option<usize>) -> Option<Vec<f32>> {
    let vals = q.to_f64_vec()?;
    let dims = &q.dims;
    let (c, inner) = match axis {
        Some(a) if a < dims.len() && scale.len() > 1 => {
            (dims[a] as usize, dims[a + 1..].iter().product::<i64>().max(1) as usize)
        }
        _ => (1, 1),
    };
    Some(
        vals.iter()
            .enumerate()
            .map(|(i, v)| {
                let ch = if c > 1 { (i / inner) % c } else { 0 };
                let s = scale.get(ch).or(scale.first()).copied().unwrap_or(1.0);
                let z = zp.get(ch).or(zp.first()).copied().unwrap_or(0.0);
                ((v - z) * s) as f32
            })
            .collect(),
    )
}

/// The float model TensorRT calibrates implicitly: no Q/DQ, float weights, one layer per activation,
/// static shapes (the DLA has no dynamic shapes: unknown dims become 1).
pub fn float_model(qdq: &Model) -> Result<Model> {
    let mut m = qdq.clone();
    let g = &mut m.graph;
    let order = g.topo_order()?;
    for id in order {
        let Some(n) = g.node(id) else { continue };
        let (Some(x), Some(y)) = (n.input(0), n.output(0)) else { continue };
        match n.op {
            Op::QuantizeLinear { .. } => {}
            Op::DequantizeLinear { axis } => {
                let Some(q) = g.const_data(x).cloned() else {
                    // Q -> DQ on an activation: consumers read the Q's float input again.
                    let src = g
                        .value(x)
                        .producer
                        .and_then(|(p, _)| g.node(p))
                        .filter(|p| matches!(p.op, Op::QuantizeLinear { .. }))
                        .and_then(|p| p.input(0));
                    if let Some(src) = src {
                        let keep_name = g.is_output(y);
                        g.replace_uses(y, src);
                        if keep_name {
                            let name = g.value(y).name.clone();
                            g.rename_value(y, &format!("{name}__dq"))?;
                            g.rename_value(src, &name)?;
                        }
                    }
                    continue;
                };
                let (Some(s), z) = (n.input(1), n.input(2)) else { continue };
                let scale = g.const_data(s).and_then(|d| d.to_f64_vec()).unwrap_or_default();
                let zp = z
                    .and_then(|z| g.const_data(z))
                    .and_then(|d| d.to_f64_vec())
                    .unwrap_or_default();
                let rank = q.dims.len() as i64;
                let axis = axis.map(|a| if a < 0 { a + rank } else { a } as usize).or(Some(1));
                let Some(w) = dequantize(&q, &scale, &zp, axis) else {
                    return Err(Error::invalid(format!(
                        "tensorrt: cannot dequantize '{}'",
                        g.value(x).name
                    )));
                };
                let base = g.value(x).name.trim_end_matches("_quantized").to_string();
                let name = if g.find(&base).is_some() { g.fresh_name(&base) } else { base };
                let f = g.add_const(&name, TensorData::from_f32(q.dims.clone(), &w))?;
                g.replace_uses(y, f);
            }
            _ => {}
        }
    }
    let qdq_nodes: Vec<_> = g
        .nodes
        .node_indices()
        .filter(|id| {
            matches!(g.nodes[*id].op, Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. })
        })
        .collect();
    for id in qdq_nodes {
        g.remove_node(id);
    }
    g.rebuild_edges();
    let used: std::collections::HashSet<ValueId> = g
        .nodes
        .node_weights()
        .flat_map(|n| n.inputs.iter().flatten().copied().collect::<Vec<_>>())
        .chain(g.outputs.iter().copied())
        .collect();
    g.initializers.retain(|v| used.contains(v));
    for v in g.inputs.clone() {
        if let Some(shape) = g.value_mut(v).shape.as_mut() {
            for d in shape.iter_mut() {
                if !matches!(d, Dim::Known(_)) {
                    *d = Dim::Known(1);
                }
            }
        }
    }
    m.activation_amax.clear();
    unfuse_activations(&mut m, &|_, _| false)?;
    let opset = m.opset();
    kiln_compiler::shape::infer_graph(&mut m.graph, opset)?;
    kiln_compiler::ir::verify::verify(&m.graph)?;
    Ok(m)
}

/// The cache's entries for `float` (from [`float_model`]): value name → amax, for every float activation
/// `amax` has a range for, with the DLA's equal-range groups merged. Values kept float (mixed precision)
/// are left out, so TensorRT runs their layers in fp16.
pub fn cache_ranges(float: &Model, amax: &BTreeMap<String, f32>) -> BTreeMap<String, f32> {
    let g = &float.graph;
    let named = |v: ValueId| amax.get(&g.value(v).name).copied();
    let runtime = |v: ValueId| g.const_data(v).is_none() && g.value(v).dtype == DType::F32;
    let mut groups = kiln_compiler::groups::Groups::default();
    for n in g.nodes.node_weights() {
        let group: Vec<ValueId> = match &n.op {
            Op::Pool { .. } | Op::GlobalAveragePool => {
                n.input(0).into_iter().chain(n.output(0)).collect()
            }
            op if matches!(op, Op::Binary(BinOp::Add | BinOp::Sub | BinOp::Mul))
                || matches!(op.op_type(), "Max" | "Min") =>
            {
                n.inputs.iter().flatten().copied().filter(|v| runtime(*v)).collect()
            }
            _ => continue,
        };
        let group: Vec<ValueId> = group.into_iter().filter(|v| named(*v).is_some()).collect();
        groups.union_all(&group);
    }
    let mut best: BTreeMap<ValueId, f32> = BTreeMap::new();
    for v in groups.members() {
        let r = groups.root(v);
        let a = named(v).unwrap_or(0.0);
        let e = best.entry(r).or_insert(a);
        *e = e.max(a);
    }
    let mut out = BTreeMap::new();
    for (i, v) in g.values.iter().enumerate() {
        let id = ValueId(i as u32);
        if !runtime(id) || (v.producer.is_none() && !g.inputs.contains(&id)) {
            continue;
        }
        let Some(a) = named(id) else { continue };
        let a = if groups.contains(&id) { best[&groups.root(id)] } else { a };
        out.insert(v.name.clone(), a);
    }
    out
}

/// The activation ranges a model's own Q/DQ carry (a QAT export: kiln keeps its trained scales): for each
/// QuantizeLinear of a runtime tensor with a scalar scale and a zero point of 0 (int8) or 128 (uint8, the
/// same numbers), that tensor's amax = 127·scale, which is what NVIDIA's qdq-translator writes for the
/// DLA. Tensors without Q/DQ get no range (TensorRT runs their layers in fp16).
pub fn amax_from_qdq(m: &Model) -> BTreeMap<String, f32> {
    let g = &m.graph;
    let mut out = BTreeMap::new();
    for n in g.nodes.node_weights() {
        if !matches!(n.op, Op::QuantizeLinear { .. }) {
            continue;
        }
        let (Some(x), Some(s)) = (n.input(0), n.input(1)) else { continue };
        if g.const_data(x).is_some() {
            continue;
        }
        let Some(scale) = g.const_data(s).and_then(|d| d.to_f32_vec()).filter(|v| v.len() == 1)
        else {
            continue;
        };
        let symmetric = match n.input(2).and_then(|z| g.const_data(z)) {
            None => false,
            Some(z) => match z.dtype {
                DType::I8 => z.bytes().iter().all(|b| *b == 0),
                DType::U8 => z.bytes().iter().all(|b| *b == 128),
                _ => false,
            },
        };
        if symmetric && scale[0] > 0.0 {
            out.insert(g.value(x).name.clone(), scale[0] * 127.0);
        }
    }
    out
}

/// The calibration cache text: header for TensorRT `version_number`, then one line per tensor with the
/// IEEE-754 bits of the float32 scale amax/127 as 8 lowercase hex digits.
pub fn cache_text(version_number: u32, ranges: &BTreeMap<String, f32>) -> String {
    let mut s = format!("TRT-{version_number}-EntropyCalibration2\n");
    for (name, amax) in ranges {
        let scale = (amax / 127.0).max(f32::MIN_POSITIVE);
        let _ = writeln!(s, "{name}: {:08x}", scale.to_bits());
    }
    s
}
