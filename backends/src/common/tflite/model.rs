//! An in-memory TFLite model: tensors (with optional constant data and quantization), builtin operators
//! with their options, graph inputs and outputs. The lowering builds it; `ser` writes it as the
//! flatbuffer; partition reports read it. Nothing here knows ONNX.
use std::collections::BTreeMap;

pub use tract_tflite::tflite::{
    ActivationFunctionType as Fused, BuiltinOperator as Code, Padding, TensorType,
};

/// Per-tensor or per-axis affine quantization.
#[derive(Clone, Debug, PartialEq)]
pub struct Quant {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub axis: i32,
}

#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i32>,
    pub dtype: TensorType,
    /// Little-endian constant bytes.
    pub data: Option<Vec<u8>>,
    pub quant: Option<Quant>,
    /// State the runtime keeps between invocations (LSTM h and c).
    pub is_variable: bool,
    /// Stays float32 in a float16 model (an fp32 island chosen by the quantizer).
    pub keep_f32: bool,
}

/// Builtin options, one variant per options table kiln writes.
#[derive(Clone, Debug, PartialEq)]
pub enum Options {
    None,
    Conv {
        padding: Padding,
        stride: (i32, i32),
        dilation: (i32, i32),
        act: Fused,
    },
    Depthwise {
        padding: Padding,
        stride: (i32, i32),
        dilation: (i32, i32),
        multiplier: i32,
        act: Fused,
    },
    Pool {
        padding: Padding,
        stride: (i32, i32),
        filter: (i32, i32),
        act: Fused,
    },
    FullyConnected {
        act: Fused,
        keep_num_dims: bool,
    },
    /// Add, Sub, Mul, Div.
    Binary {
        act: Fused,
    },
    Concat {
        axis: i32,
        act: Fused,
    },
    Reshape {
        shape: Vec<i32>,
    },
    Softmax {
        beta: f32,
    },
    Reducer {
        keep_dims: bool,
    },
    LeakyRelu {
        alpha: f32,
    },
    Gelu {
        approximate: bool,
    },
    BatchMatMul {
        adj_x: bool,
        adj_y: bool,
    },
    Gather {
        axis: i32,
    },
    Split {
        num_splits: i32,
    },
    SplitV {
        num_splits: i32,
    },
    Lstm {
        cell_clip: f32,
        time_major: bool,
    },
    StridedSlice,
    /// STRIDED_SLICE whose `end_mask` bits run an axis to its end (a negative step down to index 0, which
    /// no end index can say: −1 means the last element).
    StridedSliceMasked {
        end_mask: i32,
    },
    /// RESIZE_BILINEAR (`nearest: false`) or RESIZE_NEAREST_NEIGHBOR.
    Resize {
        nearest: bool,
        align_corners: bool,
        half_pixel: bool,
    },
    /// MIRROR_PAD: `reflect` (edge not repeated) or symmetric.
    MirrorPad {
        reflect: bool,
    },
    TransposeConv {
        padding: Padding,
        stride: (i32, i32),
        act: Fused,
    },
    ArgMax {
        output: TensorType,
    },
    Pack {
        count: i32,
        axis: i32,
    },
    Unpack {
        num: i32,
        axis: i32,
    },
    Cast {
        from: TensorType,
        to: TensorType,
    },
}

#[derive(Clone, Debug)]
pub struct Operator {
    pub code: Code,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub options: Options,
    /// The IR node it came from (for reports).
    pub origin: String,
}

#[derive(Clone, Debug, Default)]
pub struct TfModel {
    pub tensors: Vec<Tensor>,
    pub operators: Vec<Operator>,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    names: BTreeMap<String, usize>,
}

