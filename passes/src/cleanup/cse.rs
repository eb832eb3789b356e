//! Common-subexpression elimination: identical constants (same type, dims and bytes) become one, then
//! nodes with the same op, domain, attributes and inputs become one.
//! Guarantees: graph outputs keep their names (a duplicate that is a graph output is kept); ops with
//! subgraphs, randomness or custom domains are never merged.
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use kiln_compiler::ir::{AttrValue, Graph, Model, NodeId, ValueId};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

use crate::util::is_onnx_domain;

/// Common-subexpression elimination.
pub struct Cse;

fn tensor_key(t: &kiln_compiler::ir::TensorData) -> Option<(i32, Vec<i64>, u64, usize)> {
    let b = t.bytes();
    if b.is_empty() && !t.is_empty() {
        return None; // strings/opaque
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    Some((t.dtype.to_onnx(), t.dims.clone(), h.finish(), b.len()))
}

fn attr_key(v: &AttrValue) -> Option<String> {
    Some(match v {
        AttrValue::Tensor(t) => format!("{:?}", tensor_key(t)?),
        AttrValue::Tensors(ts) => {
            ts.iter().map(tensor_key).collect::<Option<Vec<_>>>().map(|k| format!("{k:?}"))?
        }
        AttrValue::Graph(_) | AttrValue::Graphs(_) | AttrValue::Opaque(_) => return None,
        other => format!("{other:?}"),
    })
}

fn dedupe_constants(g: &mut Graph) -> bool {
    let mut seen: HashMap<(i32, Vec<i64>, u64, usize), ValueId> = HashMap::new();
    let mut changed = false;
    for v in g.initializers.clone() {
        if g.inputs.contains(&v) || g.is_output(v) {
            continue;
        }
        if g.consumers(v).is_empty() {
            continue; // already replaced; DCE drops it
        }
        let Some(d) = g.value(v).data.as_ref() else { continue };
        let Some(k) = tensor_key(d) else { continue };
        match seen.get(&k) {
            Some(&first)
                if g.value(first)
                    .data
                    .as_ref()
                    .map(|f| f.bytes() == d.bytes())
                    .unwrap_or(false) =>
            {
                g.replace_uses(v, first);
                changed = true;
            }
            Some(_) => {}
            None => {
                seen.insert(k, v);
            }
        }
    }
    changed
}

const NEVER: &[&str] = &[
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
];

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<bool> {
        let g = &mut model.graph;
        let mut changed = dedupe_constants(g);
        let mut seen: HashMap<String, NodeId> = HashMap::new();
        for id in g.topo_order()? {
            let n = &g.nodes[id];
            if !is_onnx_domain(&n.domain)
                || NEVER.contains(&n.op.op_type())
                || !n.op.subgraphs().is_empty()
                || !n.captures.is_empty()
            {
                continue;
            }
            let attrs: Option<Vec<String>> =
                n.op.attributes()
                    .iter()
                    .map(|a| attr_key(&a.value).map(|k| format!("{}={k}", a.name)))
                    .collect();
            let Some(attrs) = attrs else { continue };
            let key = format!(
                "{}|{}|{:?}|{:?}|{}",
                n.op.op_type(),
                n.domain,
                attrs,
                n.inputs,
                n.outputs.len()
            );
            match seen.get(&key) {
                Some(&first) => {
                    let outs = n.outputs.clone();
                    let firsts = g.nodes[first].outputs.clone();
                    if outs.iter().flatten().any(|o| g.is_output(*o))
                        || outs.iter().zip(&firsts).any(|(a, b)| a.is_some() && b.is_none())
                    {
                        continue;
                    }
                    g.remove_node(id);
                    for (o, f) in outs.iter().zip(firsts) {
                        if let (Some(o), Some(f)) = (o, f) {
                            g.replace_uses(*o, f);
                        }
                    }
                    changed = true;
                }
                None => {
                    seen.insert(key, id);
                }
            }
        }
        Ok(changed)
    }
}
