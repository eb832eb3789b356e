//! Layer statistics on calibration activations, and least-squares reconstruction of the layers that read
//! pruned channels.
//!
//! A *reader* is a group-1 Conv (1-D or 2-D) or a Gemm. Its linear output is `y = W·p + b`, where `p` is
//! the patch of input channels (times kernel positions) at one output position. On a deterministic
//! sample of output positions per calibration sample this module accumulates, in float64:
//! - for ranking (original model): the Gram matrix of the layer's input features, from which each input
//!   channel's saliency (the output energy lost when it is removed and the rest refitted), and the
//!   layer's output energy `Σ ‖y‖²`;
//! - for reconstruction: one layer at a time in graph order, with the original and the pruned model
//!   running side by side, the Gram matrix of the pruned model's kept features `P'ᵀP'` and their
//!   cross-products with the original outputs `P'ᵀY`. Layers are refitted in sequence, each on inputs that
//!   already reflect the refits before it: refitting all at once on the unrefitted model's inputs makes
//!   each layer compensate for upstream errors its predecessors have already removed (measured on
//!   MobileNetV2: the model got worse than without any refit).
//!
//! The new weights solve the ridge problem `min ‖Y − P'W'ᵀ‖² + λ‖W' − W_kept‖²` (regularized towards the
//! kept original weights, not towards zero, so a layer seen on few samples stays close to what was
//! trained; the bias is free), by Cholesky. This is the reconstruction of He et al. 2017 and ThiNet,
//! without fine-tuning.

use kiln_compiler::eval::Evaluator;
use kiln_compiler::ir::{Graph, Model, NodeId, Op, TensorData, ValueId};
use kiln_compiler::{Error, Result};
use ndarray::{Array2, ArrayView2};

/// Geometry of a reader.
#[derive(Clone, Debug)]
pub enum Kind {
    /// Input [N, C, H, W] (1-D convs as H = 1), output positions oh × ow.
    Conv {
        k: [usize; 2],
        s: [usize; 2],
        d: [usize; 2],
        pad: [usize; 2],
        out: [usize; 2],
        inp: [usize; 2],
    },
    Gemm,
    /// A Gemm reading a globally pooled map: rows are the map's positions (`hw` per sample), read from the
    /// map before pooling. Pooling is linear, so a layer that fits every position fits their mean; a
    /// classifier then has samples × positions rows for its refit instead of one per sample.
    Pooled {
        hw: usize,
    },
}

/// A layer reading channels: its linear weights as `[cout][cin · per]` (Gemm's alpha and beta applied).
#[derive(Clone, Debug)]
pub struct Reader {
    pub node: NodeId,
    pub x: ValueId,
    pub kind: Kind,
    pub cin: usize,
    /// Features per input channel (kernel positions; 1 for Gemm).
    pub per: usize,
    pub cout: usize,
    pub w: Vec<f64>,
    pub b: Vec<f64>,
}

/// The dims of `v` from axis `skip` on, when all are known.
fn static_dims(g: &Graph, v: ValueId, skip: usize) -> Option<Vec<usize>> {
    g.value(v).shape.as_ref()?.iter().skip(skip).map(|d| d.known().and_then(us)).collect()
}

fn us(v: i64) -> Option<usize> {
    usize::try_from(v).ok()
}

