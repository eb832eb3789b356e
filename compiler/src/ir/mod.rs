//! kiln's intermediate representation: ops in a `petgraph::StableDiGraph`, values in a table keyed by
//! `ValueId`. Node and value ids stay valid across deletions, so passes can hold them while rewriting.
//!
//! Edges mirror data flow (producer node → consumer node, carrying the value and the consumer's slot);
//! `Node::inputs`/`outputs` are the source of truth and the graph API keeps edges in step with them.
pub mod attr;
pub mod dtype;
pub mod dump;
pub mod half;
pub mod op;
pub mod tensor;
pub mod verify;

use std::collections::{BTreeSet, HashMap};

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

pub use attr::{AttrValue, Attribute};
pub use dtype::DType;
pub use op::{Act, BinOp, Op, PoolKind, Window};
pub use tensor::{Storage, TensorData};

use crate::error::{Error, Result};

/// Index of a node in a graph.
pub type NodeId = NodeIndex<u32>;

/// Index of a value in a graph's value table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One dimension of a shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(i64),
    /// A named (symbolic) dimension such as `batch`, or an expression some exporters write.
    Sym(String),
    Unknown,
}

impl Dim {
    pub fn known(&self) -> Option<i64> {
        match self {
            Dim::Known(v) => Some(*v),
            _ => None,
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Known(v) => write!(f, "{v}"),
            Dim::Sym(s) => write!(f, "{s}"),
            Dim::Unknown => write!(f, "?"),
        }
    }
}

/// Quantization parameters attached to a value (filled by the quantizer or from imported Q/DQ).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantParams {
    pub dtype: DType,
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub axis: Option<i64>,
}

/// A value (tensor) of a graph.
#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    pub dtype: DType,
    /// None when even the rank is unknown.
    pub shape: Option<Vec<Dim>>,
    /// Constant data (initializers, folded constants).
    pub data: Option<TensorData>,
    pub quant: Option<QuantParams>,
    /// The node and output slot producing it; None for graph inputs, initializers and outer-scope values.
    pub producer: Option<(NodeId, usize)>,
    /// A value of an enclosing graph referenced by name from a subgraph.
    pub outer: bool,
    pub doc: String,
    /// An encoded non-tensor `TypeProto` (sequence, map, optional), kept verbatim.
    pub type_opaque: Option<Vec<u8>>,
    /// `metadata_props` of the value's ValueInfoProto.
    pub metadata: Vec<(String, String)>,
}

impl Value {
    pub fn new(name: impl Into<String>) -> Self {
        Value {
            name: name.into(),
            dtype: DType::Undefined,
            shape: None,
            data: None,
            quant: None,
            producer: None,
            outer: false,
            doc: String::new(),
            type_opaque: None,
            metadata: Vec::new(),
        }
    }

    /// The shape when every dim is known.
    pub fn static_shape(&self) -> Option<Vec<i64>> {
        self.shape.as_ref()?.iter().map(|d| d.known()).collect()
    }
}

/// Which input of the consumer an edge feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Input(usize),
    /// An outer-scope value captured by one of the node's subgraphs.
    Capture,
}

/// A data-flow edge.
#[derive(Clone, Copy, Debug)]
pub struct Edge {
    pub value: ValueId,
    pub slot: Slot,
}

/// An operator node.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub domain: String,
    pub op: Op,
    /// Inputs by position; None for an omitted optional input (written as "" in ONNX).
    pub inputs: Vec<Option<ValueId>>,
    /// Outputs by position; None for an omitted optional output.
    pub outputs: Vec<Option<ValueId>>,
    /// Outer-scope values its subgraphs read (so ordering and dead-code elimination see them).
    pub captures: Vec<ValueId>,
    /// An activation applied to output 0 (fused by the fusion pass; exported as the op followed by the
    /// activation's standard ONNX sequence).
    pub act: Option<Act>,
    pub doc: String,
    pub overload: String,
    pub metadata: Vec<(String, String)>,
    /// Encoded `NodeDeviceConfigurationProto`s, kept verbatim.
    pub device_configurations: Vec<Vec<u8>>,
}

