//! Pruning passes (`passes: [{ prune: { method: realize } }]`). `realize` makes channels that training
//! already zeroed (torch.nn.utils.prune, after BatchNorm folding) physically disappear; `sparse_2_4`
//! makes weights 2:4 sparse for TensorRT's sparse kernels; `channel` prunes whole channels to a MAC target
//! on dependency groups, ranked and refitted on calibration data.
pub mod channel;
pub mod groups;
pub mod realize;
pub mod recon;
pub mod shrink;
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
    /// channel: keep this fraction of the MACs.
    macs: Option<f64>,
    /// channel: or remove this fraction of every prunable layer group's channels.
    ratio: Option<f64>,
    /// channel: never keep less than this fraction of a tensor's channels (default 0.75).
    min_keep: Option<f64>,
    /// channel: remove channels in multiples of this per layer group (default 8).
    round_to: Option<usize>,
    /// channel: which layers to refit: readers (default: the layers that lost input channels), all (also
    /// every Conv/Gemm downstream of a change), none.
    reconstruct: Option<String>,
    /// channel: ranking criterion: energy (default) or obs (loss after refitting the rest).
    criterion: Option<String>,
    /// channel: ridge factor of the refit, relative to the mean feature energy (default 1e-2).
    ridge: Option<f64>,
    /// channel: sampled rows (output positions) per layer over all calibration samples (default 16384).
    rows: Option<usize>,
}

/// The pass `prune` with `params` names.
pub fn make(params: Option<&serde_yaml::Value>) -> Result<Box<dyn Pass>> {
    let bad = |reason: String| Error::Pass { pass: "prune".into(), reason };
    let Some(p) = params.filter(|p| !p.is_null()) else {
        return Err(bad("needs parameters: { prune: { method: realize } }".into()));
    };
    let p: Params = serde_yaml::from_value(p.clone()).map_err(|e| bad(e.to_string()))?;
    let channel_only = p.macs.is_some()
        || p.ratio.is_some()
        || p.min_keep.is_some()
        || p.round_to.is_some()
        || p.reconstruct.is_some()
        || p.ridge.is_some()
        || p.criterion.is_some()
        || p.rows.is_some();
    if channel_only && p.method != "channel" {
        return Err(bad(format!(
            "macs, ratio, min_keep, round_to, reconstruct, criterion, ridge and rows apply to method channel, not {}",
            p.method
        )));
    }
    match p.method.as_str() {
        "channel" => channel(&p).map_err(bad),
        "realize" => Ok(Box::new(realize::Realize { approximate: p.approximate })),
        "sparse_2_4" if p.approximate => Err(bad("approximate applies to realize".into())),
        "sparse_2_4" => Ok(Box::new(sparse24::Sparse24)),
        m => Err(bad(format!("unknown method '{m}' (available: realize, channel, sparse_2_4)"))),
    }
}

/// `method: channel`'s settings, checked.
fn channel(p: &Params) -> std::result::Result<Box<dyn Pass>, String> {
    if p.approximate {
        return Err("approximate applies to realize".into());
    }
    let frac = |name: &str, v: Option<f64>| -> std::result::Result<(), String> {
        match v {
            Some(x) if !(x > 0.0 && x < 1.0) => {
                Err(format!("{name} must be between 0 and 1 (exclusive), got {x}"))
            }
            _ => Ok(()),
        }
    };
    frac("macs", p.macs)?;
    frac("ratio", p.ratio)?;
    frac("min_keep", p.min_keep)?;
    match (p.macs, p.ratio) {
        (None, None) => return Err("method channel needs a target: macs (fraction of MACs kept) or ratio (fraction of channels removed per layer group)".into()),
        (Some(_), Some(_)) => return Err("give macs or ratio, not both".into()),
        _ => {}
    }
    if p.round_to == Some(0) || p.rows == Some(0) {
        return Err("round_to and rows must be at least 1".into());
    }
    if p.ridge.is_some_and(|r| !(r >= 0.0 && r.is_finite())) {
        return Err("ridge must be a finite number >= 0".into());
    }
    Ok(Box::new(channel::Channel {
        macs: p.macs,
        ratio: p.ratio,
        min_keep: p.min_keep.unwrap_or(0.75),
        round_to: p.round_to.unwrap_or(8),
        obs: match p.criterion.as_deref() {
            None | Some("energy") => false,
            Some("obs") => true,
            Some(o) => return Err(format!("criterion must be energy or obs, not '{o}'")),
        },
        reconstruct: match p.reconstruct.as_deref() {
            Some("all") => channel::Reconstruct::All,
            None | Some("readers") => channel::Reconstruct::Readers,
            Some("none") => channel::Reconstruct::None,
            Some(o) => return Err(format!("reconstruct must be all, readers or none, not '{o}'")),
        },
        ridge: p.ridge.unwrap_or(1e-2),
        rows: p.rows.unwrap_or(16384),
    }))
}
