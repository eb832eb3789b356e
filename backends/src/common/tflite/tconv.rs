//! ConvTranspose (2-D, ungrouped, undilated) → TRANSPOSE_CONV with VALID padding over the full
//! `(in − 1)·stride + kernel` result, then a STRIDED_SLICE for ONNX's crop (`pads`, `auto_pad`,
//! `output_shape`, `output_padding` all reduce to where the kept window starts and how large it is).
//! Filters go from ONNX [C_in, C_out, kh, kw] to TFLite's [C_out, kh, kw, C_in]; the bias is the op's
//! fourth input. Runs in float (an int8 model dequantizes around it).
use kiln_compiler::ir::NodeId;
use kiln_compiler::Result;

use super::act::{activation, output_with_act};
use super::lower::{transpose_data, Lowering};
use super::model::{Code, Fused, Options, Padding};

/// Where the kept window starts on one spatial axis (ONNX's begin padding).
fn begin_pad(auto_pad: &str, total: i64, explicit: i64) -> i64 {
    match auto_pad {
        "SAME_UPPER" => total / 2,
        "SAME_LOWER" => total - total / 2,
        _ => explicit,
    }
}

pub fn conv_transpose(l: &mut Lowering, id: NodeId) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let x = n.input(0).ok_or_else(|| l.err("no input"))?;
    let w = n.input(1).ok_or_else(|| l.err("no weight"))?;
    let y = n.output(0).ok_or_else(|| l.err("no output"))?;
    let (xd, yd) = (l.dims(x)?, l.dims(y)?);
    if xd.len() != 4 {
        return Err(l.err("only 2-D ConvTranspose has a TFLite lowering"));
    }
    if n.op.attr_int("group").unwrap_or(1) != 1 {
        return Err(l.err("grouped ConvTranspose has no TFLite lowering"));
    }
    if n.op.attr_ints("dilations").is_some_and(|d| d.iter().any(|v| *v != 1)) {
        return Err(l.err("dilated ConvTranspose has no TFLite lowering"));
    }
    let (wd, wv) = l.const_f32(w).map_err(|_| l.err("weights must be constant"))?;
    if wd.len() != 4 {
        return Err(l.err(format!("ConvTranspose weight of rank {} (4 expected)", wd.len())));
    }
    let (cin, cout, kh, kw) = (wd[0], wd[1], wd[2], wd[3]);
    let strides = n.op.attr_ints("strides").unwrap_or_else(|| vec![1, 1]);
    if strides.len() != 2 || strides.iter().any(|s| *s < 1) {
        return Err(
            l.err(format!("ConvTranspose strides {strides:?}: two positive values expected"))
        );
    }
    let pads = n.op.attr_ints("pads").unwrap_or_else(|| vec![0; 4]);
    let auto_pad = match n.op.attr("auto_pad") {
        Some(kiln_compiler::ir::AttrValue::String(s)) => String::from_utf8_lossy(&s).into_owned(),
        _ => "NOTSET".into(),
    };
    let out_pad = n.op.attr_ints("output_padding").unwrap_or_else(|| vec![0, 0]);
    let given_shape = n.op.attr_ints("output_shape");
    let k = [kh as i64, kw as i64];
    let mut full = [0i64; 2];
    let mut begin = [0i64; 2];
    for a in 0..2 {
        full[a] = (xd[2 + a] - 1) * strides[a] + k[a];
        let total = full[a] + out_pad.get(a).copied().unwrap_or(0) - yd[2 + a];
        begin[a] = if given_shape.is_some() && auto_pad == "NOTSET" {
            total - total / 2
        } else {
            begin_pad(&auto_pad, total, pads.get(a).copied().unwrap_or(0))
        };
        if begin[a] < 0 || begin[a] + yd[2 + a] > full[a] {
            return Err(l.err(
                "ConvTranspose whose output reaches past the full transposed result (output_padding) has no TFLite lowering",
            ));
        }
    }
    let name = l.node.clone();
    let xt = l.get(x, true)?;
    let filter = l.m.const_f32(
        &format!("{name}_filter"),
        vec![cout as i32, kh as i32, kw as i32, cin as i32],
        &transpose_data(&wv, &wd, &[1, 2, 3, 0]),
    );
    let bias = match n.input(2) {
        Some(b) => l.const_f32(b)?.1,
        None => vec![0.0; cout],
    };
    let bt = l.m.const_f32(&format!("{name}_bias"), vec![cout as i32], &bias);
    let (out, act) = output_with_act(l, id, true)?;
    let crop = begin != [0, 0] || [full[0], full[1]] != [yd[2], yd[3]];
    let full_shape = vec![xd[0] as i32, full[0] as i32, full[1] as i32, cout as i32];
    let st = l.m.const_i32(&format!("{name}_output_shape"), &full_shape);
    let dst = if crop || act != Fused::NONE {
        l.m.tensor(&format!("{name}_full"), full_shape.clone(), l.m.tensors[out as usize].dtype)
    } else {
        out
    };
    l.emit(
        Code::TRANSPOSE_CONV,
        vec![st, filter, xt, bt],
        vec![dst],
        Options::TransposeConv {
            padding: Padding::VALID,
            stride: (strides[0] as i32, strides[1] as i32),
            act: Fused::NONE,
        },
    );
    let mut cur = dst;
    if crop {
        let cropped = if act != Fused::NONE {
            let s = vec![xd[0] as i32, yd[2] as i32, yd[3] as i32, cout as i32];
            l.m.tensor(&format!("{name}_cropped"), s, l.m.tensors[out as usize].dtype)
        } else {
            out
        };
        let b = l.m.const_i32(&format!("{name}_begin"), &[0, begin[0] as i32, begin[1] as i32, 0]);
        let e = l.m.const_i32(
            &format!("{name}_end"),
            &[xd[0] as i32, (begin[0] + yd[2]) as i32, (begin[1] + yd[3]) as i32, cout as i32],
        );
        let s = l.m.const_i32(&format!("{name}_strides"), &[1, 1, 1, 1]);
        l.emit(Code::STRIDED_SLICE, vec![cur, b, e, s], vec![cropped], Options::StridedSlice);
        cur = cropped;
    }
    if act != Fused::NONE {
        let a = n.act.clone().ok_or_else(|| l.err("activation"))?;
        activation(l, &a, cur, out)?;
    }
    Ok(())
}