impl Reader {
    /// The reader view of node `id`, when it is a Conv (group 1, rank 3/4) or Gemm with constant weights.
    pub fn of(g: &Graph, id: NodeId) -> Option<Reader> {
        let n = &g.nodes[id];
        let x = n.input(0)?;
        let wd = g.const_data(n.input(1)?)?;
        let w = wd.to_f64_vec()?;
        let bias = match n.input(2) {
            Some(b) => Some(g.const_data(b)?.to_f64_vec()?),
            None => None,
        };
        let xs = static_dims(g, x, 0)?;
        let ys = static_dims(g, n.output(0)?, 0)?;
        match &n.op {
            Op::Conv { window, group } if group.unwrap_or(1) == 1 => {
                let (cout, cin) = (us(*wd.dims.first()?)?, us(*wd.dims.get(1)?)?);
                let two = xs.len() == 4;
                if !(xs.len() == 3 || two) || xs[1] != cin || ys.len() != xs.len() {
                    return None;
                }
                let k2 = |v: &[i64]| -> Option<[usize; 2]> {
                    Some(if two { [us(v[0])?, us(v[1])?] } else { [1, us(v[0])?] })
                };
                let k = k2(&wd.dims[2..])?;
                let s = match &window.strides {
                    Some(v) => k2(v)?,
                    None => [1, 1],
                };
                let d = match &window.dilations {
                    Some(v) => k2(v)?,
                    None => [1, 1],
                };
                let inp = if two { [xs[2], xs[3]] } else { [1, xs[2]] };
                let out = if two { [ys[2], ys[3]] } else { [1, ys[2]] };
                let auto = window.auto_pad.as_deref().unwrap_or("NOTSET");
                let pad = match auto {
                    "NOTSET" => match &window.pads {
                        Some(p) if two && p.len() == 4 => [us(p[0])?, us(p[1])?],
                        Some(p) if !two && p.len() == 2 => [0, us(p[0])?],
                        None => [0, 0],
                        _ => return None,
                    },
                    "VALID" => [0, 0],
                    "SAME_UPPER" | "SAME_LOWER" => {
                        let mut p = [0, 0];
                        for i in 0..2 {
                            let total = ((out[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1)
                                .saturating_sub(inp[i]);
                            p[i] = if auto == "SAME_UPPER" { total / 2 } else { total - total / 2 };
                        }
                        p
                    }
                    _ => return None,
                };
                let b = bias.unwrap_or_else(|| vec![0.0; cout]);
                (b.len() == cout).then_some(())?;
                Some(Reader {
                    node: id,
                    x,
                    kind: Kind::Conv { k, s, d, pad, out, inp },
                    cin,
                    per: k[0] * k[1],
                    cout,
                    w,
                    b,
                })
            }
            Op::Gemm { alpha, beta, trans_a, trans_b } if trans_a.unwrap_or(0) == 0 => {
                let (r, c) = (us(*wd.dims.first()?)?, us(*wd.dims.get(1)?)?);
                let tb = trans_b.unwrap_or(0) != 0;
                let (cout, cin) = if tb { (r, c) } else { (c, r) };
                if xs.len() != 2 || xs[1] != cin {
                    return None;
                }
                let a = f64::from(alpha.unwrap_or(1.0));
                let mut wt = vec![0.0; cout * cin];
                for m in 0..cout {
                    for f in 0..cin {
                        wt[m * cin + f] = a * if tb { w[m * cin + f] } else { w[f * cout + m] };
                    }
                }
                let be = f64::from(beta.unwrap_or(1.0));
                let b = match bias {
                    Some(b) if b.len() == cout => b.iter().map(|v| be * v).collect(),
                    Some(b) if b.len() == 1 => vec![be * b[0]; cout],
                    None => vec![0.0; cout],
                    _ => return None,
                };
                Some(Reader { node: id, x, kind: Kind::Gemm, cin, per: 1, cout, w: wt, b })
            }
            _ => None,
        }
    }

    /// The same Gemm refitted on the positions of the map its input pools (`Kind::Pooled`), when its
    /// input is a global average of a map with one feature per channel: GlobalAveragePool or ReduceMean
    /// over the spatial axes, then Flatten or a flattening Reshape, or ReduceMean without keepdims.
    pub fn pooled(&self, g: &Graph) -> Option<Reader> {
        if !matches!(self.kind, Kind::Gemm) {
            return None;
        }
        let mut v = self.x;
        let producer = |v: ValueId| g.value(v).producer.map(|(id, _)| &g.nodes[id]);
        let n = producer(v)?;
        if matches!(n.op, Op::Flatten { .. } | Op::Reshape { .. }) {
            v = n.input(0)?;
        }
        let n = producer(v)?;
        let mean = match &n.op {
            Op::GlobalAveragePool => true,
            Op::Generic { op_type, .. } => op_type == "ReduceMean",
            _ => false,
        };
        let z = n.input(0)?;
        let zs = static_dims(g, z, 1)?;
        let vs = static_dims(g, v, 1)?;
        // The pooled value keeps only the channel axis (all other extents 1).
        let pooled_all = vs.first() == Some(&self.cin) && vs.iter().skip(1).all(|d| *d == 1);
        if !mean || zs.len() < 2 || zs[0] != self.cin || !pooled_all {
            return None;
        }
        let hw = zs[1..].iter().product::<usize>();
        (hw > 1).then(|| Reader { x: z, kind: Kind::Pooled { hw }, ..self.clone() })
    }

    /// Output positions per sample tensor of dims `xd` (N · oh · ow, or N for Gemm).
    fn positions(&self, xd: &[i64]) -> usize {
        let n = xd.first().copied().and_then(us).unwrap_or(1);
        match &self.kind {
            Kind::Conv { out, .. } => n * out[0] * out[1],
            Kind::Gemm => n,
            Kind::Pooled { hw } => n * hw,
        }
    }

    /// Rows of patches at `pos` (a list of output positions), over channels `keep`, each row ending in 1.
    fn patches(&self, x: &[f32], xd: &[i64], pos: &[usize], keep: &[usize]) -> Array2<f32> {
        let f = keep.len() * self.per + 1;
        let mut a = Array2::<f32>::zeros((pos.len(), f));
        let c_all = self.cin;
        for (r, &p) in pos.iter().enumerate() {
            let mut row = a.row_mut(r);
            match &self.kind {
                Kind::Gemm => {
                    for (j, &c) in keep.iter().enumerate() {
                        row[j] = x.get(p * c_all + c).copied().unwrap_or(0.0);
                    }
                }
                Kind::Pooled { hw } => {
                    let (nb, at) = (p / hw, p % hw);
                    for (j, &c) in keep.iter().enumerate() {
                        row[j] = x.get((nb * c_all + c) * hw + at).copied().unwrap_or(0.0);
                    }
                }
                Kind::Conv { k, s, d, pad, out, inp } => {
                    let _ = xd;
                    let per_n = out[0] * out[1];
                    let (nb, rest) = (p / per_n, p % per_n);
                    let (oy, ox) = (rest / out[1], rest % out[1]);
                    for (j, &c) in keep.iter().enumerate() {
                        let plane = (nb * c_all + c) * inp[0] * inp[1];
                        for ky in 0..k[0] {
                            let iy = (oy * s[0] + ky * d[0]) as isize - pad[0] as isize;
                            for kx in 0..k[1] {
                                let ix = (ox * s[1] + kx * d[1]) as isize - pad[1] as isize;
                                let inside = iy >= 0
                                    && ix >= 0
                                    && (iy as usize) < inp[0]
                                    && (ix as usize) < inp[1];
                                if inside {
                                    row[j * self.per + ky * k[1] + kx] =
                                        x[plane + iy as usize * inp[1] + ix as usize];
                                }
                            }
                        }
                    }
                }
            }
            row[f - 1] = 1.0;
        }
        a
    }

    /// The reader's weights over channels `keep` as `[features + 1, cout]` (bias last), float32.
    fn weights_t(&self, keep: &[usize]) -> Array2<f32> {
        let f = keep.len() * self.per + 1;
        let full = self.cin * self.per;
        let mut w = Array2::<f32>::zeros((f, self.cout));
        for m in 0..self.cout {
            for (j, &c) in keep.iter().enumerate() {
                for q in 0..self.per {
                    w[[j * self.per + q, m]] = self.w[m * full + c * self.per + q] as f32;
                }
            }
            w[[f - 1, m]] = self.b[m] as f32;
        }
        w
    }
}

/// Output positions sampled from a sample: `k` of `total`, evenly spaced from an offset that depends on
/// the sample and the layer.
fn sampled(total: usize, k: usize, sample: usize, layer: usize) -> Vec<usize> {
    if k >= total {
        return (0..total).collect();
    }
    let step = total as f64 / k as f64;
    let off = ((sample * 7919 + layer * 104_729) % 1009) as f64 / 1009.0 * step;
    (0..k).map(|i| ((off + i as f64 * step) as usize).min(total - 1)).collect()
}

/// Ranking statistics of one reader: per input channel the output energy its weights carry, and the
/// layer's output energy.
#[derive(Clone, Debug, Default)]
pub struct Energy {
    pub channel: Vec<f64>,
    pub output: f64,
    pub rows: usize,
}

/// Reconstruction statistics of one reader over its kept channels.
#[derive(Clone, Debug)]
pub struct Normal {
    pub keep: Vec<usize>,
    pub gram: Array2<f64>,
    pub cross: Array2<f64>,
    pub yy: f64,
    pub rows: usize,
}

/// Agreement of a candidate's first output with the original's, over the samples.
#[derive(Clone, Debug, Default)]
pub struct Agreement {
    pub signal: f64,
    pub noise: f64,
    pub top1_same: usize,
    pub samples: usize,
}

impl Agreement {
    pub fn sqnr_db(&self) -> f64 {
        if self.noise <= 0.0 {
            return f64::INFINITY;
        }
        10.0 * (self.signal / self.noise).log10()
    }
    pub fn top1(&self) -> f64 {
        self.top1_same as f64 / self.samples.max(1) as f64
    }
    fn add(&mut self, r: &[f32], c: &[f32]) {
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |a, (i, x)| if *x > a.1 { (i, *x) } else { a })
                .0
        };
        self.signal += r.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>();
        self.noise +=
            r.iter().zip(c).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum::<f64>();
        self.top1_same += usize::from(argmax(r) == argmax(c));
        self.samples += 1;
    }
    fn merge(&mut self, o: Agreement) {
        self.signal += o.signal;
        self.noise += o.noise;
        self.top1_same += o.top1_same;
        self.samples += o.samples;
    }
}

