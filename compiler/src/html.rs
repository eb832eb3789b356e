//! `OUTPUT/report.html`: the build report for people, one self-contained file (inline CSS and SVG, no
//! script, no request to anything). A typed view is built from the typed [`Report`] — every number
//! formatted and every bar sized here — and laid out by one template (`report.html.j2`, minijinja, HTML
//! auto-escaped), so the page says exactly what report.json says.
use serde::Serialize;

use crate::driver::Report;
use crate::error::{Error, Result};
use crate::stats::{human_bytes, human_count as count};

const TEMPLATE: &str = include_str!("report.html.j2");

#[derive(Serialize)]
struct View {
    version: &'static str,
    config: String,
    model_path: String,
    producer: String,
    model: Vec<(String, String, String)>,
    budget: Option<String>,
    targets: Vec<TargetRow>,
    passes: Vec<PassRow>,
    stages: Vec<Bar>,
    total_seconds: String,
    sqnr: Vec<SqnrTable>,
    npu: Vec<NpuMap>,
    calibration: Option<String>,
    validation: Option<String>,
    failed: Vec<(String, String)>,
    profile: Vec<ProfileRow>,
}

#[derive(Serialize)]
struct ProfileRow {
    stage: String,
    artifact: Option<String>,
    runtime: String,
    latency: String,
    ratio: String,
    size: String,
    macs: String,
    agreement: String,
    note: Option<String>,
    estimated: String,
}

#[derive(Serialize)]
struct TargetRow {
    name: String,
    backend: String,
    precision: String,
    artifact: String,
    size: String,
    vs_input: String,
    agreement: String,
    cosine: String,
    sqnr: String,
    /// "met", "missed" or "" (no budget or not measured).
    budget: &'static str,
    seconds: String,
    failed: bool,
}

#[derive(Serialize)]
struct PassRow {
    pass: String,
    ms: String,
    width: f64,
    nodes: String,
    params: String,
    macs: String,
}

#[derive(Serialize)]
struct Bar {
    label: String,
    value: String,
    width: f64,
}

#[derive(Serialize)]
struct SqnrTable {
    target: String,
    kept_float: usize,
    rows: Vec<SqnrRow>,
}

#[derive(Serialize)]
struct SqnrRow {
    node: String,
    db: String,
    width: f64,
    class: &'static str,
    float: bool,
}

#[derive(Serialize)]
struct NpuMap {
    target: String,
    device: String,
    summary: String,
    /// One cell per op: x offset and whether the NPU runs it.
    cells: Vec<(usize, bool)>,
    width: usize,
    fallback: String,
}

fn change(a: u64, b: u64) -> String {
    if a == b {
        count(a)
    } else {
        format!("{} → {}", count(a), count(b))
    }
}

