//! Per-op shape rules. Each returns one `Fact` per output it can say something about; an error only
//! when inputs contradict the op (rank mismatch, bad axis), never for an op it does not know.
use super::Fact;
use crate::ir::tensor::{element_count, MAX_FOLD_ELEMENTS};
use crate::ir::{AttrValue, BinOp, DType, Dim, Node, Op, TensorData};

type R = Result<Vec<Fact>, String>;

/// Largest constant (elements) tracked on the side for shape computations.
const MAX_SIDE_CONST: u64 = 1 << 16;

fn fact(dtype: DType, shape: Option<Vec<Dim>>) -> Fact {
    Fact { dtype, shape, konst: None }
}

fn known(dims: &[i64]) -> Vec<Dim> {
    dims.iter().map(|d| Dim::Known(*d)).collect()
}

fn int_const(dims: Vec<i64>, vals: &[i64]) -> Fact {
    Fact {
        dtype: DType::I64,
        shape: Some(known(&dims)),
        konst: Some(TensorData::from_i64(dims, vals)),
    }
}

fn ints_of(f: &Option<Fact>) -> Option<Vec<i64>> {
    f.as_ref()?.konst.as_ref()?.to_i64_vec()
}

fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(format!("axis {axis} out of range for rank {rank}"));
    }
    Ok(a as usize)
}

/// Numpy-style broadcast of shapes.
pub fn broadcast(shapes: &[&Vec<Dim>]) -> Result<Vec<Dim>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![Dim::Known(1); rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            *o = match (&*o, d) {
                (Dim::Known(1), x) => x.clone(),
                (x, Dim::Known(1)) => x.clone(),
                (Dim::Known(a), Dim::Known(b)) if a == b => Dim::Known(*a),
                (Dim::Known(a), Dim::Known(b)) => {
                    return Err(format!("cannot broadcast dims {a} and {b}"))
                }
                (Dim::Known(a), _) | (_, Dim::Known(a)) => Dim::Known(*a),
                (a, b) if a == b => a.clone(),
                _ => Dim::Unknown,
            };
        }
    }
    Ok(out)
}

const NONE: Option<Fact> = None;

fn inp(ins: &[Option<Fact>], i: usize) -> &Option<Fact> {
    ins.get(i).unwrap_or(&NONE)
}

fn in_fact(ins: &[Option<Fact>], i: usize) -> Option<&Fact> {
    ins.get(i).and_then(|f| f.as_ref())
}

fn shape_of(ins: &[Option<Fact>], i: usize) -> Option<&Vec<Dim>> {
    in_fact(ins, i)?.shape.as_ref()
}

fn dtype_of(ins: &[Option<Fact>], i: usize) -> DType {
    in_fact(ins, i).map(|f| f.dtype).unwrap_or(DType::Undefined)
}

fn same_as_input(ins: &[Option<Fact>]) -> R {
    Ok(vec![fact(dtype_of(ins, 0), shape_of(ins, 0).cloned())])
}

pub(super) fn static_of(s: &[Dim]) -> Option<Vec<i64>> {
    s.iter().map(|d| d.known()).collect()
}

