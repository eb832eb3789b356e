//! Ops that pad, replicate, select or convert values, each in its input's layout (channel-last maps stay
//! channel-last: pads, repeats and broadcast shapes are permuted instead of the data):
//! - `Pad` → PAD (zeros), PADV2 (another constant), MIRROR_PAD (reflect), or GATHERs of the edge indices
//!   (edge, which TFLite has no op for); int8 keeps the input's parameters;
//! - `Tile` → TILE, `Expand` → BROADCAST_TO, `Where` → SELECT_V2, `Cast` → CAST;
//! - `ReduceMax`/`ReduceMin`/`ReduceSum`/`ReduceProd` → REDUCE_MAX/REDUCE_MIN/SUM/REDUCE_PROD,
//!   `ArgMax`/`ArgMin` → ARG_MAX/ARG_MIN (+ RESHAPE for `keepdims`).
use kiln_compiler::ir::{NodeId, ValueId};
use kiln_compiler::Result;

use super::act::output_with_act;
use super::lower::{permute, Lowering, TO_NCHW, TO_NHWC};
use super::model::{Code, Fused, Options, TensorType};

fn no_act(l: &Lowering, act: Fused) -> Result<()> {
    if act != Fused::NONE {
        return Err(l.err("a fused activation here is not supported"));
    }
    Ok(())
}

pub fn pad(l: &mut Lowering, id: NodeId) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let x = n.input(0).ok_or_else(|| l.err("no input"))?;
    let rank = l.rank(x);
    let pads = l.const_i64(n.input(1).ok_or_else(|| l.err("Pad needs constant pads"))?)?;
    let axes: Vec<usize> = match n.input(3) {
        Some(a) => l
            .const_i64(a)?
            .iter()
            .map(|a| (if *a < 0 { a + rank as i64 } else { *a }) as usize)
            .collect(),
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() || axes.iter().any(|a| *a >= rank) {
        return Err(l.err(format!("{} pads for {} axes", pads.len(), axes.len())));
    }
    if pads.iter().any(|p| *p < 0) {
        return Err(l.err("Pad with negative pads (cropping) has no TFLite lowering"));
    }
    // [rank, 2] (before, after) in ONNX order.
    let mut pa = vec![[0i64; 2]; rank];
    for (k, a) in axes.iter().enumerate() {
        pa[*a] = [pads[k], pads[k + axes.len()]];
    }
    let mode = match n.op.attr("mode") {
        Some(kiln_compiler::ir::AttrValue::String(s)) => String::from_utf8_lossy(&s).into_owned(),
        _ => "constant".into(),
    };
    let value = match n.input(2) {
        Some(c) if l.is_const(c) => l.const_f32(c)?.1.first().copied().unwrap_or(0.0),
        Some(_) => return Err(l.err("Pad with a computed constant_value has no TFLite lowering")),
        None => 0.0,
    };
    let nhwc = l.nhwc(x) && rank == 4;
    let stored = if nhwc { permute(&pa, &TO_NHWC) } else { pa.clone() };
    let xt = l.get(x, nhwc)?;
    let (out, act) = output_with_act(l, id, nhwc)?;
    no_act(l, act)?;
    let name = l.node.clone();
    let flat: Vec<i32> = stored.iter().flat_map(|p| [p[0] as i32, p[1] as i32]).collect();
    let pt = l.m.const_i32(&format!("{name}_pads"), &flat);
    l.m.tensors[pt as usize].shape = vec![rank as i32, 2];
    match mode.as_str() {
        "constant" if value == 0.0 => l.emit(Code::PAD, vec![xt, pt], vec![out], Options::None),
        "constant" => {
            let c = match l.m.tensors[xt as usize].quant.clone() {
                Some(q) => {
                    // The pad value in the input's int8 parameters.
                    let v = (value / q.scale[0]).round() as i64 + q.zero_point[0];
                    let b = v.clamp(-128, 127) as i8 as u8;
                    let t =
                        l.m.constant(&format!("{name}_value"), vec![], TensorType::INT8, vec![b]);
                    l.m.tensors[t as usize].quant = Some(q);
                    t
                }
                None => l.m.const_f32(&format!("{name}_value"), vec![], &[value]),
            };
            l.emit(Code::PADV2, vec![xt, pt, c], vec![out], Options::None)
        }
        "reflect" => {
            let shape = l.m.shape(xt).to_vec();
            if stored.iter().zip(&shape).any(|(p, d)| p[0] >= *d as i64 || p[1] >= *d as i64) {
                return Err(l.err("reflect Pad wider than the input has no TFLite lowering"));
            }
            l.emit(Code::MIRROR_PAD, vec![xt, pt], vec![out], Options::MirrorPad { reflect: true })
        }
        "edge" if l.m.shape(xt).iter().any(|d| *d < 1) => {
            return Err(l.err("edge Pad of an empty tensor has no TFLite lowering"))
        }
        "edge" => {
            // Replicate the border: GATHER along each padded axis with clamped indices.
            let mut cur = xt;
            let padded: Vec<usize> = (0..rank).filter(|a| stored[*a] != [0, 0]).collect();
            for (k, a) in padded.iter().enumerate() {
                let shape = l.m.shape(cur).to_vec();
                let d = shape[*a] as i64;
                let idx: Vec<i32> =
                    (-stored[*a][0]..d + stored[*a][1]).map(|i| i.clamp(0, d - 1) as i32).collect();
                let it = l.m.const_i32(&format!("{name}_edge{a}"), &idx);
                let dst = if k + 1 == padded.len() {
                    out
                } else {
                    let mut s = shape.clone();
                    s[*a] = idx.len() as i32;
                    let dt = l.m.tensors[cur as usize].dtype;
                    let t = l.m.tensor(&format!("{name}_edge{a}"), s, dt);
                    l.m.tensors[t as usize].quant = l.m.tensors[cur as usize].quant.clone();
                    t
                };
                l.emit(Code::GATHER, vec![cur, it], vec![dst], Options::Gather { axis: *a as i32 });
                cur = dst;
            }
            if padded.is_empty() {
                let s = l.m.shape(xt).to_vec();
                l.emit(Code::RESHAPE, vec![xt], vec![out], Options::Reshape { shape: s });
            }
        }
        other => return Err(l.err(format!("Pad mode '{other}' has no TFLite lowering"))),
    }
    Ok(())
}

