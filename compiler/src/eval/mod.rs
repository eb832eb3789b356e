//! Evaluation with tract-onnx: the reference interpreter kiln uses for `kiln run`, calibration and
//! accuracy checks. The IR is exported to ONNX in memory (all data inline, `value_info` left out so
//! exporter-written symbolic dim expressions cannot confuse tract) and run with input facts pinned from
//! the actual input tensors.
//!
//! Every call into tract goes through [`guarded`]: a panic inside the evaluator becomes kiln's typed error
//! (its message not printed as a crash), and inputs are checked against the model's declared static dims
//! before anything runs. `kiln run` also bounds one evaluation's time (`KILN_EVAL_TIMEOUT_S`, default
//! 600 s).
use std::cell::Cell;

use tract_onnx::prelude::*;

use crate::error::{Error, Result};
use crate::ir::{DType, Model, TensorData};
use crate::onnx::{ExportOptions, ExternalData};

pub mod qdq;

thread_local! {
    /// Set while this thread is inside [`guarded`]: its panics are reported as errors, not printed.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Run `f`, a call into the evaluator, turning a panic into [`Error::Eval`] (`what` says what was being
/// evaluated). The process's panic hook stays silent for panics caught here, and prints the rest as before.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info)
            }
        }));
    });
    let was = GUARDED.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    r.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(Error::Eval(format!("the evaluator failed {what}: {msg}")))
    })
}

/// Check a tensor fed to input `name` against the model's declared dims: same rank, and every static dim
/// equal (symbolic dims take any size).
pub fn check_input(model: &Model, name: &str, dims: &[i64]) -> Result<()> {
    let g = &model.graph;
    let Some(v) = g.inputs.iter().find(|v| g.value(**v).name == name) else { return Ok(()) };
    let Some(shape) = &g.value(*v).shape else { return Ok(()) };
    let fits = shape.len() == dims.len()
        && shape.iter().zip(dims).all(|(d, x)| d.known().is_none_or(|k| k == *x));
    if fits {
        return Ok(());
    }
    Err(Error::Input {
        name: name.into(),
        reason: format!(
            "the model declares {}, the data given is {dims:?}",
            crate::shape::fmt_shape(shape)
        ),
    })
}

/// Graphs tract is known to crash on with a signal (which no guard can catch), refused before it sees
/// them: `Pow` on an empty tensor (tract 0.23 segfaults; every other element-wise op handles it). Found by
/// `fuzz/fuzz_targets/graph.rs`.
fn refuse_known_crashes(model: &Model) -> Result<()> {
    use crate::ir::{BinOp, Op};
    let g = &model.graph;
    let empty = |v: &crate::ir::ValueId| {
        g.value(*v).shape.as_ref().is_some_and(|s| s.iter().any(|d| d.known() == Some(0)))
    };
    for n in g.nodes.node_weights() {
        let pow = matches!(&n.op, Op::Binary(BinOp::Pow))
            || matches!(&n.op, Op::Generic { op_type, .. } if op_type == "Pow");
        if pow && n.inputs.iter().chain(&n.outputs).flatten().any(empty) {
            return Err(Error::Eval(format!(
                "node '{}' (Pow): the evaluator (tract) cannot compute Pow on an empty tensor",
                n.name
            )));
        }
    }
    Ok(())
}

fn datum(d: DType) -> Option<DatumType> {
    Some(match d {
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::F16 => DatumType::F16,
        DType::I8 => DatumType::I8,
        DType::U8 => DatumType::U8,
        DType::I16 => DatumType::I16,
        DType::U16 => DatumType::U16,
        DType::I32 => DatumType::I32,
        DType::U32 => DatumType::U32,
        DType::I64 => DatumType::I64,
        DType::U64 => DatumType::U64,
        DType::Bool => DatumType::Bool,
        _ => return None,
    })
}

fn dtype(d: DatumType) -> Option<DType> {
    Some(match d {
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::F16 => DType::F16,
        DatumType::I8 => DType::I8,
        DatumType::U8 => DType::U8,
        DatumType::I16 => DType::I16,
        DatumType::U16 => DType::U16,
        DatumType::I32 => DType::I32,
        DatumType::U32 => DType::U32,
        DatumType::I64 => DType::I64,
        DatumType::U64 => DType::U64,
        DatumType::Bool => DType::Bool,
        _ => return None,
    })
}