impl TfModel {
    /// A tensor with a unique name derived from `name`.
    pub fn tensor(&mut self, name: &str, shape: Vec<i32>, dtype: TensorType) -> i32 {
        let mut n = name.to_string();
        let mut k = 1;
        while self.names.contains_key(&n) {
            n = format!("{name}_{k}");
            k += 1;
        }
        self.names.insert(n.clone(), self.tensors.len());
        self.tensors.push(Tensor {
            name: n,
            shape,
            dtype,
            data: None,
            quant: None,
            is_variable: false,
            keep_f32: false,
        });
        (self.tensors.len() - 1) as i32
    }

    pub fn constant(
        &mut self,
        name: &str,
        shape: Vec<i32>,
        dtype: TensorType,
        bytes: Vec<u8>,
    ) -> i32 {
        let t = self.tensor(name, shape, dtype);
        self.tensors[t as usize].data = Some(bytes);
        t
    }

    pub fn const_f32(&mut self, name: &str, shape: Vec<i32>, v: &[f32]) -> i32 {
        self.constant(
            name,
            shape,
            TensorType::FLOAT32,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    pub fn const_i32(&mut self, name: &str, v: &[i32]) -> i32 {
        self.constant(
            name,
            vec![v.len() as i32],
            TensorType::INT32,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    pub fn op(
        &mut self,
        code: Code,
        inputs: Vec<i32>,
        outputs: Vec<i32>,
        options: Options,
        origin: &str,
    ) {
        self.operators.push(Operator {
            code,
            inputs,
            outputs,
            options,
            origin: origin.to_string(),
        });
    }

    pub fn shape(&self, t: i32) -> &[i32] {
        &self.tensors[t as usize].shape
    }

    pub fn is_const(&self, t: i32) -> bool {
        self.tensors[t as usize].data.is_some()
    }

    /// Constant data as f32 (FLOAT32 tensors only).
    pub fn f32_data(&self, t: i32) -> Option<Vec<f32>> {
        let tensor = &self.tensors[t as usize];
        (tensor.dtype == TensorType::FLOAT32).then_some(())?;
        Some(
            tensor
                .data
                .as_ref()?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
}

pub fn elements(shape: &[i32]) -> u64 {
    shape.iter().map(|d| (*d).max(1) as u64).product()
}

/// Multiply-accumulates of one operator.
pub fn macs(m: &TfModel, o: &Operator) -> u64 {
    let out = o.outputs.first().map(|t| elements(m.shape(*t))).unwrap_or(0);
    let shape = |i: usize| {
        o.inputs.get(i).filter(|t| **t >= 0).map(|t| m.shape(*t).to_vec()).unwrap_or_default()
    };
    match o.code {
        Code::CONV_2D => {
            let f = shape(1);
            out * f.get(1..).map(elements).unwrap_or(0)
        }
        Code::DEPTHWISE_CONV_2D => {
            let f = shape(1);
            out * f.get(1..3).map(elements).unwrap_or(0)
        }
        Code::FULLY_CONNECTED => out * shape(1).get(1).copied().unwrap_or(0).max(0) as u64,
        Code::BATCH_MATMUL => {
            let a = shape(0);
            out * a.last().copied().unwrap_or(0).max(0) as u64
        }
        _ => 0,
    }
}

/// Scale/zero point, and the integer type, of a quantized activation.
pub type QParams = (Quant, TensorType);

/// Per-tensor asymmetric int8 for a float constant used by an integer op.
pub fn quantize_const(vals: &[f32]) -> (Vec<u8>, Quant) {
    let lo = vals.iter().fold(0f32, |m, v| m.min(*v));
    let hi = vals.iter().fold(0f32, |m, v| m.max(*v));
    let scale = ((hi - lo) / 255.0).max(1e-12);
    let zp = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i64;
    let q = vals
        .iter()
        .map(|v| ((v / scale).round() + zp as f32).clamp(-128.0, 127.0) as i8 as u8)
        .collect();
    (q, Quant { scale: vec![scale], zero_point: vec![zp], axis: 0 })
}

impl TfModel {
    /// The int32 values of a constant tensor.
    pub fn i32_data(&self, t: i32) -> Option<Vec<i32>> {
        let tensor = self.tensors.get(t as usize)?;
        (tensor.dtype == TensorType::INT32).then_some(())?;
        let b = tensor.data.as_ref()?;
        Some(b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// Fold chains of TRANSPOSE (and of RESHAPE, which become one RESHAPE): `TRANSPOSE(p1) → TRANSPOSE(p2)` whose middle tensor nothing else reads
    /// becomes one `TRANSPOSE(p1∘p2)`, and disappears when that is the identity (its readers then read
    /// the first input). A layout change the lowering put before a transpose the model wrote, and
    /// transposes that undo each other, cost nothing at run time. Returns how many ops it removed.
    pub fn fold_transposes(&mut self) -> usize {
        let mut removed = 0;
        loop {
            let mut readers: BTreeMap<i32, usize> = BTreeMap::new();
            for o in &self.operators {
                for t in &o.inputs {
                    *readers.entry(*t).or_default() += 1;
                }
            }
            let producer: BTreeMap<i32, usize> = self
                .operators
                .iter()
                .enumerate()
                .flat_map(|(i, o)| o.outputs.iter().map(move |t| (*t, i)))
                .collect();
            if self.drop_identity_reshape() {
                removed += 1;
                continue;
            }
            if self.unit_transpose_to_reshape() {
                continue;
            }
            if self.reshape_before_transpose(&readers, &producer)
                || self.concat_before_transpose(&readers, &producer)
                || self.quantize_before_transpose(&readers, &producer)
            {
                continue;
            }
            let mut change = None;
            for (b, ob) in self.operators.iter().enumerate() {
                if !matches!(ob.code, Code::TRANSPOSE | Code::RESHAPE) || ob.inputs.is_empty() {
                    continue;
                }
                let mid = ob.inputs[0];
                let Some(&a) = producer.get(&mid) else { continue };
                let oa = &self.operators[a];
                if oa.code != ob.code
                    || readers.get(&mid) != Some(&1)
                    || self.outputs.contains(&mid)
                    || self.tensors[mid as usize].quant
                        != self.tensors[ob.outputs[0] as usize].quant
                {
                    continue;
                }
                if ob.code == Code::RESHAPE {
                    // A reshape of a reshape is one reshape to the second's shape.
                    change = Some((a, b, None));
                    break;
                }
                let (Some(p1), Some(p2)) =
                    (self.i32_data(oa.inputs[1]), self.i32_data(ob.inputs[1]))
                else {
                    continue;
                };
                if p1.len() != p2.len() || p2.iter().any(|p| *p < 0 || *p as usize >= p1.len()) {
                    continue;
                }
                let p: Vec<i32> = p2.iter().map(|i| p1[*i as usize]).collect();
                change = Some((a, b, Some(p)));
                break;
            }
            let Some((a, b, p)) = change else { break };
            let Some(p) = p else {
                self.operators[b].inputs[0] = self.operators[a].inputs[0];
                self.operators.remove(a);
                removed += 1;
                continue;
            };
            let x = self.operators[a].inputs[0];
            let y = self.operators[b].outputs[0];
            let identity = p.iter().enumerate().all(|(i, v)| i as i32 == *v);
            if identity && !self.outputs.contains(&y) && !self.inputs.contains(&x) {
                self.rewire(y, x);
                self.operators.remove(b);
                self.operators.remove(a);
                removed += 2;
            } else {
                let name = format!("{}_perm", self.tensors[y as usize].name);
                let pt = self.const_i32(&name, &p);
                self.operators[b].inputs = vec![x, pt];
                self.operators.remove(a);
                removed += 1;
            }
        }
        removed
    }

    /// Every operator reading tensor `from` reads `to` instead.
    fn rewire(&mut self, from: i32, to: i32) {
        for t in self.operators.iter_mut().flat_map(|o| o.inputs.iter_mut()) {
            if *t == from {
                *t = to;
            }
        }
    }

    /// A RESHAPE to its input's own shape: its readers read the input instead.
    fn drop_identity_reshape(&mut self) -> bool {
        let found = self.operators.iter().position(|o| {
            o.code == Code::RESHAPE
                && !o.inputs.is_empty()
                && o.inputs[0] >= 0
                && self.shape(o.inputs[0]) == self.shape(o.outputs[0])
                && self.tensors[o.inputs[0] as usize].quant
                    == self.tensors[o.outputs[0] as usize].quant
                && !self.outputs.contains(&o.outputs[0])
        });
        let Some(i) = found else { return false };
        let (x, y) = (self.operators[i].inputs[0], self.operators[i].outputs[0]);
        self.rewire(y, x);
        self.operators.remove(i);
        true
    }

    /// TRANSPOSE(p) → RESHAPE becomes RESHAPE → TRANSPOSE(p') when the reshape only drops or inserts unit
    /// dims, or merges runs of adjacent dims that come from consecutive source dims in order: the
    /// transpose then travels on to meet and fold with the next (a 1-D convolution's channel-last
    /// [N, 1, L, C] squeezed to [N, C, L] and transposed by the model; a channel-last map viewed as
    /// [N, C, H, W] and flattened to [N, C, H·W]).
    fn reshape_before_transpose(
        &mut self,
        readers: &BTreeMap<i32, usize>,
        producer: &BTreeMap<i32, usize>,
    ) -> bool {
        let mut found = None;
        for (b, ob) in self.operators.iter().enumerate() {
            if ob.code != Code::RESHAPE || ob.inputs.is_empty() {
                continue;
            }
            let mid = ob.inputs[0];
            let Some(&a) = producer.get(&mid) else { continue };
            let oa = &self.operators[a];
            if oa.code != Code::TRANSPOSE
                || readers.get(&mid) != Some(&1)
                || self.outputs.contains(&mid)
                || self.tensors[mid as usize].quant != self.tensors[ob.outputs[0] as usize].quant
            {
                continue;
            }
            let Some(p) = self.i32_data(oa.inputs[1]) else { continue };
            let src = self.shape(oa.inputs[0]).to_vec();
            let (t, r) = (self.shape(mid).to_vec(), self.shape(ob.outputs[0]).to_vec());
            let n = src.len();
            if p.len() != t.len() || p.len() != n || p.iter().any(|d| *d < 0 || *d as usize >= n) {
                continue;
            }
            let plan = drop_units(&src, &t, &r, &p)
                .or_else(|| insert_units(&src, &t, &r, &p))
                .or_else(|| merge_runs(&src, &t, &r, &p));
            if let Some((s2, p2)) = plan {
                found = Some((a, b, s2, p2));
                break;
            }
        }
        let Some((a, b, s2, p2)) = found else { return false };
        let (x, y) = (self.operators[a].inputs[0], self.operators[b].outputs[0]);
        self.reshape_then_transpose(a, b, x, y, s2, p2);
        true
    }

    /// A TRANSPOSE that keeps the order of every dim larger than 1 moves only unit dims: a RESHAPE.
    fn unit_transpose_to_reshape(&mut self) -> bool {
        let found = self.operators.iter().position(|o| {
            if o.code != Code::TRANSPOSE || o.inputs.len() != 2 {
                return false;
            }
            let Some(p) = self.i32_data(o.inputs[1]) else { return false };
            let s = self.shape(o.inputs[0]);
            if p.len() != s.len() || p.iter().any(|d| *d < 0 || *d as usize >= s.len()) {
                return false;
            }
            let order: Vec<i32> = p.iter().copied().filter(|d| s[*d as usize] != 1).collect();
            order.windows(2).all(|w| w[0] < w[1])
        });
        let Some(i) = found else { return false };
        let shape = self.shape(self.operators[i].outputs[0]).to_vec();
        let name = format!("{}_shape", self.tensors[self.operators[i].outputs[0] as usize].name);
        let st = self.const_i32(&name, &shape);
        let o = &mut self.operators[i];
        o.code = Code::RESHAPE;
        o.inputs[1] = st;
        o.options = Options::Reshape { shape };
        true
    }

    /// Drop tensors no operator, input or output refers to (constants a fold left behind, a filter split
    /// into groups), renumbering the rest in order.
    pub fn compact(&mut self) {
        let mut used = vec![false; self.tensors.len()];
        let refs = self
            .operators
            .iter()
            .flat_map(|o| o.inputs.iter().chain(&o.outputs))
            .chain(&self.inputs)
            .chain(&self.outputs);
        for t in refs {
            if let Some(u) = usize::try_from(*t).ok().and_then(|t| used.get_mut(t)) {
                *u = true;
            }
        }
        let mut map = vec![-1i32; self.tensors.len()];
        let mut kept = Vec::new();
        for (i, t) in std::mem::take(&mut self.tensors).into_iter().enumerate() {
            if used[i] {
                map[i] = kept.len() as i32;
                kept.push(t);
            }
        }
        self.tensors = kept;
        self.names = self.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        let remap = |t: &mut i32| {
            if *t >= 0 {
                *t = map[*t as usize];
            }
        };
        for o in self.operators.iter_mut() {
            o.inputs.iter_mut().for_each(remap);
            o.outputs.iter_mut().for_each(remap);
        }
        self.inputs.iter_mut().for_each(remap);
        self.outputs.iter_mut().for_each(remap);
    }

    /// Replace ops `a` (a TRANSPOSE) and `b` (a RESHAPE of its output) by RESHAPE(x → s2) at `a` and
    /// TRANSPOSE(p2) → y at `b`.
    fn reshape_then_transpose(
        &mut self,
        a: usize,
        b: usize,
        x: i32,
        y: i32,
        s2: Vec<i32>,
        p2: Vec<i32>,
    ) {
        let name = format!("{}_regrouped", self.tensors[x as usize].name);
        let dtype = self.tensors[x as usize].dtype;
        let mid = self.tensor(&name, s2.clone(), dtype);
        self.tensors[mid as usize].quant = self.tensors[x as usize].quant.clone();
        let st = self.const_i32(&format!("{name}_shape"), &s2);
        let pt = self.const_i32(&format!("{name}_perm"), &p2);
        let origin_a = self.operators[a].origin.clone();
        let origin_b = self.operators[b].origin.clone();
        self.operators[a] = Operator {
            code: Code::RESHAPE,
            inputs: vec![x, st],
            outputs: vec![mid],
            options: Options::Reshape { shape: s2 },
            origin: origin_b,
        };
        self.operators[b] = Operator {
            code: Code::TRANSPOSE,
            inputs: vec![mid, pt],
            outputs: vec![y],
            options: Options::None,
            origin: origin_a,
        };
    }

    /// A CONCATENATION of TRANSPOSE(p) outputs (each read by it alone) is the TRANSPOSE(p) of the
    /// concatenation of their inputs along the matching axis: one transpose instead of one per input
    /// (a detector's per-level heads flattened channel-last and concatenated).
    fn concat_before_transpose(
        &mut self,
        readers: &BTreeMap<i32, usize>,
        producer: &BTreeMap<i32, usize>,
    ) -> bool {
        let mut found = None;
        'ops: for (c, oc) in self.operators.iter().enumerate() {
            let Options::Concat { axis, act } = oc.options else { continue };
            if oc.code != Code::CONCATENATION || oc.inputs.len() < 2 {
                continue;
            }
            let mut perm: Option<Vec<i32>> = None;
            let mut srcs = Vec::new();
            for t in &oc.inputs {
                let Some(&a) = producer.get(t) else { continue 'ops };
                let oa = &self.operators[a];
                if oa.code != Code::TRANSPOSE
                    || readers.get(t) != Some(&1)
                    || self.outputs.contains(t)
                    || self.tensors[*t as usize].quant != self.tensors[oa.inputs[0] as usize].quant
                {
                    continue 'ops;
                }
                let Some(p) = self.i32_data(oa.inputs[1]) else { continue 'ops };
                if perm.as_ref().is_some_and(|q| *q != p) {
                    continue 'ops;
                }
                perm = Some(p);
                srcs.push((a, oa.inputs[0]));
            }
            let Some(p) = perm else { continue };
            // The inputs must already share the concatenation's parameters (no requantizing moved).
            let q = &self.tensors[oc.outputs[0] as usize].quant;
            if srcs.iter().any(|(_, x)| self.tensors[*x as usize].quant != *q) {
                continue;
            }
            let rank = p.len() as i32;
            let ax = if axis < 0 { axis + rank } else { axis };
            let Some(&src_axis) = usize::try_from(ax).ok().and_then(|a| p.get(a)) else { continue };
            found = Some((c, p, srcs, src_axis, act));
            break;
        }
        let Some((c, p, srcs, src_axis, act)) = found else { return false };
        let out = self.operators[c].outputs[0];
        let mut shape = self.shape(srcs[0].1).to_vec();
        let total = srcs
            .iter()
            .map(|(_, x)| self.shape(*x).get(src_axis as usize).copied().unwrap_or(0))
            .sum();
        match shape.get_mut(src_axis as usize) {
            Some(slot) => *slot = total,
            None => return false,
        }
        let name = format!("{}_before_transpose", self.tensors[out as usize].name);
        let dtype = self.tensors[out as usize].dtype;
        let joined = self.tensor(&name, shape, dtype);
        self.tensors[joined as usize].quant = self.tensors[out as usize].quant.clone();
        let pt = self.const_i32(&format!("{name}_perm"), &p);
        let origin = self.operators[c].origin.clone();
        self.operators[c] = Operator {
            code: Code::CONCATENATION,
            inputs: srcs.iter().map(|(_, x)| *x).collect(),
            outputs: vec![joined],
            options: Options::Concat { axis: src_axis, act },
            origin: origin.clone(),
        };
        self.operators.insert(
            c + 1,
            Operator {
                code: Code::TRANSPOSE,
                inputs: vec![joined, pt],
                outputs: vec![out],
                options: Options::None,
                origin,
            },
        );
        let mut gone: Vec<usize> = srcs.iter().map(|(a, _)| *a).collect();
        gone.sort_unstable();
        for a in gone.into_iter().rev() {
            self.operators.remove(a);
        }
        true
    }

    /// TRANSPOSE → QUANTIZE (a requantization, element by element) becomes QUANTIZE → TRANSPOSE, so the
    /// transpose can travel on to meet others (an int8 concatenation requantizes its inputs).
    fn quantize_before_transpose(
        &mut self,
        readers: &BTreeMap<i32, usize>,
        producer: &BTreeMap<i32, usize>,
    ) -> bool {
        let found = self.operators.iter().enumerate().find_map(|(b, ob)| {
            if ob.code != Code::QUANTIZE || ob.inputs.len() != 1 {
                return None;
            }
            let mid = ob.inputs[0];
            let a = *producer.get(&mid)?;
            let oa = &self.operators[a];
            let ok = oa.code == Code::TRANSPOSE
                && readers.get(&mid) == Some(&1)
                && !self.outputs.contains(&mid)
                && self.tensors[mid as usize].quant.is_some()
                && self.tensors[ob.outputs[0] as usize].quant.is_some();
            ok.then_some((a, b))
        });
        let Some((a, b)) = found else { return false };
        let (x, pt) = (self.operators[a].inputs[0], self.operators[a].inputs[1]);
        let y = self.operators[b].outputs[0];
        let name = format!("{}_requantized", self.tensors[x as usize].name);
        let (shape, dtype) = (self.shape(x).to_vec(), self.tensors[y as usize].dtype);
        let q = self.tensor(&name, shape, dtype);
        self.tensors[q as usize].quant = self.tensors[y as usize].quant.clone();
        let (origin_a, origin_b) =
            (self.operators[a].origin.clone(), self.operators[b].origin.clone());
        self.operators[a] = Operator {
            code: Code::QUANTIZE,
            inputs: vec![x],
            outputs: vec![q],
            options: Options::None,
            origin: origin_b,
        };
        self.operators[b] = Operator {
            code: Code::TRANSPOSE,
            inputs: vec![q, pt],
            outputs: vec![y],
            options: Options::None,
            origin: origin_a,
        };
        true
    }
}

/// How `r` merges runs of adjacent dims of `t` (each run's product one dim of `r`, in order); `None`
/// when it does not. Unit dims join the run before them.
fn merged_runs(t: &[i32], r: &[i32]) -> Option<Vec<Vec<usize>>> {
    let mut runs: Vec<Vec<usize>> = Vec::new();
    let mut j = 0;
    for &want in r {
        let mut run = Vec::new();
        let mut prod = 1i64;
        while j < t.len() && (run.is_empty() || prod < want as i64) {
            prod *= t[j] as i64;
            run.push(j);
            j += 1;
        }
        if prod != want as i64 || run.is_empty() {
            return None;
        }
        runs.push(run);
    }
    (j == t.len() && runs.len() == r.len()).then_some(runs)
}

/// A plan for moving a RESHAPE (`t` → `r`) before the TRANSPOSE(`p`) that made `t` from `src`: the source
/// reshaped to `s2`, then transposed by `p2`.
type Plan = Option<(Vec<i32>, Vec<i32>)>;

/// `r` is `t` with unit dims dropped (order kept): drop the same source dims.
fn drop_units(src: &[i32], t: &[i32], r: &[i32], p: &[i32]) -> Plan {
    if r.len() >= t.len() {
        return None;
    }
    let mut keep = Vec::new();
    let mut j = 0;
    for (i, d) in t.iter().enumerate() {
        if j < r.len() && r[j] == *d {
            keep.push(i);
            j += 1;
        } else if *d != 1 {
            return None;
        }
    }
    if j != r.len() {
        return None;
    }
    // Source dims kept, in source order, and the permutation of them that gives the output.
    let mut kept_src: Vec<usize> = keep.iter().map(|i| p[*i] as usize).collect();
    kept_src.sort_unstable();
    let p2 = keep
        .iter()
        .map(|i| kept_src.iter().position(|d| *d == p[*i] as usize).unwrap_or(0) as i32)
        .collect();
    Some((kept_src.iter().map(|d| src[*d]).collect(), p2))
}

/// `r` is `t` with unit dims inserted: append them to the source and route them in the permutation.
fn insert_units(src: &[i32], t: &[i32], r: &[i32], p: &[i32]) -> Plan {
    if r.len() <= t.len() {
        return None;
    }
    let (mut s2, mut p2) = (src.to_vec(), Vec::new());
    let mut j = 0;
    for d in r {
        if j < t.len() && t[j] == *d {
            p2.push(p[j]);
            j += 1;
        } else if *d == 1 {
            p2.push(s2.len() as i32);
            s2.push(1);
        } else {
            return None;
        }
    }
    (j == t.len()).then_some((s2, p2))
}

/// `r` merges runs of adjacent dims of `t`, each run from consecutive source dims in order: merge the
/// same runs in the source and permute the runs.
fn merge_runs(src: &[i32], t: &[i32], r: &[i32], p: &[i32]) -> Plan {
    let runs = merged_runs(t, r)?;
    let consecutive = runs.iter().all(|g| g.windows(2).all(|w| p[w[1]] == p[w[0]] + 1));
    if !consecutive || runs.iter().all(|g| g.len() == 1) {
        return None;
    }
    // Runs in source order: each starts at source dim p[run[0]].
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by_key(|i| p[runs[*i][0]]);
    let s2 = order.iter().map(|i| runs[*i].iter().map(|j| src[p[*j] as usize]).product()).collect();
    let p2 =
        (0..runs.len()).map(|i| order.iter().position(|o| *o == i).unwrap_or(0) as i32).collect();
    Some((s2, p2))
}
