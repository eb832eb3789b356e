//! A TFLite flatbuffer as deterministic text, read back from the written bytes: inputs and outputs,
//! every tensor (type, shape, quantization parameters, constant size) and every operator (builtin, its
//! tensors, the options that shape it). Backend snapshot tests diff this text, so a lowering change shows
//! as a text diff without a runtime; the `dump` backend writes it.
//!
//! Scales print with 4 significant digits: calibration runs float kernels whose last bits differ between
//! CPUs, and a snapshot must hold on any machine. Constant data prints as its size only.
use std::fmt::Write;

use tract_tflite::tflite as fb;

/// `value` with 4 significant digits.
fn sig4(v: f32) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (3 - v.abs().log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.digits$}");
    // Exponent form for very small or large scales keeps lines short.
    if !(1e-4..1e6).contains(&v.abs()) {
        return format!("{v:.3e}");
    }
    s
}

fn list<T: std::fmt::Display>(v: impl Iterator<Item = T>) -> String {
    v.map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}

fn act(a: fb::ActivationFunctionType) -> &'static str {
    a.variant_name().unwrap_or("?")
}

fn padding(p: fb::Padding) -> &'static str {
    p.variant_name().unwrap_or("?")
}

/// The options that shape an operator's computation, for the common builtins.
fn options(o: &fb::Operator) -> String {
    use fb::BuiltinOptions as K;
    let t = o.builtin_options_type();
    let name = t.variant_name().unwrap_or("?");
    let detail = match t {
        K::Conv2DOptions => o.builtin_options_as_conv_2_doptions().map(|c| {
            format!(
                "{} stride {}x{} dilation {}x{} {}",
                padding(c.padding()),
                c.stride_h(),
                c.stride_w(),
                c.dilation_h_factor(),
                c.dilation_w_factor(),
                act(c.fused_activation_function())
            )
        }),
        K::DepthwiseConv2DOptions => o.builtin_options_as_depthwise_conv_2_doptions().map(|c| {
            format!(
                "{} stride {}x{} multiplier {} {}",
                padding(c.padding()),
                c.stride_h(),
                c.stride_w(),
                c.depth_multiplier(),
                act(c.fused_activation_function())
            )
        }),
        K::Pool2DOptions => o.builtin_options_as_pool_2_doptions().map(|c| {
            format!(
                "{} filter {}x{} stride {}x{} {}",
                padding(c.padding()),
                c.filter_height(),
                c.filter_width(),
                c.stride_h(),
                c.stride_w(),
                act(c.fused_activation_function())
            )
        }),
        K::FullyConnectedOptions => o.builtin_options_as_fully_connected_options().map(|c| {
            format!("keep_dims {} {}", c.keep_num_dims(), act(c.fused_activation_function()))
        }),
        K::AddOptions => {
            o.builtin_options_as_add_options().map(|c| act(c.fused_activation_function()).into())
        }
        K::MulOptions => {
            o.builtin_options_as_mul_options().map(|c| act(c.fused_activation_function()).into())
        }
        K::SubOptions => {
            o.builtin_options_as_sub_options().map(|c| act(c.fused_activation_function()).into())
        }
        K::ConcatenationOptions => o
            .builtin_options_as_concatenation_options()
            .map(|c| format!("axis {} {}", c.axis(), act(c.fused_activation_function()))),
        K::ReducerOptions => {
            o.builtin_options_as_reducer_options().map(|c| format!("keep_dims {}", c.keep_dims()))
        }
        K::ReshapeOptions => o
            .builtin_options_as_reshape_options()
            .map(|c| format!("new_shape [{}]", list(c.new_shape().into_iter().flatten()))),
        _ => None,
    };
    match (t, detail) {
        (K::NONE, _) => String::new(),
        (_, Some(d)) => format!(" {name}({d})"),
        (_, None) => format!(" {name}"),
    }
}

/// The flatbuffer `bytes` as text; an error when they are not a TFLite model.
pub fn dump(bytes: &[u8]) -> Result<String, String> {
    let m = fb::root_as_model(bytes).map_err(|e| format!("not a TFLite flatbuffer: {e}"))?;
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "tflite version {}", m.version());
    let codes: Vec<String> = m
        .operator_codes()
        .into_iter()
        .flatten()
        .map(|c| {
            let code =
                c.builtin_code().max(fb::BuiltinOperator(c.deprecated_builtin_code() as i32));
            code.variant_name().map(str::to_string).unwrap_or_else(|| format!("BUILTIN_{}", code.0))
        })
        .collect();
    let buffers = m.buffers();
    for (gi, g) in m.subgraphs().into_iter().flatten().enumerate() {
        let _ = writeln!(w, "subgraph {gi}");
        let _ = writeln!(w, "  inputs [{}]", list(g.inputs().into_iter().flatten()));
        let _ = writeln!(w, "  outputs [{}]", list(g.outputs().into_iter().flatten()));
        for (ti, t) in g.tensors().into_iter().flatten().enumerate() {
            let shape = list(t.shape().into_iter().flatten());
            let mut line = format!(
                "  t{ti} {} {}[{shape}]",
                t.name().unwrap_or(""),
                t.type_().variant_name().unwrap_or("?")
            );
            if let Some(q) = t.quantization() {
                let scales: Vec<f32> = q.scale().into_iter().flatten().collect();
                let zps: Vec<i64> = q.zero_point().into_iter().flatten().collect();
                if !scales.is_empty() {
                    let shown =
                        |n: usize| if n > 4 { format!(", … of {n}") } else { String::new() };
                    let _ = write!(
                        line,
                        " q(scale [{}{}] zp [{}{}] axis {})",
                        list(scales.iter().take(4).map(|v| sig4(*v))),
                        shown(scales.len()),
                        list(zps.iter().take(4)),
                        shown(zps.len()),
                        q.quantized_dimension()
                    );
                }
            }
            let buffer = buffers
                .filter(|b| (t.buffer() as usize) < b.len())
                .map(|b| b.get(t.buffer() as usize));
            let data = buffer.map(|b| b.data().map_or(0, |d| d.len())).filter(|n| *n > 0);
            if let Some(n) = data {
                let _ = write!(line, " const {n} B");
            }
            let _ = writeln!(w, "{line}");
        }
        for (oi, o) in g.operators().into_iter().flatten().enumerate() {
            let code = codes.get(o.opcode_index() as usize).map(String::as_str).unwrap_or("?");
            let _ = writeln!(
                w,
                "  op{oi} {code} [{}] -> [{}]{}",
                list(o.inputs().into_iter().flatten()),
                list(o.outputs().into_iter().flatten()),
                options(&o)
            );
        }
    }
    Ok(s)
}
