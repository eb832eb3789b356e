//! Backend snapshots: what the tflite (fp32, int8) and npu backends write for the small test models, as
//! text (`tests/snapshots/*.txt`), so a lowering change shows as a diff without a runtime. Regenerate with
//! `KILN_BLESS=1 cargo test --release --test snapshots`, and read the diff before committing it.
//!
//! TFLite files print through `kiln_backends::common::tflite::text` (operators, tensors, quantization
//! parameters), ONNX files as kiln's IR dump, partition reports verbatim. Quantization scales come from
//! calibration, whose float kernels differ in their last bits between CPUs, so numbers inside `q(...)`
//! compare with a relative tolerance; everything else compares exactly.
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Build `model` with the snapshot targets and render every artifact as text.
fn render(model: &str, pins: &str) -> String {
    let d = tempfile::tempdir().expect("tempdir");
    let models = root().join("tests/models");
    let cfg = format!(
        "model: {m}\ninputs: {{ input: {pins} }}\npasses: [cleanup, fuse]\n\
         calibration: {{ tensors: {c}, method: minmax, samples: 32 }}\n\
         targets:\n\
         \x20 - {{ name: tflite-fp32, backend: tflite, precision: fp32 }}\n\
         \x20 - {{ name: tflite-int8, backend: tflite, precision: int8, min_calibration_sqnr_db: -100 }}\n\
         \x20 - {{ name: npu-edgetpu, backend: npu, precision: int8, device: edgetpu, min_calibration_sqnr_db: -100 }}\n\
         \x20 - {{ name: npu-htp, backend: npu, precision: int8, device: qualcomm-htp, min_calibration_sqnr_db: -100 }}\n\
         output: out\n",
        m = models.join(format!("{model}.onnx")).display(),
        c = models.join(format!("{model}_inputs.npy")).display(),
    );
    let path = d.path().join("kiln.yaml");
    std::fs::write(&path, cfg).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", path.to_str().expect("utf-8 path")])
        .output()
        .expect("run kiln");
    assert!(out.status.success(), "kiln build failed: {}", String::from_utf8_lossy(&out.stderr));
    let dir = d.path().join("out");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    let mut text = String::new();
    for a in manifest["artifacts"].as_array().expect("artifacts") {
        let rel = a["path"].as_str().expect("path");
        let file = dir.join(rel);
        let body = match file.extension().and_then(|e| e.to_str()) {
            Some("tflite") => {
                kiln_backends::common::tflite::text::dump(&std::fs::read(&file).expect("read"))
                    .expect("a TFLite flatbuffer")
            }
            Some("onnx") => {
                let m = kiln_compiler::onnx::load(&file).expect("the ONNX artifact imports");
                kiln_compiler::ir::dump::dump_model(&m)
            }
            Some("txt") => std::fs::read_to_string(&file).expect("read"),
            _ => continue,
        };
        text.push_str(&format!("=== {rel}\n{body}"));
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

/// Numbers in `q(...)` groups of a line, and the line with them blanked.
fn split_quant(line: &str) -> (String, Vec<f64>) {
    let Some(start) = line.find(" q(") else { return (line.to_string(), Vec::new()) };
    let end = line[start..].find(')').map_or(line.len(), |e| start + e);
    let q = &line[start..end];
    let nums = q
        .split(|c: char| c.is_whitespace() || "[],()".contains(c))
        .filter_map(|t| t.parse::<f64>().ok())
        .collect();
    (format!("{}{}", &line[..start], &line[end..]), nums)
}

/// Same text; non-integer numbers inside `q(...)` (scales) within 1e-3 relative, the rest exactly.
fn same(want: &str, got: &str) -> Result<(), String> {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    if w.len() != g.len() {
        return Err(format!("{} lines expected, {} written", w.len(), g.len()));
    }
    for (i, (a, b)) in w.iter().zip(&g).enumerate() {
        if a == b {
            continue;
        }
        let ((sa, na), (sb, nb)) = (split_quant(a), split_quant(b));
        let close = na.len() == nb.len()
            && na.iter().zip(&nb).all(|(x, y)| {
                let int = x.fract() == 0.0 && y.fract() == 0.0;
                x == y || !int && (x - y).abs() <= 1e-3 * x.abs().max(y.abs())
            });
        if sa != sb || !close {
            return Err(format!("line {}:\n  expected: {a}\n  written:  {b}", i + 1));
        }
    }
    Ok(())
}

fn check(name: &str, text: &str) {
    let path = root().join("tests/snapshots").join(format!("{name}.txt"));
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("bless");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing (bless with KILN_BLESS=1)", path.display()));
    if let Err(e) = same(&want, text) {
        let got = path.with_extension("new.txt");
        let _ = std::fs::write(&got, text);
        panic!(
            "{} differs from what the backends write now ({e}); written to {} (bless with KILN_BLESS=1 after reading the diff)",
            path.display(),
            got.display()
        );
    }
}

#[test]
fn tiny_cnn() {
    check("tiny_cnn", &render("tiny_cnn", "[1, 3, 64, 64]"));
}

#[test]
fn digits_se() {
    check("digits_se", &render("digits_se", "[1, 1, 16, 16]"));
}

#[test]
fn tolerance_sees_structure_and_ignores_last_bits() {
    let a = "  t3 x INT8[1, 8] q(scale [0.01234, 0.5] zp [-3, 0] axis 0)";
    assert!(same(a, "  t3 x INT8[1, 8] q(scale [0.012345, 0.5] zp [-3, 0] axis 0)").is_ok());
    assert!(same(a, "  t3 x INT8[1, 8] q(scale [0.01234, 0.5] zp [-2, 0] axis 0)").is_err());
    assert!(same(a, "  t3 x INT8[1, 8] q(scale [0.0125, 0.5] zp [-3, 0] axis 0)").is_err());
    assert!(same(a, "  t3 x INT8[1, 9] q(scale [0.01234, 0.5] zp [-3, 0] axis 0)").is_err());
    assert!(same("  op0 CONV_2D [0, 1] -> [2]", "  op0 DEPTHWISE_CONV_2D [0, 1] -> [2]").is_err());
}
