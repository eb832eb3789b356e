//! `prune: { method: sparse_2_4 }`: 2:4 structured sparsity for TensorRT's sparse tensor cores. In every
//! weight of a Conv, Gemm or MatMul whose input-channel axis is a multiple of 4, each run of 4 consecutive
//! weights along that axis keeps its 2 largest magnitudes and the other 2 become zero (Conv: axis 1 of
//! [K, C, R, S], for every K, R, S; Gemm: axis 1 of B with transB, else 0; MatMul: axis 0 of B): the
//! layout `polygraphy inspect sparsity` checks. Other weights are listed with the reason. Without
//! fine-tuning this changes the model's function: the driver measures the cost (`passes_fidelity`).
use kiln_compiler::ir::{DType, Model, NodeId, Op, TensorData};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

pub struct Sparse24;

/// `w` (dims `d`) with each run of 4 along `axis` reduced to its 2 largest magnitudes (ties: the first).
pub fn two_of_four(d: &[i64], w: &mut [f32], axis: usize) {
    let n = d[axis] as usize;
    let inner: usize = d[axis + 1..].iter().product::<i64>() as usize;
    let outer: usize = d[..axis].iter().product::<i64>() as usize;
    for o in 0..outer {
        for i in 0..inner {
            for start in (0..n).step_by(4) {
                let at = |k: usize| (o * n + start + k) * inner + i;
                let mut idx = [0usize, 1, 2, 3];
                // Smallest magnitudes first; a stable sort keeps the first of equal ones first.
                idx.sort_by(|a, b| w[at(*a)].abs().total_cmp(&w[at(*b)].abs()));
                w[at(idx[0])] = 0.0;
                w[at(idx[1])] = 0.0;
            }
        }
    }
}

impl Pass for Sparse24 {
    fn name(&self) -> &'static str {
        "prune"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<bool> {
        let g = &mut model.graph;
        let ids: Vec<NodeId> = g.topo_order()?;
        let (mut done, mut skipped) = (Vec::new(), Vec::new());
        for id in ids {
            let n = &g.nodes[id];
            let axis = match &n.op {
                Op::Conv { .. } => 1,
                Op::Gemm { trans_b, .. } => usize::from(trans_b.unwrap_or(0) != 0),
                Op::MatMul => 0,
                _ => continue,
            };
            let Some(wv) = n.input(1) else { continue };
            let name = n.name.clone();
            let Some(data) = g.const_data(wv) else {
                skipped
                    .push(serde_json::json!({ "node": name, "why": "weights are not a constant" }));
                continue;
            };
            if data.dtype != DType::F32 || data.dims.len() <= axis {
                skipped.push(serde_json::json!({ "node": name, "why": format!("weights of type {} and rank {}", data.dtype, data.dims.len()) }));
                continue;
            }
            let c = data.dims[axis];
            if c % 4 != 0 {
                skipped.push(serde_json::json!({ "node": name, "why": format!("input channels ({c}) not a multiple of 4") }));
                continue;
            }
            let dims = data.dims.clone();
            let Some(mut w) = data.to_f32_vec() else { continue };
            two_of_four(&dims, &mut w, axis);
            let v =
                g.add_const(&format!("{name}_sparse24"), TensorData::from_f32(dims.clone(), &w))?;
            if let Some(node) = g.node_mut(id) {
                node.inputs[1] = Some(v);
            }
            done.push(serde_json::json!({ "node": name, "weights": dims }));
        }
        let changed = !done.is_empty();
        if changed {
            crate::cleanup::dce::Dce.run(model, cx)?;
            cx.inexact.push(format!(
                "prune sparse_2_4: {} weight tensor(s) made 2:4 sparse without fine-tuning",
                done.len()
            ));
        }
        cx.reports.push((
            "prune".into(),
            serde_json::json!({ "method": "sparse_2_4", "sparse": done, "skipped": skipped }),
        ));
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_two_largest_of_every_four_along_the_axis() {
        // [K=1, C=8, 1, 2]: runs of 4 along C for each of the 2 spatial positions.
        let dims = [1, 8, 1, 2];
        let mut w: Vec<f32> =
            (0..16).map(|i| if i % 3 == 0 { -(i as f32) } else { i as f32 * 0.5 }).collect();
        let before = w.clone();
        super::two_of_four(&dims, &mut w, 1);
        for s in 0..2 {
            for start in [0, 4] {
                let run: Vec<usize> = (start..start + 4).map(|c| c * 2 + s).collect();
                let zeros = run.iter().filter(|i| w[**i] == 0.0).count();
                assert!(zeros >= 2);
                let mut mags: Vec<f32> = run.iter().map(|i| before[*i].abs()).collect();
                mags.sort_by(f32::total_cmp);
                for i in &run {
                    if w[*i] != 0.0 {
                        assert_eq!(w[*i], before[*i]);
                        assert!(before[*i].abs() >= mags[2]);
                    }
                }
            }
        }
    }
}
