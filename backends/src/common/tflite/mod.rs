//! The IR lowered to a TFLite flatbuffer (`TfModel`, then bytes): the shared core of the `tflite` and
//! `npu` backends, and the keys both read (`io_layout`, `io_dtype`).
//!
//! Image tensors are channel-last (`io_layout: nhwc`, the default, what camera pipelines deliver) or
//! kept channel-first (`io_layout: nchw`). Inside, layout propagation keeps CNNs channel-last with no
//! transposes (see `lower`).
pub mod act;
pub mod int8;
pub mod lower;
pub mod model;
pub mod ops;
pub mod resize;
pub mod rewrite;
pub mod rnn;
pub mod seq;
pub mod ser;
pub mod shape_ops;
pub mod tconv;
pub mod text;

use kiln_compiler::ir::{Act, Model};
use kiln_compiler::Result;

pub use lower::IoLayout;
use lower::Lowering;
use model::TfModel;

/// `io_dtype:` of full-integer models: `float` inputs/outputs (QUANTIZE/DEQUANTIZE inside) or `int8`
/// (the whole graph integer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoDtype {
    Float,
    Int8,
}

/// Whether a model's I/O is integer: `io_dtype` as given, else `default` (int8 models only).
pub fn io_int8(io_dtype: Option<IoDtype>, int8: bool, default: bool) -> bool {
    match io_dtype {
        Some(d) => d == IoDtype::Int8,
        None => default && int8,
    }
}

/// `io_dtype: int8` needs a full-integer model.
pub fn check_io_dtype(io_dtype: Option<IoDtype>, int8: bool) -> std::result::Result<(), String> {
    if io_dtype == Some(IoDtype::Int8) && !int8 {
        return Err("io_dtype 'int8': expected float, or int8 with precision int8".into());
    }
    Ok(())
}

/// Lower `model` to a TFLite model. `int8`: full-integer ops from the QDQ model; `io_int8`: quantized
/// inputs and outputs take int8 tensors directly (what NPU delegates want) instead of float plus
/// QUANTIZE/DEQUANTIZE. The one place that drives the lowering: `lower` holds its state, `int8` decides
/// integer ops, `ops` and `seq` emit them, `act` the activations.
pub fn lower_model(model: &Model, io: IoLayout, int8: bool, io_int8: bool) -> Result<TfModel> {
    lower_model_for(model, io, int8, io_int8, false)
}

/// [`lower_model`] for a device: `split_grouped` lowers grouped convolutions group by group.
pub fn lower_model_for(
    model: &Model,
    io: IoLayout,
    int8: bool,
    io_int8: bool,
    split_grouped: bool,
) -> Result<TfModel> {
    // A model kept at opset 11/12 (`passes: []`) is lowered with opset-13 semantics, like every other;
    // 1-D convolutions become 2-D ones (rewrite.rs).
    use kiln_compiler::onnx::upgrade;
    let old = (upgrade::OLDEST..upgrade::TARGET).contains(&model.opset());
    let owned;
    let model = if old || rewrite::needed(model) {
        let mut m = model.clone();
        if old {
            upgrade::upgrade(&mut m)?;
            let opset = m.opset();
            kiln_compiler::shape::infer_graph(&mut m.graph, opset)?;
        }
        rewrite::rewrite(&mut m)?;
        owned = m;
        &owned
    } else {
        model
    };
    let mut l = Lowering::new(&model.graph);
    l.opset = model.opset();
    l.split_grouped = split_grouped;
    let g = l.g;
    l.int8 = int8;
    if int8 {
        int8::prepass(&mut l)?;
    }
    l.float_mode = !(int8 && io_int8);
    for &v in &g.inputs {
        if g.initializers.contains(&v) {
            continue;
        }
        let nhwc = io == IoLayout::Nhwc && l.rank(v) == 4;
        let t = l.define(v, nhwc)?;
        l.m.inputs.push(t);
    }
    l.float_mode = true;
    for id in g.topo_order()? {
        if l.skip.contains(&id) {
            continue;
        }
        let n = &g.nodes[id];
        l.node = n.name.clone();
        l.op = n.op.op_type().to_string();
        l.float_mode = !(l.int8 && int8::decide(&mut l, id));
        ops::lower(&mut l, id)?;
        let deferred = std::mem::take(&mut l.deferred);
        l.m.operators.extend(deferred);
    }
    l.float_mode = !(int8 && io_int8);
    for &v in &g.outputs {
        let nhwc = io == IoLayout::Nhwc;
        let t = l.get(v, nhwc)?;
        l.m.outputs.push(t);
    }
    l.m.fold_transposes();
    l.m.compact();
    Ok(l.m)
}

/// TRANSPOSE ops of `m` beyond the Transposes `model` itself writes: the layout changes the lowering added
/// at op boundaries and could not fold into the model's own (a channel-last CNN has none), for the build
/// report. Counted as a difference because folding merges a layout change into a model's transpose.
pub fn layout_transposes(model: &Model, m: &TfModel) -> usize {
    let written = model
        .graph
        .nodes
        .node_weights()
        .filter(|n| matches!(n.op, kiln_compiler::ir::Op::Transpose { .. }))
        .count();
    let emitted = m.operators.iter().filter(|o| o.code == model::Code::TRANSPOSE).count();
    emitted.saturating_sub(written)
}

/// The rules of a target written as full-integer TFLite (tflite, npu, dump): every tensor a scale, the
/// activations TFLite fuses, full 8-bit weights, float16 as storage.
pub fn rules() -> kiln_compiler::backend::TargetRules {
    use kiln_compiler::backend::{Fp16, QuantRules, TargetRules};
    TargetRules {
        quant: QuantRules {
            full_integer: true,
            fused_activation,
            reduce_range: false,
            ..QuantRules::qdq()
        },
        fp16: Fp16::Storage,
    }
}

/// Activations TFLite's kernels apply fused into the op before them (RELU, RELU6, RELU_N1_TO_1, TANH):
/// the quantization rule of full-integer TFLite targets. The lowering fuses exactly these (`act::fusable`).
pub fn fused_activation(a: &Act) -> bool {
    act::fusable(&Some(a.clone())).is_some()
}
