//! Progress of kiln's long stages (calibration, range refinement, the mixed-precision and float16-island
//! searches, validation), reported from wherever the loop runs and shown by whoever installed a sink:
//! the `kiln` binary shows bars on a terminal and JSON events with `--message-format json`. Like a
//! logger, the sink is process-wide, so a pass deep in the pipeline reports without a handle threaded
//! through every signature; with no sink installed, reporting costs an atomic load.
use std::sync::OnceLock;

/// Receives stage events; called from any thread (targets may build in parallel).
pub trait Sink: Send + Sync {
    fn start(&self, id: u64, stage: &str, total: u64);
    fn advance(&self, id: u64, done: u64, total: u64);
    fn finish(&self, id: u64);
}

static SINK: OnceLock<Box<dyn Sink>> = OnceLock::new();
static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Install the process's sink; false when one was already installed (the first one stays).
pub fn install(sink: Box<dyn Sink>) -> bool {
    SINK.set(sink).is_ok()
}

/// One running stage: `inc` after each step; dropping it ends the stage.
pub struct Stage {
    id: u64,
    done: u64,
    total: u64,
}

/// Start a stage of `total` steps, named for people ("range refinement", "calibration").
pub fn stage(name: &str, total: usize) -> Stage {
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let total = total as u64;
    if let Some(s) = SINK.get() {
        s.start(id, name, total);
    }
    Stage { id, done: 0, total }
}

impl Stage {
    pub fn inc(&mut self) {
        self.done += 1;
        if let Some(s) = SINK.get() {
            s.advance(self.id, self.done, self.total.max(self.done));
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Some(s) = SINK.get() {
            s.finish(self.id);
        }
    }
}
