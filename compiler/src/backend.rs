//! The backend surface. A backend owns its options (the target keys beyond the common ones, parsed into
//! its own typed struct and checked before any work) and states as data what the shared stages need to
//! know about a target ([`TargetRules`]): the driver and the quantizer read rules, never a backend's name.
//! Adding a backend is a folder under `backends/src/` implementing [`Backend`] and one line in
//! `kiln_backends::all()`.
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::Target;
use crate::error::Result;
use crate::ir::{Act, Model};

/// `precision:` of a target.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(try_from = "String", into = "String")]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
    /// int8 weights, float activations (LiteRT's hybrid kernels).
    Dynamic,
    Int8,
}

impl Precision {
    pub const ALL: [Precision; 4] =
        [Precision::Fp32, Precision::Fp16, Precision::Dynamic, Precision::Int8];

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Dynamic => "dynamic",
            Precision::Int8 => "int8",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Precision {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        Precision::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = Precision::ALL.iter().map(|p| p.as_str()).collect();
            format!("precision '{s}': expected one of {}", all.join(", "))
        })
    }
}

impl From<Precision> for String {
    fn from(p: Precision) -> String {
        p.as_str().into()
    }
}

/// How a target's int8 model is quantized.
#[derive(Clone, Copy, Debug)]
pub struct QuantRules {
    /// Every tensor carries a scale, graph outputs included, and activations the runtime cannot fuse are
    /// split off and quantized (full-integer runtimes: TFLite, NPUs). Otherwise Q/DQ go around the ops with
    /// integer kernels and the rest stays float (QDQ ONNX).
    pub full_integer: bool,
    /// Activations the target's integer kernels apply fused into the op before them (full-integer targets).
    pub fused_activation: fn(&Act) -> bool,
    /// The target's kernels can take 7-bit weights (`reduce_range`, for x86 int8 kernels without VNNI).
    pub reduce_range: bool,
    /// Activations are symmetric int8 (zero point 0, range [−127·s, 127·s]): TensorRT.
    pub symmetric_activations: bool,
    /// Where Q/DQ go (QDQ targets).
    pub placement: QdqPlacement,
    /// Biases become int32 with scale s_in·s_w; otherwise they stay float (TensorRT adds a float bias).
    pub int32_bias: bool,
    /// Concat inputs and output, and the values an op only moves (MaxPool, Reshape, ...), share one scale:
    /// the largest of theirs (TensorRT inserts a reformat layer where they differ).
    pub shared_scales: bool,
    /// Calibrate the values before fused activations too (`<y>__preact`): a runtime that sees them as
    /// layer outputs needs their ranges (TensorRT's calibration cache for the DLA).
    pub preactivation_ranges: bool,
}

impl QuantRules {
    /// The generic QDQ rules (onnxruntime and most ONNX runtimes).
    pub fn qdq() -> Self {
        QuantRules {
            full_integer: false,
            fused_activation: no_fused_activation,
            reduce_range: true,
            symmetric_activations: false,
            placement: QdqPlacement::Activations,
            int32_bias: true,
            shared_scales: false,
            preactivation_ranges: false,
        }
    }
}

/// Where a QDQ model's activation Q/DQ pairs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QdqPlacement {
    /// Every activation an integer kernel may read (runtimes fuse what they can).
    Activations,
    /// TensorRT's fusion points only: the activation inputs of Conv/ConvTranspose/Gemm/MatMul and the skip
    /// input of a residual Add whose other input a weighted op writes (so Conv+Add fuses); the weighted
    /// ops' outputs are not quantized.
    FusionPoints,
}

/// What `precision: fp16` means on a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp16 {
    /// float16 weights and activations: the runtime computes in float16.
    Compute,
    /// float16 weights stored, widened to float32 at load: the runtime computes in float32.
    Storage,
}

/// What the shared stages need to know about a target, stated by its backend.
#[derive(Clone, Copy, Debug)]
pub struct TargetRules {
    /// int8 targets: the quantization scheme.
    pub quant: QuantRules,
    pub fp16: Fp16,
}

/// No activation fused (QDQ ONNX: runtimes fuse what they can themselves).
pub fn no_fused_activation(_: &Act) -> bool {
    false
}

/// One file of an artifact, relative to the target's output folder.
pub struct ArtifactFile {
    pub rel_path: String,
    pub bytes: Vec<u8>,
}

/// What a backend wrote for one target: its files and a summary for the build report (an NPU partition
/// summary, an operator histogram, ...).
pub struct Emitted {
    /// The model first (the build summary's artifact), then companions.
    pub files: Vec<ArtifactFile>,
    pub summary: Option<serde_json::Value>,
}

/// Emits the artifact for one target.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// Precisions this backend accepts in `precision:`.
    fn precisions(&self) -> &'static [Precision];
    /// The target keys this backend reads beyond the common ones (`io_layout`, `device`, ...).
    fn option_keys(&self) -> &'static [&'static str];
    /// Check one of this backend's keys alone (its value's type and range), where the config states it.
    fn check_option(&self, key: &str, value: serde_yaml::Value) -> std::result::Result<(), String>;
    /// Parse and check `target` (its options and its common settings against what this backend can do),
    /// and state its rules. Runs when the config is loaded, before any work; the message names no
    /// location (the config loader adds file:line:col).
    fn check(&self, target: &Target) -> std::result::Result<TargetRules, String>;
    fn emit(&self, model: &Model, target: &Target) -> Result<Emitted>;
    /// Make the option values that name files (`device: my_npu.yaml`) relative to `base`, the config
    /// file's directory, as every other path in a config is. Runs when the config loads, before `check`.
    fn resolve_paths(&self, _target: &mut Target, _base: &std::path::Path) {}
    /// Files `target` reads beyond the model and the data (a device profile): hashed into the manifest,
    /// so a change rebuilds, and listed in `--depfile`.
    fn input_files(&self, _target: &Target) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
}

/// Parse one key into a backend's typed options (for [`Backend::check_option`]).
pub fn parse_option<T: serde::de::DeserializeOwned>(
    key: &str,
    value: serde_yaml::Value,
) -> std::result::Result<T, String> {
    let one = serde_yaml::Mapping::from_iter([(key.into(), value)]);
    serde_yaml::from_value(serde_yaml::Value::Mapping(one)).map_err(|e| e.to_string())
}

/// Parse a backend's typed options from a target's backend keys.
pub fn parse_options<T: serde::de::DeserializeOwned>(
    target: &Target,
) -> std::result::Result<T, String> {
    serde_yaml::from_value(serde_yaml::Value::Mapping(target.options.clone()))
        .map_err(|e| e.to_string())
}
