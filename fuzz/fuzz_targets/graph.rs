//! Fuzz one level below the importer: structurally valid models (one or two nodes of an arbitrary op type,
//! arbitrary attributes and constant inputs, a float input of arbitrary small shape) run through import,
//! shape inference, the cleanup and fuse passes (constant folding evaluates with tract), the onnx and
//! tflite backends, and the evaluator. Errors are fine; a panic, an abort or a hang is a bug. Panics inside
//! tract are caught by `eval::guarded` and come back as errors, so what this finds is kiln's.
#![no_main]
use arbitrary::{Arbitrary, Unstructured};
use kiln_proto::onnx as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const OPS: &[&str] = &[
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "Slice", "Gather",
    "GatherElements", "Transpose", "Split", "Concat", "Reshape", "Resize", "Pad", "Expand", "Tile",
    "ConstantOfShape", "Range", "Softmax", "Flatten", "Squeeze", "Unsqueeze", "ReduceMean", "ReduceSum",
    "ArgMax", "DepthToSpace", "SpaceToDepth", "Gemm", "MatMul", "BatchNormalization", "Relu", "Clip",
    "HardSigmoid", "LeakyRelu", "Add", "Mul", "Div", "Where", "Cast", "Shape", "Size", "Identity",
    "InstanceNormalization", "LayerNormalization", "CumSum", "TopK", "OneHot", "Einsum", "Upsample",
    "Trilu", "ScatterND", "NonZero", "Sum", "Max", "Min", "Mean", "Erf", "Sqrt", "Pow",
];

const INT_ATTRS: &[&str] = &[
    "axis", "group", "keepdims", "blocksize", "ceil_mode", "count_include_pad", "transA", "transB",
    "num_outputs", "allowzero", "to", "upper", "largest", "sorted", "exclusive", "reverse",
];
const INTS_ATTRS: &[&str] =
    &["kernel_shape", "strides", "dilations", "pads", "perm", "axes", "split", "output_padding", "shape"];
const FLOAT_ATTRS: &[&str] = &["alpha", "beta", "epsilon", "min", "max"];
const STRING_ATTRS: &[(&str, &[&str])] = &[
    ("auto_pad", &["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID", "BOGUS"]),
    ("mode", &["nearest", "linear", "cubic", "constant", "reflect", "edge", "DCR", "CRD", "x"]),
    ("coordinate_transformation_mode", &["asymmetric", "half_pixel", "align_corners", "tf_crop_and_resize"]),
    ("equation", &["ij,jk->ik", "i,i->", "...", "ab->ba"]),
];

fn small_int(u: &mut Unstructured) -> arbitrary::Result<i64> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => 0,
        1 => -1,
        2 => i64::from(u.int_in_range(-8i8..=8)?),
        3 => 1 << u.int_in_range(10u8..=62)?,
        4 => -(1 << u.int_in_range(10u8..=62)?),
        5 => i64::MAX,
        6 => i64::MIN,
        _ => i64::from(u.int_in_range(0u8..=6)?),
    })
}

fn attr(u: &mut Unstructured) -> arbitrary::Result<pb::AttributeProto> {
    use pb::attribute_proto::AttributeType as T;
    let mut a = pb::AttributeProto::default();
    match u.int_in_range(0u8..=3)? {
        0 => {
            a.name = (*u.choose(INT_ATTRS)?).into();
            a.i = Some(small_int(u)?);
            a.r#type = T::Int as i32;
        }
        1 => {
            a.name = (*u.choose(INTS_ATTRS)?).into();
            let n = u.int_in_range(0usize..=8)?;
            a.ints = (0..n).map(|_| small_int(u)).collect::<arbitrary::Result<_>>()?;
            a.r#type = T::Ints as i32;
        }
        2 => {
            a.name = (*u.choose(FLOAT_ATTRS)?).into();
            a.f = Some(f32::arbitrary(u)?);
            a.r#type = T::Float as i32;
        }
        _ => {
            let (name, values) = u.choose(STRING_ATTRS)?;
            a.name = (*name).into();
            a.s = Some(u.choose(values)?.as_bytes().to_vec());
            a.r#type = T::String as i32;
        }
    }
    Ok(a)
}

