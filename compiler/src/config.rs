//! The YAML build config (`kiln build CONFIG.yaml`). Unknown keys are rejected; errors name the file,
//! line and column. Paths are relative to the config file's folder.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A pass in the `passes:` list: a name, or a one-key map of name to parameters.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum PassSpec {
    Name(String),
    WithParams(BTreeMap<String, serde_yaml::Value>),
}

impl PassSpec {
    pub fn name(&self) -> String {
        match self {
            PassSpec::Name(n) => n.clone(),
            PassSpec::WithParams(m) => m.keys().next().cloned().unwrap_or_default(),
        }
    }
    pub fn params(&self) -> Option<&serde_yaml::Value> {
        match self {
            PassSpec::Name(_) => None,
            PassSpec::WithParams(m) => m.values().next(),
        }
    }
}

/// Where an ONNX artifact's tensor data goes.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExternalDataMode {
    /// External only when the model passes protobuf's 2 GiB limit.
    #[default]
    Auto,
    Always,
    Never,
}

/// One artifact to build.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    pub backend: String,
    #[serde(default = "default_precision")]
    pub precision: String,
    /// ONNX-emitting backends: where tensor data goes.
    #[serde(default)]
    pub external_data: ExternalDataMode,
    /// int8: `per_channel` (default) or `per_tensor` weight scales.
    #[serde(default)]
    pub weights: Option<String>,
    /// int8: activation type, `int8` (default) or `uint8`.
    #[serde(default)]
    pub activations: Option<String>,
    /// int8: cross-layer equalization of Conv→Conv chains (default: on with per-tensor weights).
    #[serde(default)]
    pub cle: Option<bool>,
    /// int8: empirical bias correction (default true).
    #[serde(default)]
    pub bias_correction: Option<bool>,
    /// int8: loss-aware range refinement of residual streams on the calibration samples (default true).
    #[serde(default)]
    pub refine_ranges: Option<bool>,
    /// onnx int8: 7-bit weights (|q| ≤ 64), for x86 int8 kernels without VNNI, whose 16-bit pair sums of
    /// u8×s8 products saturate with full 8-bit weights (default false).
    #[serde(default)]
    pub reduce_range: Option<bool>,
    /// int8: the quality guard's floor on the output SQNR (dB) on calibration samples; below it kiln repairs
    /// the model or fails the target (default 4).
    #[serde(default)]
    pub min_calibration_sqnr_db: Option<f64>,
    /// fp16: the largest output error (max |Δy| / max |y| on the validation data) float16 weights may
    /// cause before layers are kept in float32 (default 0.01).
    #[serde(default)]
    pub fp16_max_error: Option<f64>,
    /// fp16: layers (node names) whose weights stay float32 regardless of the measured error.
    #[serde(default)]
    pub fp32_layers: Vec<String>,
    /// tflite: layout of rank-4 inputs and outputs, `nhwc` (default) or `nchw`.
    #[serde(default)]
    pub io_layout: Option<String>,
    /// tflite/npu int8: `float` inputs/outputs (QUANTIZE/DEQUANTIZE inside; tflite's default) or `int8`
    /// (npu's default: the whole graph integer).
    #[serde(default)]
    pub io_dtype: Option<String>,
    /// npu: device profile, a name under configs/devices (edgetpu, nnapi, qualcomm-htp, ethos-u55) or a
    /// path to a profile YAML.
    #[serde(default)]
    pub device: Option<String>,
}

/// `calibration:` — data and method for post-training quantization.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationConfig {
    /// A folder of images (with `preprocess`)…
    #[serde(default)]
    pub images: Option<PathBuf>,
    /// …or an .npy of samples along axis 0.
    #[serde(default)]
    pub tensors: Option<PathBuf>,
    #[serde(default)]
    pub preprocess: Option<crate::calib::Preprocess>,
    /// minmax | percentile | entropy | mse (default entropy).
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub percentile: Option<f64>,
    /// At most this many samples (default all).
    #[serde(default)]
    pub samples: Option<usize>,
}

fn default_precision() -> String {
    "fp32".into()
}

/// `validation:` — data the artifacts are checked on, and the accuracy budget they must meet.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    #[serde(default)]
    pub images: Option<PathBuf>,
    #[serde(default)]
    pub tensors: Option<PathBuf>,
    #[serde(default)]
    pub preprocess: Option<crate::calib::Preprocess>,
    /// Class labels (.npy of integers), one per sample.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    #[serde(default)]
    pub samples: Option<usize>,
    #[serde(default)]
    pub min_top1_agreement: Option<f64>,
    #[serde(default)]
    pub min_cosine: Option<f64>,
    /// Largest allowed drop in label accuracy (needs `labels`), e.g. 0.005 for half a point.
    #[serde(default)]
    pub max_accuracy_drop: Option<f64>,
    /// How far past `min_top1_agreement` / `max_accuracy_drop` the mixed-precision search aims (default
    /// 0.01), so integer runtimes, which round differently from kiln's float simulation, still meet it.
    #[serde(default)]
    pub search_margin: Option<f64>,
}

