//! `kiln run` on a Vulkan bundle (`model.kvk`, or a target folder holding one): runs it with the kiln-vk
//! runtime and writes each output as `.npy` named after the model's outputs. An input file may hold
//! several samples stacked along a new first axis (rank one more than the input's), or, for a batch-1
//! input, along its batch axis: each runs in turn and the outputs stack the same way. `KILN_VK_VALIDATION=1` turns the Khronos validation layer on; any
//! validation error then fails the command; `KILN_VK_PROFILE=1` prints each step's time. Timings (load, pipelines, first and median run) go to stderr.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use kiln_compiler::ir::{DType, TensorData};
use kiln_compiler::npy;
use kiln_vk::{LoadOptions, Session};

/// The bundle `path` names: the file itself, or `model.kvk` in a folder.
pub fn bundle_path(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        let p = path.join("model.kvk");
        return p.is_file().then_some(p);
    }
    (path.extension().and_then(|e| e.to_str()) == Some("kvk")).then(|| path.to_path_buf())
}

fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect()
}

pub fn run(bundle: &Path, inputs: &[(String, PathBuf)], output_dir: &Path) -> Result<()> {
    let opts = LoadOptions {
        pipeline_cache: std::env::var_os("KILN_VK_PIPELINE_CACHE").map(PathBuf::from),
        validation: std::env::var("KILN_VK_VALIDATION").is_ok_and(|v| v == "1"),
    };
    let mut s = Session::load_file(bundle, &opts)
        .with_context(|| format!("loading Vulkan bundle {}", bundle.display()))?;
    // Each input as f32 samples.
    let mut samples: Option<usize> = None;
    let mut stacked = false;
    let mut along_batch = false;
    let mut feeds: Vec<(usize, Vec<f32>)> = Vec::new();
    for (name, file) in inputs {
        let i = s.input_index(name).ok_or_else(|| {
            let names: Vec<&str> = s.inputs().iter().map(|t| t.name.as_str()).collect();
            anyhow!("the bundle has no input '{name}' (its inputs: {})", names.join(", "))
        })?;
        let t = npy::read(file)?;
        let want: Vec<i64> = s.inputs()[i].shape.iter().map(|d| *d as i64).collect();
        let n = if t.dims == want {
            1
        } else if t.dims.len() == want.len() + 1 && t.dims[1..] == want[..] {
            stacked = true;
            t.dims[0].max(0) as usize
        } else if want.first() == Some(&1) && t.dims.len() == want.len() && t.dims[1..] == want[1..]
        {
            // Batch-1 input: the samples along its batch axis.
            along_batch = true;
            t.dims[0].max(0) as usize
        } else {
            bail!("{}: shape {:?} is neither the input's {:?} nor samples of it stacked on a new first axis", file.display(), t.dims, want);
        };
        if samples.is_some_and(|k| k != n) {
            bail!("inputs hold different numbers of samples");
        }
        samples = Some(n);
        let vals = t.to_f32_vec().ok_or_else(|| {
            anyhow!("{}: {} data cannot feed the bundle", file.display(), t.dtype)
        })?;
        feeds.push((i, vals));
    }
    if feeds.len() != s.inputs().len() {
        let names: Vec<&str> = s.inputs().iter().map(|t| t.name.as_str()).collect();
        bail!("give every input of the bundle ({}) with --input NAME=FILE.npy", names.join(", "));
    }
    let n = samples.unwrap_or(1);
    let outs: Vec<(String, DType, Vec<i64>, usize)> = s
        .outputs()
        .iter()
        .map(|t| {
            let dtype = if t.dtype == "i64" { DType::I64 } else { DType::F32 };
            let dims: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
            (t.name.clone(), dtype, dims, t.shape.iter().product::<u64>() as usize)
        })
        .collect();
    let mut results: Vec<Vec<f32>> = outs.iter().map(|o| Vec::with_capacity(o.3 * n)).collect();
    let mut times = Vec::with_capacity(n);
    for k in 0..n {
        for (i, vals) in &feeds {
            let len = vals.len() / n;
            s.set_input(*i, &vals[k * len..(k + 1) * len])?;
        }
        let t0 = Instant::now();
        s.run()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        for (o, r) in results.iter_mut().enumerate() {
            r.extend_from_slice(s.output(o)?);
        }
    }
    if std::env::var("KILN_VK_PROFILE").is_ok_and(|v| v == "1") {
        let t = s.profile(5)?;
        let total: f64 = t.iter().sum();
        let mut by_kernel: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
        eprintln!("profile (median of 5, each step submitted alone): {total:.2} ms");
        for (st, ms) in s.manifest().steps.iter().zip(&t) {
            let k = s
                .manifest()
                .modules
                .get(st.module as usize)
                .map(|m| m.name.clone())
                .unwrap_or_default();
            eprintln!(
                "  {ms:8.3} ms  {:<5.1}%  {:<14} {:<12} {}",
                100.0 * ms / total.max(1e-9),
                k,
                st.op,
                st.node
            );
            let e = by_kernel.entry(k).or_default();
            e.0 += ms;
            e.1 += 1;
        }
        for (k, (ms, n)) in by_kernel {
            eprintln!(
                "  kernel {k:<14} {n:>4} steps {ms:8.3} ms  {:5.1}%",
                100.0 * ms / total.max(1e-9)
            );
        }
    }
    let (errors, messages) = s.validation_messages();
    if opts.validation {
        eprintln!("validation: {errors} error(s)");
        for m in &messages {
            eprintln!("  {m}");
        }
        if errors > 0 {
            bail!("the Vulkan validation layer reported {errors} error(s)");
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    eprintln!(
        "device: {}; load {:.1} ms (pipelines {:.1} ms); first run {:.2} ms; median run {:.2} ms over {}; {} dispatches",
        s.device_name(),
        s.load_ms(),
        s.pipeline_ms(),
        s.first_run_ms().unwrap_or(0.0),
        sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        sorted.len(),
        s.dispatches()
    );
    std::fs::create_dir_all(output_dir)
        .with_context(|| format!("creating {}", output_dir.display()))?;
    for ((name, dtype, dims, _), vals) in outs.iter().zip(results) {
        let mut d = dims.clone();
        if along_batch && !stacked && d.first() == Some(&1) {
            d[0] = n as i64;
        } else if stacked || along_batch {
            d.insert(0, n as i64);
        }
        let t = match dtype {
            DType::I64 => TensorData::from_i64(
                d.clone(),
                &vals.iter().map(|v| v.round() as i64).collect::<Vec<_>>(),
            ),
            _ => TensorData::from_f32(d.clone(), &vals),
        };
        let path = output_dir.join(format!("{}.npy", safe_name(name)));
        kiln_compiler::artifact::write_atomic(&path, &npy::encode(&t)?)?;
        println!("{name} {d:?} -> {}", path.display());
    }
    Ok(())
}

/// `kiln profile` of a bundle: end-to-end median of `runs` whole runs, and each dispatch's median GPU
/// time (submitted alone), grouped by the IR node it computes. Inputs from `.npy` files or a ramp.
pub fn profile(
    bundle: &Path,
    inputs: &[(String, PathBuf)],
    warmup: usize,
    runs: usize,
) -> Result<serde_json::Value> {
    let opts = LoadOptions {
        pipeline_cache: std::env::var_os("KILN_VK_PIPELINE_CACHE").map(PathBuf::from),
        validation: false,
    };
    let mut s = Session::load_file(bundle, &opts)
        .with_context(|| format!("loading Vulkan bundle {}", bundle.display()))?;
    for i in 0..s.inputs().len() {
        let (name, n) = {
            let t = &s.inputs()[i];
            (t.name.clone(), t.shape.iter().product::<u64>() as usize)
        };
        let vals: Vec<f32> = match inputs.iter().find(|(k, _)| *k == name) {
            Some((_, f)) => npy::read(f)?
                .to_f32_vec()
                .ok_or_else(|| anyhow!("{}: not float data", f.display()))?,
            None => (0..n).map(|k| ((k * 7919 % 255) as f32 / 255.0) - 0.5).collect(),
        };
        if vals.len() != n {
            bail!("input '{name}' needs {n} values, got {}", vals.len());
        }
        s.set_input(i, &vals)?;
    }
    for _ in 0..warmup {
        s.run()?;
    }
    let runs = runs.max(1);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        s.run()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let total = times[times.len() / 2];
    let steps = s.profile(runs)?;
    let mut rows: Vec<(String, String, f64, usize)> = Vec::new();
    for (st, ms) in s.manifest().steps.iter().zip(&steps) {
        match rows.iter_mut().find(|r| r.0 == st.node) {
            Some(r) => {
                r.2 += ms;
                r.3 += 1;
            }
            None => rows.push((st.node.clone(), st.op.clone(), *ms, 1)),
        }
    }
    let sum: f64 = rows.iter().map(|r| r.2).sum();
    println!(
        "{} (Vulkan, kiln-vk on {}), {runs} runs after {warmup} warm-up; per layer: GPU time of its dispatches, each submitted alone",
        bundle.display(),
        s.device_name()
    );
    println!(
        "{:<48} {:<18} {:>10} {:>9} {:>6}",
        "layer (kiln node)", "op", "dispatches", "ms", "share"
    );
    for (node, op, ms, n) in &rows {
        println!("{node:<48} {op:<18} {n:>10} {ms:>9.3} {:>5.1}%", 100.0 * ms / sum.max(1e-12));
    }
    println!(
        "sum of layers {sum:.3} ms; end to end (median, whole plan) {total:.3} ms; sum / end to end {:.2}",
        sum / total.max(1e-12)
    );
    Ok(serde_json::json!({
        "artifact": bundle.display().to_string(),
        "runtime": "kiln-vk",
        "device": s.device_name(),
        "runs": runs,
        "warmup": warmup,
        "end_to_end_ms": total,
        "sum_of_layers_ms": sum,
        "layers": rows.iter().map(|(node, op, ms, n)| serde_json::json!({
            "node": node, "op": op, "dispatches": n, "ms": ms, "share": ms / sum.max(1e-12),
        })).collect::<Vec<_>>(),
    }))
}

/// The build profiler's runner for `.kvk` bundles (`kiln_compiler::profile::register_runner`): the median
/// of `runs` whole runs on the system's Vulkan driver, fed `feeds` by input name (else a ramp).
pub fn median_ms(
    bundle: &Path,
    feeds: &[(String, TensorData)],
    warmup: usize,
    runs: usize,
) -> std::result::Result<f64, String> {
    let go = || -> Result<f64> {
        let opts = LoadOptions {
            pipeline_cache: std::env::var_os("KILN_VK_PIPELINE_CACHE").map(PathBuf::from),
            validation: false,
        };
        let mut s = Session::load_file(bundle, &opts)?;
        for i in 0..s.inputs().len() {
            let (name, n) = {
                let t = &s.inputs()[i];
                (t.name.clone(), t.shape.iter().product::<u64>() as usize)
            };
            let vals =
                match feeds.iter().find(|(k, _)| *k == name).and_then(|(_, t)| t.to_f32_vec()) {
                    Some(v) if v.len() == n => v,
                    _ => (0..n).map(|k| ((k * 7919 % 255) as f32 / 255.0) - 0.5).collect(),
                };
            s.set_input(i, &vals)?;
        }
        for _ in 0..warmup {
            s.run()?;
        }
        let mut times = Vec::with_capacity(runs.max(1));
        for _ in 0..runs.max(1) {
            let t0 = Instant::now();
            s.run()?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    };
    go().map_err(|e| format!("the Vulkan runtime could not run it here: {e:#}"))
}
