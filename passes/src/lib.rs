//! kiln-passes: graph transformations, each a small struct implementing
//! `kiln_compiler::pipeline::Pass`, and the registry that maps config names to them.
pub mod cleanup;

use kiln_compiler::config::PassSpec;
use kiln_compiler::pipeline::Pass;
use kiln_compiler::{Error, Result};

/// Names accepted in `passes:` and `--passes`.
pub const AVAILABLE: &[&str] = &["dce"];

/// Build the pass a config entry names.
pub fn make(spec: &PassSpec) -> Result<Box<dyn Pass>> {
    let name = spec.name();
    if spec.params().is_some_and(|p| !p.is_null()) {
        return Err(Error::Pass { pass: name, reason: "takes no parameters".into() });
    }
    match name.as_str() {
        "dce" => Ok(Box::new(cleanup::dce::Dce)),
        _ => Err(Error::Pass { pass: name, reason: format!("unknown pass (available: {})", AVAILABLE.join(", ")) }),
    }
}
