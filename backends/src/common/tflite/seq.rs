//! Lowerings for sequence models and quantized graphs: Gather, LayerNormalization (its decomposition:
//! MEAN, SUB, MUL, MEAN, ADD ε, RSQRT, MUL, MUL γ, ADD β), Attention (BATCH_MATMUL, MUL, SOFTMAX,
//! BATCH_MATMUL), LSTM (UNIDIRECTIONAL_SEQUENCE_LSTM, time-major), and Q/DQ: a DequantizeLinear of a
//! constant becomes the float constant it denotes; on activations QuantizeLinear/DequantizeLinear become
//! QUANTIZE/DEQUANTIZE with the same scales, so a QAT model's fake quantization is kept exactly.
use kiln_compiler::ir::{NodeId, ValueId};
use kiln_compiler::Result;

use super::act::output_with_act;
use super::lower::Lowering;
use super::model::{Code, Fused, Options, Quant, TensorType};

fn input(l: &Lowering, id: NodeId, i: usize) -> Result<ValueId> {
    l.g.nodes[id].input(i).ok_or_else(|| l.err(format!("missing input {i}")))
}

/// (scale, zero point, axis) of a Q/DQ node, as vectors.
fn qparams(l: &Lowering, id: NodeId) -> Result<(Vec<f32>, Vec<i64>, i64)> {
    let n = &l.g.nodes[id];
    let scale = l.const_f32(input(l, id, 1)?)?.1;
    let zp = match n.input(2) {
        Some(z) => l.const_i64(z)?,
        None => vec![0; scale.len()],
    };
    let axis = n.op.attr_int("axis").unwrap_or(1);
    Ok((scale, zp, axis))
}

pub fn qdq(l: &mut Lowering, id: NodeId) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let x = input(l, id, 0)?;
    let y = n.output(0).ok_or_else(|| l.err("no output"))?;
    let (scale, zp, axis) = qparams(l, id)?;
    let is_q = n.op.op_type() == "QuantizeLinear";
    if l.is_const(x) {
        // Fold: the constant's values on the other side of the Q/DQ.
        let (dims, vals) = l.const_f32(x)?;
        let rank = dims.len() as i64;
        let ax = if axis < 0 { axis + rank } else { axis } as usize;
        let inner: usize = dims.get(ax + 1..).map(|d| d.iter().product()).unwrap_or(1);
        let ch = |i: usize| if scale.len() == 1 { 0 } else { (i / inner.max(1)) % scale.len() };
        let (lo, hi) = match l.g.value(y).dtype {
            kiln_compiler::ir::DType::U8 => (0.0, 255.0),
            _ => (-128.0, 127.0),
        };
        let out: Vec<f32> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (s, z) = (scale[ch(i)], zp[ch(i)] as f32);
                if is_q {
                    ((v / s).round_ties_even() + z).clamp(lo, hi)
                } else {
                    (v - z) * s
                }
            })
            .collect();
        l.folded.insert(y, (dims, out));
        return Ok(());
    }
    if scale.len() != 1 {
        return Err(l.err("per-axis quantization of an activation has no TFLite form"));
    }
    let nhwc = l.nhwc(x);
    let xt = if is_q { l.get(x, nhwc)? } else { l.get_raw(x, nhwc)? };
    let out = l.define(y, nhwc)?;
    if is_q {
        l.m.tensors[out as usize].quant =
            Some(Quant { scale: scale.clone(), zero_point: zp.clone(), axis: 0 });
        l.emit(Code::QUANTIZE, vec![xt], vec![out], Options::None);
    } else {
        if l.m.tensors[xt as usize].quant.is_none() {
            l.m.tensors[xt as usize].quant = Some(Quant { scale, zero_point: zp, axis: 0 });
        }
        l.emit(Code::DEQUANTIZE, vec![xt], vec![out], Options::None);
    }
    Ok(())
}

/// Output tensor shape `like` with the last dim replaced.
fn with_last(shape: &[i32], last: i32) -> Vec<i32> {
    let mut s = shape.to_vec();
    if let Some(x) = s.last_mut() {
        *x = last;
    }
    s
}

