//! IR → `TfModel`, with NCHW→NHWC layout propagation.
//!
//! Every IR value maps to one TFLite tensor and a layout: rank-4 activations that reach spatial ops live
//! channel-last (`nhwc`), everything else keeps the ONNX order. Ops that are layout-agnostic (element-wise
//! ops, activations, concat/split along a mapped axis, transposes, reductions with mapped axes) keep the
//! layout of their input, so a CNN runs channel-last end to end. An op that needs the ONNX order (a
//! reshape that moves channel data, softmax over a non-last axis) gets a TRANSPOSE on that edge only;
//! the transposed copy is cached per value.
//!
//! Constants are written in the layout their consumer needs: conv filters OHWI, depthwise filters 1HWC,
//! fully-connected weights [out, in], broadcast constants permuted like their partner.
use std::collections::HashMap;

use kiln_compiler::ir::{Dim, Graph, NodeId, ValueId};
use kiln_compiler::{Error, Result};

use super::model::{Code, Options, TensorType, TfModel};

/// NCHW → NHWC permutation and its inverse.
pub const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
pub const TO_NCHW: [usize; 4] = [0, 3, 1, 2];

/// How graph image inputs and outputs are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoLayout {
    Nhwc,
    Nchw,
}

pub struct Lowering<'a> {
    pub g: &'a Graph,
    pub m: TfModel,
    /// IR value → (tensor, is channel-last).
    map: HashMap<ValueId, (i32, bool)>,
    /// Transposed or re-laid-out copies: (value, want channel-last) → tensor.
    alt: HashMap<(ValueId, bool), i32>,
    /// Constants the lowering computed (DequantizeLinear of a constant: the float weights it denotes).
    pub folded: HashMap<ValueId, (Vec<usize>, Vec<f32>)>,
    /// Nodes already lowered as part of a pattern.
    pub skip: std::collections::HashSet<NodeId>,
    /// Node being lowered (for error messages).
    pub node: String,
    pub op: String,
}

pub fn permute<T: Copy>(v: &[T], perm: &[usize]) -> Vec<T> {
    perm.iter().map(|p| v[*p]).collect()
}

/// Permute a dense tensor of `dims` by `perm` (output dim i = input dim perm[i]).
pub fn transpose_data<T: Copy + Default>(data: &[T], dims: &[usize], perm: &[usize]) -> Vec<T> {
    let rank = dims.len();
    let out_dims = permute(dims, perm);
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * dims[i + 1];
    }
    let mut out = vec![T::default(); data.len()];
    let mut idx = vec![0usize; rank];
    for o in out.iter_mut() {
        let src: usize = (0..rank).map(|i| idx[i] * in_strides[perm[i]]).sum();
        *o = data[src];
        for i in (0..rank).rev() {
            idx[i] += 1;
            if idx[i] < out_dims[i] {
                break;
            }
            idx[i] = 0;
        }
    }
    out
}

impl<'a> Lowering<'a> {
    pub fn new(g: &'a Graph) -> Self {
        Lowering { g, m: TfModel::default(), map: HashMap::new(), alt: HashMap::new(), folded: HashMap::new(), skip: Default::default(), node: String::new(), op: String::new() }
    }

    pub fn err(&self, reason: impl Into<String>) -> Error {
        Error::Node { node: self.node.clone(), op: self.op.clone(), reason: reason.into() }
    }

