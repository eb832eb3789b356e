//! Operators. Typed variants for the ops passes and backends reason about; `Generic` keeps any other op
//! (any domain, any attributes, subgraphs included) so that import → export round-trips every model.
//!
//! A typed variant stores each ONNX attribute as an `Option`, so what the model wrote is exactly what
//! export writes back; when a node carries an attribute its typed form does not model, import keeps it
//! `Generic` instead.
use super::attr::{AttrReader, AttrWriter, Attribute};

/// Auto-pad / pads / strides / dilations / kernel of Conv and pooling ops.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Window {
    pub auto_pad: Option<String>,
    pub kernel_shape: Option<Vec<i64>>,
    pub pads: Option<Vec<i64>>,
    pub strides: Option<Vec<i64>>,
    pub dilations: Option<Vec<i64>>,
}

impl Window {
    fn read(r: &mut AttrReader) -> Self {
        Window {
            auto_pad: r.string("auto_pad"),
            kernel_shape: r.ints("kernel_shape"),
            pads: r.ints("pads"),
            strides: r.ints("strides"),
            dilations: r.ints("dilations"),
        }
    }
    fn write(&self, w: AttrWriter) -> AttrWriter {
        w.string("auto_pad", &self.auto_pad)
            .ints("kernel_shape", &self.kernel_shape)
            .ints("pads", &self.pads)
            .ints("strides", &self.strides)
            .ints("dilations", &self.dilations)
    }
}

/// Activation functions (element-wise, one input, possibly fused into Conv/Gemm by the fusion pass).
#[derive(Clone, Debug, PartialEq)]
pub enum Act {
    Relu,
    Sigmoid,
    Tanh,
    HardSwish,
    /// Opset < 11 carries min/max as attributes; later opsets as optional inputs.
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    HardSigmoid {
        alpha: Option<f32>,
        beta: Option<f32>,
    },
    LeakyRelu {
        alpha: Option<f32>,
    },
    /// ONNX Gelu (opset 20); `approximate` is "none" or "tanh". Exported as its decomposition before opset 20.
    Gelu {
        approximate: Option<String>,
    },
    /// x·σ(x). Not an ONNX op: exported as Sigmoid and Mul.
    Silu,
}

/// Element-wise binary ops with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

/// Pooling kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Average,
}

/// An operator.
#[derive(Clone, Debug)]
pub enum Op {
    Conv {
        window: Window,
        group: Option<i64>,
    },
    Gemm {
        alpha: Option<f32>,
        beta: Option<f32>,
        trans_a: Option<i64>,
        trans_b: Option<i64>,
    },
    MatMul,
    BatchNorm {
        epsilon: Option<f32>,
        momentum: Option<f32>,
        training_mode: Option<i64>,
    },
    Act(Act),
    Binary(BinOp),
    Identity,
    Reshape {
        allowzero: Option<i64>,
    },
    Transpose {
        perm: Option<Vec<i64>>,
    },
    Flatten {
        axis: Option<i64>,
    },
    Concat {
        axis: i64,
    },
    GlobalAveragePool,
    Pool {
        kind: PoolKind,
        window: Window,
        ceil_mode: Option<i64>,
        count_include_pad: Option<i64>,
        storage_order: Option<i64>,
    },
    Softmax {
        axis: Option<i64>,
    },
    QuantizeLinear {
        axis: Option<i64>,
        saturate: Option<i64>,
    },
    DequantizeLinear {
        axis: Option<i64>,
    },
    /// Scaled dot-product attention recognized from MatMul(q, kᵀ) → scale → Softmax(-1) → MatMul(·, v);
    /// inputs `[q, kᵀ, v]`. Not an ONNX op: exported as that sequence.
    Attention {
        scale: f32,
    },
    /// Any other op, as written in the model.
    Generic {
        op_type: String,
        attrs: Vec<Attribute>,
    },
}

impl Op {
    /// Build the typed form of an `ai.onnx` op when every attribute is understood, else `Generic`.
    pub fn from_onnx(domain: &str, op_type: &str, attrs: Vec<Attribute>) -> Op {
        if domain.is_empty() || domain == "ai.onnx" {
            if let Some(op) = Self::typed(op_type, &attrs) {
                return op;
            }
        }
        Op::Generic { op_type: op_type.to_string(), attrs }
    }

    /// The typed form of a `Generic` node of a typed op type, ignoring the attributes it does not model
    /// (what an evaluator that ignores them computes): shape inference and the spec checks see a
    /// `HardSigmoid` carrying a stray `axis` as the `HardSigmoid` it evaluates as.
    /// Not for ops whose newer opsets added attributes that change the result (QuantizeLinear's and
    /// DequantizeLinear's `block_size` and `output_dtype`, Attention's): those stay generic.
    pub fn typed_ignoring_unknown(&self) -> Option<Op> {
        match self {
            Op::Generic { op_type, .. }
                if matches!(
                    op_type.as_str(),
                    "QuantizeLinear" | "DequantizeLinear" | "Attention"
                ) =>
            {
                None
            }
            Op::Generic { op_type, attrs } => Self::typed_with(op_type, attrs, false),
            _ => None,
        }
    }