/// Node metadata keys kiln itself writes (exported as ONNX `metadata_props`, so they survive a round trip).
pub mod meta {
    /// Weights that must stay float32 in a float16 artifact; value [`FP32`].
    pub const WEIGHTS: &str = "kiln.weights";
    pub const FP32: &str = "fp32";
    /// The name of the activation node fused into this one (restored when a backend splits it off).
    pub const FUSED_ACTIVATION: &str = "kiln.fused_activation";
}

impl Node {
    /// The value of metadata entry `key`.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Did the config or the fp16 error search keep this layer's weights float32?
    pub fn keeps_fp32_weights(&self) -> bool {
        self.meta(meta::WEIGHTS) == Some(meta::FP32)
    }

    pub fn new(
        name: impl Into<String>,
        op: Op,
        inputs: Vec<Option<ValueId>>,
        outputs: Vec<Option<ValueId>>,
    ) -> Self {
        Node {
            name: name.into(),
            domain: String::new(),
            op,
            inputs,
            outputs,
            captures: Vec::new(),
            act: None,
            doc: String::new(),
            overload: String::new(),
            metadata: Vec::new(),
            device_configurations: Vec::new(),
        }
    }

    /// The i-th input if present.
    pub fn input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }

    /// The i-th output if present.
    pub fn output(&self, i: usize) -> Option<ValueId> {
        self.outputs.get(i).copied().flatten()
    }
}

/// Parts of a graph no pass reasons about, kept encoded for round-trip.
#[derive(Clone, Debug, Default)]
pub struct GraphOpaque {
    pub sparse_initializers: Vec<Vec<u8>>,
    pub quantization_annotation: Vec<Vec<u8>>,
}

/// A graph (the main graph or a subgraph).
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub doc: String,
    pub nodes: StableDiGraph<Node, Edge>,
    pub values: Vec<Value>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    /// Values that are initializers, in model order.
    pub initializers: Vec<ValueId>,
    /// Values that had a `value_info` entry, in model order (export writes these back).
    pub value_info: Vec<ValueId>,
    pub metadata: Vec<(String, String)>,
    pub opaque: GraphOpaque,
    names: HashMap<String, ValueId>,
}

