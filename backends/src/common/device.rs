//! Device profiles shared by backends that take a `device:` key (npu, tensorrt): a profile is a name
//! shipped in `configs/devices/` (compiled in) or a path to a `.yaml` the user wrote, resolved against the
//! config's folder and reported as a build input. Each backend parses its own profile type.
use std::path::{Path, PathBuf};

use kiln_compiler::config::Target;
use kiln_compiler::{Error, Result};

/// Shipped profiles: (name, YAML text).
pub type Builtin = [(&'static str, &'static str)];

/// The profile file `device` names, when it names a file rather than a shipped profile.
pub fn file<'a>(builtin: &Builtin, device: &'a str) -> Option<&'a Path> {
    let path = Path::new(device);
    let shipped = builtin.iter().any(|(n, _)| *n == device);
    (!shipped && path.extension().is_some_and(|e| e == "yaml" || e == "yml")).then_some(path)
}

/// The YAML text of the profile `device` names (a shipped one, or a file); `what` names the kind of
/// profile in the error for an unknown name.
pub fn text(builtin: &Builtin, device: &str, what: &str) -> Result<String> {
    if let Some((_, t)) = builtin.iter().find(|(n, _)| *n == device) {
        return Ok((*t).to_string());
    }
    if let Some(path) = file(builtin, device) {
        return std::fs::read_to_string(path).map_err(|e| Error::io(path, e));
    }
    let names: Vec<&str> = builtin.iter().map(|(n, _)| *n).collect();
    Err(Error::invalid(format!(
        "unknown device '{device}' (known: {}, or a path to a {what} .yaml)",
        names.join(", ")
    )))
}

/// Make a `device:` that names a relative profile file relative to `base` (the config's folder).
pub fn resolve_path(builtin: &Builtin, target: &mut Target, base: &Path) {
    let key = serde_yaml::Value::from("device");
    let Some(serde_yaml::Value::String(d)) = target.options.get(&key) else { return };
    let Some(f) = file(builtin, d).filter(|f| f.is_relative()) else { return };
    let resolved = base.join(f).display().to_string();
    target.options.insert(key, serde_yaml::Value::String(resolved));
}

/// The profile file a target reads, if its `device:` names one (a build input).
pub fn input_files(builtin: &Builtin, target: &Target) -> Vec<PathBuf> {
    let d = target.options.get("device").and_then(|v| v.as_str());
    d.and_then(|d| file(builtin, d)).map(Path::to_path_buf).into_iter().collect()
}