/// Where the statistics come from: calibration samples fed to `input`, at most `rows` rows per reader.
pub struct Data<'a> {
    pub input: &'a str,
    pub samples: &'a [TensorData],
    pub rows: usize,
}

/// `model` with its outputs followed by the reader inputs, ready to run; the index of each reader's input.
fn probe(model: &Model, readers: &[Reader], data: &Data) -> Result<(Evaluator, Vec<usize>)> {
    let mut m = model.clone();
    let mut at = Vec::new();
    for r in readers {
        let i = match m.graph.outputs.iter().position(|v| *v == r.x) {
            Some(i) => i,
            None => {
                m.graph.outputs.push(r.x);
                m.graph.outputs.len() - 1
            }
        };
        at.push(i);
    }
    let first = data.samples.first().ok_or_else(|| Error::Input {
        name: data.input.into(),
        reason: "no calibration samples".into(),
    })?;
    let ev = Evaluator::new(&m, &[(data.input.to_string(), first.dtype, first.dims.clone())])?;
    Ok((ev, at))
}

/// Run `f(acc, sample index, original outputs, candidate outputs)` over the samples on up to two threads.
fn sweep<A: Send>(
    orig: &Evaluator,
    cand: Option<&Evaluator>,
    data: &Data,
    what: &str,
    init: impl Fn() -> A + Sync,
    f: impl Fn(&mut A, usize, &[TensorData], Option<&[TensorData]>) -> Result<()> + Sync,
) -> Result<Vec<A>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 2);
    let chunk = data.samples.len().div_ceil(threads).max(1);
    let progress = std::sync::Mutex::new(kiln_compiler::progress::stage(what, data.samples.len()));
    let (init, f, progress) = (&init, &f, &progress);
    let parts: Vec<Result<A>> = std::thread::scope(|s| {
        let handles: Vec<_> = data
            .samples
            .chunks(chunk)
            .enumerate()
            .map(|(ci, part)| {
                s.spawn(move || -> Result<A> {
                    let mut acc = init();
                    for (k, smp) in part.iter().enumerate() {
                        let feed = [(data.input.to_string(), smp.clone())];
                        let o: Vec<TensorData> =
                            orig.run(&feed)?.into_iter().map(|x| x.1).collect();
                        let c = match cand {
                            Some(c) => {
                                Some(c.run(&feed)?.into_iter().map(|x| x.1).collect::<Vec<_>>())
                            }
                            None => None,
                        };
                        f(&mut acc, ci * chunk + k, &o, c.as_deref())?;
                        if let Ok(mut p) = progress.lock() {
                            p.inc();
                        }
                    }
                    Ok(acc)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Err(Error::Eval("a pruning thread panicked".into())))
            })
            .collect()
    });
    parts.into_iter().collect()
}

