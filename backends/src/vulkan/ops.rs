//! One lowering per IR op onto the kernels: Conv (any group/stride/pad/dilation, 1-D and 2-D), Gemm,
//! MatMul, Attention, element-wise ops and activations, BatchNormalization, pooling, reductions, Softmax,
//! LogSoftmax, LayerNormalization, Gather, Resize, Q/DQ, and the data movers (Transpose, Concat, Split,
//! Slice, Pad, Expand, Tile) on the strided copy kernel; views alias their input. An op with no kernel is
//! an error naming the node and op, so the target fails loudly instead of emitting a wrong bundle.
use kiln_compiler::ir::{Act, AttrValue, Attribute, BinOp, NodeId, Op, PoolKind, ValueId, Window};
use kiln_compiler::Result;

use super::kernels::{Kernel, Spec};
use super::lower::{act_words, bstrides, strides, Addr, Lowerer, Word};

const NONE: Word = Word::U(u32::MAX);
const MAX_RANK: usize = 6;

fn at(a: Addr) -> Word {
    Word::At(a, 0)
}

fn u(x: u64) -> Word {
    Word::U(x as u32)
}

/// Pad a per-axis list to 6 words.
fn six(v: impl IntoIterator<Item = Word>) -> Vec<Word> {
    let mut w: Vec<Word> = v.into_iter().collect();
    w.resize(MAX_RANK, Word::U(0));
    w
}

fn attr<'a>(attrs: &'a [Attribute], name: &str) -> Option<&'a AttrValue> {
    attrs.iter().find(|a| a.name == name).map(|a| &a.value)
}

fn attr_int(attrs: &[Attribute], name: &str) -> Option<i64> {
    match attr(attrs, name) {
        Some(AttrValue::Int(i)) => Some(*i),
        _ => None,
    }
}

fn attr_ints(attrs: &[Attribute], name: &str) -> Option<Vec<i64>> {
    match attr(attrs, name) {
        Some(AttrValue::Ints(i)) => Some(i.clone()),
        _ => None,
    }
}

fn attr_str(attrs: &[Attribute], name: &str) -> Option<String> {
    match attr(attrs, name) {
        Some(AttrValue::String(s)) => Some(String::from_utf8_lossy(s).into_owned()),
        _ => None,
    }
}

fn attr_float(attrs: &[Attribute], name: &str) -> Option<f32> {
    match attr(attrs, name) {
        Some(AttrValue::Float(f)) => Some(*f),
        _ => None,
    }
}

