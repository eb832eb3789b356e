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
    /// Histogram of |x| over [0, hist_max], `BINS` bins; `hist_max` is a power of two ≥ max|x|.
    pub hist: Vec<u64>,
    pub hist_max: f32,
}

impl TensorStats {
    pub fn absmax(&self) -> f32 {
        self.min.abs().max(self.max.abs())
    }

    fn empty() -> Self {
        TensorStats {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            hist: vec![0; BINS],
            hist_max: 0.0,
        }
    }

    /// Double the histogram range (pairs of bins merge) until it covers `a`.
    fn grow_to(&mut self, a: f32) {
        if self.hist_max == 0.0 {
            self.hist_max = 2f32.powi(a.log2().ceil() as i32).max(f32::MIN_POSITIVE);
            return;
        }
        while self.hist_max < a {
            for i in 0..BINS / 2 {
                self.hist[i] = self.hist[2 * i] + self.hist[2 * i + 1];
            }
            self.hist[BINS / 2..].iter_mut().for_each(|c| *c = 0);
            self.hist_max *= 2.0;
        }
    }

    fn add(&mut self, v: &[f32]) {
        let mut lo = self.min;
        let mut hi = self.max;
        let mut a = 0f32;
        for x in v.iter().filter(|x| x.is_finite()) {
            lo = lo.min(*x);
            hi = hi.max(*x);
            a = a.max(x.abs());
        }
        self.min = lo;
        self.max = hi;
        if a > 0.0 {
            self.grow_to(a);
        }
        if self.hist_max > 0.0 {
            let k = BINS as f32 / self.hist_max;
            for x in v.iter().filter(|x| x.is_finite()) {
                let b = ((x.abs() * k) as usize).min(BINS - 1);
                self.hist[b] += 1;
            }
        }
    }

    fn merge(&mut self, mut o: TensorStats) {
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if o.hist_max == 0.0 {
            return;
        }
        if self.hist_max == 0.0 {
            self.hist = o.hist;
            self.hist_max = o.hist_max;
            return;
        }
        let top = self.hist_max.max(o.hist_max);
        self.grow_to(top);
        o.grow_to(top);
        self.hist.iter_mut().zip(o.hist).for_each(|(a, b)| *a += b);
    }
}

/// Statistics of every float value, by value name.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Calibration {
    pub samples: usize,
    pub stats: BTreeMap<String, TensorStats>,
}

/// Suffix of the value a fused activation reads (its op's output before the activation).
pub const PREACT: &str = "__preact";

/// Split fused activations (those `keep` rejects) back into op → `<output>__preact` → activation.
/// Calibration unfuses all of them, so it also sees the ranges before activations; a full-integer target
/// unfuses those its runtime cannot fuse, and quantizes the tensor in between with those ranges.
pub fn unfuse_activations(
    m: &mut Model,
    keep: &dyn Fn(&crate::ir::Graph, crate::ir::NodeId) -> bool,
) -> Result<()> {
    let clip_inputs = m.opset() >= 11;
    let g = &mut m.graph;
    let fused: Vec<_> =
        g.nodes.node_indices().filter(|id| g.nodes[*id].act.is_some() && !keep(g, *id)).collect();
    for id in fused {
        let (Some(y), Some(act)) = (g.nodes[id].output(0), g.nodes[id].act.clone()) else {
            continue;
        };
        let name = format!("{}{PREACT}", g.value(y).name);
        if g.find(&name).is_some() {
            continue;
        }
        let mut v = crate::ir::Value::new(name);
        v.dtype = g.value(y).dtype;
        v.shape = g.value(y).shape.clone();
        let pre = g.add_value(v)?;
        // The activation gets back the name it had before fusion, when the fusion pass recorded it.
        let original = g.nodes[id].meta(crate::ir::meta::FUSED_ACTIVATION).map(str::to_string);
        let node_name =
            g.fresh_node_name(&original.unwrap_or_else(|| format!("{}__act", g.nodes[id].name)));
        if let Some(n) = g.node_mut(id) {
            n.outputs[0] = Some(pre);
            n.act = None;
            n.metadata.retain(|(k, _)| k != crate::ir::meta::FUSED_ACTIVATION);
        }
        g.value_mut(y).producer = None;
        g.value_mut(pre).producer = Some((id, 0));
        let mut inputs = vec![Some(pre)];
        let mut act = act;
        if let (crate::ir::Act::Clip { min, max }, true) = (act.clone(), clip_inputs) {
            act = crate::ir::Act::Clip { min: None, max: None };
            // From opset 11 Clip reads its bounds as inputs.
            for (k, b) in [("min", min), ("max", max)] {
                inputs.push(match b {
                    Some(b) => Some(g.add_const(
                        &format!("{}_{k}", g.nodes[id].name),
                        crate::ir::TensorData::from_f32(vec![], &[b]),
                    )?),
                    None => None,
                });
            }
        }
        g.add_node(crate::ir::Node::new(
            node_name,
            crate::ir::Op::Act(act),
            inputs,
            vec![Some(y)],
        ))?;
    }
    g.rebuild_edges();
    Ok(())
}

