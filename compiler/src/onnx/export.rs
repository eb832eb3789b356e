//! IR → ONNX `ModelProto`, and writing it (atomically) with inline or external data.
//!
//! Nodes are written in a topological order that keeps the original order where it can, so an untouched
//! model exports node-for-node as it was imported. Tensors go inline unless external data is asked for
//! or the model would pass protobuf's 2 GiB limit.
use std::path::Path;

use kiln_proto::onnx as pb;
use prost::Message;

use super::tensor::{tensor_to_proto, TensorSink};
use crate::artifact::write_atomic;
use crate::error::{Error, Result};
use crate::ir::{Attribute, Dim, Graph, Model, ValueId};

/// Where initializer bytes go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ExternalData {
    /// External when the model would exceed 2 GiB, inline otherwise.
    #[default]
    Auto,
    Inline,
    /// External, in a file next to the model named `<model file name>.data`.
    Always,
}

/// Export settings.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    pub external: ExternalData,
    /// Leave out `value_info` (some runtimes choke on symbolic dim expressions there).
    pub strip_value_info: bool,
}

const TWO_GIB: usize = 2 << 30;
const EXTERNAL_THRESHOLD: usize = 1024;

/// Build a `ModelProto` with all tensors inline.
pub fn to_proto(m: &Model, opts: &ExportOptions) -> Result<pb::ModelProto> {
    to_proto_with(m, opts, &mut TensorSink::Inline)
}

/// Encode the model to bytes with all tensors inline.
pub fn to_bytes(m: &Model, opts: &ExportOptions) -> Result<Vec<u8>> {
    Ok(to_proto(m, opts)?.encode_to_vec())
}

/// Serialize the model as files: `(relative name, bytes)` pairs — the model and, when external data is
/// used, its data file. `file_name` is the model's file name.
pub fn to_files(
    m: &Model,
    file_name: &str,
    opts: &ExportOptions,
) -> Result<Vec<(String, Vec<u8>)>> {
    let total: usize = m
        .graph
        .initializers
        .iter()
        .filter_map(|v| m.graph.value(*v).data.as_ref())
        .map(|d| d.byte_len())
        .sum();
    let external = match opts.external {
        ExternalData::Always => true,
        ExternalData::Inline => false,
        ExternalData::Auto => total >= TWO_GIB - (64 << 20),
    };
    if !external {
        return Ok(vec![(file_name.to_string(), to_bytes(m, opts)?)]);
    }
    let data_name = format!("{file_name}.data");
    let mut buf = Vec::with_capacity(total);
    let proto = to_proto_with(
        m,
        opts,
        &mut TensorSink::External {
            location: &data_name,
            buf: &mut buf,
            threshold: EXTERNAL_THRESHOLD,
        },
    )?;
    Ok(vec![(file_name.to_string(), proto.encode_to_vec()), (data_name, buf)])
}

/// Write the model to `path` (and `path.data` when external), each file atomically.
pub fn save(m: &Model, path: &Path, opts: &ExportOptions) -> Result<Vec<std::path::PathBuf>> {
    let file_name = path
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| Error::invalid(format!("bad output path {}", path.display())))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut written = Vec::new();
    // Data file first, so a model file never points at a missing or partial data file.
    let mut files = to_files(m, file_name, opts)?;
    files.reverse();
    for (name, bytes) in files {
        let p = dir.join(&name);
        write_atomic(&p, &bytes)?;
        written.push(p);
    }
    written.reverse();
    Ok(written)
}

fn to_proto_with(m: &Model, opts: &ExportOptions, sink: &mut TensorSink) -> Result<pb::ModelProto> {
    let graph = export_graph(&m.graph, opts, sink, m.opset())?;
    Ok(pb::ModelProto {
        ir_version: m.ir_version,
        opset_import: m
            .opset_imports
            .iter()
            .map(|(d, v)| pb::OperatorSetIdProto { domain: d.clone(), version: *v })
            .collect(),
        producer_name: m.producer_name.clone(),
        producer_version: m.producer_version.clone(),
        domain: m.domain.clone(),
        model_version: m.model_version,
        doc_string: m.doc.clone(),
        graph: Some(graph),
        metadata_props: props(&m.metadata),
        training_info: m
            .opaque
            .training_info
            .iter()
            .filter_map(|b| pb::TrainingInfoProto::decode(b.as_slice()).ok())
            .collect(),
        functions: m
            .opaque
            .functions
            .iter()
            .filter_map(|b| pb::FunctionProto::decode(b.as_slice()).ok())
            .collect(),
        configuration: m
            .opaque
            .configuration
            .iter()
            .filter_map(|b| pb::DeviceConfigurationProto::decode(b.as_slice()).ok())
            .collect(),
    })
}

