//! The `kiln` command line: wires kiln-passes and kiln-backends into the compiler's driver.
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use kiln_compiler::ir::{Dim, TensorData};
use kiln_compiler::{config, driver, eval, ir, npy, onnx, shape, stats};

mod profile;
mod ui;
mod vk_run;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Compile PyTorch-exported ONNX models into per-device artifacts"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build every target of a YAML config (the main job).
    Build {
        config: PathBuf,
        /// Rebuild even when the manifest says everything is up to date.
        #[arg(long)]
        force: bool,
        /// Write artifacts, report and manifest here instead of the config's `output:`.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Write a Make/Ninja depfile: OUTPUT/manifest.json depends on every file the build read.
        #[arg(long, value_name = "FILE")]
        depfile: Option<PathBuf>,
        /// Build only this target of the config (repeatable).
        #[arg(long = "target", value_name = "NAME")]
        only: Vec<String>,
        /// Print only errors.
        #[arg(short, long)]
        quiet: bool,
        /// Build up to N targets at once (default: the number of CPUs). Artifacts are the same for any N.
        #[arg(short, long, value_name = "N")]
        jobs: Option<usize>,
        /// `json`: one JSON object per line on stdout (messages, progress, artifacts, build-finished).
        #[arg(long, value_enum, default_value = "human")]
        message_format: ui::MessageFormat,
    },
    /// Describe a model: inputs/outputs, opsets, op histogram, parameters, MACs.
    Inspect {
        model: PathBuf,
        /// Pin an input's dims: NAME=D0,D1,... (unpinned symbolic dims count as 1 for MACs).
        #[arg(long = "input", value_name = "NAME=DIMS")]
        inputs: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run a model (ONNX with tract, or a Vulkan bundle: `model.kvk` or its target folder) and write each
    /// output as .npy.
    Run {
        model: PathBuf,
        /// An input tensor: NAME=FILE.npy
        #[arg(long = "input", value_name = "NAME=FILE.npy", required = true)]
        inputs: Vec<String>,
        #[arg(long)]
        output_dir: PathBuf,
    },
    /// Import, simplify, export: a drop-in for onnxsim/onnxslim (`cleanup` by default; `--passes none`
    /// is a faithful round trip).
    Optimize {
        model: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long = "input", value_name = "NAME=DIMS")]
        inputs: Vec<String>,
        /// Comma-separated pass names; `none` runs no pass (a faithful round trip).
        #[arg(long, value_delimiter = ',', default_value = "cleanup")]
        passes: Vec<String>,
        /// Write tensor data to OUTPUT.data.
        #[arg(long)]
        external_data: bool,
        /// Print the IR after every run of this pass (a pass name, or pipeline/pass).
        #[arg(long, value_name = "PASS")]
        dump_ir: Option<String>,
        /// Print every pass run, not just the top-level ones.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Post-training quantization to a QDQ ONNX model (int8 weights and activations).
    Quantize(QuantizeArgs),
    /// Measure an artifact on this host: end-to-end median and, for ONNX, a per-layer table named by kiln
    /// node (PATH: a model file or a target's output folder).
    Profile {
        path: PathBuf,
        /// An input tensor: NAME=FILE.npy (default: a deterministic ramp of the declared shape).
        #[arg(long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        #[arg(long, default_value_t = 50)]
        runs: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Threads for LiteRT (kiln's evaluator runs on one).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Also write the measurements as JSON here.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Also estimate the latency on this device (a shipped profile: pixel-3, pixel-3a; or a device
        /// profile .yaml with a `cost:` section): per layer and in total, from the ONNX model.
        #[arg(long, value_name = "NAME|FILE.yaml")]
        device: Option<String>,
        /// Precision of the estimate: fp32, fp16 or int8 (default: int8 for a model with Q/DQ, else fp32).
        #[arg(long, requires = "device")]
        precision: Option<String>,
        /// With --device: estimate only, without running the model here.
        #[arg(long, requires = "device")]
        no_measure: bool,
    },
    /// Print the IR as text.
    Dump {
        model: PathBuf,
        #[arg(long = "input", value_name = "NAME=DIMS")]
        inputs: Vec<String>,
    },
}

fn split_kv(s: &str) -> Result<(&str, &str)> {
    s.split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| anyhow!("--input '{s}': expected NAME=VALUE"))
}