/// TILE with the repeats permuted like the input.
pub fn tile(l: &mut Lowering, id: NodeId) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let x = n.input(0).ok_or_else(|| l.err("no input"))?;
    let reps = l.const_i64(n.input(1).ok_or_else(|| l.err("Tile needs constant repeats"))?)?;
    let nhwc = l.nhwc(x) && l.rank(x) == 4;
    let reps: Vec<i32> = reps.iter().map(|r| *r as i32).collect();
    let reps = if nhwc { permute(&reps, &TO_NHWC) } else { reps };
    let xt = l.get(x, nhwc)?;
    let (out, act) = output_with_act(l, id, nhwc)?;
    no_act(l, act)?;
    let rt = l.m.const_i32(&format!("{}_multiples", l.node), &reps);
    l.emit(Code::TILE, vec![xt, rt], vec![out], Options::None);
    Ok(())
}

/// BROADCAST_TO the (inferred) output shape, stored like the output.
pub fn expand(l: &mut Lowering, id: NodeId) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let x = n.input(0).ok_or_else(|| l.err("no input"))?;
    let y = n.output(0).ok_or_else(|| l.err("no output"))?;
    let rank = l.rank(y);
    let nhwc = l.nhwc(x) && l.rank(x) == 4 && rank == 4;
    let xt = if l.is_const(x) { l.broadcast_const(x, rank, nhwc)? } else { l.get(x, nhwc)? };
    let (out, act) = output_with_act(l, id, nhwc)?;
    no_act(l, act)?;
    let shape = l.m.shape(out).to_vec();
    let st = l.m.const_i32(&format!("{}_shape", l.node), &shape);
    l.emit(Code::BROADCAST_TO, vec![xt, st], vec![out], Options::None);
    Ok(())
}

/// SELECT_V2(condition, x, y), channel-last when every non-constant operand is.
pub fn where_(l: &mut Lowering, id: NodeId) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let ins: Vec<ValueId> = (0..3)
        .map(|i| n.input(i).ok_or_else(|| l.err("Where needs three inputs")))
        .collect::<Result<_>>()?;
    let rank = l.rank(n.output(0).ok_or_else(|| l.err("no output"))?);
    let (ts, nhwc) = l.elementwise_operands(&ins, rank, &[0])?;
    let (out, act) = output_with_act(l, id, nhwc)?;
    no_act(l, act)?;
    l.emit(Code::SELECT_V2, ts, vec![out], Options::None);
    Ok(())
}

/// CAST between the element types of the input and output (float ↔ integer ↔ bool).
pub fn cast(l: &mut Lowering, id: NodeId) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let x = n.input(0).ok_or_else(|| l.err("no input"))?;
    let nhwc = l.nhwc(x);
    let xt = l.get(x, nhwc)?;
    let (out, act) = output_with_act(l, id, nhwc)?;
    no_act(l, act)?;
    let (from, to) = (l.m.tensors[xt as usize].dtype, l.m.tensors[out as usize].dtype);
    if from == to {
        let shape = l.m.shape(out).to_vec();
        l.emit(Code::RESHAPE, vec![xt], vec![out], Options::Reshape { shape });
    } else {
        l.emit(Code::CAST, vec![xt], vec![out], Options::Cast { from, to });
    }
    Ok(())
}

