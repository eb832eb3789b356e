//! `kiln profile PATH`: measured latency of an artifact on this host, end to end and per layer, with each
//! layer named by its kiln IR node (the names the passes kept, so a layer can be followed from the ONNX
//! file through the passes to the artifact).
//!
//! - ONNX (fp32, fp16, QDQ): kiln's evaluator (tract) in process, every node timed; tract's nodes are
//!   mapped back to IR nodes by name (tract keeps the ONNX node's name, adding suffixes for the parts it
//!   splits a node into; a fused activation is exported as `<node>__act`).
//! - TFLite: LiteRT's benchmark tool (`litert-benchmark`, shipped by the `ai-edge-litert` wheel), found on
//!   PATH or named by `KILN_LITERT_BENCHMARK`: end-to-end median only (that tool has no per-op profile).
//!   Without it, kiln says how to get it and fails.
//! - Vulkan bundles: kiln's runtime on the system's Vulkan driver: the end-to-end median of whole-plan
//!   submissions, and per dispatch the median of GPU timestamps with each step submitted alone, grouped
//!   by the IR node each dispatch computes.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use kiln_compiler::{cost, eval, npy, onnx, profile, shape, stats};

/// One row of the per-layer table.
#[derive(serde::Serialize)]
struct Row {
    node: String,
    op: String,
    shape: String,
    macs: Option<u64>,
    ms: f64,
    share: f64,
}

/// The artifact `path` names: a file, or a target folder holding one model file.
fn artifact(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        for f in ["model.onnx", "model.tflite", "model.kvk"] {
            if path.join(f).is_file() {
                return Ok(path.join(f));
            }
        }
        bail!("{}: no model.onnx, model.tflite or model.kvk in this folder", path.display());
    }
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    Ok(path.to_path_buf())
}

/// The IR node an evaluator node belongs to: the longest IR node name that is the evaluator's name or a
/// prefix of it followed by a separator.
fn owner<'a>(names: &'a [String], tract: &str) -> Option<&'a String> {
    names
        .iter()
        .filter(|n| {
            !n.is_empty()
                && tract.starts_with(n.as_str())
                && tract[n.len()..].chars().next().is_none_or(|c| ".#_".contains(c))
        })
        .max_by_key(|n| n.len())
}

/// The ONNX model at `path` with its shapes inferred for the given inputs (or the default ramp), and
/// those inputs.
fn loaded(
    path: &Path,
    given: &[(String, PathBuf)],
) -> Result<(kiln_compiler::ir::Model, Vec<(String, kiln_compiler::ir::TensorData)>)> {
    let mut m = onnx::load(path)?;
    let mut read = Vec::new();
    for (n, p) in given {
        read.push((n.clone(), npy::read(p)?));
    }
    let feeds = profile::feeds(&m, &read)?;
    let pins: shape::Pins = feeds.iter().map(|(n, t)| (n.clone(), t.dims.clone())).collect();
    shape::infer(&mut m, &pins)?;
    Ok((m, feeds))
}

fn onnx_profile(
    path: &Path,
    given: &[(String, PathBuf)],
    warmup: usize,
    runs: usize,
) -> Result<serde_json::Value> {
    let (m, feeds) = loaded(path, given)?;
    let ev = eval::Evaluator::as_written_for(&m, &feeds)?;
    let times = ev.profile(&feeds, warmup, runs)?;
    let g = &m.graph;
    let order = g.topo_order()?;
    let names: Vec<String> = order.iter().map(|id| g.nodes[*id].name.clone()).collect();
    let mut per: BTreeMap<String, f64> = BTreeMap::new();
    let mut unmapped = 0.0;
    for (tn, _, t) in &times.nodes {
        match owner(&names, tn) {
            Some(n) => *per.entry(n.clone()).or_default() += t,
            None => unmapped += t,
        }
    }
    let sum: f64 = per.values().sum::<f64>() + unmapped;
    let mut rows = Vec::new();
    for id in &order {
        let n = &g.nodes[*id];
        let Some(t) = per.get(&n.name) else { continue };
        let shape = n
            .output(0)
            .and_then(|o| g.value(o).shape.clone())
            .map(|s| {
                format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
            })
            .unwrap_or_default();
        let op = match &n.act {
            Some(a) => format!(
                "{}+{}",
                n.op.op_type(),
                format!("{a:?}").split([' ', '{']).next().unwrap_or("")
            ),
            None => n.op.op_type().to_string(),
        };
        rows.push(Row {
            node: n.name.clone(),
            op,
            shape,
            macs: stats::node_macs(g, n).filter(|m| *m > 0),
            ms: t * 1e3,
            share: t / sum.max(1e-12),
        });
    }
    println!(
        "{} (ONNX, kiln's evaluator: tract), {} runs after {} warm-up",
        path.display(),
        times.runs,
        warmup
    );
    println!(
        "{:<48} {:<18} {:<20} {:>12} {:>9} {:>6}",
        "layer (kiln node)", "op", "output", "MACs", "ms", "share"
    );
    for r in &rows {
        let macs = r.macs.map(|m| m.to_string()).unwrap_or_default();
        println!(
            "{:<48} {:<18} {:<20} {:>12} {:>9.3} {:>5.1}%",
            r.node,
            r.op,
            r.shape,
            macs,
            r.ms,
            r.share * 100.0
        );
    }
    if unmapped > 0.0 {
        println!(
            "{:<48} {:<18} {:<20} {:>12} {:>9.3} {:>5.1}%",
            "(evaluator's own: inputs, constants)",
            "",
            "",
            "",
            unmapped * 1e3,
            unmapped / sum.max(1e-12) * 100.0
        );
    }
    println!(
        "sum of layers {:.3} ms; end to end (median, uninstrumented) {:.3} ms; sum / end to end {:.2}",
        sum * 1e3,
        times.total * 1e3,
        sum / times.total.max(1e-12)
    );
    Ok(serde_json::json!({
        "artifact": path.display().to_string(),
        "runtime": "tract",
        "runs": times.runs,
        "warmup": warmup,
        "end_to_end_ms": times.total * 1e3,
        "sum_of_layers_ms": sum * 1e3,
        "unmapped_ms": unmapped * 1e3,
        "layers": rows,
    }))
}