fn parse_pins(inputs: &[String]) -> Result<shape::Pins> {
    let mut pins = HashMap::new();
    for s in inputs {
        let (k, v) = split_kv(s)?;
        let dims =
            v.split(',')
                .map(|d| {
                    d.trim().parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(|| {
                        anyhow!("--input '{s}': '{d}' is not a non-negative integer")
                    })
                })
                .collect::<Result<Vec<_>>>()?;
        pins.insert(k.to_string(), dims);
    }
    Ok(pins)
}

/// Pin remaining symbolic input dims to 1 (reported as an assumption).
fn pin_rest(m: &ir::Model, pins: &mut shape::Pins) -> Vec<String> {
    let mut assumed = Vec::new();
    let g = &m.graph;
    for v in g.inputs.iter().filter(|v| !g.initializers.contains(v)) {
        let val = g.value(*v);
        if pins.contains_key(&val.name) {
            continue;
        }
        if let Some(s) = &val.shape {
            if s.iter().any(|d| !matches!(d, Dim::Known(_))) {
                let dims: Vec<i64> = s.iter().map(|d| d.known().unwrap_or(1)).collect();
                for (i, d) in s.iter().enumerate() {
                    if !matches!(d, Dim::Known(_)) {
                        assumed.push(format!("{}[{i}] ({d}) = 1", val.name));
                    }
                }
                pins.insert(val.name.clone(), dims);
            }
        }
    }
    assumed
}