fn view(r: &Report) -> View {
    let opt = |v: Option<f64>, d: usize| v.map_or("–".to_string(), |x| format!("{x:.d$}"));
    let b = &r.budget;
    let mut budget = Vec::new();
    if let Some(x) = b.min_top1_agreement {
        budget.push(format!("top-1 agreement ≥ {x}"));
    }
    if let Some(x) = b.min_cosine {
        budget.push(format!("cosine ≥ {x}"));
    }
    if let Some(x) = b.max_accuracy_drop {
        budget.push(format!("accuracy drop ≤ {x}"));
    }
    let targets = r
        .summary
        .iter()
        .map(|s| {
            let acc = r.accuracy.get(&s.target);
            let budget = match acc {
                Some(m) if !budget.is_empty() => {
                    let drop = match (m.accuracy_reference, m.accuracy) {
                        (Some(a), Some(q)) => a - q,
                        _ => 0.0,
                    };
                    let met = b.min_top1_agreement.is_none_or(|x| m.top1_agreement >= x)
                        && b.min_cosine.is_none_or(|x| m.mean_cosine >= x)
                        && b.max_accuracy_drop.is_none_or(|x| drop <= x);
                    if met {
                        "met"
                    } else {
                        "missed"
                    }
                }
                _ => "",
            };
            TargetRow {
                name: s.target.clone(),
                backend: s.backend.clone(),
                precision: s.precision.clone(),
                artifact: s.artifact.clone().unwrap_or_else(|| "–".into()),
                size: if s.failed.is_some() { "–".into() } else { human_bytes(s.bytes) },
                vs_input: if s.failed.is_some() {
                    "–".into()
                } else {
                    format!("{:.2}×", s.vs_input)
                },
                agreement: opt(s.top1_agreement, 3),
                cosine: opt(s.mean_cosine, 4),
                sqnr: opt(acc.map(|m| m.sqnr_db), 1),
                budget,
                seconds: format!("{:.1} s", s.seconds),
                failed: s.failed.is_some(),
            }
        })
        .collect();
    let top: Vec<_> = r.passes.iter().filter(|p| !p.pass.contains('/')).collect();
    let max_ms = top.iter().map(|p| p.wall_ms).fold(0.0f64, f64::max).max(1e-9);
    let passes = top
        .iter()
        .map(|p| PassRow {
            pass: p.pass.clone(),
            ms: format!("{:.1} ms", p.wall_ms),
            width: 100.0 * p.wall_ms / max_ms,
            nodes: change(p.nodes.0 as u64, p.nodes.1 as u64),
            params: change(p.params.0, p.params.1),
            macs: change(p.macs.0, p.macs.1),
        })
        .collect();
    let t = &r.timings;
    let mut stages = vec![
        ("import".to_string(), t.import),
        ("passes".to_string(), t.passes),
        ("calibration".to_string(), t.calibration),
        ("fp32 reference on the validation data".to_string(), t.reference),
    ];
    // A target's stages where they took time (a float target's prepare and validate are empty).
    for (name, s) in &t.targets {
        for (stage, secs) in [("prepare", s.prepare), ("validate", s.validate), ("emit", s.emit)] {
            if secs >= 0.005 || stage == "emit" {
                stages.push((format!("{name}: {stage}"), secs));
            }
        }
    }
    let max_s = stages.iter().map(|s| s.1).fold(0.0f64, f64::max).max(1e-9);
    let stages = stages
        .into_iter()
        .map(|(label, s)| Bar { label, value: format!("{s:.2} s"), width: 100.0 * s / max_s })
        .collect();
    let sqnr = r
        .layer_sqnr
        .iter()
        .map(|(target, rows)| SqnrTable {
            target: target.clone(),
            kept_float: rows.iter().filter(|l| l.float).count(),
            rows: rows
                .iter()
                .map(|l| SqnrRow {
                    node: if l.node.is_empty() { l.layer.clone() } else { l.node.clone() },
                    db: format!("{:.1} dB", l.sqnr_db),
                    // 0 to 60 dB across the bar.
                    width: (100.0 * l.sqnr_db / 60.0).clamp(0.5, 100.0),
                    class: match l.sqnr_db {
                        d if d < 10.0 => "bad",
                        d if d < 20.0 => "warn",
                        _ => "good",
                    },
                    float: l.float,
                })
                .collect(),
        })
        .collect();
    let npu = r
        .backend
        .iter()
        .filter_map(|(target, s)| {
            let placement = s.get("placement")?.as_str()?;
            let cells: Vec<(usize, bool)> =
                placement.chars().enumerate().map(|(i, c)| (i * 9, c == 'N')).collect();
            Some(NpuMap {
                target: target.clone(),
                device: s.get("device").and_then(|d| d.as_str()).unwrap_or_default().to_string(),
                summary: format!(
                    "{} of {} ops on the NPU in {} partition(s), {:.0} % of MACs",
                    s.get("ops_on_npu").and_then(|v| v.as_u64()).unwrap_or(0),
                    s.get("ops_total").and_then(|v| v.as_u64()).unwrap_or(0),
                    s.get("partitions").and_then(|v| v.as_u64()).unwrap_or(0),
                    100.0 * s.get("npu_mac_share").and_then(|v| v.as_f64()).unwrap_or(0.0)
                ),
                width: cells.len() * 9,
                cells,
                fallback: s
                    .get("fallback_point")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
            })
        })
        .collect();
    let calibration = r.calibration.as_ref().map(|c| {
        format!(
            "{} samples, {} ({:.1} s)",
            c.samples,
            if c.cached { "statistics from the cache" } else { "statistics computed" },
            c.seconds
        )
    });
    let validation = r.accuracy.values().next().map(|m| {
        format!("{} samples{}", m.samples, if m.accuracy.is_some() { ", labelled" } else { "" })
    });
    let (a, o) = (&r.model, &r.optimized);
    View {
        version: crate::driver::KILN_VERSION,
        config: r.config.clone(),
        model_path: r.model_path.clone(),
        producer: a.producer.clone(),
        model: vec![
            ("nodes".into(), count(a.nodes as u64), count(o.nodes as u64)),
            ("parameters".into(), count(a.params), count(o.params)),
            ("parameter bytes".into(), human_bytes(a.param_bytes), human_bytes(o.param_bytes)),
            ("MACs".into(), count(a.macs), count(o.macs)),
        ],
        budget: (!budget.is_empty()).then(|| budget.join(", ")),
        targets,
        passes,
        stages,
        total_seconds: format!("{:.1} s", t.total),
        sqnr,
        npu,
        calibration,
        validation,
        failed: r.failed.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        profile: profile_rows(r),
    }
}

fn profile_rows(r: &Report) -> Vec<ProfileRow> {
    let base = r.profile.first().and_then(|p| p.latency_ms);
    r.profile
        .iter()
        .map(|p| ProfileRow {
            stage: p.stage.clone(),
            artifact: p.artifact.clone(),
            runtime: p.runtime.clone().unwrap_or_else(|| "–".into()),
            latency: p.latency_ms.map_or("–".into(), |ms| format!("{ms:.2} ms")),
            ratio: match (p.latency_ms, base) {
                (Some(ms), Some(b)) if b > 0.0 => format!("{:.2}×", ms / b),
                _ => "–".into(),
            },
            size: p.bytes.map_or("–".into(), human_bytes),
            macs: count(p.macs),
            agreement: p.top1_agreement.map_or("–".into(), |a| format!("{a:.3}")),
            note: p.note.clone(),
            estimated: match (&p.device, p.estimated_ms) {
                (Some(d), Some(ms)) => format!("{ms:.2} ms on {d}"),
                _ => "–".into(),
            },
        })
        .collect()
}

/// The page for `report`.
pub fn render(report: &Report) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_template("report.html", TEMPLATE)
        .map_err(|e| Error::invalid(format!("report.html template: {e}")))?;
    let t = env
        .get_template("report.html")
        .map_err(|e| Error::invalid(format!("report.html template: {e}")))?;
    t.render(minijinja::Value::from_serialize(view(report)))
        .map_err(|e| Error::invalid(format!("report.html: {e}")))
}