    /// Static ONNX-order shape of `v` (a symbolic leading batch dimension becomes 1).
    pub fn dims(&self, v: ValueId) -> Result<Vec<i64>> {
        let val = self.g.value(v);
        if let Some(d) = self.g.const_data(v) {
            return Ok(d.dims.clone());
        }
        if let Some((d, _)) = self.folded.get(&v) {
            return Ok(d.iter().map(|x| *x as i64).collect());
        }
        let shape = val.shape.as_ref().ok_or_else(|| self.err(format!("value '{}' has no inferred shape", val.name)))?;
        shape
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dim::Known(n) => Ok(*n),
                _ if i == 0 => Ok(1),
                _ => Err(self.err(format!("value '{}' has a dynamic dimension {i}; TFLite needs static shapes (pin it under `inputs:`)", val.name))),
            })
            .collect()
    }

    pub fn rank(&self, v: ValueId) -> usize {
        if let Some((d, _)) = self.folded.get(&v) {
            return d.len();
        }
        self.g.value(v).shape.as_ref().map(|s| s.len()).or_else(|| self.g.const_data(v).map(|d| d.dims.len())).unwrap_or(0)
    }

    pub fn is_const(&self, v: ValueId) -> bool {
        self.g.const_data(v).is_some() || self.folded.contains_key(&v)
    }

    /// Is `v` laid out channel-last (rank 4 only)?
    pub fn nhwc(&self, v: ValueId) -> bool {
        self.map.get(&v).is_some_and(|(_, l)| *l)
    }

    /// Constant data of `v` as f32 with its ONNX dims.
    pub fn const_f32(&self, v: ValueId) -> Result<(Vec<usize>, Vec<f32>)> {
        if let Some(f) = self.folded.get(&v) {
            return Ok(f.clone());
        }
        let d = self.g.const_data(v).ok_or_else(|| self.err(format!("'{}' must be a constant", self.g.value(v).name)))?;
        let vals = d.to_f32_vec().or_else(|| d.to_f64_vec().map(|v| v.into_iter().map(|x| x as f32).collect())).ok_or_else(|| self.err("constant is not numeric"))?;
        Ok((d.dims.iter().map(|x| *x as usize).collect(), vals))
    }

    pub fn const_i64(&self, v: ValueId) -> Result<Vec<i64>> {
        self.g.const_data(v).and_then(|d| d.to_i64_vec()).ok_or_else(|| self.err(format!("'{}' must be an integer constant", self.g.value(v).name)))
    }

    /// Register `v` as produced into a fresh tensor; returns the tensor.
    pub fn define(&mut self, v: ValueId, nhwc: bool) -> Result<i32> {
        let dims = self.dims(v)?;
        let shape: Vec<i32> = if nhwc && dims.len() == 4 { permute(&dims, &TO_NHWC) } else { dims }.iter().map(|d| *d as i32).collect();
        let dtype = tensor_type(self.g.value(v).dtype);
        let t = self.m.tensor(&self.g.value(v).name.clone(), shape, dtype);
        self.map.insert(v, (t, nhwc && self.rank(v) == 4));
        Ok(t)
    }

    /// `v` is the same tensor as `t` (Identity, no-op reshapes).
    pub fn alias(&mut self, v: ValueId, t: i32, nhwc: bool) {
        self.map.insert(v, (t, nhwc));
    }

    /// The tensor holding `v` in the requested layout (a TRANSPOSE is added, once, when it differs).
    pub fn get(&mut self, v: ValueId, want_nhwc: bool) -> Result<i32> {
        let want = want_nhwc && self.rank(v) == 4;
        if let Some(t) = self.alt.get(&(v, want)) {
            return Ok(*t);
        }
        if self.is_const(v) {
            let (dims, vals) = self.const_f32(v)?;
            let name = self.g.value(v).name.clone();
            let (dims, vals) = if want { (permute(&dims, &TO_NHWC), transpose_data(&vals, &dims, &TO_NHWC)) } else { (dims, vals) };
            let t = match if self.folded.contains_key(&v) { kiln_compiler::ir::DType::F32 } else { self.g.value(v).dtype } {
                kiln_compiler::ir::DType::F32 | kiln_compiler::ir::DType::F16 | kiln_compiler::ir::DType::F64 => self.m.const_f32(&name, dims.iter().map(|d| *d as i32).collect(), &vals),
                _ => {
                    let iv: Vec<i32> = self.const_i64(v)?.iter().map(|x| *x as i32).collect();
                    let t = self.m.const_i32(&name, &iv);
                    self.m.tensors[t as usize].shape = dims.iter().map(|d| *d as i32).collect();
                    t
                }
            };
            self.alt.insert((v, want), t);
            return Ok(t);
        }
        let &(t, have) = self.map.get(&v).ok_or_else(|| self.err(format!("input '{}' was not lowered", self.g.value(v).name)))?;
        if have == want {
            return Ok(t);
        }
        let perm: &[usize] = if want { &TO_NHWC } else { &TO_NCHW };
        let shape = permute(self.m.shape(t), perm);
        let name = format!("{}_{}", self.g.value(v).name, if want { "nhwc" } else { "nchw" });
        let dtype = self.m.tensors[t as usize].dtype;
        let out = self.m.tensor(&name, shape, dtype);
        let p = self.m.const_i32(&format!("{name}_perm"), &perm.iter().map(|x| *x as i32).collect::<Vec<_>>());
        let origin = self.node.clone();
        self.m.op(Code::TRANSPOSE, vec![t, p], vec![out], Options::None, &origin);
        self.alt.insert((v, want), out);
        Ok(out)
    }

    /// A constant for broadcasting against a rank-`rank` partner in the partner's layout.
    pub fn broadcast_const(&mut self, v: ValueId, rank: usize, nhwc: bool) -> Result<i32> {
        let (dims, vals) = self.const_f32(v)?;
        if !(nhwc && rank == 4) {
            return self.get(v, false);
        }
        let mut full = vec![1usize; 4usize.saturating_sub(dims.len())];
        full.extend(&dims);
        let nd = permute(&full, &TO_NHWC);
        let data = transpose_data(&vals, &full, &TO_NHWC);
        let name = format!("{}_nhwc", self.g.value(v).name);
        Ok(self.m.const_f32(&name, nd.iter().map(|d| *d as i32).collect(), &data))
    }

    pub fn emit(&mut self, code: Code, inputs: Vec<i32>, outputs: Vec<i32>, options: Options) {
        let origin = self.node.clone();
        self.m.op(code, inputs, outputs, options, &origin);
    }

    /// A fresh intermediate tensor shaped like `like`.
    pub fn temp_like(&mut self, like: i32, suffix: &str) -> i32 {
        let t = &self.m.tensors[like as usize];
        let (shape, dtype, name) = (t.shape.clone(), t.dtype, format!("{}_{suffix}", t.name));
        self.m.tensor(&name, shape, dtype)
    }

    /// Lower the whole graph.
    pub fn run(mut self, io: IoLayout) -> Result<TfModel> {
        let g = self.g;
        for &v in &g.inputs {
            if g.initializers.contains(&v) {
                continue;
            }
            let nhwc = io == IoLayout::Nhwc && self.rank(v) == 4;
            let t = self.define(v, nhwc)?;
            self.m.inputs.push(t);
        }
        for id in g.topo_order()? {
            if self.skip.contains(&id) {
                continue;
            }
            self.lower_node(id)?;
        }
        for &v in &g.outputs {
            let nhwc = io == IoLayout::Nhwc;
            let t = self.get(v, nhwc)?;
            self.m.outputs.push(t);
        }
        Ok(self.m)
    }

    fn lower_node(&mut self, id: NodeId) -> Result<()> {
        let n = &self.g.nodes[id];
        self.node = n.name.clone();
        self.op = n.op.op_type().to_string();
        super::ops::lower(self, id)
    }
}

pub fn tensor_type(d: kiln_compiler::ir::DType) -> TensorType {
    use kiln_compiler::ir::DType as D;
    match d {
        D::F16 => TensorType::FLOAT16,
        D::I32 => TensorType::INT32,
        D::I64 => TensorType::INT64,
        D::I8 => TensorType::INT8,
        D::U8 => TensorType::UINT8,
        D::Bool => TensorType::BOOL,
        _ => TensorType::FLOAT32,
    }
}
