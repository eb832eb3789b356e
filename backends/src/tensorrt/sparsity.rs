//! `sparsity: "2:4"`: TensorRT's sparse tensor cores (Ampere and later, Orin included) take a weight whose
//! every run of 4 consecutive values along the input-channel axis holds at least 2 zeros (Conv: axis 1 of
//! [K, C, R, S]; Gemm: axis 1 of B with transB, else 0; MatMul: axis 0 of B), and `trtexec
//! --sparsity=enable` uses them only for weights that already fit. This counts the weighted layers that fit,
//! reading int8 weights behind their DequantizeLinear, so the bundle says how many the engine can use.
use kiln_compiler::ir::{Graph, Model, Op, TensorData, ValueId};

/// The weight constant behind `v`: itself, or the int8 data a DequantizeLinear reads.
fn weight(g: &Graph, v: ValueId) -> Option<&TensorData> {
    if let Some(d) = g.const_data(v) {
        return Some(d);
    }
    let (p, _) = g.value(v).producer?;
    let n = g.node(p)?;
    matches!(n.op, Op::DequantizeLinear { .. })
        .then(|| n.input(0))
        .flatten()
        .and_then(|q| g.const_data(q))
}

/// Every run of 4 along `axis` of `w` (dims `d`) has at least 2 zeros.
fn fits(d: &[i64], w: &[f64], axis: usize) -> bool {
    let n = d[axis] as usize;
    let inner: usize = d[axis + 1..].iter().product::<i64>().max(1) as usize;
    let outer: usize = d[..axis].iter().product::<i64>().max(1) as usize;
    (0..outer).all(|o| {
        (0..inner).all(|i| {
            (0..n)
                .step_by(4)
                .all(|s| (0..4).filter(|k| w[(o * n + s + k) * inner + i] == 0.0).count() >= 2)
        })
    })
}

/// (names of weighted layers that are 2:4 sparse, number of layers that could be: input-channel axis a
/// multiple of 4).
pub fn sparse_layers(m: &Model) -> (Vec<String>, usize) {
    let g = &m.graph;
    let (mut sparse, mut eligible) = (Vec::new(), 0);
    for n in g.nodes.node_weights() {
        let axis = match &n.op {
            Op::Conv { .. } => 1,
            Op::Gemm { trans_b, .. } => usize::from(trans_b.unwrap_or(0) != 0),
            Op::MatMul => 0,
            _ => continue,
        };
        let Some(d) = n.input(1).and_then(|w| weight(g, w)) else { continue };
        if d.dims.len() <= axis || d.dims[axis] % 4 != 0 || d.dims[axis] == 0 {
            continue;
        }
        eligible += 1;
        if d.to_f64_vec().is_some_and(|w| fits(&d.dims, &w, axis)) {
            sparse.push(n.name.clone());
        }
    }
    (sparse, eligible)
}
