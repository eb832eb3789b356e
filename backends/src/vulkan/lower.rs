//! IR → a list of kernel dispatches over symbolic buffers. Each runtime value gets an arena buffer
//! (views — Reshape, Flatten, Squeeze, Unsqueeze, Identity, float Casts — share their input's), each
//! constant a slot in the constants region (or, for convolution and matrix weights of an fp16 bundle,
//! in `w16`). Parameters name buffers symbolically (`Word::At`) until the memory plan places them.
//! Layout is the model's own (NCHW), so nothing is transposed at the boundary.
use std::collections::{HashMap, HashSet};

use kiln_compiler::ir::{Act, Graph, Model, NodeId, Op, ValueId};
use kiln_compiler::{Error, Result};

use super::kernels::{Kernel, WORKGROUP};

/// Where a kernel finds a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Addr {
    /// Arena buffer `n`, from its element `off` (a part of a Concat's output, a Split's piece).
    Buf(u32, u64),
    /// Constant `n` (in `data`, before the arena).
    Const(u32),
    /// fp16 weight `n` (in `w16`, in halves).
    W16(u32),
    /// Absent (`NONE` in the kernel).
    None,
}

/// One parameter word.
#[derive(Clone, Copy, Debug)]
pub enum Word {
    U(u32),
    I(i32),
    F(f32),
    /// An address plus an element offset.
    At(Addr, u64),
}

/// One dispatch before placement.
pub struct Draft {
    pub kernel: Kernel,
    pub words: Vec<Word>,
    pub threads: u64,
    /// Workgroup counts, when the kernel maps them itself (else from `threads`).
    pub groups: Option<[u32; 3]>,
    pub node: String,
    pub op: String,
    pub reads: Vec<u32>,
    pub writes: Vec<u32>,
}

/// A model input or output.
pub struct Io {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub buf: u32,
    /// First element in the buffer.
    pub off: u64,
}

/// The lowered model.
pub struct Lowered {
    pub steps: Vec<Draft>,
    /// Elements of each arena buffer.
    pub bufs: Vec<u64>,
    pub consts: Vec<Vec<f32>>,
    pub w16: Vec<Vec<f32>>,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
    /// IR nodes lowered (views included).
    pub ops: usize,
}

pub struct Lowerer<'a> {
    pub m: &'a Model,
    pub g: &'a Graph,
    /// fp16 weights for convolution and matrix products (nodes not kept float32).
    pub f16: bool,
    loc: HashMap<ValueId, Addr>,
    const_of: HashMap<ValueId, u32>,
    w16_of: HashMap<(ValueId, u8), u32>,
    /// Packed fp32 weights (layout `key`), as constants.
    packed_of: HashMap<(ValueId, u8), u32>,
    /// Nodes already computed by another's kernel (a residual Add fused into its convolution).
    pub done: HashSet<NodeId>,
    /// Where a value is to be written (parts of zero-copy Concats).
    place: HashMap<ValueId, Addr>,
    /// Values computed here (Constant nodes, static Shapes, dequantized weights).
    folded: HashMap<ValueId, Vec<f32>>,
    out: Lowered,
    reads: Vec<u32>,
    writes: Vec<u32>,
    pub node: String,
    pub op: String,
}

