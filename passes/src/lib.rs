//! kiln-passes: graph transformations, each a small struct implementing
//! `kiln_compiler::pipeline::Pass`, the pass manager, and the registry that maps config names to them.
//!
//! Pipelines: `cleanup` (folding, dead code, duplicates, no-op removal, reshape/transpose simplification,
//! Pad and BatchNorm folding) and `fuse` (see `fuse/`). Every pass can also be named on its own.
pub mod cleanup;
pub mod fuse;
pub mod manager;
pub mod prune;
pub mod quant;
pub mod util;

use kiln_compiler::config::PassSpec;
use kiln_compiler::pipeline::Pass;
use kiln_compiler::{Error, Result};

use manager::Pipeline;

/// Names accepted in `passes:` and `--passes`.
pub const AVAILABLE: &[&str] = &[
    "cleanup",
    "fuse",
    "dce",
    "fold_constants",
    "remove_identity",
    "cse",
    "simplify_reshape",
    "cancel_transpose",
    "fold_pad",
    "fold_batchnorm",
    "recognize_patterns",
    "fold_const_arith",
    "matmul_add_to_gemm",
    "fuse_activation",
    "prune",
];

fn single(name: &str) -> Option<Box<dyn Pass>> {
    Some(match name {
        "dce" => Box::new(cleanup::dce::Dce),
        "fold_constants" => Box::new(cleanup::fold_constants::FoldConstants),
        "remove_identity" => Box::new(cleanup::identity::RemoveIdentity),
        "cse" => Box::new(cleanup::cse::Cse),
        "simplify_reshape" => Box::new(cleanup::reshape::SimplifyReshape),
        "cancel_transpose" => Box::new(cleanup::transpose::CancelTranspose),
        "fold_pad" => Box::new(cleanup::pad::FoldPad),
        "fold_batchnorm" => Box::new(fuse::batchnorm::FoldBatchNorm),
        "recognize_patterns" => Box::new(fuse::patterns::RecognizePatterns),
        "fold_const_arith" => Box::new(fuse::const_arith::FoldConstArith),
        "matmul_add_to_gemm" => Box::new(fuse::matmul_gemm::MatMulAddToGemm),
        "fuse_activation" => Box::new(fuse::activation::FuseActivation),
        _ => return None,
    })
}

/// The `cleanup` pipeline.
pub fn cleanup() -> Pipeline {
    let names = [
        "fold_constants",
        "remove_identity",
        "cse",
        "simplify_reshape",
        "cancel_transpose",
        "fold_pad",
        "fold_batchnorm",
        "dce",
    ];
    Pipeline {
        name: "cleanup",
        passes: names.iter().filter_map(|n| single(n)).collect(),
        max_rounds: 8,
    }
}

/// The `fuse` pipeline (runs `cleanup` first so folding sees constants).
pub fn fuse() -> Pipeline {
    let names = [
        "recognize_patterns",
        "fold_batchnorm",
        "fold_const_arith",
        "matmul_add_to_gemm",
        "fuse_activation",
        "dce",
    ];
    let mut passes: Vec<Box<dyn Pass>> = vec![Box::new(cleanup())];
    passes.extend(names.iter().filter_map(|n| single(n)));
    Pipeline { name: "fuse", passes, max_rounds: 4 }
}

/// Build the pass a config entry names.
pub fn make(spec: &PassSpec) -> Result<Box<dyn Pass>> {
    let name = spec.name();
    if name == "prune" {
        return prune::make(spec.params());
    }
    if spec.params().is_some_and(|p| !p.is_null()) {
        return Err(Error::Pass { pass: name, reason: "takes no parameters".into() });
    }
    if name == "cleanup" {
        return Ok(Box::new(cleanup()));
    }
    if name == "fuse" {
        return Ok(Box::new(fuse()));
    }
    single(&name).ok_or_else(|| Error::Pass {
        pass: name,
        reason: format!("unknown pass (available: {})", AVAILABLE.join(", ")),
    })
}
