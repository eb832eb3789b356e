//! Trying activation parameters without rebuilding the model: what range refinement scores its candidates
//! with, and what mixed precision measures each activation's sensitivity with (every other pair fed the
//! identity, [`IDENTITY_SCALE`]).
//!
//! A candidate of range refinement (ranges.rs) changes the (scale, zero point) of a few activations. Building
//! each candidate as a Q/DQ model and preparing it for tract cost 0.3 s on MobileNetV2, and running it from
//! the input re-ran the part of the network the candidate does not touch. Here the Q/DQ model is built
//! once; the evaluator's lowering (kiln_compiler::eval::qdq) turns each activation Q/DQ pair into float ops
//! whose scale and clip bounds are constants, and those constants become model inputs. For a set of
//! changed activations, [`ParamModel::stage`] then
//! - runs the part of the network upstream of them once per sample with the current parameters, and keeps
//!   the values the rest reads (the frontier);
//! - prepares the rest alone, with the frontier and the parameters as inputs.
//!
//! A candidate is then one run of the downstream part per sample with its parameters fed in. What is not
//! re-derived per candidate: an int32 bias's scale (input scale × weight scale; the bias is rounded to
//! 2⁻³¹ of its range either way) and the snapping of dead channels onto the output grid (dead_channels.rs),
//! both taken from the model built first. The model kiln ships is built in full with the chosen ranges.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use kiln_compiler::calib::Calibration;
use kiln_compiler::eval::qdq::{self as lowering, LoweredPair};
use kiln_compiler::eval::Evaluator;
use kiln_compiler::ir::{DType, Graph, Model, NodeId, TensorData, ValueId};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::{Error, Result};

use super::qdq::{self, QdqOptions};

/// Parameter values by the name of the model input that carries them.
pub type Feeds = BTreeMap<String, f32>;

/// The scale that makes a lowered pair pass its input through: x / 2⁻¹⁰⁰ is far past the magnitude where
/// adding 1.5·2²³ rounds (2⁴⁸), and scaling by powers of two is exact; only |x| < 2⁻⁵² moves, by < 2⁻⁷⁶.
pub const IDENTITY_SCALE: f32 = 7.888_609e-31;

/// The Q/DQ model, lowered, with every activation's scale and clip bounds as inputs.
pub struct ParamModel<'a> {
    float: &'a Model,
    pinned: &'a Calibration,
    model: Model,
    /// Lowered pairs by quantized tensor name.
    pairs: BTreeMap<String, LoweredPair>,
    /// The parameters the model was built with (what a tensor [`ParamModel::feeds`] cannot find keeps).
    built: Feeds,
    input: String,
}

/// The part of the model downstream of some activations, with the frontier values computed upstream.
pub struct Stage {
    ev: Evaluator,
    /// Per probe sample, the frontier values (by the stage's input names).
    cached: Vec<Vec<(String, TensorData)>>,
    /// The parameter inputs the stage reads.
    params: Vec<String>,
}

fn to_input(g: &mut Graph, name: &str) -> Option<ValueId> {
    let v = g.find(name)?;
    g.initializers.retain(|x| *x != v);
    g.value_mut(v).data = None;
    if !g.inputs.contains(&v) {
        g.inputs.push(v);
    }
    Some(v)
}

fn scalar(x: f32) -> TensorData {
    TensorData::from_f32(vec![], &[x])
}

/// Remove what no output needs, and the inputs nothing reads.
fn prune(m: &mut Model) -> Result<()> {
    crate::cleanup::dce::Dce.run(m, &mut PassContext::default())?;
    let g = &mut m.graph;
    let mut used: HashSet<ValueId> = g.outputs.iter().copied().collect();
    for n in g.nodes.node_weights() {
        used.extend(n.inputs.iter().flatten().copied());
        used.extend(n.captures.iter().copied());
    }
    g.inputs.retain(|v| used.contains(v) || g.initializers.contains(v));
    Ok(())
}