fn values(t: &TensorData) -> Result<Vec<f32>> {
    t.to_f32_vec().ok_or_else(|| Error::Eval("a float tensor was expected".into()))
}

/// Gram matrices beyond this many features (bias included) are not formed: such a reader ranks its
/// channels by the energy they carry alone and is not refitted (a VGG classifier reading 25,088 features
/// would need a 5 GB matrix and a 10¹² step solve).
pub const MAX_GRAM: usize = 2049;

/// Per-channel importance of every reader on the original model, with the layer's output energy: the
/// output energy the channel's weights carry (`Σ (W_c·p_c)²`), or with `obs` the energy lost when the
/// channel is removed and the remaining ones refitted (Optimal Brain Surgeon's `w² / [G⁻¹]_jj`, in blocks
/// of a channel's kernel positions), where collinear channels rank low even when they carry much energy.
pub fn energies(
    model: &Model,
    readers: &[Reader],
    data: &Data,
    ridge: f64,
    obs: bool,
) -> Result<Vec<Energy>> {
    let (ev, at) = probe(model, readers, data)?;
    let per_sample = data.rows.div_ceil(data.samples.len().max(1)).max(1);
    let init = || {
        readers
            .iter()
            .map(|r| {
                let f = r.cin * r.per + 1;
                let g = if obs && f <= MAX_GRAM {
                    Array2::zeros((f, f))
                } else {
                    Array2::zeros((0, 0))
                };
                (Energy { channel: vec![0.0; r.cin], output: 0.0, rows: 0 }, g)
            })
            .collect::<Vec<_>>()
    };
    let parts = sweep(&ev, None, data, "prune: ranking channels", init, |acc, s, outs, _| {
        for (li, (r, (e, gram))) in readers.iter().zip(acc.iter_mut()).enumerate() {
            let t = &outs[at[li]];
            let x = values(t)?;
            let pos = sampled(r.positions(&t.dims), per_sample, s, li);
            let all: Vec<usize> = (0..r.cin).collect();
            let p = r.patches(&x, &t.dims, &pos, &all);
            let w = r.weights_t(&all);
            let y = p.dot(&w);
            e.output += y.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>();
            e.rows += pos.len();
            if gram.nrows() > 0 {
                add_t(gram, p.view(), p.view());
                continue;
            }
            for c in 0..r.cin {
                let pc = p.slice(ndarray::s![.., c * r.per..(c + 1) * r.per]);
                let wc = w.slice(ndarray::s![c * r.per..(c + 1) * r.per, ..]);
                let yc = pc.dot(&wc);
                e.channel[c] += yc.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>();
            }
        }
        Ok(())
    })?;
    let mut total = init();
    for part in parts {
        for ((t, tg), (p, pg)) in total.iter_mut().zip(part) {
            t.output += p.output;
            t.rows += p.rows;
            t.channel.iter_mut().zip(p.channel).for_each(|(a, b)| *a += b);
            if tg.nrows() > 0 {
                *tg += &pg;
            }
        }
    }
    let mut out = Vec::with_capacity(readers.len());
    for (r, (mut e, gram)) in readers.iter().zip(total) {
        if gram.nrows() > 0 {
            if let Some(sal) = saliency(r, &gram, e.rows, ridge) {
                e.channel = sal;
            } else {
                // Singular even with the ridge: the diagonal energy.
                let w = r.weights_t(&(0..r.cin).collect::<Vec<_>>()).mapv(f64::from);
                e.channel = (0..r.cin)
                    .map(|c| {
                        let b = ndarray::s![c * r.per..(c + 1) * r.per, ..];
                        let wc = w.slice(b);
                        let gc = gram.slice(ndarray::s![
                            c * r.per..(c + 1) * r.per,
                            c * r.per..(c + 1) * r.per
                        ]);
                        let gw = gc.dot(&wc);
                        wc.iter().zip(gw.iter()).map(|(a, b)| a * b).sum()
                    })
                    .collect();
            }
        }
        out.push(e);
    }
    Ok(out)
}

