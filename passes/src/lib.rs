//! kiln-passes: graph transformations, each a small struct implementing
//! `kiln_compiler::pipeline::Pass`, the pass manager, and the registry that maps config names to them.
//!
//! Pipelines: `cleanup` (folding, dead code, duplicates, no-op removal, reshape/transpose simplification,
//! Pad and BatchNorm folding) and `fuse` (see `fuse/`). Every pass can also be named on its own.
pub mod cleanup;
pub mod manager;
pub mod util;

use kiln_compiler::config::PassSpec;
use kiln_compiler::pipeline::Pass;
use kiln_compiler::{Error, Result};

use manager::Pipeline;

/// Names accepted in `passes:` and `--passes`.
pub const AVAILABLE: &[&str] = &["cleanup", "dce", "fold_constants", "remove_identity", "cse"];

fn single(name: &str) -> Option<Box<dyn Pass>> {
    Some(match name {
        "dce" => Box::new(cleanup::dce::Dce),
        "fold_constants" => Box::new(cleanup::fold_constants::FoldConstants),
        "remove_identity" => Box::new(cleanup::identity::RemoveIdentity),
        "cse" => Box::new(cleanup::cse::Cse),
        _ => return None,
    })
}

/// The `cleanup` pipeline.
pub fn cleanup() -> Pipeline {
    let names = ["fold_constants", "remove_identity", "cse", "dce"];
    Pipeline { name: "cleanup", passes: names.iter().filter_map(|n| single(n)).collect(), max_rounds: 8 }
}

/// Build the pass a config entry names.
pub fn make(spec: &PassSpec) -> Result<Box<dyn Pass>> {
    let name = spec.name();
    if spec.params().is_some_and(|p| !p.is_null()) {
        return Err(Error::Pass { pass: name, reason: "takes no parameters".into() });
    }
    if name == "cleanup" {
        return Ok(Box::new(cleanup()));
    }
    single(&name).ok_or_else(|| Error::Pass { pass: name, reason: format!("unknown pass (available: {})", AVAILABLE.join(", ")) })
}
