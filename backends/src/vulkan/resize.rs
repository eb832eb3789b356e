//! Resize / Upsample of the last two axes of an NCHW tensor: nearest (every ONNX rounding mode) and
//! bilinear, with the half_pixel, asymmetric, pytorch_half_pixel and align_corners coordinate modes.
//! Opset-10 Resize and Upsample compute as asymmetric (what onnxruntime does for them).
use kiln_compiler::ir::{AttrValue, Attribute, NodeId};
use kiln_compiler::Result;

use super::kernels::Kernel;
use super::lower::{Lowerer, Word};

fn attr_str(attrs: &[Attribute], name: &str) -> Option<String> {
    attrs.iter().find(|a| a.name == name).and_then(|a| match &a.value {
        AttrValue::String(s) => Some(String::from_utf8_lossy(s).into_owned()),
        _ => None,
    })
}

pub fn resize(l: &mut Lowerer, id: NodeId, op: &str, attrs: &[Attribute]) -> Result<()> {
    let (x, y) = (l.input(id, 0)?, l.output(id, 0)?);
    let (sx, sy) = (l.shape(x)?, l.shape(y)?);
    if sx.len() != 4 || sx[0] != sy[0] || sx[1] != sy[1] {
        return Err(
            l.err(format!("only spatial resizing of NCHW tensors is supported ({sx:?} → {sy:?})"))
        );
    }
    if attrs.iter().any(|a| a.name == "antialias" && matches!(a.value, AttrValue::Int(1))) {
        return Err(l.err("antialias=1 has no kernel"));
    }
    let opset = l.m.opset();
    let legacy = op == "Upsample" || opset < 11;
    let linear = match attr_str(attrs, "mode").as_deref().unwrap_or("nearest") {
        "nearest" => 0u32,
        "linear" | "bilinear" => 1,
        m => return Err(l.err(format!("Resize mode '{m}' has no kernel"))),
    };
    let coord = if legacy {
        1
    } else {
        match attr_str(attrs, "coordinate_transformation_mode").as_deref().unwrap_or("half_pixel") {
            "half_pixel" => 0u32,
            "asymmetric" => 1,
            "pytorch_half_pixel" => 2,
            "align_corners" => 3,
            m => return Err(l.err(format!("coordinate_transformation_mode '{m}' has no kernel"))),
        }
    };
    // Explicit scales define the coordinate mapping; else the size ratio does.
    let scales_input = if op == "Upsample" || opset < 11 { 1 } else { 2 };
    let given = match l.g.nodes[id].input(scales_input) {
        Some(v) => l.const_vals(v).filter(|s| s.len() == 4),
        None => attrs.iter().find(|a| a.name == "scales").and_then(|a| match &a.value {
            AttrValue::Floats(f) if f.len() == 4 => Some(f.clone()),
            _ => None,
        }),
    };
    let (sh, sw) = match given {
        Some(s) if !s.is_empty() => (s[2], s[3]),
        _ => (sy[2] as f32 / sx[2] as f32, sy[3] as f32 / sx[3] as f32),
    };
    let nearest = if legacy {
        if sh >= 1.0 && sw >= 1.0 {
            2
        } else {
            3
        }
    } else {
        match attr_str(attrs, "nearest_mode").as_deref().unwrap_or("round_prefer_floor") {
            "round_prefer_floor" => 0u32,
            "round_prefer_ceil" => 1,
            "floor" => 2,
            "ceil" => 3,
            m => return Err(l.err(format!("nearest_mode '{m}' has no kernel"))),
        }
    };
    let (xa, ya) = (l.src(x)?, l.dst(y)?);
    let total: u64 = sy.iter().product();
    let u = |v: u64| Word::U(v as u32);
    let w = vec![
        u(total),
        u(sx[0] * sx[1]),
        u(sx[2]),
        u(sx[3]),
        u(sy[2]),
        u(sy[3]),
        Word::At(xa, 0),
        Word::At(ya, 0),
        Word::U(linear),
        Word::U(coord),
        Word::U(nearest),
        Word::F(sh),
        Word::F(sw),
    ];
    l.step(Kernel::Resize, w, total);
    Ok(())
}
