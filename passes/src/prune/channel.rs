//! `prune: { method: channel, macs: 0.8 }`: structured channel pruning to a MAC (or per-layer ratio)
//! target, on dependency groups (`groups.rs`), ranked on calibration data and followed by least-squares
//! reconstruction of the layers that read the pruned channels (`recon.rs`).
//!
//! Ranking: a channel's score is, summed over every layer that reads it, the share of that layer's output
//! energy its weights carry on the calibration data (`criterion: energy`), or the share lost when it is
//! removed and the rest refitted (`criterion: obs`, an Optimal Brain Surgeon saliency): data-aware and
//! comparable across layers (`recon::energies`). Components are removed in chunks of `round_to` from one layer group (the components
//! tied to the same values), the chunk with the least score per MAC saved first, never leaving a value
//! below `min_keep` of its channels, until the model's MACs reach the target.
//!
//! Reconstruction: in graph order, each layer that lost input channels (and, with `reconstruct: all`,
//! every Conv/Gemm downstream of a change) is refitted so that its output on the pruned (and
//! already refitted) model's inputs matches the original's on the calibration samples (`recon::solve`). The report gives, per layer group, what was removed and saved,
//! per reader the output SQNR before and after reconstruction, and the model's output SQNR and top-1
//! agreement after pruning and after reconstruction, all on the calibration samples.
use std::collections::{BTreeMap, BTreeSet};

use kiln_compiler::ir::{Graph, Model, NodeId, Op, ValueId};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::{Error, Result};

use super::groups::{self, Groups, Role};
use super::recon::{self, Data, Reader};
use super::shrink;

/// `prune: { method: channel }`'s settings.
#[derive(Clone, Debug)]
pub struct Channel {
    /// Keep this fraction of the model's MACs.
    pub macs: Option<f64>,
    /// Or: remove this fraction of every prunable layer group's channels.
    pub ratio: Option<f64>,
    pub min_keep: f64,
    pub round_to: usize,
    pub reconstruct: Reconstruct,
    /// Rank by the loss after a refit of the other channels (Optimal Brain Surgeon) instead of energy.
    pub obs: bool,
    pub ridge: f64,
    pub rows: usize,
}

/// Which layers are refitted after pruning.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reconstruct {
    /// None: the kept weights as trained.
    None,
    /// The layers that lost input channels.
    Readers,
    /// Those, and every Conv/Gemm whose input the pruning changed (the errors downstream are
    /// corrected too).
    All,
}

/// Values whose contents change when `removed` is applied: the pruned ones and everything computed
/// from them.
fn affected(g: &Graph, removed: &BTreeMap<ValueId, Vec<usize>>) -> BTreeSet<ValueId> {
    let mut out: BTreeSet<ValueId> = removed.keys().copied().collect();
    let Ok(order) = g.topo_order() else { return out };
    for id in order {
        let n = &g.nodes[id];
        if n.inputs.iter().flatten().any(|v| out.contains(v)) {
            out.extend(n.outputs.iter().flatten().copied());
        }
    }
    out
}

fn bad(reason: String) -> Error {
    Error::Pass { pass: "prune".into(), reason }
}

/// MACs of a Conv/Gemm node: output elements × weight elements per output channel.
fn node_macs(g: &Graph, id: NodeId) -> f64 {
    let n = &g.nodes[id];
    let (Some(y), Some(w)) = (n.output(0), n.input(1).and_then(|w| g.const_data(w))) else {
        return 0.0;
    };
    let Some(ys) = g.value(y).static_shape() else { return 0.0 };
    let outs: f64 = ys.iter().product::<i64>() as f64;
    let wn: f64 = w.dims.iter().product::<i64>() as f64;
    let per_out = match &n.op {
        Op::Gemm { trans_b, .. } => {
            let c =
                if trans_b.unwrap_or(0) != 0 { w.dims[0] } else { *w.dims.last().unwrap_or(&1) };
            wn / c.max(1) as f64
        }
        _ => wn / (*w.dims.first().unwrap_or(&1)).max(1) as f64,
    };
    outs * per_out
}

