//! Hostile and broken input: every case exits non-zero with a message naming the problem, never panics,
//! and never leaves a half-written artifact.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_proto::onnx as pb;
use prost::Message;

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("run kiln")
}

/// Run kiln expecting failure; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = kiln(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "kiln {args:?} succeeded; stderr: {err}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "kiln {args:?}: exit {:?} (signal/panic?) stderr: {err}",
        out.status.code()
    );
    assert!(!err.contains("panicked"), "kiln {args:?} panicked: {err}");
    err
}

fn vi(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            denotation: String::new(),
                            value: Some(Value::DimValue(*d)),
                        })
                        .collect(),
                }),
            })),
        }),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn model(
    nodes: Vec<pb::NodeProto>,
    init: Vec<pb::TensorProto>,
    inputs: &[&str],
    outputs: &[&str],
) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: nodes,
            initializer: init,
            input: inputs.iter().map(|n| vi(n, &[1, 4])).collect(),
            output: outputs.iter().map(|n| vi(n, &[1, 4])).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn relu_model() -> pb::ModelProto {
    model(vec![node("Relu", "r", &["x"], &["y"])], vec![], &["x"], &["y"])
}

fn f32_tensor(name: &str, dims: &[i64], raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        data_type: 1,
        dims: dims.to_vec(),
        raw_data: raw,
        ..Default::default()
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn write_model(dir: &Path, name: &str, m: &pb::ModelProto) -> PathBuf {
    write(dir, name, &m.encode_to_vec())
}

fn inspect_fails(path: &Path) -> String {
    fails(&["inspect", path.to_str().unwrap()])
}

fn tiny_cnn() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models/tiny_cnn.onnx")).unwrap()
}

#[test]
fn truncated_file() {
    let d = tempfile::tempdir().unwrap();
    let bytes = tiny_cnn();
    for cut in [bytes.len() / 2, bytes.len() - 3, 7] {
        let p = write(d.path(), "t.onnx", &bytes[..cut]);
        let err = inspect_fails(&p);
        assert!(err.contains("not a valid ONNX model") && err.contains("t.onnx"), "{err}");
    }
}

#[test]
fn garbage_and_empty() {
    let d = tempfile::tempdir().unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let err = inspect_fails(&write(d.path(), "g.onnx", &garbage));
    assert!(err.contains("not a valid ONNX model"), "{err}");
    let err = inspect_fails(&write(d.path(), "e.onnx", b""));
    assert!(err.contains("empty"), "{err}");
    let err = inspect_fails(&write(d.path(), "text.onnx", b"this is not a model at all\n"));
    assert!(err.contains("not a valid ONNX model"), "{err}");
}

#[test]
fn protobuf_of_another_message() {
    let d = tempfile::tempdir().unwrap();
    let t = f32_tensor("w", &[2], vec![0; 8]);
    let err = inspect_fails(&write(d.path(), "tensor.onnx", &t.encode_to_vec()));
    assert!(
        err.contains("not an ONNX ModelProto")
            || err.contains("no graph")
            || err.contains("not a valid ONNX"),
        "{err}"
    );
    let g = relu_model().graph.unwrap();
    let err = inspect_fails(&write(d.path(), "graph.onnx", &g.encode_to_vec()));
    assert!(err.contains("not a valid ONNX model"), "{err}");
    let mut no_graph = relu_model();
    no_graph.graph = None;
    let err = inspect_fails(&write_model(d.path(), "nograph.onnx", &no_graph));
    assert!(err.contains("no graph"), "{err}");
}

#[test]
fn cycle() {
    let d = tempfile::tempdir().unwrap();
    let m = model(
        vec![
            node("Add", "a", &["x", "b_out"], &["a_out"]),
            node("Relu", "b", &["a_out"], &["b_out"]),
        ],
        vec![],
        &["x"],
        &["b_out"],
    );
    let err = inspect_fails(&write_model(d.path(), "cycle.onnx", &m));
    assert!(err.contains("cycle") && err.contains('a') && err.contains('b'), "{err}");
    let m = model(vec![node("Add", "self", &["x", "y"], &["y"])], vec![], &["x"], &["y"]);
    let err = inspect_fails(&write_model(d.path(), "self.onnx", &m));
    assert!(err.contains("cycle") && err.contains("self"), "{err}");
}

