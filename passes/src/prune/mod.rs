//! Pruning passes (`passes: [{ prune: { method: realize } }]`). `realize` makes channels that training
//! already zeroed (torch.nn.utils.prune, after BatchNorm folding) physically disappear; `sparse_2_4`
//! makes weights 2:4 sparse for TensorRT's sparse kernels.
pub mod realize;
pub mod sparse24;

use kiln_compiler::pipeline::Pass;
use kiln_compiler::{Error, Result};
use serde::Deserialize;

/// `prune:`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    method: String,
    /// realize: also remove channels whose removal is exact only away from zero padding (their constant
    /// is folded as the interior value), and measure the effect.
    #[serde(default)]
    approximate: bool,
}

/// The pass `prune` with `params` names.
pub fn make(params: Option<&serde_yaml::Value>) -> Result<Box<dyn Pass>> {
    let bad = |reason: String| Error::Pass { pass: "prune".into(), reason };
    let Some(p) = params.filter(|p| !p.is_null()) else {
        return Err(bad("needs parameters: { prune: { method: realize } }".into()));
    };
    let p: Params = serde_yaml::from_value(p.clone()).map_err(|e| bad(e.to_string()))?;
    match p.method.as_str() {
        "realize" => Ok(Box::new(realize::Realize { approximate: p.approximate })),
        "sparse_2_4" if p.approximate => Err(bad("approximate applies to realize".into())),
        "sparse_2_4" => Ok(Box::new(sparse24::Sparse24)),
        m => Err(bad(format!("unknown method '{m}' (available: realize, sparse_2_4)"))),
    }
}