/// Shape rule dispatch.
pub fn infer_node(n: &Node, ins: &[Option<Fact>], opset: i64) -> R {
    match &n.op {
        Op::Act(_) | Op::Identity | Op::Softmax { .. } | Op::BatchNorm { .. } => same_as_input(ins),
        Op::Binary(b) => binary(*b, ins),
        Op::Conv { window, .. } => conv(window, ins),
        Op::Pool { window, ceil_mode, .. } => pool(window, ceil_mode.unwrap_or(0) != 0, ins),
        Op::GlobalAveragePool => {
            let Some(s) = shape_of(ins, 0) else { return same_as_input(ins) };
            let mut o = s.clone();
            for d in o.iter_mut().skip(2) {
                *d = Dim::Known(1);
            }
            Ok(vec![fact(dtype_of(ins, 0), Some(o))])
        }
        Op::Gemm { trans_a, trans_b, .. } => {
            let (Some(a), Some(b)) = (shape_of(ins, 0), shape_of(ins, 1)) else {
                return Ok(vec![fact(dtype_of(ins, 0), None)]);
            };
            if a.len() != 2 || b.len() != 2 {
                return Err(format!(
                    "Gemm needs rank-2 inputs, got ranks {} and {}",
                    a.len(),
                    b.len()
                ));
            }
            let m = if trans_a.unwrap_or(0) != 0 { a[1].clone() } else { a[0].clone() };
            let nn = if trans_b.unwrap_or(0) != 0 { b[0].clone() } else { b[1].clone() };
            Ok(vec![fact(dtype_of(ins, 0), Some(vec![m, nn]))])
        }
        Op::MatMul => matmul(ins),
        Op::Attention { .. } => {
            let scores = matmul(&ins[..ins.len().min(2)])?;
            let sc = scores.into_iter().next().map(Some).unwrap_or(None);
            matmul(&[sc, inp(ins, 2).clone()])
        }
        Op::Flatten { axis } => {
            let Some(s) = shape_of(ins, 0) else { return Ok(vec![fact(dtype_of(ins, 0), None)]) };
            let r = s.len() as i64;
            let ax = axis.unwrap_or(1);
            let ax = if ax < 0 { ax + r } else { ax };
            if ax < 0 || ax > r {
                return Err(format!("axis {} out of range for rank {r}", axis.unwrap_or(1)));
            }
            let a = ax as usize;
            let prod = |d: &[Dim]| {
                d.iter()
                    .try_fold(1i64, |acc, x| x.known().and_then(|k| acc.checked_mul(k)))
                    .map(Dim::Known)
                    .unwrap_or(Dim::Unknown)
            };
            Ok(vec![fact(dtype_of(ins, 0), Some(vec![prod(&s[..a]), prod(&s[a..])]))])
        }
        Op::Reshape { allowzero } => reshape(ins, allowzero.unwrap_or(0) != 0),
        Op::Transpose { perm } => {
            let Some(s) = shape_of(ins, 0) else { return Ok(vec![fact(dtype_of(ins, 0), None)]) };
            let perm: Vec<i64> =
                perm.clone().unwrap_or_else(|| (0..s.len() as i64).rev().collect());
            if perm.len() != s.len() {
                return Err(format!("perm {perm:?} does not match rank {}", s.len()));
            }
            let o = perm
                .iter()
                .map(|p| norm_axis(*p, s.len()).map(|p| s[p].clone()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(vec![fact(dtype_of(ins, 0), Some(o))])
        }
        Op::Concat { axis } => concat(*axis, ins),
        Op::QuantizeLinear { .. } => {
            let dt = in_fact(ins, 2).map(|f| f.dtype).unwrap_or(DType::U8);
            Ok(vec![fact(dt, shape_of(ins, 0).cloned())])
        }
        Op::DequantizeLinear { .. } => {
            let dt = in_fact(ins, 1)
                .map(|f| f.dtype)
                .filter(|d| *d != DType::Undefined)
                .unwrap_or(DType::F32);
            Ok(vec![fact(dt, shape_of(ins, 0).cloned())])
        }
        Op::Generic { op_type, .. } if n.domain.is_empty() || n.domain == "ai.onnx" => {
            generic(n, op_type, ins, opset)
        }
        Op::Generic { .. } => Ok(vec![]),
    }
}

fn binary(b: BinOp, ins: &[Option<Fact>]) -> R {
    let dt = dtype_of(ins, 0);
    let (Some(a), Some(c)) = (shape_of(ins, 0), shape_of(ins, 1)) else {
        return Ok(vec![fact(dt, None)]);
    };
    let shape = broadcast(&[a, c])?;
    let mut f = fact(dt, Some(shape.clone()));
    // Integer arithmetic on small constants (shape computations).
    if let (Some(x), Some(y), Some(dims)) =
        (ints_of(inp(ins, 0)), ints_of(inp(ins, 1)), static_of(&shape))
    {
        if matches!(dt, DType::I64 | DType::I32)
            && dims.len() <= 1
            && !x.is_empty()
            && !y.is_empty()
            && (x.len() == 1 || y.len() == 1 || x.len() == y.len())
        {
            let len = x.len().max(y.len());
            let get = |v: &Vec<i64>, i: usize| if v.len() == 1 { v[0] } else { v[i] };
            let vals: Option<Vec<i64>> = (0..len)
                .map(|i| {
                    let (p, q) = (get(&x, i), get(&y, i));
                    match b {
                        BinOp::Add => p.checked_add(q),
                        BinOp::Sub => p.checked_sub(q),
                        BinOp::Mul => p.checked_mul(q),
                        BinOp::Div => {
                            if q == 0 {
                                None
                            } else {
                                Some(p.div_euclid(q))
                            }
                        }
                        BinOp::Pow => None,
                    }
                })
                .collect();
            if let Some(vals) = vals {
                f = int_const(dims, &vals);
                f.dtype = dt;
                if dt == DType::I32 {
                    f.konst = None;
                }
            }
        }
    }
    Ok(vec![f])
}

fn conv_out(
    input: &Dim,
    k: i64,
    stride: i64,
    dil: i64,
    (pad_begin, pad): (i64, i64),
    auto: &str,
    ceil: bool,
) -> Dim {
    let Some(i) = input.known() else { return Dim::Unknown };
    let ek = k.saturating_sub(1).saturating_mul(dil).saturating_add(1);
    match auto {
        "SAME_UPPER" | "SAME_LOWER" => Dim::Known(i.saturating_add(stride - 1) / stride),
        "VALID" => Dim::Known((i.saturating_sub(ek) / stride + 1).max(0)),
        _ => {
            let num = i.saturating_add(pad).saturating_sub(ek);
            if num < 0 {
                return Dim::Known(0);
            }
            let mut o =
                if ceil { num.saturating_add(stride - 1) / stride + 1 } else { num / stride + 1 };
            // ONNX: the last window must start inside the (left-)padded input.
            if ceil && (o - 1).saturating_mul(stride) >= i.saturating_add(pad_begin) {
                o -= 1;
            }
            Dim::Known(o)
        }
    }
}

fn spatial(window: &crate::ir::Window, x: &[Dim], kernel: &[i64], ceil: bool) -> Vec<Dim> {
    let nsp = kernel.len();
    let strides = window.strides.clone().unwrap_or_else(|| vec![1; nsp]);
    let dil = window.dilations.clone().unwrap_or_else(|| vec![1; nsp]);
    let pads = window.pads.clone().unwrap_or_else(|| vec![0; nsp * 2]);
    let auto = window.auto_pad.clone().unwrap_or_else(|| "NOTSET".into());
    (0..nsp)
        .map(|i| {
            let begin = pads.get(i).copied().unwrap_or(0);
            let p = (begin, begin + pads.get(i + nsp).copied().unwrap_or(0));
            conv_out(
                x.get(2 + i).unwrap_or(&Dim::Unknown),
                kernel[i],
                strides.get(i).copied().unwrap_or(1).max(1),
                dil.get(i).copied().unwrap_or(1).max(1),
                p,
                &auto,
                ceil,
            )
        })
        .collect()
}

fn conv(window: &crate::ir::Window, ins: &[Option<Fact>]) -> R {
    let dt = dtype_of(ins, 0);
    let (Some(x), Some(w)) = (shape_of(ins, 0), shape_of(ins, 1)) else {
        return Ok(vec![fact(dt, None)]);
    };
    if x.len() != w.len() || x.len() < 3 {
        return Err(format!("input rank {} and weight rank {} do not match", x.len(), w.len()));
    }
    let kernel: Vec<i64> = match &window.kernel_shape {
        Some(k) => k.clone(),
        None => match static_of(&w[2..]) {
            Some(k) => k,
            None => return Ok(vec![fact(dt, None)]),
        },
    };
    let mut out = vec![x[0].clone(), w[0].clone()];
    out.extend(spatial(window, x, &kernel, false));
    Ok(vec![fact(dt, Some(out))])
}

fn pool(window: &crate::ir::Window, ceil: bool, ins: &[Option<Fact>]) -> R {
    let dt = dtype_of(ins, 0);
    let Some(x) = shape_of(ins, 0) else { return Ok(vec![fact(dt, None)]) };
    let Some(kernel) = window.kernel_shape.clone() else {
        return Err("missing kernel_shape".into());
    };
    if x.len() != kernel.len() + 2 {
        return Err(format!("kernel_shape {kernel:?} does not match input rank {}", x.len()));
    }
    let mut out = vec![x[0].clone(), x[1].clone()];
    out.extend(spatial(window, x, &kernel, ceil));
    Ok(vec![fact(dt, Some(out.clone())), fact(DType::I64, Some(out))])
}

fn matmul(ins: &[Option<Fact>]) -> R {
    let dt = dtype_of(ins, 0);
    let (Some(a), Some(b)) = (shape_of(ins, 0), shape_of(ins, 1)) else {
        return Ok(vec![fact(dt, None)]);
    };
    if a.is_empty() || b.is_empty() {
        return Err("MatMul of a scalar".into());
    }
    let (a2, b2) = (a.len() == 1, b.len() == 1);
    let av = if a2 { vec![Dim::Known(1), a[0].clone()] } else { a.clone() };
    let bv = if b2 { vec![b[0].clone(), Dim::Known(1)] } else { b.clone() };
    let batch = broadcast(&[&av[..av.len() - 2].to_vec(), &bv[..bv.len() - 2].to_vec()])?;
    let mut out = batch;
    if !a2 {
        out.push(av[av.len() - 2].clone());
    }
    if !b2 {
        out.push(bv[bv.len() - 1].clone());
    }
    Ok(vec![fact(dt, Some(out))])
}

fn reshape(ins: &[Option<Fact>], allowzero: bool) -> R {
    let dt = dtype_of(ins, 0);
    let Some(target) = ints_of(&ins.get(1).cloned().flatten()) else {
        let rank = shape_of(ins, 1).and_then(|s| s.first()).and_then(|d| d.known());
        return Ok(vec![fact(dt, rank.map(|r| vec![Dim::Unknown; r.max(0) as usize]))]);
    };
    let x = shape_of(ins, 0);
    let total = x.and_then(|s| static_of(s)).and_then(|s| element_count(&s));
    let mut out: Vec<Dim> = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &t) in target.iter().enumerate() {
        out.push(match t {
            0 if !allowzero => x.and_then(|s| s.get(i).cloned()).unwrap_or(Dim::Unknown),
            -1 => {
                if infer_at.is_some() {
                    return Err("more than one -1 in the target shape".into());
                }
                infer_at = Some(i);
                Dim::Unknown
            }
            t if t < 0 => return Err(format!("invalid target dim {t}")),
            t => Dim::Known(t),
        });
    }
    if let (Some(at), Some(total)) = (infer_at, total) {
        let rest: Option<i64> = out
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != at)
            .try_fold(1i64, |acc, (_, d)| d.known().and_then(|k| acc.checked_mul(k)));
        if let Some(rest) = rest {
            if rest > 0 && (total as i64) >= 0 {
                out[at] = Dim::Known(total as i64 / rest);
            }
        }
    }
    let mut f = fact(dt, Some(out.clone()));
    if let (Some(k), Some(dims)) = (in_fact(ins, 0).and_then(|f| f.konst.clone()), static_of(&out))
    {
        if k.len() <= MAX_SIDE_CONST {
            f.konst = Some(TensorData { dims, ..k });
        }
    }
    Ok(vec![f])
}

