//! Device profiles (`configs/devices/*.yaml`): which TFLite builtin ops an NPU delegate or compiler takes,
//! under which constraints, and how it partitions, each with the public source it came from. The four
//! shipped profiles are compiled into the binary; `device:` may also name a profile file.
use std::collections::BTreeMap;

use kiln_compiler::{Error, Result};

use crate::common::device;
use serde::Deserialize;

/// How the device's compiler splits a graph.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    /// Every connected run of supported ops becomes a partition (TFLite delegates).
    Greedy,
    /// One segment: the first unsupported op ends it, everything after runs on the CPU (Edge TPU).
    FirstUnsupportedStops,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Element types the device computes in (`int8`, `uint8`, `int16`, `int32`, `float32`, ...).
    pub dtypes: Vec<String>,
    #[serde(default)]
    pub static_shapes: bool,
    pub max_rank: Option<usize>,
    /// At most this many dimensions larger than 1.
    pub max_nonunit_dims: Option<usize>,
    /// Required batch size.
    pub batch: Option<i32>,
    /// Largest size of any dimension.
    pub max_dim: Option<i32>,
}

/// Per-op limits; absent fields mean no limit.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpRule {
    /// `false`: the op must not carry a fused activation.
    pub fused_activation: Option<bool>,
    pub max_output_rank: Option<usize>,
    /// PAD/MEAN only along height and width.
    #[serde(default)]
    pub spatial_only: bool,
    pub max_elements: Option<usize>,
    pub max_stride: Option<i32>,
    pub max_kernel: Option<i32>,
    /// `false`: CONV_2D only with a filter over every input channel (no grouped convolution).
    pub grouped: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub title: String,
    pub sources: Vec<String>,
    pub partitioning: Partitioning,
    /// Default for the target's `io_dtype`.
    pub io_dtype: Option<String>,
    /// Also write the QDQ ONNX (uint8 activations, static shapes) for onnxruntime's QNN provider.
    #[serde(default)]
    pub emit_qdq_onnx: bool,
    pub constraints: Constraints,
    pub ops: BTreeMap<String, OpRule>,
}

pub const BUILTIN: &device::Builtin = &[
    ("edgetpu", include_str!("../../../configs/devices/edgetpu.yaml")),
    ("nnapi", include_str!("../../../configs/devices/nnapi.yaml")),
    ("qualcomm-htp", include_str!("../../../configs/devices/qualcomm-htp.yaml")),
    ("ethos-u55", include_str!("../../../configs/devices/ethos-u55.yaml")),
];

pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}

fn parse(text: &str, origin: &str) -> Result<Profile> {
    serde_yaml::from_str(text).map_err(|e| Error::invalid(format!("device profile {origin}: {e}")))
}

/// The profile file `device` names, when it names a file rather than a shipped profile.
pub fn file(device: &str) -> Option<&std::path::Path> {
    device::file(BUILTIN, device)
}

/// The profile `device` names: a shipped profile, or a path to a profile YAML.
pub fn load(device: &str) -> Result<Profile> {
    parse(&device::text(BUILTIN, device, "profile")?, device)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shipped_profiles_parse() {
        for n in super::builtin_names() {
            let p = super::load(n).expect("profile parses");
            assert_eq!(p.name, n);
            assert!(!p.sources.is_empty() && p.ops.contains_key("CONV_2D"));
        }
        assert!(super::load("no-such-npu").is_err());
    }
}