impl Graph {
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.index()]
    }

    pub fn value_mut(&mut self, id: ValueId) -> &mut Value {
        &mut self.values[id.index()]
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.node_weight(id)
    }

    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.nodes.node_weight_mut(id)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.node_count()
    }

    /// Look a value up by name.
    pub fn find(&self, name: &str) -> Option<ValueId> {
        self.names.get(name).copied()
    }

    /// Add a value; its name must be new in this graph.
    pub fn add_value(&mut self, v: Value) -> Result<ValueId> {
        if self.names.contains_key(&v.name) {
            return Err(Error::invalid(format!("duplicate value name '{}'", v.name)));
        }
        let id = ValueId(self.values.len() as u32);
        self.names.insert(v.name.clone(), id);
        self.values.push(v);
        Ok(id)
    }

    /// A name not yet used in this graph, derived from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        if !self.names.contains_key(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !self.names.contains_key(n))
            .unwrap_or_default()
    }

    /// A node name not yet used in this graph, derived from `base`.
    pub fn fresh_node_name(&self, base: &str) -> String {
        let used: std::collections::HashSet<&str> =
            self.nodes.node_weights().map(|n| n.name.as_str()).collect();
        if !used.contains(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !used.contains(n.as_str()))
            .unwrap_or_default()
    }

    /// Add a node; records it as the producer of its outputs and links edges from known producers.
    pub fn add_node(&mut self, node: Node) -> Result<NodeId> {
        for o in node.outputs.iter().flatten() {
            if let Some((p, _)) = self.value(*o).producer {
                if self.nodes.contains_node(p) {
                    return Err(Error::invalid(format!(
                        "value '{}' is produced by two nodes ('{}' and '{}')",
                        self.value(*o).name,
                        self.nodes[p].name,
                        node.name
                    )));
                }
            }
        }
        let outputs = node.outputs.clone();
        let id = self.nodes.add_node(node);
        for (slot, o) in outputs.iter().enumerate() {
            if let Some(o) = o {
                self.values[o.index()].producer = Some((id, slot));
            }
        }
        self.link_inputs(id);
        Ok(id)
    }

    fn link_inputs(&mut self, id: NodeId) {
        let Some(node) = self.nodes.node_weight(id) else { return };
        let mut edges = Vec::new();
        for (slot, v) in node.inputs.iter().enumerate() {
            if let Some(v) = v {
                if let Some((p, _)) = self.values[v.index()].producer {
                    edges.push((p, Edge { value: *v, slot: Slot::Input(slot) }));
                }
            }
        }
        for v in &node.captures {
            if let Some((p, _)) = self.values[v.index()].producer {
                edges.push((p, Edge { value: *v, slot: Slot::Capture }));
            }
        }
        for (p, e) in edges {
            if self.nodes.contains_node(p) {
                self.nodes.add_edge(p, id, e);
            }
        }
    }

    /// Recompute all edges from the nodes' inputs (after bulk construction).
    pub fn rebuild_edges(&mut self) {
        self.nodes.clear_edges();
        let ids: Vec<NodeId> = self.nodes.node_indices().collect();
        for id in ids {
            self.link_inputs(id);
        }
    }

    /// Remove a node; its outputs lose their producer.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        let node = self.nodes.remove_node(id)?;
        for o in node.outputs.iter().flatten() {
            if self.values[o.index()].producer.map(|p| p.0) == Some(id) {
                self.values[o.index()].producer = None;
            }
        }
        Some(node)
    }

    /// Rename a value (the new name must be unused).
    pub fn rename_value(&mut self, id: ValueId, name: &str) -> Result<()> {
        if self.names.contains_key(name) {
            return Err(Error::invalid(format!(
                "cannot rename '{}' to '{name}': name in use",
                self.value(id).name
            )));
        }
        let old = std::mem::replace(&mut self.values[id.index()].name, name.to_string());
        self.names.remove(&old);
        self.names.insert(name.to_string(), id);
        Ok(())
    }

    /// Add a constant (initializer) value named after `base`.
    pub fn add_const(&mut self, base: &str, data: TensorData) -> Result<ValueId> {
        let mut v = Value::new(self.fresh_name(base));
        v.dtype = data.dtype;
        v.shape = Some(data.dims.iter().map(|d| Dim::Known(*d)).collect());
        v.data = Some(data);
        let id = self.add_value(v)?;
        self.initializers.push(id);
        Ok(id)
    }

    /// Add an intermediate value with the given type, named after `base`.
    pub fn add_temp(
        &mut self,
        base: &str,
        dtype: DType,
        shape: Option<Vec<Dim>>,
    ) -> Result<ValueId> {
        let mut v = Value::new(self.fresh_name(base));
        v.dtype = dtype;
        v.shape = shape;
        self.add_value(v)
    }

    /// The name of the first graph input that is not an initializer (what calibration and validation feed).
    pub fn data_input_name(&self) -> Option<String> {
        self.runtime_input_names().into_iter().next()
    }

    /// The names of the graph inputs that are not initializers, in order (what a run must feed).
    pub fn runtime_input_names(&self) -> Vec<String> {
        self.inputs
            .iter()
            .filter(|v| !self.initializers.contains(v))
            .map(|v| self.value(*v).name.clone())
            .collect()
    }

    pub fn is_output(&self, v: ValueId) -> bool {
        self.outputs.contains(&v)
    }

    /// The constant data of `v`, if it is an initializer or folded constant (not a graph input).
    pub fn const_data(&self, v: ValueId) -> Option<&TensorData> {
        if self.inputs.contains(&v) {
            return None;
        }
        self.value(v).data.as_ref()
    }

    /// Nodes reading `v` and the input slots they read it at.
    pub fn consumers(&self, v: ValueId) -> Vec<(NodeId, usize)> {
        let mut out = Vec::new();
        for id in self.nodes.node_indices() {
            for (slot, i) in self.nodes[id].inputs.iter().enumerate() {
                if *i == Some(v) {
                    out.push((id, slot));
                }
            }
        }
        out
    }

    /// Replace every use of `old` (node inputs, captures, graph outputs) by `new`.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        let ids: Vec<NodeId> = self.nodes.node_indices().collect();
        for id in &ids {
            let n = &mut self.nodes[*id];
            for i in n.inputs.iter_mut() {
                if *i == Some(old) {
                    *i = Some(new);
                }
            }
            for c in n.captures.iter_mut() {
                if *c == old {
                    *c = new;
                }
            }
        }
        for o in self.outputs.iter_mut() {
            if *o == old {
                *o = new;
            }
        }
        self.rebuild_edges();
    }

    /// Nodes in a topological order that keeps insertion order where data flow allows (so an unchanged
    /// model exports in its original order). Fails on a cycle, naming nodes on it.
    pub fn topo_order(&self) -> Result<Vec<NodeId>> {
        let mut indeg: HashMap<NodeId, usize> = HashMap::new();
        for id in self.nodes.node_indices() {
            indeg.insert(id, self.nodes.edges_directed(id, Direction::Incoming).count());
        }
        let mut ready: BTreeSet<NodeId> =
            indeg.iter().filter(|(_, d)| **d == 0).map(|(k, _)| *k).collect();
        let mut order = Vec::with_capacity(indeg.len());
        while let Some(id) = ready.pop_first() {
            order.push(id);
            for e in self.nodes.edges_directed(id, Direction::Outgoing) {
                let t = e.target();
                if let Some(d) = indeg.get_mut(&t) {
                    *d -= 1;
                    if *d == 0 {
                        ready.insert(t);
                    }
                }
            }
        }
        if order.len() != indeg.len() {
            let mut stuck: Vec<&str> = indeg
                .iter()
                .filter(|(_, d)| **d > 0)
                .map(|(id, _)| self.nodes[*id].name.as_str())
                .collect();
            stuck.sort();
            stuck.truncate(5);
            return Err(Error::invalid(format!(
                "the graph has a cycle through node(s) {}",
                stuck.join(", ")
            )));
        }
        Ok(order)
    }

    /// Parameter count and bytes: elements and bytes of floating-point and integer initializers.
    pub fn param_stats(&self) -> (u64, u64) {
        let mut n = 0;
        let mut b = 0;
        for v in &self.initializers {
            if let Some(d) = &self.value(*v).data {
                n += d.len();
                b += d.byte_len() as u64;
            }
        }
        (n, b)
    }
}

