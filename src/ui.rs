//! What `kiln build` shows: log lines, progress bars for long stages (only on a terminal), the summary
//! table at the end, or, with `--message-format json`, one JSON object per line on stdout (cargo's
//! convention: every object has a `reason`) for tools that read kiln's events.
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_compiler::driver::{Outcome, SummaryRow};
use kiln_compiler::progress::Sink;
use kiln_compiler::stats::human_bytes;
use serde_json::json;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageFormat {
    Human,
    Json,
}

pub struct Ui {
    format: MessageFormat,
    quiet: bool,
    bars: Option<MultiProgress>,
}

/// One JSON event on stdout (whole lines, so readers can split on newlines).
fn emit(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

impl Ui {
    /// Installs the progress sink this mode shows: bars on a terminal (human, not quiet), events in
    /// JSON mode, nothing otherwise (pipes and CI logs get plain lines).
    pub fn new(format: MessageFormat, quiet: bool) -> Ui {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let bars = (format == MessageFormat::Human && !quiet && tty)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        if let Some(m) = &bars {
            kiln_compiler::progress::install(Box::new(Bars {
                multi: m.clone(),
                bars: Mutex::new(HashMap::new()),
            }));
        } else if format == MessageFormat::Json {
            kiln_compiler::progress::install(Box::new(JsonProgress));
        }
        Ui { format, quiet, bars }
    }

    /// A line of what the build is doing.
    pub fn log(&self, line: &str) {
        match (self.format, self.quiet, &self.bars) {
            (MessageFormat::Json, _, _) => emit(json!({ "reason": "message", "message": line })),
            (_, true, _) => {}
            (_, false, Some(m)) => {
                let _ = m.println(format!("kiln: {line}"));
            }
            (_, false, None) => eprintln!("kiln: {line}"),
        }
    }

    /// The end of a build: the summary table (human) or the artifact and build-finished events (JSON).
    pub fn finished(&self, o: &Outcome, manifest_path: &std::path::Path) {
        if self.format == MessageFormat::Json {
            for a in &o.manifest.artifacts {
                emit(
                    json!({ "reason": "artifact", "target": a.target, "path": a.path, "bytes": a.bytes, "sha256": a.sha256 }),
                );
            }
            emit(json!({
                "reason": "build-finished",
                "success": o.failed.is_empty(),
                "up_to_date": o.up_to_date,
                "output_dir": o.output_dir,
                "manifest": manifest_path,
                "summary": o.summary,
                "timings": o.timings,
                "failed": o.failed,
            }));
            return;
        }
        if self.quiet {
            return;
        }
        if o.up_to_date {
            println!(
                "up to date: {} ({} artifacts)",
                o.output_dir.display(),
                o.manifest.artifacts.len()
            );
        }
        print!("{}", table(&o.summary));
        if let Some(t) = &o.timings {
            println!(
                "time: import {:.1} s, passes {:.1} s, calibration {:.1} s, fp32 reference {:.1} s, total {:.1} s",
                t.import, t.passes, t.calibration, t.reference, t.total
            );
            for (name, tt) in &t.targets {
                let mut line = format!(
                    "  {name}: prepare {:.1} s, validate {:.1} s, emit {:.1} s",
                    tt.prepare, tt.validate, tt.emit
                );
                // In the order they run.
                const ORDER: [&str; 6] = [
                    "equalization",
                    "calibration",
                    "range_refinement",
                    "build",
                    "mixed_precision",
                    "quality_guard",
                ];
                let rank = |k: &str| ORDER.iter().position(|o| *o == k).unwrap_or(ORDER.len());
                let mut stages: Vec<(&String, &f64)> =
                    tt.stages.iter().filter(|(_, s)| **s >= 0.05).collect();
                stages.sort_by_key(|(k, _)| rank(k));
                let stages: Vec<String> = stages
                    .iter()
                    .map(|(k, s)| format!("{} {s:.1} s", k.replace('_', " ")))
                    .collect();
                if !stages.is_empty() {
                    line.push_str(&format!(
                        " (quantization, calibration included: {})",
                        stages.join(", ")
                    ));
                }
                println!("{line}");
            }
        }
        println!("wrote {}", manifest_path.display());
    }
}

/// The summary table: target, artifact, size, size against the input model, accuracy, time.
pub fn table(rows: &[SummaryRow]) -> String {
    let head = [
        "target",
        "backend",
        "precision",
        "artifact",
        "size",
        "vs input",
        "agreement",
        "cosine",
        "time",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            let opt = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |x| format!("{x:.d$}"));
            [
                r.target.clone(),
                r.backend.clone(),
                r.precision.clone(),
                match (&r.failed, &r.artifact) {
                    (Some(_), _) => "FAILED".into(),
                    (None, Some(a)) => a.clone(),
                    (None, None) => "-".into(),
                },
                if r.failed.is_some() { "-".into() } else { human_bytes(r.bytes) },
                if r.failed.is_some() { "-".into() } else { format!("{:.2}x", r.vs_input) },
                opt(r.top1_agreement, 3),
                opt(r.mean_cosine, 4),
                format!("{:.1} s", r.seconds),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: &[String]| -> String {
        let mut s = String::new();
        for (i, (x, w)) in c.iter().zip(width).enumerate() {
            // Text columns left, numbers right.
            if i < 4 {
                s.push_str(&format!("{x:<w$}  "));
            } else {
                s.push_str(&format!("{x:>w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&head.map(String::from));
    out.push_str(&line(&width.map(|w| "-".repeat(w))));
    for c in &cells {
        out.push_str(&line(c));
    }
    out
}

/// Progress bars on a terminal, one per running stage.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<u64, ProgressBar>>,
}

impl Sink for Bars {
    fn start(&self, id: u64, stage: &str, total: u64) {
        let style =
            ProgressStyle::with_template("kiln: {prefix:<30} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        let bar = self
            .multi
            .add(ProgressBar::new(total).with_style(style).with_prefix(stage.to_string()));
        if let Ok(mut b) = self.bars.lock() {
            b.insert(id, bar);
        }
    }
    fn advance(&self, id: u64, done: u64, total: u64) {
        if let Some(b) = self.bars.lock().ok().and_then(|b| b.get(&id).cloned()) {
            b.set_length(total);
            b.set_position(done);
        }
    }
    fn finish(&self, id: u64) {
        if let Some(b) = self.bars.lock().ok().and_then(|mut b| b.remove(&id)) {
            b.finish_and_clear();
            self.multi.remove(&b);
        }
    }
}

/// `--message-format json`: progress as events.
struct JsonProgress;

impl Sink for JsonProgress {
    fn start(&self, id: u64, stage: &str, total: u64) {
        emit(json!({ "reason": "progress-start", "id": id, "stage": stage, "total": total }));
    }
    fn advance(&self, id: u64, done: u64, total: u64) {
        emit(json!({ "reason": "progress", "id": id, "done": done, "total": total }));
    }
    fn finish(&self, id: u64) {
        emit(json!({ "reason": "progress-end", "id": id }));
    }
}