/// Contiguous strides of `shape`.
pub fn strides(shape: &[u64]) -> Vec<u64> {
    let mut s = vec![1u64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides of `shape` broadcast (numpy, right-aligned) to `out`: 0 on broadcast axes.
pub fn bstrides(shape: &[u64], out: &[u64]) -> Vec<u64> {
    let st = strides(shape);
    let lead = out.len().saturating_sub(shape.len());
    (0..out.len())
        .map(|k| {
            if k < lead {
                0
            } else {
                let i = k - lead;
                if shape[i] == 1 && out[k] != 1 {
                    0
                } else {
                    st[i]
                }
            }
        })
        .collect()
}

/// Words for the fused activation `a` (code, a, b); Clip bounds from `clip` when the node carries them
/// as inputs.
pub fn act_words(a: Option<&Act>, clip: (Option<f32>, Option<f32>)) -> Result<[Word; 3], String> {
    let w = |c: u32, a: f32, b: f32| [Word::U(c), Word::F(a), Word::F(b)];
    Ok(match a {
        None => w(0, 0.0, 0.0),
        Some(Act::Relu) => w(1, 0.0, 0.0),
        Some(Act::Clip { min, max }) => w(
            2,
            min.or(clip.0).unwrap_or(f32::NEG_INFINITY),
            max.or(clip.1).unwrap_or(f32::INFINITY),
        ),
        Some(Act::Sigmoid) => w(3, 0.0, 0.0),
        Some(Act::Tanh) => w(4, 0.0, 0.0),
        Some(Act::HardSwish) => w(5, 0.0, 0.0),
        Some(Act::HardSigmoid { alpha, beta }) => w(6, alpha.unwrap_or(0.2), beta.unwrap_or(0.5)),
        Some(Act::LeakyRelu { alpha }) => w(7, alpha.unwrap_or(0.01), 0.0),
        Some(Act::Gelu { approximate }) => match approximate.as_deref() {
            None | Some("none") => w(8, 0.0, 0.0),
            Some("tanh") => w(9, 0.0, 0.0),
            Some(o) => return Err(format!("Gelu approximate='{o}' is not supported")),
        },
        Some(Act::Silu) => w(10, 0.0, 0.0),
    })
}

impl<'a> Lowerer<'a> {
    pub fn new(m: &'a Model, f16: bool) -> Self {
        Lowerer {
            m,
            g: &m.graph,
            f16,
            loc: HashMap::new(),
            const_of: HashMap::new(),
            w16_of: HashMap::new(),
            packed_of: HashMap::new(),
            done: HashSet::new(),
            place: HashMap::new(),
            folded: HashMap::new(),
            out: Lowered {
                steps: Vec::new(),
                bufs: Vec::new(),
                consts: Vec::new(),
                w16: Vec::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                ops: 0,
            },
            reads: Vec::new(),
            writes: Vec::new(),
            node: String::new(),
            op: String::new(),
        }
    }

    /// An error naming the node being lowered.
    pub fn err(&self, reason: impl Into<String>) -> Error {
        Error::Node { node: self.node.clone(), op: self.op.clone(), reason: reason.into() }
    }

    /// The static shape of `v`.
    pub fn shape(&self, v: ValueId) -> Result<Vec<u64>> {
        if let Some(d) = self.g.const_data(v) {
            return Ok(d.dims.iter().map(|x| (*x).max(0) as u64).collect());
        }
        let val = self.g.value(v);
        val.static_shape()
            .map(|s| s.into_iter().map(|x| x.max(0) as u64).collect())
            .ok_or_else(|| {
                self.err(format!(
                    "value '{}' has no static shape (give the input a fixed shape with `input_shapes`)",
                    val.name
                ))
            })
    }

    /// Values of a constant, as f32.
    pub fn const_vals(&self, v: ValueId) -> Option<Vec<f32>> {
        if let Some(f) = self.folded.get(&v) {
            return Some(f.clone());
        }
        self.g.const_data(v).and_then(|d| d.to_f32_vec())
    }

    /// Values of a constant input, as i64 (shapes, axes, pads).
    pub fn const_ints(&self, v: ValueId) -> Result<Vec<i64>> {
        if let Some(f) = self.folded.get(&v) {
            return Ok(f.iter().map(|x| *x as i64).collect());
        }
        self.g.const_data(v).and_then(|d| d.to_i64_vec()).ok_or_else(|| {
            self.err(format!("input '{}' must be a constant integer tensor", self.g.value(v).name))
        })
    }

    pub fn is_const(&self, v: ValueId) -> bool {
        self.folded.contains_key(&v)
            || (!self.loc.contains_key(&v) && self.g.const_data(v).is_some())
    }

    /// Input `i` of a node.
    pub fn input(&self, id: NodeId, i: usize) -> Result<ValueId> {
        self.g.nodes[id].input(i).ok_or_else(|| self.err(format!("input {i} is missing")))
    }

    pub fn output(&self, id: NodeId, i: usize) -> Result<ValueId> {
        self.g.nodes[id].output(i).ok_or_else(|| self.err(format!("output {i} is missing")))
    }

    /// Where a kernel reads `v` (recorded as a read of this step).
    pub fn src(&mut self, v: ValueId) -> Result<Addr> {
        if let Some(a) = self.loc.get(&v).copied() {
            if let Addr::Buf(b, _) = a {
                self.reads.push(b);
            }
            return Ok(a);
        }
        if let Some(c) = self.const_of.get(&v) {
            return Ok(Addr::Const(*c));
        }
        let vals = self.const_vals(v).ok_or_else(|| {
            self.err(format!("value '{}' is neither computed nor a constant", self.g.value(v).name))
        })?;
        let c = self.out.consts.len() as u32;
        self.out.consts.push(vals);
        self.const_of.insert(v, c);
        Ok(Addr::Const(c))
    }

    /// A constant placed as a new constant with these values (folded at compile time).
    pub fn constant(&mut self, vals: Vec<f32>) -> Addr {
        self.out.consts.push(vals);
        Addr::Const(self.out.consts.len() as u32 - 1)
    }

    /// Bind `v` to a constant computed here.
    pub fn define_const(&mut self, v: ValueId, vals: Vec<f32>) {
        let a = self.constant(vals.clone());
        self.loc.insert(v, a);
        self.folded.insert(v, vals);
    }

    /// Weights of a convolution or matrix product: in `w16` for an fp16 bundle (unless the node keeps
    /// float32 weights), else as a constant. Returns the address and whether it is fp16.
    pub fn weights(&mut self, id: NodeId, v: ValueId) -> Result<(Addr, bool)> {
        if !self.f16 || self.g.nodes[id].keeps_fp32_weights() || !self.is_const(v) {
            return Ok((self.src(v)?, false));
        }
        self.weights_packed(id, v, 0, |w| w.to_vec())
    }

    /// Constant weights rearranged by `pack` (layout `key`, interned per value and layout), in `w16` for
    /// an fp16 bundle unless the node keeps float32 weights.
    pub fn weights_packed(
        &mut self,
        id: NodeId,
        v: ValueId,
        key: u8,
        pack: impl Fn(&[f32]) -> Vec<f32>,
    ) -> Result<(Addr, bool)> {
        let f16 = self.f16 && !self.g.nodes[id].keeps_fp32_weights();
        let map = if f16 { &self.w16_of } else { &self.packed_of };
        if let Some(w) = map.get(&(v, key)) {
            return Ok((if f16 { Addr::W16(*w) } else { Addr::Const(*w) }, f16));
        }
        let vals =
            self.const_vals(v).ok_or_else(|| self.err("weights must be numeric constants"))?;
        let packed = pack(&vals);
        if f16 {
            let w = self.out.w16.len() as u32;
            self.out.w16.push(packed);
            self.w16_of.insert((v, key), w);
            Ok((Addr::W16(w), true))
        } else {
            let c = self.out.consts.len() as u32;
            self.out.consts.push(packed);
            self.packed_of.insert((v, key), c);
            Ok((Addr::Const(c), false))
        }
    }

    /// Is `v` available to a kernel now (computed, or a constant)?
    pub fn available(&self, v: ValueId) -> bool {
        self.loc.contains_key(&v) || self.is_const(v)
    }

    fn new_buf(&mut self, elems: u64) -> u32 {
        self.out.bufs.push(elems.max(1));
        self.out.bufs.len() as u32 - 1
    }

    /// Where this step writes `v`: the place planned for it (a part of a Concat's output), else a new
    /// buffer.
    pub fn dst(&mut self, v: ValueId) -> Result<Addr> {
        let a = match self.place.get(&v) {
            Some(a) => *a,
            None => {
                let n: u64 = self.shape(v)?.iter().product();
                Addr::Buf(self.new_buf(n), 0)
            }
        };
        if let Addr::Buf(b, _) = a {
            self.writes.push(b);
        }
        self.loc.insert(v, a);
        Ok(a)
    }

    /// Forget this step's recorded writes (a node that turned out to need no step).
    pub fn discard_writes(&mut self) {
        self.writes.clear();
        self.reads.clear();
    }

    /// Where `v` was computed, if it was.
    pub fn loc_of(&self, v: ValueId) -> Option<Addr> {
        self.loc.get(&v).copied()
    }

    /// Bind `v` to a place without a step (a view into another buffer).
    pub fn bind(&mut self, v: ValueId, a: Addr) {
        self.loc.insert(v, a);
    }

    /// Plan zero-copy Concats: where everything before the axis has size 1, each input is a contiguous
    /// part of the output, so the step computing an input writes it there directly (see `dst`); inputs
    /// that are not computed by a step of their own (graph inputs, constants, views, repeats) are still
    /// copied by the Concat.
    fn plan_concats(&mut self, order: &[NodeId]) -> Result<()> {
        let g = self.g;
        for &id in order {
            let n = &g.nodes[id];
            let Op::Concat { axis } = &n.op else { continue };
            let Some(y) = n.output(0) else { continue };
            let Some(sy) = g.value(y).static_shape() else { continue };
            let r = sy.len() as i64;
            let a = if *axis < 0 { axis + r } else { *axis };
            if a < 0
                || a >= r
                || sy[..a as usize].iter().any(|d| *d != 1)
                || self.place.contains_key(&y)
            {
                continue;
            }
            let inner: i64 = sy[a as usize + 1..].iter().product();
            let total: i64 = sy.iter().product();
            let b = self.new_buf(total.max(0) as u64);
            self.place.insert(y, Addr::Buf(b, 0));
            let mut off = 0i64;
            let mut seen = HashSet::new();
            for v in n.inputs.iter().flatten() {
                let Some(sv) = g.value(*v).static_shape() else { return Ok(()) };
                let produced = g.value(*v).producer.is_some();
                if produced && seen.insert(*v) && !self.place.contains_key(v) && !g.is_output(*v) {
                    self.place.insert(*v, Addr::Buf(b, (off * inner) as u64));
                }
                off += sv.get(a as usize).copied().unwrap_or(0);
            }
        }
        Ok(())
    }

    /// A scratch buffer written by this step.
    pub fn temp(&mut self, elems: u64) -> Addr {
        let b = self.new_buf(elems);
        self.writes.push(b);
        Addr::Buf(b, 0)
    }

    /// Record a read of a buffer address (a temp read by a later step).
    pub fn read(&mut self, a: Addr) {
        if let Addr::Buf(b, _) = a {
            self.reads.push(b);
        }
    }

    /// `y` is a view of `x` (same elements, same order).
    pub fn alias(&mut self, x: ValueId, y: ValueId) -> Result<()> {
        let a = match self.loc.get(&x) {
            Some(a) => *a,
            None => {
                let a = self.src(x)?;
                self.reads.clear();
                a
            }
        };
        self.loc.insert(y, a);
        if let Some(f) = self.folded.get(&x).cloned() {
            self.folded.insert(y, f);
        }
        Ok(())
    }

    /// Emit one dispatch of `threads` invocations.
    pub fn step(&mut self, kernel: Kernel, words: Vec<Word>, threads: u64) {
        self.step_groups(kernel, words, threads, None);
    }

    /// Emit one dispatch with explicit workgroup counts (`threads`: the invocations that do work).
    pub fn step_groups(
        &mut self,
        kernel: Kernel,
        words: Vec<Word>,
        threads: u64,
        groups: Option<[u32; 3]>,
    ) {
        self.out.steps.push(Draft {
            kernel,
            words,
            threads,
            groups,
            node: self.node.clone(),
            op: self.op.clone(),
            reads: std::mem::take(&mut self.reads),
            writes: std::mem::take(&mut self.writes),
        });
    }

    /// Lower the whole graph.
    pub fn run(mut self) -> Result<Lowered> {
        let g = self.g;
        for &v in &g.inputs {
            if g.const_data(v).is_some() {
                continue;
            }
            let val = g.value(v);
            self.node = format!("input {}", val.name);
            let shape = self.shape(v)?;
            let Addr::Buf(buf, _) = self.dst(v)? else { continue };
            self.writes.clear();
            let dtype = val.dtype.name();
            self.out.inputs.push(Io { name: val.name.clone(), dtype, shape, buf, off: 0 });
        }
        let order = g.topo_order()?;
        self.plan_concats(&order)?;
        for id in order {
            let n = &g.nodes[id];
            self.node = n.name.clone();
            self.op = n.op.op_type().to_string();
            self.out.ops += 1;
            if self.done.contains(&id) {
                continue;
            }
            super::ops::lower(&mut self, id)?;
            if !self.reads.is_empty() || !self.writes.is_empty() {
                return Err(self.err("internal: a buffer access outside any step"));
            }
        }
        for &v in &g.outputs {
            let val = g.value(v);
            self.node = format!("output {}", val.name);
            self.op = "Output".into();
            let shape = self.shape(v)?;
            let a = self.src(v)?;
            let (buf, off) = match a {
                Addr::Buf(b, off) => {
                    self.reads.clear();
                    (b, off)
                }
                // An output the compiler folded to a constant: copy it into the arena.
                _ => {
                    self.loc.remove(&v);
                    let Addr::Buf(b, _) = self.dst(v)? else { continue };
                    let n: u64 = shape.iter().product();
                    super::ops::copy_flat(&mut self, a, Addr::Buf(b, 0), n)?;
                    (b, 0)
                }
            };
            let dtype = val.dtype.name();
            self.out.outputs.push(Io { name: val.name.clone(), dtype, shape, buf, off });
        }
        Ok(self.out)
    }
}

/// Workgroup counts for `threads` invocations (x ≤ 65535, y for the rest).
pub fn groups(threads: u64) -> [u32; 3] {
    let wg = threads.div_ceil(u64::from(WORKGROUP));
    if wg == 0 {
        return [0, 1, 1];
    }
    let x = wg.min(65535);
    [x as u32, wg.div_ceil(x) as u32, 1]
}