/// The ridge weight [`solve`] uses for `features` features on `rows` rows, relative to the mean feature
/// energy: fewer rows than features (a Gemm after global pooling sees one row per sample) would
/// interpolate the calibration set, so the pull towards the trained weights grows with features per row.
fn ridge_alpha(ridge: f64, features: usize, rows: usize) -> f64 {
    ridge + 0.1 * features as f64 / rows.max(1) as f64
}

/// OBS saliency per channel from the full Gram matrix (bias feature last).
fn saliency(r: &Reader, gram: &Array2<f64>, rows: usize, ridge: f64) -> Option<Vec<f64>> {
    let f = gram.nrows();
    let feats = f - 1;
    let mean_diag = (0..feats).map(|i| gram[[i, i]]).sum::<f64>() / feats.max(1) as f64;
    let lambda = ridge_alpha(ridge, feats, rows) * mean_diag.max(1e-12);
    let mut a = gram.clone();
    for i in 0..feats {
        a[[i, i]] += lambda;
    }
    a[[feats, feats]] += 1e-9 * rows.max(1) as f64;
    let inv = cholesky_solve(a, Array2::eye(f))?;
    let w = r.weights_t(&(0..r.cin).collect::<Vec<_>>()).mapv(f64::from);
    let mut out = Vec::with_capacity(r.cin);
    for c in 0..r.cin {
        let blk = c * r.per..(c + 1) * r.per;
        let b = inv.slice(ndarray::s![blk.clone(), blk.clone()]).to_owned();
        let wc = w.slice(ndarray::s![blk, ..]).to_owned();
        // Σ_m w_mᵀ B⁻¹ w_m.
        let x = cholesky_solve(b, wc.clone())?;
        out.push(wc.iter().zip(x.iter()).map(|(p, q)| p * q).sum());
    }
    Some(out)
}

