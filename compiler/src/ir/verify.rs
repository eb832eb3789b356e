//! The verifier: checks a graph (and its subgraphs) and collects every problem, not just the first.
//!
//! Checks: acyclic; every node input and graph output is produced by a node, or is a graph input, an
//! initializer or an outer-scope value; producer links agree with node outputs; constant data agrees with
//! its dims; dtypes agree across ops whose inputs must share one (elementwise, MatMul, Gemm, Concat, Conv).
use super::{Graph, Op, ValueId};
use crate::error::{Error, Result};

/// Verify `g`, returning all problems found.
pub fn verify(g: &Graph) -> Result<()> {
    let mut problems = Vec::new();
    check(g, "", &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Verify(problems))
    }
}

fn check(g: &Graph, scope: &str, problems: &mut Vec<String>) {
    if let Err(e) = g.topo_order() {
        problems.push(format!("{scope}{e}"));
    }
    let is_input: std::collections::HashSet<ValueId> = g.inputs.iter().copied().collect();
    let available = |v: ValueId| {
        let val = g.value(v);
        is_input.contains(&v)
            || val.data.is_some()
            || val.outer
            || val.producer.map(|(p, _)| g.nodes.contains_node(p)).unwrap_or(false)
    };
    let mut names = std::collections::HashSet::new();
    for n in g.nodes.node_weights() {
        if !n.name.is_empty() && !names.insert(n.name.as_str()) {
            problems.push(format!(
                "{scope}two nodes are named '{}' (node names must be unique)",
                n.name
            ));
        }
    }
    for id in g.nodes.node_indices() {
        let n = &g.nodes[id];
        for v in n.inputs.iter().flatten().chain(n.captures.iter()) {
            if !available(*v) {
                problems.push(format!(
                    "{scope}node '{}' ({}) reads '{}', which no node produces and is not a graph input or initializer",
                    n.name,
                    n.op.op_type(),
                    g.value(*v).name
                ));
            }
        }
        for (slot, o) in n.outputs.iter().enumerate() {
            if let Some(o) = o {
                if g.value(*o).producer != Some((id, slot)) {
                    problems.push(format!(
                        "{scope}node '{}' output '{}' is also produced elsewhere",
                        n.name,
                        g.value(*o).name
                    ));
                }
            }
        }
        check_dtypes(g, n, scope, problems);
        for sub in n.op.subgraphs() {
            check(sub, &format!("{scope}{} > ", n.name), problems);
        }
    }
    for o in &g.outputs {
        if !available(*o) {
            problems.push(format!("{scope}graph output '{}' is not produced", g.value(*o).name));
        }
    }
    for v in &g.initializers {
        if let Some(d) = &g.value(*v).data {
            if let Err(e) = d.check(&g.value(*v).name) {
                problems.push(format!("{scope}{e}"));
            }
        }
    }
}

fn check_dtypes(g: &Graph, n: &super::Node, scope: &str, problems: &mut Vec<String>) {
    let same: &[usize] = match &n.op {
        Op::Binary(_) | Op::MatMul => &[0, 1],
        Op::Gemm { .. } | Op::Conv { .. } => &[0, 1],
        Op::Concat { .. } => &[],
        _ => return,
    };
    let idx: Vec<usize> = if matches!(n.op, Op::Concat { .. }) {
        (0..n.inputs.len()).collect()
    } else {
        same.to_vec()
    };
    let dts: Vec<_> = idx
        .iter()
        .filter_map(|&i| n.input(i))
        .map(|v| g.value(v).dtype)
        .filter(|d| *d != super::DType::Undefined)
        .collect();
    if matches!(n.op, Op::Binary(super::BinOp::Pow)) {
        return; // Pow allows a different exponent type
    }
    if dts.windows(2).any(|w| w[0] != w[1]) {
        let list: Vec<String> = dts.iter().map(|d| d.to_string()).collect();
        problems.push(format!(
            "{scope}node '{}' ({}) mixes input types {}",
            n.name,
            n.op.op_type(),
            list.join(", ")
        ));
    }
}
