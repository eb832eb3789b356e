//! Spec checks run before a node's shape rule: attribute and constant-input values that the ONNX spec
//! forbids and that would crash or explode an evaluator downstream (tract panics on a zero Slice step, a
//! zero stride, an out-of-range Gather index; loops forever on a repeated Transpose axis; allocates without
//! bound for a huge ConstantOfShape or Tile). Each error names the attribute (or input) and its value; the
//! caller adds the node. Values inference cannot see (computed at run time) are not checked here.
use super::Fact;
use crate::ir::{DType, Dim, Node, Op, Window};

/// The most elements any single tensor may have: the bound the importer applies to declared dims.
pub const MAX_ELEMENTS: u64 = crate::ir::tensor::MAX_FOLD_ELEMENTS;

type R = Result<(), String>;

/// More dims than any real tensor has: an axis past it is an error even where the rank is unknown.
pub const MAX_RANK: usize = 64;

fn ints_of(f: Option<&Fact>) -> Option<Vec<i64>> {
    f?.konst.as_ref()?.to_i64_vec()
}

fn rank_of(f: Option<&Fact>) -> Option<usize> {
    f?.shape.as_ref().map(|s| s.len())
}

fn dims_of(f: Option<&Fact>) -> Option<&Vec<Dim>> {
    f?.shape.as_ref()
}

fn positive(name: &str, v: &Option<Vec<i64>>) -> R {
    if let Some(v) = v {
        if v.iter().any(|x| *x <= 0) {
            return Err(format!("attribute '{name}' = {v:?}: every value must be positive"));
        }
    }
    Ok(())
}

/// A window's (dilated) kernel fits its padded input: with explicit or no padding, a larger one has no valid
/// output, and no kernel may pass 2^20 whatever the padding (tract iterates it: a kernel of i64::MAX
/// hangs it).
fn kernel_fits(w: &Window, x: Option<&Fact>, kernel: Option<Vec<i64>>) -> R {
    let Some(k) = kernel else { return Ok(()) };
    let dil = w.dilations.clone().unwrap_or_else(|| vec![1; k.len()]);
    let ext: Vec<i64> = k
        .iter()
        .zip(dil.iter().chain(std::iter::repeat(&1)))
        .map(|(k, d)| (k - 1).saturating_mul(*d).saturating_add(1))
        .collect();
    if let Some(e) = ext.iter().find(|e| **e > 1 << 20) {
        return Err(format!("attribute 'kernel_shape' = {k:?}: a window of {e} elements per dim is past kiln's bound"));
    }
    let explicit = w.auto_pad.as_deref().is_none_or(|a| a == "NOTSET" || a == "VALID");
    let spatial = dims_of(x).and_then(|s| s.get(2..)).map(|s| s.to_vec());
    if let (true, Some(spatial)) = (explicit, spatial) {
        let pads = w.pads.clone().unwrap_or_else(|| vec![0; 2 * k.len()]);
        for (i, (e, d)) in ext.iter().zip(&spatial).enumerate() {
            let Some(d) = d.known() else { continue };
            let padded =
                d + pads.get(i).copied().unwrap_or(0) + pads.get(i + k.len()).copied().unwrap_or(0);
            if *e > padded {
                return Err(format!(
                    "attribute 'kernel_shape' = {k:?}: the window ({e}) is larger than the padded input ({padded}) along spatial dim {i}"
                ));
            }
        }
    }
    Ok(())
}

/// A transposed convolution's output (stride × input + window + output padding per spatial dim, or
/// `output_shape`) stays within kiln's bound: evaluators allocate it whole ([3,2,5] at stride 2^26 asks
/// for 2^31 elements; found by the graph fuzz target).
fn transposed_output(n: &Node, w: &Window, x: Option<&Fact>, wt: Option<&Fact>) -> R {
    if let Some(os) = n.op.attr_ints("output_shape") {
        if os.iter().any(|d| *d < 0) {
            return Err(format!("attribute 'output_shape' = {os:?}: dims must be non-negative"));
        }
        bounded(&format!("attribute 'output_shape' = {os:?}"), &os)?;
    }
    let (Some(x), Some(wd)) = (
        dims_of(x).and_then(|s| super::ops::static_of(s)),
        dims_of(wt).and_then(|s| super::ops::static_of(s)),
    ) else {
        return Ok(());
    };
    if x.len() < 3 || wd.len() != x.len() {
        return Ok(());
    }
    let spatial = x.len() - 2;
    let k = w.kernel_shape.clone().unwrap_or_else(|| wd[2..].to_vec());
    let one =
        |v: &Option<Vec<i64>>, i: usize| v.as_ref().and_then(|v| v.get(i)).copied().unwrap_or(1);
    let out_pad = n.op.attr_ints("output_padding");
    let group = n.op.attr_int("group").unwrap_or(1).max(1);
    let mut out = vec![x[0], wd[1].saturating_mul(group)];
    for i in 0..spatial {
        let ext =
            (k.get(i).copied().unwrap_or(1) - 1).max(0).saturating_mul(one(&w.dilations, i)) + 1;
        let pad = out_pad.as_ref().and_then(|p| p.get(i)).copied().unwrap_or(0).max(0);
        out.push(
            one(&w.strides, i).saturating_mul(x[2 + i]).saturating_add(ext).saturating_add(pad),
        );
    }
    bounded(&format!("attribute 'strides' = {:?}", w.strides.clone().unwrap_or_default()), &out)
}