fn add_t(acc: &mut Array2<f64>, a: ArrayView2<f32>, b: ArrayView2<f32>) {
    let prod = a.t().dot(&b);
    acc.zip_mut_with(&prod, |x, y| *x += f64::from(*y));
}

/// Normal equations of reader `li` (kept channels `keep`) on the candidate model's inputs against the
/// original's outputs. Only the parts of both models that compute the reader's input run.
pub fn normal(
    original: &Model,
    candidate: &Model,
    readers: &[Reader],
    li: usize,
    keep: &[usize],
    data: &Data,
) -> Result<Normal> {
    let r = &readers[li];
    let first = data.samples.first().ok_or_else(|| Error::Input {
        name: data.input.into(),
        reason: "no calibration samples".into(),
    })?;
    let facts = [(data.input.to_string(), first.dtype, first.dims.clone())];
    let truncated = |m: &Model| -> Result<Evaluator> {
        let mut m = m.clone();
        m.graph.outputs = vec![r.x];
        Evaluator::new(&m, &facts)
    };
    let (eo, ec) = (truncated(original)?, truncated(candidate)?);
    let per_sample = data.rows.div_ceil(data.samples.len().max(1)).max(1);
    let kc = keep.len();
    let f = kc * r.per + 1;
    let init = || Normal {
        keep: keep.to_vec(),
        gram: Array2::zeros((f, f)),
        cross: Array2::zeros((f, r.cout)),
        yy: 0.0,
        rows: 0,
    };
    let what = "prune: reconstruction";
    let all: Vec<usize> = (0..r.cin).collect();
    let wt = r.weights_t(&all);
    let parts = sweep(&eo, Some(&ec), data, what, init, |n, s, o, c| {
        let (to, tc) = match (o.first(), c.and_then(|c| c.first())) {
            (Some(a), Some(b)) => (a, b),
            _ => return Err(Error::Eval("no reader input".into())),
        };
        if tc.dims.get(1).and_then(|d| us(*d)) != Some(kc) {
            return Err(Error::Eval("prune: a reader's input has an unexpected width".into()));
        }
        let pos = sampled(r.positions(&to.dims), per_sample, s, li);
        let y = r.patches(&values(to)?, &to.dims, &pos, &all).dot(&wt);
        let mut rc = r.clone();
        rc.cin = kc;
        let p = rc.patches(&values(tc)?, &tc.dims, &pos, &(0..kc).collect::<Vec<_>>());
        add_t(&mut n.gram, p.view(), p.view());
        add_t(&mut n.cross, p.view(), y.view());
        n.yy += y.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>();
        n.rows += pos.len();
        Ok(())
    })?;
    let mut total = init();
    for p in parts {
        total.gram += &p.gram;
        total.cross += &p.cross;
        total.yy += p.yy;
        total.rows += p.rows;
    }
    Ok(total)
}

/// The candidate's first output against the original's, without layer statistics.
pub fn agreement(original: &Model, candidate: &Model, data: &Data) -> Result<Agreement> {
    let (eo, _) = probe(original, &[], data)?;
    let (ec, _) = probe(candidate, &[], data)?;
    let parts =
        sweep(&eo, Some(&ec), data, "prune: measuring", Agreement::default, |acc, _, o, c| {
            if let (Some(r), Some(k)) = (o.first(), c.and_then(|c| c.first())) {
                acc.add(&values(r)?, &values(k)?);
            }
            Ok(())
        })?;
    let mut a = Agreement::default();
    parts.into_iter().for_each(|p| a.merge(p));
    Ok(a)
}

