//! The YAML build config (`kiln build CONFIG.yaml`). Unknown keys are rejected; errors name the file,
//! line and column. Paths are relative to the config file's folder.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Precision, TargetRules};
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

/// One artifact to build: the common settings, and the keys its backend reads (`options`, parsed and
/// checked by the backend when the config loads; see [`crate::backend::Backend::check`]).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Target {
    pub name: String,
    pub backend: String,
    #[serde(default)]
    pub precision: Precision,
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
    /// The backend's own keys (`io_layout`, `device`, `external_data`, ...), as written.
    #[serde(flatten)]
    pub options: serde_yaml::Mapping,
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
    /// The model's other inputs, by name: an .npy each, sample i fed with sample i of the data input (a
    /// recurrent state carried between calls, a mask).
    #[serde(default)]
    pub other_inputs: BTreeMap<String, PathBuf>,
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
    /// As in `calibration:`: the model's other inputs, sample by sample.
    #[serde(default)]
    pub other_inputs: BTreeMap<String, PathBuf>,
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
    /// Measure the original, the optimized model and every artifact on this host (report.json
    /// `profile`): `true`, or `required` (an artifact that cannot run here fails the build).
    #[serde(default)]
    pub profile: crate::profile::Mode,
}

/// A parsed config with paths resolved.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub bytes: Vec<u8>,
    pub config: Config,
    /// Per target (in `config.targets` order), what its backend states about it.
    pub rules: Vec<TargetRules>,
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
    let cfg: Config = serde_yaml::from_str(text).map_err(|e| located(e, path))?;
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
        if t.precision == Precision::Int8 && cfg.calibration.is_none() {
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
        if let Some(f) = t.min_calibration_sqnr_db {
            if t.precision != Precision::Int8 || !f.is_finite() || !(-100.0..=100.0).contains(&f) {
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

/// Read and parse a config file, and have each target's backend check it (see [`check_targets`]).
pub fn load(path: &Path, backends: &[Box<dyn Backend>]) -> Result<LoadedConfig> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::Config { path: path.into(), reason: "not UTF-8 text".into() })?;
    let mut config = parse(text, path)?;
    let dir =
        path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    for t in &mut config.targets {
        if let Some(b) = backends.iter().find(|b| b.name() == t.backend) {
            b.resolve_paths(t, &dir);
        }
    }
    let rules = check_targets(text, path, &config, backends)?;
    Ok(LoadedConfig { path: path.into(), dir, bytes, config, rules })
}

/// The config error for a YAML error, with file:line:col where serde_yaml knows it.
fn located(e: serde_yaml::Error, path: &Path) -> Error {
    let loc = e.location().map(|l| format!(":{}:{}", l.line(), l.column())).unwrap_or_default();
    Error::Config { path: PathBuf::from(format!("{}{loc}", path.display())), reason: e.to_string() }
}

/// Every target's backend checks it, before any work: the backend exists, takes the precision, and
/// accepts each of its keys (`io_layout: nhcw` fails here, at its line and column) and their
/// combination. Walks the YAML a second time with the backends at hand, so each error carries the
/// location of the key or value at fault. Returns each target's rules.
pub fn check_targets(
    text: &str,
    path: &Path,
    cfg: &Config,
    backends: &[Box<dyn Backend>],
) -> Result<Vec<TargetRules>> {
    let rules = std::cell::RefCell::new(Vec::new());
    let walk = targets::ConfigSeed { targets: &cfg.targets, backends, rules: &rules };
    serde::de::DeserializeSeed::deserialize(walk, serde_yaml::Deserializer::from_str(text))
        .map_err(|e| located(e, path))?;
    let rules = rules.into_inner();
    if rules.len() != cfg.targets.len() {
        return Err(Error::Config {
            path: path.into(),
            reason: "targets: not every target was checked".into(),
        });
    }
    Ok(rules)
}

/// The second walk of the config (see [`check_targets`]).
mod targets {
    use std::cell::RefCell;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::Target;
    use crate::backend::{Backend, Precision, TargetRules};

    /// The keys every target has; the rest belong to its backend.
    const COMMON: &[&str] = &[
        "name",
        "backend",
        "precision",
        "weights",
        "activations",
        "cle",
        "bias_correction",
        "refine_ranges",
        "reduce_range",
        "min_calibration_sqnr_db",
        "fp16_max_error",
        "fp32_layers",
    ];

    pub struct ConfigSeed<'a> {
        pub targets: &'a [Target],
        pub backends: &'a [Box<dyn Backend>],
        pub rules: &'a RefCell<Vec<TargetRules>>,
    }

    impl<'de> DeserializeSeed<'de> for ConfigSeed<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for ConfigSeed<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a kiln config")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "targets" {
                    map.next_value_seed(TargetsSeed { outer: &self })?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }

    struct TargetsSeed<'s, 'a> {
        outer: &'s ConfigSeed<'a>,
    }

    impl<'de> DeserializeSeed<'de> for TargetsSeed<'_, '_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for TargetsSeed<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of targets")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let o = self.outer;
            for target in o.targets {
                let backend = o.backends.iter().find(|b| b.name() == target.backend);
                let seed =
                    TargetSeed { target, backend: backend.map(|b| b.as_ref()), all: o.backends };
                let Some(rules) = seq.next_element_seed(seed)? else { break };
                o.rules.borrow_mut().push(rules);
            }
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(())
        }
    }

    struct TargetSeed<'a> {
        target: &'a Target,
        backend: Option<&'a dyn Backend>,
        all: &'a [Box<dyn Backend>],
    }

    impl<'de> DeserializeSeed<'de> for TargetSeed<'_> {
        type Value = TargetRules;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<TargetRules, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for TargetSeed<'_> {
        type Value = TargetRules;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a target")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TargetRules, A::Error> {
            let t = self.target;
            let name = &t.name;
            let Some(b) = self.backend else {
                // Point at the `backend:` value.
                while let Some(key) = map.next_key::<String>()? {
                    if key == "backend" {
                        let names: Vec<&str> = self.all.iter().map(|b| b.name()).collect();
                        map.next_value_seed(Refuse(format!(
                            "target '{name}': unknown backend '{}' (available: {})",
                            t.backend,
                            names.join(", ")
                        )))?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                return Err(A::Error::custom(format!("target '{name}': no backend")));
            };
            while let Some(key) = map.next_key_seed(Key { backend: b, target: name })? {
                if key == "precision" && !b.precisions().contains(&t.precision) {
                    let ok: Vec<&str> = b.precisions().iter().map(|p| p.as_str()).collect();
                    map.next_value_seed(Refuse(format!(
                        "target '{name}': backend '{}' does not support precision '{}' (supported: {})",
                        b.name(),
                        t.precision,
                        ok.join(", ")
                    )))?;
                } else if COMMON.contains(&key.as_str()) {
                    map.next_value::<IgnoredAny>()?;
                } else {
                    // One backend key alone, typed by the backend (an unknown `io_layout` value fails
                    // here, at the value).
                    map.next_value_seed(OptionValue { backend: b, key: &key, target: name })?;
                }
            }
            if !b.precisions().contains(&t.precision) {
                return Err(A::Error::custom(format!(
                    "target '{name}': backend '{}' does not support precision '{}'",
                    b.name(),
                    t.precision
                )));
            }
            // The whole target: key combinations, and the common settings against the rules.
            let rules =
                b.check(t).map_err(|why| A::Error::custom(format!("target '{name}': {why}")))?;
            if t.reduce_range.is_some()
                && !(rules.quant.reduce_range && t.precision == Precision::Int8)
            {
                return Err(A::Error::custom(format!(
                    "target '{name}': reduce_range applies to int8 targets whose kernels take 7-bit weights (`backend: onnx, precision: int8`); backend '{}' at precision {} uses full 8-bit weights",
                    b.name(),
                    t.precision
                )));
            }
            Ok(rules)
        }
    }

    /// A target key: common, or one of its backend's.
    struct Key<'a> {
        backend: &'a dyn Backend,
        target: &'a str,
    }

    impl<'de> DeserializeSeed<'de> for Key<'_> {
        type Value = String;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Key<'_> {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a target key")
        }
        fn visit_str<E: de::Error>(self, k: &str) -> Result<String, E> {
            let own = self.backend.option_keys();
            if COMMON.contains(&k) || own.contains(&k) {
                return Ok(k.into());
            }
            let mut expected: Vec<&str> = COMMON.iter().chain(own).copied().collect();
            expected.sort_unstable();
            Err(E::custom(format!(
                "target '{}': unknown field `{k}` for backend '{}', expected one of {}",
                self.target,
                self.backend.name(),
                expected.join(", ")
            )))
        }
    }

    /// A backend key's value, checked by the backend where it is read.
    struct OptionValue<'a> {
        backend: &'a dyn Backend,
        key: &'a str,
        target: &'a str,
    }

    impl OptionValue<'_> {
        fn check<E: de::Error>(&self, v: serde_yaml::Value) -> Result<(), E> {
            self.backend
                .check_option(self.key, v)
                .map_err(|why| E::custom(format!("target '{}': {why}", self.target)))
        }
    }

    impl<'de> DeserializeSeed<'de> for OptionValue<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for OptionValue<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a value for `{}`", self.key)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
            self.check(v.into())
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
            self.check(v.into())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
            self.check(v.into())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
            self.check(v.into())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
            self.check(v.into())
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            self.check(serde_yaml::Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
            let v = serde::Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
            self.check(v)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
            let v = serde::Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))?;
            self.check(v)
        }
    }

    /// Fails at the value it is asked to read, with its message.
    struct Refuse(String);

    impl<'de> DeserializeSeed<'de> for Refuse {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Refuse {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a value")
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            Err(E::custom(self.0))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            Err(E::custom(self.0))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            Err(E::custom(self.0))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            Err(E::custom(self.0))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            Err(E::custom(self.0))
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Err(E::custom(self.0))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
            Err(A::Error::custom(self.0))
        }
        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
            Err(A::Error::custom(self.0))
        }
    }
}