fn concat(axis: i64, ins: &[Option<Fact>]) -> R {
    let dt = ins
        .iter()
        .flatten()
        .map(|f| f.dtype)
        .find(|d| *d != DType::Undefined)
        .unwrap_or(DType::Undefined);
    let shapes: Option<Vec<&Vec<Dim>>> =
        ins.iter().map(|f| f.as_ref().and_then(|f| f.shape.as_ref())).collect();
    let Some(shapes) = shapes else { return Ok(vec![fact(dt, None)]) };
    let Some(first) = shapes.first() else { return Err("no inputs".into()) };
    let a = norm_axis(axis, first.len())?;
    let mut out = (*first).clone();
    let mut sum = Some(0i64);
    for s in &shapes {
        if s.len() != first.len() {
            return Err(format!("inputs of rank {} and {}", first.len(), s.len()));
        }
        sum = sum.and_then(|acc| s[a].known().and_then(|k| acc.checked_add(k)));
    }
    out[a] = sum.map(Dim::Known).unwrap_or(Dim::Unknown);
    let mut f = fact(dt, Some(out.clone()));
    if dt == DType::I64 && out.len() == 1 {
        let vals: Option<Vec<i64>> =
            ins.iter().map(ints_of).collect::<Option<Vec<_>>>().map(|v| v.concat());
        if let Some(vals) = vals {
            f = int_const(vec![vals.len() as i64], &vals);
        }
    }
    Ok(vec![f])
}

