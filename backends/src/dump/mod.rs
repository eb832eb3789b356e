//! The `dump` backend: the model as text, for reading and diffing what the other backends are given and
//! make of it. Writes `model.ir.txt`, the IR as this target receives it (after the passes, and for
//! `precision: int8` after quantization by the TFLite rules, so Q/DQ show where a full-integer target puts
//! them), and `model.tflite.txt`, its TFLite lowering read back from the flatbuffer bytes
//! (`common::tflite::text`). Nothing here runs on a device: it is a debugging and review aid, and the
//! shape a new backend takes (its folder, one line in `all()`, its docs).
//!
//! Keys: `io_layout` and `io_dtype`, as for `tflite`.
use kiln_compiler::backend::{
    parse_option, parse_options, ArtifactFile, Backend, Emitted, Precision, TargetRules,
};
use kiln_compiler::config::Target;
use kiln_compiler::ir::Model;
use kiln_compiler::{Error, Result};
use serde::Deserialize;

use crate::common::tflite::{self as tfl, IoDtype, IoLayout};

pub struct DumpBackend;

/// The `dump` backend's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpOptions {
    #[serde(default)]
    pub io_layout: IoLayout,
    #[serde(default)]
    pub io_dtype: Option<IoDtype>,
}

fn options(t: &Target) -> std::result::Result<DumpOptions, String> {
    let o: DumpOptions = parse_options(t)?;
    tfl::check_io_dtype(o.io_dtype, t.precision == Precision::Int8)?;
    Ok(o)
}

impl Backend for DumpBackend {
    fn name(&self) -> &'static str {
        "dump"
    }

    fn precisions(&self) -> &'static [Precision] {
        &[Precision::Fp32, Precision::Int8]
    }

    fn option_keys(&self) -> &'static [&'static str] {
        &["io_layout", "io_dtype"]
    }

    fn check_option(&self, key: &str, value: serde_yaml::Value) -> std::result::Result<(), String> {
        parse_option::<DumpOptions>(key, value).map(|_| ())
    }

    fn check(&self, target: &Target) -> std::result::Result<TargetRules, String> {
        options(target)?;
        Ok(tfl::rules())
    }

    fn emit(&self, model: &Model, target: &Target) -> Result<Emitted> {
        let err = |reason: String| Error::Backend {
            backend: "dump".into(),
            target: target.name.clone(),
            reason,
        };
        let o = options(target).map_err(err)?;
        let int8 = target.precision == Precision::Int8;
        let ir = kiln_compiler::ir::dump::dump_model(model);
        let m = tfl::lower_model(model, o.io_layout, int8, tfl::io_int8(o.io_dtype, int8, false))?;
        let bytes = tfl::ser::write(&m, "kiln dump");
        let text = tfl::text::dump(&bytes).map_err(err)?;
        let files = vec![
            ArtifactFile { rel_path: "model.ir.txt".into(), bytes: ir.into_bytes() },
            ArtifactFile { rel_path: "model.tflite.txt".into(), bytes: text.into_bytes() },
        ];
        Ok(Emitted { files, summary: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(precision: Precision, options: &str) -> Target {
        let yaml = format!("{{ name: d, backend: dump, precision: {precision}, {options} }}");
        serde_yaml::from_str(&yaml).expect("a target")
    }

    #[test]
    fn writes_the_ir_and_its_tflite_lowering_as_text() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models");
        let mut m = kiln_compiler::onnx::load(&dir.join("digits_se.onnx")).expect("imports");
        let pins = [("input".to_string(), vec![1, 1, 16, 16])].into_iter().collect();
        kiln_compiler::shape::infer(&mut m, &pins).expect("shapes");
        let t = target(Precision::Fp32, "io_layout: nchw");
        DumpBackend.check(&t).expect("valid options");
        let e = DumpBackend.emit(&m, &t).expect("emits");
        let names: Vec<&str> = e.files.iter().map(|f| f.rel_path.as_str()).collect();
        assert_eq!(names, ["model.ir.txt", "model.tflite.txt"]);
        let ir = std::str::from_utf8(&e.files[0].bytes).expect("utf-8");
        let tfl = std::str::from_utf8(&e.files[1].bytes).expect("utf-8");
        assert!(ir.contains("Conv") && ir.contains("input %input: f32[1,1,16,16]"), "{ir}");
        // nchw I/O: the input keeps the ONNX order.
        assert!(tfl.contains("t0 input FLOAT32[1, 1, 16, 16]"), "{tfl}");
        assert!(tfl.contains(" CONV_2D ") && tfl.contains(" FULLY_CONNECTED "), "{tfl}");
    }

    #[test]
    fn options_are_checked() {
        assert!(DumpBackend.check_option("io_layout", "nhcw".into()).is_err());
        assert!(DumpBackend.check_option("device", "edgetpu".into()).is_err());
        let err = DumpBackend.check(&target(Precision::Fp32, "io_dtype: int8")).unwrap_err();
        assert!(err.contains("io_dtype"), "{err}");
        assert!(DumpBackend.check(&target(Precision::Int8, "io_dtype: int8")).is_ok());
    }
}
