//! DLA placement: for each layer of the DLA model (float, one layer per activation), whether TensorRT can
//! run it on the DLA of the device profile or falls back to the GPU, and the rule that decided; then the
//! DLA loadables (connected DLA subgraphs; beyond the per-core limit the rest fall back too), the
//! GPU<->DLA transitions (tensors crossing, each a reformat) and the share of MACs on the DLA. The rules
//! are TensorRT's "DLA Supported Layers and Restrictions", with the numbers from the profile.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use kiln_compiler::ir::attr::AttrReader;
use kiln_compiler::ir::{Act, Graph, Model, Node, NodeId, Op, PoolKind, ValueId};
use kiln_compiler::Result;
use serde::Serialize;

use super::profile::{DlaLimits, Jetson, Span};

#[derive(Clone, Debug, Serialize)]
pub struct Layer {
    pub index: usize,
    pub name: String,
    pub op: String,
    /// "DLA" or "GPU".
    pub device: &'static str,
    /// Why the layer is on the GPU (None on the DLA).
    pub rule: Option<String>,
    /// The DLA loadable (connected DLA subgraph) the layer is in.
    pub loadable: Option<usize>,
    pub macs: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Placement {
    pub device: String,
    pub precision: String,
    pub layers_on_dla: usize,
    pub layers_total: usize,
    pub loadables: usize,
    pub max_loadables_per_core: usize,
    /// Tensors written on one device and read on the other (each a reformat), counted once per
    /// (tensor, reading device).
    pub transitions: usize,
    pub macs_total: u64,
    pub macs_on_dla: u64,
    pub dla_mac_share: f64,
    /// Layers on the GPU by rule.
    pub fallbacks_by_rule: BTreeMap<String, usize>,
    pub layers: Vec<Layer>,
}

fn within(v: i64, s: Span) -> bool {
    v >= s[0] && v <= s[1]
}

/// Kernel, strides, pads and dilations of a windowed op (kernel from the weight when not written).
fn window(g: &Graph, n: &Node) -> (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>, i64) {
    let attrs = n.op.attributes();
    let mut r = AttrReader::new(&attrs);
    let kernel = r.ints("kernel_shape").unwrap_or_else(|| {
        n.input(1)
            .and_then(|w| g.value(w).static_shape())
            .map(|d| d.get(2..).map(<[i64]>::to_vec).unwrap_or_default())
            .unwrap_or_default()
    });
    let k = kernel.len();
    let strides = r.ints("strides").unwrap_or_else(|| vec![1; k]);
    let pads = r.ints("pads").unwrap_or_else(|| vec![0; 2 * k]);
    let dil = r.ints("dilations").unwrap_or_else(|| vec![1; k]);
    let group = r.int("group").unwrap_or(1);
    (kernel, strides, pads, dil, group)
}

fn channels(g: &Graph, v: Option<ValueId>) -> Option<i64> {
    v.and_then(|v| g.value(v).static_shape()).and_then(|s| s.get(1).copied())
}

/// Why `n` cannot run on the DLA, or None when it can.
fn rule(g: &Graph, n: &Node, l: &DlaLimits) -> Option<String> {
    let dynamic = n
        .inputs
        .iter()
        .chain(n.outputs.iter())
        .flatten()
        .any(|v| g.const_data(*v).is_none() && g.value(*v).static_shape().is_none());
    if dynamic {
        return Some("dynamic shape: the DLA takes static shapes only".into());
    }
    let conv_limits = |what: &str, deconv: bool| -> Option<String> {
        let (kernel, strides, pads, dil, group) = window(g, n);
        if kernel.len() != 2 {
            return Some(format!("{what} is {}-D: the DLA's convolutions are 2-D", kernel.len()));
        }
        if let Some(k) = kernel.iter().find(|k| !within(**k, l.conv_kernel)) {
            return Some(format!("kernel {k} outside {}..{}", l.conv_kernel[0], l.conv_kernel[1]));
        }
        if let Some(s) = strides.iter().find(|s| !within(**s, l.conv_stride)) {
            return Some(format!("stride {s} outside {}..{}", l.conv_stride[0], l.conv_stride[1]));
        }
        for (i, p) in pads.iter().enumerate() {
            let k = kernel[i % kernel.len()];
            if *p < 0 || *p > l.conv_max_pad || *p >= k {
                return Some(format!(
                    "pad {p} outside 0..{} or not smaller than the kernel ({k})",
                    l.conv_max_pad
                ));
            }
        }
        if let Some(d) = dil.iter().find(|d| !within(**d, l.conv_dilation)) {
            return Some(format!(
                "dilation {d} outside {}..{}",
                l.conv_dilation[0], l.conv_dilation[1]
            ));
        }
        if deconv && (group != 1 || dil.iter().any(|d| *d != 1)) {
            return Some("deconvolution with groups or dilation".into());
        }
        let (ci, co) = (channels(g, n.input(0)), channels(g, n.output(0)));
        if let Some(c) = [ci, co].into_iter().flatten().find(|c| *c > l.max_channels) {
            return Some(format!("{c} channels, more than {}", l.max_channels));
        }
        None
    };
    match &n.op {
        Op::Conv { .. } => conv_limits("Conv", false),
        Op::Generic { op_type, .. } if op_type == "ConvTranspose" => {
            conv_limits("ConvTranspose", true)
        }
        Op::Gemm { .. } => {
            let co =
                n.output(0).and_then(|v| g.value(v).static_shape()).and_then(|s| s.last().copied());
            match co {
                Some(c) if c > l.max_channels => {
                    Some(format!("{c} output features, more than {}", l.max_channels))
                }
                _ => None,
            }
        }
        Op::BatchNorm { .. } => None,
        Op::Act(a) => {
            let name = match a {
                Act::Silu => return None, // exported as Sigmoid and Mul, both DLA layers
                _ => n.op.op_type(),
            };
            (!l.activations.iter().any(|x| x == name))
                .then(|| format!("activation {name} is not a DLA activation"))
        }
        Op::Binary(_) => {
            let name = n.op.op_type();
            if !l.elementwise.iter().any(|x| x == name) {
                return Some(format!("elementwise {name} is not a DLA operation"));
            }
            let shapes: Vec<Vec<i64>> =
                n.inputs.iter().flatten().filter_map(|v| g.value(*v).static_shape()).collect();
            let out = n.output(0).and_then(|v| g.value(v).static_shape()).unwrap_or_default();
            // Equal shapes, or an operand broadcast per channel or from a scalar.
            let ok = shapes.iter().all(|s| {
                let numel: i64 = s.iter().product();
                *s == out
                    || numel == 1
                    || (out.len() == 4
                        && numel == out[1]
                        && s.iter().rev().take(2).all(|d| *d == 1))
            });
            (!ok).then(|| "elementwise broadcast other than per channel or scalar".into())
        }
        Op::Pool { kind, .. } => {
            let (kernel, strides, pads, _, _) = window(g, n);
            let what = if *kind == PoolKind::Max { "MaxPool" } else { "AveragePool" };
            if let Some(k) = kernel.iter().find(|k| !within(**k, l.pool_window)) {
                return Some(format!(
                    "{what} window {k} outside {}..{}",
                    l.pool_window[0], l.pool_window[1]
                ));
            }
            if let Some(s) = strides.iter().find(|s| !within(**s, l.pool_stride)) {
                return Some(format!(
                    "{what} stride {s} outside {}..{}",
                    l.pool_stride[0], l.pool_stride[1]
                ));
            }
            pads.iter()
                .find(|p| **p < 0 || **p > l.pool_max_pad)
                .map(|p| format!("{what} pad {p} outside 0..{}", l.pool_max_pad))
        }
        Op::Concat { axis } => {
            let rank = n.output(0).and_then(|v| g.value(v).static_shape()).map(|s| s.len() as i64);
            let a = match rank {
                Some(r) if *axis < 0 => axis + r,
                _ => *axis,
            };
            (a != 1).then(|| format!("Concat on axis {axis}: the DLA concatenates channels only"))
        }
        Op::Softmax { axis } => {
            let s = n.input(0).and_then(|v| g.value(v).static_shape()).unwrap_or_default();
            let a = axis.unwrap_or(-1);
            let a = if a < 0 { a + s.len() as i64 } else { a };
            let d = s.get(a as usize).copied().unwrap_or(0);
            (d > l.max_softmax_axis || d == 0).then(|| {
                format!("Softmax over {d} values (the DLA takes 1..{})", l.max_softmax_axis)
            })
        }
        Op::Generic { op_type, .. } if op_type == "Resize" || op_type == "Upsample" => {
            let (i, o) = (
                n.input(0).and_then(|v| g.value(v).static_shape()),
                n.output(0).and_then(|v| g.value(v).static_shape()),
            );
            match (i, o) {
                (Some(i), Some(o)) if i.len() == o.len() && i.len() == 4 => {
                    let integer = (2..4).all(|k| i[k] > 0 && o[k] % i[k] == 0)
                        && i[0] == o[0]
                        && i[1] == o[1];
                    (!integer).then(|| "Resize by a non-integer scale".into())
                }
                _ => Some("Resize other than 4-D spatial".into()),
            }
        }
        op => Some(format!("{} is not a DLA layer", op.op_type())),
    }
}

/// Place every layer of `m` (the DLA model) on the DLA or the GPU.
/// `fp32`: layers the build keeps in float32 (fp16 islands), which the DLA cannot run.
pub fn place(
    m: &Model,
    device: &Jetson,
    limits: &DlaLimits,
    precision: &str,
    fp32: &std::collections::HashSet<String>,
) -> Result<Placement> {
    let g = &m.graph;
    let order = g.topo_order()?;
    let mut layers: Vec<Layer> = Vec::new();
    let mut index: HashMap<NodeId, usize> = HashMap::new();
    for id in &order {
        let n = &g.nodes[*id];
        let r = if fp32.contains(&n.name) {
            Some("kept float32 (an fp16 island): the DLA runs fp16 and int8 only".to_string())
        } else {
            rule(g, n, limits)
        };
        index.insert(*id, layers.len());
        layers.push(Layer {
            index: layers.len(),
            name: n.name.clone(),
            op: n.op.op_type().to_string(),
            device: if r.is_none() { "DLA" } else { "GPU" },
            rule: r,
            loadable: None,
            macs: kiln_compiler::stats::node_macs(g, n).unwrap_or(0),
        });
    }
    // Loadables: DLA subgraphs a data path never leaves and re-enters (TensorRT cannot run a loadable whose
    // input depends on its own output through the GPU). In topological order, `left[i]` holds the
    // loadables some path into layer i left through a GPU layer or another loadable; a DLA layer joins the
    // lowest loadable of its DLA producers that is not in that set, else starts a new one. A squeeze-excite
    // block whose pooling runs on the GPU so splits the DLA work at each block.
    let preds = |i: usize| -> Vec<usize> {
        let n = &g.nodes[order[i]];
        let mut out: Vec<usize> = n
            .inputs
            .iter()
            .flatten()
            .filter_map(|v| g.value(*v).producer.and_then(|(p, _)| index.get(&p).copied()))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    };
    let mut left: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); layers.len()];
    let mut next = 0;
    for i in 0..layers.len() {
        let ps = preds(i);
        let mut t: BTreeSet<usize> = BTreeSet::new();
        for p in &ps {
            t.extend(left[*p].iter().copied());
        }
        if layers[i].device == "DLA" {
            let joined =
                ps.iter().filter_map(|p| layers[*p].loadable).filter(|l| !t.contains(l)).min();
            let l = joined.unwrap_or_else(|| {
                next += 1;
                next - 1
            });
            layers[i].loadable = Some(l);
        }
        for p in &ps {
            if let Some(lp) = layers[*p].loadable {
                if layers[i].loadable != Some(lp) {
                    t.insert(lp);
                }
            }
        }
        left[i] = t;
    }
    // Beyond the per-core limit, loadables fall back to the GPU.
    let max = limits.max_loadables_per_core;
    for l in layers.iter_mut() {
        if l.loadable.is_some_and(|k| k >= max) {
            l.device = "GPU";
            l.rule = Some(format!("more than {max} DLA loadables per core"));
            l.loadable = None;
        }
    }
    let loadables = next.min(max);
    // Transitions: a tensor crossing between devices, once per (tensor, reading device).
    let mut crossings: BTreeSet<(ValueId, &'static str)> = BTreeSet::new();
    for (i, id) in order.iter().enumerate() {
        let n = &g.nodes[*id];
        for v in n.inputs.iter().flatten() {
            if let Some((p, _)) = g.value(*v).producer {
                if let Some(j) = index.get(&p) {
                    if layers[*j].device != layers[i].device {
                        crossings.insert((*v, layers[i].device));
                    }
                }
            }
        }
    }
    let macs_total: u64 = layers.iter().map(|l| l.macs).sum();
    let macs_on_dla: u64 = layers.iter().filter(|l| l.device == "DLA").map(|l| l.macs).sum();
    let mut fallbacks_by_rule: BTreeMap<String, usize> = BTreeMap::new();
    for l in &layers {
        if let Some(r) = &l.rule {
            *fallbacks_by_rule.entry(r.clone()).or_default() += 1;
        }
    }
    Ok(Placement {
        device: device.title.clone(),
        precision: precision.into(),
        layers_on_dla: layers.iter().filter(|l| l.device == "DLA").count(),
        layers_total: layers.len(),
        loadables,
        max_loadables_per_core: max,
        transitions: crossings.len(),
        macs_total,
        macs_on_dla,
        dla_mac_share: if macs_total > 0 { macs_on_dla as f64 / macs_total as f64 } else { 0.0 },
        fallbacks_by_rule,
        layers,
    })
}