fn axes_arg(n: &Node, ins: &[Option<Fact>], input: usize) -> Option<Vec<i64>> {
    n.op.attr_ints("axes").or_else(|| ints_of(&ins.get(input).cloned().flatten()))
}

fn generic(n: &Node, op: &str, ins: &[Option<Fact>], opset: i64) -> R {
    let dt0 = dtype_of(ins, 0);
    match op {
        "Abs"
        | "Neg"
        | "Exp"
        | "Log"
        | "Sqrt"
        | "Erf"
        | "Reciprocal"
        | "Floor"
        | "Ceil"
        | "Round"
        | "Sin"
        | "Cos"
        | "Elu"
        | "Selu"
        | "Softplus"
        | "Softsign"
        | "Gelu"
        | "Mish"
        | "PRelu"
        | "ThresholdedRelu"
        | "Celu"
        | "LogSoftmax"
        | "Hardmax"
        | "LRN"
        | "InstanceNormalization"
        | "MeanVarianceNormalization"
        | "Not" => same_as_input(ins),
        "Dropout" => Ok(vec![
            fact(dt0, shape_of(ins, 0).cloned()),
            fact(DType::Bool, shape_of(ins, 0).cloned()),
        ]),
        "LayerNormalization" => {
            let s = shape_of(ins, 0).cloned();
            Ok(vec![fact(dt0, s), fact(DType::F32, None), fact(DType::F32, None)])
        }
        // Element-wise with broadcasting; Add..Pow land here when an attribute kept them generic.
        "Max" | "Min" | "Sum" | "Mean" | "Equal" | "Less" | "Greater" | "LessOrEqual"
        | "GreaterOrEqual" | "And" | "Or" | "Xor" | "Mod" | "Add" | "Sub" | "Mul" | "Div"
        | "Pow" | "BitShift" => {
            // Absent optional inputs (empty names) take no part; a present input of unknown shape makes
            // the result unknown.
            let shapes: Option<Vec<&Vec<Dim>>> =
                ins.iter().flatten().map(|f| f.shape.as_ref()).collect();
            let dt = if matches!(
                op,
                "Equal"
                    | "Less"
                    | "Greater"
                    | "LessOrEqual"
                    | "GreaterOrEqual"
                    | "And"
                    | "Or"
                    | "Xor"
            ) {
                DType::Bool
            } else {
                dt0
            };
            Ok(vec![fact(dt, shapes.map(|s| broadcast(&s)).transpose()?)])
        }
        "Where" => {
            let shapes: Option<Vec<&Vec<Dim>>> =
                ins.iter().flatten().map(|f| f.shape.as_ref()).collect();
            Ok(vec![fact(dtype_of(ins, 1), shapes.map(|s| broadcast(&s)).transpose()?)])
        }
        "Cast" => {
            let to =
                n.op.attr_int("to").map(|t| DType::from_onnx(t as i32)).unwrap_or(DType::Undefined);
            let mut f = fact(to, shape_of(ins, 0).cloned());
            if matches!(to, DType::I64) {
                if let (Some(v), Some(s)) =
                    (ints_of(inp(ins, 0)), shape_of(ins, 0).and_then(|s| static_of(s)))
                {
                    f = int_const(s, &v);
                }
            }
            Ok(vec![f])
        }
        "Constant" => {
            let t = match n.op.attr("value") {
                Some(AttrValue::Tensor(t)) => Some(t),
                _ => None,
            };
            if let Some(t) = t {
                let side = (t.len() <= MAX_SIDE_CONST).then(|| t.clone());
                return Ok(vec![Fact { dtype: t.dtype, shape: Some(known(&t.dims)), konst: side }]);
            }
            if let Some(v) = n.op.attr_int("value_int") {
                return Ok(vec![int_const(vec![], &[v])]);
            }
            if let Some(v) = n.op.attr_ints("value_ints") {
                return Ok(vec![int_const(vec![v.len() as i64], &v)]);
            }
            if let Some(v) = n.op.attr_float("value_float") {
                return Ok(vec![Fact {
                    dtype: DType::F32,
                    shape: Some(vec![]),
                    konst: Some(TensorData::from_f32(vec![], &[v])),
                }]);
            }
            Ok(vec![])
        }
        "Pad" => {
            // Same rank; each dim grows by its begin and end pads where they are constants (and no
            // `axes` input narrows them to some dims).
            let Some(s) = shape_of(ins, 0) else { return Ok(vec![fact(dtype_of(ins, 0), None)]) };
            let r = s.len();
            let pads = ints_of(inp(ins, 1)).or_else(|| n.op.attr_ints("pads"));
            let axes = ins.get(3).is_some_and(|f| f.is_some());
            let out = match pads {
                Some(p) if p.len() == 2 * r && !axes => s
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match d.known() {
                        Some(d) => Dim::Known(d.saturating_add(p[i]).saturating_add(p[i + r])),
                        None => Dim::Unknown,
                    })
                    .collect(),
                _ => vec![Dim::Unknown; r],
            };
            Ok(vec![fact(dtype_of(ins, 0), Some(out))])
        }
        "ConvTranspose" => {
            // [N, C_out·group, spatial…]: `output_shape` when given, else
            // stride·(in − 1) + output_padding + (k − 1)·dilation + 1 − pads (in·stride for SAME).
            let (x, w) = (shape_of(ins, 0), shape_of(ins, 1));
            let out = x.map(|x| {
                let r = x.len();
                let sp = r.saturating_sub(2);
                let mut out = vec![Dim::Unknown; r];
                if let Some(d) = x.first() {
                    out[0] = d.clone();
                }
                let group = n.op.attr_int("group").unwrap_or(1);
                if let (Some(c), true) = (w.and_then(|w| w.get(1)).and_then(|d| d.known()), r >= 2) {
                    out[1] = Dim::Known(c.saturating_mul(group));
                }
                let attr = |name: &str, default: i64| n.op.attr_ints(name).unwrap_or_else(|| vec![default; sp]);
                let (strides, dil, op) = (attr("strides", 1), attr("dilations", 1), attr("output_padding", 0));
                let pads = n.op.attr_ints("pads").unwrap_or_else(|| vec![0; 2 * sp]);
                let kernel: Vec<Option<i64>> = match n.op.attr_ints("kernel_shape") {
                    Some(k) => k.into_iter().map(Some).collect(),
                    None => (0..sp).map(|i| w.and_then(|w| w.get(2 + i)).and_then(|d| d.known())).collect(),
                };
                let same = matches!(n.op.attr("auto_pad"), Some(crate::ir::AttrValue::String(a)) if a.starts_with(b"SAME"));
                let given = n.op.attr_ints("output_shape");
                for i in 0..sp {
                    out[2 + i] = match (&given, x[2 + i].known(), kernel.get(i).copied().flatten()) {
                        (Some(g), _, _) if g.len() >= sp => Dim::Known(g[g.len() - sp + i]),
                        (_, Some(d), _) if same => Dim::Known(d.saturating_mul(strides.get(i).copied().unwrap_or(1))),
                        (_, Some(d), Some(k)) => {
                            let g = |v: &Vec<i64>, j: usize, dflt: i64| v.get(j).copied().unwrap_or(dflt);
                            let v = g(&strides, i, 1)
                                .saturating_mul(d - 1)
                                .saturating_add(g(&op, i, 0))
                                .saturating_add((k - 1).saturating_mul(g(&dil, i, 1)) + 1)
                                .saturating_sub(g(&pads, i, 0))
                                .saturating_sub(g(&pads, sp + i, 0));
                            if v >= 0 { Dim::Known(v) } else { Dim::Unknown }
                        }
                        _ => Dim::Unknown,
                    };
                }
                out
            });
            Ok(vec![fact(dtype_of(ins, 0), out)])
        }
        "Resize" | "Upsample" => {
            // `sizes` when given (opset >= 11, input 3), else floor(in × scale) (input 2; input 1 for
            // Upsample and opset-10 Resize); `axes` (opset 18) names the axes they cover.
            let x = shape_of(ins, 0).cloned();
            let legacy = op == "Upsample" || opset < 11;
            let sizes = if legacy { None } else { ints_of(inp(ins, 3)).filter(|v| !v.is_empty()) };
            let scales = in_fact(ins, if legacy { 1 } else { 2 })
                .and_then(|f| f.konst.as_ref())
                .and_then(|t| t.to_f64_vec())
                .filter(|v| !v.is_empty())
                .or_else(|| match n.op.attr("scales") {
                    Some(crate::ir::AttrValue::Floats(v)) => {
                        Some(v.iter().map(|x| *x as f64).collect())
                    }
                    _ => None,
                });
            let out = x.map(|x| {
                let rank = x.len();
                let axes: Vec<usize> = match n.op.attr_ints("axes") {
                    Some(a) => a
                        .iter()
                        .map(|a| (if *a < 0 { a + rank as i64 } else { *a }) as usize)
                        .collect(),
                    None => (0..rank).collect(),
                };
                let mut out = x.clone();
                let stretch = match n.op.attr("keep_aspect_ratio_policy") {
                    Some(crate::ir::AttrValue::String(p)) => p == b"stretch",
                    _ => true,
                };
                for (k, a) in axes.iter().enumerate() {
                    let Some(slot) = out.get_mut(*a) else { return vec![Dim::Unknown; rank] };
                    *slot = match (&sizes, &scales, x[*a].known()) {
                        (Some(sz), _, _) if stretch && sz.len() == axes.len() => Dim::Known(sz[k]),
                        (Some(_), _, _) => Dim::Unknown,
                        (None, Some(sc), Some(d)) if sc.len() == axes.len() => {
                            let v = (d as f64 * sc[k]).floor();
                            if v.is_finite() && (0.0..=i64::MAX as f64 / 2.0).contains(&v) {
                                Dim::Known(v as i64)
                            } else {
                                Dim::Unknown
                            }
                        }
                        _ => Dim::Unknown,
                    };
                }
                out
            });
            Ok(vec![fact(dtype_of(ins, 0), out)])
        }
        "Tile" => {
            // Each dim times its repeat count (the checks bound the result).
            let out = match (shape_of(ins, 0), ints_of(inp(ins, 1))) {
                (Some(s), Some(r)) if r.len() == s.len() => Some(
                    s.iter()
                        .zip(&r)
                        .map(|(d, k)| match (d.known(), *k) {
                            (Some(d), k) => Dim::Known(d.saturating_mul(k)),
                            (None, 1) => d.clone(),
                            _ => Dim::Unknown,
                        })
                        .collect(),
                ),
                (Some(s), _) => Some(vec![Dim::Unknown; s.len()]),
                _ => None,
            };
            Ok(vec![fact(dtype_of(ins, 0), out)])
        }
        "OneHot" => {
            // The indices' shape with `depth` inserted at `axis`; the values' element type.
            let dt = dtype_of(ins, 2);
            let depth = in_fact(ins, 1)
                .and_then(|f| f.konst.as_ref())
                .and_then(|t| t.to_f64_vec())
                .and_then(|v| v.first().copied())
                .filter(|d| d.is_finite() && *d >= 0.0 && *d <= i64::MAX as f64)
                .map_or(Dim::Unknown, |d| Dim::Known(d as i64));
            let out = shape_of(ins, 0).and_then(|s| {
                let r = s.len() as i64 + 1;
                let a = n.op.attr_int("axis").unwrap_or(-1);
                let a = if a < 0 { a + r } else { a };
                (0..r).contains(&a).then(|| {
                    let mut o = s.clone();
                    o.insert(a as usize, depth);
                    o
                })
            });
            Ok(vec![fact(dt, out)])
        }
        "NonZero" => {
            // [rank of the input, number of non-zeros]: the count is data-dependent.
            let r = shape_of(ins, 0).map(|s| s.len() as i64);
            Ok(vec![fact(DType::I64, r.map(|r| vec![Dim::Known(r), Dim::Unknown]))])
        }
        "Shape" => {
            let Some(s) = shape_of(ins, 0) else {
                return Ok(vec![fact(DType::I64, Some(vec![Dim::Unknown]))]);
            };
            let r = s.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r);
            let start = clamp(n.op.attr_int("start").unwrap_or(0));
            let end = clamp(n.op.attr_int("end").unwrap_or(r));
            let sel: Vec<Dim> =
                if start < end { s[start as usize..end as usize].to_vec() } else { vec![] };
            match static_of(&sel) {
                Some(v) => Ok(vec![int_const(vec![v.len() as i64], &v)]),
                None => Ok(vec![fact(DType::I64, Some(vec![Dim::Known(sel.len() as i64)]))]),
            }
        }
        "Size" => Ok(vec![fact(DType::I64, Some(vec![]))]),
        "Gather" => {
            let (Some(x), Some(idx)) = (shape_of(ins, 0), shape_of(ins, 1)) else {
                return Ok(vec![fact(dt0, None)]);
            };
            let a = norm_axis(n.op.attr_int("axis").unwrap_or(0), x.len())?;
            let mut out: Vec<Dim> = x[..a].to_vec();
            out.extend(idx.iter().cloned());
            out.extend(x[a + 1..].iter().cloned());
            let mut f = fact(dt0, Some(out.clone()));
            if let (Some(data), Some(ix), Some(dims)) =
                (ints_of(inp(ins, 0)), ints_of(inp(ins, 1)), static_of(&out))
            {
                if x.len() == 1 {
                    let len = data.len() as i64;
                    let vals: Option<Vec<i64>> = ix
                        .iter()
                        .map(|&i| {
                            let i = if i < 0 { i + len } else { i };
                            data.get(i as usize).copied()
                        })
                        .collect();
                    if let Some(vals) = vals {
                        f = int_const(dims, &vals);
                        f.dtype = dt0;
                    }
                }
            }
            Ok(vec![f])
        }
        "Unsqueeze" => {
            let Some(x) = shape_of(ins, 0) else { return Ok(vec![fact(dt0, None)]) };
            let Some(axes) = axes_arg(n, ins, 1) else { return Ok(vec![fact(dt0, None)]) };
            let r = x.len() + axes.len();
            let mut axes: Vec<usize> =
                axes.iter().map(|a| norm_axis(*a, r)).collect::<Result<_, _>>()?;
            axes.sort();
            let mut out = x.clone();
            for a in axes {
                if a > out.len() {
                    return Err("bad axes".into());
                }
                out.insert(a, Dim::Known(1));
            }
            let mut f = fact(dt0, Some(out.clone()));
            if let (Some(v), Some(dims)) = (ints_of(inp(ins, 0)), static_of(&out)) {
                f = int_const(dims, &v);
                f.dtype = dt0;
            }
            Ok(vec![f])
        }
        "Squeeze" => {
            let Some(x) = shape_of(ins, 0) else { return Ok(vec![fact(dt0, None)]) };
            let axes = axes_arg(n, ins, 1);
            let out: Vec<Dim> = match axes {
                Some(axes) => {
                    let axes: Vec<usize> =
                        axes.iter().map(|a| norm_axis(*a, x.len())).collect::<Result<_, _>>()?;
                    x.iter()
                        .enumerate()
                        .filter(|(i, _)| !axes.contains(i))
                        .map(|(_, d)| d.clone())
                        .collect()
                }
                None if ins.get(1).map(|f| f.is_some()).unwrap_or(false) => {
                    return Ok(vec![fact(dt0, None)])
                }
                None if x.iter().all(|d| d.known().is_some()) => {
                    x.iter().filter(|d| d.known() != Some(1)).cloned().collect()
                }
                None => return Ok(vec![fact(dt0, None)]),
            };
            let mut f = fact(dt0, Some(out.clone()));
            if let (Some(v), Some(dims)) = (ints_of(inp(ins, 0)), static_of(&out)) {
                f = int_const(dims, &v);
                f.dtype = dt0;
            }
            Ok(vec![f])
        }
        "Expand" => {
            let (Some(x), Some(t)) = (shape_of(ins, 0), ints_of(&ins.get(1).cloned().flatten()))
            else {
                return Ok(vec![fact(dt0, None)]);
            };
            Ok(vec![fact(dt0, Some(broadcast(&[x, &known(&t)])?))])
        }
        "ConstantOfShape" => {
            let dt = match n.op.attr("value") {
                Some(AttrValue::Tensor(t)) => t.dtype,
                _ => DType::F32,
            };
            match ints_of(&ins.first().cloned().flatten()) {
                Some(dims) => {
                    let mut f = fact(dt, Some(known(&dims)));
                    if let (Some(AttrValue::Tensor(t)), Some(cnt)) =
                        (n.op.attr("value"), element_count(&dims))
                    {
                        if dt == DType::I64 && cnt <= MAX_SIDE_CONST {
                            if let Some(v) = t.to_i64_vec().and_then(|v| v.first().copied()) {
                                f = int_const(dims.clone(), &vec![v; cnt as usize]);
                            }
                        }
                    }
                    Ok(vec![f])
                }
                None => Ok(vec![fact(dt, None)]),
            }
        }
        "Split" => {
            let Some(x) = shape_of(ins, 0) else { return Ok(vec![]) };
            let a = norm_axis(n.op.attr_int("axis").unwrap_or(0), x.len())?;
            let nout = n.outputs.len() as i64;
            let split = n.op.attr_ints("split").or_else(|| ints_of(&ins.get(1).cloned().flatten()));
            let sizes: Vec<Dim> = match (split, x[a].known().filter(|l| *l >= 0)) {
                (Some(s), _) => s.into_iter().map(Dim::Known).collect(),
                (None, Some(len)) if nout > 0 => {
                    let chunk = len.saturating_add(nout - 1) / nout;
                    (0..nout)
                        .map(|i| {
                            Dim::Known(len.saturating_sub(i.saturating_mul(chunk)).clamp(0, chunk))
                        })
                        .collect()
                }
                _ => vec![Dim::Unknown; nout as usize],
            };
            Ok(sizes
                .into_iter()
                .map(|d| {
                    let mut s = x.clone();
                    s[a] = d;
                    fact(dt0, Some(s))
                })
                .collect())
        }
        "Slice" => slice(n, ins, opset),
        "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceSum" | "ReduceProd" | "ReduceL2"
        | "ReduceL1" | "ReduceLogSumExp" | "ReduceSumSquare" | "ArgMax" | "ArgMin" => {
            let Some(x) = shape_of(ins, 0) else { return Ok(vec![fact(dt0, None)]) };
            let keep = n.op.attr_int("keepdims").unwrap_or(1) != 0;
            let arg = op.starts_with("Arg");
            let axes = if arg {
                Some(vec![n.op.attr_int("axis").unwrap_or(0)])
            } else if opset >= 18 || op == "ReduceSum" {
                n.op.attr_ints("axes").or_else(|| ints_of(&ins.get(1).cloned().flatten()))
            } else {
                n.op.attr_ints("axes")
            };
            let has_axes_input = ins.get(1).map(|f| f.is_some()).unwrap_or(false);
            let axes: Vec<usize> = match axes {
                Some(a) if !a.is_empty() => {
                    a.iter().map(|a| norm_axis(*a, x.len())).collect::<Result<_, _>>()?
                }
                Some(_) | None if has_axes_input && axes_arg(n, ins, 1).is_none() => {
                    return Ok(vec![fact(dt0, None)])
                }
                _ if n.op.attr_int("noop_with_empty_axes").unwrap_or(0) != 0 => {
                    return same_as_input(ins)
                }
                _ => (0..x.len()).collect(),
            };
            let out: Vec<Dim> = x
                .iter()
                .enumerate()
                .filter_map(|(i, d)| {
                    if axes.contains(&i) {
                        keep.then_some(Dim::Known(1))
                    } else {
                        Some(d.clone())
                    }
                })
                .collect();
            Ok(vec![fact(if arg { DType::I64 } else { dt0 }, Some(out))])
        }
        "LSTM" | "GRU" | "RNN" => {
            let (Some(x), Some(w)) = (shape_of(ins, 0), shape_of(ins, 1)) else {
                return Ok(vec![]);
            };
            if x.len() != 3 {
                return Err(format!("input of rank {} (expected 3)", x.len()));
            }
            let hidden = n.op.attr_int("hidden_size").map(Dim::Known).unwrap_or(Dim::Unknown);
            let dirs = w.first().cloned().unwrap_or(Dim::Unknown);
            let batch_first = n.op.attr_int("layout").unwrap_or(0) == 1;
            let (seq, batch) = if batch_first {
                (x[1].clone(), x[0].clone())
            } else {
                (x[0].clone(), x[1].clone())
            };
            let y = if batch_first {
                vec![batch.clone(), seq, dirs.clone(), hidden.clone()]
            } else {
                vec![seq, dirs.clone(), batch.clone(), hidden.clone()]
            };
            let h = if batch_first { vec![batch, dirs, hidden] } else { vec![dirs, batch, hidden] };
            Ok(vec![fact(dt0, Some(y)), fact(dt0, Some(h.clone())), fact(dt0, Some(h))])
        }
        "Range" => Ok(vec![fact(dt0, Some(vec![Dim::Unknown]))]),
        _ => Ok(vec![]),
    }
}