fn to_tract(t: &TensorData, name: &str) -> Result<Tensor> {
    let dt = datum(t.dtype).ok_or_else(|| Error::Input {
        name: name.into(),
        reason: format!("element type {} is not supported for evaluation", t.dtype),
    })?;
    let shape: Vec<usize> = t.dims.iter().map(|d| *d as usize).collect();
    t.check(name)?;
    // SAFETY: `check` proved the byte length equals elements × element size for this plain-old-data type.
    unsafe { Tensor::from_raw_dt(dt, &shape, t.bytes()) }.map_err(|e| Error::Eval(format!("{e:#}")))
}

fn from_tract(t: &Tensor) -> Result<TensorData> {
    let dt = dtype(t.datum_type())
        .ok_or_else(|| Error::Eval(format!("output type {:?} is not supported", t.datum_type())))?;
    let dims = t.shape().iter().map(|d| *d as i64).collect();
    Ok(TensorData::from_bytes(dt, dims, t.as_bytes().to_vec()))
}

/// Tensors fed alongside a sample of a model's data input: its other inputs (a recurrent state carried
/// between calls, a mask), registered by the driver when `other_inputs:` names them, keyed by the data
/// sample's content. Every evaluator of every model variant (calibration, range search, validation) then
/// feeds them with that sample without the sample lists changing shape.
static COMPANIONS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<u64, Companions>>,
> = std::sync::LazyLock::new(Default::default);

/// The tensors fed with one data sample.
type Companions = std::sync::Arc<Vec<(String, TensorData)>>;

fn content_key(t: &TensorData) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{:?}", t.dtype).hash(&mut h);
    t.dims.hash(&mut h);
    t.bytes().hash(&mut h);
    h.finish()
}

/// Feed `extra` (input name → tensor) with every run whose data input is `sample`.
pub fn register_companions(sample: &TensorData, extra: Vec<(String, TensorData)>) {
    if let Ok(mut m) = COMPANIONS.lock() {
        m.insert(content_key(sample), std::sync::Arc::new(extra));
    }
}

/// The tensors registered with `sample`, if any.
fn companions(sample: &TensorData) -> Option<Companions> {
    COMPANIONS.lock().ok()?.get(&content_key(sample)).cloned()
}

/// A model loaded into tract, ready to run repeatedly.
pub struct Evaluator {
    plan: std::sync::Arc<TypedRunnableModel>,
    input_names: Vec<String>,
    output_names: Vec<String>,
    /// Activation Q/DQ pairs lowered to float ops before preparing (qdq.rs).
    lowered: usize,
}

impl Evaluator {
    /// Prepare `model` for inputs of the given dtypes and shapes (by input name).
    pub fn new(model: &Model, input_facts: &[(String, DType, Vec<i64>)]) -> Result<Self> {
        for (name, _, dims) in input_facts {
            check_input(model, name, dims)?;
        }
        refuse_known_crashes(model)?;
        guarded("preparing the model", || Self::prepare(model, input_facts, true))
    }

    /// Like [`Evaluator::new`], but with the model's Q/DQ run by tract as written instead of lowered to
    /// float ops (qdq.rs): what `kiln profile` measures.
    pub fn as_written(model: &Model, input_facts: &[(String, DType, Vec<i64>)]) -> Result<Self> {
        for (name, _, dims) in input_facts {
            check_input(model, name, dims)?;
        }
        refuse_known_crashes(model)?;
        guarded("preparing the model", || Self::prepare(model, input_facts, false))
    }