impl<'a> ParamModel<'a> {
    /// `built` is the Q/DQ model of `float` quantized with the statistics `pinned` (min/max on pre-clipped
    /// ranges, see ranges.rs).
    pub fn new(
        float: &'a Model,
        pinned: &'a Calibration,
        built: &Model,
        input: &str,
    ) -> Result<Self> {
        let (mut model, pairs) = lowering::lower(built)?;
        let mut params = Feeds::new();
        let mut by_tensor = BTreeMap::new();
        for p in pairs {
            let (lo, hi) = p.bounds.clone();
            for name in [&p.scale, &lo, &hi] {
                let v = model.graph.find(name).and_then(|v| model.graph.const_data(v));
                let x = v.and_then(|d| d.to_f32_vec()).and_then(|d| d.first().copied());
                if let Some(x) = x {
                    params.insert(name.clone(), x);
                }
                to_input(&mut model.graph, name);
            }
            by_tensor.insert(p.tensor.clone(), p);
        }
        Ok(ParamModel {
            float,
            pinned,
            model,
            pairs: by_tensor,
            built: params,
            input: input.to_string(),
        })
    }

    /// The parameter inputs' values for `opts` (min/max on the pinned statistics, like the build).
    pub fn feeds(&self, opts: &QdqOptions) -> Feeds {
        let o = QdqOptions {
            method: super::params::Method::MinMax,
            method_override: Default::default(),
            ..opts.clone()
        };
        let g = &self.float.graph;
        let params = qdq::activation_params(g, self.pinned, &o);
        let mut out = self.built.clone();
        for (id, (s, z)) in params {
            let Some(p) = self.pairs.get(&g.value(id).name) else { continue };
            let (lo, hi) = &p.bounds;
            out.insert(p.scale.clone(), s);
            out.insert(lo.clone(), (p.qmin - z as f64) as f32);
            out.insert(hi.clone(), (p.qmax - z as f64) as f32);
        }
        out
    }

    /// Every pair passing its input through ([`IDENTITY_SCALE`], unbounded clip): the float model.
    pub fn identity(&self) -> Feeds {
        let mut out = Feeds::new();
        for p in self.pairs.values() {
            let (lo, hi) = &p.bounds;
            out.insert(p.scale.clone(), IDENTITY_SCALE);
            out.insert(lo.clone(), -f32::MAX);
            out.insert(hi.clone(), f32::MAX);
        }
        out
    }

    /// The parameter inputs of the pair that quantizes `tensor`, if it has one.
    pub fn params_of(&self, tensor: &str) -> Option<[String; 3]> {
        let p = self.pairs.get(tensor)?;
        let (lo, hi) = p.bounds.clone();
        Some([p.scale.clone(), lo, hi])
    }

    /// Prepare the part of the model that reads any of the parameter inputs `changed`, with the values it
    /// reads from upstream computed once per sample of `probe` under `current`.
    pub fn stage(
        &self,
        changed: &BTreeSet<String>,
        current: &Feeds,
        probe: &[TensorData],
    ) -> Result<Stage> {
        let g = &self.model.graph;
        let param_ids: HashSet<ValueId> = self.built.keys().filter_map(|n| g.find(n)).collect();
        // Nodes downstream of the changed parameters.
        let mut readers: HashMap<ValueId, Vec<NodeId>> = HashMap::new();
        for id in g.nodes.node_indices() {
            for v in g.nodes[id].inputs.iter().flatten().chain(&g.nodes[id].captures) {
                readers.entry(*v).or_default().push(id);
            }
        }
        let mut down: HashSet<NodeId> = HashSet::new();
        let mut work: Vec<NodeId> = changed
            .iter()
            .filter_map(|n| g.find(n))
            .flat_map(|v| readers.get(&v).cloned().unwrap_or_default())
            .collect();
        while let Some(id) = work.pop() {
            if !down.insert(id) {
                continue;
            }
            for o in g.nodes[id].outputs.iter().flatten() {
                work.extend(readers.get(o).into_iter().flatten().copied());
            }
        }
        // The frontier: what downstream nodes read (or the graph returns) that is computed upstream.
        let produced_down =
            |v: ValueId| g.value(v).producer.is_some_and(|(p, _)| down.contains(&p));
        let mut frontier: BTreeSet<ValueId> = BTreeSet::new();
        for id in &down {
            let n = &g.nodes[*id];
            for v in n.inputs.iter().flatten().chain(&n.captures) {
                let constant = g.const_data(*v).is_some();
                if !constant && !param_ids.contains(v) && !produced_down(*v) {
                    frontier.insert(*v);
                }
            }
        }
        for v in &g.outputs {
            if !produced_down(*v) {
                frontier.insert(*v);
            }
        }
        let computed: Vec<ValueId> =
            frontier.iter().copied().filter(|v| !g.inputs.contains(v)).collect();
        // Upstream, once per sample.
        let mut cached: Vec<Vec<(String, TensorData)>> = vec![Vec::new(); probe.len()];
        if !computed.is_empty() {
            let mut up = self.model.clone();
            up.graph.outputs = computed.clone();
            prune(&mut up)?;
            let (ev, params) = self.prepare(&up, &[], probe)?;
            let feeds = self.param_feeds(&params, current)?;
            let outs = kiln_compiler::eval::par_map(probe.len(), |i| {
                let mut inputs = vec![(self.input.clone(), probe[i].clone())];
                inputs.extend(feeds.iter().cloned());
                ev.run(&inputs)
            })?;
            for (outs, c) in outs.into_iter().zip(cached.iter_mut()) {
                for (v, (_, t)) in computed.iter().zip(outs) {
                    c.push((format!("{}__cut", g.value(*v).name), t));
                }
            }
        }
        // Downstream, alone: each computed frontier value becomes an input.
        let mut rest = self.model.clone();
        for v in &computed {
            let name = format!("{}__cut", rest.graph.value(*v).name);
            let (dtype, shape) = (rest.graph.value(*v).dtype, rest.graph.value(*v).shape.clone());
            let cut = rest.graph.add_temp(&name, dtype, shape)?;
            if rest.graph.value(cut).name != name {
                return Err(Error::Pass {
                    pass: "quantize".into(),
                    reason: format!("range refinement: a value is already named '{name}'"),
                });
            }
            rest.graph.inputs.push(cut);
            rest.graph.replace_uses(*v, cut);
        }
        prune(&mut rest)?;
        let first = cached.first().cloned().unwrap_or_default();
        let (ev, params) = self.prepare(&rest, &first, probe)?;
        Ok(Stage { ev, cached, params })
    }

