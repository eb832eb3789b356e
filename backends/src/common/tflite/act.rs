//! Activations in TFLite: which ones an op applies fused (`fusable`), and the standalone ops for the rest.
use kiln_compiler::ir::{Act, NodeId};
use kiln_compiler::Result;

use super::lower::Lowering;
use super::model::{Code, Fused, Options};

/// TFLite's fused activation for `act`, if it has one.
pub fn fusable(act: &Option<Act>) -> Option<Fused> {
    match act {
        None => Some(Fused::NONE),
        Some(Act::Relu) => Some(Fused::RELU),
        Some(Act::Tanh) => Some(Fused::TANH),
        Some(Act::Clip { min: Some(lo), max: Some(hi) }) if *lo == 0.0 && *hi == 6.0 => {
            Some(Fused::RELU6)
        }
        Some(Act::Clip { min: Some(lo), max: Some(hi) }) if *lo == -1.0 && *hi == 1.0 => {
            Some(Fused::RELU_N1_TO_1)
        }
        Some(Act::Clip { min: Some(lo), max: None }) if *lo == 0.0 => Some(Fused::RELU),
        _ => None,
    }
}

/// Output tensor for the node's output 0, followed by its activation when TFLite cannot fuse it.
/// Returns (tensor the main op writes, fused activation for its options).
pub fn output_with_act(l: &mut Lowering, id: NodeId, nhwc: bool) -> Result<(i32, Fused)> {
    let n = &l.g.nodes[id];
    let out = n.output(0).ok_or_else(|| l.err("no output"))?;
    let act = n.act.clone();
    if let Some(f) = fusable(&act) {
        return Ok((l.define(out, nhwc)?, f));
    }
    let final_t = l.define(out, nhwc)?;
    let pre = l.temp_like(final_t, "pre_act");
    if let Some(a) = act {
        // The activation runs after the op the caller is about to emit: hold its ops back until then.
        let start = l.m.operators.len();
        activation(l, &a, pre, final_t)?;
        let ops: Vec<_> = l.m.operators.drain(start..).collect();
        l.deferred.extend(ops);
    }
    Ok((pre, Fused::NONE))
}

/// y = act(x) as standalone ops.
pub fn activation(l: &mut Lowering, a: &Act, x: i32, y: i32) -> Result<()> {
    let scalar = |l: &mut Lowering, name: &str, v: f32| l.m.const_f32(name, vec![], &[v]);
    match a {
        Act::Relu => l.emit(Code::RELU, vec![x], vec![y], Options::None),
        Act::Sigmoid => l.emit(Code::LOGISTIC, vec![x], vec![y], Options::None),
        Act::Tanh => l.emit(Code::TANH, vec![x], vec![y], Options::None),
        Act::HardSwish => l.emit(Code::HARD_SWISH, vec![x], vec![y], Options::None),
        Act::LeakyRelu { alpha } => l.emit(
            Code::LEAKY_RELU,
            vec![x],
            vec![y],
            Options::LeakyRelu { alpha: alpha.unwrap_or(0.01) },
        ),
        Act::Gelu { approximate } => l.emit(
            Code::GELU,
            vec![x],
            vec![y],
            Options::Gelu { approximate: approximate.as_deref() == Some("tanh") },
        ),
        Act::Silu => {
            let s = l.temp_like(x, "sigmoid");
            if l.m.tensors[x as usize].quant.is_some() {
                l.m.tensors[s as usize].quant = Some(super::model::Quant {
                    scale: vec![1.0 / 256.0],
                    zero_point: vec![-128],
                    axis: 0,
                });
            }
            l.emit(Code::LOGISTIC, vec![x], vec![s], Options::None);
            l.emit(Code::MUL, vec![x, s], vec![y], Options::Binary { act: Fused::NONE });
        }
        Act::Clip { min, max } => match fusable(&Some(a.clone())) {
            Some(Fused::RELU6) => l.emit(Code::RELU6, vec![x], vec![y], Options::None),
            Some(Fused::RELU) => l.emit(Code::RELU, vec![x], vec![y], Options::None),
            Some(Fused::RELU_N1_TO_1) => {
                l.emit(Code::RELU_N1_TO_1, vec![x], vec![y], Options::None)
            }
            _ => {
                let mut cur = x;
                if let Some(lo) = min {
                    let c = scalar(l, "clip_min", *lo);
                    let t = if max.is_some() { l.temp_like(x, "clip_lo") } else { y };
                    l.emit(Code::MAXIMUM, vec![cur, c], vec![t], Options::None);
                    cur = t;
                }
                if let Some(hi) = max {
                    let c = scalar(l, "clip_max", *hi);
                    l.emit(Code::MINIMUM, vec![cur, c], vec![y], Options::None);
                } else if min.is_none() {
                    l.emit(
                        Code::RESHAPE,
                        vec![x],
                        vec![y],
                        Options::Reshape { shape: l.m.shape(y).to_vec() },
                    );
                }
            }
        },
        // clip(αx + β, 0, 1) = relu6(6αx + 6β) / 6.
        Act::HardSigmoid { alpha, beta } => {
            let (a6, b6) = (6.0 * alpha.unwrap_or(0.2), 6.0 * beta.unwrap_or(0.5));
            let ca = scalar(l, "hardsigmoid_6a", a6);
            let cb = scalar(l, "hardsigmoid_6b", b6);
            let c6 = scalar(l, "hardsigmoid_inv6", 1.0 / 6.0);
            let t1 = l.temp_like(x, "hs_scaled");
            let t2 = l.temp_like(x, "hs_relu6");
            l.emit(Code::MUL, vec![x, ca], vec![t1], Options::Binary { act: Fused::NONE });
            l.emit(Code::ADD, vec![t1, cb], vec![t2], Options::Binary { act: Fused::RELU6 });
            l.emit(Code::MUL, vec![t2, c6], vec![y], Options::Binary { act: Fused::NONE });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_compiler::ir::Act;

    #[test]
    fn fusable_activations() {
        assert_eq!(
            fusable(&Some(Act::Clip { min: Some(0.0), max: Some(6.0) })),
            Some(Fused::RELU6)
        );
        assert_eq!(fusable(&Some(Act::Relu)), Some(Fused::RELU));
        assert_eq!(fusable(&Some(Act::HardSwish)), None);
        assert_eq!(fusable(&Some(Act::Clip { min: Some(0.0), max: Some(4.0) })), None);
    }
}