/// `placement.txt`: the summary, then one line per layer.
pub fn text(p: &Placement) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "DLA placement on {} ({})", p.device, p.precision);
    let _ = writeln!(
        s,
        "layers on the DLA: {}/{}; DLA loadables: {} (at most {} per core); GPU<->DLA transitions: {}",
        p.layers_on_dla, p.layers_total, p.loadables, p.max_loadables_per_core, p.transitions
    );
    let _ = writeln!(
        s,
        "MACs on the DLA: {:.1}% of {}",
        100.0 * p.dla_mac_share,
        kiln_compiler::stats::human_count(p.macs_total)
    );
    if !p.fallbacks_by_rule.is_empty() {
        let _ = writeln!(s, "on the GPU because:");
        for (r, c) in &p.fallbacks_by_rule {
            let _ = writeln!(s, "  {c:4}  {r}");
        }
    }
    let _ = writeln!(s);
    for l in &p.layers {
        let where_ = match (l.device, l.loadable) {
            ("DLA", Some(k)) => format!("DLA#{k}"),
            (d, _) => d.to_string(),
        };
        let _ = writeln!(
            s,
            "{:4}  {:<6} {:<18} {}{}",
            l.index,
            where_,
            l.op,
            l.name,
            l.rule.as_ref().map(|r| format!("  ({r})")).unwrap_or_default()
        );
    }
    s
}