fn constant(u: &mut Unstructured, name: &str) -> arbitrary::Result<pb::TensorProto> {
    let rank = u.int_in_range(0usize..=4)?;
    let dims: Vec<i64> = (0..rank).map(|_| u.int_in_range(0i64..=5)).collect::<arbitrary::Result<_>>()?;
    let n: usize = dims.iter().map(|d| *d as usize).product();
    let mut t = pb::TensorProto { name: name.into(), dims, ..Default::default() };
    if bool::arbitrary(u)? {
        t.data_type = pb::tensor_proto::DataType::Int64 as i32;
        t.int64_data = (0..n).map(|_| small_int(u)).collect::<arbitrary::Result<_>>()?;
    } else {
        t.data_type = pb::tensor_proto::DataType::Float as i32;
        t.float_data = (0..n).map(|_| f32::arbitrary(u)).collect::<arbitrary::Result<_>>()?;
    }
    Ok(t)
}

fn value_info(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let shape = pb::TensorShapeProto {
        dim: dims.iter().map(|d| Dimension { value: Some(Value::DimValue(*d)), ..Default::default() }).collect(),
    };
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(shape),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn model(u: &mut Unstructured) -> arbitrary::Result<(pb::ModelProto, Vec<i64>)> {
    let rank = u.int_in_range(1usize..=4)?;
    let x: Vec<i64> = (0..rank).map(|_| u.int_in_range(1i64..=6)).collect::<arbitrary::Result<_>>()?;
    let mut inits = Vec::new();
    let mut nodes = Vec::new();
    let mut last = "x".to_string();
    for k in 0..u.int_in_range(1usize..=2)? {
        let op = *u.choose(OPS)?;
        let mut inputs = vec![last.clone()];
        for i in 0..u.int_in_range(0usize..=3)? {
            if u.ratio(1, 6)? {
                inputs.push(String::new());
                continue;
            }
            let name = format!("c{k}_{i}");
            inits.push(constant(u, &name)?);
            inputs.push(name);
        }
        let attribute = (0..u.int_in_range(0usize..=4)?).map(|_| attr(u)).collect::<arbitrary::Result<_>>()?;
        let out = format!("y{k}");
        nodes.push(pb::NodeProto {
            input: inputs,
            output: vec![out.clone()],
            name: format!("n{k}"),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
        last = out;
    }
    let mut out_vi = value_info(&last, &[]);
    out_vi.r#type = None;
    let graph = pb::GraphProto {
        node: nodes,
        name: "fuzz".into(),
        initializer: inits,
        input: vec![value_info("x", &x)],
        output: vec![out_vi],
        ..Default::default()
    };
    let m = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: u.int_in_range(11i64..=20)? }],
        graph: Some(graph),
        ..Default::default()
    };
    Ok((m, x))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((proto, x)) = model(&mut u) else { return };
    let bytes = proto.encode_to_vec();
    if let Some(path) = std::env::var_os("KILN_FUZZ_DUMP") {
        // Reproducing a finding: keep the model (and the input's dims) to run through `kiln`.
        let _ = std::fs::write(&path, &bytes);
        let _ = std::fs::write(std::path::Path::new(&path).with_extension("dims"), format!("{x:?}"));
    }
    let Ok(mut m) = kiln_compiler::onnx::load_bytes(&bytes, None, std::path::Path::new("fuzz.onnx")) else {
        return;
    };
    if kiln_compiler::shape::infer(&mut m, &Default::default()).is_err() {
        return;
    }
    let n: i64 = x.iter().product();
    let feed = kiln_compiler::ir::TensorData::from_f32(x.clone(), &vec![0.5; n as usize]);
    // Legitimately large work (a tensor of up to kiln's 2^28-element bound) is not what this target looks
    // for, and would only trip libFuzzer's memory limit: evaluate models whose values stay small.
    let small = |m: &kiln_compiler::ir::Model| {
        m.graph.values.iter().all(|v| {
            v.shape.as_ref().is_none_or(|s| {
                s.iter().map(|d| d.known().unwrap_or(1).max(0) as u64).product::<u64>() <= 1 << 22
            })
        })
    };
    if small(&m) {
        let _ = kiln_compiler::eval::run(&m, &[("x".into(), feed.clone())]);
    }
    let mut cx = kiln_compiler::pipeline::PassContext::default();
    for p in ["cleanup", "fuse"] {
        let Ok(pass) = kiln_passes::make(&kiln_compiler::config::PassSpec::Name(p.into())) else { return };
        if kiln_compiler::pipeline::run_pass(pass.as_ref(), &mut m, &mut cx, None).is_err() {
            return;
        }
    }
    let target: kiln_compiler::config::Target =
        serde_yaml::from_str("{ name: f, backend: tflite }").expect("a target");
    for b in kiln_backends::all() {
        let _ = b.emit(&m, &target);
    }
    if small(&m) {
        let _ = kiln_compiler::eval::run(&m, &[("x".into(), feed)]);
    }
});
