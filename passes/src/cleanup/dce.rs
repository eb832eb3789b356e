//! Dead-code elimination: removes nodes none of whose outputs reach a graph output, and initializers
//! nothing reads. Guarantees: graph outputs, and nodes whose subgraphs capture live values, are kept;
//! nodes of non-default domains are kept too (they may have side effects kiln cannot see).
use std::collections::HashSet;

use kiln_compiler::ir::{Model, ValueId};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

/// Dead-code elimination.
pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<bool> {
        let g = &mut model.graph;
        let order = g.topo_order()?;
        let mut live: HashSet<ValueId> = g.outputs.iter().copied().collect();
        let mut dead = Vec::new();
        for id in order.into_iter().rev() {
            let Some(n) = g.node(id) else { continue };
            let used = n.outputs.iter().flatten().any(|o| live.contains(o));
            let custom = !(n.domain.is_empty() || n.domain == "ai.onnx");
            if used || custom {
                live.extend(n.inputs.iter().flatten().copied());
                live.extend(n.captures.iter().copied());
            } else {
                dead.push(id);
            }
        }
        let changed = !dead.is_empty();
        for id in dead {
            g.remove_node(id);
        }
        let before = g.initializers.len();
        let inputs: HashSet<ValueId> = g.inputs.iter().copied().collect();
        g.initializers.retain(|v| live.contains(v) || inputs.contains(v));
        for i in 0..g.values.len() {
            let v = ValueId(i as u32);
            if !live.contains(&v) && !inputs.contains(&v) && g.value(v).producer.is_none() {
                g.value_mut(v).data = None;
            }
        }
        Ok(changed || g.initializers.len() != before)
    }
}
