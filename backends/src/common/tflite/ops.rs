//! One lowering per IR op: Conv (CONV_2D / DEPTHWISE_CONV_2D), pooling, Gemm/MatMul (FULLY_CONNECTED /
//! BATCH_MATMUL), element-wise arithmetic, activations (fused where TFLite can fuse them), Concat,
//! Reshape/Flatten, Transpose, Softmax, ReduceMean, Split, Slice, Pad. An op with no lowering is an error
//! naming the node and op, so a target fails loudly instead of emitting a wrong model.
use kiln_compiler::ir::{BinOp, NodeId, Op, PoolKind, ValueId, Window};
use kiln_compiler::Result;

use super::act::{activation, output_with_act};
use super::lower::{permute, transpose_data, Lowering, TO_NCHW, TO_NHWC};
use super::model::{Code, Fused, Options, Padding, Quant, TensorType};

/// TFLite padding for a 2-D window: VALID, SAME, or explicit (then a PAD op is needed).
fn padding(
    l: &Lowering,
    w: &Window,
    in_hw: (i64, i64),
    k: (i64, i64),
    s: (i64, i64),
    d: (i64, i64),
) -> Result<(Padding, Option<[i64; 4]>)> {
    match w.auto_pad.as_deref() {
        Some("SAME_UPPER") => return Ok((Padding::SAME, None)),
        Some("VALID") => return Ok((Padding::VALID, None)),
        Some("SAME_LOWER") => return Err(l.err("auto_pad SAME_LOWER has no TFLite equivalent")),
        _ => {}
    }
    let p = w.pads.clone().unwrap_or_else(|| vec![0; 4]);
    if p.len() != 4 {
        return Err(l.err("only 2-D windows are supported"));
    }
    if p.iter().all(|x| *x == 0) {
        return Ok((Padding::VALID, None));
    }
    // TensorFlow SAME: total = max((ceil(in/s) − 1)·s + (k − 1)·d + 1 − in, 0), before = total / 2.
    let same = |i: i64, k: i64, s: i64, d: i64| {
        let total = (((i + s - 1) / s - 1) * s + (k - 1) * d + 1 - i).max(0);
        (total / 2, total - total / 2)
    };
    let (h0, h1) = same(in_hw.0, k.0, s.0, d.0);
    let (w0, w1) = same(in_hw.1, k.1, s.1, d.1);
    if [p[0], p[1], p[2], p[3]] == [h0, w0, h1, w1] {
        return Ok((Padding::SAME, None));
    }
    Ok((Padding::VALID, Some([p[0], p[1], p[2], p[3]])))
}

/// PAD (zeros) or PADV2 (with `value`) of an NHWC tensor by ONNX pads [top, left, bottom, right].
fn pad_nhwc(l: &mut Lowering, x: i32, p: [i64; 4], value: Option<f32>) -> i32 {
    let s = l.m.shape(x).to_vec();
    let out_shape = vec![s[0], s[1] + (p[0] + p[2]) as i32, s[2] + (p[1] + p[3]) as i32, s[3]];
    let name = format!("{}_padded", l.m.tensors[x as usize].name);
    let dtype = l.m.tensors[x as usize].dtype;
    let out = l.m.tensor(&name, out_shape, dtype);
    let quant = l.m.tensors[x as usize].quant.clone();
    l.m.tensors[out as usize].quant = quant.clone();
    let pads = l.m.const_i32(
        &format!("{name}_pads"),
        &[0, 0, p[0] as i32, p[2] as i32, p[1] as i32, p[3] as i32, 0, 0],
    );
    l.m.tensors[pads as usize].shape = vec![4, 2];
    match value {
        None => l.emit(Code::PAD, vec![x, pads], vec![out], Options::None),
        Some(v) => {
            let c = match quant {
                // The lowest representable value (max-pool padding).
                Some(q) => {
                    let c = l.m.constant(
                        &format!("{name}_value"),
                        vec![],
                        dtype,
                        vec![if dtype == TensorType::UINT8 { 0 } else { 0x80 }],
                    );
                    l.m.tensors[c as usize].quant = Some(q);
                    c
                }
                None => l.m.const_f32(&format!("{name}_value"), vec![], &[v]),
            };
            l.emit(Code::PADV2, vec![x, pads, c], vec![out], Options::None);
        }
    }
    out
}

fn pair(v: &Option<Vec<i64>>, default: i64) -> (i64, i64) {
    match v.as_deref() {
        Some([a, b]) => (*a, *b),
        _ => (default, default),
    }
}

fn conv(l: &mut Lowering, id: NodeId) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let Op::Conv { window, group } = &n.op else { return Ok(()) };
    let (x, w) = (
        n.input(0).ok_or_else(|| l.err("no input"))?,
        n.input(1).ok_or_else(|| l.err("no weight"))?,
    );
    if l.rank(x) != 4 {
        return Err(l.err("only 2-D convolutions are supported"));
    }
    let xd = l.dims(x)?;
    let (wd, wv) = l.const_f32(w).map_err(|_| l.err("weights must be constant"))?;
    let (cout, cin_g, kh, kw) = (wd[0], wd[1], wd[2], wd[3]);
    let groups = group.unwrap_or(1).max(1) as usize;
    let (s, d) = (pair(&window.strides, 1), pair(&window.dilations, 1));
    let (pad, explicit) = padding(l, window, (xd[2], xd[3]), (kh as i64, kw as i64), s, d)?;
    let mut xt = l.get(x, true)?;
    if let Some(p) = explicit {
        xt = pad_nhwc(l, xt, p, None);
    }
    let depthwise = groups > 1 && cin_g == 1 && groups == xd[1] as usize;
    // A grouped convolution is a CONV_2D whose filter has C_in/groups input channels (OHWI
    // [C_out, kh, kw, C_in/groups]): TFLite's kernels and XNNPACK derive the groups from the shapes.
    let (filter, b) = if l.float_mode {
        conv_float_params(l, &n, w, &wd, &wv, depthwise)?
    } else {
        conv_int8_params(l, &n, w, xt, depthwise)?
    };
    let (out, act) = output_with_act(l, id, true)?;
    let stride = (s.0 as i32, s.1 as i32);
    let dilation = (d.0 as i32, d.1 as i32);
    if depthwise {
        let multiplier = (cout / groups) as i32;
        l.emit(
            Code::DEPTHWISE_CONV_2D,
            vec![xt, filter, b],
            vec![out],
            Options::Depthwise { padding: pad, stride, dilation, multiplier, act },
        );
    } else if groups > 1 && l.split_grouped {
        split_groups(
            l,
            (xt, filter, b, out),
            groups,
            Options::Conv { padding: pad, stride, dilation, act },
        )?;
    } else {
        l.emit(
            Code::CONV_2D,
            vec![xt, filter, b],
            vec![out],
            Options::Conv { padding: pad, stride, dilation, act },
        );
    }
    Ok(())
}

