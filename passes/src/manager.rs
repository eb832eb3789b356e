//! The pass manager: named pipelines run to a fixed point. After every pass the shapes are re-inferred
//! and (in debug builds and tests) the graph verified; each run is recorded (wall time, nodes, params,
//! bytes, MACs before and after) for the build report.
use kiln_compiler::ir::Model;
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

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

    fn needs_calibration(&self) -> bool {
        self.passes.iter().any(|p| p.needs_calibration())
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

/// Run one pass inside pipeline `parent` (see `kiln_compiler::pipeline::run_pass`).
pub fn run_one(
    p: &dyn Pass,
    model: &mut Model,
    cx: &mut PassContext,
    parent: &str,
) -> Result<bool> {
    kiln_compiler::pipeline::run_pass(p, model, cx, Some(parent))
}