/// Per component: MACs and parameters its removal saves (alone), and its score.
struct Costs {
    macs: Vec<f64>,
    params: Vec<f64>,
}

fn costs(g: &Graph, groups: &Groups) -> Costs {
    let mut per_value_macs: BTreeMap<ValueId, f64> = BTreeMap::new();
    let mut per_value_params: BTreeMap<ValueId, f64> = BTreeMap::new();
    for (&id, role) in &groups.roles {
        let n = &g.nodes[id];
        let (Some(x), Some(y)) = (n.input(0), n.output(0)) else { continue };
        let m = node_macs(g, id);
        let wn = n
            .input(1)
            .and_then(|w| g.const_data(w))
            .map_or(0.0, |w| w.dims.iter().product::<i64>() as f64);
        let cx = groups.base.get(&x).map_or(1, |b| b.1).max(1) as f64;
        let cy = groups.base.get(&y).map_or(1, |b| b.1).max(1) as f64;
        match role {
            Role::Linear => {
                *per_value_macs.entry(x).or_default() += m / cx;
                *per_value_macs.entry(y).or_default() += m / cy;
                *per_value_params.entry(x).or_default() += wn / cx;
                *per_value_params.entry(y).or_default() += wn / cy + 1.0;
            }
            Role::Depthwise => {
                *per_value_macs.entry(y).or_default() += m / cy;
                *per_value_params.entry(y).or_default() += wn / cy + 1.0;
            }
            _ => {}
        }
    }
    let sum = |m: &BTreeMap<ValueId, f64>, c: &Vec<(ValueId, usize)>| {
        c.iter().map(|(v, _)| m.get(v).copied().unwrap_or(0.0)).sum::<f64>()
    };
    Costs {
        macs: groups.comps.iter().map(|c| sum(&per_value_macs, c)).collect(),
        params: groups.comps.iter().map(|c| sum(&per_value_params, c)).collect(),
    }
}

/// Components grouped by the values they touch (one layer group per distinct value set).
fn layer_groups(groups: &Groups) -> Vec<(BTreeSet<ValueId>, Vec<usize>)> {
    let mut m: BTreeMap<BTreeSet<ValueId>, Vec<usize>> = BTreeMap::new();
    for (i, c) in groups.comps.iter().enumerate() {
        m.entry(c.iter().map(|s| s.0).collect()).or_default().push(i);
    }
    m.into_iter().collect()
}

/// What is removed: value → channels (sorted).
fn removal(groups: &Groups, chosen: &BTreeSet<usize>) -> BTreeMap<ValueId, Vec<usize>> {
    let mut r: BTreeMap<ValueId, Vec<usize>> = BTreeMap::new();
    for &c in chosen {
        for &(v, k) in &groups.comps[c] {
            r.entry(v).or_default().push(k);
        }
    }
    r.values_mut().for_each(|v| v.sort_unstable());
    r
}

/// The selection state: chosen components, per layer group how many, per value how many channels.
struct Selection<'a> {
    groups: &'a Groups,
    lgs: Vec<(BTreeSet<ValueId>, Vec<usize>)>,
    taken: Vec<usize>,
    lost: BTreeMap<ValueId, usize>,
    chosen: BTreeSet<usize>,
    /// MACs the chosen components save, by the per-component estimate.
    saved: f64,
    min_keep: f64,
    round_to: usize,
}