/// A grouped convolution for a device without grouped CONV_2D: SPLIT the channels into the groups, one
/// CONV_2D per group with its slice of the filter (and of the per-channel scales and the bias), and a
/// CONCATENATION of the results (every group writes the output's quantization parameters).
fn split_groups(
    l: &mut Lowering,
    (xt, filter, b, out): (i32, i32, i32, i32),
    groups: usize,
    options: Options,
) -> Result<()> {
    let name = l.node.clone();
    let fs = l.m.shape(filter).to_vec();
    let (cout, per_in) = (fs[0] as usize, fs[3]);
    if cout % groups != 0 {
        return Err(l.err(format!("{cout} output channels do not split into {groups} groups")));
    }
    let per = cout / groups;
    let xs = l.m.shape(xt).to_vec();
    let (xdt, xq) = (l.m.tensors[xt as usize].dtype, l.m.tensors[xt as usize].quant.clone());
    let parts: Vec<i32> = (0..groups)
        .map(|j| {
            let t =
                l.m.tensor(&format!("{name}_group{j}_in"), vec![xs[0], xs[1], xs[2], per_in], xdt);
            l.m.tensors[t as usize].quant = xq.clone();
            t
        })
        .collect();
    let axis = l.m.const_i32(&format!("{name}_group_axis"), &[3]);
    l.m.tensors[axis as usize].shape = vec![];
    l.emit(
        Code::SPLIT,
        vec![axis, xt],
        parts.clone(),
        Options::Split { num_splits: groups as i32 },
    );
    let slice =
        |l: &mut Lowering, t: i32, j: usize, suffix: &str, shape: Vec<i32>| -> Result<i32> {
            let src = l.m.tensors[t as usize].clone();
            let data = src.data.clone().ok_or_else(|| l.err("grouped filter must be constant"))?;
            let rows = src.shape.first().copied().unwrap_or(1).max(1) as usize;
            let row_bytes = data.len() / rows;
            let bytes = data[j * per * row_bytes..(j + 1) * per * row_bytes].to_vec();
            let c = l.m.constant(&format!("{name}_group{j}_{suffix}"), shape, src.dtype, bytes);
            l.m.tensors[c as usize].keep_f32 = src.keep_f32;
            l.m.tensors[c as usize].quant = src.quant.map(|q| {
                let pick = |v: &Vec<f32>| {
                    if v.len() == rows {
                        v[j * per..(j + 1) * per].to_vec()
                    } else {
                        v.clone()
                    }
                };
                let pick_z = |v: &Vec<i64>| {
                    if v.len() == rows {
                        v[j * per..(j + 1) * per].to_vec()
                    } else {
                        v.clone()
                    }
                };
                Quant { scale: pick(&q.scale), zero_point: pick_z(&q.zero_point), axis: q.axis }
            });
            Ok(c)
        };
    let os = l.m.shape(out).to_vec();
    let (odt, oq) = (l.m.tensors[out as usize].dtype, l.m.tensors[out as usize].quant.clone());
    let mut outs = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let fj = slice(l, filter, j, "filter", vec![per as i32, fs[1], fs[2], per_in])?;
        let bj = slice(l, b, j, "bias", vec![per as i32])?;
        let oj =
            l.m.tensor(&format!("{name}_group{j}_out"), vec![os[0], os[1], os[2], per as i32], odt);
        l.m.tensors[oj as usize].quant = oq.clone();
        l.emit(Code::CONV_2D, vec![*part, fj, bj], vec![oj], options.clone());
        outs.push(oj);
    }
    l.emit(Code::CONCATENATION, outs, vec![out], Options::Concat { axis: 3, act: Fused::NONE });
    Ok(())
}

/// Float filter (OHWI, or 1HWC for depthwise) and bias.
fn conv_float_params(
    l: &mut Lowering,
    n: &kiln_compiler::ir::Node,
    w: ValueId,
    wd: &[usize],
    wv: &[f32],
    depthwise: bool,
) -> Result<(i32, i32)> {
    let (cout, cin_g, kh, kw) = (wd[0], wd[1], wd[2], wd[3]);
    let bias = match n.input(2) {
        Some(b) => l.const_f32(b)?.1,
        None => vec![0.0; cout],
    };
    let wname = l.g.value(w).name.clone();
    let filter = if !depthwise {
        l.m.const_f32(
            &wname,
            vec![cout as i32, kh as i32, kw as i32, cin_g as i32],
            &transpose_data(wv, wd, &TO_NHWC),
        )
    } else {
        // [C·m, 1, kh, kw] → [1, kh, kw, C·m]
        l.m.const_f32(
            &wname,
            vec![1, kh as i32, kw as i32, cout as i32],
            &transpose_data(wv, wd, &[1, 2, 3, 0]),
        )
    };
    let b = l.m.const_f32(&format!("{wname}_bias"), vec![cout as i32], &bias);
    l.m.tensors[filter as usize].keep_f32 = n.keeps_fp32_weights();
    Ok((filter, b))
}

/// int8 filter (per output channel: axis 0 of OHWI, axis 3 of depthwise 1HWC) and int32 bias.
fn conv_int8_params(
    l: &mut Lowering,
    n: &kiln_compiler::ir::Node,
    w: ValueId,
    xt: i32,
    depthwise: bool,
) -> Result<(i32, i32)> {
    let (wd, wq, ws) = super::int8::weight(l, w).ok_or_else(|| l.err("int8 weights expected"))?;
    let (cout, cin_g, kh, kw) = (wd[0], wd[1], wd[2], wd[3]);
    let wname = l.g.value(w).name.clone();
    let (shape, data, axis) = if depthwise {
        (vec![1, kh as i32, kw as i32, cout as i32], transpose_data(&wq, &wd, &[1, 2, 3, 0]), 3)
    } else {
        (
            vec![cout as i32, kh as i32, kw as i32, cin_g as i32],
            transpose_data(&wq, &wd, &TO_NHWC),
            0,
        )
    };
    let filter =
        l.m.constant(&wname, shape, TensorType::INT8, data.iter().map(|v| *v as u8).collect());
    l.m.tensors[filter as usize].quant =
        Some(Quant { scale: ws.clone(), zero_point: vec![0; ws.len()], axis });
    let b = int32_bias(l, n.input(2), xt, &ws, cout, &wname)?;
    Ok((filter, b))
}