/// Reductions other than the mean, and ArgMax/ArgMin.
pub fn reduce(l: &mut Lowering, id: NodeId, op_type: &str) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let x = n.input(0).ok_or_else(|| l.err("no input"))?;
    let rank = l.rank(x);
    let keep = n.op.attr_int("keepdims").unwrap_or(1) != 0;
    let norm = |a: i64| (if a < 0 { a + rank as i64 } else { a }) as usize;
    let arg = matches!(op_type, "ArgMax" | "ArgMin");
    let axes: Vec<usize> = if arg {
        vec![norm(n.op.attr_int("axis").unwrap_or(0))]
    } else {
        match n.input(1) {
            Some(a) => l.const_i64(a)?.into_iter().map(norm).collect(),
            None => match n.op.attr_ints("axes") {
                Some(a) => a.into_iter().map(norm).collect(),
                None if n.op.attr_int("noop_with_empty_axes").unwrap_or(0) != 0 => vec![],
                None => (0..rank).collect(),
            },
        }
    };
    if axes.is_empty() {
        // noop_with_empty_axes: the input itself.
        let nhwc = l.nhwc(x);
        let xt = l.get(x, nhwc)?;
        let (out, _) = output_with_act(l, id, nhwc)?;
        let shape = l.m.shape(out).to_vec();
        l.emit(Code::RESHAPE, vec![xt], vec![out], Options::Reshape { shape });
        return Ok(());
    }
    if axes.iter().any(|a| *a >= rank) {
        return Err(l.err(format!("axes {axes:?} out of range for rank {rank}")));
    }
    if arg && n.op.attr_int("select_last_index").unwrap_or(0) != 0 {
        return Err(l.err("ArgMax/ArgMin with select_last_index has no TFLite lowering"));
    }
    // Channel-last stays channel-last when dims are kept; dropped dims need the ONNX order unless the
    // remaining stored order is the logical one (reducing C only).
    let nhwc = l.nhwc(x) && rank == 4 && (keep || axes == [1]);
    let stored: Vec<i32> =
        axes.iter().map(|a| (if nhwc { TO_NCHW[*a] } else { *a }) as i32).collect();
    let xt = l.get(x, nhwc)?;
    let out_nhwc = nhwc && keep;
    let (out, act) = output_with_act(l, id, out_nhwc)?;
    no_act(l, act)?;
    let name = l.node.clone();
    let at = l.m.const_i32(&format!("{name}_axes"), &stored);
    if arg {
        l.m.tensors[at as usize].shape = vec![1];
        let code = if op_type == "ArgMax" { Code::ARG_MAX } else { Code::ARG_MIN };
        let otype = l.m.tensors[out as usize].dtype;
        let dst = if keep {
            let mut s = l.m.shape(xt).to_vec();
            s.remove(stored[0] as usize);
            l.m.tensor(&format!("{name}_flat"), s, otype)
        } else {
            out
        };
        l.emit(code, vec![xt, at], vec![dst], Options::ArgMax { output: otype });
        if keep {
            let shape = l.m.shape(out).to_vec();
            l.emit(Code::RESHAPE, vec![dst], vec![out], Options::Reshape { shape });
        }
        return Ok(());
    }
    let code = match op_type {
        "ReduceMax" => Code::REDUCE_MAX,
        "ReduceMin" => Code::REDUCE_MIN,
        "ReduceSum" => Code::SUM,
        "ReduceProd" => Code::REDUCE_PROD,
        other => return Err(l.err(format!("the tflite backend has no lowering for {other}"))),
    };
    l.emit(code, vec![xt, at], vec![out], Options::Reducer { keep_dims: keep });
    Ok(())
}

/// GREATER / LESS / EQUAL / GREATER_EQUAL / LESS_EQUAL (a bool output), channel-last when every
/// non-constant operand is.
pub fn compare(l: &mut Lowering, id: NodeId, op_type: &str) -> Result<()> {
    let code = match op_type {
        "Greater" => Code::GREATER,
        "Less" => Code::LESS,
        "Equal" => Code::EQUAL,
        "GreaterOrEqual" => Code::GREATER_EQUAL,
        "LessOrEqual" => Code::LESS_EQUAL,
        other => return Err(l.err(format!("the tflite backend has no lowering for {other}"))),
    };
    let n = l.g.nodes[id].clone();
    let ins: Vec<ValueId> = (0..2)
        .map(|i| n.input(i).ok_or_else(|| l.err("a comparison needs two inputs")))
        .collect::<Result<_>>()?;
    let rank = l.rank(n.output(0).ok_or_else(|| l.err("no output"))?);
    let (ts, nhwc) = l.elementwise_operands(&ins, rank, &[])?;
    let (out, act) = output_with_act(l, id, nhwc)?;
    no_act(l, act)?;
    l.emit(code, ts, vec![out], Options::None);
    Ok(())
}
