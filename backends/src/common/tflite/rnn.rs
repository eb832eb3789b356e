//! GRU, and the LSTMs UNIDIRECTIONAL_SEQUENCE_LSTM cannot express (a state fed from a graph input, Y_h /
//! Y_c read downstream, reverse or bidirectional direction), unrolled over time into builtin ops: the
//! input projection of every step at once (FULLY_CONNECTED over [T, B, I], biases folded in), UNPACK into
//! steps, then per step one FULLY_CONNECTED of the state, SPLIT into gates, LOGISTIC / TANH and the
//! element-wise updates, and PACK of the states into Y. TFLite has no GRU op; streaming speech models (keyword
//! spotting, voice activity) carry their state across calls through exactly these inputs and outputs.
//!
//! GRU follows ONNX (gates z, r, h; `linear_before_reset` 0 or 1, PyTorch exports 1):
//! z = σ(xW_zᵀ + hR_zᵀ + b_z), r = σ(xW_rᵀ + hR_rᵀ + b_r),
//! ĥ = tanh(xW_hᵀ + r ⊙ (hR_hᵀ + Rb_h) + Wb_h)  (lbr=1)  or  tanh(xW_hᵀ + (r ⊙ h)R_hᵀ + b_h)  (lbr=0),
//! h' = ĥ + z ⊙ (h − ĥ). LSTM: gates i, o, f, c; c' = f ⊙ c + i ⊙ tanh(·), h' = o ⊙ tanh(c').
//! Default activations only; `clip`, `sequence_lens` and peepholes are refused by name. Runs in float.
use kiln_compiler::ir::{AttrValue, NodeId, ValueId};
use kiln_compiler::Result;

use super::lower::Lowering;
use super::model::{Code, Fused, Options, TensorType};

#[derive(Clone, Copy, PartialEq)]
enum Cell {
    Gru { linear_before_reset: bool },
    Lstm,
}

/// Does this LSTM need the unrolled lowering (UNIDIRECTIONAL_SEQUENCE_LSTM keeps its state in variable
/// tensors, starts from zeros and exposes only Y)?
pub fn lstm_needs_unrolling(l: &Lowering, id: NodeId) -> bool {
    let n = &l.g.nodes[id];
    let dir = match n.op.attr("direction") {
        Some(AttrValue::String(s)) => s,
        _ => b"forward".to_vec(),
    };
    let state_in = [n.input(5), n.input(6)]
        .into_iter()
        .flatten()
        .any(|s| l.const_f32(s).map(|(_, v)| v.iter().any(|x| *x != 0.0)).unwrap_or(true));
    let state_out = n
        .outputs
        .iter()
        .skip(1)
        .flatten()
        .any(|o| !l.g.consumers(*o).is_empty() || l.g.is_output(*o));
    dir != b"forward" || state_in || state_out
}

pub fn gru(l: &mut Lowering, id: NodeId) -> Result<()> {
    let lbr = l.g.nodes[id].op.attr_int("linear_before_reset").unwrap_or(0) != 0;
    unrolled(l, id, Cell::Gru { linear_before_reset: lbr })
}

pub fn lstm(l: &mut Lowering, id: NodeId) -> Result<()> {
    unrolled(l, id, Cell::Lstm)
}

struct Emit<'a, 'b> {
    l: &'a mut Lowering<'b>,
    name: String,
    count: usize,
}