/// The int32 bias behind the node's bias input, or zeros with scale s_in·s_w.
fn int32_bias(
    l: &mut Lowering,
    b: Option<ValueId>,
    xt: i32,
    ws: &[f32],
    cout: usize,
    wname: &str,
) -> Result<i32> {
    let s_in = l.m.tensors[xt as usize].quant.as_ref().map(|q| q.scale[0]).unwrap_or(1.0);
    let scales: Vec<f32> =
        (0..cout).map(|c| s_in * ws[if ws.len() == 1 { 0 } else { c }]).collect();
    // TFLite reads the int32 bias at scale s_in·s_w of the tensors the op actually reads. The quantizer's
    // s_in can differ (a pass-through op before this one keeps its own input's parameters), so the bias is
    // re-expressed at the actual scale from its real value — and a float bias (QAT exports) is quantized.
    let real: Vec<f64> = match b.map(|b| (b, super::int8::bias(l, b))) {
        Some((_, Some((q, s)))) => q
            .iter()
            .enumerate()
            .map(|(c, v)| *v as f64 * s[if s.len() == 1 { 0 } else { c }] as f64)
            .collect(),
        Some((b, None)) => l.const_f32(b)?.1.iter().map(|v| *v as f64).collect(),
        None => vec![0.0; cout],
    };
    if real.len() != cout {
        return Err(l.err(format!("bias has {} values for {cout} channels", real.len())));
    }
    let vals: Vec<i32> = real
        .iter()
        .zip(&scales)
        .map(|(v, s)| (v / *s as f64).round().clamp(i32::MIN as f64, i32::MAX as f64) as i32)
        .collect();
    let t = l.m.constant(
        &format!("{wname}_bias"),
        vec![cout as i32],
        TensorType::INT32,
        vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    l.m.tensors[t as usize].quant =
        Some(Quant { zero_point: vec![0; scales.len()], scale: scales, axis: 0 });
    Ok(t)
}

fn pool(l: &mut Lowering, id: NodeId) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let Op::Pool { kind, window, ceil_mode, count_include_pad, .. } = &n.op else { return Ok(()) };
    let x = n.input(0).ok_or_else(|| l.err("no input"))?;
    if l.rank(x) != 4 {
        return Err(l.err("only 2-D pooling is supported"));
    }
    let xd = l.dims(x)?;
    let k = pair(&window.kernel_shape, 1);
    let s = pair(&window.strides, 1);
    let (mut pad, mut explicit) = padding(l, window, (xd[2], xd[3]), k, s, (1, 1))?;
    if ceil_mode.unwrap_or(0) != 0 {
        // ceil_mode: pad the bottom/right so a VALID window yields the (already inferred) ceil output.
        let od = l.dims(n.output(0).ok_or_else(|| l.err("no output"))?)?;
        let p = explicit.unwrap_or(if pad == Padding::VALID {
            [0; 4]
        } else {
            return Err(l.err("ceil_mode with SAME padding is not supported"));
        });
        let extra_h = ((od[2] - 1) * s.0 + k.0 - xd[2] - p[0] - p[2]).max(0);
        let extra_w = ((od[3] - 1) * s.1 + k.1 - xd[3] - p[1] - p[3]).max(0);
        if extra_h + extra_w > 0 {
            if *kind == PoolKind::Average {
                return Err(l.err("AveragePool with ceil_mode has no TFLite lowering"));
            }
            explicit = Some([p[0], p[1], p[2] + extra_h, p[3] + extra_w]);
            pad = Padding::VALID;
        }
    }
    let mut xt = l.get(x, true)?;
    let mut padding_mode = pad;
    let include_pad = count_include_pad.unwrap_or(0) != 0;
    // An average over a zero-padded window: AVERAGE_POOL_2D (VALID) over PAD(0) counts the padding
    // (count_include_pad=1); without it, each output is rescaled by k_h·k_w / (window cells inside the
    // input), a constant map. SAME already counts only the cells inside.
    let mut rescale: Option<Vec<f32>> = None;
    if *kind == PoolKind::Average && (explicit.is_some() || (pad == Padding::SAME && include_pad)) {
        if l.int8 && !l.float_mode {
            return Err(l.err("int8 AveragePool with explicit padding has no TFLite lowering"));
        }
        let p = match explicit {
            Some(p) => p,
            None => {
                // The SAME pads, made explicit.
                let same = |i: i64, k: i64, s: i64| {
                    let total = (((i + s - 1) / s - 1) * s + k - i).max(0);
                    (total / 2, total - total / 2)
                };
                let (h0, h1) = same(xd[2], k.0, s.0);
                let (w0, w1) = same(xd[3], k.1, s.1);
                [h0, w0, h1, w1]
            }
        };
        if !include_pad {
            let od = l.dims(n.output(0).ok_or_else(|| l.err("no output"))?)?;
            let inside = |o: i64, k: i64, s: i64, before: i64, size: i64| {
                let start = o * s - before;
                (start.max(0)..(start + k).min(size)).count() as f32
            };
            let mut m = Vec::with_capacity((od[2] * od[3]) as usize);
            for i in 0..od[2] {
                for j in 0..od[3] {
                    let cells = inside(i, k.0, s.0, p[0], xd[2]) * inside(j, k.1, s.1, p[1], xd[3]);
                    m.push((k.0 * k.1) as f32 / cells.max(1.0));
                }
            }
            rescale = Some(m);
        }
        xt = pad_nhwc(l, xt, p, None);
        padding_mode = Padding::VALID;
    } else if let Some(p) = explicit {
        xt = pad_nhwc(l, xt, p, Some(f32::MIN));
        padding_mode = Padding::VALID;
    }
    let (out, act) = output_with_act(l, id, true)?;
    let code = if *kind == PoolKind::Max { Code::MAX_POOL_2D } else { Code::AVERAGE_POOL_2D };
    let name = l.node.clone();
    let shape = l.m.shape(out).to_vec();
    // With a count map the pool's result is rescaled by a MUL, which carries the activation.
    let (dst, pool_act) = match rescale {
        Some(_) => (
            l.m.tensor(&format!("{name}_sum_like"), shape.clone(), TensorType::FLOAT32),
            Fused::NONE,
        ),
        None => (out, act),
    };
    l.emit(
        code,
        vec![xt],
        vec![dst],
        Options::Pool {
            padding: padding_mode,
            stride: (s.0 as i32, s.1 as i32),
            filter: (k.0 as i32, k.1 as i32),
            act: pool_act,
        },
    );
    if let Some(m) = rescale {
        let mt = l.m.const_f32(&format!("{name}_count_scale"), vec![1, shape[1], shape[2], 1], &m);
        l.emit(Code::MUL, vec![dst, mt], vec![out], Options::Binary { act });
    }
    Ok(())
}