/// Values worth calibrating: float graph inputs and float node outputs.
fn targets(m: &Model) -> Vec<ValueId> {
    let g = &m.graph;
    let mut out: Vec<ValueId> =
        g.inputs.iter().copied().filter(|v| g.const_data(*v).is_none()).collect();
    for id in g.topo_order().unwrap_or_default() {
        for o in g.nodes[id].outputs.iter().flatten() {
            if g.value(*o).dtype == DType::F32 && !out.contains(o) {
                out.push(*o);
            }
        }
    }
    out
}

/// Run `model` on every sample (fed to input `input`) in one pass, on up to two threads, calling
/// `progress(done, total)`.
pub fn collect(model: &Model, input: &str, samples: &[TensorData]) -> Result<Calibration> {
    collect_with(model, input, samples, true)
}

/// [`collect`], choosing whether values before fused activations (`<value>__preact`) are measured too:
/// full-integer targets need them; they cost an unfused graph and about 1.7x the time.
pub fn collect_with(
    model: &Model,
    input: &str,
    samples: &[TensorData],
    preact: bool,
) -> Result<Calibration> {
    let first = samples.first().ok_or_else(|| Error::Input {
        name: input.into(),
        reason: "no calibration samples".into(),
    })?;
    let mut probe = model.clone();
    if preact {
        unfuse_activations(&mut probe, &|_, _| false)?;
    }
    let vals = targets(&probe);
    probe.graph.outputs = vals.clone();
    let ev = Evaluator::new(&probe, &[(input.to_string(), first.dtype, first.dims.clone())])?;
    let names: Vec<String> = vals.iter().map(|v| probe.graph.value(*v).name.clone()).collect();
    let progress = std::sync::Mutex::new(crate::progress::stage("calibration", samples.len()));
    let results = ev.fold_samples(
        input,
        samples,
        || vec![TensorStats::empty(); names.len()],
        |acc, outs| {
            for (k, (_, t)) in outs.iter().enumerate() {
                if let (Some(v), Some(a)) = (t.to_f32_vec(), acc.get_mut(k)) {
                    a.add(&v);
                }
            }
            if let Ok(mut p) = progress.lock() {
                p.inc();
            }
            Ok(())
        },
    )?;
    let mut total = vec![TensorStats::empty(); names.len()];
    for r in results {
        for (t, part) in total.iter_mut().zip(r) {
            t.merge(part);
        }
    }
    let mut stats = BTreeMap::new();
    for (name, st) in names.into_iter().zip(total) {
        if st.min.is_finite() && st.max.is_finite() {
            stats.insert(name, st);
        }
    }
    Ok(Calibration { samples: samples.len(), stats })
}