fn props(p: &[(String, String)]) -> Vec<pb::StringStringEntryProto> {
    p.iter().map(|(k, v)| pb::StringStringEntryProto { key: k.clone(), value: v.clone() }).collect()
}

fn type_proto(g: &Graph, v: ValueId) -> Option<pb::TypeProto> {
    let val = g.value(v);
    if let Some(b) = &val.type_opaque {
        return pb::TypeProto::decode(b.as_slice()).ok();
    }
    if val.dtype == crate::ir::DType::Undefined && val.shape.is_none() {
        return None;
    }
    let shape = val.shape.as_ref().map(|dims| pb::TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| pb::tensor_shape_proto::Dimension {
                denotation: String::new(),
                value: match d {
                    Dim::Known(x) => Some(pb::tensor_shape_proto::dimension::Value::DimValue(*x)),
                    Dim::Sym(s) => {
                        Some(pb::tensor_shape_proto::dimension::Value::DimParam(s.clone()))
                    }
                    Dim::Unknown => None,
                },
            })
            .collect(),
    });
    Some(pb::TypeProto {
        denotation: String::new(),
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type: val.dtype.to_onnx(),
            shape,
        })),
    })
}

fn value_info(g: &Graph, v: ValueId) -> pb::ValueInfoProto {
    let val = g.value(v);
    pb::ValueInfoProto {
        name: val.name.clone(),
        r#type: type_proto(g, v),
        doc_string: val.doc.clone(),
        metadata_props: props(&val.metadata),
    }
}

fn export_graph(
    g: &Graph,
    opts: &ExportOptions,
    sink: &mut TensorSink,
    opset: i64,
) -> Result<pb::GraphProto> {
    let order = g.topo_order()?;
    let name = |v: Option<ValueId>| v.map(|v| g.value(v).name.clone()).unwrap_or_default();
    let mut nodes = Vec::with_capacity(order.len());
    let mut lower = super::lower::Lowering::new(g, opset);
    for id in order {
        let n = &g.nodes[id];
        if lower.expand(n, &mut nodes)? {
            continue;
        }
        let mut attribute = Vec::new();
        for a in n.op.attributes() {
            attribute.push(export_attr(&a, opts, sink, opset)?);
        }
        nodes.push(pb::NodeProto {
            input: n.inputs.iter().map(|v| name(*v)).collect(),
            output: n.outputs.iter().map(|v| name(*v)).collect(),
            name: n.name.clone(),
            op_type: n.op.op_type().to_string(),
            domain: n.domain.clone(),
            overload: n.overload.clone(),
            attribute,
            doc_string: n.doc.clone(),
            metadata_props: props(&n.metadata),
            device_configurations: n
                .device_configurations
                .iter()
                .filter_map(|b| pb::NodeDeviceConfigurationProto::decode(b.as_slice()).ok())
                .collect(),
        });
    }
    let mut initializer: Vec<pb::TensorProto> = g
        .initializers
        .iter()
        .filter_map(|v| {
            g.value(*v).data.as_ref().map(|d| tensor_to_proto(&g.value(*v).name, d, sink))
        })
        .collect();
    initializer.extend(lower.into_initializers());
    let live = |v: &ValueId| {
        let val = g.value(*v);
        val.producer.map(|(p, _)| g.nodes.contains_node(p)).unwrap_or(false)
            || g.inputs.contains(v)
            || g.initializers.contains(v)
            || val.outer
    };
    Ok(pb::GraphProto {
        node: nodes,
        name: g.name.clone(),
        initializer,
        sparse_initializer: g
            .opaque
            .sparse_initializers
            .iter()
            .filter_map(|b| pb::SparseTensorProto::decode(b.as_slice()).ok())
            .collect(),
        doc_string: g.doc.clone(),
        input: g.inputs.iter().map(|v| value_info(g, *v)).collect(),
        output: g.outputs.iter().map(|v| value_info(g, *v)).collect(),
        value_info: if opts.strip_value_info {
            Vec::new()
        } else {
            g.value_info.iter().filter(|v| live(v)).map(|v| value_info(g, *v)).collect()
        },
        quantization_annotation: g
            .opaque
            .quantization_annotation
            .iter()
            .filter_map(|b| pb::TensorAnnotation::decode(b.as_slice()).ok())
            .collect(),
        metadata_props: props(&g.metadata),
    })
}

/// An attribute as ONNX, its subgraphs exported like the main graph.
fn export_attr(
    a: &Attribute,
    opts: &ExportOptions,
    sink: &mut TensorSink,
    opset: i64,
) -> Result<pb::AttributeProto> {
    super::attr::to_proto(a, &mut |g| export_graph(g, opts, sink, opset))
}