/// MEAN over `axes` (ONNX order) of `x`, keeping dims.
fn mean(l: &mut Lowering, id: NodeId, x: ValueId, axes: &[i64], keep: bool) -> Result<()> {
    let rank = l.rank(x) as i64;
    let nhwc = l.nhwc(x) && keep;
    let xt = l.get(x, nhwc)?;
    let mut ax: Vec<i32> = axes
        .iter()
        .map(|a| if *a < 0 { a + rank } else { *a } as usize)
        .map(|a| if nhwc { TO_NCHW[a] } else { a } as i32)
        .collect();
    ax.sort();
    let axes_t = l.m.const_i32("mean_axes", &ax);
    let (out, act) = output_with_act(l, id, nhwc)?;
    if act != Fused::NONE {
        return Err(l.err("a fused activation on a reduction is not supported"));
    }
    l.emit(Code::MEAN, vec![xt, axes_t], vec![out], Options::Reducer { keep_dims: keep });
    Ok(())
}

fn fully_connected(l: &mut Lowering, id: NodeId) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let (a, b) = (
        n.input(0).ok_or_else(|| l.err("no input"))?,
        n.input(1).ok_or_else(|| l.err("no input"))?,
    );
    let (trans_a, trans_b, alpha, beta) = match &n.op {
        Op::Gemm { alpha, beta, trans_a, trans_b } => (
            trans_a.unwrap_or(0) != 0,
            trans_b.unwrap_or(0) != 0,
            alpha.unwrap_or(1.0),
            beta.unwrap_or(1.0),
        ),
        _ => (false, false, 1.0, 1.0),
    };
    if trans_a {
        return Err(l.err("Gemm with transA has no lowering"));
    }
    let at = l.get(a, false)?;
    if !l.is_const(b) {
        if matches!(n.op, Op::Gemm { .. }) {
            return Err(l.err("Gemm with a non-constant B has no lowering"));
        }
        let bt = l.get(b, false)?;
        let (out, act) = output_with_act(l, id, false)?;
        if act != Fused::NONE {
            return Err(l.err("a fused activation on BatchMatMul is not supported"));
        }
        l.emit(
            Code::BATCH_MATMUL,
            vec![at, bt],
            vec![out],
            Options::BatchMatMul { adj_x: false, adj_y: false },
        );
        return Ok(());
    }
    if !l.float_mode {
        let (bd, bq, ws) =
            super::int8::weight(l, b).ok_or_else(|| l.err("int8 weights expected"))?;
        let (w, (o, i)) = if trans_b {
            (bq, (bd[0], bd[1]))
        } else {
            (transpose_data(&bq, &bd, &[1, 0]), (bd[1], bd[0]))
        };
        let name = l.g.value(b).name.clone();
        let wt = l.m.constant(
            &name,
            vec![o as i32, i as i32],
            TensorType::INT8,
            w.iter().map(|v| *v as u8).collect(),
        );
        l.m.tensors[wt as usize].quant =
            Some(Quant { scale: ws.clone(), zero_point: vec![0; ws.len()], axis: 0 });
        let bt = int32_bias(l, n.input(2), at, &ws, o, &name)?;
        let keep = l.rank(a) > 2;
        let (out, act) = output_with_act(l, id, false)?;
        l.emit(
            Code::FULLY_CONNECTED,
            vec![at, wt, bt],
            vec![out],
            Options::FullyConnected { act, keep_num_dims: keep },
        );
        return Ok(());
    }
    let (bd, bv) = l.const_f32(b)?;
    if bd.len() != 2 {
        return Err(l.err("MatMul with a constant of rank ≠ 2 has no lowering"));
    }
    // FULLY_CONNECTED wants [out, in].
    let (w, (o, i)) = if trans_b {
        (bv, (bd[0], bd[1]))
    } else {
        (transpose_data(&bv, &bd, &[1, 0]), (bd[1], bd[0]))
    };
    let w: Vec<f32> = w.iter().map(|x| x * alpha).collect();
    let bias: Vec<f32> = match n.input(2) {
        Some(c) => {
            let (cd, cv) = l.const_f32(c).map_err(|_| l.err("Gemm C must be constant"))?;
            let count: usize = cd.iter().product();
            if count == o {
                cv.iter().map(|x| x * beta).collect()
            } else if count == 1 {
                vec![cv[0] * beta; o]
            } else {
                return Err(l.err("Gemm C must broadcast along the output features"));
            }
        }
        None => vec![0.0; o],
    };
    let name = l.g.value(b).name.clone();
    let wt = l.m.const_f32(&name, vec![o as i32, i as i32], &w);
    let bt = l.m.const_f32(&format!("{name}_bias"), vec![o as i32], &bias);
    l.m.tensors[wt as usize].keep_f32 = n.keeps_fp32_weights();
    let keep = l.rank(a) > 2;
    let (out, act) = output_with_act(l, id, false)?;
    l.emit(
        Code::FULLY_CONNECTED,
        vec![at, wt, bt],
        vec![out],
        Options::FullyConnected { act, keep_num_dims: keep },
    );
    Ok(())
}

fn binary(l: &mut Lowering, id: NodeId, op: BinOp) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let out_v = n.output(0).ok_or_else(|| l.err("no output"))?;
    let rank = l.rank(out_v);
    let ins: Vec<ValueId> = n.inputs.iter().flatten().copied().collect();
    let (ts, nhwc) = l.elementwise_operands(&ins, rank, &[])?;
    let (out, act) = output_with_act(l, id, nhwc)?;
    let code = match op {
        BinOp::Add => Code::ADD,
        BinOp::Sub => Code::SUB,
        BinOp::Mul => Code::MUL,
        BinOp::Div => Code::DIV,
        BinOp::Pow => Code::POW,
    };
    let options = if op == BinOp::Pow { Options::None } else { Options::Binary { act } };
    if op == BinOp::Pow && act != Fused::NONE {
        return Err(l.err("a fused activation on Pow is not supported"));
    }
    l.emit(code, ts, vec![out], options);
    Ok(())
}

