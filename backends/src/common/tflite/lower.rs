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

/// How graph image inputs and outputs are laid out (`io_layout:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoLayout {
    #[default]
    Nhwc,
    Nchw,
}

pub struct Lowering<'a> {
    pub g: &'a Graph,
    pub m: TfModel,
    /// IR value → (tensor, is channel-last).
    map: HashMap<ValueId, (i32, bool)>,
    /// Converted copies: (value, channel-last, quantized) → tensor.
    alt: HashMap<(ValueId, bool, bool), i32>,
    /// Full-integer lowering (`int8`): quantized activations by value, DQ outputs aliased to their value.
    pub int8: bool,
    pub qp: HashMap<ValueId, super::model::QParams>,
    pub aliases: HashMap<ValueId, ValueId>,
    /// The node being lowered computes in float (its int8 inputs are dequantized on the way in).
    pub float_mode: bool,
    /// Constants the lowering computed (DequantizeLinear of a constant: the float weights it denotes).
    pub folded: HashMap<ValueId, (Vec<usize>, Vec<f32>)>,
    /// Operators to append once the current node's main op is emitted (unfusable activations).
    pub deferred: Vec<super::model::Operator>,
    /// Nodes already lowered as part of a pattern.
    pub skip: std::collections::HashSet<NodeId>,
    /// Node being lowered (for error messages).
    pub node: String,
    pub op: String,
    /// The model's default-domain opset (Resize before 11 samples asymmetrically).
    pub opset: i64,
    /// Lower grouped convolutions as SPLIT → CONV_2D per group → CONCATENATION (a device without grouped
    /// CONV_2D).
    pub split_grouped: bool,
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
        Lowering {
            g,
            m: TfModel::default(),
            map: HashMap::new(),
            alt: HashMap::new(),
            int8: false,
            qp: HashMap::new(),
            aliases: HashMap::new(),
            float_mode: true,
            deferred: Vec::new(),
            folded: HashMap::new(),
            skip: Default::default(),
            node: String::new(),
            op: String::new(),
            opset: 13,
            split_grouped: false,
        }
    }

    pub fn err(&self, reason: impl Into<String>) -> Error {
        Error::Node { node: self.node.clone(), op: self.op.clone(), reason: reason.into() }
    }

    /// The value whose tensor `v` reads (a DequantizeLinear output reads its quantized activation).
    pub fn resolve(&self, v: ValueId) -> ValueId {
        self.aliases.get(&v).copied().unwrap_or(v)
    }

    /// Does the current node read/write `v` as int8?
    fn wants_q(&self, v: ValueId) -> bool {
        !self.float_mode && self.qp.contains_key(&v)
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
        let shape = val
            .shape
            .as_ref()
            .ok_or_else(|| self.err(format!("value '{}' has no inferred shape", val.name)))?;
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
        self.g
            .value(v)
            .shape
            .as_ref()
            .map(|s| s.len())
            .or_else(|| self.g.const_data(v).map(|d| d.dims.len()))
            .unwrap_or(0)
    }

    pub fn is_const(&self, v: ValueId) -> bool {
        self.g.const_data(v).is_some() || self.folded.contains_key(&v)
    }

    /// Is `v` laid out channel-last (rank 4 only)?
    pub fn nhwc(&self, v: ValueId) -> bool {
        let v = self.resolve(v);
        self.map.get(&v).is_some_and(|(_, l)| *l)
    }

    /// Constant data of `v` as f32 with its ONNX dims.
    pub fn const_f32(&self, v: ValueId) -> Result<(Vec<usize>, Vec<f32>)> {
        if let Some(f) = self.folded.get(&v) {
            return Ok(f.clone());
        }
        let d = self
            .g
            .const_data(v)
            .ok_or_else(|| self.err(format!("'{}' must be a constant", self.g.value(v).name)))?;
        let vals = d
            .to_f32_vec()
            .or_else(|| d.to_f64_vec().map(|v| v.into_iter().map(|x| x as f32).collect()))
            .ok_or_else(|| self.err("constant is not numeric"))?;
        Ok((d.dims.iter().map(|x| *x as usize).collect(), vals))
    }

    pub fn const_i64(&self, v: ValueId) -> Result<Vec<i64>> {
        self.g.const_data(v).and_then(|d| d.to_i64_vec()).ok_or_else(|| {
            self.err(format!("'{}' must be an integer constant", self.g.value(v).name))
        })
    }

    /// Register `v` as produced into a fresh tensor; returns the tensor.
    pub fn define(&mut self, v: ValueId, nhwc: bool) -> Result<i32> {
        let v = self.resolve(v);
        let dims = self.dims(v)?;
        let shape: Vec<i32> = if nhwc && dims.len() == 4 { permute(&dims, &TO_NHWC) } else { dims }
            .iter()
            .map(|d| *d as i32)
            .collect();
        let (dtype, quant) = match self.qp.get(&v) {
            Some((q, dt)) if self.wants_q(v) => (*dt, Some(q.clone())),
            _ => (tensor_type(self.g.value(v).dtype), None),
        };
        let t = self.m.tensor(&self.g.value(v).name.clone(), shape, dtype);
        self.m.tensors[t as usize].quant = quant;
        self.map.insert(v, (t, nhwc && self.rank(v) == 4));
        Ok(t)
    }

    /// `v` is the same tensor as `t` (Identity, no-op reshapes).
    pub fn alias(&mut self, v: ValueId, t: i32, nhwc: bool) {
        self.map.insert(v, (t, nhwc));
    }

    /// The tensor holding `v` in the requested layout (a TRANSPOSE is added, once, when it differs).
    pub fn get(&mut self, v: ValueId, want_nhwc: bool) -> Result<i32> {
        let v = self.resolve(v);
        let want = want_nhwc && self.rank(v) == 4;
        let want_q = self.wants_q(v) && !self.is_const(v);
        if let Some(t) = self.alt.get(&(v, want, want_q)) {
            return Ok(*t);
        }
        if self.is_const(v) {
            let (dims, vals) = self.const_f32(v)?;
            let name = self.g.value(v).name.clone();
            let (dims, vals) = if want {
                (permute(&dims, &TO_NHWC), transpose_data(&vals, &dims, &TO_NHWC))
            } else {
                (dims, vals)
            };
            let t = match if self.folded.contains_key(&v) {
                kiln_compiler::ir::DType::F32
            } else {
                self.g.value(v).dtype
            } {
                kiln_compiler::ir::DType::F32
                | kiln_compiler::ir::DType::F16
                | kiln_compiler::ir::DType::F64 => {
                    self.m.const_f32(&name, dims.iter().map(|d| *d as i32).collect(), &vals)
                }
                _ => {
                    let iv: Vec<i32> = self.const_i64(v)?.iter().map(|x| *x as i32).collect();
                    let t = self.m.const_i32(&name, &iv);
                    self.m.tensors[t as usize].shape = dims.iter().map(|d| *d as i32).collect();
                    t
                }
            };
            self.alt.insert((v, want, want_q), t);
            return Ok(t);
        }
        let &(t, have) = self
            .map
            .get(&v)
            .ok_or_else(|| self.err(format!("input '{}' was not lowered", self.g.value(v).name)))?;
        let is_q = self.m.tensors[t as usize].quant.is_some();
        if have == want && is_q == want_q {
            return Ok(t);
        }
        let origin = self.node.clone();
        let mut cur = t;
        if have != want {
            let perm: &[usize] = if want { &TO_NHWC } else { &TO_NCHW };
            let shape = permute(self.m.shape(t), perm);
            let name = format!("{}_{}", self.g.value(v).name, if want { "nhwc" } else { "nchw" });
            let dtype = self.m.tensors[t as usize].dtype;
            let out = self.m.tensor(&name, shape, dtype);
            self.m.tensors[out as usize].quant = self.m.tensors[t as usize].quant.clone();
            let p = self.m.const_i32(
                &format!("{name}_perm"),
                &perm.iter().map(|x| *x as i32).collect::<Vec<_>>(),
            );
            self.m.op(Code::TRANSPOSE, vec![t, p], vec![out], Options::None, &origin);
            cur = out;
        }
        if is_q != want_q {
            let shape = self.m.shape(cur).to_vec();
            let name =
                format!("{}_{}", self.g.value(v).name, if want_q { "int8" } else { "float" });
            if want_q {
                let (q, dt) = self.qp[&v].clone();
                let out = self.m.tensor(&name, shape, dt);
                self.m.tensors[out as usize].quant = Some(q);
                self.m.op(Code::QUANTIZE, vec![cur], vec![out], Options::None, &origin);
                cur = out;
            } else {
                let out = self.m.tensor(&name, shape, TensorType::FLOAT32);
                self.m.op(Code::DEQUANTIZE, vec![cur], vec![out], Options::None, &origin);
                cur = out;
            }
        }
        self.alt.insert((v, want, want_q), cur);
        Ok(cur)
    }

    /// The tensor holding `v` as it was produced (int8 stays int8), in the requested layout.
    pub fn get_raw(&mut self, v: ValueId, want_nhwc: bool) -> Result<i32> {
        let v = self.resolve(v);
        let want = want_nhwc && self.rank(v) == 4;
        match self.map.get(&v) {
            Some(&(t, have)) if have == want => Ok(t),
            _ => self.get(v, want_nhwc),
        }
    }

    /// The operands of a broadcasting element-wise op with a rank-`rank` result, and its layout:
    /// channel-last when every non-constant operand is a channel-last rank-4 tensor. Constants are
    /// broadcast in that layout, except inputs listed in `as_is` (a boolean condition), read like values.
    pub fn elementwise_operands(
        &mut self,
        ins: &[ValueId],
        rank: usize,
        as_is: &[usize],
    ) -> Result<(Vec<i32>, bool)> {
        let dynamic: Vec<ValueId> = ins.iter().copied().filter(|v| !self.is_const(*v)).collect();
        let nhwc = rank == 4
            && !dynamic.is_empty()
            && dynamic.iter().all(|v| self.rank(*v) == 4 && self.nhwc(*v));
        let mut ts = Vec::with_capacity(ins.len());
        for (k, v) in ins.iter().enumerate() {
            ts.push(if self.is_const(*v) && !as_is.contains(&k) {
                self.broadcast_const(*v, rank, nhwc)?
            } else {
                self.get(*v, nhwc)?
            });
        }
        Ok((ts, nhwc))
    }

    /// A constant for broadcasting against a rank-`rank` partner in the partner's layout.
    pub fn broadcast_const(&mut self, v: ValueId, rank: usize, nhwc: bool) -> Result<i32> {
        let (dims, vals) = self.const_f32(v)?;
        let (nd, data) = if nhwc && rank == 4 {
            let mut full = vec![1usize; 4usize.saturating_sub(dims.len())];
            full.extend(&dims);
            (permute(&full, &TO_NHWC), transpose_data(&vals, &full, &TO_NHWC))
        } else if self.float_mode {
            return self.get(v, false);
        } else {
            (dims, vals)
        };
        let name = format!("{}_{}", self.g.value(v).name, if nhwc { "nhwc" } else { "c" });
        let shape: Vec<i32> = nd.iter().map(|d| *d as i32).collect();
        if self.float_mode {
            return Ok(self.m.const_f32(&name, shape, &data));
        }
        // An integer op reads its constant operand as int8.
        let (q, quant) = super::model::quantize_const(&data);
        let t = self.m.constant(&name, shape, TensorType::INT8, q);
        self.m.tensors[t as usize].quant = Some(quant);
        Ok(t)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_data_moves_channels_last() {
        // [1, 2, 2, 3] NCHW with value = c*100 + h*10 + w → NHWC [1, 2, 3, 2].
        let dims = [1usize, 2, 2, 3];
        let data: Vec<i32> = (0..12).map(|i| (i / 6) * 100 + ((i / 3) % 2) * 10 + i % 3).collect();
        let out = transpose_data(&data, &dims, &TO_NHWC);
        assert_eq!(permute(&dims, &TO_NHWC), vec![1, 2, 3, 2]);
        assert_eq!(&out[..6], &[0, 100, 1, 101, 2, 102]);
        assert_eq!(transpose_data(&out, &[1, 2, 3, 2], &TO_NCHW), data);
    }
}
