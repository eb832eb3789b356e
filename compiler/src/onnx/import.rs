//! ONNX `ModelProto` → IR. The only place (with `export`) that sees prost types.
//!
//! Guarantees: every node, attribute, subgraph, opset import, metadata entry, doc string and value name
//! survives; what kiln does not interpret is kept encoded. Hostile input (garbage bytes, another message,
//! duplicate names, inconsistent tensor sizes, absurd dims, cycles, dangling inputs, escaping external
//! paths) is an error naming the problem, never a panic or an unbounded allocation.
use std::collections::HashSet;
use std::path::Path;

use kiln_proto::onnx as pb;
use prost::Message;

use super::tensor::{tensor_from_proto, ImportCx};
use crate::error::{Error, Result};
use crate::ir::{
    AttrValue, Attribute, DType, Dim, Graph, Model, ModelOpaque, Node, Op, Value, ValueId,
};

/// Largest model file kiln reads into memory (protobuf itself caps messages at 2 GiB).
const MAX_MODEL_BYTES: u64 = 2 << 30;
/// Subgraph nesting deeper than this is refused (guards the recursion against hostile input).
const MAX_DEPTH: usize = 64;

/// Load a model file; external data is resolved relative to its folder.
pub fn load(path: &Path) -> Result<Model> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::NotOnnx { path: path.into(), reason: "is a directory".into() });
    }
    if meta.len() > MAX_MODEL_BYTES {
        return Err(Error::NotOnnx {
            path: path.into(),
            reason: format!("{} bytes is over the 2 GiB protobuf limit", meta.len()),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let base = path
        .parent()
        .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
        .map(|p| p.to_path_buf());
    load_bytes(&bytes, base, path)
}

/// Decode a model from bytes. `base_dir` is where external data lives (None: external data is an error).
pub fn load_bytes(
    bytes: &[u8],
    base_dir: Option<std::path::PathBuf>,
    label: &Path,
) -> Result<Model> {
    let not_onnx = |reason: String| Error::NotOnnx { path: label.into(), reason };
    if bytes.is_empty() {
        return Err(not_onnx("the file is empty".into()));
    }
    let mp = pb::ModelProto::decode(bytes).map_err(|e| {
        not_onnx(format!("protobuf decoding failed ({e}); the file is truncated or not ONNX"))
    })?;
    if mp.ir_version <= 0 {
        return Err(not_onnx(
            "no ir_version: this is not an ONNX ModelProto (a protobuf of another message?)".into(),
        ));
    }
    let gp = mp.graph.ok_or_else(|| {
        not_onnx("the model has no graph (a protobuf of another message?)".into())
    })?;
    let mut cx = ImportCx::new(base_dir);
    let graph = import_graph(gp, &mut cx, 0)?;
    let model = Model {
        ir_version: mp.ir_version,
        opset_imports: mp.opset_import.into_iter().map(|o| (o.domain, o.version)).collect(),
        producer_name: mp.producer_name,
        producer_version: mp.producer_version,
        domain: mp.domain,
        model_version: mp.model_version,
        doc: mp.doc_string,
        metadata: props(mp.metadata_props),
        graph,
        opaque: ModelOpaque {
            functions: mp.functions.iter().map(|f| f.encode_to_vec()).collect(),
            training_info: mp.training_info.iter().map(|f| f.encode_to_vec()).collect(),
            configuration: mp.configuration.iter().map(|f| f.encode_to_vec()).collect(),
        },
        external_files: cx.external_files,
        activation_amax: Default::default(),
    };
    let outer: Vec<&str> =
        model.graph.values.iter().filter(|v| v.outer).map(|v| v.name.as_str()).collect();
    if let Some(first) = outer.first() {
        let users = model.graph.consumers(model.graph.find(first).unwrap_or(crate::ir::ValueId(0)));
        let who = users
            .first()
            .and_then(|(n, _)| model.graph.node(*n))
            .map(|n| format!("node '{}' ({}) reads", n.name, n.op.op_type()))
            .unwrap_or_else(|| "the graph references".into());
        return Err(Error::invalid(format!(
            "{who} '{first}', which no node produces and is not a graph input or initializer"
        )));
    }
    crate::ir::verify::verify(&model.graph)?;
    Ok(model)
}

fn props(p: Vec<pb::StringStringEntryProto>) -> Vec<(String, String)> {
    p.into_iter().map(|e| (e.key, e.value)).collect()
}

/// Apply a `TypeProto` to a value.
fn apply_type(v: &mut Value, tp: Option<pb::TypeProto>) {
    let Some(tp) = tp else { return };
    match &tp.value {
        Some(pb::type_proto::Value::TensorType(t)) => {
            v.dtype = DType::from_onnx(t.elem_type);
            v.shape = t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(x)) if *x >= 0 => {
                            Dim::Known(*x)
                        }
                        Some(pb::tensor_shape_proto::dimension::Value::DimParam(p))
                            if !p.is_empty() =>
                        {
                            Dim::Sym(p.clone())
                        }
                        _ => Dim::Unknown,
                    })
                    .collect()
            });
        }
        Some(_) => v.type_opaque = Some(tp.encode_to_vec()),
        None => {}
    }
}