    fn typed(op_type: &str, attrs: &[Attribute]) -> Option<Op> {
        Self::typed_with(op_type, attrs, true)
    }

    fn typed_with(op_type: &str, attrs: &[Attribute], strict: bool) -> Option<Op> {
        let mut r = AttrReader::new(attrs);
        let op = match op_type {
            "Conv" => Op::Conv { window: Window::read(&mut r), group: r.int("group") },
            "Gemm" => Op::Gemm {
                alpha: r.float("alpha"),
                beta: r.float("beta"),
                trans_a: r.int("transA"),
                trans_b: r.int("transB"),
            },
            "MatMul" => Op::MatMul,
            "BatchNormalization" => Op::BatchNorm {
                epsilon: r.float("epsilon"),
                momentum: r.float("momentum"),
                training_mode: r.int("training_mode"),
            },
            "Relu" => Op::Act(Act::Relu),
            "Sigmoid" => Op::Act(Act::Sigmoid),
            "Tanh" => Op::Act(Act::Tanh),
            "HardSwish" => Op::Act(Act::HardSwish),
            "Clip" => Op::Act(Act::Clip { min: r.float("min"), max: r.float("max") }),
            "HardSigmoid" => {
                Op::Act(Act::HardSigmoid { alpha: r.float("alpha"), beta: r.float("beta") })
            }
            "LeakyRelu" => Op::Act(Act::LeakyRelu { alpha: r.float("alpha") }),
            "Gelu" => Op::Act(Act::Gelu { approximate: r.string("approximate") }),
            "Add" => Op::Binary(BinOp::Add),
            "Sub" => Op::Binary(BinOp::Sub),
            "Mul" => Op::Binary(BinOp::Mul),
            "Div" => Op::Binary(BinOp::Div),
            "Pow" => Op::Binary(BinOp::Pow),
            "Identity" => Op::Identity,
            "Reshape" => Op::Reshape { allowzero: r.int("allowzero") },
            "Transpose" => Op::Transpose { perm: r.ints("perm") },
            "Flatten" => Op::Flatten { axis: r.int("axis") },
            "Concat" => Op::Concat { axis: r.int("axis")? },
            "GlobalAveragePool" => Op::GlobalAveragePool,
            "MaxPool" | "AveragePool" => Op::Pool {
                kind: if op_type == "MaxPool" { PoolKind::Max } else { PoolKind::Average },
                window: Window::read(&mut r),
                ceil_mode: r.int("ceil_mode"),
                count_include_pad: r.int("count_include_pad"),
                storage_order: r.int("storage_order"),
            },
            "Softmax" => Op::Softmax { axis: r.int("axis") },
            "QuantizeLinear" => {
                Op::QuantizeLinear { axis: r.int("axis"), saturate: r.int("saturate") }
            }
            "DequantizeLinear" => Op::DequantizeLinear { axis: r.int("axis") },
            _ => return None,
        };
        let ok = if strict { r.finish() } else { r.finish_lenient() };
        ok.then_some(op)
    }

    /// The ONNX op type.
    pub fn op_type(&self) -> &str {
        match self {
            Op::Conv { .. } => "Conv",
            Op::Gemm { .. } => "Gemm",
            Op::MatMul => "MatMul",
            Op::BatchNorm { .. } => "BatchNormalization",
            Op::Act(a) => match a {
                Act::Relu => "Relu",
                Act::Sigmoid => "Sigmoid",
                Act::Tanh => "Tanh",
                Act::HardSwish => "HardSwish",
                Act::Clip { .. } => "Clip",
                Act::HardSigmoid { .. } => "HardSigmoid",
                Act::LeakyRelu { .. } => "LeakyRelu",
                Act::Gelu { .. } => "Gelu",
                Act::Silu => "Silu",
            },
            Op::Binary(b) => match b {
                BinOp::Add => "Add",
                BinOp::Sub => "Sub",
                BinOp::Mul => "Mul",
                BinOp::Div => "Div",
                BinOp::Pow => "Pow",
            },
            Op::Identity => "Identity",
            Op::Reshape { .. } => "Reshape",
            Op::Transpose { .. } => "Transpose",
            Op::Flatten { .. } => "Flatten",
            Op::Concat { .. } => "Concat",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::Pool { kind: PoolKind::Max, .. } => "MaxPool",
            Op::Pool { kind: PoolKind::Average, .. } => "AveragePool",
            Op::Softmax { .. } => "Softmax",
            Op::QuantizeLinear { .. } => "QuantizeLinear",
            Op::DequantizeLinear { .. } => "DequantizeLinear",
            Op::Attention { .. } => "Attention",
            Op::Generic { op_type, .. } => op_type,
        }
    }