    fn prepare(
        model: &Model,
        input_facts: &[(String, DType, Vec<i64>)],
        lower: bool,
    ) -> Result<Self> {
        let lowered = if lower && qdq::has_qdq(model) { Some(qdq::lower(model)?) } else { None };
        let (model, pairs) = lowered.as_ref().map_or((model, 0), |(m, p)| (m, p.len()));
        let bytes = crate::onnx::to_bytes(
            model,
            &ExportOptions { external: ExternalData::Inline, strip_value_info: true },
        )?;
        let ev = |e: TractError| Error::Eval(format!("{e:#}"));
        let mut tm = tract_onnx::onnx().model_for_read(&mut bytes.as_slice()).map_err(ev)?;
        let g = &model.graph;
        let input_names = g.runtime_input_names();
        for (ix, name) in input_names.iter().enumerate() {
            // An input no fact names (one fed by registered companions) takes its declared static type.
            let declared = g.find(name).and_then(|v| {
                let v = g.value(v);
                v.static_shape().map(|s| (name.clone(), v.dtype, s))
            });
            let (_, dt, shape) =
                input_facts.iter().find(|(n, _, _)| n == name).or(declared.as_ref()).ok_or_else(
                    || Error::Input {
                        name: name.clone(),
                        reason: "no tensor given for this model input".into(),
                    },
                )?;
            let dt = datum(*dt).ok_or_else(|| Error::Input {
                name: name.clone(),
                reason: format!("element type {dt} is not supported"),
            })?;
            let shape: Vec<usize> = shape.iter().map(|d| *d as usize).collect();
            tm.set_input_fact(ix, InferenceFact::dt_shape(dt, &shape)).map_err(ev)?;
        }
        for (n, _, _) in input_facts {
            if !input_names.contains(n) {
                return Err(Error::Input {
                    name: n.clone(),
                    reason: format!(
                        "the model has no such input (inputs: {})",
                        input_names.join(", ")
                    ),
                });
            }
        }
        let typed = tm.into_typed().map_err(ev)?;
        // The last word on sizes: whatever kiln's own rules could not bound (an op it has no shape rule
        // for, a rank it could not know), tract's analysis knows before running. Refuse a tensor past
        // kiln's bound there rather than let the evaluator allocate it.
        for node in typed.nodes() {
            for o in &node.outputs {
                if let Some(why) = past_bound(node, &o.fact) {
                    return Err(Error::Eval(why));
                }
            }
        }
        let plan = typed.into_optimized().map_err(ev)?.into_runnable().map_err(ev)?;
        let output_names = g.outputs.iter().map(|v| g.value(*v).name.clone()).collect();
        Ok(Evaluator { plan, input_names, output_names, lowered: pairs })
    }

    /// Prepare for the given input tensors' types and shapes.
    pub fn for_inputs(model: &Model, inputs: &[(String, TensorData)]) -> Result<Self> {
        Self::new(model, &facts_of(inputs))
    }

    /// [`Evaluator::as_written`] for the given input tensors.
    pub fn as_written_for(model: &Model, inputs: &[(String, TensorData)]) -> Result<Self> {
        Self::as_written(model, &facts_of(inputs))
    }

    /// How many activation Q/DQ pairs were lowered to float ops (qdq.rs) before tract prepared the model.
    pub fn lowered_qdq_pairs(&self) -> usize {
        self.lowered
    }

    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// Run once; outputs in the model's output order.
    pub fn run(&self, inputs: &[(String, TensorData)]) -> Result<Vec<(String, TensorData)>> {
        let mut tv = TVec::new();
        // Companions are looked up (a hash of the data sample) only when the caller left an input out.
        let mut extra: Option<Option<Companions>> = None;
        for name in &self.input_names {
            let given = inputs.iter().find(|(n, _)| n == name);
            let given = match given {
                Some(g) => Some(g),
                None => extra
                    .get_or_insert_with(|| inputs.first().and_then(|(_, t)| companions(t)))
                    .as_ref()
                    .and_then(|e| e.iter().find(|(n, _)| n == name)),
            };
            let (_, t) = given.ok_or_else(|| Error::Input {
                name: name.clone(),
                reason: "no tensor given for this model input (a model with several inputs needs data for \
                         the others: `other_inputs:` in a config's calibration/validation, \
                         `--other-input NAME=FILE` for `kiln quantize`)"
                    .into(),
            })?;
            tv.push(to_tract(t, name)?.into());
        }
        let outs = guarded("running the model", || {
            let mut state = self.plan.spawn().map_err(|e| Error::Eval(format!("{e:#}")))?;
            state.run_plan_with_eval(tv, bounded_eval).map_err(|e| Error::Eval(format!("{e:#}")))
        })?;
        outs.iter().zip(&self.output_names).map(|(t, n)| Ok((n.clone(), from_tract(t)?))).collect()
    }
}