fn import_graph(gp: pb::GraphProto, cx: &mut ImportCx, depth: usize) -> Result<Graph> {
    if depth > MAX_DEPTH {
        return Err(Error::invalid(format!("subgraphs nested deeper than {MAX_DEPTH} levels")));
    }
    let mut g = Graph::default();
    g.name = gp.name;
    g.doc = gp.doc_string;
    g.metadata = props(gp.metadata_props);
    g.opaque.quantization_annotation =
        gp.quantization_annotation.iter().map(|a| a.encode_to_vec()).collect();
    // Graph inputs.
    for vi in gp.input {
        let mut v = Value::new(vi.name.clone());
        v.doc = vi.doc_string;
        v.metadata = props(vi.metadata_props);
        apply_type(&mut v, vi.r#type);
        let id = g.add_value(v).map_err(|_| {
            Error::invalid(format!("graph '{}': duplicate input name '{}'", g.name, vi.name))
        })?;
        g.inputs.push(id);
    }
    // Initializers (old exporters also list them among the inputs).
    for t in gp.initializer {
        let name = t.name.clone();
        if name.is_empty() {
            return Err(Error::Tensor {
                name: "<unnamed>".into(),
                reason: "initializer without a name".into(),
            });
        }
        let data = tensor_from_proto(t, cx)?;
        let id = match g.find(&name) {
            Some(id) if g.initializers.contains(&id) => {
                return Err(Error::invalid(format!("duplicate initializer name '{name}'")));
            }
            Some(id) => id,
            None => g.add_value(Value::new(name.clone()))?,
        };
        let v = g.value_mut(id);
        if v.dtype == DType::Undefined {
            v.dtype = data.dtype;
        }
        if v.shape.is_none() {
            v.shape = Some(data.dims.iter().map(|d| Dim::Known(*d)).collect());
        }
        v.data = Some(data);
        g.initializers.push(id);
    }
    for sp in gp.sparse_initializer {
        g.opaque.sparse_initializers.push(sp.encode_to_vec());
        let name = sp.values.as_ref().map(|v| v.name.clone()).unwrap_or_default();
        if !name.is_empty() && g.find(&name).is_none() {
            let mut v = Value::new(name);
            v.outer = true; // defined by the sparse initializer kept in `opaque`
            g.add_value(v)?;
        }
    }
    let sparse_names: HashSet<String> =
        g.values.iter().filter(|v| v.outer).map(|v| v.name.clone()).collect();
    // Nodes.
    let mut nodes = Vec::with_capacity(gp.node.len());
    for (i, np) in gp.node.into_iter().enumerate() {
        let label =
            if np.name.is_empty() { format!("#{i} ({})", np.op_type) } else { np.name.clone() };
        let mut attrs = Vec::with_capacity(np.attribute.len());
        let mut seen = HashSet::new();
        for a in np.attribute {
            if !seen.insert(a.name.clone()) {
                return Err(Error::Node {
                    node: label,
                    op: np.op_type,
                    reason: format!("attribute '{}' given twice", a.name),
                });
            }
            attrs.push(import_attr(a, cx, depth).map_err(|e| match e {
                Error::Invalid(r) => {
                    Error::Node { node: label.clone(), op: np.op_type.clone(), reason: r }
                }
                other => other,
            })?);
        }
        let op = Op::from_onnx(&np.domain, &np.op_type, attrs);
        let mut inputs = Vec::with_capacity(np.input.len());
        for name in &np.input {
            inputs.push(if name.is_empty() { None } else { Some(value_for(&mut g, name)?) });
        }
        let mut outputs = Vec::with_capacity(np.output.len());
        for name in &np.output {
            if name.is_empty() {
                outputs.push(None);
                continue;
            }
            let id = value_for(&mut g, name)?;
            let v = g.value(id);
            if g.inputs.contains(&id)
                || v.data.is_some()
                || v.producer.is_some()
                || sparse_names.contains(name)
            {
                return Err(Error::Node {
                    node: label,
                    op: np.op_type,
                    reason: format!("output '{name}' is already defined (duplicate value name)"),
                });
            }
            // Mark produced now so a second producer is caught; the real id is set by add_node.
            g.value_mut(id).producer = Some((crate::ir::NodeId::end(), 0));
            outputs.push(Some(id));
        }
        // Outer-scope values its subgraphs read.
        let mut captures = Vec::new();
        for sub in op.subgraphs() {
            for v in sub.values.iter().filter(|v| v.outer) {
                let id = value_for(&mut g, &v.name)?;
                if !captures.contains(&id) {
                    captures.push(id);
                }
            }
        }
        let mut node = Node::new(np.name, op, inputs, outputs);
        node.domain = np.domain;
        node.doc = np.doc_string;
        node.overload = np.overload;
        node.metadata = props(np.metadata_props);
        node.device_configurations =
            np.device_configurations.iter().map(|d| d.encode_to_vec()).collect();
        node.captures = captures;
        nodes.push(node);
    }
    for o in g.values.iter_mut() {
        if o.producer.is_some() {
            o.producer = None;
        }
    }
    for n in nodes {
        g.add_node(n)?;
    }
    g.rebuild_edges();
    // Graph outputs.
    for vi in gp.output {
        let id = value_for(&mut g, &vi.name)?;
        let v = g.value_mut(id);
        if v.dtype == DType::Undefined || v.shape.is_none() {
            apply_type(v, vi.r#type);
        }
        if v.doc.is_empty() {
            v.doc = vi.doc_string;
        }
        if v.metadata.is_empty() {
            v.metadata = props(vi.metadata_props);
        }
        g.outputs.push(id);
    }
    // value_info: types of intermediate values.
    for vi in gp.value_info {
        let id = value_for(&mut g, &vi.name)?;
        let v = g.value_mut(id);
        apply_type(v, vi.r#type);
        v.doc = vi.doc_string;
        v.metadata = props(vi.metadata_props);
        if !g.value_info.contains(&id) {
            g.value_info.push(id);
        }
    }
    // Anything read but never defined is an outer-scope reference (valid only inside subgraphs; the
    // top-level import rejects it).
    let inputs: HashSet<ValueId> = g.inputs.iter().copied().collect();
    for (i, v) in g.values.iter_mut().enumerate() {
        if v.producer.is_none() && v.data.is_none() && !inputs.contains(&ValueId(i as u32)) {
            v.outer = true;
        }
    }
    // A value_info entry for a name nothing uses is not an outer reference.
    let used: HashSet<ValueId> = g
        .nodes
        .node_weights()
        .flat_map(|n| {
            n.inputs.iter().flatten().chain(n.captures.iter()).copied().collect::<Vec<_>>()
        })
        .chain(g.outputs.iter().copied())
        .collect();
    for (i, v) in g.values.iter_mut().enumerate() {
        if v.outer && !used.contains(&ValueId(i as u32)) && !sparse_names.contains(&v.name) {
            v.outer = false;
        }
    }
    Ok(g)
}

fn value_for(g: &mut Graph, name: &str) -> Result<ValueId> {
    match g.find(name) {
        Some(id) => Ok(id),
        None => g.add_value(Value::new(name)),
    }
}

fn import_attr(a: pb::AttributeProto, cx: &mut ImportCx, depth: usize) -> Result<Attribute> {
    use pb::attribute_proto::AttributeType as T;
    if !a.ref_attr_name.is_empty() {
        return Ok(Attribute {
            name: a.name.clone(),
            value: AttrValue::Opaque(a.encode_to_vec()),
            doc: String::new(),
            tensor_names: Vec::new(),
        });
    }
    let ty = T::try_from(a.r#type).unwrap_or(T::Undefined);
    let name = a.name.clone();
    let doc = a.doc_string.clone();
    let tensor_names: Vec<String> =
        a.t.iter().chain(a.tensors.iter()).map(|t| t.name.clone()).collect();
    let value = match ty {
        T::Float => AttrValue::Float(a.f.unwrap_or_default()),
        T::Int => AttrValue::Int(a.i.unwrap_or_default()),
        T::String => AttrValue::String(a.s.unwrap_or_default()),
        T::Floats => AttrValue::Floats(a.floats),
        T::Ints => AttrValue::Ints(a.ints),
        T::Strings => AttrValue::Strings(a.strings),
        T::Tensor => match a.t {
            Some(t) => AttrValue::Tensor(tensor_from_proto(t, cx)?),
            None => {
                return Err(Error::invalid(format!(
                    "attribute '{name}' of type TENSOR has no tensor"
                )))
            }
        },
        T::Tensors => AttrValue::Tensors(
            a.tensors.into_iter().map(|t| tensor_from_proto(t, cx)).collect::<Result<_>>()?,
        ),
        T::Graph => match a.g {
            Some(g) => AttrValue::Graph(Box::new(import_graph(g, cx, depth + 1)?)),
            None => {
                return Err(Error::invalid(format!(
                    "attribute '{name}' of type GRAPH has no graph"
                )))
            }
        },
        T::Graphs => AttrValue::Graphs(
            a.graphs.into_iter().map(|g| import_graph(g, cx, depth + 1)).collect::<Result<_>>()?,
        ),
        _ => AttrValue::Opaque(a.encode_to_vec()),
    };
    Ok(Attribute { name, value, doc, tensor_names })
}