    /// The attributes as ONNX writes them.
    pub fn attributes(&self) -> Vec<Attribute> {
        let w = AttrWriter::default();
        let w = match self {
            Op::Conv { window, group } => window.write(w).int("group", *group),
            Op::Gemm { alpha, beta, trans_a, trans_b } => w
                .float("alpha", *alpha)
                .float("beta", *beta)
                .int("transA", *trans_a)
                .int("transB", *trans_b),
            Op::BatchNorm { epsilon, momentum, training_mode } => w
                .float("epsilon", *epsilon)
                .float("momentum", *momentum)
                .int("training_mode", *training_mode),
            Op::Act(Act::Clip { min, max }) => w.float("min", *min).float("max", *max),
            Op::Act(Act::HardSigmoid { alpha, beta }) => {
                w.float("alpha", *alpha).float("beta", *beta)
            }
            Op::Act(Act::LeakyRelu { alpha }) => w.float("alpha", *alpha),
            Op::Act(Act::Gelu { approximate }) => w.string("approximate", approximate),
            Op::Attention { scale } => w.float("scale", Some(*scale)),
            Op::Reshape { allowzero } => w.int("allowzero", *allowzero),
            Op::Transpose { perm } => w.ints("perm", perm),
            Op::Flatten { axis } => w.int("axis", *axis),
            Op::Concat { axis } => w.int("axis", Some(*axis)),
            Op::Pool { window, ceil_mode, count_include_pad, storage_order, .. } => window
                .write(w)
                .int("ceil_mode", *ceil_mode)
                .int("count_include_pad", *count_include_pad)
                .int("storage_order", *storage_order),
            Op::Softmax { axis } => w.int("axis", *axis),
            Op::QuantizeLinear { axis, saturate } => {
                w.int("axis", *axis).int("saturate", *saturate)
            }
            Op::DequantizeLinear { axis } => w.int("axis", *axis),
            Op::Generic { attrs, .. } => return attrs.clone(),
            _ => w,
        };
        w.0
    }

    /// Attribute lookup that works for typed and generic ops alike.
    /// Ops that only move, select or replicate values (reshape, transpose, max-pool, split, slice, gather,
    /// resize, pad, ...): quantized, they keep their input's parameters, as TFLite's int8 spec requires,
    /// and requantizing there would only add rounding. Linear Resize interpolates, but within its input's
    /// range, so the spec gives it the input's parameters too.
    pub fn moves_values(&self) -> bool {
        matches!(
            self,
            Op::Reshape { .. } | Op::Flatten { .. } | Op::Transpose { .. } | Op::Identity
        ) || matches!(self, Op::Pool { kind: PoolKind::Max, .. })
            || matches!(
                self.op_type(),
                "Squeeze"
                    | "Unsqueeze"
                    | "Split"
                    | "Slice"
                    | "Gather"
                    | "Resize"
                    | "Upsample"
                    | "Pad"
                    | "Expand"
                    | "Tile"
                    | "DepthToSpace"
                    | "SpaceToDepth"
            )
    }

    pub fn attr(&self, name: &str) -> Option<super::attr::AttrValue> {
        match self {
            Op::Generic { attrs, .. } => {
                attrs.iter().find(|a| a.name == name).map(|a| a.value.clone())
            }
            _ => self.attributes().into_iter().find(|a| a.name == name).map(|a| a.value),
        }
    }

    pub fn attr_int(&self, name: &str) -> Option<i64> {
        match self.attr(name) {
            Some(super::attr::AttrValue::Int(v)) => Some(v),
            _ => None,
        }
    }

    pub fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        match self.attr(name) {
            Some(super::attr::AttrValue::Ints(v)) => Some(v),
            _ => None,
        }
    }

    pub fn attr_float(&self, name: &str) -> Option<f32> {
        match self.attr(name) {
            Some(super::attr::AttrValue::Float(v)) => Some(v),
            _ => None,
        }
    }

    /// Subgraphs held in attributes (If/Loop/Scan bodies).
    pub fn subgraphs(&self) -> Vec<&super::Graph> {
        let mut out = Vec::new();
        if let Op::Generic { attrs, .. } = self {
            for a in attrs {
                match &a.value {
                    super::attr::AttrValue::Graph(g) => out.push(g.as_ref()),
                    super::attr::AttrValue::Graphs(gs) => out.extend(gs.iter()),
                    _ => {}
                }
            }
        }
        out
    }
}