#[test]
fn input_no_node_produces() {
    let d = tempfile::tempdir().unwrap();
    let m = model(vec![node("Add", "adder", &["x", "ghost"], &["y"])], vec![], &["x"], &["y"]);
    let err = inspect_fails(&write_model(d.path(), "dangling.onnx", &m));
    assert!(err.contains("ghost") && err.contains("adder"), "{err}");
    let m = model(vec![node("Relu", "r", &["x"], &["y"])], vec![], &["x"], &["nowhere"]);
    let err = inspect_fails(&write_model(d.path(), "out.onnx", &m));
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn duplicate_names() {
    let d = tempfile::tempdir().unwrap();
    let m = model(
        vec![node("Relu", "r1", &["x"], &["y"]), node("Relu", "r2", &["x"], &["y"])],
        vec![],
        &["x"],
        &["y"],
    );
    let err = inspect_fails(&write_model(d.path(), "dup.onnx", &m));
    assert!(
        err.contains("'y'") && (err.contains("duplicate") || err.contains("already defined")),
        "{err}"
    );
    let mut m = relu_model();
    m.graph.as_mut().unwrap().input.push(vi("x", &[1, 4]));
    let err = inspect_fails(&write_model(d.path(), "dupin.onnx", &m));
    assert!(err.contains("duplicate input name 'x'"), "{err}");
    let m = model(vec![node("Relu", "r", &["x"], &["x"])], vec![], &["x"], &["x"]);
    let err = inspect_fails(&write_model(d.path(), "shadow.onnx", &m));
    assert!(err.contains("'x'"), "{err}");
    let init = vec![f32_tensor("w", &[1], vec![0; 4]), f32_tensor("w", &[1], vec![0; 4])];
    let m = model(vec![node("Add", "a", &["x", "w"], &["y"])], init, &["x"], &["y"]);
    let err = inspect_fails(&write_model(d.path(), "dupinit.onnx", &m));
    assert!(err.contains("duplicate initializer name 'w'"), "{err}");
}

#[test]
fn raw_data_size_disagrees_with_dims() {
    let d = tempfile::tempdir().unwrap();
    let m = model(
        vec![node("Add", "a", &["x", "w"], &["y"])],
        vec![f32_tensor("w", &[1, 4], vec![0; 12])],
        &["x"],
        &["y"],
    );
    let err = inspect_fails(&write_model(d.path(), "size.onnx", &m));
    assert!(err.contains("tensor 'w'") && err.contains("12 bytes") && err.contains("16"), "{err}");
}

#[test]
fn absurd_dims() {
    let d = tempfile::tempdir().unwrap();
    // 2^40 elements declared, 4 bytes present: refused without allocating.
    let m = model(
        vec![node("Add", "a", &["x", "w"], &["y"])],
        vec![f32_tensor("w", &[1 << 20, 1 << 20], vec![0; 4])],
        &["x"],
        &["y"],
    );
    let err = inspect_fails(&write_model(d.path(), "huge.onnx", &m));
    assert!(err.contains("tensor 'w'"), "{err}");
    let m = model(
        vec![node("Add", "a", &["x", "w"], &["y"])],
        vec![f32_tensor("w", &[i64::MAX, 4], vec![0; 4])],
        &["x"],
        &["y"],
    );
    let err = inspect_fails(&write_model(d.path(), "overflow.onnx", &m));
    assert!(err.contains("tensor 'w'") && err.contains("overflow"), "{err}");
    let m = model(
        vec![node("Add", "a", &["x", "w"], &["y"])],
        vec![f32_tensor("w", &[-3], vec![])],
        &["x"],
        &["y"],
    );
    let err = inspect_fails(&write_model(d.path(), "neg.onnx", &m));
    assert!(err.contains("tensor 'w'") && err.contains("negative"), "{err}");
    // Absurd pinned input dims: shape inference and MAC counting must not overflow or allocate.
    let p = write_model(d.path(), "ok.onnx", &relu_model());
    let out = kiln(&["inspect", p.to_str().unwrap(), "--input", "x=1099511627776,1099511627776"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unknown_op_is_kept_not_fatal() {
    let d = tempfile::tempdir().unwrap();
    let mut n = node("FancyOp", "f", &["x"], &["y"]);
    n.domain = "com.example".into();
    n.attribute.push(pb::AttributeProto {
        name: "k".into(),
        r#type: 2,
        i: Some(0),
        ..Default::default()
    });
    let mut m = model(vec![n], vec![], &["x"], &["y"]);
    m.opset_import.push(pb::OperatorSetIdProto { domain: "com.example".into(), version: 1 });
    let p = write_model(d.path(), "custom.onnx", &m);
    let out = kiln(&["inspect", p.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FancyOp"));
    std::fs::write(
        d.path().join("k.yaml"),
        "model: custom.onnx\ntargets: [{ name: t, backend: onnx }]\noutput: out\n",
    )
    .unwrap();
    let out = kiln(&["build", d.path().join("k.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let back = pb::ModelProto::decode(
        std::fs::read(d.path().join("out/t/model.onnx")).unwrap().as_slice(),
    )
    .unwrap();
    let g = back.graph.unwrap();
    assert_eq!(g.node[0].op_type, "FancyOp");
    assert_eq!(g.node[0].domain, "com.example");
    assert_eq!(g.node[0].attribute[0].i, Some(0));
}

fn external_model(location: &str) -> pb::ModelProto {
    let mut t = f32_tensor("w", &[1, 4], vec![]);
    t.data_location = 1;
    t.external_data =
        vec![pb::StringStringEntryProto { key: "location".into(), value: location.into() }];
    model(vec![node("Add", "a", &["x", "w"], &["y"])], vec![t], &["x"], &["y"])
}

#[test]
fn external_data_escaping_the_model_folder_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    let secret = write(root.path(), "secret.bin", &[0u8; 16]);
    let abs = secret.to_str().unwrap().to_string();
    for (name, loc, needle) in [
        ("abs.onnx", abs.as_str(), "absolute"),
        ("dotdot.onnx", "../secret.bin", "escapes"),
        ("dotdot2.onnx", "sub/../../secret.bin", "escapes"),
    ] {
        let p = write_model(&dir, name, &external_model(loc));
        let err = inspect_fails(&p);
        assert!(
            err.contains("external data for tensor 'w'")
                && err.contains(needle)
                && err.contains("refused"),
            "{name}: {err}"
        );
    }
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&secret, dir.join("link.bin")).unwrap();
        let p = write_model(&dir, "link.onnx", &external_model("link.bin"));
        let err = inspect_fails(&p);
        assert!(err.contains("outside the model's folder") && err.contains("refused"), "{err}");
    }
    // Inside the folder: accepted.
    write(&dir, "ok.bin", &[0u8; 16]);
    let p = write_model(&dir, "ok.onnx", &external_model("ok.bin"));
    let out = kiln(&["inspect", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn external_data_out_of_bounds_or_missing() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "short.bin", &[0u8; 8]);
    let err = inspect_fails(&write_model(d.path(), "short.onnx", &external_model("short.bin")));
    assert!(err.contains("tensor 'w'") && err.contains("length"), "{err}");
    let mut m = external_model("short.bin");
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    t.external_data.push(pb::StringStringEntryProto { key: "offset".into(), value: "4".into() });
    t.external_data.push(pb::StringStringEntryProto { key: "length".into(), value: "16".into() });
    let err = inspect_fails(&write_model(d.path(), "oob.onnx", &m));
    assert!(err.contains("beyond the end"), "{err}");
    let err = inspect_fails(&write_model(d.path(), "missing.onnx", &external_model("nothere.bin")));
    assert!(err.contains("tensor 'w'") && err.contains("nothere.bin"), "{err}");
}

#[test]
fn missing_files() {
    let err = fails(&["inspect", "/definitely/not/here.onnx"]);
    assert!(err.contains("/definitely/not/here.onnx"), "{err}");
    let err = fails(&["build", "/definitely/not/here.yaml"]);
    assert!(err.contains("here.yaml"), "{err}");
    let d = tempfile::tempdir().unwrap();
    let err = fails(&["inspect", d.path().to_str().unwrap()]);
    assert!(err.contains("directory"), "{err}");
}

fn config_case(yaml: &str, needle: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("m.onnx"), relu_model().encode_to_vec()).unwrap();
    let cfg = d.path().join("kiln.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let err = fails(&["build", cfg.to_str().unwrap()]);
    for n in needle {
        assert!(err.contains(n), "expected '{n}' in: {err}");
    }
    assert!(!d.path().join("out").exists(), "a failed build left output behind");
}

#[test]
fn bad_yaml() {
    config_case(
        "model: m.onnx\ntargets: [{ name: t, backend: onnx }]\noutput: out\nbogus: 1\n",
        &["kiln.yaml:4:1", "unknown field `bogus`"],
    );
    config_case(
        "model: m.onnx\ntargets:\n  - name: t\n    backend: onnx\n    colour: red\noutput: out\n",
        &["kiln.yaml:5:5", "targets[0]", "unknown field `colour`"],
    );
    config_case("model: m.onnx\ntargets: 12\noutput: out\n", &["kiln.yaml:2", "targets"]);
    config_case("model: [unclosed\n", &["kiln.yaml"]);
    config_case("targets: [{ name: t, backend: onnx }]\noutput: out\n", &["missing field `model`"]);
    config_case("model: m.onnx\ntargets: []\noutput: out\n", &["targets", "empty"]);
    config_case(
        "model: gone.onnx\ntargets: [{ name: t, backend: onnx }]\noutput: out\n",
        &["gone.onnx"],
    );
    config_case(
        "model: m.onnx\ntargets: [{ name: t, backend: warp-drive }]\noutput: out\n",
        &["unknown backend 'warp-drive'", "onnx"],
    );
    config_case(
        "model: m.onnx\ntargets: [{ name: t, backend: onnx, precision: int3 }]\noutput: out\n",
        &["precision 'int3'"],
    );
    config_case("model: m.onnx\ntargets: [{ name: t, backend: onnx }, { name: t, backend: onnx }]\noutput: out\n", &["used twice"]);
    config_case(
        "model: m.onnx\ntargets: [{ name: ../escape, backend: onnx }]\noutput: out\n",
        &["target name"],
    );
    config_case("model: m.onnx\ninputs: { nope: [1, 4] }\ntargets: [{ name: t, backend: onnx }]\noutput: out\n", &["input 'nope'", "x"]);
    config_case("model: m.onnx\ninputs: { x: [1, 4, 4] }\ntargets: [{ name: t, backend: onnx }]\noutput: out\n", &["input 'x'", "rank"]);
    config_case(
        "model: m.onnx\npasses: [warp]\ntargets: [{ name: t, backend: onnx }]\noutput: out\n",
        &["pass 'warp'", "unknown pass"],
    );
}

/// Every backend's options are checked when the config loads, before any work, at the line and column
/// of the key or value at fault. The model named does not exist: each error must come before the import.
#[test]
fn bad_backend_options_fail_before_any_work_with_their_location() {
    let case = |target: &str, needle: &[&str]| {
        let yaml = format!(
            "model: gone.onnx\ncalibration: {{ tensors: gone.npy }}\ntargets:\n  - {target}\noutput: out\n"
        );
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("kiln.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let t0 = std::time::Instant::now();
        let err = fails(&["build", cfg.to_str().unwrap()]);
        for n in needle {
            assert!(err.contains(n), "expected '{n}' in: {err}");
        }
        assert!(
            !err.contains("gone.onnx"),
            "the model was read before the options were checked: {err}"
        );
        assert!(!d.path().join("out").exists(), "a failed build left output behind");
        assert!(t0.elapsed().as_secs_f64() < 5.0, "took {:?}", t0.elapsed());
    };
    // onnx
    case(
        "{ name: a, backend: onnx, external_data: sometimes }",
        &["kiln.yaml:4:46", "external_data", "sometimes", "auto"],
    );
    case(
        "{ name: a, backend: onnx, io_layout: nchw }",
        &["kiln.yaml:4:31", "unknown field `io_layout` for backend 'onnx'"],
    );
    case(
        "{ name: a, backend: onnx, precision: int8, reduce_range: maybe }",
        &["kiln.yaml:4:62", "reduce_range"],
    );
    // tflite
    case(
        "{ name: p, backend: tflite, precision: int8, io_layout: nhcw }",
        &["kiln.yaml:4:61", "target 'p'", "nhcw", "nhwc", "nchw"],
    );
    case("{ name: p, backend: tflite, io_dtype: int16 }", &["kiln.yaml:4:43", "int16"]);
    case(
        "{ name: p, backend: tflite, precision: fp32, io_dtype: int8 }",
        &["kiln.yaml:4:5", "target 'p'", "io_dtype 'int8'", "precision int8"],
    );
    case(
        "{ name: p, backend: tflite, precision: int8, reduce_range: true }",
        &["kiln.yaml:4:5", "reduce_range", "backend 'tflite'"],
    );
    case(
        "{ name: p, backend: tflite, device: edgetpu }",
        &["kiln.yaml:4:41", "edgetpu", "pixel-3", "backend: npu"],
    );
    // npu
    case(
        "{ name: n, backend: npu, precision: int8, device: tpu9000 }",
        &["kiln.yaml:4:55", "tpu9000", "edgetpu"],
    );
    case("{ name: n, backend: npu, precision: int8 }", &["kiln.yaml:4:5", "`device:` is required"]);
    case(
        "{ name: n, backend: npu, precision: fp16, device: edgetpu }",
        &["kiln.yaml:4:41", "does not support precision 'fp16'", "int8"],
    );
    case(
        "{ name: n, backend: npu, precision: int8, device: edgetpu, io_layout: [1] }",
        &["kiln.yaml:4:75", "io_layout"],
    );
    // tensorrt
    case(
        "{ name: j, backend: tensorrt, precision: int8, device: jetson-nano-9 }",
        &["kiln.yaml:4:60", "jetson-nano-9", "agx-orin"],
    );
    case(
        "{ name: j, backend: tensorrt, precision: int8, device: agx-orin, trt_version: banana }",
        &["kiln.yaml:4:83", "trt_version 'banana'"],
    );
    case(
        "{ name: j, backend: tensorrt, precision: int8, device: agx-orin, dla: maybe }",
        &["kiln.yaml:4:75", "dla"],
    );
    case(
        "{ name: j, backend: tensorrt, precision: int8, device: orin-nano, dla: true }",
        &["kiln.yaml:4:5", "target 'j'", "has no DLA"],
    );
    case(
        "{ name: j, backend: tensorrt, precision: dynamic, device: agx-orin }",
        &["kiln.yaml:4:46", "does not support precision 'dynamic'"],
    );
    // vulkan
    case(
        "{ name: g, backend: vulkan, precision: int8 }",
        &["kiln.yaml:4:44", "does not support precision 'int8'"],
    );
    case(
        "{ name: g, backend: vulkan, device: adreno }",
        &["kiln.yaml:4:33", "unknown field `device` for backend 'vulkan'"],
    );
    // unknown backend: at its value
    case(
        "{ name: w, backend: warp-drive }",
        &["kiln.yaml:4:25", "unknown backend 'warp-drive'", "tflite"],
    );
}

#[test]
fn corrupt_vulkan_bundles() {
    let d = tempfile::tempdir().unwrap();
    // Not a bundle; a truncated manifest; a manifest whose tensors lie outside memory.
    let garbage = write(d.path(), "g.kvk", b"definitely not a bundle");
    let mut trunc = b"KILNVK\0\x01".to_vec();
    trunc.extend_from_slice(&1000u64.to_le_bytes());
    trunc.extend_from_slice(b"{\"format\":1");
    let trunc = write(d.path(), "t.kvk", &trunc);
    // The bundle is read before any input.
    let npy = write(d.path(), "x.npy", b"unused");
    for (b, want) in [(&garbage, "bad magic"), (&trunc, "truncated")] {
        let err = fails(&[
            "run",
            b.to_str().unwrap(),
            "--input",
            &format!("x={}", npy.display()),
            "--output-dir",
            d.path().join("o").to_str().unwrap(),
        ]);
        assert!(err.contains(want) && err.contains(b.to_str().unwrap()), "{err}");
    }
}

#[test]
fn bad_run_inputs() {
    let d = tempfile::tempdir().unwrap();
    let p = write_model(d.path(), "m.onnx", &relu_model());
    let npy = write(d.path(), "bad.npy", b"not npy");
    let err = fails(&[
        "run",
        p.to_str().unwrap(),
        "--input",
        &format!("x={}", npy.display()),
        "--output-dir",
        d.path().join("o").to_str().unwrap(),
    ]);
    assert!(err.contains("bad.npy") && err.contains("magic"), "{err}");
    let err = fails(&["run", p.to_str().unwrap(), "--input", "nonsense", "--output-dir", "o"]);
    assert!(err.contains("NAME=VALUE"), "{err}");
}

#[test]
fn bad_calibration_data() {
    let d = tempfile::tempdir().unwrap();
    let p = write_model(d.path(), "m.onnx", &relu_model());
    let out = d.path().join("q.onnx");
    let err = fails(&[
        "quantize",
        p.to_str().unwrap(),
        "--calib",
        "/no/such/calib.npy",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("/no/such/calib.npy"), "{err}");
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = fails(&[
        "quantize",
        p.to_str().unwrap(),
        "--calib",
        empty.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("no .jpg/.jpeg/.png images"), "{err}");
    let junk = write(d.path(), "junk.jpg", b"not a jpeg");
    let dir2 = d.path().join("imgs");
    std::fs::create_dir(&dir2).unwrap();
    std::fs::rename(&junk, dir2.join("a.jpg")).unwrap();
    let err = fails(&[
        "quantize",
        p.to_str().unwrap(),
        "--calib",
        dir2.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("a.jpg") && err.contains("cannot decode image"), "{err}");
    assert!(!out.exists());
    config_case(
        "model: m.onnx\ncalibration: { tensors: c.npy, images: d/ }\ntargets: [{ name: q, backend: onnx, precision: int8 }]\noutput: out\n",
        &["exactly one of `images`"],
    );
    config_case("model: m.onnx\ncalibration: { tensors: c.npy, method: vibes }\ntargets: [{ name: q, backend: onnx, precision: int8 }]\noutput: out\n", &["method 'vibes'"]);
}