fn inspect(model: PathBuf, inputs: Vec<String>, json: bool) -> Result<()> {
    let mut m = onnx::load(&model)?;
    let original = stats::model_stats(&m);
    let mut pins = parse_pins(&inputs)?;
    let assumed = pin_rest(&m, &mut pins);
    shape::infer(&mut m, &pins)?;
    let mut s = stats::model_stats(&m);
    s.inputs = original.inputs;
    s.outputs = original.outputs;
    s.dynamic_dims = original.dynamic_dims;
    if json {
        let mut v = serde_json::to_value(&s)?;
        v["model"] = serde_json::Value::String(model.display().to_string());
        v["assumed_dims"] = serde_json::to_value(&assumed)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model      {}", model.display());
    println!("producer   {}  (ir_version {})", s.producer, s.ir_version);
    println!(
        "opsets     {}",
        s.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect::<Vec<_>>().join(", ")
    );
    for (kind, list) in [("input", &s.inputs), ("output", &s.outputs)] {
        for t in list {
            println!("{kind:<10} {}: {}[{}]", t.name, t.dtype, t.shape.join(", "));
        }
    }
    if !s.dynamic_dims.is_empty() {
        println!("dynamic    {}", s.dynamic_dims.join(", "));
    }
    if !assumed.is_empty() {
        println!("assumed    {} (pin with --input NAME=DIMS)", assumed.join(", "));
    }
    if !s.external_data.is_empty() {
        println!("ext. data  {}", s.external_data.join(", "));
    }
    println!("nodes      {}", s.nodes);
    println!("params     {} ({} bytes)", s.params, s.param_bytes);
    println!("MACs       {} ({})", stats::human_count(s.macs), s.macs);
    for (op, n) in &s.macs_by_op {
        println!(
            "  {op:<20} {:>12}  {:5.1}%",
            stats::human_count(*n),
            100.0 * *n as f64 / s.macs.max(1) as f64
        );
    }
    if !s.macs_unknown.is_empty() {
        println!("MACs unknown (shapes not static): {}", s.macs_unknown.join(", "));
    }
    println!("op types");
    let mut ops: Vec<_> = s.op_types.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (op, n) in ops {
        println!("  {op:<20} {n:>5}");
    }
    Ok(())
}

fn run(model: PathBuf, inputs: Vec<String>, output_dir: PathBuf) -> Result<()> {
    if let Some(bundle) = vk_run::bundle_path(&model) {
        let mut feeds = Vec::new();
        for s in &inputs {
            let (k, v) = split_kv(s)?;
            feeds.push((k.to_string(), PathBuf::from(v)));
        }
        return vk_run::run(&bundle, &feeds, &output_dir);
    }
    let mut m = onnx::load(&model)?;
    let mut tensors: Vec<(String, TensorData)> = Vec::new();
    for s in &inputs {
        let (k, v) = split_kv(s)?;
        tensors.push((k.to_string(), npy::read(&PathBuf::from(v))?));
    }
    // The data must fit the declared dims; inference with the given dims pinned also checks every op's
    // attributes against the spec before the evaluator sees them.
    for (name, t) in &tensors {
        kiln_compiler::eval::check_input(&m, name, &t.dims)?;
    }
    let pins: shape::Pins = tensors
        .iter()
        .filter(|(n, _)| m.graph.inputs.iter().any(|v| &m.graph.value(*v).name == n))
        .map(|(n, t)| (n.clone(), t.dims.clone()))
        .collect();
    shape::infer(&mut m, &pins)?;
    let budget = std::env::var("KILN_EVAL_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(600);
    let outs = eval::run_within(&m, &tensors, std::time::Duration::from_secs(budget))?;
    std::fs::create_dir_all(&output_dir)
        .with_context(|| format!("creating {}", output_dir.display()))?;
    for (name, t) in outs {
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
            .collect();
        let path = output_dir.join(format!("{safe}.npy"));
        kiln_compiler::artifact::write_atomic(&path, &npy::encode(&t)?)?;
        println!("{} {:?} -> {}", name, t.dims, path.display());
    }
    Ok(())
}

/// `kiln build`'s arguments.
struct BuildArgs {
    config: PathBuf,
    force: bool,
    out_dir: Option<PathBuf>,
    depfile: Option<PathBuf>,
    only: Vec<String>,
    quiet: bool,
    jobs: Option<usize>,
    message_format: ui::MessageFormat,
}

fn build(args: BuildArgs) -> Result<()> {
    let BuildArgs {
        config: config_path,
        force,
        out_dir,
        depfile,
        only,
        quiet,
        jobs,
        message_format,
    } = args;
    let jobs =
        jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)).max(1);
    let ui = ui::Ui::new(message_format, quiet);
    let backends = kiln_backends::all();
    let mut cfg = config::load(&config_path, &backends)?;
    if !only.is_empty() {
        let names: Vec<&str> = cfg.config.targets.iter().map(|t| t.name.as_str()).collect();
        if let Some(bad) = only.iter().find(|n| !names.contains(&n.as_str())) {
            anyhow::bail!(
                "--target {bad}: {} has no such target (it has: {})",
                config_path.display(),
                names.join(", ")
            );
        }
        let keep: Vec<bool> = names.iter().map(|n| only.iter().any(|o| o == n)).collect();
        let mut k = keep.iter();
        cfg.config.targets.retain(|_| *k.next().unwrap_or(&false));
        let mut k = keep.iter();
        cfg.rules.retain(|_| *k.next().unwrap_or(&false));
    }
    if let Some(d) = out_dir {
        // Relative to the working directory, as command-line paths are.
        cfg.config.output = std::path::absolute(&d).with_context(|| d.display().to_string())?;
    }
    let log = |s: &str| ui.log(s);
    let quantizer = kiln_passes::quant::Ptq;
    let outcome =
        driver::build(&cfg, force, &kiln_passes::make, &backends, Some(&quantizer), jobs, &log)?;
    ui.finished(&outcome, &outcome.output_dir.join("manifest.json"));
    if !outcome.failed.is_empty() {
        return Err(driver::failure(&outcome.failed).into());
    }
    if let Some(d) = depfile {
        kiln_compiler::artifact::write_atomic(&d, driver::depfile(&cfg, &outcome).as_bytes())?;
    }
    Ok(())
}