/// Model-level data no pass reasons about, kept encoded for round-trip.
#[derive(Clone, Debug, Default)]
pub struct ModelOpaque {
    pub functions: Vec<Vec<u8>>,
    pub training_info: Vec<Vec<u8>>,
    pub configuration: Vec<Vec<u8>>,
}

/// A whole model.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub ir_version: i64,
    pub opset_imports: Vec<(String, i64)>,
    pub producer_name: String,
    pub producer_version: String,
    pub domain: String,
    pub model_version: i64,
    pub doc: String,
    pub metadata: Vec<(String, String)>,
    pub graph: Graph,
    pub opaque: ModelOpaque,
    /// External data files read on import (for hashing and reports).
    pub external_files: Vec<std::path::PathBuf>,
    /// Symmetric int8 activation ranges (amax = 127·scale) by value name, recorded by the quantizer under
    /// rules with symmetric activations, for every calibrated activation whether Q/DQ sit on it or not:
    /// what an implicit-quantization runtime needs (TensorRT's calibration cache for the DLA). Never
    /// exported.
    pub activation_amax: std::collections::BTreeMap<String, f32>,
}

impl Model {
    /// The opset version imported for the default domain.
    pub fn opset(&self) -> i64 {
        self.opset_imports
            .iter()
            .find(|(d, _)| d.is_empty() || d == "ai.onnx")
            .map(|(_, v)| *v)
            .unwrap_or(1)
    }
}