impl Emit<'_, '_> {
    fn tensor(&mut self, shape: Vec<i32>) -> i32 {
        self.count += 1;
        self.l.m.tensor(&format!("{}_t{}", self.name, self.count), shape, TensorType::FLOAT32)
    }
    fn op(&mut self, code: Code, ins: Vec<i32>, shape: Vec<i32>, options: Options) -> i32 {
        let t = self.tensor(shape);
        self.l.emit(code, ins, vec![t], options);
        t
    }
    fn bin(&mut self, code: Code, a: i32, b: i32) -> i32 {
        let s = self.l.m.shape(a).to_vec();
        self.op(code, vec![a, b], s, Options::Binary { act: Fused::NONE })
    }
    fn act(&mut self, code: Code, a: i32) -> i32 {
        let s = self.l.m.shape(a).to_vec();
        self.op(code, vec![a], s, Options::None)
    }
    fn split(&mut self, x: i32, parts: usize) -> Vec<i32> {
        let s = self.l.m.shape(x).to_vec();
        let each = vec![s[0], s[1] / parts as i32];
        let outs: Vec<i32> = (0..parts).map(|_| self.tensor(each.clone())).collect();
        let axis = self.l.m.const_i32(&format!("{}_axis", self.name), &[1]);
        self.l.m.tensors[axis as usize].shape = vec![];
        self.l.emit(
            Code::SPLIT,
            vec![axis, x],
            outs.clone(),
            Options::Split { num_splits: parts as i32 },
        );
        outs
    }
    fn fc(&mut self, x: i32, w: i32, b: i32, out: usize) -> i32 {
        let s = self.l.m.shape(x).to_vec();
        self.op(
            Code::FULLY_CONNECTED,
            vec![x, w, b],
            vec![s[0], out as i32],
            Options::FullyConnected { act: Fused::NONE, keep_num_dims: false },
        )
    }
}