/// Per-node times of an evaluator run ([`Evaluator::profile`]).
#[derive(Clone, Debug)]
pub struct NodeTimes {
    /// The evaluator's node name (tract's: the ONNX node's name, sometimes with a suffix for the parts
    /// it split the node into) and op name, with the median seconds over the runs.
    pub nodes: Vec<(String, String, f64)>,
    /// Median end-to-end seconds of the uninstrumented runs.
    pub total: f64,
    pub runs: usize,
}

fn facts_of(inputs: &[(String, TensorData)]) -> Vec<(String, DType, Vec<i64>)> {
    inputs.iter().map(|(n, t)| (n.clone(), t.dtype, t.dims.clone())).collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

impl Evaluator {
    /// Time `runs` runs node by node (after `warmup` runs), and as many uninstrumented runs end to end.
    pub fn profile(
        &self,
        inputs: &[(String, TensorData)],
        warmup: usize,
        runs: usize,
    ) -> Result<NodeTimes> {
        let runs = runs.max(1);
        let feed = || -> Result<TVec<TValue>> {
            self.input_names
                .iter()
                .map(|name| {
                    let (_, t) =
                        inputs.iter().find(|(n, _)| n == name).ok_or_else(|| Error::Input {
                            name: name.clone(),
                            reason: "no tensor given for this model input".into(),
                        })?;
                    Ok(to_tract(t, name)?.into())
                })
                .collect()
        };
        let ev = |e: TractError| Error::Eval(format!("{e:#}"));
        let nodes = self.plan.model().nodes.len();
        let mut per: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); nodes];
        let mut total = Vec::with_capacity(runs);
        guarded("profiling the model", || {
            for _ in 0..warmup {
                let mut state = self.plan.spawn().map_err(ev)?;
                state.run(feed()?).map_err(ev)?;
            }
            for _ in 0..runs {
                let mut state = self.plan.spawn().map_err(ev)?;
                let mut step = vec![0.0; nodes];
                state
                    .run_plan_with_eval(feed()?, |ctx, st, node, input| {
                        let t = std::time::Instant::now();
                        let r = tract_onnx::tract_core::plan::eval(ctx, st, node, input);
                        if let Some(s) = step.get_mut(node.id) {
                            *s += t.elapsed().as_secs_f64();
                        }
                        r
                    })
                    .map_err(ev)?;
                per.iter_mut().zip(step).for_each(|(p, s)| p.push(s));
                let mut state = self.plan.spawn().map_err(ev)?;
                let inputs = feed()?;
                let t = std::time::Instant::now();
                state.run(inputs).map_err(ev)?;
                total.push(t.elapsed().as_secs_f64());
            }
            Ok(())
        })?;
        let model = self.plan.model();
        let nodes = model
            .nodes
            .iter()
            .zip(per.iter_mut())
            .map(|(n, t)| (n.name.clone(), n.op.name().to_string(), median(t)))
            .collect();
        Ok(NodeTimes { nodes, total: median(&mut total), runs })
    }
}

/// Why `fact`, an output of `node`, is refused: a concrete shape past kiln's element bound.
fn past_bound(
    node: &tract_onnx::tract_core::model::Node<TypedFact, Box<dyn TypedOp>>,
    fact: &TypedFact,
) -> Option<String> {
    let shape = fact.shape.as_concrete()?;
    let n = shape.iter().try_fold(1u64, |a, d| a.checked_mul(*d as u64));
    n.is_none_or(|n| n > crate::ir::tensor::MAX_FOLD_ELEMENTS).then(|| {
        format!(
            "node '{}' ({}) would produce a {shape:?} tensor, past kiln's bound of {} elements",
            node.name,
            node.op.name(),
            crate::ir::tensor::MAX_FOLD_ELEMENTS
        )
    })
}