fn tflite_profile(
    path: &Path,
    warmup: usize,
    runs: usize,
    threads: usize,
) -> Result<serde_json::Value> {
    let Some(tool) = profile::litert_benchmark() else {
        bail!("profiling a .tflite needs LiteRT's benchmark tool: {}", profile::LITERT_HINT);
    };
    let median = profile::tflite_median_ms(&tool, path, warmup, runs, threads)?;
    println!(
        "{} (TFLite, LiteRT via {}), {runs} runs after {warmup} warm-up, {threads} threads",
        path.display(),
        tool.display()
    );
    println!("end to end (median) {median:.3} ms");
    println!(
        "per-layer times: not available from this tool (it has no op profiling); the ONNX artifact of the \
         same target profiles per layer"
    );
    Ok(serde_json::json!({
        "artifact": path.display().to_string(),
        "runtime": "litert",
        "tool": tool.display().to_string(),
        "runs": runs,
        "threads": threads,
        "end_to_end_ms": median,
        "layers": serde_json::Value::Null,
    }))
}

/// `kiln profile --device`: a latency estimate on a device kiln does not run on.
pub struct EstimateArgs {
    pub device: String,
    pub precision: Option<String>,
    /// Estimate only.
    pub no_measure: bool,
}

/// The estimate of the ONNX model at `path` on `a.device` (compiler/src/cost.rs), printed as a per-layer
/// table; returned as JSON.
fn estimate(
    path: &Path,
    given: &[(String, PathBuf)],
    a: &EstimateArgs,
) -> Result<serde_json::Value> {
    let cost = cost::device(&a.device)?;
    let (m, _) = loaded(path, given)?;
    let precision = match &a.precision {
        Some(p) => p.clone(),
        None => {
            let g = &m.graph;
            let qdq = g
                .nodes
                .node_weights()
                .any(|n| matches!(n.op, kiln_compiler::ir::Op::QuantizeLinear { .. }));
            let half = g.values.iter().any(|v| v.dtype == kiln_compiler::ir::DType::F16);
            if qdq {
                "int8"
            } else if half {
                "fp16"
            } else {
                "fp32"
            }
            .to_string()
        }
    };
    let e = cost::estimate(&m, &a.device, &cost, &precision)?;
    println!(
        "{} on {} ({precision}, {} threads): ESTIMATED by kiln's cost model (configs/devices), not measured",
        path.display(),
        a.device,
        e.threads
    );
    println!(
        "{:<48} {:<10} {:<16} {:>12} {:>12} {:>9} {:<7}",
        "layer (kiln node)", "op", "kind", "MACs", "bytes", "est. ms", "bound"
    );
    for l in &e.layers {
        println!(
            "{:<48} {:<10} {:<16} {:>12} {:>12} {:>9.3} {:<7}",
            l.name, l.op, l.kind, l.macs, l.bytes, l.ms, l.bound
        );
    }
    println!(
        "estimated total {:.3} ms on {} (fitted on: {})",
        e.total_ms,
        a.device,
        cost.fitted_on.join("; ")
    );
    Ok(serde_json::to_value(&e)?)
}

/// `kiln profile`.
pub fn profile(
    path: PathBuf,
    inputs: Vec<String>,
    runs: usize,
    warmup: usize,
    threads: usize,
    json: Option<PathBuf>,
    est: Option<EstimateArgs>,
) -> Result<()> {
    let file = artifact(&path)?;
    let mut given = Vec::new();
    for s in &inputs {
        let (k, v) =
            s.split_once('=').ok_or_else(|| anyhow!("--input '{s}': expected NAME=FILE.npy"))?;
        given.push((k.to_string(), PathBuf::from(v)));
    }
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    if let Some(a) = &est {
        if ext != "onnx" {
            bail!(
                "{}: latency estimates read the ONNX model (a target's model.onnx, or the model.qdq.onnx a \
                 tflite int8 target writes beside its .tflite)",
                file.display()
            );
        }
        if a.no_measure {
            let e = estimate(&file, &given, a)?;
            let report =
                serde_json::json!({ "artifact": file.display().to_string(), "estimate": e });
            if let Some(j) = json {
                kiln_compiler::artifact::write_atomic(&j, &serde_json::to_vec_pretty(&report)?)?;
            }
            return Ok(());
        }
    }
    let mut report = match ext {
        "onnx" => onnx_profile(&file, &given, warmup, runs)?,
        "tflite" => tflite_profile(&file, warmup, runs, threads)?,
        "kvk" => crate::vk_run::profile(&file, &given, warmup, runs)?,
        _ => bail!("{}: not an artifact kiln profiles (.onnx, .tflite, .kvk)", file.display()),
    };
    if let Some(a) = &est {
        println!();
        let e = estimate(&file, &given, a)?;
        if let Some(o) = report.as_object_mut() {
            o.insert("estimate".into(), e);
        }
    }
    if let Some(j) = json {
        kiln_compiler::artifact::write_atomic(&j, &serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