/// The whole config.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: PathBuf,
    /// Pinned input dims by input name.
    #[serde(default)]
    pub inputs: BTreeMap<String, Vec<i64>>,
    #[serde(default)]
    pub passes: Vec<PassSpec>,
    #[serde(default)]
    pub calibration: Option<CalibrationConfig>,
    #[serde(default)]
    pub validation: Option<ValidationConfig>,
    pub targets: Vec<Target>,
    pub output: PathBuf,
}

/// A parsed config with paths resolved.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub bytes: Vec<u8>,
    pub config: Config,
}

impl LoadedConfig {
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(&self.config.model)
    }
    pub fn output_dir(&self) -> PathBuf {
        self.dir.join(&self.config.output)
    }
}

/// Parse config text; `path` names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Config> {
    let cfg: Config = serde_yaml::from_str(text).map_err(|e| {
        let loc = e.location().map(|l| format!(":{}:{}", l.line(), l.column())).unwrap_or_default();
        Error::Config {
            path: PathBuf::from(format!("{}{loc}", path.display())),
            reason: e.to_string(),
        }
    })?;
    validate(&cfg, path)?;
    Ok(cfg)
}

fn validate(cfg: &Config, path: &Path) -> Result<()> {
    let err = |reason: String| Error::Config { path: path.into(), reason };
    if cfg.targets.is_empty() {
        return Err(err("`targets` is empty: name at least one artifact to build".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for t in &cfg.targets {
        let ok = !t.name.is_empty()
            && t.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && t.name != "."
            && t.name != "..";
        if !ok {
            return Err(err(format!("target name '{}' must be non-empty letters, digits, '-', '_' or '.' (it names a folder)", t.name)));
        }
        if !seen.insert(t.name.clone()) {
            return Err(err(format!("target name '{}' is used twice", t.name)));
        }
    }
    if let Some(c) = &cfg.calibration {
        if c.images.is_some() == c.tensors.is_some() {
            return Err(err(
                "calibration: give exactly one of `images` (a folder) or `tensors` (an .npy)"
                    .into(),
            ));
        }
        if c.preprocess.is_some() && c.images.is_none() {
            return Err(err("calibration.preprocess applies to `images` only".into()));
        }
        if let Some(m) = &c.method {
            if !["minmax", "percentile", "entropy", "mse"].contains(&m.as_str()) {
                return Err(err(format!(
                    "calibration.method '{m}': expected minmax, percentile, entropy or mse"
                )));
            }
        }
    }
    if let Some(v) = &cfg.validation {
        if v.images.is_some() == v.tensors.is_some() {
            return Err(err(
                "validation: give exactly one of `images` (a folder) or `tensors` (an .npy)".into(),
            ));
        }
        if v.max_accuracy_drop.is_some() && v.labels.is_none() {
            return Err(err("validation.max_accuracy_drop needs `labels`".into()));
        }
        if v.search_margin.is_some_and(|m| !(0.0..0.5).contains(&m)) {
            return Err(err("validation.search_margin must be in [0, 0.5)".into()));
        }
    }
    for t in &cfg.targets {
        if t.precision == "int8" && cfg.calibration.is_none() {
            return Err(err(format!(
                "target '{}': precision int8 needs a `calibration:` section",
                t.name
            )));
        }
        if let Some(w) = &t.weights {
            if w != "per_channel" && w != "per_tensor" {
                return Err(err(format!(
                    "target '{}': weights '{w}': expected per_channel or per_tensor",
                    t.name
                )));
            }
        }
        if t.reduce_range.is_some() && (t.backend != "onnx" || t.precision != "int8") {
            return Err(err(format!("target '{}': reduce_range applies to `backend: onnx, precision: int8` only (TFLite and NPU kernels use full 8-bit weights)", t.name)));
        }
        if let Some(f) = t.min_calibration_sqnr_db {
            if t.precision != "int8" || !f.is_finite() || !(-100.0..=100.0).contains(&f) {
                return Err(err(format!("target '{}': min_calibration_sqnr_db must be a number of dB in [-100, 100] on an int8 target", t.name)));
            }
        }
        if let Some(a) = &t.activations {
            if a != "int8" && a != "uint8" {
                return Err(err(format!(
                    "target '{}': activations '{a}': expected int8 or uint8",
                    t.name
                )));
            }
        }
    }
    for (name, dims) in &cfg.inputs {
        if dims.iter().any(|d| *d < 0) {
            return Err(err(format!("inputs.{name}: dims must be non-negative, got {dims:?}")));
        }
    }
    Ok(())
}

/// Read and parse a config file.
pub fn load(path: &Path) -> Result<LoadedConfig> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::Config { path: path.into(), reason: "not UTF-8 text".into() })?;
    let config = parse(text, path)?;
    let dir =
        path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    Ok(LoadedConfig { path: path.into(), dir, bytes, config })
}