fn optimize(
    model: PathBuf,
    output: PathBuf,
    inputs: Vec<String>,
    passes: Vec<String>,
    external_data: bool,
    dump_ir: Option<String>,
    verbose: bool,
) -> Result<()> {
    let mut m = onnx::load(&model)?;
    let pins = parse_pins(&inputs)?;
    shape::infer(&mut m, &pins)?;
    let none = passes.iter().any(|p| p == "none");
    if none && passes.len() > 1 {
        anyhow::bail!("--passes none cannot be combined with other passes ({})", passes.join(","));
    }
    let passes = passes
        .iter()
        .filter(|p| *p != "none")
        .map(|p| kiln_passes::make(&config::PassSpec::Name(p.clone())))
        .collect::<kiln_compiler::Result<Vec<_>>>()?;
    let mut cx =
        kiln_compiler::pipeline::PassContext { dump_after: dump_ir.clone(), ..Default::default() };
    driver::run_passes(&mut m, &passes, &mut cx)?;
    for w in &cx.warnings {
        eprintln!("kiln: warning: {w}");
    }
    if let Some(d) = &dump_ir {
        if cx.dumps.is_empty() {
            let known: Vec<&str> = cx.records.iter().map(|r| r.pass.as_str()).collect();
            anyhow::bail!("--dump-ir {d}: no such pass ran (ran: {})", known.join(", "));
        }
        for (pass, text) in &cx.dumps {
            println!("; IR after {pass}\n{text}");
        }
    }
    for r in cx.records.iter().filter(|r| verbose || !r.pass.contains('/')) {
        eprintln!(
            "kiln: {:<12} {:>8.1} ms  nodes {} -> {}",
            r.pass, r.wall_ms, r.nodes.0, r.nodes.1
        );
    }
    let external =
        if external_data { onnx::ExternalData::Always } else { onnx::ExternalData::Auto };
    onnx::save(&m, &output, &onnx::ExportOptions { external, strip_value_info: false })?;
    Ok(())
}