/// Residual energy `‖Y − P'Wᵀ‖²` of weights `wt` ([features + 1, cout]) under normal equations `n`.
pub fn residual(n: &Normal, wt: &Array2<f64>) -> f64 {
    let gw = n.gram.dot(wt);
    let quad: f64 = wt.iter().zip(gw.iter()).map(|(a, b)| a * b).sum();
    let lin: f64 = wt.iter().zip(n.cross.iter()).map(|(a, b)| a * b).sum();
    (n.yy - 2.0 * lin + quad).max(0.0)
}

/// The reader's kept original weights as `[features + 1, cout]`, float64.
pub fn prior(r: &Reader, keep: &[usize]) -> Array2<f64> {
    r.weights_t(keep).mapv(f64::from)
}

/// Solve the ridge problem: `(G + λD)·Wᵀ = C + λD·priorᵀ`, D = identity but on the bias row.
pub fn solve(n: &Normal, prior: &Array2<f64>, ridge: f64) -> Option<Array2<f64>> {
    let f = n.gram.nrows();
    let feats = f.saturating_sub(1);
    let mean_diag = (0..feats).map(|i| n.gram[[i, i]]).sum::<f64>() / feats.max(1) as f64;
    let lambda = ridge_alpha(ridge, feats, n.rows) * mean_diag.max(1e-12);
    let mut a = n.gram.clone();
    let mut rhs = n.cross.clone();
    for i in 0..feats {
        a[[i, i]] += lambda;
        for m in 0..rhs.ncols() {
            rhs[[i, m]] += lambda * prior[[i, m]];
        }
    }
    // A tiny floor on the bias row keeps a degenerate (all-zero) input solvable.
    a[[f - 1, f - 1]] += 1e-9 * n.rows.max(1) as f64;
    cholesky_solve(a, rhs)
}

/// Solve `A X = B` for symmetric positive definite `A` (in place, lower Cholesky factor).
fn cholesky_solve(mut a: Array2<f64>, mut b: Array2<f64>) -> Option<Array2<f64>> {
    let n = a.nrows();
    for j in 0..n {
        let mut d = a[[j, j]];
        for k in 0..j {
            d -= a[[j, k]] * a[[j, k]];
        }
        if d <= 0.0 || !d.is_finite() {
            return None;
        }
        let d = d.sqrt();
        a[[j, j]] = d;
        for i in j + 1..n {
            let mut s = a[[i, j]];
            for k in 0..j {
                s -= a[[i, k]] * a[[j, k]];
            }
            a[[i, j]] = s / d;
        }
    }
    // Row i of `b` minus the rows `ks` weighted by `l(k)`, divided by the diagonal.
    let eliminate = |b: &mut Array2<f64>, i: usize, ks: &mut dyn Iterator<Item = (usize, f64)>| {
        for (k, l) in ks {
            for c in 0..b.ncols() {
                b[[i, c]] -= l * b[[k, c]];
            }
        }
        let d = a[[i, i]];
        b.row_mut(i).mapv_inplace(|v| v / d);
    };
    // Forward: L z = b, then backward: Lᵀ x = z.
    for i in 0..n {
        eliminate(&mut b, i, &mut (0..i).map(|k| (k, a[[i, k]])));
    }
    for i in (0..n).rev() {
        eliminate(&mut b, i, &mut (i + 1..n).map(|k| (k, a[[k, i]])));
    }
    b.iter().all(|v| v.is_finite()).then_some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_a_small_system() {
        let a = ndarray::arr2(&[[4.0, 2.0], [2.0, 3.0]]);
        let b = ndarray::arr2(&[[2.0], [1.0]]);
        let x = cholesky_solve(a.clone(), b.clone()).unwrap();
        let back = a.dot(&x);
        assert!((back[[0, 0]] - 2.0).abs() < 1e-12 && (back[[1, 0]] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn sampled_positions_are_distinct_and_in_range() {
        let p = sampled(100, 10, 3, 2);
        assert_eq!(p.len(), 10);
        assert!(p.windows(2).all(|w| w[0] < w[1]) && *p.last().unwrap() < 100);
        assert_eq!(sampled(5, 10, 0, 0), vec![0, 1, 2, 3, 4]);
    }
}