fn norm_axis(l: &Lowerer, axis: i64, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a as usize >= rank.max(1) {
        return Err(l.err(format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

fn check_rank(l: &Lowerer, shape: &[u64]) -> Result<()> {
    if shape.len() > MAX_RANK {
        return Err(l.err(format!("rank {} exceeds the kernels' {MAX_RANK}", shape.len())));
    }
    Ok(())
}

/// Lower node `id`.
pub fn lower(l: &mut Lowerer, id: NodeId) -> Result<()> {
    let n = &l.g.nodes[id];
    let act = n.act.clone();
    match &n.op {
        Op::Conv { window, group } => conv(l, id, window, group.unwrap_or(1), act.as_ref()),
        Op::Gemm { alpha, beta, trans_a, trans_b } => gemm(
            l,
            id,
            (alpha.unwrap_or(1.0), beta.unwrap_or(1.0)),
            (trans_a.unwrap_or(0) != 0, trans_b.unwrap_or(0) != 0),
            act.as_ref(),
        ),
        Op::MatMul => {
            let (a, b, y) = (l.input(id, 0)?, l.input(id, 1)?, l.output(id, 0)?);
            let (bw, f16w) = l.weights(id, b)?;
            let aw = l.src(a)?;
            let yw = l.dst(y)?;
            let (sa, sb, sy) = (l.shape(a)?, l.shape(b)?, l.shape(y)?);
            matmul(l, (aw, &sa), (bw, &sb, f16w), (yw, &sy), 1.0, act.as_ref())
        }
        Op::Attention { scale } => attention(l, id, *scale),
        Op::Act(a) => {
            let clip =
                if matches!(a, Act::Clip { .. }) { clip_inputs(l, id)? } else { (None, None) };
            let aw = act_words(Some(a), clip).map_err(|e| l.err(e))?;
            eltwise(l, id, 0, Some(aw))?;
            fused_act(l, id, act.as_ref())
        }
        Op::Binary(b) => {
            let code = match b {
                BinOp::Add => 1,
                BinOp::Sub => 2,
                BinOp::Mul => 3,
                BinOp::Div => 4,
                BinOp::Pow => 5,
            };
            let aw = act_words(act.as_ref(), (None, None)).map_err(|e| l.err(e))?;
            eltwise(l, id, code, Some(aw))
        }
        Op::Identity | Op::Reshape { .. } | Op::Flatten { .. } => {
            l.alias(l.input(id, 0)?, l.output(id, 0)?)?;
            fused_act(l, id, act.as_ref())
        }
        Op::Transpose { perm } => {
            let (x, y) = (l.input(id, 0)?, l.output(id, 0)?);
            let sx = l.shape(x)?;
            let perm: Vec<usize> = match perm {
                Some(p) => p.iter().map(|a| norm_axis(l, *a, sx.len())).collect::<Result<_>>()?,
                None => (0..sx.len()).rev().collect(),
            };
            let xs = strides(&sx);
            let (xa, ya) = (l.src(x)?, l.dst(y)?);
            let sy = l.shape(y)?;
            let in_dim: Vec<u64> = perm.iter().map(|p| sx[*p]).collect();
            let in_str: Vec<i64> = perm.iter().map(|p| xs[*p] as i64).collect();
            copy(
                l,
                &sy,
                (xa, 0, &in_dim, &in_str),
                (&vec![0; sy.len()], &vec![1; sy.len()]),
                (ya, 0, &strides(&sy)),
                0,
            )?;
            fused_act(l, id, act.as_ref())
        }
        Op::Concat { axis } => concat(l, id, *axis),
        Op::GlobalAveragePool => global_pool(l, id, 0),
        Op::Pool { kind, window, count_include_pad, .. } => {
            let k = match kind {
                PoolKind::Max => 0,
                PoolKind::Average if count_include_pad.unwrap_or(0) != 0 => 1,
                PoolKind::Average => 2,
            };
            pool(l, id, window, k, act.as_ref())
        }
        Op::Softmax { axis } => softmax(l, id, *axis, false),
        Op::BatchNorm { epsilon, .. } => batchnorm(l, id, epsilon.unwrap_or(1e-5), act.as_ref()),
        Op::QuantizeLinear { axis: _, .. } => qdq(l, id, true),
        Op::DequantizeLinear { axis } => {
            if l.is_const(l.input(id, 0)?) {
                fold_dequantize(l, id, axis.unwrap_or(1))
            } else {
                qdq(l, id, false)
            }
        }
        Op::Generic { op_type, attrs } => {
            let attrs = attrs.clone();
            generic(l, id, op_type.as_str(), &attrs)?;
            fused_act(l, id, act.as_ref())
        }
    }
}

/// One `eltwise` dispatch over `shape` (output contiguous): operand `a` and optional `b` with their
/// strides (0 on broadcast axes), op `code`, activation words. Every element-wise step is built here.
fn eltwise_step(
    l: &mut Lowerer,
    shape: &[u64],
    (a, a_str): (Addr, &[u64]),
    b: Option<(Addr, &[u64])>,
    y: Addr,
    (code, act): (u32, [Word; 3]),
) -> Result<()> {
    check_rank(l, shape)?;
    let n: u64 = shape.iter().product();
    let mut w = vec![u(n), u(shape.len() as u64)];
    w.extend(six(shape.iter().map(|d| u(*d))));
    w.push(at(a));
    w.extend(six(a_str.iter().map(|d| u(*d))));
    match b {
        Some((b, b_str)) => {
            w.push(at(b));
            w.extend(six(b_str.iter().map(|d| u(*d))));
        }
        None => {
            w.push(NONE);
            w.extend(six([]));
        }
    }
    w.extend([at(y), Word::U(code)]);
    w.extend(act);
    l.step(Kernel::Eltwise, w, n);
    Ok(())
}

const NO_ACT: [Word; 3] = [Word::U(0), Word::F(0.0), Word::F(0.0)];

/// Unary op `code` with activation `act`, in place on `y`'s `n` elements (read and written by one
/// invocation each, so in place is safe).
fn in_place(l: &mut Lowerer, y: Addr, n: u64, (code, act): (u32, [Word; 3])) -> Result<()> {
    // Read as well as written: keeps the buffer live across this step.
    l.read(y);
    eltwise_step(l, &[n], (y, &[1]), None, y, (code, act))
}

/// An activation the op's kernel could not apply: in place on its output.
fn fused_act(l: &mut Lowerer, id: NodeId, act: Option<&Act>) -> Result<()> {
    let Some(a) = act else { return Ok(()) };
    let y = l.output(id, 0)?;
    let ya = l.src(y)?;
    let n: u64 = l.shape(y)?.iter().product();
    let aw = act_words(Some(a), (None, None)).map_err(|e| l.err(e))?;
    in_place(l, ya, n, (0, aw))
}

fn clip_inputs(l: &Lowerer, id: NodeId) -> Result<(Option<f32>, Option<f32>)> {
    let n = &l.g.nodes[id];
    let one = |i: usize| -> Result<Option<f32>> {
        match n.input(i) {
            None => Ok(None),
            Some(v) => l
                .const_vals(v)
                .and_then(|x| x.first().copied())
                .map(Some)
                .ok_or_else(|| l.err("Clip bounds must be constants")),
        }
    };
    Ok((one(1)?, one(2)?))
}

/// Element-wise op `code` (0 = activation only, 1.. binary, 20.. unary) of inputs 0 (and 1).
fn eltwise(l: &mut Lowerer, id: NodeId, code: u32, act: Option<[Word; 3]>) -> Result<()> {
    let a = l.input(id, 0)?;
    let b = if (1..20).contains(&code) { Some(l.input(id, 1)?) } else { None };
    let y = l.output(id, 0)?;
    let sy = l.shape(y)?;
    let sa = l.shape(a)?;
    let aa = l.src(a)?;
    let (ba, sb) = match b {
        Some(b) => (l.src(b)?, l.shape(b)?),
        None => (Addr::None, vec![]),
    };
    let ya = l.dst(y)?;
    let (a_str, b_str) = (bstrides(&sa, &sy), bstrides(&sb, &sy));
    let bb = b.map(|_| (ba, b_str.as_slice()));
    eltwise_step(l, &sy, (aa, &a_str), bb, ya, (code, act.unwrap_or(NO_ACT)))
}

/// Strided copy of `shape` elements: input (addr, delta, dims, strides), (start, step) per axis,
/// output (addr, delta, strides); mode 0 constant (0), 1 edge, 2 reflect, 3 wrap.
pub fn copy(
    l: &mut Lowerer,
    shape: &[u64],
    src: (Addr, u64, &[u64], &[i64]),
    walk: (&[i64], &[i64]),
    dst: (Addr, u64, &[u64]),
    mode: u32,
) -> Result<()> {
    copy_value(l, shape, src, walk, dst, mode, 0.0)
}

fn copy_value(
    l: &mut Lowerer,
    shape: &[u64],
    src: (Addr, u64, &[u64], &[i64]),
    walk: (&[i64], &[i64]),
    dst: (Addr, u64, &[u64]),
    mode: u32,
    value: f32,
) -> Result<()> {
    let n: u64 = shape.iter().product();
    // Without padding: merge axes contiguous on both sides, drop size-1 axes, and copy contiguous rows
    // 4 elements per invocation.
    let plain = (0..shape.len()).all(|k| walk.0[k] == 0 && walk.1[k] == 1 && src.2[k] == shape[k]);
    if plain && n > 0 {
        let mut dims: Vec<(u64, i64, u64)> = Vec::new();
        for (k, &d) in shape.iter().enumerate() {
            if d == 1 {
                continue;
            }
            let (si, so) = (src.3[k], dst.2[k]);
            match dims.last_mut() {
                Some(last) if last.1 == si * d as i64 && last.2 == so * d => {
                    *last = (last.0 * d, si, so);
                }
                _ => dims.push((d, si, so)),
            }
        }
        if dims.last().is_some_and(|l| l.1 == 1 && l.2 == 1)
            && dims.iter().all(|d| d.1 >= 0)
            && dims.len() <= 6
        {
            let (inner, _, _) = dims.pop().unwrap_or((1, 1, 1));
            let total = n / inner * inner.div_ceil(4);
            let mut w = vec![u(total), u(dims.len() as u64)];
            let five = |v: Vec<Word>| -> Vec<Word> {
                let mut v = v;
                v.resize(5, Word::U(0));
                v
            };
            w.extend(five(dims.iter().map(|d| u(d.0)).collect()));
            w.push(Word::At(src.0, src.1));
            w.extend(five(dims.iter().map(|d| u(d.1 as u64)).collect()));
            w.push(Word::At(dst.0, dst.1));
            w.extend(five(dims.iter().map(|d| u(d.2)).collect()));
            w.push(u(inner));
            l.read(src.0);
            l.step(Kernel::CopyRows, w, total);
            return Ok(());
        }
    }
    check_rank(l, shape)?;
    let mut w = vec![u(n), u(shape.len() as u64)];
    w.extend(six(shape.iter().map(|d| u(*d))));
    w.push(Word::At(src.0, src.1));
    w.extend(six(src.2.iter().map(|d| u(*d))));
    w.extend(six(src.3.iter().map(|s| Word::I(*s as i32))));
    w.extend(six(walk.0.iter().map(|s| Word::I(*s as i32))));
    w.extend(six(walk.1.iter().map(|s| Word::I(*s as i32))));
    w.push(Word::At(dst.0, dst.1));
    w.extend(six(dst.2.iter().map(|d| u(*d))));
    w.push(Word::U(mode));
    w.push(Word::F(value));
    l.read(src.0);
    l.step(Kernel::Copy, w, n);
    Ok(())
}

/// Copy `n` contiguous elements.
pub fn copy_flat(l: &mut Lowerer, src: Addr, dst: Addr, n: u64) -> Result<()> {
    copy(l, &[n], (src, 0, &[n], &[1]), (&[0], &[1]), (dst, 0, &[1]), 0)
}

/// Leading (top, left) pads of a window: `io` = (input, output) spatial sizes, `ksd` = (kernel,
/// strides, dilations), all as [h, w].
fn pads2(
    l: &Lowerer,
    w: &Window,
    (in_hw, out_hw): ([u64; 2], [u64; 2]),
    (k, s, d): ([u64; 2], [u64; 2], [u64; 2]),
    dims: usize,
) -> Result<[i64; 2]> {
    match w.auto_pad.as_deref() {
        Some("SAME_UPPER") | Some("SAME_LOWER") => {
            let lower = w.auto_pad.as_deref() == Some("SAME_LOWER");
            let mut p = [0i64; 2];
            for i in 0..2 {
                let total =
                    ((out_hw[i] as i64 - 1) * s[i] as i64 + (k[i] as i64 - 1) * d[i] as i64 + 1
                        - in_hw[i] as i64)
                        .max(0);
                p[i] = if lower { total - total / 2 } else { total / 2 };
            }
            Ok(p)
        }
        Some("VALID") => Ok([0, 0]),
        _ => {
            let p = w.pads.clone().unwrap_or_else(|| vec![0; 2 * dims]);
            match (dims, p.as_slice()) {
                (2, [t, l_, _, _]) => Ok([*t, *l_]),
                (1, [b, _]) => Ok([0, *b]),
                _ => Err(l.err(format!("pads {p:?} do not fit a {dims}-D window"))),
            }
        }
    }
}

/// (strides, dilations) of a 1-D or 2-D window as [h, w].
fn sd(w: &Window, dims: usize) -> ([u64; 2], [u64; 2]) {
    let get = |v: &Option<Vec<i64>>| -> [u64; 2] {
        match (dims, v.as_deref()) {
            (2, Some([a, b])) => [*a as u64, *b as u64],
            (1, Some([a])) => [1, *a as u64],
            _ => [1, 1],
        }
    };
    (get(&w.strides), get(&w.dilations))
}

/// [N, C, H, W] of a rank-3 (1-D) or rank-4 (2-D) NC* tensor.
fn nchw(l: &Lowerer, s: &[u64]) -> Result<[u64; 4]> {
    match s {
        [n, c, h, w] => Ok([*n, *c, *h, *w]),
        [n, c, w] => Ok([*n, *c, 1, *w]),
        _ => Err(l.err(format!("only 1-D and 2-D windows are supported (input shape {s:?})"))),
    }
}

/// A residual Add the convolution `id` can apply in its kernel: the convolution's output has no
/// activation and one reader, an Add of same-shape operands whose other operand is already computed.
/// Returns (the Add, its other operand).
fn residual_add(l: &Lowerer, id: NodeId, act: Option<&Act>) -> Option<(NodeId, ValueId)> {
    let y = l.g.nodes[id].output(0)?;
    if act.is_some() || l.g.is_output(y) {
        return None;
    }
    let cons = l.g.consumers(y);
    let [(add, _)] = cons.as_slice() else { return None };
    let a = &l.g.nodes[*add];
    if !matches!(a.op, Op::Binary(BinOp::Add)) || a.inputs.len() != 2 {
        return None;
    }
    let other = a.inputs.iter().flatten().copied().find(|v| *v != y)?;
    if a.inputs.iter().flatten().filter(|v| **v == y).count() != 1 || !l.available(other) {
        return None;
    }
    (l.shape(other).ok()? == l.shape(y).ok()?).then_some((*add, other))
}

fn conv(l: &mut Lowerer, id: NodeId, win: &Window, group: i64, act: Option<&Act>) -> Result<()> {
    let (x, wv, mut y) = (l.input(id, 0)?, l.input(id, 1)?, l.output(id, 0)?);
    let b = l.g.nodes[id].input(2);
    let (sx, sw, sy) = (l.shape(x)?, l.shape(wv)?, l.shape(y)?);
    let dims = sx.len().saturating_sub(2);
    let [n, c, h, w] = nchw(l, &sx)?;
    let [_, oc, oh, ow] = nchw(l, &sy)?;
    let k = match sw.as_slice() {
        [_, _, kh, kw] => [*kh, *kw],
        [_, _, kw] => [1, *kw],
        _ => return Err(l.err(format!("weight shape {sw:?}"))),
    };
    let g = group.max(1) as u64;
    if c % g != 0 || oc % g != 0 || sw[1] * g != c {
        return Err(l.err(format!("group {g} does not divide channels {c} → {oc}")));
    }
    let (s, d) = sd(win, dims);
    let p = pads2(l, win, ([h, w], [oh, ow]), (k, s, d), dims)?;
    // The kernel: depthwise (4 adjacent outputs per invocation), pointwise (a register-tiled product,
    // 8 channels × 4 pixels), else 4 channels × 4 pixels where a block never straddles two groups,
    // else one output per invocation. Weights are packed for the kernel chosen, once.
    let depthwise = g == c && oc == c && g > 1;
    let pointwise = g == 1 && k == [1, 1] && s == [1, 1] && p == [0, 0];
    let blocked = !depthwise && (g == 1 || (oc / g).is_multiple_of(4));
    let o8 = pointwise;
    let xa = l.src(x)?;
    let (cg, kk) = ((c / g) as usize, (k[0] * k[1]) as usize);
    let block = if o8 { 8 } else { 4 };
    let (wa, f16w) = if blocked {
        let (nb, ocu) = (oc.div_ceil(block) as usize, oc as usize);
        let bu = block as usize;
        l.weights_packed(id, wv, block as u8, |wt| {
            let mut out = vec![0f32; nb * cg * kk * bu];
            for o in 0..ocu {
                for i in 0..cg {
                    for t in 0..kk {
                        out[((o / bu * cg + i) * kk + t) * bu + o % bu] = wt[(o * cg + i) * kk + t];
                    }
                }
            }
            out
        })?
    } else {
        l.weights(id, wv)?
    };
    let ba = match b {
        Some(b) => l.src(b)?,
        None => Addr::None,
    };
    let mut act = act.cloned();
    let mut res = NONE;
    if let Some((add, other)) = residual_add(l, id, act.as_ref()) {
        res = at(l.src(other)?);
        act = l.g.nodes[add].act.clone();
        y = l.output(add, 0)?;
        l.done.insert(add);
    }
    let ya = l.dst(y)?;
    let aw = act_words(act.as_ref(), (None, None)).map_err(|e| l.err(e))?;
    let ob = oc.div_ceil(4);
    let owb = ow.div_ceil(4);
    if pointwise {
        let blocks = oc.div_ceil(8);
        let p4 = (h * w).div_ceil(4);
        let total = n * blocks * p4;
        let mut words = vec![u(total), u(n), u(c), u(h * w), u(oc), at(xa), at(ya), at(wa)];
        words.push(if b.is_some() { at(ba) } else { NONE });
        words.extend(aw);
        words.extend([res, u(blocks)]);
        let xs = p4.div_ceil(u64::from(super::kernels::WORKGROUP));
        let wg = p4 >= 64 && xs <= 65535 && blocks <= 65535 && n <= 65535;
        let groups = wg.then_some([xs as u32, blocks as u32, n as u32]);
        l.step_groups(Kernel::Conv1x1O8 { f16w, wg }, words, total, groups);
        return Ok(());
    }
    // The other kernels share their parameters up to the residual input.
    let total = if depthwise {
        n * c * oh * owb
    } else if blocked {
        n * ob * oh * owb
    } else {
        n * oc * oh * ow
    };
    let mut words = vec![u(total), u(n), u(c), u(h), u(w), u(oc), u(oh), u(ow), u(k[0]), u(k[1])];
    words.extend([u(s[0]), u(s[1]), Word::I(p[0] as i32), Word::I(p[1] as i32)]);
    words.extend([u(d[0]), u(d[1]), u(g), at(xa), at(ya), at(wa)]);
    words.push(if b.is_some() { at(ba) } else { NONE });
    words.extend(aw);
    words.push(res);
    let spec = Spec::of(k, s);
    if depthwise {
        words.push(u(owb));
        // Large planes: a workgroup per (image, channel) row block, so weights are uniform loads.
        let rows = (oh * owb).div_ceil(u64::from(super::kernels::WORKGROUP));
        let wg = oh * owb >= 64 && rows <= 65535 && n * c <= 65535;
        let groups = wg.then_some([rows as u32, (n * c) as u32, 1]);
        l.step_groups(Kernel::DwConvX4 { f16w, spec, wg }, words, total, groups);
    } else if blocked {
        words.extend([u(ob), u(owb)]);
        l.step(Kernel::Conv2dB4 { f16w, spec }, words, total);
    } else {
        l.step(Kernel::Conv2d { f16w }, words, total);
    }
    Ok(())
}

fn gemm(
    l: &mut Lowerer,
    id: NodeId,
    (alpha, beta): (f32, f32),
    (ta, tb): (bool, bool),
    act: Option<&Act>,
) -> Result<()> {
    let (a, b, y) = (l.input(id, 0)?, l.input(id, 1)?, l.output(id, 0)?);
    let c = l.g.nodes[id].input(2);
    let (sa, sb, sy) = (l.shape(a)?, l.shape(b)?, l.shape(y)?);
    // (rows, cols) of a 2-D operand as the product reads it.
    let dims = |s: &[u64], t: bool, which: &str| -> Result<[u64; 2]> {
        match s {
            [r, q] if t => Ok([*q, *r]),
            [r, q] => Ok([*r, *q]),
            _ => Err(l.err(format!("Gemm {which} must be 2-D"))),
        }
    };
    let ([m, kk], [_, nn]) = (dims(&sa, ta, "A")?, dims(&sb, tb, "B")?);
    let aa = l.src(a)?;
    let (ba, f16w) = l.weights(id, b)?;
    let ca = match c {
        Some(c) => Some((l.src(c)?, l.shape(c)?)),
        None => None,
    };
    let ya = l.dst(y)?;
    let (a_sm, a_sk) = if ta { (1, m) } else { (kk, 1) };
    let (b_sk, b_sn) = if tb { (1, kk) } else { (nn, 1) };
    let total = m * nn;
    let mut w = vec![u(total), Word::U(1), Word::U(1), u(m), u(nn), u(kk)];
    w.extend([at(aa), Word::U(0), Word::U(0), u(a_sm), u(a_sk)]);
    w.extend([at(ba), Word::U(0), Word::U(0), u(b_sk), u(b_sn)]);
    w.push(at(ya));
    match ca {
        Some((ca, sc)) => {
            let st = bstrides(&sc, &sy);
            w.extend([at(ca), u(st[0]), u(st[1])]);
        }
        None => w.extend([NONE, Word::U(0), Word::U(0)]),
    }
    w.extend([Word::F(alpha), Word::F(beta)]);
    w.extend(act_words(act, (None, None)).map_err(|e| l.err(e))?);
    let _ = sy;
    l.step(Kernel::MatMul { f16w }, w, total);
    Ok(())
}

/// numpy matmul of a [.., M, K] and b [.., K, N] (1-D operands promoted), batch dims broadcast (≤ 2).
fn matmul(
    l: &mut Lowerer,
    (aa, sa): (Addr, &[u64]),
    (ba, sb, f16w): (Addr, &[u64], bool),
    (ya, sy): (Addr, &[u64]),
    alpha: f32,
    act: Option<&Act>,
) -> Result<()> {
    let a2: Vec<u64> = if sa.len() == 1 { vec![1, sa[0]] } else { sa.to_vec() };
    let b2: Vec<u64> = if sb.len() == 1 { vec![sb[0], 1] } else { sb.to_vec() };
    let (m, kk) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let nn = b2[b2.len() - 1];
    let batch_rank = a2.len().max(b2.len()) - 2;
    let total: u64 = sy.iter().product();
    let batch: Vec<u64> = {
        let mut v = vec![1u64; batch_rank];
        for (src, r) in [(&a2, a2.len() - 2), (&b2, b2.len() - 2)] {
            for (i, d) in src.iter().take(r).enumerate() {
                let k = batch_rank - r + i;
                v[k] = v[k].max(*d);
            }
        }
        v
    };
    // Batch axes of size 1 in the output are dropped; at most two remain.
    let kept: Vec<usize> = (0..batch_rank).filter(|k| batch[*k] != 1).collect();
    if kept.len() > 2 {
        return Err(l.err(format!("batch dims {batch:?}: at most 2 are supported")));
    }
    let pad2 = |v: Vec<u64>, fill: u64| -> Vec<u64> {
        let mut v = v;
        while v.len() < 2 {
            v.insert(0, fill);
        }
        v
    };
    let bt = pad2(kept.iter().map(|k| batch[*k]).collect(), 1);
    let bs = |s: &[u64]| -> Vec<u64> {
        let st = strides(s);
        let r = s.len() - 2;
        let per_axis = |k: usize| -> u64 {
            if k + r < batch_rank {
                return 0;
            }
            let i = k + r - batch_rank;
            if s[i] == 1 {
                0
            } else {
                st[i]
            }
        };
        pad2(kept.iter().map(|k| per_axis(*k)).collect(), 0)
    };
    let (abs_, bbs) = (bs(&a2), bs(&b2));
    let mut w = vec![u(total), u(bt[0]), u(bt[1]), u(m), u(nn), u(kk)];
    w.extend([at(aa), u(abs_[0]), u(abs_[1]), u(kk), Word::U(1)]);
    w.extend([at(ba), u(bbs[0]), u(bbs[1]), u(nn), Word::U(1)]);
    w.extend([at(ya), NONE, Word::U(0), Word::U(0), Word::F(alpha), Word::F(0.0)]);
    w.extend(act_words(act, (None, None)).map_err(|e| l.err(e))?);
    l.step(Kernel::MatMul { f16w }, w, total);
    Ok(())
}

fn attention(l: &mut Lowerer, id: NodeId, scale: f32) -> Result<()> {
    let (q, kt, v, y) = (l.input(id, 0)?, l.input(id, 1)?, l.input(id, 2)?, l.output(id, 0)?);
    let (sq, sk, sv, sy) = (l.shape(q)?, l.shape(kt)?, l.shape(v)?, l.shape(y)?);
    if sq.len() < 2 || sk.len() < 2 {
        return Err(l.err("attention operands must be at least 2-D"));
    }
    let mut ss: Vec<u64> = sq[..sq.len() - 1].to_vec();
    ss.push(sk[sk.len() - 1]);
    let (qa, ka) = (l.src(q)?, l.src(kt)?);
    let n: u64 = ss.iter().product();
    let t = l.temp(n);
    matmul(l, (qa, &sq), (ka, &sk, false), (t, &ss), scale, None)?;
    l.read(t);
    rows(l, t, t, &ss, ss.len() - 1, false, 0, (Addr::None, Addr::None, 0.0))?;
    l.read(t);
    let va = l.src(v)?;
    let ya = l.dst(y)?;
    matmul(l, (t, &ss), (va, &sv, false), (ya, &sy), 1.0, None)
}

/// Row-wise kernel over `axis` (opset ≥ 13 softmax: one axis) or the flattened tail (`tail`).
#[allow(clippy::too_many_arguments)]
fn rows(
    l: &mut Lowerer,
    x: Addr,
    y: Addr,
    s: &[u64],
    axis: usize,
    tail: bool,
    kind: u32,
    (g, b, eps): (Addr, Addr, f32),
) -> Result<()> {
    let st = strides(s);
    let (outer, ostr, len, lstr): (Vec<u64>, Vec<u64>, u64, u64) = if tail {
        (s[..axis].to_vec(), st[..axis].to_vec(), s[axis..].iter().product(), 1)
    } else {
        let o: Vec<usize> = (0..s.len()).filter(|k| *k != axis).collect();
        (o.iter().map(|k| s[*k]).collect(), o.iter().map(|k| st[*k]).collect(), s[axis], st[axis])
    };
    check_rank(l, &outer)?;
    let rows: u64 = outer.iter().product();
    let mut w = vec![u(rows), u(outer.len() as u64)];
    w.extend(six(outer.iter().map(|d| u(*d))));
    w.extend(six(ostr.iter().map(|d| u(*d))));
    w.extend([u(len), u(lstr), at(x), at(y), Word::U(kind)]);
    let opt = |a: Addr| if a == Addr::None { NONE } else { at(a) };
    w.extend([opt(g), opt(b), Word::F(eps)]);
    l.step(Kernel::Rows, w, rows);
    Ok(())
}

fn softmax(l: &mut Lowerer, id: NodeId, axis: Option<i64>, log: bool) -> Result<()> {
    let (x, y) = (l.input(id, 0)?, l.output(id, 0)?);
    let s = l.shape(x)?;
    let opset = l.m.opset();
    let axis = norm_axis(l, axis.unwrap_or(if opset < 13 { 1 } else { -1 }), s.len())?;
    let (xa, ya) = (l.src(x)?, l.dst(y)?);
    rows(l, xa, ya, &s, axis, opset < 13, u32::from(log), (Addr::None, Addr::None, 0.0))
}

fn concat(l: &mut Lowerer, id: NodeId, axis: i64) -> Result<()> {
    let y = l.output(id, 0)?;
    let sy = l.shape(y)?;
    let axis = norm_axis(l, axis, sy.len())?;
    let ins: Vec<_> = l.g.nodes[id].inputs.iter().flatten().copied().collect();
    let ya = l.dst(y)?;
    let ys = strides(&sy);
    let mut off = 0u64;
    let mut copied = 0;
    for x in ins {
        let sx = l.shape(x)?;
        // Written in place by its own step (a zero-copy Concat, planned in `Lowerer::plan_concats`)?
        let here = match (ya, l.loc_of(x)) {
            (Addr::Buf(b, o), Some(Addr::Buf(xb, xo))) => xb == b && xo == o + off * ys[axis],
            _ => false,
        };
        if !here {
            let xa = l.src(x)?;
            if copied > 0 {
                // Later pieces write the same buffer: keep it live from the first.
                l.read(ya);
            }
            let xs: Vec<i64> = strides(&sx).into_iter().map(|v| v as i64).collect();
            let r = sx.len();
            if sx.iter().product::<u64>() > 0 {
                copy(
                    l,
                    &sx,
                    (xa, 0, &sx, &xs),
                    (&vec![0; r], &vec![1; r]),
                    (ya, off * ys[axis], &ys),
                    0,
                )?;
            } else {
                l.read(xa);
                l.step(Kernel::Copy, vec![Word::U(0)], 0);
            }
            copied += 1;
        }
        off += sx[axis];
    }
    if copied == 0 {
        // Every piece is in place: no step, the output is bound to the buffer they wrote.
        l.discard_writes();
    }
    Ok(())
}

fn global_pool(l: &mut Lowerer, id: NodeId, kind: u32) -> Result<()> {
    let (x, y) = (l.input(id, 0)?, l.output(id, 0)?);
    let s = l.shape(x)?;
    if s.len() < 3 {
        return Err(l.err("global pooling needs N, C and spatial axes"));
    }
    let (xa, ya) = (l.src(x)?, l.dst(y)?);
    let st = strides(&s);
    reduce(l, (xa, ya), &s, &st, &(2..s.len()).collect::<Vec<_>>(), kind)
}

/// Reduce `axes` of `s` (strides `st`) with `kind`; output contiguous over the kept axes.
fn reduce(
    l: &mut Lowerer,
    (xa, ya): (Addr, Addr),
    s: &[u64],
    st: &[u64],
    axes: &[usize],
    kind: u32,
) -> Result<()> {
    let keep: Vec<usize> = (0..s.len()).filter(|k| !axes.contains(k)).collect();
    check_rank(l, &keep.iter().map(|k| s[*k]).collect::<Vec<_>>())?;
    if axes.len() > MAX_RANK {
        return Err(l.err("more than 6 reduced axes"));
    }
    let total: u64 = keep.iter().map(|k| s[*k]).product();
    let mut w = vec![u(total), u(keep.len() as u64)];
    w.extend(six(keep.iter().map(|k| u(s[*k]))));
    w.push(at(xa));
    w.extend(six(keep.iter().map(|k| u(st[*k]))));
    w.push(u(axes.len() as u64));
    w.extend(six(axes.iter().map(|k| u(s[*k]))));
    w.extend(six(axes.iter().map(|k| u(st[*k]))));
    w.extend([at(ya), Word::U(kind), Word::U(0), Word::F(0.0), Word::F(0.0)]);
    l.step(Kernel::Reduce, w, total);
    Ok(())
}

fn pool(l: &mut Lowerer, id: NodeId, win: &Window, kind: u32, act: Option<&Act>) -> Result<()> {
    let (x, y) = (l.input(id, 0)?, l.output(id, 0)?);
    let (sx, sy) = (l.shape(x)?, l.shape(y)?);
    let dims = sx.len().saturating_sub(2);
    let [n, c, h, w] = nchw(l, &sx)?;
    let [_, _, oh, ow] = nchw(l, &sy)?;
    let k = match (dims, win.kernel_shape.as_deref()) {
        (2, Some([a, b])) => [*a as u64, *b as u64],
        (1, Some([a])) => [1, *a as u64],
        _ => return Err(l.err("kernel_shape missing or not 1-D/2-D")),
    };
    let (s, d) = sd(win, dims);
    let p = pads2(l, win, ([h, w], [oh, ow]), (k, s, d), dims)?;
    let (xa, ya) = (l.src(x)?, l.dst(y)?);
    let total = n * c * oh * ow;
    let mut words =
        vec![u(total), u(n), u(c), u(h), u(w), u(oh), u(ow), u(k[0]), u(k[1]), u(s[0]), u(s[1])];
    words.extend([
        Word::I(p[0] as i32),
        Word::I(p[1] as i32),
        u(d[0]),
        u(d[1]),
        at(xa),
        at(ya),
        Word::U(kind),
    ]);
    words.extend(act_words(act, (None, None)).map_err(|e| l.err(e))?);
    l.step(Kernel::Pool, words, total);
    Ok(())
}

fn batchnorm(l: &mut Lowerer, id: NodeId, eps: f32, act: Option<&Act>) -> Result<()> {
    let x = l.input(id, 0)?;
    let vals = |i: usize| -> Result<Vec<f32>> {
        let v = l.input(id, i)?;
        l.const_vals(v).ok_or_else(|| l.err("BatchNormalization parameters must be constants"))
    };
    let (g, b, mean, var) = (vals(1)?, vals(2)?, vals(3)?, vals(4)?);
    let scale: Vec<f32> = g.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
    let shift: Vec<f32> = b.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
    let y = l.output(id, 0)?;
    let s = l.shape(x)?;
    let mut cs = vec![1u64; s.len()];
    if s.len() >= 2 {
        cs = s[1..].iter().map(|_| 1).collect();
        cs[0] = s[1];
    }
    let n: u64 = s.iter().product();
    let (sa, ta) = (l.constant(scale), l.constant(shift));
    let xa = l.src(x)?;
    let t = l.temp(n);
    let (xs, cstr) = (strides(&s), bstrides(&cs, &s));
    eltwise_step(l, &s, (xa, &xs), Some((sa, &cstr)), t, (3, NO_ACT))?;
    l.read(t);
    let ya = l.dst(y)?;
    let aw = act_words(act, (None, None)).map_err(|e| l.err(e))?;
    eltwise_step(l, &s, (t, &xs), Some((ta, &cstr)), ya, (1, aw))
}

/// Per-tensor scale and zero point of a Q/DQ node.
fn qparams(l: &Lowerer, id: NodeId) -> Result<(f32, f32, bool)> {
    let s = l.input(id, 1)?;
    let scale = l
        .const_vals(s)
        .filter(|v| v.len() == 1)
        .ok_or_else(|| l.err("only per-tensor constant scales are supported on activations"))?[0];
    let (zp, unsigned) = match l.g.nodes[id].input(2) {
        Some(z) => {
            let v = l
                .const_vals(z)
                .filter(|v| v.len() == 1)
                .ok_or_else(|| l.err("the zero point must be a constant scalar"))?;
            (v[0], l.g.value(z).dtype == kiln_compiler::ir::DType::U8)
        }
        None => (0.0, true),
    };
    Ok((scale, zp, unsigned))
}

fn qdq(l: &mut Lowerer, id: NodeId, quantize: bool) -> Result<()> {
    let (scale, zp, unsigned) = qparams(l, id)?;
    let code = match (quantize, unsigned) {
        (false, _) => 41,
        (true, false) => 40,
        (true, true) => 42,
    };
    eltwise(l, id, code, Some([Word::U(0), Word::F(scale), Word::F(zp)]))
}

/// DequantizeLinear of a constant (QAT weights): computed here.
fn fold_dequantize(l: &mut Lowerer, id: NodeId, axis: i64) -> Result<()> {
    let (x, s, y) = (l.input(id, 0)?, l.input(id, 1)?, l.output(id, 0)?);
    let xv = l.const_vals(x).ok_or_else(|| l.err("not numeric"))?;
    let sv = l.const_vals(s).ok_or_else(|| l.err("scale must be a constant"))?;
    let zv = match l.g.nodes[id].input(2) {
        Some(z) => l.const_vals(z).ok_or_else(|| l.err("zero point must be a constant"))?,
        None => vec![0.0; sv.len()],
    };
    let sx = l.shape(x)?;
    let out = if sv.len() == 1 {
        xv.iter().map(|q| (q - zv[0]) * sv[0]).collect()
    } else {
        let a = norm_axis(l, axis, sx.len())?;
        let inner: u64 = sx[a + 1..].iter().product();
        xv.iter()
            .enumerate()
            .map(|(i, q)| {
                let c = (i as u64 / inner) as usize % sv.len();
                (q - zv.get(c).copied().unwrap_or(0.0)) * sv[c]
            })
            .collect()
    };
    l.define_const(y, out);
    Ok(())
}

fn generic(l: &mut Lowerer, id: NodeId, op: &str, attrs: &[Attribute]) -> Result<()> {
    let unary = match op {
        "Sqrt" => Some(20),
        "Exp" => Some(21),
        "Log" => Some(22),
        "Neg" => Some(23),
        "Abs" => Some(24),
        "Reciprocal" => Some(25),
        "Erf" => Some(26),
        "Floor" => Some(27),
        "Ceil" => Some(28),
        "Round" => Some(29),
        "Sin" => Some(30),
        "Cos" => Some(31),
        _ => None,
    };
    if let Some(code) = unary {
        return eltwise(l, id, code, None);
    }
    match op {
        "Max" | "Min" if l.g.nodes[id].inputs.len() == 2 => {
            eltwise(l, id, if op == "Max" { 6 } else { 7 }, None)
        }
        "Squeeze" | "Unsqueeze" | "Dropout" => l.alias(l.input(id, 0)?, l.output(id, 0)?),
        "Constant" => {
            let vals: Option<Vec<f32>> = attrs.iter().find_map(|a| match &a.value {
                AttrValue::Tensor(t) => t.to_f32_vec(),
                AttrValue::Float(f) => Some(vec![*f]),
                AttrValue::Floats(f) => Some(f.clone()),
                AttrValue::Int(i) => Some(vec![*i as f32]),
                AttrValue::Ints(i) => Some(i.iter().map(|x| *x as f32).collect()),
                _ => None,
            });
            let vals = vals.ok_or_else(|| l.err("Constant without a numeric value"))?;
            l.define_const(l.output(id, 0)?, vals);
            Ok(())
        }
        "Shape" => {
            let s = l.shape(l.input(id, 0)?)?;
            let r = s.len() as i64;
            let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clampi(attr_int(attrs, "start").unwrap_or(0));
            let end = clampi(attr_int(attrs, "end").unwrap_or(r));
            let vals =
                s.get(start..end.max(start)).unwrap_or(&[]).iter().map(|d| *d as f32).collect();
            l.define_const(l.output(id, 0)?, vals);
            Ok(())
        }
        "Cast" => {
            let to = attr_int(attrs, "to").unwrap_or(1);
            // FLOAT, FLOAT16, DOUBLE, BFLOAT16: a view; integers: truncation (values are carried as f32).
            if matches!(to, 1 | 10 | 11 | 16) {
                l.alias(l.input(id, 0)?, l.output(id, 0)?)
            } else if matches!(to, 2..=7 | 12 | 13) {
                eltwise(l, id, 32, None)
            } else {
                Err(l.err(format!("Cast to type {to} has no kernel")))
            }
        }
        "Softmax" | "LogSoftmax" => softmax(l, id, attr_int(attrs, "axis"), op == "LogSoftmax"),
        "LayerNormalization" => layernorm(l, id, attrs),
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceSumSquare" | "ReduceL2" => {
            reduce_op(l, id, op, attrs)
        }
        "GlobalMaxPool" => global_pool(l, id, 2),
        "Split" => split(l, id, attrs),
        "Slice" => slice(l, id, attrs),
        "Pad" => pad(l, id, attrs),
        "Expand" | "Tile" => expand_tile(l, id, op == "Tile"),
        "Gather" => gather(l, id, attrs),
        "Resize" | "Upsample" => super::resize::resize(l, id, op, attrs),
        _ => Err(l.err(format!("the vulkan backend has no kernel for {op}"))),
    }
}

fn layernorm(l: &mut Lowerer, id: NodeId, attrs: &[Attribute]) -> Result<()> {
    let (x, y) = (l.input(id, 0)?, l.output(id, 0)?);
    for i in 1..3 {
        if let Some(o) = l.g.nodes[id].output(i) {
            if !l.g.consumers(o).is_empty() || l.g.is_output(o) {
                return Err(l.err("LayerNormalization's mean/inv-std outputs are not supported"));
            }
        }
    }
    let s = l.shape(x)?;
    let axis = norm_axis(l, attr_int(attrs, "axis").unwrap_or(-1), s.len())?;
    let eps = attr_float(attrs, "epsilon").unwrap_or(1e-5);
    let len: u64 = s[axis..].iter().product();
    let mut opt = |i: usize| -> Result<Addr> {
        match l.g.nodes[id].input(i) {
            Some(v) => {
                if l.shape(v)?.iter().product::<u64>() != len {
                    return Err(l.err("broadcast LayerNormalization scale/bias are not supported"));
                }
                l.src(v)
            }
            None => Ok(Addr::None),
        }
    };
    let (g, b) = (opt(1)?, opt(2)?);
    let xa = l.src(x)?;
    let ya = l.dst(y)?;
    rows(l, xa, ya, &s, axis, true, 2, (g, b, eps))
}

fn axes_of(l: &Lowerer, id: NodeId, attrs: &[Attribute], input: usize) -> Result<Option<Vec<i64>>> {
    if let Some(a) = attr_ints(attrs, "axes") {
        return Ok(Some(a));
    }
    match l.g.nodes[id].input(input) {
        Some(v) => Ok(Some(l.const_ints(v)?)),
        None => Ok(None),
    }
}

fn reduce_op(l: &mut Lowerer, id: NodeId, op: &str, attrs: &[Attribute]) -> Result<()> {
    let (x, y) = (l.input(id, 0)?, l.output(id, 0)?);
    let s = l.shape(x)?;
    let axes = match axes_of(l, id, attrs, 1)? {
        Some(a) if !a.is_empty() => {
            a.iter().map(|a| norm_axis(l, *a, s.len())).collect::<Result<Vec<_>>>()?
        }
        _ if attr_int(attrs, "noop_with_empty_axes") == Some(1) => return l.alias(x, y),
        _ => (0..s.len()).collect(),
    };
    let kind = match op {
        "ReduceMean" => 0,
        "ReduceSum" => 1,
        "ReduceMax" => 2,
        "ReduceMin" => 3,
        _ => 4,
    };
    let (xa, ya) = (l.src(x)?, l.dst(y)?);
    reduce(l, (xa, ya), &s, &strides(&s), &axes, kind)?;
    if op == "ReduceL2" {
        let n: u64 = l.shape(y)?.iter().product();
        in_place(l, ya, n, (20, NO_ACT))?;
    }
    Ok(())
}

fn split(l: &mut Lowerer, id: NodeId, attrs: &[Attribute]) -> Result<()> {
    let x = l.input(id, 0)?;
    let sx = l.shape(x)?;
    let axis = norm_axis(l, attr_int(attrs, "axis").unwrap_or(0), sx.len())?;
    let xs: Vec<i64> = strides(&sx).into_iter().map(|v| v as i64).collect();
    let outs: Vec<_> = l.g.nodes[id].outputs.to_vec();
    // Everything before the axis of size 1: each piece is a contiguous part of the input, a view.
    let view = sx[..axis].iter().all(|d| *d == 1);
    let mut off = 0i64;
    for y in outs {
        let Some(y) = y else { continue };
        let sy = l.shape(y)?;
        match l.loc_of(x) {
            Some(Addr::Buf(b, o)) if view && !l.g.is_output(y) => {
                l.bind(y, Addr::Buf(b, o + (off * xs[axis]) as u64));
            }
            _ => {
                let xa = l.src(x)?;
                let ya = l.dst(y)?;
                let mut start = vec![0i64; sx.len()];
                start[axis] = off;
                copy(
                    l,
                    &sy,
                    (xa, 0, &sx, &xs),
                    (&start, &vec![1; sx.len()]),
                    (ya, 0, &strides(&sy)),
                    0,
                )?;
            }
        }
        off += sy[axis] as i64;
    }
    Ok(())
}

fn slice(l: &mut Lowerer, id: NodeId, attrs: &[Attribute]) -> Result<()> {
    let (x, y) = (l.input(id, 0)?, l.output(id, 0)?);
    let (sx, sy) = (l.shape(x)?, l.shape(y)?);
    let r = sx.len();
    let (starts, axes, steps) = if let Some(st) = attr_ints(attrs, "starts") {
        (st, attr_ints(attrs, "axes"), None)
    } else {
        let n = &l.g.nodes[id];
        let starts = l.const_ints(l.input(id, 1)?)?;
        let axes = match n.input(3) {
            Some(v) => Some(l.const_ints(v)?),
            None => None,
        };
        let steps = match n.input(4) {
            Some(v) => Some(l.const_ints(v)?),
            None => None,
        };
        (starts, axes, steps)
    };
    let axes: Vec<i64> = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let mut start = vec![0i64; r];
    let mut step = vec![1i64; r];
    for (i, a) in axes.iter().enumerate() {
        let a = norm_axis(l, *a, r)?;
        let st = steps.as_ref().and_then(|s| s.get(i).copied()).unwrap_or(1);
        if st == 0 {
            return Err(l.err("Slice step 0"));
        }
        let dim = sx[a] as i64;
        let mut s = starts.get(i).copied().unwrap_or(0);
        if s < 0 {
            s += dim;
        }
        s = if st > 0 { s.clamp(0, dim) } else { s.clamp(0, dim - 1) };
        start[a] = s;
        step[a] = st;
    }
    let xs: Vec<i64> = strides(&sx).into_iter().map(|v| v as i64).collect();
    let (xa, ya) = (l.src(x)?, l.dst(y)?);
    if sy.iter().product::<u64>() == 0 {
        l.read(xa);
        l.step(Kernel::Copy, vec![Word::U(0)], 0);
        return Ok(());
    }
    copy(l, &sy, (xa, 0, &sx, &xs), (&start, &step), (ya, 0, &strides(&sy)), 0)
}

fn pad(l: &mut Lowerer, id: NodeId, attrs: &[Attribute]) -> Result<()> {
    let (x, y) = (l.input(id, 0)?, l.output(id, 0)?);
    let (sx, sy) = (l.shape(x)?, l.shape(y)?);
    let r = sx.len();
    let mode = match attr_str(attrs, "mode").as_deref().unwrap_or("constant") {
        "constant" => 0,
        "edge" => 1,
        "reflect" => 2,
        "wrap" => 3,
        m => return Err(l.err(format!("Pad mode '{m}' has no kernel"))),
    };
    let n = &l.g.nodes[id];
    let (pads, value) = match attr_ints(attrs, "pads") {
        Some(p) => (p, attr_float(attrs, "value").unwrap_or(0.0)),
        None => {
            let p = l.const_ints(l.input(id, 1)?)?;
            let v = match n.input(2) {
                Some(v) => l
                    .const_vals(v)
                    .and_then(|v| v.first().copied())
                    .ok_or_else(|| l.err("Pad value must be a constant"))?,
                None => 0.0,
            };
            (p, v)
        }
    };
    let axes: Vec<usize> = match n.input(3) {
        Some(v) => l.const_ints(v)?.iter().map(|a| norm_axis(l, *a, r)).collect::<Result<_>>()?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(l.err(format!("{} pads for {} axes", pads.len(), axes.len())));
    }
    let mut start = vec![0i64; r];
    for (i, a) in axes.iter().enumerate() {
        start[*a] = -pads[i];
    }
    let xs: Vec<i64> = strides(&sx).into_iter().map(|v| v as i64).collect();
    let (xa, ya) = (l.src(x)?, l.dst(y)?);
    copy_value(
        l,
        &sy,
        (xa, 0, &sx, &xs),
        (&start, &vec![1; r]),
        (ya, 0, &strides(&sy)),
        mode,
        value,
    )
}

fn expand_tile(l: &mut Lowerer, id: NodeId, tile: bool) -> Result<()> {
    let (x, y) = (l.input(id, 0)?, l.output(id, 0)?);
    let (sx, sy) = (l.shape(x)?, l.shape(y)?);
    let r = sy.len();
    let (xa, ya) = (l.src(x)?, l.dst(y)?);
    if tile {
        let xs: Vec<i64> = strides(&sx).into_iter().map(|v| v as i64).collect();
        copy(l, &sy, (xa, 0, &sx, &xs), (&vec![0; r], &vec![1; r]), (ya, 0, &strides(&sy)), 3)
    } else {
        let bs: Vec<i64> = bstrides(&sx, &sy).into_iter().map(|v| v as i64).collect();
        copy(l, &sy, (xa, 0, &sy, &bs), (&vec![0; r], &vec![1; r]), (ya, 0, &strides(&sy)), 0)
    }
}

fn gather(l: &mut Lowerer, id: NodeId, attrs: &[Attribute]) -> Result<()> {
    let (x, i, y) = (l.input(id, 0)?, l.input(id, 1)?, l.output(id, 0)?);
    let (sx, si) = (l.shape(x)?, l.shape(i)?);
    let axis = norm_axis(l, attr_int(attrs, "axis").unwrap_or(0), sx.len())?;
    let inner: u64 = sx[axis + 1..].iter().product();
    let outer: u64 = sx[..axis].iter().product();
    let nidx: u64 = si.iter().product();
    let (xa, ia, ya) = (l.src(x)?, l.src(i)?, l.dst(y)?);
    let total = outer * nidx * inner;
    let w = vec![u(total), u(sx[axis]), u(inner), u(nidx), at(xa), at(ia), at(ya)];
    l.step(Kernel::Gather, w, total);
    Ok(())
}
