//! Activation statistics for calibration: run the fp32 graph with tract over the calibration samples and
//! collect, for every floating-point value, its min/max and a histogram of |x| (2048 bins over
//! [0, max|x|]). Statistics are gathered once and shared by every target, which derive their own scales.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::Evaluator;
use crate::ir::{DType, Model, TensorData, ValueId};

/// Histogram bins.
pub const BINS: usize = 2048;

/// Statistics of one tensor over the calibration set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TensorStats {
    pub min: f32,
    pub max: f32,
    /// Histogram of |x| over [0, absmax], `BINS` bins.
    pub hist: Vec<u64>,
}

impl TensorStats {
    pub fn absmax(&self) -> f32 {
        self.min.abs().max(self.max.abs())
    }
}

/// Statistics of every float value, by value name.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Calibration {
    pub samples: usize,
    pub stats: BTreeMap<String, TensorStats>,
}

/// Values worth calibrating: float graph inputs and float node outputs.
fn targets(m: &Model) -> Vec<ValueId> {
    let g = &m.graph;
    let mut out: Vec<ValueId> = g.inputs.iter().copied().filter(|v| g.const_data(*v).is_none()).collect();
    for id in g.topo_order().unwrap_or_default() {
        for o in g.nodes[id].outputs.iter().flatten() {
            if g.value(*o).dtype == DType::F32 && !out.contains(o) {
                out.push(*o);
            }
        }
    }
    out
}

/// Run `model` on every sample (fed to input `input`), calling `progress(done, total)`.
pub fn collect(model: &Model, input: &str, samples: &[TensorData], progress: &mut dyn FnMut(usize, usize)) -> Result<Calibration> {
    let first = samples.first().ok_or_else(|| Error::Input { name: input.into(), reason: "no calibration samples".into() })?;
    let mut probe = model.clone();
    let vals = targets(model);
    probe.graph.outputs = vals.clone();
    let ev = Evaluator::new(&probe, &[(input.to_string(), first.dtype, first.dims.clone())])?;
    let names: Vec<String> = vals.iter().map(|v| model.graph.value(*v).name.clone()).collect();
    let total = samples.len() * 2;
    // Pass 1: ranges. Pass 2: histograms over the final ranges.
    let mut lo = vec![f32::INFINITY; names.len()];
    let mut hi = vec![f32::NEG_INFINITY; names.len()];
    for (i, s) in samples.iter().enumerate() {
        let outs = ev.run(&[(input.to_string(), s.clone())])?;
        for (k, (_, t)) in outs.iter().enumerate() {
            if let Some(v) = t.to_f32_vec() {
                for x in v {
                    if x.is_finite() {
                        lo[k] = lo[k].min(x);
                        hi[k] = hi[k].max(x);
                    }
                }
            }
        }
        progress(i + 1, total);
    }
    let mut hist = vec![vec![0u64; BINS]; names.len()];
    for (i, s) in samples.iter().enumerate() {
        let outs = ev.run(&[(input.to_string(), s.clone())])?;
        for (k, (_, t)) in outs.iter().enumerate() {
            let amax = lo[k].abs().max(hi[k].abs());
            if amax <= 0.0 || !amax.is_finite() {
                continue;
            }
            let w = amax / BINS as f32;
            if let Some(v) = t.to_f32_vec() {
                for x in v {
                    if x.is_finite() {
                        let b = ((x.abs() / w) as usize).min(BINS - 1);
                        hist[k][b] += 1;
                    }
                }
            }
        }
        progress(samples.len() + i + 1, total);
    }
    let mut stats = BTreeMap::new();
    for (k, name) in names.into_iter().enumerate() {
        if lo[k].is_finite() && hi[k].is_finite() {
            stats.insert(name, TensorStats { min: lo[k], max: hi[k], hist: std::mem::take(&mut hist[k]) });
        }
    }
    Ok(Calibration { samples: samples.len(), stats })
}
