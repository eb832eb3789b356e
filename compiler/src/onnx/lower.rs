//! Export-time lowering of IR constructs that are not single ONNX ops: activations fused into a node
//! (`Node::act`), `Silu`, `Attention`, and activations the model's opset lacks (HardSwish before 14, Gelu
//! before 20). Each becomes its standard ONNX op sequence, so any runtime can check a fused graph.
//! Intermediate names are `<output>__<step>`, made unique against the graph; constants the sequences need
//! are added as initializers.
use std::collections::HashSet;

use kiln_proto::onnx as pb;

use crate::error::Result;
use crate::ir::{Act, Graph, Node, Op, TensorData};

use super::tensor::{tensor_to_proto, TensorSink};

/// Per-graph lowering state.
pub struct Lowering<'g> {
    g: &'g Graph,
    opset: i64,
    used: HashSet<String>,
    inits: Vec<pb::TensorProto>,
    /// Float type of the node being expanded: its constants match it (float16 graphs).
    float: crate::ir::DType,
}

fn attr_f(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        f: Some(v),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        ..Default::default()
    }
}

fn attr_i(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        i: Some(v),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        ..Default::default()
    }
}

fn attr_s(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        s: Some(v.as_bytes().to_vec()),
        r#type: pb::attribute_proto::AttributeType::String as i32,
        ..Default::default()
    }
}

impl<'g> Lowering<'g> {
    pub fn new(g: &'g Graph, opset: i64) -> Self {
        Lowering { g, opset, used: HashSet::new(), inits: Vec::new(), float: crate::ir::DType::F32 }
    }

