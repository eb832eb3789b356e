//! IR attributes as ONNX `AttributeProto`s. Subgraph attributes are exported by the caller's `graph`
//! function (the exporter's own), so this module, the exporter and the lowering of IR-only ops do not
//! import one another.
use kiln_proto::onnx as pb;
use prost::Message;

use super::tensor::{tensor_to_proto, TensorSink};
use crate::error::{Error, Result};
use crate::ir::{AttrValue, Attribute, Graph};

/// `a` as ONNX; `graph` exports its subgraphs.
pub(crate) fn to_proto(
    a: &Attribute,
    graph: &mut dyn FnMut(&Graph) -> Result<pb::GraphProto>,
) -> Result<pb::AttributeProto> {
    use pb::attribute_proto::AttributeType as T;
    let mut p = pb::AttributeProto {
        name: a.name.clone(),
        doc_string: a.doc.clone(),
        ..Default::default()
    };
    let ty = match &a.value {
        AttrValue::Float(f) => {
            p.f = Some(*f);
            T::Float
        }
        AttrValue::Int(i) => {
            p.i = Some(*i);
            T::Int
        }
        AttrValue::String(s) => {
            p.s = Some(s.clone());
            T::String
        }
        AttrValue::Floats(f) => {
            p.floats = f.clone();
            T::Floats
        }
        AttrValue::Ints(i) => {
            p.ints = i.clone();
            T::Ints
        }
        AttrValue::Strings(s) => {
            p.strings = s.clone();
            T::Strings
        }
        // Attribute tensors stay inline: runtimes resolve external data for initializers most reliably.
        AttrValue::Tensor(t) => {
            p.t = Some(tensor_to_proto(
                a.tensor_names.first().map(String::as_str).unwrap_or(""),
                t,
                &mut TensorSink::Inline,
            ));
            T::Tensor
        }
        AttrValue::Tensors(ts) => {
            p.tensors = ts
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    tensor_to_proto(
                        a.tensor_names.get(i).map(String::as_str).unwrap_or(""),
                        t,
                        &mut TensorSink::Inline,
                    )
                })
                .collect();
            T::Tensors
        }
        AttrValue::Graph(g) => {
            p.g = Some(graph(g)?);
            T::Graph
        }
        AttrValue::Graphs(gs) => {
            p.graphs = gs.iter().map(&mut *graph).collect::<Result<_>>()?;
            T::Graphs
        }
        AttrValue::Opaque(b) => {
            return pb::AttributeProto::decode(b.as_slice())
                .map_err(|e| Error::invalid(format!("attribute '{}': {e}", a.name)));
        }
    };
    p.r#type = ty as i32;
    Ok(p)
}
