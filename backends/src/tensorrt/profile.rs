//! Jetson device profiles (`configs/devices/<name>.yaml` with `kind: jetson`): the TensorRT version its
//! JetPack ships, its DLA cores and the DLA's layer limits, each with its sources. The limits are data,
//! not code: placement.rs reads them, and a user can describe another Jetson in a file.
use kiln_compiler::{Error, Result};

use crate::common::device;
use serde::Deserialize;

/// An inclusive range `[lo, hi]`.
pub type Span = [i64; 2];

/// The DLA's layer limits (Orin's NVDLA 2.0; TensorRT's "DLA Supported Layers and Restrictions").
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlaLimits {
    pub conv_kernel: Span,
    pub conv_stride: Span,
    pub conv_max_pad: i64,
    pub conv_dilation: Span,
    pub max_channels: i64,
    pub pool_window: Span,
    pub pool_stride: Span,
    pub pool_max_pad: i64,
    pub max_loadables_per_core: usize,
    pub max_softmax_axis: i64,
    pub activations: Vec<String>,
    pub elementwise: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jetson {
    pub name: String,
    pub title: String,
    pub kind: String,
    pub sources: Vec<String>,
    pub jetpack: String,
    /// The TensorRT version the device's JetPack ships (the default `trt_version:`).
    pub trt_version: String,
    pub gpu_arch: String,
    pub dla_cores: u32,
    #[serde(default)]
    pub dla: Option<DlaLimits>,
}

pub const BUILTIN: &device::Builtin = &[
    ("agx-orin", include_str!("../../../configs/devices/agx-orin.yaml")),
    ("orin-nano", include_str!("../../../configs/devices/orin-nano.yaml")),
];

pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}

fn parse(text: &str, origin: &str) -> Result<Jetson> {
    let j: Jetson = serde_yaml::from_str(text)
        .map_err(|e| Error::invalid(format!("device profile {origin}: {e}")))?;
    if j.kind != "jetson" {
        return Err(Error::invalid(format!(
            "device profile {origin}: `kind: {}` is not a Jetson profile (`kind: jetson`)",
            j.kind
        )));
    }
    if j.dla_cores > 0 && j.dla.is_none() {
        return Err(Error::invalid(format!(
            "device profile {origin}: {} DLA core(s) but no `dla:` limits",
            j.dla_cores
        )));
    }
    Ok(j)
}

/// The profile file `device` names, when it names a file rather than a shipped profile.
pub fn file(device: &str) -> Option<&std::path::Path> {
    device::file(BUILTIN, device)
}

/// The Jetson `device` names: a shipped profile, or a path to a profile YAML.
pub fn load(device: &str) -> Result<Jetson> {
    parse(&device::text(BUILTIN, device, "Jetson profile")?, device)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shipped_profiles_parse() {
        for n in super::builtin_names() {
            let p = super::load(n).expect("profile parses");
            assert_eq!(p.name, n);
            assert!(!p.sources.is_empty());
        }
        assert!(super::load("agx-orin").unwrap().dla.is_some());
        assert_eq!(super::load("orin-nano").unwrap().dla_cores, 0);
        assert!(super::load("no-such-jetson").is_err());
    }
}