    pub fn into_initializers(self) -> Vec<pb::TensorProto> {
        self.inits
    }

    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.g.find(&name).is_some() || self.used.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.used.insert(name.clone());
        name
    }

    /// A node name no graph node and no node written so far has.
    fn fresh_node(&mut self, base: &str) -> String {
        let taken = |l: &Self, name: &str| {
            l.used.contains(name) || l.g.nodes.node_weights().any(|n| n.name == name)
        };
        let mut name = base.to_string();
        let mut i = 1;
        while taken(self, &name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.used.insert(name.clone());
        name
    }

    fn scalar(&mut self, base: &str, v: f32) -> String {
        let name = self.fresh(base);
        let t = if self.float == crate::ir::DType::F16 {
            TensorData::from_f32_as_f16(vec![], &[v])
        } else {
            TensorData::from_f32(vec![], &[v])
        };
        self.inits.push(tensor_to_proto(&name, &t, &mut TensorSink::Inline));
        name
    }

    fn node(
        op: &str,
        name: String,
        inputs: Vec<String>,
        outputs: Vec<String>,
        attribute: Vec<pb::AttributeProto>,
    ) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            name,
            input: inputs,
            output: outputs,
            attribute,
            ..Default::default()
        }
    }

    fn needs_lowering(&self, a: &Act) -> bool {
        match a {
            Act::Silu => true,
            Act::HardSwish => self.opset < 14,
            Act::Gelu { .. } => self.opset < 20,
            _ => false,
        }
    }

    /// Emit `a` applied to `x`, producing `y`.
    fn act(&mut self, a: &Act, x: &str, y: &str, base: &str, out: &mut Vec<pb::NodeProto>) {
        let y = y.to_string();
        let x = x.to_string();
        match a {
            Act::Relu => out.push(Self::node("Relu", base.into(), vec![x], vec![y], vec![])),
            Act::Sigmoid => out.push(Self::node("Sigmoid", base.into(), vec![x], vec![y], vec![])),
            Act::Tanh => out.push(Self::node("Tanh", base.into(), vec![x], vec![y], vec![])),
            Act::LeakyRelu { alpha } => {
                let attrs = alpha.map(|v| vec![attr_f("alpha", v)]).unwrap_or_default();
                out.push(Self::node("LeakyRelu", base.into(), vec![x], vec![y], attrs))
            }
            Act::HardSigmoid { alpha, beta } => {
                let mut attrs = Vec::new();
                if let Some(v) = alpha {
                    attrs.push(attr_f("alpha", *v));
                }
                if let Some(v) = beta {
                    attrs.push(attr_f("beta", *v));
                }
                out.push(Self::node("HardSigmoid", base.into(), vec![x], vec![y], attrs))
            }
            Act::Clip { min, max } => {
                if self.opset < 11 {
                    let mut attrs = Vec::new();
                    if let Some(v) = min {
                        attrs.push(attr_f("min", *v));
                    }
                    if let Some(v) = max {
                        attrs.push(attr_f("max", *v));
                    }
                    out.push(Self::node("Clip", base.into(), vec![x], vec![y], attrs));
                } else {
                    let lo = min.map(|v| self.scalar(&format!("{y}__min"), v)).unwrap_or_default();
                    let hi = max.map(|v| self.scalar(&format!("{y}__max"), v)).unwrap_or_default();
                    out.push(Self::node("Clip", base.into(), vec![x, lo, hi], vec![y], vec![]));
                }
            }
            Act::HardSwish if self.opset >= 14 => {
                out.push(Self::node("HardSwish", base.into(), vec![x], vec![y], vec![]))
            }
            Act::HardSwish => {
                let hs = self.fresh(&format!("{y}__hsig"));
                out.push(Self::node(
                    "HardSigmoid",
                    format!("{base}__hsig"),
                    vec![x.clone()],
                    vec![hs.clone()],
                    vec![attr_f("alpha", 1.0 / 6.0), attr_f("beta", 0.5)],
                ));
                out.push(Self::node("Mul", base.into(), vec![x, hs], vec![y], vec![]));
            }
            Act::Silu => {
                let s = self.fresh(&format!("{y}__sigmoid"));
                out.push(Self::node(
                    "Sigmoid",
                    format!("{base}__sigmoid"),
                    vec![x.clone()],
                    vec![s.clone()],
                    vec![],
                ));
                out.push(Self::node("Mul", base.into(), vec![x, s], vec![y], vec![]));
            }
            Act::Gelu { approximate } if self.opset >= 20 => {
                let attrs = approximate
                    .as_ref()
                    .map(|a| vec![attr_s("approximate", a)])
                    .unwrap_or_default();
                out.push(Self::node("Gelu", base.into(), vec![x], vec![y], attrs));
            }
            Act::Gelu { approximate } => {
                // erf: 0.5·x·(1 + erf(x/√2)); tanh: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
                let inner = if approximate.as_deref() == Some("tanh") {
                    let c3 = self.scalar(&format!("{y}__c3"), 3.0);
                    let ca = self.scalar(&format!("{y}__c0044715"), 0.044715);
                    let ck = self
                        .scalar(&format!("{y}__sqrt2pi"), (2.0f32 / std::f32::consts::PI).sqrt());
                    let (p, m, a, k, t) = (
                        self.fresh(&format!("{y}__cube")),
                        self.fresh(&format!("{y}__cubec")),
                        self.fresh(&format!("{y}__sum")),
                        self.fresh(&format!("{y}__scaled")),
                        self.fresh(&format!("{y}__tanh")),
                    );
                    out.push(Self::node(
                        "Pow",
                        format!("{base}__cube"),
                        vec![x.clone(), c3],
                        vec![p.clone()],
                        vec![],
                    ));
                    out.push(Self::node(
                        "Mul",
                        format!("{base}__cubec"),
                        vec![p, ca],
                        vec![m.clone()],
                        vec![],
                    ));
                    out.push(Self::node(
                        "Add",
                        format!("{base}__sum"),
                        vec![x.clone(), m],
                        vec![a.clone()],
                        vec![],
                    ));
                    out.push(Self::node(
                        "Mul",
                        format!("{base}__scaled"),
                        vec![a, ck],
                        vec![k.clone()],
                        vec![],
                    ));
                    out.push(Self::node(
                        "Tanh",
                        format!("{base}__tanh"),
                        vec![k],
                        vec![t.clone()],
                        vec![],
                    ));
                    t
                } else {
                    let s2 = self.scalar(&format!("{y}__sqrt2"), std::f32::consts::SQRT_2);
                    let (d, e) =
                        (self.fresh(&format!("{y}__div")), self.fresh(&format!("{y}__erf")));
                    out.push(Self::node(
                        "Div",
                        format!("{base}__div"),
                        vec![x.clone(), s2],
                        vec![d.clone()],
                        vec![],
                    ));
                    out.push(Self::node(
                        "Erf",
                        format!("{base}__erf"),
                        vec![d],
                        vec![e.clone()],
                        vec![],
                    ));
                    e
                };
                let one = self.scalar(&format!("{y}__one"), 1.0);
                let half = self.scalar(&format!("{y}__half"), 0.5);
                let (p1, px) =
                    (self.fresh(&format!("{y}__plus1")), self.fresh(&format!("{y}__timesx")));
                out.push(Self::node(
                    "Add",
                    format!("{base}__plus1"),
                    vec![inner, one],
                    vec![p1.clone()],
                    vec![],
                ));
                out.push(Self::node(
                    "Mul",
                    format!("{base}__timesx"),
                    vec![x, p1],
                    vec![px.clone()],
                    vec![],
                ));
                out.push(Self::node("Mul", base.into(), vec![px, half], vec![y], vec![]));
            }
        }
    }

    /// LayerNormalization before opset 17: its decomposition over axes [axis, rank).
    fn layernorm(&mut self, n: &Node, out: &mut Vec<pb::NodeProto>) -> Result<bool> {
        let g = self.g;
        let name =
            |v: Option<crate::ir::ValueId>| v.map(|v| g.value(v).name.clone()).unwrap_or_default();
        let Some(x) = n.input(0) else { return Ok(false) };
        let Some(rank) = g.value(x).shape.as_ref().map(|s| s.len() as i64) else {
            return Ok(false);
        };
        let axis = n.op.attr_int("axis").unwrap_or(-1);
        let axis = if axis < 0 { axis + rank } else { axis };
        if n.outputs.iter().skip(1).flatten().next().is_some() || !(0..rank).contains(&axis) {
            return Ok(false);
        }
        let axes: Vec<i64> = (axis..rank).collect();
        let eps = n.op.attr_float("epsilon").unwrap_or(1e-5);
        let y = name(n.output(0));
        let b = &n.name;
        let red = |axes: &Vec<i64>| {
            vec![pb::AttributeProto {
                name: "axes".into(),
                ints: axes.clone(),
                r#type: pb::attribute_proto::AttributeType::Ints as i32,
                ..Default::default()
            }]
        };
        let (mean, d, sq, var, ve, sd, nrm) = (
            self.fresh(&format!("{y}__mean")),
            self.fresh(&format!("{y}__centered")),
            self.fresh(&format!("{y}__sq")),
            self.fresh(&format!("{y}__var")),
            self.fresh(&format!("{y}__vareps")),
            self.fresh(&format!("{y}__std")),
            self.fresh(&format!("{y}__normed")),
        );
        let e = self.scalar(&format!("{y}__eps"), eps);
        out.push(Self::node(
            "ReduceMean",
            format!("{b}__mean"),
            vec![name(Some(x))],
            vec![mean.clone()],
            red(&axes),
        ));
        out.push(Self::node(
            "Sub",
            format!("{b}__centered"),
            vec![name(Some(x)), mean],
            vec![d.clone()],
            vec![],
        ));
        out.push(Self::node(
            "Mul",
            format!("{b}__sq"),
            vec![d.clone(), d.clone()],
            vec![sq.clone()],
            vec![],
        ));
        out.push(Self::node(
            "ReduceMean",
            format!("{b}__var"),
            vec![sq],
            vec![var.clone()],
            red(&axes),
        ));
        out.push(Self::node("Add", format!("{b}__vareps"), vec![var, e], vec![ve.clone()], vec![]));
        out.push(Self::node("Sqrt", format!("{b}__std"), vec![ve], vec![sd.clone()], vec![]));
        let has_beta = n.input(2).is_some();
        let scaled = if has_beta { self.fresh(&format!("{y}__scaled")) } else { y.clone() };
        out.push(Self::node("Div", format!("{b}__normed"), vec![d, sd], vec![nrm.clone()], vec![]));
        out.push(Self::node(
            "Mul",
            format!("{b}__gamma"),
            vec![nrm, name(n.input(1))],
            vec![scaled.clone()],
            vec![],
        ));
        if has_beta {
            out.push(Self::node("Add", b.clone(), vec![scaled, name(n.input(2))], vec![y], vec![]));
        }
        Ok(true)
    }

    /// Expand `n` into `out` when it needs lowering; false when it exports as a single op.
    pub fn expand(&mut self, n: &Node, out: &mut Vec<pb::NodeProto>) -> Result<bool> {
        let g = self.g;
        self.float = match n.output(0).map(|v| g.value(v).dtype) {
            Some(crate::ir::DType::F16) => crate::ir::DType::F16,
            _ => crate::ir::DType::F32,
        };
        let name =
            |v: Option<crate::ir::ValueId>| v.map(|v| g.value(v).name.clone()).unwrap_or_default();
        let standalone = matches!(&n.op, Op::Act(a) if self.needs_lowering(a));
        if n.act.is_none()
            && self.opset < 17
            && matches!(&n.op, Op::Generic { op_type, .. } if op_type == "LayerNormalization")
            && (n.domain.is_empty() || n.domain == "ai.onnx")
        {
            return self.layernorm(n, out);
        }
        if n.act.is_none() && !standalone && !matches!(n.op, Op::Attention { .. }) {
            return Ok(false);
        }
        let y = name(n.output(0));
        if let Op::Act(a) = &n.op {
            if n.act.is_none() {
                self.act(a, &name(n.input(0)), &y, &n.name, out);
                return Ok(true);
            }
        }
        // The op itself, writing to a temporary when an activation follows.
        let pre = if n.act.is_some() { self.fresh(&format!("{y}__preact")) } else { y.clone() };
        match &n.op {
            Op::Attention { scale } => {
                let (s1, s2, p) = (
                    self.fresh(&format!("{y}__scores")),
                    self.fresh(&format!("{y}__scaled")),
                    self.fresh(&format!("{y}__probs")),
                );
                let sc = self.scalar(&format!("{y}__scale"), *scale);
                out.push(Self::node(
                    "MatMul",
                    format!("{}__qk", n.name),
                    vec![name(n.input(0)), name(n.input(1))],
                    vec![s1.clone()],
                    vec![],
                ));
                out.push(Self::node(
                    "Mul",
                    format!("{}__scale", n.name),
                    vec![s1, sc],
                    vec![s2.clone()],
                    vec![],
                ));
                out.push(Self::node(
                    "Softmax",
                    format!("{}__softmax", n.name),
                    vec![s2],
                    vec![p.clone()],
                    vec![attr_i("axis", -1)],
                ));
                out.push(Self::node(
                    "MatMul",
                    n.name.clone(),
                    vec![p, name(n.input(2))],
                    vec![pre.clone()],
                    vec![],
                ));
            }
            Op::Act(a) => self.act(a, &name(n.input(0)), &pre, &n.name, out),
            op => {
                let mut attribute = Vec::new();
                for a in op.attributes() {
                    // Typed ops carry no subgraphs (`Op::Generic` keeps those, and is not expanded here).
                    attribute.push(super::attr::to_proto(&a, &mut |_| {
                        Err(crate::Error::invalid(format!("{}: a subgraph on a typed op", n.name)))
                    })?);
                }
                let mut outputs: Vec<String> = n.outputs.iter().map(|v| name(*v)).collect();
                if let Some(o) = outputs.first_mut() {
                    *o = pre.clone();
                }
                out.push(pb::NodeProto {
                    input: n.inputs.iter().map(|v| name(*v)).collect(),
                    output: outputs,
                    name: n.name.clone(),
                    op_type: op.op_type().to_string(),
                    domain: n.domain.clone(),
                    attribute,
                    doc_string: n.doc.clone(),
                    ..Default::default()
                });
            }
        }
        if let Some(a) = &n.act {
            // Unique among node names: models may leave node names empty, and runtimes (tract) refuse
            // two nodes of one name.
            let base = self.fresh_node(&format!("{}__act", n.name));
            self.act(a, &pre, &y, &base, out);
        }
        Ok(true)
    }
}