fn quantize(args: QuantizeArgs) -> Result<()> {
    // Progress bars for calibration and the searches, on a terminal.
    let _ui = ui::Ui::new(ui::MessageFormat::Human, false);
    let QuantizeArgs {
        model,
        calib,
        output,
        inputs,
        other_inputs,
        method,
        percentile,
        per_tensor,
        activations,
        samples,
        imagenet,
        passes,
        bias_correction,
        cle,
        refine_ranges,
        reduce_range,
        min_calibration_sqnr_db,
    } = args;
    use kiln_passes::quant;
    if !min_calibration_sqnr_db.is_finite() {
        anyhow::bail!("--min-calibration-sqnr-db must be a number of dB");
    }
    let cle = match cle.as_str() {
        "on" => Some(true),
        "off" => Some(false),
        "auto" => None,
        other => anyhow::bail!("--cle '{other}': expected on, off or auto"),
    };
    let method = quant::params::Method::parse(&method, percentile).ok_or_else(|| {
        anyhow!("--method '{method}': expected minmax, percentile, entropy or mse")
    })?;
    let activations = match activations.as_str() {
        "int8" => ir::DType::I8,
        "uint8" => ir::DType::U8,
        other => anyhow::bail!("--activations '{other}': expected int8 or uint8"),
    };
    let refine_ranges = match refine_ranges.as_str() {
        "on" => true,
        "off" => false,
        other => anyhow::bail!("--refine-ranges '{other}': expected on or off"),
    };
    // The settings `kiln build` would use for an `onnx` int8 target with these keys.
    let settings = quant::Settings {
        method,
        per_channel: !per_tensor,
        activations,
        cle,
        bias_correction: bias_correction > 0,
        refine_ranges,
        reduce_range,
        floor_db: min_calibration_sqnr_db,
        rules: kiln_backends::onnx::int8_rules(),
    };
    use kiln_compiler::calib;
    let mut m = onnx::load(&model)?;
    let source = if calib.is_dir() {
        let preprocess = if imagenet {
            calib::Preprocess {
                resize: Some(256),
                crop: Some(224),
                mean: vec![0.485, 0.456, 0.406],
                std: vec![0.229, 0.224, 0.225],
                ..Default::default()
            }
        } else {
            calib::Preprocess::default()
        };
        calib::Source::Images { dir: calib.clone(), preprocess }
    } else {
        calib::Source::Tensors(calib.clone())
    };
    let data = calib::data::load(&source, samples)?;
    let input = m.graph.data_input_name().ok_or_else(|| anyhow!("the model has no input"))?;
    for d in &data {
        kiln_compiler::eval::check_input(&m, &input, &d.dims).map_err(|e| {
            let hint = if calib.is_dir() {
                " (images: --imagenet resizes to 256 and crops 224)"
            } else {
                ""
            };
            anyhow!("--calib {}: {e}{hint}", calib.display())
        })?;
    }
    for spec in &other_inputs {
        let (name, file) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--other-input {spec}: expected NAME=FILE.npy"))?;
        let parts = calib::data::load(&calib::Source::Tensors(PathBuf::from(file)), usize::MAX)?;
        if parts.len() < data.len() {
            anyhow::bail!(
                "--other-input {spec}: {} samples for {} calibration samples",
                parts.len(),
                data.len()
            );
        }
        if let Some(t) = parts.first() {
            kiln_compiler::eval::check_input(&m, name, &t.dims)
                .map_err(|e| anyhow!("--other-input {spec}: {e}"))?;
        }
        for (d, t) in data.iter().zip(parts) {
            kiln_compiler::eval::register_companions(d, vec![(name.to_string(), t)]);
        }
    }
    let mut pins = parse_pins(&inputs)?;
    if let Some(first) = data.first() {
        pins.entry(input.clone()).or_insert_with(|| first.dims.clone());
    }
    shape::infer(&mut m, &pins)?;
    let passes = passes
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| kiln_passes::make(&config::PassSpec::Name(p.clone())))
        .collect::<kiln_compiler::Result<Vec<_>>>()?;
    let mut cx = kiln_compiler::pipeline::PassContext::default();
    driver::run_passes(&mut m, &passes, &mut cx)?;
    for w in &cx.warnings {
        eprintln!("kiln: warning: {w}");
    }
    let calibrate = |m: &ir::Model| {
        let t0 = std::time::Instant::now();
        let stats = calib::collect_with(m, &input, &data, false)?;
        eprintln!(
            "kiln: calibrated on {} samples in {:.1} s",
            stats.samples,
            t0.elapsed().as_secs_f64()
        );
        Ok(stats)
    };
    let t0 = std::time::Instant::now();
    let (m, s, _) = quant::quantize(&m, &settings, &calibrate, &input, &data, None)?;
    let secs = t0.elapsed().as_secs_f64();
    if settings.cle.unwrap_or(true) {
        match &s.cle_skipped {
            Some(why) => eprintln!("kiln: equalization skipped: {why}"),
            None => eprintln!("kiln: equalization: {} residual streams, {} conv pairs rescaled (float output moved {:.1e})", s.cle_streams_equalized, s.cle_pairs_equalized, s.cle_float_max_rel_diff),
        }
    }
    let r = &s.range_refinement;
    if let Some(why) = &r.skipped {
        eprintln!("kiln: range refinement skipped (calibrated ranges kept): {why}");
    }
    if !r.streams.is_empty() {
        let moved: Vec<String> = r
            .streams
            .iter()
            .filter(|s| s.factor != 1.0)
            .map(|s| format!("{} ×{}", s.first, s.factor))
            .collect();
        let (a, b) = (
            r.streams.first().map_or(0.0, |s| s.sqnr_db_before),
            r.streams.last().map_or(0.0, |s| s.sqnr_db_after),
        );
        eprintln!("kiln: range refinement: {} residual streams, {} narrowed [{}]; output SQNR on calibration samples {a:.2} → {b:.2} dB", r.streams.len(), moved.len(), moved.join(", "));
    }
    if s.qat_scales_kept {
        eprintln!(
            "kiln: the model carries Q/DQ from quantization-aware training: its scales are kept"
        );
    }
    eprintln!(
        "kiln: quantized {} weights, {} biases, {} activations; bias-corrected {} layers; {} dead channels snapped to the grid ({secs:.1} s in all)",
        s.quantized_weights,
        s.quantized_biases,
        s.quantized_activations,
        s.bias_corrected_layers,
        s.dead_channels_snapped,
    );
    for (name, f) in &s.range_fallbacks {
        eprintln!(
            "kiln: range of '{name}': {} → {} ({}; threshold {:.4} → {:.4})",
            method, f.method, f.reason, f.searched, f.used
        );
    }
    let g = &s.quality_guard;
    eprintln!("kiln: output SQNR (median of {} calibration samples) {:.2} dB, top-1 agreement {:.2} (floor {} dB)", g.samples, g.sqnr_db, g.top1_agreement, g.floor_db);
    match g.repair.as_str() {
        "range_fallback" => eprintln!("kiln: repaired by per-tensor range fallback on {} tensors: {:.2} dB, top-1 agreement {:.2}", g.range_fallbacks.len(), g.sqnr_db_after, g.top1_agreement_after),
        "kept_float" => eprintln!(
            "kiln: repaired by keeping {} activations in float [{}]: {:.2} dB, top-1 agreement {:.2}",
            g.kept_float.len(),
            g.kept_float.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
            g.sqnr_db_after,
            g.top1_agreement_after
        ),
        _ => {}
    }
    eprintln!("kiln: kernels: {}", s.kernel_family);
    onnx::save(&m, &output, &onnx::ExportOptions::default())?;
    Ok(())
}