pub fn attention(l: &mut Lowering, id: NodeId, scale: f32) -> Result<()> {
    let (q, kt, v) = (input(l, id, 0)?, input(l, id, 1)?, input(l, id, 2)?);
    let (qt, ktt, vt) = (l.get(q, false)?, l.get(kt, false)?, l.get(v, false)?);
    let s_last = *l.m.shape(ktt).last().ok_or_else(|| l.err("rank-0 key"))?;
    let shape = with_last(l.m.shape(qt), s_last);
    let name = l.node.clone();
    let scores = l.m.tensor(&format!("{name}_scores"), shape.clone(), TensorType::FLOAT32);
    let scaled = l.m.tensor(&format!("{name}_scaled"), shape.clone(), TensorType::FLOAT32);
    let probs = l.m.tensor(&format!("{name}_probs"), shape, TensorType::FLOAT32);
    let sc = l.m.const_f32(&format!("{name}_scale"), vec![], &[scale]);
    l.emit(
        Code::BATCH_MATMUL,
        vec![qt, ktt],
        vec![scores],
        Options::BatchMatMul { adj_x: false, adj_y: false },
    );
    l.emit(Code::MUL, vec![scores, sc], vec![scaled], Options::Binary { act: Fused::NONE });
    l.emit(Code::SOFTMAX, vec![scaled], vec![probs], Options::Softmax { beta: 1.0 });
    let (out, act) = output_with_act(l, id, false)?;
    if act != Fused::NONE {
        return Err(l.err("a fused activation on Attention is not supported"));
    }
    l.emit(
        Code::BATCH_MATMUL,
        vec![probs, vt],
        vec![out],
        Options::BatchMatMul { adj_x: false, adj_y: false },
    );
    Ok(())
}

pub fn layer_norm(l: &mut Lowering, id: NodeId) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let x = input(l, id, 0)?;
    let rank = l.rank(x) as i64;
    let axis = n.op.attr_int("axis").unwrap_or(-1);
    if axis != -1 && axis != rank - 1 {
        return Err(l.err("LayerNormalization over more than the last axis has no lowering"));
    }
    let eps = n.op.attr_float("epsilon").unwrap_or(1e-5);
    let xt = l.get(x, false)?;
    let shape = l.m.shape(xt).to_vec();
    let reduced = with_last(&shape, 1);
    let name = l.node.clone();
    let t = |l: &mut Lowering, s: &str, sh: &[i32]| {
        l.m.tensor(&format!("{name}_{s}"), sh.to_vec(), TensorType::FLOAT32)
    };
    let (mean, centered, sq, var, var_eps, rstd, normed) = (
        t(l, "mean", &reduced),
        t(l, "centered", &shape),
        t(l, "sq", &shape),
        t(l, "var", &reduced),
        t(l, "var_eps", &reduced),
        t(l, "rstd", &reduced),
        t(l, "normed", &shape),
    );
    let axes = l.m.const_i32(&format!("{name}_axes"), &[(rank - 1) as i32]);
    let e = l.m.const_f32(&format!("{name}_eps"), vec![], &[eps]);
    let none = || Options::Binary { act: Fused::NONE };
    l.emit(Code::MEAN, vec![xt, axes], vec![mean], Options::Reducer { keep_dims: true });
    l.emit(Code::SUB, vec![xt, mean], vec![centered], none());
    l.emit(Code::MUL, vec![centered, centered], vec![sq], none());
    l.emit(Code::MEAN, vec![sq, axes], vec![var], Options::Reducer { keep_dims: true });
    l.emit(Code::ADD, vec![var, e], vec![var_eps], none());
    l.emit(Code::RSQRT, vec![var_eps], vec![rstd], Options::None);
    l.emit(Code::MUL, vec![centered, rstd], vec![normed], none());
    let gamma = l.get(input(l, id, 1)?, false)?;
    let (out, act) = output_with_act(l, id, false)?;
    match n.input(2) {
        Some(b) => {
            let beta = l.get(b, false)?;
            let scaled = t(l, "scaled", &shape);
            l.emit(Code::MUL, vec![normed, gamma], vec![scaled], none());
            l.emit(Code::ADD, vec![scaled, beta], vec![out], Options::Binary { act });
        }
        None => l.emit(Code::MUL, vec![normed, gamma], vec![out], Options::Binary { act }),
    }
    Ok(())
}

pub fn gather(l: &mut Lowering, id: NodeId) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let (data, idx) = (input(l, id, 0)?, input(l, id, 1)?);
    let rank = l.rank(data) as i64;
    let axis = n.op.attr_int("axis").unwrap_or(0);
    let axis = if axis < 0 { axis + rank } else { axis };
    let dt = l.get(data, false)?;
    let it = if l.is_const(idx) {
        let dims = l.dims(idx)?;
        let d = l.dims(data)?[axis as usize];
        let v: Vec<i32> =
            l.const_i64(idx)?.iter().map(|i| if *i < 0 { i + d } else { *i } as i32).collect();
        let t = l.m.const_i32("gather_indices", &v);
        l.m.tensors[t as usize].shape = dims.iter().map(|x| *x as i32).collect();
        t
    } else {
        l.get(idx, false)?
    };
    let (out, act) = output_with_act(l, id, false)?;
    if act != Fused::NONE {
        return Err(l.err("a fused activation on Gather is not supported"));
    }
    l.emit(Code::GATHER, vec![dt, it], vec![out], Options::Gather { axis: axis as i32 });
    Ok(())
}