/// Element-wise op that keeps its input's layout.
pub fn unary(
    l: &mut Lowering,
    id: NodeId,
    f: impl FnOnce(&mut Lowering, i32, i32) -> Result<()>,
) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let x = n.input(0).ok_or_else(|| l.err("no input"))?;
    let nhwc = l.nhwc(x);
    let xt = l.get(x, nhwc)?;
    let (out, act) = output_with_act(l, id, nhwc)?;
    if act == Fused::NONE {
        return f(l, xt, out);
    }
    // A fusable activation on an op without fusion: apply it after.
    let mid = l.temp_like(out, "pre");
    f(l, xt, mid)?;
    let a = n.act.clone().ok_or_else(|| l.err("activation"))?;
    activation(l, &a, mid, out)
}

/// The one node reading `v`, looking through the Q/DQ pair an int8 model puts on it.
fn single_reader(l: &Lowering, v: ValueId) -> Option<NodeId> {
    let c = l.g.consumers(v);
    if c.len() != 1 || l.g.is_output(v) {
        return None;
    }
    let n = c[0].0;
    if l.skip.contains(&n) && matches!(l.g.nodes[n].op, Op::QuantizeLinear { .. }) {
        let dq = l.g.consumers(l.g.nodes[n].output(0)?);
        if dq.len() != 1 {
            return None;
        }
        let dc = l.g.consumers(l.g.nodes[dq[0].0].output(0)?);
        return (dc.len() == 1).then(|| dc[0].0);
    }
    Some(n)
}

/// A detection head's `x.view(N, A, K, H, W).permute(...)` on a channel-last map: the Reshape that splits
/// the channels into (A, K) is a RESHAPE of the stored [N, H, W, A·K] to [N, H, W, A, K] (the logical
/// tensor permuted by [0, 3, 4, 1, 2]), and the model's Transpose becomes the composed permutation, none
/// at all for torchvision's SSD/RetinaNet/FCOS heads (`permute(0, 3, 4, 1, 2)`). Returns the Transpose
/// node and the permutation still needed, when `id` starts that pattern.
fn split_channels(l: &Lowering, id: NodeId) -> Option<(NodeId, Vec<usize>)> {
    let (t, p) = split_then_transpose(l, id)?;
    // Stored dim i is logical dim Q[i]; output dim i is logical dim p[i] = stored dim Q⁻¹[p[i]].
    const QINV: [usize; 5] = [0, 3, 4, 1, 2];
    let r: Vec<usize> = p.iter().map(|a| QINV.get(*a as usize).copied()).collect::<Option<_>>()?;
    Some((t, r))
}

/// `id` is a Reshape splitting the channels of a channel-last [N, C, H, W] into [N, a, b, H, W], read by
/// one Transpose alone: that Transpose and its permutation (what the channel shuffle and the detection
/// head patterns start from).
fn split_then_transpose(l: &Lowering, id: NodeId) -> Option<(NodeId, Vec<i64>)> {
    let n = &l.g.nodes[id];
    let x = n.input(0)?;
    let (xd, yd) = (l.dims(x).ok()?, l.dims(n.output(0)?).ok()?);
    if !l.nhwc(x)
        || xd.len() != 4
        || yd.len() != 5
        || yd[0] != xd[0]
        || yd[1] * yd[2] != xd[1]
        || yd[3..] != xd[2..]
    {
        return None;
    }
    let t = single_reader(l, n.output(0)?)?;
    let tn = &l.g.nodes[t];
    match &tn.op {
        Op::Transpose { perm: Some(p) } if tn.act.is_none() && p.len() == 5 => Some((t, p.clone())),
        _ => None,
    }
}

fn split_channels_nhwc(l: &mut Lowering, id: NodeId, t: NodeId, r: &[usize]) -> Result<()> {
    let x = l.g.nodes[id].input(0).ok_or_else(|| l.err("no input"))?;
    let xt = l.get(x, true)?;
    let s = l.m.shape(xt).to_vec();
    let yd = l.dims(l.g.nodes[id].output(0).ok_or_else(|| l.err("no output"))?)?;
    let split = vec![s[0], s[1], s[2], yd[1] as i32, yd[2] as i32];
    let y = l.g.nodes[t].output(0).ok_or_else(|| l.err("no output"))?;
    let y = l.resolve(y);
    if let Some(p) = l.qp.get(&l.resolve(x)).cloned() {
        l.qp.insert(y, p);
    }
    let out = l.define(y, false)?;
    let name = l.node.clone();
    let identity = r.iter().enumerate().all(|(i, v)| i == *v);
    let st = l.m.const_i32(&format!("{name}_split"), &split);
    if identity {
        l.emit(Code::RESHAPE, vec![xt, st], vec![out], Options::Reshape { shape: split });
    } else {
        let (dt, q) = (l.m.tensors[xt as usize].dtype, l.m.tensors[xt as usize].quant.clone());
        let mid = l.m.tensor(&format!("{name}_split"), split.clone(), dt);
        l.m.tensors[mid as usize].quant = q;
        l.emit(Code::RESHAPE, vec![xt, st], vec![mid], Options::Reshape { shape: split });
        let pt = l
            .m
            .const_i32(&format!("{name}_perm"), &r.iter().map(|v| *v as i32).collect::<Vec<_>>());
        // The model's own Transpose, what remains of it.
        let keep = std::mem::replace(&mut l.node, l.g.nodes[t].name.clone());
        l.emit(Code::TRANSPOSE, vec![mid, pt], vec![out], Options::None);
        l.node = keep;
    }
    l.skip.insert(t);
    Ok(())
}

/// ShuffleNet's channel shuffle, Reshape [N,C,H,W]→[N,g,C/g,H,W], Transpose [0,2,1,3,4], Reshape back to
/// [N,C,H,W], done channel-last: Reshape [N,H,W,g,C/g], Transpose [0,1,2,4,3], Reshape [N,H,W,C].
/// Returns the three nodes when `id` starts that pattern on a channel-last input.
fn channel_shuffle(l: &Lowering, id: NodeId) -> Option<(NodeId, NodeId, i64)> {
    let (t, p) = split_then_transpose(l, id)?;
    if p != [0, 2, 1, 3, 4] {
        return None;
    }
    let n = &l.g.nodes[id];
    let (xd, yd) = (l.dims(n.input(0)?).ok()?, l.dims(n.output(0)?).ok()?);
    let r2 = single_reader(l, l.g.nodes[t].output(0)?)?;
    let rn = &l.g.nodes[r2];
    if !matches!(rn.op, Op::Reshape { .. }) || l.dims(rn.output(0)?).ok()? != xd || rn.act.is_some()
    {
        return None;
    }
    Some((t, r2, yd[1]))
}