fn dump(model: PathBuf, inputs: Vec<String>) -> Result<()> {
    let mut m = onnx::load(&model)?;
    let pins = parse_pins(&inputs)?;
    shape::infer(&mut m, &pins)?;
    print!("{}", ir::dump::dump_model(&m));
    Ok(())
}

/// `kiln quantize` arguments.
#[derive(clap::Args)]
struct QuantizeArgs {
    model: PathBuf,
    /// Calibration data: a folder of images or an .npy of samples along axis 0.
    #[arg(long)]
    calib: PathBuf,
    #[arg(short, long)]
    output: PathBuf,
    #[arg(long = "input", value_name = "NAME=DIMS")]
    inputs: Vec<String>,
    /// The model's other inputs (a carried RNN state, a mask): an .npy per input, sample i fed with
    /// calibration sample i.
    #[arg(long = "other-input", value_name = "NAME=NPY")]
    other_inputs: Vec<String>,
    /// minmax | percentile | entropy | mse
    #[arg(long, default_value = "entropy")]
    method: String,
    #[arg(long)]
    percentile: Option<f64>,
    /// Per-tensor weight scales (default: per output channel).
    #[arg(long)]
    per_tensor: bool,
    /// int8 | uint8
    #[arg(long, default_value = "int8")]
    activations: String,
    /// Use at most this many calibration samples.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// ImageNet preprocessing for image folders: resize 256, center crop 224, ImageNet mean/std, NCHW.
    #[arg(long)]
    imagenet: bool,
    /// Empirical bias correction (1: on, 0: off).
    #[arg(long, default_value_t = 1)]
    bias_correction: usize,
    /// Passes to run before quantizing.
    #[arg(long, value_delimiter = ',', default_value = "cleanup,fuse")]
    passes: Vec<String>,
    /// Equalization before quantization (residual streams and conv pairs): on | off | auto (on unless it
    /// would change the float model, as in `kiln build`).
    #[arg(long, default_value = "auto")]
    cle: String,
    /// Loss-aware range refinement of residual streams, chosen on the calibration samples: on | off.
    #[arg(long, default_value = "on")]
    refine_ranges: String,
    /// 7-bit weights (|q| <= 64) for x86 int8 kernels without VNNI, whose 16-bit pair sums saturate.
    #[arg(long)]
    reduce_range: bool,
    /// The quality guard's floor on the output SQNR (dB) on calibration samples: below it kiln repairs the
    /// model (per-tensor range fallback, then activations kept in float) or fails without writing it.
    #[arg(long, default_value_t = kiln_passes::quant::guard::DEFAULT_FLOOR_DB)]
    min_calibration_sqnr_db: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `profile:` in a build measures Vulkan bundles with kiln's own runtime.
    kiln_compiler::profile::register_runner("kvk", "kiln-vk", vk_run::median_ms);
    let r = match cli.cmd {
        Cmd::Build { config, force, out_dir, depfile, only, quiet, jobs, message_format } => {
            build(BuildArgs { config, force, out_dir, depfile, only, quiet, jobs, message_format })
        }
        Cmd::Inspect { model, inputs, json } => inspect(model, inputs, json),
        Cmd::Run { model, inputs, output_dir } => run(model, inputs, output_dir),
        Cmd::Dump { model, inputs } => dump(model, inputs),
        Cmd::Profile {
            path,
            inputs,
            runs,
            warmup,
            threads,
            json,
            device,
            precision,
            no_measure,
        } => {
            let estimate =
                device.map(|d| profile::EstimateArgs { device: d, precision, no_measure });
            profile::profile(path, inputs, runs, warmup, threads, json, estimate)
        }
        Cmd::Quantize(args) => quantize(args),
        Cmd::Optimize { model, output, inputs, passes, external_data, dump_ir, verbose } => {
            optimize(model, output, inputs, passes, external_data, dump_ir, verbose)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
