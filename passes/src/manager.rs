//! The pass manager: named pipelines run to a fixed point. After every pass the shapes are re-inferred
//! and (in debug builds and tests) the graph verified; each run is recorded (wall time, nodes, params,
//! bytes, MACs before and after) for the build report.
use kiln_compiler::ir::Model;
use kiln_compiler::pipeline::{Pass, PassContext, PassRecord};
use kiln_compiler::stats::model_stats;
use kiln_compiler::{Error, Result};

/// A sequence of passes repeated until none changes the graph (at most `max_rounds` times).
pub struct Pipeline {
    pub name: &'static str,
    pub passes: Vec<Box<dyn Pass>>,
    pub max_rounds: usize,
}

impl Pass for Pipeline {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<bool> {
        let mut any = false;
        for _ in 0..self.max_rounds {
            let mut changed = false;
            for p in &self.passes {
                changed |= run_one(p.as_ref(), model, cx, self.name)?;
            }
            any |= changed;
            if !changed {
                break;
            }
        }
        Ok(any)
    }
}

/// Run one pass, re-infer shapes, verify when checking, and record statistics.
pub fn run_one(p: &dyn Pass, model: &mut Model, cx: &mut PassContext, parent: &str) -> Result<bool> {
    let before = model_stats(model);
    let t0 = std::time::Instant::now();
    let changed = p.run(model, cx)?;
    if changed {
        let opset = model.opset();
        kiln_compiler::shape::infer_graph(&mut model.graph, opset)?;
        if cfg!(debug_assertions) || cx.verify {
            kiln_compiler::ir::verify::verify(&model.graph)
                .map_err(|e| Error::Pass { pass: p.name().into(), reason: format!("left an invalid graph: {e}") })?;
        }
    }
    let after = if changed { model_stats(model) } else { before.clone() };
    let full = format!("{parent}/{}", p.name());
    if cx.dump_after.as_deref().is_some_and(|d| d == p.name() || d == full) {
        cx.dumps.push((full.clone(), kiln_compiler::ir::dump::dump_model(model)));
    }
    cx.records.push(PassRecord {
        pass: full,
        wall_ms: t0.elapsed().as_secs_f64() * 1e3,
        nodes: (before.nodes, after.nodes),
        params: (before.params, after.params),
        param_bytes: (before.param_bytes, after.param_bytes),
        macs: (before.macs, after.macs),
    });
    Ok(changed)
}