fn unrolled(l: &mut Lowering, id: NodeId, cell: Cell) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let op = &n.op;
    let what = if cell == Cell::Lstm { "LSTM" } else { "GRU" };
    if op.attr_int("layout").unwrap_or(0) != 0 {
        return Err(l.err(format!("{what} with layout=1 has no lowering")));
    }
    if op.attr("activations").is_some() || op.attr("clip").is_some() {
        return Err(l.err(format!("{what} with custom activations or clip has no lowering")));
    }
    if n.input(4).is_some() || (cell == Cell::Lstm && n.input(7).is_some()) {
        return Err(l.err(format!("{what} with sequence_lens or peepholes has no lowering")));
    }
    let gates = if cell == Cell::Lstm { 4 } else { 3 };
    let h = op.attr_int("hidden_size").ok_or_else(|| l.err("hidden_size missing"))? as usize;
    let dirs: Vec<bool> = match op.attr("direction") {
        Some(AttrValue::String(s)) if s == b"reverse" => vec![true],
        Some(AttrValue::String(s)) if s == b"bidirectional" => vec![false, true],
        _ => vec![false],
    };
    let x = n.input(0).ok_or_else(|| l.err("no input"))?;
    let (wd, w) = l.const_f32(n.input(1).ok_or_else(|| l.err("no W"))?)?;
    let (_, r) = l.const_f32(n.input(2).ok_or_else(|| l.err("no R"))?)?;
    if wd.len() != 3 {
        return Err(l.err(format!("{what} weight W has rank {} (3 expected)", wd.len())));
    }
    let i_size = wd[2];
    let gh = gates * h;
    let bias: Vec<f32> = match n.input(3) {
        Some(b) => l.const_f32(b)?.1,
        None => vec![0.0; 2 * gh * dirs.len()],
    };
    let d = dirs.len();
    if w.len() != d * gh * i_size || r.len() != d * gh * h || bias.len() != d * 2 * gh {
        return Err(l.err(format!(
            "{what} weights do not fit hidden_size {h} and {d} direction(s) (W {}, R {}, B {} values)",
            w.len(),
            r.len(),
            bias.len()
        )));
    }
    let xt = l.get(x, false)?;
    let xs = l.m.shape(xt).to_vec();
    let (steps, batch) = (xs[0] as usize, xs[1]);
    let name = l.node.clone();
    let float_state = |l: &mut Lowering, v: Option<ValueId>| -> Result<Option<i32>> {
        v.map(|v| l.get(v, false)).transpose()
    };
    let h0 = float_state(l, n.input(5))?;
    let c0 = if cell == Cell::Lstm { float_state(l, n.input(6))? } else { None };
    let mut e = Emit { l, name: name.clone(), count: 0 };
    let mut ys = Vec::new();
    let mut hs = Vec::new();
    let mut cs = Vec::new();
    for (d, reverse) in dirs.iter().enumerate() {
        let wdir = &w[d * gh * i_size..(d + 1) * gh * i_size];
        let rdir = &r[d * gh * h..(d + 1) * gh * h];
        let (wb, rb) =
            (&bias[d * 2 * gh..d * 2 * gh + gh], &bias[d * 2 * gh + gh..(d + 1) * 2 * gh]);
        // Input projection bias: Wb, plus Rb where it adds straight into the gate.
        let in_bias: Vec<f32> = (0..gh)
            .map(|k| {
                let candidate = cell != Cell::Lstm && k >= 2 * h;
                let rb_here = match cell {
                    Cell::Gru { linear_before_reset: true } if candidate => 0.0,
                    _ => rb[k],
                };
                wb[k] + rb_here
            })
            .collect();
        let wt = e.l.m.const_f32(&format!("{name}_W{d}"), vec![gh as i32, i_size as i32], wdir);
        let wbt = e.l.m.const_f32(&format!("{name}_Wb{d}"), vec![gh as i32], &in_bias);
        let xw = e.op(
            Code::FULLY_CONNECTED,
            vec![xt, wt, wbt],
            vec![steps as i32, batch, gh as i32],
            Options::FullyConnected { act: Fused::NONE, keep_num_dims: true },
        );
        let per_step: Vec<i32> = (0..steps).map(|_| e.tensor(vec![batch, gh as i32])).collect();
        e.l.emit(
            Code::UNPACK,
            vec![xw],
            per_step.clone(),
            Options::Unpack { num: steps as i32, axis: 0 },
        );
        // Recurrent weights: all gates at once (GRU lbr=0 keeps the candidate gate apart: it reads r ⊙ h).
        let split_candidate = cell == Cell::Gru { linear_before_reset: false };
        let rec_gates = if split_candidate { 2 * h } else { gh };
        let rt = e.l.m.const_f32(
            &format!("{name}_R{d}"),
            vec![rec_gates as i32, h as i32],
            &rdir[..rec_gates * h],
        );
        let rec_bias: Vec<f32> = match cell {
            Cell::Gru { linear_before_reset: true } => {
                (0..gh).map(|k| if k >= 2 * h { rb[k] } else { 0.0 }).collect()
            }
            _ => vec![0.0; rec_gates],
        };
        let rbt = e.l.m.const_f32(&format!("{name}_Rb{d}"), vec![rec_gates as i32], &rec_bias);
        let (rht, rhb) = if split_candidate {
            (
                Some(e.l.m.const_f32(
                    &format!("{name}_Rh{d}"),
                    vec![h as i32, h as i32],
                    &rdir[2 * h * h..3 * h * h],
                )),
                Some(e.l.m.const_f32(&format!("{name}_Rhb{d}"), vec![h as i32], &vec![0.0; h])),
            )
        } else {
            (None, None)
        };
        let state0 = |e: &mut Emit, s: Option<i32>, what: &str| -> i32 {
            match s {
                Some(t) => {
                    // [D, B, H] → this direction's [B, H].
                    let sl = e.tensor(vec![1, batch, h as i32]);
                    let b = e.l.m.const_i32(&format!("{name}_{what}_begin"), &[d as i32, 0, 0]);
                    let en = e
                        .l
                        .m
                        .const_i32(&format!("{name}_{what}_end"), &[d as i32 + 1, batch, h as i32]);
                    let st = e.l.m.const_i32(&format!("{name}_{what}_strides"), &[1, 1, 1]);
                    e.l.emit(
                        Code::STRIDED_SLICE,
                        vec![t, b, en, st],
                        vec![sl],
                        Options::StridedSlice,
                    );
                    let shape = vec![batch, h as i32];
                    e.op(Code::RESHAPE, vec![sl], shape.clone(), Options::Reshape { shape })
                }
                None => e.l.m.const_f32(
                    &format!("{name}_{what}0"),
                    vec![batch, h as i32],
                    &vec![0.0; batch as usize * h],
                ),
            }
        };
        let mut hcur = state0(&mut e, h0, "h");
        let mut ccur = if cell == Cell::Lstm { Some(state0(&mut e, c0, "c")) } else { None };
        let mut outs = vec![0i32; steps];
        let order: Vec<usize> =
            if *reverse { (0..steps).rev().collect() } else { (0..steps).collect() };
        for t in order {
            let hr = e.fc(hcur, rt, rbt, rec_gates);
            match cell {
                Cell::Lstm => {
                    let s = e.bin(Code::ADD, per_step[t], hr);
                    let g = e.split(s, 4);
                    let (i, o, f, c) = (g[0], g[1], g[2], g[3]);
                    let (i, o, f) = (
                        e.act(Code::LOGISTIC, i),
                        e.act(Code::LOGISTIC, o),
                        e.act(Code::LOGISTIC, f),
                    );
                    let c = e.act(Code::TANH, c);
                    let prev = ccur.ok_or_else(|| e.l.err("cell state"))?;
                    let fc = e.bin(Code::MUL, f, prev);
                    let ic = e.bin(Code::MUL, i, c);
                    let cn = e.bin(Code::ADD, fc, ic);
                    let tc = e.act(Code::TANH, cn);
                    hcur = e.bin(Code::MUL, o, tc);
                    ccur = Some(cn);
                }
                Cell::Gru { linear_before_reset } => {
                    let xg = e.split(per_step[t], 3);
                    let (hz, hrr, hh) = if linear_before_reset {
                        let g = e.split(hr, 3);
                        (g[0], g[1], Some(g[2]))
                    } else {
                        let g = e.split(hr, 2);
                        (g[0], g[1], None)
                    };
                    let zs = e.bin(Code::ADD, xg[0], hz);
                    let z = e.act(Code::LOGISTIC, zs);
                    let rs = e.bin(Code::ADD, xg[1], hrr);
                    let rg = e.act(Code::LOGISTIC, rs);
                    let cand = match hh {
                        Some(hh) => e.bin(Code::MUL, rg, hh),
                        None => {
                            let rh = e.bin(Code::MUL, rg, hcur);
                            let (w, b) = (
                                rht.ok_or_else(|| e.l.err("R_h"))?,
                                rhb.ok_or_else(|| e.l.err("Rb_h"))?,
                            );
                            e.fc(rh, w, b, h)
                        }
                    };
                    let pre = e.bin(Code::ADD, xg[2], cand);
                    let hn = e.act(Code::TANH, pre);
                    let diff = e.bin(Code::SUB, hcur, hn);
                    let zd = e.bin(Code::MUL, z, diff);
                    hcur = e.bin(Code::ADD, hn, zd);
                }
            }
            outs[t] = hcur;
        }
        ys.push(outs);
        hs.push(hcur);
        if let Some(c) = ccur {
            cs.push(c);
        }
    }
    // Y [T, D, B, H], Y_h [D, B, H], Y_c [D, B, H]; only the ones read are written.
    let used = |e: &Emit, k: usize| -> Option<ValueId> {
        n.output(k).filter(|o| !e.l.g.consumers(*o).is_empty() || e.l.g.is_output(*o))
    };
    if let Some(y) = used(&e, 0) {
        let out = e.l.define(y, false)?;
        let steps_t: Vec<i32> = (0..steps)
            .map(|t| {
                let per_dir: Vec<i32> = ys.iter().map(|v| v[t]).collect();
                e.op(
                    Code::PACK,
                    per_dir,
                    vec![dirs.len() as i32, batch, h as i32],
                    Options::Pack { count: dirs.len() as i32, axis: 0 },
                )
            })
            .collect();
        e.l.emit(Code::PACK, steps_t, vec![out], Options::Pack { count: steps as i32, axis: 0 });
    }
    for (k, states) in [(1usize, &hs), (2, &cs)] {
        if let (Some(v), false) = (used(&e, k), states.is_empty()) {
            let out = e.l.define(v, false)?;
            e.l.emit(
                Code::PACK,
                states.clone(),
                vec![out],
                Options::Pack { count: states.len() as i32, axis: 0 },
            );
        }
    }
    Ok(())
}
