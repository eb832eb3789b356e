//! Float16 islands: the rules the float16 ONNX artifact (backends/src/onnx/fp16.rs) and its simulation in
//! the island search (passes/src/quant/fp16.rs) must share, so that what kiln measures is what it writes.
use std::collections::HashSet;

use super::{AttrValue, Attribute, Graph, Node, NodeId, Op, ValueId};
use crate::error::Result;

/// ONNX `TensorProto.DataType` codes a Cast's `to` takes.
pub const CAST_FLOAT: i64 = 1;
pub const CAST_FLOAT16: i64 = 10;

/// A `Cast` to `to` (an ONNX data type code).
pub fn cast_op(to: i64) -> Op {
    Op::Generic {
        op_type: "Cast".into(),
        attrs: vec![Attribute {
            name: "to".into(),
            value: AttrValue::Int(to),
            doc: String::new(),
            tensor_names: Vec::new(),
        }],
    }
}

/// Add node `name`: `to_value = Cast(from, to = code)`.
pub fn add_cast(
    g: &mut Graph,
    name: &str,
    from: ValueId,
    to_value: ValueId,
    code: i64,
) -> Result<NodeId> {
    g.add_node(Node::new(name, cast_op(code), vec![Some(from)], vec![Some(to_value)]))
}

/// A value an island (a node kept in float32) writes and only islands read stays float32: it passes from
/// one float32 node to another, so rounding it to half would add error (or overflow) for nothing.
pub fn stays_fp32(g: &Graph, v: ValueId, islands: &HashSet<NodeId>) -> bool {
    let from_island = g.value(v).producer.is_some_and(|(p, _)| islands.contains(&p));
    let users = g.consumers(v);
    from_island && !users.is_empty() && users.iter().all(|(c, _)| islands.contains(c))
}