fn shuffle_nhwc(l: &mut Lowering, id: NodeId, t: NodeId, r2: NodeId, groups: i64) -> Result<()> {
    let x = l.g.nodes[id].input(0).ok_or_else(|| l.err("no input"))?;
    let xt = l.get(x, true)?;
    let s = l.m.shape(xt).to_vec();
    let g = groups as i32;
    let name = l.node.clone();
    let split = vec![s[0], s[1], s[2], g, s[3] / g];
    let swapped = vec![s[0], s[1], s[2], s[3] / g, g];
    let (dt, q) = (l.m.tensors[xt as usize].dtype, l.m.tensors[xt as usize].quant.clone());
    let a = l.m.tensor(&format!("{name}_groups"), split.clone(), dt);
    let b = l.m.tensor(&format!("{name}_shuffled"), swapped, dt);
    l.m.tensors[a as usize].quant = q.clone();
    l.m.tensors[b as usize].quant = q;
    let sa = l.m.const_i32(&format!("{name}_shape"), &split);
    let perm = l.m.const_i32(&format!("{name}_perm"), &[0, 1, 2, 4, 3]);
    l.emit(Code::RESHAPE, vec![xt, sa], vec![a], Options::Reshape { shape: split });
    l.emit(Code::TRANSPOSE, vec![a, perm], vec![b], Options::None);
    let y = l.g.nodes[r2].output(0).ok_or_else(|| l.err("no output"))?;
    let y = l.resolve(y);
    if let Some(p) = l.qp.get(&l.resolve(x)).cloned() {
        // The shuffle moves int8 data: the output keeps the input's parameters.
        l.qp.insert(y, p);
    }
    let out = l.define(y, true)?;
    let shape = l.m.shape(out).to_vec();
    let so = l.m.const_i32(&format!("{name}_back"), &shape);
    l.emit(Code::RESHAPE, vec![b, so], vec![out], Options::Reshape { shape });
    l.skip.extend([t, r2]);
    Ok(())
}

fn reshape_to_output(l: &mut Lowering, id: NodeId) -> Result<()> {
    if let Some((t, r2, g)) = channel_shuffle(l, id) {
        return shuffle_nhwc(l, id, t, r2, g);
    }
    if let Some((t, r)) = split_channels(l, id) {
        return split_channels_nhwc(l, id, t, &r);
    }
    let n = l.g.nodes[id].clone();
    let x = n.input(0).ok_or_else(|| l.err("no input"))?;
    let out_v = n.output(0).ok_or_else(|| l.err("no output"))?;
    // Channel-last and channel-first hold the same bytes when C = 1 or H·W = 1: no transpose needed.
    let xd = l.dims(x)?;
    let same_bytes = l.nhwc(x) && xd.len() == 4 && (xd[1] == 1 || xd[2] * xd[3] == 1);
    let xt = if same_bytes { l.get(x, true)? } else { l.get(x, false)? };
    let out = l.define(out_v, false)?;
    let shape = l.m.shape(out).to_vec();
    let st = l.m.const_i32("reshape_shape", &shape);
    l.emit(Code::RESHAPE, vec![xt, st], vec![out], Options::Reshape { shape });
    if n.act.is_some() {
        return Err(l.err("a fused activation on Reshape is not supported"));
    }
    Ok(())
}

fn axis_of(l: &Lowering, v: ValueId, axis: i64) -> (usize, bool) {
    let rank = l.rank(v) as i64;
    let a = if axis < 0 { axis + rank } else { axis } as usize;
    let nhwc = l.nhwc(v) && rank == 4;
    (if nhwc { TO_NCHW[a] } else { a }, nhwc)
}

/// SOFTMAX normalizes over the last stored axis. Over ONNX axis 1 of a rank-4 tensor that is the channel
/// axis, last when channel-last: the input is taken channel-last (a convolution reading the result wants
/// that layout too). Any other axis is moved last by a TRANSPOSE and back.
fn softmax(l: &mut Lowering, id: NodeId, axis: i64) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let x = n.input(0).ok_or_else(|| l.err("no input"))?;
    let rank = l.rank(x);
    let a = if axis < 0 { axis + rank as i64 } else { axis } as usize;
    let stored_last = |l: &Lowering| {
        let (ax, _) = axis_of(l, x, a as i64);
        ax + 1 == rank
    };
    let emit = |l: &mut Lowering, x: i32, y: i32| {
        l.emit(Code::SOFTMAX, vec![x], vec![y], Options::Softmax { beta: 1.0 });
        Ok(())
    };
    if stored_last(l) {
        return unary(l, id, emit);
    }
    if rank == 4 && a == 1 {
        let xt = l.get(x, true)?;
        let (out, act) = output_with_act(l, id, true)?;
        if act != Fused::NONE {
            return Err(l.err("a fused activation on Softmax is not supported"));
        }
        return emit(l, xt, out);
    }
    // Move the axis last (in the stored order), normalize, move it back.
    let nhwc = l.nhwc(x);
    let xt = l.get(x, nhwc)?;
    let (ax, _) = axis_of(l, x, a as i64);
    let mut perm: Vec<usize> = (0..rank).filter(|d| *d != ax).collect();
    perm.push(ax);
    let mut inv = vec![0usize; rank];
    for (i, p) in perm.iter().enumerate() {
        inv[*p] = i;
    }
    let shape = l.m.shape(xt).to_vec();
    let moved_shape: Vec<i32> = perm.iter().map(|p| shape[*p]).collect();
    let name = l.node.clone();
    let (dt, q) = (l.m.tensors[xt as usize].dtype, l.m.tensors[xt as usize].quant.clone());
    let moved = l.m.tensor(&format!("{name}_axis_last"), moved_shape.clone(), dt);
    l.m.tensors[moved as usize].quant = q;
    let normed = l.m.tensor(&format!("{name}_normalized"), moved_shape, dt);
    let pt =
        l.m.const_i32(&format!("{name}_perm"), &perm.iter().map(|p| *p as i32).collect::<Vec<_>>());
    let it = l
        .m
        .const_i32(&format!("{name}_inverse"), &inv.iter().map(|p| *p as i32).collect::<Vec<_>>());
    let (out, act) = output_with_act(l, id, nhwc)?;
    if act != Fused::NONE {
        return Err(l.err("a fused activation on Softmax is not supported"));
    }
    l.m.tensors[normed as usize].quant = l.m.tensors[out as usize].quant.clone();
    l.emit(Code::TRANSPOSE, vec![xt, pt], vec![moved], Options::None);
    emit(l, moved, normed)?;
    l.emit(Code::TRANSPOSE, vec![normed, it], vec![out], Options::None);
    Ok(())
}