    /// An evaluator for `m`, whose inputs are the data input, parameters and `cut` values.
    fn prepare(
        &self,
        m: &Model,
        cut: &[(String, TensorData)],
        probe: &[TensorData],
    ) -> Result<(Evaluator, Vec<String>)> {
        let g = &m.graph;
        let mut facts = Vec::new();
        let mut params = Vec::new();
        for name in g.runtime_input_names() {
            if self.built.contains_key(&name) {
                facts.push((name.clone(), DType::F32, vec![]));
                params.push(name);
            } else if let Some((_, t)) = cut.iter().find(|(n, _)| *n == name) {
                facts.push((name, t.dtype, t.dims.clone()));
            } else if name == self.input {
                if let Some(s) = probe.first() {
                    facts.push((name, s.dtype, s.dims.clone()));
                }
            }
            // Anything else is another model input, fed by the sample's registered companions.
        }
        Ok((Evaluator::new(m, &facts)?, params))
    }

    fn param_feeds(&self, names: &[String], feeds: &Feeds) -> Result<Vec<(String, TensorData)>> {
        names
            .iter()
            .map(|n| {
                let x = feeds.get(n).or_else(|| self.built.get(n)).copied().ok_or_else(|| {
                    Error::Pass {
                        pass: "quantize".into(),
                        reason: format!("range refinement: no value for parameter '{n}'"),
                    }
                })?;
                Ok((n.clone(), scalar(x)))
            })
            .collect()
    }

    /// The model's outputs (flattened per sample) on the stage's samples with parameters `feeds`.
    pub fn outputs(
        &self,
        stage: &Stage,
        feeds: &Feeds,
        probe: &[TensorData],
    ) -> Result<Vec<Vec<f64>>> {
        self.run(stage, feeds, probe, usize::MAX)
    }

    /// The model's first output per sample (what accuracy metrics compare).
    pub fn first_outputs(
        &self,
        stage: &Stage,
        feeds: &Feeds,
        probe: &[TensorData],
    ) -> Result<Vec<Vec<f64>>> {
        self.run(stage, feeds, probe, 1)
    }

    fn run(
        &self,
        stage: &Stage,
        feeds: &Feeds,
        probe: &[TensorData],
        outputs: usize,
    ) -> Result<Vec<Vec<f64>>> {
        let params = self.param_feeds(&stage.params, feeds)?;
        kiln_compiler::eval::par_map(probe.len().min(stage.cached.len()), |i| {
            // The data input first: a model's other inputs are found from it (registered companions).
            let mut inputs = vec![(self.input.clone(), probe[i].clone())];
            inputs.extend(stage.cached[i].iter().cloned());
            inputs.extend(params.iter().cloned());
            Ok(stage
                .ev
                .run(&inputs)?
                .iter()
                .take(outputs)
                .flat_map(|(_, t)| t.to_f64_vec().unwrap_or_default())
                .collect())
        })
    }
}