fn slice(n: &Node, ins: &[Option<Fact>], opset: i64) -> R {
    let dt = dtype_of(ins, 0);
    let Some(x) = shape_of(ins, 0) else { return Ok(vec![fact(dt, None)]) };
    let get = |i: usize, attr: &str| {
        if opset >= 10 {
            ints_of(&ins.get(i).cloned().flatten())
        } else {
            n.op.attr_ints(attr)
        }
    };
    let (Some(starts), Some(ends)) = (get(1, "starts"), get(2, "ends")) else {
        return Ok(vec![fact(dt, Some(vec![Dim::Unknown; x.len()]))]);
    };
    let axes = get(3, "axes").unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = if opset >= 10 { ints_of(&ins.get(4).cloned().flatten()) } else { None }
        .unwrap_or_else(|| vec![1; starts.len()]);
    if starts.len() != ends.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("starts/ends/axes/steps lengths differ".into());
    }
    let mut out = x.clone();
    let mut ranges: Vec<(i64, i64, i64)> = Vec::new();
    for i in 0..starts.len() {
        let a = norm_axis(axes[i], x.len())?;
        let step = steps[i];
        if step == 0 {
            return Err("step 0".into());
        }
        let Some(len) = x[a].known().filter(|l| *l >= 0) else {
            out[a] = Dim::Unknown;
            continue;
        };
        if len == 0 {
            out[a] = Dim::Known(0);
            continue;
        }
        let clampi = |v: i64, lo: i64, hi: i64| {
            let v = if v < 0 { v + len } else { v };
            v.clamp(lo, hi)
        };
        let (s, e) = if step > 0 {
            (clampi(starts[i], 0, len), clampi(ends[i], 0, len))
        } else {
            (clampi(starts[i], 0, len - 1), clampi(ends[i], -1, len - 1))
        };
        let cnt = if step > 0 {
            ((e - s).max(0) + step - 1) / step
        } else {
            ((s - e).max(0) + (-step) - 1) / (-step)
        };
        out[a] = Dim::Known(cnt);
        if a == 0 {
            ranges.push((s, step, cnt));
        }
    }
    let mut f = fact(dt, Some(out.clone()));
    if x.len() == 1 && ranges.len() == 1 {
        if let Some(v) = ints_of(inp(ins, 0)) {
            let (s, step, cnt) = ranges[0];
            let vals: Vec<i64> =
                (0..cnt).filter_map(|k| v.get((s + k * step) as usize).copied()).collect();
            if vals.len() as i64 == cnt {
                f = int_const(vec![cnt], &vals);
                f.dtype = dt;
            }
        }
    }
    let _ = MAX_FOLD_ELEMENTS;
    Ok(vec![f])
}