pub fn lower(l: &mut Lowering, id: NodeId) -> Result<()> {
    let n = l.g.nodes[id].clone();
    match &n.op {
        Op::Conv { .. } => conv(l, id),
        Op::Pool { .. } => pool(l, id),
        Op::GlobalAveragePool => {
            mean(l, id, n.input(0).ok_or_else(|| l.err("no input"))?, &[2, 3], true)
        }
        Op::Gemm { .. } | Op::MatMul => fully_connected(l, id),
        Op::Binary(b) => binary(l, id, *b),
        Op::Act(a) => {
            let a = a.clone();
            unary(l, id, move |l, x, y| activation(l, &a, x, y))
        }
        Op::Identity => {
            let x = n.input(0).ok_or_else(|| l.err("no input"))?;
            let nhwc = l.nhwc(x);
            let t = l.get(x, nhwc)?;
            if let Some(o) = n.output(0) {
                if l.g.is_output(o) {
                    let out = l.define(o, nhwc)?;
                    let shape = l.m.shape(out).to_vec();
                    l.emit(Code::RESHAPE, vec![t], vec![out], Options::Reshape { shape });
                } else {
                    l.alias(o, t, nhwc);
                }
            }
            Ok(())
        }
        Op::Flatten { .. } | Op::Reshape { .. } => reshape_to_output(l, id),
        Op::Generic { op_type, .. } if op_type == "Squeeze" || op_type == "Unsqueeze" => {
            reshape_to_output(l, id)
        }
        Op::Concat { axis } => {
            let ins: Vec<ValueId> = n.inputs.iter().flatten().copied().collect();
            let first = *ins.first().ok_or_else(|| l.err("no inputs"))?;
            let (ax, nhwc) = axis_of(l, first, *axis);
            let mut ts = Vec::new();
            for v in &ins {
                ts.push(if l.is_const(*v) {
                    l.broadcast_const(*v, 4, nhwc)?
                } else {
                    l.get(*v, nhwc)?
                });
            }
            let (out, act) = output_with_act(l, id, nhwc)?;
            // Integer concatenation needs one set of parameters: requantize inputs to the output's.
            if let Some(q) = l.m.tensors[out as usize].quant.clone() {
                for t in ts.iter_mut() {
                    if l.m.tensors[*t as usize].quant.as_ref() != Some(&q) {
                        let r = l.temp_like(*t, "requantized");
                        l.m.tensors[r as usize].quant = Some(q.clone());
                        l.emit(Code::QUANTIZE, vec![*t], vec![r], Options::None);
                        *t = r;
                    }
                }
            }
            l.emit(Code::CONCATENATION, ts, vec![out], Options::Concat { axis: ax as i32, act });
            Ok(())
        }
        Op::Transpose { perm } => {
            let x = n.input(0).ok_or_else(|| l.err("no input"))?;
            let rank = l.rank(x);
            let perm: Vec<usize> = perm
                .clone()
                .map(|p| p.iter().map(|v| *v as usize).collect())
                .unwrap_or_else(|| (0..rank).rev().collect());
            let nhwc = l.nhwc(x);
            let xt = l.get(x, nhwc)?;
            // Output dim i is logical input dim perm[i], stored at position TO_NCHW[perm[i]] when channel-last.
            let p: Vec<i32> =
                perm.iter().map(|a| if nhwc { TO_NCHW[*a] } else { *a } as i32).collect();
            let pt = l.m.const_i32("transpose_perm", &p);
            let out = l.define(n.output(0).ok_or_else(|| l.err("no output"))?, false)?;
            l.emit(Code::TRANSPOSE, vec![xt, pt], vec![out], Options::None);
            Ok(())
        }
        Op::Softmax { axis } => softmax(l, id, axis.unwrap_or(-1)),
        Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. } => super::seq::qdq(l, id),
        Op::Attention { scale } => super::seq::attention(l, id, *scale),
        Op::Generic { op_type, .. } if op_type == "LayerNormalization" => {
            super::seq::layer_norm(l, id)
        }
        Op::Generic { op_type, .. } if op_type == "Gather" => super::seq::gather(l, id),
        Op::Generic { op_type, .. } if op_type == "LSTM" => {
            if super::rnn::lstm_needs_unrolling(l, id) {
                super::rnn::lstm(l, id)
            } else {
                super::seq::lstm(l, id)
            }
        }
        Op::Generic { op_type, .. } if op_type == "GRU" => super::rnn::gru(l, id),
        Op::Generic { op_type, .. } if op_type == "Resize" => {
            let legacy = l.opset < 11;
            super::resize::resize(l, id, legacy)
        }
        Op::Generic { op_type, .. } if op_type == "Upsample" => super::resize::resize(l, id, true),
        Op::Generic { op_type, .. } => generic(l, id, op_type),
        other => Err(l.err(format!("the tflite backend has no lowering for {}", other.op_type()))),
    }
}