impl Selection<'_> {
    /// The next chunk of layer group `l` if it keeps every value above its floor.
    fn chunk(&self, l: usize) -> Option<Vec<usize>> {
        let comps = &self.lgs[l].1;
        let step = self.round_to.min(comps.len()).max(1);
        let next: Vec<usize> = comps.iter().skip(self.taken[l]).take(step).copied().collect();
        if next.len() < step {
            return None;
        }
        let mut add: BTreeMap<ValueId, usize> = BTreeMap::new();
        for &c in &next {
            for (v, _) in &self.groups.comps[c] {
                *add.entry(*v).or_default() += 1;
            }
        }
        for (v, k) in add {
            let total = self.groups.base.get(&v).map_or(0, |b| b.1);
            let floor = ((self.min_keep * total as f64).ceil() as usize).max(1);
            if self.lost.get(&v).copied().unwrap_or(0) + k + floor > total {
                return None;
            }
        }
        Some(next)
    }

    fn take(&mut self, l: usize, chunk: &[usize]) {
        self.taken[l] += chunk.len();
        for &c in chunk {
            self.chosen.insert(c);
            for (v, _) in &self.groups.comps[c] {
                *self.lost.entry(*v).or_default() += 1;
            }
        }
    }
}

impl Channel {
    /// Choose components: to `ratio` per layer group, or greedily until `need` MACs are saved (estimate).
    fn select_more(&self, sel: &mut Selection, score: &[f64], cost: &[f64], need: f64) {
        if let Some(ratio) = self.ratio {
            for l in 0..sel.lgs.len() {
                let n = sel.lgs[l].1.len();
                let want =
                    ((ratio * n as f64) / self.round_to as f64).floor() as usize * self.round_to;
                while sel.taken[l] < want {
                    match sel.chunk(l) {
                        Some(c) => sel.take(l, &c),
                        None => break,
                    }
                }
            }
            return;
        }
        while sel.saved < need {
            let best = (0..sel.lgs.len())
                .filter_map(|l| {
                    let c = sel.chunk(l)?;
                    let s: f64 = c.iter().map(|i| score[*i]).sum();
                    let m: f64 = c.iter().map(|i| cost[*i]).sum();
                    (m > 0.0).then_some((s / m, l, c, m))
                })
                .min_by(|a, b| a.0.total_cmp(&b.0));
            let Some((_, l, c, m)) = best else { break };
            sel.take(l, &c);
            sel.saved += m;
        }
    }
}