/// tract's node evaluation, after the op's own shape rule, applied to the tensors it is about to read,
/// says its outputs stay within kiln's bound: sizes that depend on values computed at run time (indices
/// out of a NonZero fed to a OneHot, found by the graph fuzz target) are checked before they are
/// allocated, not after.
fn bounded_eval(
    ctx: &tract_onnx::tract_core::plan::EvalContext,
    state: Option<&mut (dyn tract_onnx::tract_core::ops::OpState + 'static)>,
    node: &tract_onnx::tract_core::model::Node<TypedFact, Box<dyn TypedOp>>,
    input: TVec<TValue>,
) -> TractResult<TVec<TValue>> {
    let facts: TVec<TypedFact> =
        input.iter().map(|t| TypedFact::dt_shape(t.datum_type(), t.shape())).collect();
    let refs: TVec<&TypedFact> = facts.iter().collect();
    if let Ok(outs) = node.op.output_facts(&refs) {
        if let Some(why) = outs.iter().find_map(|o| past_bound(node, o)) {
            return Err(TractError::msg(why));
        }
    }
    tract_onnx::tract_core::plan::eval(ctx, state, node, input)
}

impl Evaluator {
    /// Run `input` = each of `samples` on up to two threads; each thread folds the outputs of its share into
    /// its own accumulator (`init()`, then `step(&mut acc, outputs)` per sample). Returns the accumulators
    /// in sample order of their shares, for the caller to merge.
    pub fn fold_samples<A: Send>(
        &self,
        input: &str,
        samples: &[TensorData],
        init: impl Fn() -> A + Sync,
        step: impl Fn(&mut A, Vec<(String, TensorData)>) -> Result<()> + Sync,
    ) -> Result<Vec<A>> {
        let threads =
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 2);
        let chunk = samples.len().div_ceil(threads).max(1);
        let (init, step) = (&init, &step);
        let parts: Vec<Result<A>> = std::thread::scope(|s| {
            let handles: Vec<_> = samples
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || -> Result<A> {
                        let mut acc = init();
                        for smp in part {
                            step(&mut acc, self.run(&[(input.to_string(), smp.clone())])?)?;
                        }
                        Ok(acc)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::Eval("an evaluation thread panicked".into()))
                    })
                })
                .collect()
        });
        parts.into_iter().collect()
    }
}

/// `f(0)`, …, `f(n − 1)` on up to two threads (each takes every other index), results in index order:
/// for evaluations whose inputs differ per sample in more than the data input ([`Evaluator::fold_samples`]
/// covers the rest). Deterministic: the results do not depend on which thread computed them.
pub fn par_map<T: Send>(n: usize, f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1).clamp(1, 2);
    if threads == 1 || n < 2 {
        return (0..n).map(&f).collect();
    }
    let f = &f;
    let parts: Vec<Result<Vec<(usize, T)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<Vec<(usize, T)>> {
                    (t..n).step_by(threads).map(|i| Ok((i, f(i)?))).collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Eval("an evaluation thread panicked".into())))
            })
            .collect()
    });
    let mut all: Vec<(usize, T)> = Vec::with_capacity(n);
    for p in parts {
        all.extend(p?);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

/// Run `model` once on `inputs`.
pub fn run(model: &Model, inputs: &[(String, TensorData)]) -> Result<Vec<(String, TensorData)>> {
    Evaluator::for_inputs(model, inputs)?.run(inputs)
}

/// [`run`] within a time budget: an evaluation still running after `budget` is abandoned (its thread is
/// left to the process's exit) and reported as an error.
pub fn run_within(
    model: &Model,
    inputs: &[(String, TensorData)],
    budget: std::time::Duration,
) -> Result<Vec<(String, TensorData)>> {
    let ev = Evaluator::for_inputs(model, inputs)?;
    let owned = inputs.to_vec();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(ev.run(&owned));
    });
    rx.recv_timeout(budget).unwrap_or_else(|_| {
        Err(Error::Eval(format!(
            "the evaluation did not finish within {} s (KILN_EVAL_TIMEOUT_S)",
            budget.as_secs()
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_guarded_is_an_error_and_the_guard_ends_with_it() {
        let e = guarded("on purpose", || -> Result<()> { panic!("injected {}", 42) }).unwrap_err();
        assert!(
            matches!(&e, Error::Eval(m) if m.contains("on purpose") && m.contains("injected 42")),
            "{e}"
        );
        assert!(!GUARDED.with(Cell::get));
        assert_eq!(guarded("fine", || Ok(7)).ok(), Some(7));
        // Nested guards restore the outer state.
        let r = guarded("outer", || {
            let inner = guarded("inner", || -> Result<()> { panic!("inner") });
            assert!(GUARDED.with(Cell::get) && inner.is_err());
            Ok(1)
        });
        assert_eq!(r.ok(), Some(1));
    }
}