/// Rows [k·h, (k+1)·h) of a [4h, cols] matrix.
fn gate(m: &[f32], k: usize, h: usize, cols: usize) -> Vec<f32> {
    m[k * h * cols..(k + 1) * h * cols].to_vec()
}

pub fn lstm(l: &mut Lowering, id: NodeId) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let op = &n.op;
    if op.attr("direction").is_some_and(
        |d| !matches!(d, kiln_compiler::ir::AttrValue::String(ref s) if s.as_slice() == b"forward"),
    ) {
        return Err(l.err("only forward LSTMs have a lowering (UNIDIRECTIONAL_SEQUENCE_LSTM)"));
    }
    if op.attr_int("layout").unwrap_or(0) != 0
        || op.attr_int("input_forget").unwrap_or(0) != 0
        || op.attr("activations").is_some()
        || n.input(4).is_some()
        || n.input(7).is_some()
    {
        return Err(l.err("LSTM with layout=1, input_forget, custom activations, sequence_lens or peepholes has no lowering"));
    }
    let h = op.attr_int("hidden_size").ok_or_else(|| l.err("hidden_size missing"))? as usize;
    let clip = op.attr_float("clip").unwrap_or(0.0);
    let x = input(l, id, 0)?;
    let (wd, w) = l.const_f32(input(l, id, 1)?)?;
    let (_, r) = l.const_f32(input(l, id, 2)?)?;
    let cols = wd[2];
    let bias = match n.input(3) {
        Some(b) => {
            let (_, b) = l.const_f32(b)?;
            (0..4 * h).map(|i| b[i] + b[4 * h + i]).collect::<Vec<f32>>()
        }
        None => vec![0.0; 4 * h],
    };
    for s in [n.input(5), n.input(6)].into_iter().flatten() {
        if l.const_f32(s).map(|(_, v)| v.iter().any(|x| *x != 0.0)).unwrap_or(true) {
            return Err(l.err("LSTM with a non-zero or non-constant initial state has no lowering"));
        }
    }
    for (k, o) in n.outputs.iter().enumerate().skip(1) {
        if let Some(o) = o {
            if !l.g.consumers(*o).is_empty() || l.g.is_output(*o) {
                return Err(
                    l.err(format!("LSTM output {k} (Y_h/Y_c) is used; only Y has a lowering"))
                );
            }
        }
    }
    let xt = l.get(x, false)?;
    let xs = l.m.shape(xt).to_vec();
    let (seq, batch) = (xs[0], xs[1]);
    let name = l.node.clone();
    // ONNX gate order i, o, f, c → TFLite i, f, c, o.
    let order = [0usize, 2, 3, 1];
    let mut ins = vec![xt];
    for (mat, c) in [(&w, cols), (&r, h)] {
        for (j, k) in order.iter().enumerate() {
            ins.push(l.m.const_f32(
                &format!("{name}_{}_{j}", if c == h { "recurrent" } else { "input" }),
                vec![h as i32, c as i32],
                &gate(mat, *k, h, c),
            ));
        }
    }
    ins.extend([-1, -1, -1]);
    for (j, k) in order.iter().enumerate() {
        ins.push(l.m.const_f32(
            &format!("{name}_bias_{j}"),
            vec![h as i32],
            &bias[k * h..(k + 1) * h],
        ));
    }
    ins.extend([-1, -1]);
    // The kernel keeps h and c in variable tensors that persist across invocations; ONNX's LSTM starts
    // each run from zeros, so a FILL rewrites them to zero before every run of the sequence.
    let dims = l.m.const_i32(&format!("{name}_state_dims"), &[batch, h as i32]);
    let zero = l.m.const_f32(&format!("{name}_zero"), vec![], &[0.0]);
    for s in ["output_state", "cell_state"] {
        let t = l.m.tensor(&format!("{name}_{s}"), vec![batch, h as i32], TensorType::FLOAT32);
        l.m.tensors[t as usize].is_variable = true;
        l.emit(Code::FILL, vec![dims, zero], vec![t], Options::None);
        ins.push(t);
    }
    ins.extend([-1, -1, -1, -1]);
    let y = n.output(0).ok_or_else(|| l.err("no output"))?;
    let seq_out =
        l.m.tensor(&format!("{name}_sequence"), vec![seq, batch, h as i32], TensorType::FLOAT32);
    l.emit(
        Code::UNIDIRECTIONAL_SEQUENCE_LSTM,
        ins,
        vec![seq_out],
        Options::Lstm { cell_clip: clip, time_major: true },
    );
    // Y is [seq, num_directions = 1, batch, h].
    let out = l.define(y, false)?;
    let shape = l.m.shape(out).to_vec();
    let st = l.m.const_i32(&format!("{name}_y_shape"), &shape);
    l.emit(Code::RESHAPE, vec![seq_out, st], vec![out], Options::Reshape { shape });
    Ok(())
}