/// Convolutions and pools read N, C and at least one spatial dim.
fn spatial_input(f: Option<&Fact>) -> R {
    match rank_of(f) {
        Some(r) if r < 3 => {
            Err(format!("input 'X' has rank {r}: N, C and at least one spatial dim are needed"))
        }
        _ => Ok(()),
    }
}

fn window(w: &Window, spatial: Option<usize>) -> R {
    if w.kernel_shape.as_ref().is_some_and(|k| k.is_empty()) {
        return Err("attribute 'kernel_shape' = []: one value per spatial dim is needed".into());
    }
    positive("strides", &w.strides)?;
    positive("dilations", &w.dilations)?;
    positive("kernel_shape", &w.kernel_shape)?;
    if let Some(p) = &w.pads {
        if p.iter().any(|x| *x < 0 || *x as u64 > MAX_ELEMENTS) {
            return Err(format!("attribute 'pads' = {p:?}: pads must be non-negative and bounded"));
        }
    }
    if let Some(n) = spatial {
        for (name, v, len) in [
            ("strides", &w.strides, n),
            ("dilations", &w.dilations, n),
            ("kernel_shape", &w.kernel_shape, n),
            ("pads", &w.pads, 2 * n),
        ] {
            if let Some(v) = v {
                if v.len() != len {
                    return Err(format!(
                        "attribute '{name}' = {v:?}: {len} values expected for {n} spatial dims"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `axis` within [-rank, rank).
fn axis_in(name: &str, axis: i64, rank: usize) -> R {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(format!("attribute '{name}' = {axis} is out of range for rank {rank}"));
    }
    Ok(())
}

/// A list of axes, each in range (for `rank`), none repeated.
fn axes_in(name: &str, axes: &[i64], rank: usize) -> R {
    let mut seen = vec![false; rank];
    for a in axes {
        axis_in(name, *a, rank)
            .map_err(|_| format!("{name} = {axes:?}: axis {a} is out of range for rank {rank}"))?;
        let i = if *a < 0 { a + rank as i64 } else { *a } as usize;
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!("{name} = {axes:?}: axis {a} is repeated"));
        }
    }
    Ok(())
}

/// Elements of a known shape, saturating.
fn elements(dims: &[i64]) -> u64 {
    dims.iter().fold(1u64, |acc, d| acc.saturating_mul((*d).max(0) as u64))
}

fn bounded(what: &str, dims: &[i64]) -> R {
    // Each dim on its own too: an empty tensor with a 2^63 dim is no tensor either (tract loops tiling
    // an empty [5,0,0,0] by [1,1,2^63-1,2^63-1]; found by the graph fuzz target).
    if let Some(d) = dims.iter().find(|d| d.unsigned_abs() > MAX_ELEMENTS) {
        return Err(format!(
            "{what}: output shape {dims:?} has a dim of {d}, past kiln's bound of {MAX_ELEMENTS}"
        ));
    }
    let n = elements(dims);
    if n > MAX_ELEMENTS {
        let n = if n == u64::MAX { "more than 2^64".to_string() } else { n.to_string() };
        return Err(format!(
            "{what}: output shape {dims:?} has {n} elements, past kiln's bound of {MAX_ELEMENTS}"
        ));
    }
    Ok(())
}

/// How many inputs common ops take: (op, required, most). Required inputs must be present (not empty
/// names); more than `most` is refused (tract hangs on a Reshape given a third input and no shape).
const ARITY: &[(&str, usize, usize)] = &[
    ("Reshape", 2, 2),
    ("Tile", 2, 2),
    ("Expand", 2, 2),
    ("Gather", 2, 2),
    ("GatherElements", 2, 2),
    ("Slice", 3, 5),
    ("Resize", 1, 4),
    ("Split", 1, 2),
    ("Squeeze", 1, 2),
    ("Unsqueeze", 1, 2),
    ("Conv", 2, 3),
    ("ConvTranspose", 2, 3),
    ("MatMul", 2, 2),
    ("Gemm", 2, 3),
    ("LayerNormalization", 2, 3),
    ("InstanceNormalization", 3, 3),
    ("BatchNormalization", 5, 5),
    ("TopK", 2, 2),
    ("OneHot", 3, 3),
    ("Range", 3, 3),
    ("ConstantOfShape", 1, 1),
    ("Where", 3, 3),
    ("Add", 2, 2),
    ("Sub", 2, 2),
    ("Mul", 2, 2),
    ("Div", 2, 2),
    ("Pow", 2, 2),
    ("Transpose", 1, 1),
    ("Flatten", 1, 1),
    ("Softmax", 1, 1),
    ("MaxPool", 1, 1),
    ("AveragePool", 1, 1),
    ("GlobalAveragePool", 1, 1),
    ("Relu", 1, 1),
    ("Sigmoid", 1, 1),
    ("Tanh", 1, 1),
    ("Erf", 1, 1),
    ("Sqrt", 1, 1),
    ("Exp", 1, 1),
    ("Shape", 1, 1),
    ("Cast", 1, 1),
    ("Identity", 1, 1),
];

fn arity(n: &Node) -> R {
    if !(n.domain.is_empty() || n.domain == "ai.onnx") {
        return Ok(());
    }
    let op = n.op.op_type();
    let Some((_, required, most)) = ARITY.iter().find(|(o, _, _)| *o == op) else { return Ok(()) };
    if n.inputs.len() > *most {
        return Err(format!("{} inputs given, {op} takes at most {most}", n.inputs.len()));
    }
    if let Some(i) = (0..*required).find(|i| n.inputs.get(*i).is_none_or(|v| v.is_none())) {
        return Err(format!("input {i} is missing: {op} needs {required}"));
    }
    Ok(())
}

/// Check `n` against the spec, given what inference knows of its inputs.
pub fn node(n: &Node, ins: &[Option<Fact>]) -> R {
    arity(n)?;
    let input = |i: usize| ins.get(i).and_then(|f| f.as_ref());
    match &n.op {
        Op::Conv { window: w, group } => {
            spatial_input(input(0))?;
            let spatial = rank_of(input(1)).map(|r| r.saturating_sub(2));
            window(w, spatial)?;
            let kernel = w
                .kernel_shape
                .clone()
                .or_else(|| dims_of(input(1)).and_then(|s| super::ops::static_of(s.get(2..)?)));
            kernel_fits(w, input(0), kernel)?;
            if let Some(g) = group {
                if *g <= 0 {
                    return Err(format!("attribute 'group' = {g}: must be positive"));
                }
                let c = dims_of(input(0)).and_then(|s| s.get(1)).and_then(Dim::known);
                let m = dims_of(input(1)).and_then(|s| s.first()).and_then(Dim::known);
                if let Some(c) = c.filter(|c| c % g != 0) {
                    return Err(format!(
                        "attribute 'group' = {g} does not divide the {c} input channels"
                    ));
                }
                if let Some(m) = m.filter(|m| m % g != 0) {
                    return Err(format!(
                        "attribute 'group' = {g} does not divide the {m} output channels"
                    ));
                }
            }
        }
        Op::Pool { window: w, .. } => {
            spatial_input(input(0))?;
            let spatial = rank_of(input(0)).map(|r| r.saturating_sub(2));
            window(w, spatial)?;
            kernel_fits(w, input(0), w.kernel_shape.clone())?;
            if w.kernel_shape.is_none() {
                return Err("attribute 'kernel_shape' is required".into());
            }
        }
        Op::GlobalAveragePool => spatial_input(input(0))?,
        Op::BatchNorm { .. } => {
            let c = dims_of(input(0)).and_then(|s| s.get(1)).and_then(Dim::known);
            for (i, name) in [(1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var")] {
                let p = dims_of(input(i)).and_then(|s| super::ops::static_of(s));
                if let (Some(p), Some(c)) = (p, c) {
                    if p != [c] {
                        return Err(format!(
                            "input '{name}' has shape {p:?}: [C] = [{c}] expected"
                        ));
                    }
                }
            }
        }
        Op::Transpose { perm: Some(p) } => {
            let rank = rank_of(input(0)).unwrap_or(p.len());
            if p.len() != rank {
                return Err(format!("attribute 'perm' = {p:?}: {rank} axes expected"));
            }
            axes_in("attribute 'perm'", p, rank)?;
            if p.iter().any(|a| *a < 0) {
                return Err(format!("attribute 'perm' = {p:?}: axes must be non-negative"));
            }
        }
        Op::Reshape { allowzero } => {
            if let Some(r) = rank_of(input(1)).filter(|r| *r != 1) {
                return Err(format!("input 'shape' has rank {r}: a 1-D list of dims is expected"));
            }
            let (Some(x), Some(shape)) =
                (dims_of(input(0)).and_then(|s| super::ops::static_of(s)), ints_of(input(1)))
            else {
                return Ok(());
            };
            let keep_zero = allowzero.unwrap_or(0) != 0;
            let dims: Vec<i64> = shape
                .iter()
                .enumerate()
                .map(
                    |(i, d)| {
                        if *d == 0 && !keep_zero {
                            x.get(i).copied().unwrap_or(0)
                        } else {
                            *d
                        }
                    },
                )
                .collect();
            let unknown = dims.iter().filter(|d| **d == -1).count();
            if unknown > 1 || dims.iter().any(|d| *d < -1) {
                return Err(format!(
                    "input 'shape' = {shape:?}: at most one -1 and no other negative dims"
                ));
            }
            let (have, known) = (
                elements(&x),
                elements(&dims.iter().map(|d| if *d == -1 { 1 } else { *d }).collect::<Vec<_>>()),
            );
            let fits = if unknown == 1 {
                known > 0 && have % known == 0 || have == 0
            } else {
                known == have
            };
            if !fits {
                return Err(format!(
                    "input 'shape' = {shape:?} cannot hold the {have} elements of {x:?}"
                ));
            }
        }
        Op::Concat { axis } => {
            if let Some(r) = rank_of(input(0)) {
                axis_in("axis", *axis, r)?;
            }
        }
        Op::Softmax { axis: Some(a) } | Op::Flatten { axis: Some(a) } => {
            if let Some(r) = rank_of(input(0)) {
                let r = if matches!(n.op, Op::Flatten { .. }) { r + 1 } else { r };
                axis_in("axis", *a, r)?;
            }
        }
        Op::Generic { op_type, .. } if n.domain.is_empty() || n.domain == "ai.onnx" => {
            // Ops kept generic by an attribute kiln does not model get the typed ops' checks too.
            let typed = match op_type.as_str() {
                "Transpose" => Some(Op::Transpose { perm: n.op.attr_ints("perm") }),
                "Reshape" => Some(Op::Reshape { allowzero: n.op.attr_int("allowzero") }),
                _ => None,
            };
            if let Some(op) = typed {
                node(&Node { op, ..n.clone() }, ins)?;
            }
            generic(n, op_type, ins)?
        }
        _ => {}
    }
    Ok(())
}

/// Inputs the spec defines as one value (a scalar or a 1-element tensor): (op, input index, name).
const SCALAR_INPUTS: &[(&str, usize, &str)] = &[
    ("OneHot", 1, "depth"),
    ("TopK", 1, "K"),
    ("Range", 0, "start"),
    ("Range", 1, "limit"),
    ("Range", 2, "delta"),
    ("Clip", 1, "min"),
    ("Clip", 2, "max"),
    ("CumSum", 1, "axis"),
    ("Trilu", 1, "k"),
    ("Pad", 2, "constant_value"),
];

/// Inputs the spec types as integers (shapes, counts, indices): (op, input index, name). Any other type is
/// refused (tract hangs on a float Tile `repeats`).
const INT_INPUTS: &[(&str, usize, &str)] = &[
    ("Tile", 1, "repeats"),
    ("Reshape", 1, "shape"),
    ("Expand", 1, "shape"),
    ("ConstantOfShape", 0, "input"),
    ("Slice", 1, "starts"),
    ("Slice", 2, "ends"),
    ("Slice", 3, "axes"),
    ("Slice", 4, "steps"),
    ("Pad", 1, "pads"),
    ("Squeeze", 1, "axes"),
    ("Unsqueeze", 1, "axes"),
    ("Split", 1, "split"),
    ("TopK", 1, "K"),
    ("Resize", 3, "sizes"),
    ("Gather", 1, "indices"),
    ("GatherElements", 1, "indices"),
    ("GatherND", 1, "indices"),
    ("ScatterND", 1, "indices"),
    ("ScatterElements", 1, "indices"),
    ("ReduceMean", 1, "axes"),
    ("ReduceSum", 1, "axes"),
    ("ReduceMax", 1, "axes"),
    ("ReduceMin", 1, "axes"),
    ("ReduceProd", 1, "axes"),
    ("CumSum", 1, "axis"),
    ("Trilu", 1, "k"),
];

fn generic(n: &Node, op: &str, ins: &[Option<Fact>]) -> R {
    let input = |i: usize| ins.get(i).and_then(|f| f.as_ref());
    let rank0 = rank_of(input(0));
    for (_, i, name) in INT_INPUTS.iter().filter(|(o, _, _)| *o == op) {
        let dt = input(*i).map(|f| f.dtype).unwrap_or(DType::Undefined);
        if !matches!(dt, DType::Undefined | DType::I64 | DType::I32) {
            return Err(format!("input '{name}' has element type {dt}: int64 expected"));
        }
    }
    for (_, i, name) in SCALAR_INPUTS.iter().filter(|(o, _, _)| *o == op) {
        let dims = dims_of(input(*i)).and_then(|s| super::ops::static_of(s));
        if let Some(d) = dims.filter(|d| elements(d) != 1 || d.len() > 1) {
            return Err(format!("input '{name}' has shape {d:?}: one value is expected"));
        }
    }
    match op {
        "LayerNormalization" => {
            // scale and bias broadcast to the normalized shape X.shape[axis..].
            let x = dims_of(input(0)).and_then(|s| super::ops::static_of(s));
            if let (Some(x), Some(r)) = (x, rank0) {
                let axis = n.op.attr_int("axis").unwrap_or(-1);
                axis_in("axis", axis, r)?;
                let a = if axis < 0 { axis + r as i64 } else { axis } as usize;
                let norm = &x[a..];
                for (i, name) in [(1, "Scale"), (2, "B")] {
                    let Some(p) = dims_of(input(i)).and_then(|s| super::ops::static_of(s)) else {
                        continue;
                    };
                    let fits = p.len() <= norm.len()
                        && p.iter().rev().zip(norm.iter().rev()).all(|(a, b)| a == b || *a == 1);
                    if !fits || elements(&p) == 0 && elements(norm) != 0 {
                        return Err(format!(
                            "input '{name}' has shape {p:?}, which does not broadcast to the normalized shape {norm:?}"
                        ));
                    }
                }
            }
        }
        "InstanceNormalization" | "GroupNormalization" => {
            let c = dims_of(input(0)).and_then(|s| s.get(1)).and_then(Dim::known);
            for (i, name) in [(1, "scale"), (2, "B")] {
                let Some(p) = dims_of(input(i)).and_then(|s| super::ops::static_of(s)) else {
                    continue;
                };
                if op == "InstanceNormalization" && c.is_some_and(|c| p != [c]) {
                    return Err(format!(
                        "input '{name}' has shape {p:?}: [C] = [{}] expected",
                        c.unwrap_or(0)
                    ));
                }
            }
        }
        "OneHot" => {
            if let Some(v) = dims_of(input(2)).and_then(|s| super::ops::static_of(s)) {
                if v.len() != 1 || v[0] != 2 {
                    return Err(format!("input 'values' has shape {v:?}: [off, on] is expected"));
                }
            }
            let depth = input(1).and_then(|f| f.konst.as_ref()).and_then(|t| t.to_f64_vec());
            if let Some(d) = depth.and_then(|d| d.first().copied()) {
                if !(d >= 1.0 && d <= MAX_ELEMENTS as f64) {
                    return Err(format!("input 'depth' = {d}: must be positive and bounded"));
                }
                // The output is the indices' shape with `depth` inserted ([5,6,1,2] with depth 3.3e7
                // asks for 2^31 elements; found by the graph fuzz target).
                if let Some(x) = dims_of(input(0)).and_then(|s| super::ops::static_of(s)) {
                    let mut out = x.clone();
                    out.push(d as i64);
                    bounded(&format!("input 'depth' = {d}"), &out)?;
                }
            }
            if let (Some(a), Some(r)) = (n.op.attr_int("axis"), rank0) {
                axis_in("axis", a, r + 1)?;
            }
        }
        "TopK" => {
            if let (Some(k), Some(r)) = (ints_of(input(1)), rank0) {
                let axis = n.op.attr_int("axis").unwrap_or(-1);
                axis_in("axis", axis, r)?;
                let a = if axis < 0 { axis + r as i64 } else { axis } as usize;
                let dim = dims_of(input(0)).and_then(|s| s.get(a)).and_then(Dim::known);
                if let (Some(k), Some(dim)) = (k.first(), dim) {
                    if *k < 0 || *k > dim {
                        return Err(format!("input 'K' = {k}: must be within 0..={dim}"));
                    }
                }
            }
        }
        "Slice" => {
            if let Some(steps) = ints_of(input(4)) {
                if steps.contains(&0) {
                    return Err(format!("input 'steps' = {steps:?}: a step of 0 is not allowed"));
                }
            }
            if let (Some(axes), Some(r)) = (ints_of(input(3)), rank0) {
                axes_in("input 'axes'", &axes, r)?;
            }
        }
        "Gather" | "GatherElements" => {
            let axis = n.op.attr_int("axis").unwrap_or(0);
            if let Some(r) = rank0 {
                axis_in("axis", axis, r)?;
                let a = if axis < 0 { axis + r as i64 } else { axis } as usize;
                let dim = dims_of(input(0)).and_then(|s| s.get(a)).and_then(Dim::known);
                if let (Some(dim), Some(idx)) = (dim, ints_of(input(1))) {
                    if let Some(bad) = idx.iter().find(|i| **i < -dim || **i >= dim) {
                        return Err(format!(
                            "input 'indices': index {bad} is out of range for axis {axis} of size {dim}"
                        ));
                    }
                }
            }
        }
        "ConstantOfShape" => {
            if let Some(shape) = ints_of(input(0)) {
                if shape.iter().any(|d| *d < 0) {
                    return Err(format!(
                        "input 'input' (the shape) = {shape:?}: dims must be non-negative"
                    ));
                }
                bounded("input 'input' (the shape)", &shape)?;
            }
        }
        "Tile" => {
            if let Some(reps) = ints_of(input(1)) {
                if reps.iter().any(|r| *r < 0) {
                    return Err(format!("input 'repeats' = {reps:?}: must be non-negative"));
                }
                // Even on an empty input (tract loops over the count).
                if reps.iter().any(|r| r.unsigned_abs() > MAX_ELEMENTS) {
                    return Err(format!(
                        "input 'repeats' = {reps:?}: a count past kiln's bound of {MAX_ELEMENTS}"
                    ));
                }
                if let Some(r) = rank0.filter(|r| *r != reps.len()) {
                    return Err(format!("input 'repeats' = {reps:?}: {r} values expected"));
                }
                if let Some(x) = dims_of(input(0)).and_then(|s| super::ops::static_of(s)) {
                    let out: Vec<i64> =
                        x.iter().zip(&reps).map(|(a, b)| a.saturating_mul(*b)).collect();
                    bounded(&format!("input 'repeats' = {reps:?}"), &out)?;
                    // Evaluators tile axis by axis: a zero repeat empties the result but not the
                    // tensors built on the way there ([4,4,6,3] by [2^21,4,0,0] passes 2^29 elements).
                    let peak: Vec<i64> = x.iter().zip(&out).map(|(a, b)| *a.max(b)).collect();
                    bounded(&format!("input 'repeats' = {reps:?} (tiled axis by axis)"), &peak)?;
                }
            }
        }
        "Expand" => {
            if let Some(shape) = ints_of(input(1)) {
                if shape.iter().any(|d| *d < 0) {
                    return Err(format!("input 'shape' = {shape:?}: dims must be non-negative"));
                }
                bounded("input 'shape'", &shape)?;
            }
        }
        "Range" => {
            let scalar = |i: usize| {
                input(i)?
                    .konst
                    .as_ref()
                    .and_then(|t| t.to_f64_vec())
                    .and_then(|v| v.first().copied())
            };
            if let (Some(start), Some(limit), Some(delta)) = (scalar(0), scalar(1), scalar(2)) {
                if delta == 0.0 {
                    return Err("input 'delta' = 0: the range never ends".into());
                }
                let count = ((limit - start) / delta).ceil().max(0.0);
                if !count.is_finite() || count > MAX_ELEMENTS as f64 {
                    return Err(format!(
                        "Range({start}, {limit}, {delta}) has {count} elements, past kiln's bound of {MAX_ELEMENTS}"
                    ));
                }
            }
        }
        "Split" => {
            let axis = n.op.attr_int("axis").unwrap_or(0);
            if let Some(r) = rank0 {
                axis_in("axis", axis, r)?;
                let a = if axis < 0 { axis + r as i64 } else { axis } as usize;
                let dim = dims_of(input(0)).and_then(|s| s.get(a)).and_then(Dim::known);
                let split = ints_of(input(1)).or_else(|| n.op.attr_ints("split"));
                if let (Some(dim), Some(split)) = (dim, split) {
                    if split.iter().any(|s| *s < 0) || split.iter().sum::<i64>() != dim {
                        return Err(format!(
                            "split sizes {split:?} do not sum to the axis size {dim}"
                        ));
                    }
                }
            }
            if let Some(k) = n.op.attr_int("num_outputs") {
                if k <= 0 {
                    return Err(format!("attribute 'num_outputs' = {k}: must be positive"));
                }
            }
        }
        "Squeeze" | "Unsqueeze" | "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin"
        | "ReduceProd" | "ReduceL1" | "ReduceL2" | "ReduceLogSumExp" | "ReduceSumSquare" => {
            let axes = ints_of(input(1)).or_else(|| n.op.attr_ints("axes"));
            if let (Some(axes), Some(r)) = (axes, rank0) {
                let r = if op == "Unsqueeze" { r + axes.len() } else { r };
                axes_in("axes", &axes, r)?;
            }
        }
        "ArgMax" | "ArgMin" | "LogSoftmax" | "Hardmax" | "CumSum" | "Compress" => {
            if let (Some(a), Some(r)) = (n.op.attr_int("axis"), rank0) {
                axis_in("axis", a, r)?;
            }
        }
        "GlobalMaxPool" | "GlobalLpPool" | "GlobalAveragePool" => spatial_input(input(0))?,
        "DepthToSpace" | "SpaceToDepth" => {
            let b = n.op.attr_int("blocksize").unwrap_or(0);
            if b <= 0 {
                return Err(format!("attribute 'blocksize' = {b}: must be positive"));
            }
        }
        "MaxPool" | "AveragePool" | "LpPool" | "ConvTranspose" | "MaxUnpool" | "Conv" => {
            spatial_input(input(0))?;
            let kernel = n.op.attr_ints("kernel_shape");
            if kernel.as_ref().is_some_and(|k| k.is_empty())
                || kernel.is_none() && op.ends_with("Pool")
            {
                return Err(format!(
                    "attribute 'kernel_shape' = {kernel:?}: one value per spatial dim is needed"
                ));
            }
            for name in ["strides", "dilations", "kernel_shape"] {
                positive(name, &n.op.attr_ints(name))?;
            }
            let w = Window {
                auto_pad: match n.op.attr("auto_pad") {
                    Some(crate::ir::AttrValue::String(b)) => {
                        Some(String::from_utf8_lossy(&b).into())
                    }
                    _ => None,
                },
                kernel_shape: kernel.clone(),
                pads: n.op.attr_ints("pads"),
                strides: n.op.attr_ints("strides"),
                dilations: n.op.attr_ints("dilations"),
            };
            window(&w, rank0.map(|r| r.saturating_sub(2)))?;
            if op == "ConvTranspose" {
                transposed_output(n, &w, input(0), input(1))?;
            }
            kernel_fits(&w, input(0), kernel)?;
            if let Some(g) = n.op.attr_int("group").filter(|g| *g <= 0) {
                return Err(format!("attribute 'group' = {g}: must be positive"));
            }
        }
        "LSTM" | "GRU" | "RNN" => {
            // W [dirs, gates·hidden, input], R [dirs, gates·hidden, hidden], B [dirs, 2·gates·hidden],
            // initial states [dirs, batch, hidden] (the spec's shapes, which runtimes index by).
            let h = n.op.attr_int("hidden_size").unwrap_or(0);
            if h <= 0 {
                return Err(format!("attribute 'hidden_size' = {h}: must be positive"));
            }
            let gates = match op {
                "LSTM" => 4,
                "GRU" => 3,
                _ => 1,
            };
            let dirs = match n.op.attr("direction") {
                Some(crate::ir::AttrValue::String(d)) if d == b"bidirectional" => 2,
                _ => 1,
            };
            let x = dims_of(input(0));
            let want = |name: &str, f: Option<&Fact>, expect: Vec<Option<i64>>| -> R {
                let Some(d) = dims_of(f) else { return Ok(()) };
                let fits = d.len() == expect.len()
                    && d.iter().zip(&expect).all(|(d, e)| match (d.known(), e) {
                        (Some(d), Some(e)) => d == *e,
                        _ => true,
                    });
                if fits {
                    Ok(())
                } else {
                    Err(format!(
                        "input '{name}' has dims {d:?}; hidden_size {h} and {dirs} direction(s) need {expect:?}"
                    ))
                }
            };
            // layout 1 is batch-first: X [batch, seq, input], states [batch, dirs, hidden].
            let batch_first = n.op.attr_int("layout").unwrap_or(0) == 1;
            let i = x.and_then(|x| x.get(2)).and_then(|d| d.known());
            let b = x.and_then(|x| x.get(usize::from(!batch_first))).and_then(|d| d.known());
            let state = if batch_first {
                vec![b, Some(dirs), Some(h)]
            } else {
                vec![Some(dirs), b, Some(h)]
            };
            want("W", input(1), vec![Some(dirs), Some(gates * h), i])?;
            want("R", input(2), vec![Some(dirs), Some(gates * h), Some(h)])?;
            want("B", input(3), vec![Some(dirs), Some(2 * gates * h)])?;
            want("initial_h", input(5), state.clone())?;
            if op == "LSTM" {
                want("initial_c", input(6), state)?;
                want("P", input(7), vec![Some(dirs), Some(3 * h)])?;
            }
        }
        "Resize" | "Upsample" => {
            let scales = input(2).or(if op == "Upsample" { input(1) } else { None });
            if let Some(s) = scales.and_then(|f| f.konst.as_ref()).and_then(|t| t.to_f64_vec()) {
                if s.iter().any(|x| !x.is_finite() || *x <= 0.0) {
                    return Err(format!("input 'scales' = {s:?}: scales must be positive"));
                }
                if let Some(x) = dims_of(input(0)).and_then(|s| super::ops::static_of(s)) {
                    if x.len() == s.len() {
                        let out: Vec<i64> = x
                            .iter()
                            .zip(&s)
                            .map(|(d, k)| (*d as f64 * k).floor().min(i64::MAX as f64) as i64)
                            .collect();
                        bounded(&format!("input 'scales' = {s:?}"), &out)?;
                        // Every output extent real and bounded on its own (tract aborts on a 0 × 1.6e10
                        // map, which has no elements but is no image either).
                        if out
                            .iter()
                            .zip(&x)
                            .any(|(o, d)| *d > 0 && (*o < 1 || *o as u64 > MAX_ELEMENTS))
                        {
                            return Err(format!(
                                "input 'scales' = {s:?}: output extents {out:?} must each be between 1 and {MAX_ELEMENTS}"
                            ));
                        }
                    }
                }
            }
            if let Some(sizes) = ints_of(input(3)) {
                if sizes.iter().any(|d| *d < 0) {
                    return Err(format!("input 'sizes' = {sizes:?}: dims must be non-negative"));
                }
                bounded("input 'sizes'", &sizes)?;
            }
        }
        "Pad" => {
            if let Some(p) = ints_of(input(1)).or_else(|| n.op.attr_ints("pads")) {
                if p.iter().any(|x| x.unsigned_abs() > MAX_ELEMENTS) {
                    return Err(format!("pads {p:?} are past kiln's bound of {MAX_ELEMENTS}"));
                }
            }
        }
        _ => {}
    }
    // Any other `axis` names an axis of the first input (one past it only for the ops that insert one:
    // OneHot, and Flatten's split point): outside that is never valid (tract loops on LayerNormalization's
    // axis = i64::MIN, and on axis −3 of a rank-2 input; found by the graph fuzz target). When the rank is
    // not known, no tensor kiln handles has more than MAX_RANK dims.
    if let Some(a) = n.op.attr_int("axis").filter(|a| a.unsigned_abs() > MAX_RANK as u64) {
        return Err(format!("attribute 'axis' = {a}: no tensor has more than {MAX_RANK} dims"));
    }
    let inserts = matches!(op, "OneHot" | "Flatten");
    if let (Some(a), Some(r)) = (n.op.attr_int("axis"), rank0) {
        if axis_in("axis", a, if inserts { r + 1 } else { r }).is_err() {
            return Err(format!("attribute 'axis' = {a} is out of range for an input of rank {r}"));
        }
    }
    Ok(())
}

/// Every output of known shape within the element bound.
pub fn outputs(outs: &[Fact]) -> R {
    for f in outs {
        if let Some(dims) = f.shape.as_deref().and_then(super::ops::static_of) {
            bounded("the op", &dims)?;
        }
    }
    Ok(())
}