fn generic(l: &mut Lowering, id: NodeId, op_type: &str) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let simple = match op_type {
        "Sqrt" => Some(Code::SQRT),
        "Exp" => Some(Code::EXP),
        "Neg" => Some(Code::NEG),
        "Abs" => Some(Code::ABS),
        "Log" => Some(Code::LOG),
        "Reciprocal" => None,
        _ => None,
    };
    if let Some(code) = simple {
        return unary(l, id, move |l, x, y| {
            l.emit(code, vec![x], vec![y], Options::None);
            Ok(())
        });
    }
    match op_type {
        "ReduceMean" => {
            let x = n.input(0).ok_or_else(|| l.err("no input"))?;
            let axes = match n.input(1) {
                Some(a) => l.const_i64(a)?,
                None => n.op.attr_ints("axes").unwrap_or_else(|| (0..l.rank(x) as i64).collect()),
            };
            let keep = n.op.attr_int("keepdims").unwrap_or(1) != 0;
            mean(l, id, x, &axes, keep)
        }
        "Max" | "Min" => {
            let code = if op_type == "Max" { Code::MAXIMUM } else { Code::MINIMUM };
            let (a, b) = (
                n.input(0).ok_or_else(|| l.err("no input"))?,
                n.input(1).ok_or_else(|| l.err("Max/Min of one input"))?,
            );
            let rank = l.rank(n.output(0).ok_or_else(|| l.err("no output"))?);
            let nhwc = l.nhwc(a) && rank == 4 && (l.is_const(b) || l.nhwc(b));
            let at = l.get(a, nhwc)?;
            let bt =
                if l.is_const(b) { l.broadcast_const(b, rank, nhwc)? } else { l.get(b, nhwc)? };
            let (out, _) = output_with_act(l, id, nhwc)?;
            l.emit(code, vec![at, bt], vec![out], Options::None);
            Ok(())
        }
        "Split" => {
            let x = n.input(0).ok_or_else(|| l.err("no input"))?;
            let (ax, nhwc) = axis_of(l, x, n.op.attr_int("axis").unwrap_or(0));
            let xt = l.get(x, nhwc)?;
            let outs: Vec<ValueId> = n.outputs.iter().flatten().copied().collect();
            let mut sizes = Vec::new();
            let mut ts = Vec::new();
            for o in &outs {
                let t = l.define(*o, nhwc)?;
                sizes.push(l.m.shape(t)[ax]);
                ts.push(t);
            }
            let axis_t = l.m.const_i32("split_axis", &[ax as i32]);
            l.m.tensors[axis_t as usize].shape = vec![];
            if sizes.iter().all(|s| *s == sizes[0]) {
                // Equal parts: SPLIT, which XNNPACK delegates (SPLIT_V it does not).
                l.emit(
                    Code::SPLIT,
                    vec![axis_t, xt],
                    ts,
                    Options::Split { num_splits: outs.len() as i32 },
                );
            } else {
                let st = l.m.const_i32("split_sizes", &sizes);
                l.emit(
                    Code::SPLIT_V,
                    vec![xt, st, axis_t],
                    ts,
                    Options::SplitV { num_splits: outs.len() as i32 },
                );
            }
            Ok(())
        }
        "Slice" => {
            let x = n.input(0).ok_or_else(|| l.err("no input"))?;
            let dims = l.dims(x)?;
            let rank = dims.len();
            let starts = l.const_i64(n.input(1).ok_or_else(|| l.err("starts"))?)?;
            let ends = l.const_i64(n.input(2).ok_or_else(|| l.err("ends"))?)?;
            let axes = match n.input(3) {
                Some(a) => l.const_i64(a)?,
                None => (0..starts.len() as i64).collect(),
            };
            let steps = match n.input(4) {
                Some(s) => l.const_i64(s)?,
                None => vec![1; starts.len()],
            };
            let nhwc = l.nhwc(x);
            let (mut b, mut e, mut s) = (
                vec![0i32; rank],
                dims.iter().map(|d| *d as i32).collect::<Vec<_>>(),
                vec![1i32; rank],
            );
            for (k, a) in axes.iter().enumerate() {
                let a = if *a < 0 { a + rank as i64 } else { *a } as usize;
                let d = dims[a];
                let clamp = |v: i64, step: i64| {
                    let v = if v < 0 { v + d } else { v };
                    if step > 0 {
                        v.clamp(0, d)
                    } else {
                        v.clamp(-1, d - 1)
                    }
                };
                b[a] = clamp(starts[k], steps[k]) as i32;
                e[a] = clamp(ends[k], steps[k]) as i32;
                s[a] = steps[k] as i32;
            }
            let (b, e, s) = if nhwc && rank == 4 {
                (permute(&b, &TO_NHWC), permute(&e, &TO_NHWC), permute(&s, &TO_NHWC))
            } else {
                (b, e, s)
            };
            // A negative step clamped to end −1 runs to index 0: TFLite reads −1 as the last element.
            let end_mask: i32 = (0..rank).filter(|a| s[*a] < 0 && e[*a] < 0).map(|a| 1 << a).sum();
            let xt = l.get(x, nhwc)?;
            let (bt, et, stt) = (
                l.m.const_i32("slice_begin", &b),
                l.m.const_i32("slice_end", &e),
                l.m.const_i32("slice_strides", &s),
            );
            let (out, _) = output_with_act(l, id, nhwc)?;
            let options = if end_mask == 0 {
                Options::StridedSlice
            } else {
                Options::StridedSliceMasked { end_mask }
            };
            l.emit(Code::STRIDED_SLICE, vec![xt, bt, et, stt], vec![out], options);
            Ok(())
        }
        "Pad" => super::shape_ops::pad(l, id),
        "ConvTranspose" => super::tconv::conv_transpose(l, id),
        "Tile" => super::shape_ops::tile(l, id),
        "Expand" => super::shape_ops::expand(l, id),
        "Where" => super::shape_ops::where_(l, id),
        "Cast" => super::shape_ops::cast(l, id),
        "Greater" | "Less" | "Equal" | "GreaterOrEqual" | "LessOrEqual" => {
            super::shape_ops::compare(l, id, op_type)
        }
        "ReduceMax" | "ReduceMin" | "ReduceSum" | "ReduceProd" | "ArgMax" | "ArgMin" => {
            super::shape_ops::reduce(l, id, op_type)
        }
        _ => Err(l.err(format!("the tflite backend has no lowering for {op_type}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_compiler::ir::Graph;

    fn window(pads: [i64; 4]) -> Window {
        Window { pads: Some(pads.to_vec()), ..Default::default() }
    }

    #[test]
    fn explicit_pads_map_to_same_valid_or_pad() {
        let g = Graph::default();
        let l = Lowering::new(&g);
        // 3x3 stride 1 with pads 1: TensorFlow's SAME.
        assert_eq!(
            padding(&l, &window([1, 1, 1, 1]), (32, 32), (3, 3), (1, 1), (1, 1)).ok(),
            Some((Padding::SAME, None))
        );
        // 3x3 stride 2 on an even size: SAME pads (0, 1), ONNX (1, 1) — an explicit PAD is needed.
        assert_eq!(
            padding(&l, &window([1, 1, 1, 1]), (224, 224), (3, 3), (2, 2), (1, 1)).ok(),
            Some((Padding::VALID, Some([1, 1, 1, 1])))
        );
        // ... while on an odd size SAME is (1, 1).
        assert_eq!(
            padding(&l, &window([1, 1, 1, 1]), (225, 225), (3, 3), (2, 2), (1, 1)).ok(),
            Some((Padding::SAME, None))
        );
        assert_eq!(
            padding(&l, &window([0, 0, 0, 0]), (8, 8), (3, 3), (1, 1), (1, 1)).ok(),
            Some((Padding::VALID, None))
        );
        let lower = Window { auto_pad: Some("SAME_LOWER".into()), ..Default::default() };
        assert!(padding(&l, &lower, (8, 8), (2, 2), (1, 1), (1, 1)).is_err());
    }
}