impl Pass for Channel {
    fn name(&self) -> &'static str {
        "prune"
    }

    fn needs_calibration(&self) -> bool {
        true
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<bool> {
        let calib = cx.calibration.clone().ok_or_else(|| {
            bad("method channel ranks channels and reconstructs layers on calibration data: the build needs a `calibration:` section".into())
        })?;
        let data = Data { input: &calib.input, samples: &calib.samples, rows: self.rows };
        // The analysis runs on the model with its data input pinned to the calibration samples' dims (a
        // symbolic batch leaves layer geometry and MACs unknown); the declared input shapes come back at
        // the end.
        let mut original = model.clone();
        if let Some(first) = calib.samples.first() {
            let pins: kiln_compiler::shape::Pins =
                [(calib.input.clone(), first.dims.clone())].into_iter().collect();
            kiln_compiler::shape::infer(&mut original, &pins)?;
        }
        let g = &original.graph;
        let groups = groups::build(g)?;
        let readers: Vec<Reader> = groups
            .roles
            .iter()
            .filter(|(_, r)| **r == Role::Linear)
            .filter_map(|(id, _)| Reader::of(g, *id))
            .filter(|r| groups.base.contains_key(&r.x))
            .collect();
        // A Conv/Gemm kiln cannot analyse (no reader view) would see its channels removed unranked and
        // unrefitted: its input's groups are left whole.
        let unreadable: BTreeSet<ValueId> = groups
            .roles
            .iter()
            .filter(|(id, r)| **r == Role::Linear && Reader::of(g, **id).is_none())
            .filter_map(|(id, _)| g.nodes[*id].input(0))
            .collect();
        let prunable: BTreeSet<ValueId> =
            groups.comps.iter().flat_map(|c| c.iter().map(|s| s.0)).collect();
        let readers: Vec<Reader> =
            readers.into_iter().filter(|r| prunable.contains(&r.x)).collect();
        if groups.comps.is_empty() || readers.is_empty() {
            cx.warnings.push("prune channel: no prunable channel group in this model".into());
            return Ok(false);
        }
        // Ranking.
        let energy = recon::energies(&original, &readers, &data, self.ridge, self.obs)?;
        let mut reads: BTreeMap<ValueId, Vec<usize>> = BTreeMap::new();
        for (i, r) in readers.iter().enumerate() {
            reads.entry(r.x).or_default().push(i);
        }
        let score: Vec<f64> = groups
            .comps
            .iter()
            .map(|c| {
                c.iter()
                    .flat_map(|(v, k)| reads.get(v).into_iter().flatten().map(move |i| (*i, *k)))
                    .map(|(i, k)| energy[i].channel[k] / energy[i].output.max(1e-30))
                    .sum()
            })
            .collect();
        let cost = costs(g, &groups);
        let mut lgs = layer_groups(&groups);
        lgs.retain(|(vs, _)| vs.is_disjoint(&unreadable));
        for (_, comps) in lgs.iter_mut() {
            comps.sort_by(|a, b| score[*a].total_cmp(&score[*b]).then(a.cmp(b)));
        }
        let n_lgs = lgs.len();
        let mut sel = Selection {
            groups: &groups,
            lgs,
            taken: vec![0; n_lgs],
            lost: BTreeMap::new(),
            chosen: BTreeSet::new(),
            saved: 0.0,
            min_keep: self.min_keep,
            round_to: self.round_to.max(1),
        };
        let opset = original.opset();
        let macs0 = kiln_compiler::stats::model_stats(&original).macs as f64;
        let target = self.macs.map(|m| m * macs0);
        // The estimate counts a saving twice where both sides of a layer shrink: measure and go on.
        let mut goal = target.map_or(0.0, |t| macs0 - t);
        let mut pruned = original.clone();
        for _ in 0..12 {
            let before = sel.chosen.len();
            self.select_more(&mut sel, &score, &cost.macs, goal);
            pruned = original.clone();
            shrink::apply(&mut pruned.graph, &groups, &removal(&groups, &sel.chosen))?;
            kiln_compiler::shape::infer_graph(&mut pruned.graph, opset)?;
            let now = kiln_compiler::stats::model_stats(&pruned).macs as f64;
            match target {
                Some(t) if now > t * 1.001 && (sel.chosen.len() > before || before == 0) => {
                    goal += now - t;
                }
                _ => break,
            }
        }
        if sel.chosen.is_empty() {
            cx.warnings.push("prune channel: the target removes no channel".into());
            return Ok(false);
        }
        let removed = removal(&groups, &sel.chosen);
        let macs1 = kiln_compiler::stats::model_stats(&pruned).macs as f64;
        if let Some(t) = target {
            if macs1 > t * 1.01 {
                cx.warnings.push(format!(
                    "prune channel: reached {:.3} of the MACs, not {:.3} (every group is at its min_keep floor)",
                    macs1 / macs0,
                    t / macs0
                ));
            }
        }
        // Reconstruction: every layer that lost input channels, and (`all`) every layer whose input the
        // pruning changed, its outputs restricted to the kept ones.
        let changed: BTreeSet<ValueId> = affected(g, &removed);
        let mut fixed: Vec<(Reader, Vec<usize>)> = Vec::new();
        let candidates: Vec<NodeId> = g.topo_order()?;
        for id in candidates {
            if !matches!(g.nodes[id].op, Op::Conv { .. } | Op::Gemm { .. }) {
                continue;
            }
            let Some(r) = Reader::of(g, id) else { continue };
            let dx = removed.get(&r.x).cloned().unwrap_or_default();
            let wanted = match self.reconstruct {
                Reconstruct::None => false,
                Reconstruct::Readers => !dx.is_empty(),
                Reconstruct::All => !dx.is_empty() || changed.contains(&r.x),
            };
            if !wanted {
                continue;
            }
            let keep: Vec<usize> = (0..r.cin).filter(|c| dx.binary_search(c).is_err()).collect();
            if keep.len() * r.per + 1 > recon::MAX_GRAM {
                cx.warnings.push(format!(
                    "prune channel: '{}' reads {} features, past the {} a refit takes: kept its pruned weights",
                    g.nodes[r.node].name,
                    keep.len() * r.per,
                    recon::MAX_GRAM - 1
                ));
                continue;
            }
            let mut r = r.clone();
            let y = g.nodes[r.node].output(0);
            if let Some(dy) = y.and_then(|y| removed.get(&y)) {
                let full = r.cin * r.per;
                let outs: Vec<usize> =
                    (0..r.cout).filter(|m| dy.binary_search(m).is_err()).collect();
                r.w = outs.iter().flat_map(|m| r.w[m * full..(m + 1) * full].to_vec()).collect();
                r.b = outs.iter().map(|m| r.b[*m]).collect();
                r.cout = outs.len();
            }
            // A classifier after global pooling is refitted on the pooled map's positions.
            let r = r.pooled(g).unwrap_or(r);
            fixed.push((r, keep));
        }
        let only: Vec<Reader> = fixed.iter().map(|f| f.0.clone()).collect();
        let mut layer_report: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
        let after_pruning = recon::agreement(&original, &pruned, &data)?;
        if !fixed.is_empty() {
            for (li, (r, keep)) in fixed.iter().enumerate() {
                let n = recon::normal(&original, &pruned, &only, li, keep, &data)?;
                let prior = recon::prior(r, &n.keep);
                let before = recon::residual(&n, &prior);
                let Some(wt) = recon::solve(&n, &prior, self.ridge) else {
                    cx.warnings.push(format!(
                        "prune channel: could not reconstruct '{}' (singular statistics); kept its pruned weights",
                        g.nodes[r.node].name
                    ));
                    continue;
                };
                let res = recon::residual(&n, &wt);
                let db = |e: f64| if e <= 0.0 { f64::INFINITY } else { 10.0 * (n.yy / e).log10() };
                // A refit that does worse on its own data than the kept weights is not taken.
                if res > before {
                    layer_report.insert(li, (db(before), db(before)));
                    continue;
                }
                layer_report.insert(li, (db(before), db(res)));
                shrink::write_reader(&mut pruned.graph, r, n.keep.len(), &wt)?;
            }
        }
        let after = if !fixed.is_empty() {
            recon::agreement(&original, &pruned, &data)?
        } else {
            after_pruning.clone()
        };
        let which: Vec<Vec<usize>> = fixed.iter().map(|f| f.1.clone()).collect();
        // The report.
        let names = |vs: &BTreeSet<ValueId>| -> Vec<String> {
            vs.iter()
                .filter_map(|v| g.value(*v).producer)
                .filter(|(id, _)| {
                    matches!(groups.roles.get(id), Some(Role::Linear) | Some(Role::Depthwise))
                })
                .map(|(id, _)| g.nodes[id].name.clone())
                .collect()
        };
        let group_report: Vec<serde_json::Value> = sel
            .lgs
            .iter()
            .enumerate()
            .filter(|(l, _)| sel.taken[*l] > 0)
            .map(|(l, (vs, comps))| {
                let taken = &comps[..sel.taken[l]];
                serde_json::json!({
                    "layers": names(vs),
                    "channels_removed": taken.len(),
                    "of": comps.len(),
                    "macs_saved_alone": taken.iter().map(|c| cost.macs[*c]).sum::<f64>().round(),
                    "params_saved_alone": taken.iter().map(|c| cost.params[*c]).sum::<f64>().round(),
                    "score_removed": taken.iter().map(|c| score[*c]).sum::<f64>(),
                })
            })
            .collect();
        let readers_report: Vec<serde_json::Value> = layer_report
            .iter()
            .map(|(li, (b, a))| {
                serde_json::json!({
                    "layer": g.nodes[only[*li].node].name,
                    "inputs_kept": which[*li].len(),
                    "of": only[*li].cin,
                    "sqnr_db_pruned": finite(*b),
                    "sqnr_db_reconstructed": finite(*a),
                })
            })
            .collect();
        let (ap, ar) = (after_pruning, after);
        crate::cleanup::dce::Dce.run(&mut pruned, cx)?;
        let stats1 = kiln_compiler::stats::model_stats(&pruned);
        let stats0 = kiln_compiler::stats::model_stats(&original);
        // Back to the declared shapes: every dim the incoming model left symbolic is symbolic again (shape
        // inference keeps a known dim where it cannot infer one, so resetting the inputs is not enough).
        for (i, declared) in model.graph.values.iter().enumerate() {
            let Some(v) = pruned.graph.values.get_mut(i) else { continue };
            let Some(d) = &declared.shape else {
                v.shape = None;
                continue;
            };
            if d.iter().all(|x| x.known().is_some()) {
                continue;
            }
            v.shape = match &v.shape {
                Some(p) if p.len() == d.len() => Some(
                    p.iter()
                        .zip(d)
                        .map(|(p, d)| if d.known().is_some() { p.clone() } else { d.clone() })
                        .collect(),
                ),
                _ => Some(d.clone()),
            };
        }
        // Structural surgery on many nodes at once: always verified, also in release builds.
        kiln_compiler::shape::infer_graph(&mut pruned.graph, opset)?;
        kiln_compiler::ir::verify::verify(&pruned.graph)
            .map_err(|e| bad(format!("channel: left an invalid graph: {e}")))?;
        cx.reports.push((
            "prune".into(),
            serde_json::json!({
                "method": "channel",
                "target_macs": self.macs,
                "ratio": self.ratio,
                "min_keep": self.min_keep,
                "round_to": self.round_to,
                "criterion": if self.obs { "obs" } else { "energy" },
                "reconstruct": format!("{:?}", self.reconstruct).to_lowercase(),
                "calibration_samples": calib.samples.len(),
                "macs": [stats0.macs, stats1.macs],
                "params": [stats0.params, stats1.params],
                "macs_kept": stats1.macs as f64 / (stats0.macs as f64).max(1.0),
                "channels_removed": sel.chosen.len(),
                "groups_prunable": n_lgs,
                "components_blocked": groups.blocked,
                "after_pruning": { "sqnr_db": finite(ap.sqnr_db()), "top1_agreement": ap.top1(), "samples": ap.samples },
                "after_reconstruction": { "sqnr_db": finite(ar.sqnr_db()), "top1_agreement": ar.top1(), "samples": ar.samples },
                "groups": group_report,
                "readers": readers_report,
            }),
        ));
        cx.notes.push(format!(
            "prune channel: MACs {} -> {} ({:.3}), params {} -> {}; on {} calibration samples SQNR {:.1} dB / top-1 agreement {:.3} after pruning, {:.1} dB / {:.3} after reconstruction",
            stats0.macs,
            stats1.macs,
            stats1.macs as f64 / (stats0.macs as f64).max(1.0),
            stats0.params,
            stats1.params,
            ap.samples,
            ap.sqnr_db(),
            ap.top1(),
            ar.sqnr_db(),
            ar.top1()
        ));
        cx.inexact.push(format!(
            "prune channel: {} channel group(s) removed to {:.3} of the MACs",
            sel.chosen.len(),
            stats1.macs as f64 / (stats0.macs as f64).max(1.0)
        ));
        *model = pruned;
        Ok(true)
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some((x * 100.0).round() / 100.0)
}
