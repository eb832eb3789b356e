//! Resize (and Upsample, and opset-10 Resize) of a channel-last image → RESIZE_BILINEAR /
//! RESIZE_NEAREST_NEIGHBOR, or, for nearest sampling no TFLite variant reproduces, two GATHERs.
//!
//! ONNX describes a resize by a coordinate transformation (half_pixel, pytorch_half_pixel, align_corners,
//! asymmetric, tf_half_pixel_for_nn), a mode (nearest, linear) and, for nearest, a rounding rule. TFLite's
//! two ops have three variants each (legacy, `half_pixel_centers`, `align_corners`). Rather than a table of
//! which pairs agree (they do not always: half_pixel + round_prefer_floor differs from TFLite's
//! half-pixel nearest at exact ties, which a 2x downscale hits), the lowering computes, for every output
//! row and column, the source position ONNX prescribes (as onnxruntime computes it, in float32) and the
//! one each TFLite variant computes, and picks a variant that agrees everywhere. Nearest sampling with no
//! agreeing variant becomes GATHER along height, then width, with the exact ONNX indices; linear sampling
//! with none (or cubic, or tf_crop_and_resize) is refused by name.
//!
//! int8: both ops keep their input's parameters (TFLite's quantization spec), as the quantizer arranges.
use kiln_compiler::ir::NodeId;
use kiln_compiler::Result;

use super::lower::Lowering;
use super::model::{Code, Fused, Options};

/// One of TFLite's sampling variants.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Variant {
    align_corners: bool,
    half_pixel: bool,
}

const VARIANTS: [Variant; 3] = [
    Variant { align_corners: false, half_pixel: false },
    Variant { align_corners: false, half_pixel: true },
    Variant { align_corners: true, half_pixel: false },
];

/// How ONNX samples along one axis.
#[derive(Clone, Debug)]
struct Axis {
    coord: String,
    nearest: Option<String>,
    /// The scale ONNX divides by (the `scales` input, or out/in when `sizes` is given).
    scale: f32,
    input: i64,
    output: i64,
}

impl Axis {
    /// ONNX's source coordinate of output index `o` (onnxruntime's float32 arithmetic).
    fn onnx_coord(&self, o: i64) -> f32 {
        let (o, s, i, n) = (o as f32, self.scale, self.input as f32, self.output as f32);
        match self.coord.as_str() {
            "half_pixel" => (o + 0.5) / s - 0.5,
            "pytorch_half_pixel" if self.output > 1 => (o + 0.5) / s - 0.5,
            "pytorch_half_pixel" => 0.0,
            "align_corners" if self.output > 1 => o * (i - 1.0) / (n - 1.0),
            "align_corners" => 0.0,
            "tf_half_pixel_for_nn" => (o + 0.5) / s,
            _ => o / s,
        }
    }

    /// The input index nearest sampling reads for output index `o`.
    fn onnx_nearest(&self, o: i64) -> i64 {
        let x = self.onnx_coord(o);
        let tie = (x - x.floor() - 0.5).abs() == 0.0;
        let k = match self.nearest.as_deref() {
            Some("floor") => x.floor(),
            Some("ceil") => x.ceil(),
            Some("round_prefer_ceil") if tie => x.ceil(),
            // Upsample / opset-10 Resize: truncation when enlarging, ceil when shrinking (onnxruntime).
            Some("simple") if self.scale < 1.0 => x.ceil(),
            Some("simple") => x.trunc(),
            _ if tie => x.floor(),
            _ => x.round(),
        };
        (k as i64).clamp(0, self.input - 1)
    }

    /// The (clamped) source coordinate linear sampling interpolates at.
    fn onnx_linear(&self, o: i64) -> f32 {
        self.onnx_coord(o).clamp(0.0, (self.input - 1) as f32)
    }

    fn tf_scale(&self, v: Variant) -> f32 {
        if v.align_corners && self.output > 1 {
            (self.input - 1) as f32 / (self.output - 1) as f32
        } else {
            self.input as f32 / self.output as f32
        }
    }

    /// TFLite's RESIZE_NEAREST_NEIGHBOR index (reference_ops::GetNearestNeighbor).
    fn tf_nearest(&self, v: Variant, o: i64) -> i64 {
        let offset = if v.half_pixel { 0.5 } else { 0.0 };
        let x = (o as f32 + offset) * self.tf_scale(v);
        let k = if v.align_corners { x.round() } else { x.floor() } as i64;
        k.min(self.input - 1).max(0)
    }

    /// TFLite's RESIZE_BILINEAR source coordinate, clamped as its kernel clamps the two taps.
    fn tf_linear(&self, v: Variant, o: i64) -> f32 {
        let s = self.tf_scale(v);
        let x = if v.half_pixel { (o as f32 + 0.5) * s - 0.5 } else { o as f32 * s };
        x.clamp(0.0, (self.input - 1) as f32)
    }

    fn agrees(&self, v: Variant) -> bool {
        (0..self.output).all(|o| match self.nearest {
            Some(_) => self.onnx_nearest(o) == self.tf_nearest(v, o),
            None => (self.onnx_linear(o) - self.tf_linear(v, o)).abs() <= 1e-5,
        })
    }
}

fn attr_str(l: &Lowering, id: NodeId, name: &str) -> Option<String> {
    match l.g.nodes[id].op.attr(name) {
        Some(kiln_compiler::ir::AttrValue::String(s)) => Some(String::from_utf8_lossy(&s).into()),
        _ => None,
    }
}

/// Lower `Resize` / `Upsample` node `id`. `legacy`: Upsample or an opset-10 Resize (asymmetric
/// coordinates, the scales in input 1).
pub fn resize(l: &mut Lowering, id: NodeId, legacy: bool) -> Result<()> {
    let n = l.g.nodes[id].clone();
    let x = n.input(0).ok_or_else(|| l.err("no input"))?;
    let y = n.output(0).ok_or_else(|| l.err("no output"))?;
    let (xd, yd) = (l.dims(x)?, l.dims(y)?);
    if xd.len() != 4 || yd.len() != 4 {
        return Err(
            l.err(format!("only 4-D (image) Resize has a TFLite lowering, not rank {}", xd.len()))
        );
    }
    if xd.iter().chain(&yd).any(|d| *d < 1) {
        return Err(l.err("Resize of an empty tensor has no TFLite lowering"));
    }
    if xd[..2] != yd[..2] {
        return Err(l.err("Resize of the batch or channel axis has no TFLite lowering"));
    }
    for a in ["antialias"] {
        if n.op.attr_int(a).unwrap_or(0) != 0 {
            return Err(l.err(format!("Resize with {a} has no TFLite lowering")));
        }
    }
    if attr_str(l, id, "keep_aspect_ratio_policy").is_some_and(|p| p != "stretch") {
        return Err(l.err(
            "Resize with keep_aspect_ratio_policy other than stretch has no TFLite lowering",
        ));
    }
    let mode = attr_str(l, id, "mode").unwrap_or_else(|| "nearest".into());
    let coord = if legacy {
        "asymmetric".to_string()
    } else {
        attr_str(l, id, "coordinate_transformation_mode").unwrap_or_else(|| "half_pixel".into())
    };
    let nearest = match mode.as_str() {
        "nearest" if legacy => Some("simple".to_string()),
        "nearest" => {
            Some(attr_str(l, id, "nearest_mode").unwrap_or_else(|| "round_prefer_floor".into()))
        }
        "linear" | "bilinear" => None,
        other => return Err(l.err(format!("Resize mode '{other}' has no TFLite lowering"))),
    };
    if coord == "tf_crop_and_resize" {
        return Err(l.err("Resize with tf_crop_and_resize has no TFLite lowering"));
    }
    // The scales ONNX divides by: the `scales` input when given (and not empty), else out/in.
    let scales_in = if legacy { n.input(1) } else { n.input(2) };
    let given: Option<Vec<f32>> = match scales_in {
        Some(s) if l.is_const(s) => Some(l.const_f32(s)?.1).filter(|v| !v.is_empty()),
        Some(_) => return Err(l.err("Resize with computed scales has no TFLite lowering")),
        None => None,
    };
    let axes_attr = n.op.attr_ints("axes");
    let scale_of = |k: usize| -> f32 {
        let default = yd[k] as f32 / xd[k] as f32;
        match (&given, &axes_attr) {
            (Some(v), Some(axes)) => axes
                .iter()
                .position(|a| (if *a < 0 { a + 4 } else { *a }) as usize == k)
                .and_then(|p| v.get(p).copied())
                .unwrap_or(1.0),
            (Some(v), None) => v.get(k).copied().unwrap_or(default),
            _ => default,
        }
    };
    let axes: Vec<Axis> = [2usize, 3]
        .iter()
        .map(|&k| Axis {
            coord: coord.clone(),
            nearest: nearest.clone(),
            scale: scale_of(k),
            input: xd[k],
            output: yd[k],
        })
        .collect();
    let variant = VARIANTS.iter().copied().find(|v| axes.iter().all(|a| a.agrees(*v)));
    let xt = l.get(x, true)?;
    let (out, act) = super::act::output_with_act(l, id, true)?;
    if act != Fused::NONE {
        return Err(l.err("a fused activation on Resize is not supported"));
    }
    match variant {
        Some(v) => {
            let size = l.m.const_i32(&format!("{}_size", l.node), &[yd[2] as i32, yd[3] as i32]);
            let code = if nearest.is_some() { Code::RESIZE_NEAREST_NEIGHBOR } else { Code::RESIZE_BILINEAR };
            l.emit(
                code,
                vec![xt, size],
                vec![out],
                Options::Resize {
                    nearest: nearest.is_some(),
                    align_corners: v.align_corners,
                    half_pixel: v.half_pixel,
                },
            );
            Ok(())
        }
        None if nearest.is_some() => gather_rows_cols(l, xt, out, &axes),
        None => Err(l.err(format!(
            "linear Resize with coordinate_transformation_mode '{coord}' at these sizes matches none of \
             TFLite's RESIZE_BILINEAR variants"
        ))),
    }
}

/// Nearest resize as GATHER of the ONNX row indices (NHWC axis 1), then of the column indices (axis 2).
fn gather_rows_cols(l: &mut Lowering, xt: i32, out: i32, axes: &[Axis]) -> Result<()> {
    let name = l.node.clone();
    let rows: Vec<i32> = (0..axes[0].output).map(|o| axes[0].onnx_nearest(o) as i32).collect();
    let cols: Vec<i32> = (0..axes[1].output).map(|o| axes[1].onnx_nearest(o) as i32).collect();
    let s = l.m.shape(xt).to_vec();
    let (dt, q) = (l.m.tensors[xt as usize].dtype, l.m.tensors[xt as usize].quant.clone());
    let mid = l.m.tensor(&format!("{name}_rows"), vec![s[0], rows.len() as i32, s[2], s[3]], dt);
    l.m.tensors[mid as usize].quant = q;
    let ri = l.m.const_i32(&format!("{name}_row_indices"), &rows);
    let ci = l.m.const_i32(&format!("{name}_col_indices"), &cols);
    l.emit(Code::GATHER, vec![xt, ri], vec![mid], Options::Gather { axis: 1 });
    l.emit(Code::GATHER, vec![mid, ci], vec![out], Options::Gather { axis: 2 });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(coord: &str, nearest: Option<&str>, input: i64, output: i64) -> Axis {
        Axis {
            coord: coord.into(),
            nearest: nearest.map(String::from),
            scale: output as f32 / input as f32,
            input,
            output,
        }
    }

    #[test]
    fn pytorch_exports_map_to_one_tflite_variant() {
        // nn.Upsample(scale_factor=2, mode="nearest"): asymmetric + floor = TFLite's legacy nearest.
        let a = axis("asymmetric", Some("floor"), 12, 24);
        assert!(a.agrees(VARIANTS[0]));
        // F.interpolate(bilinear, align_corners=False): half_pixel = half_pixel_centers.
        let a = axis("half_pixel", None, 12, 96);
        assert!(a.agrees(VARIANTS[1]) && !a.agrees(VARIANTS[0]));
        let a = axis("pytorch_half_pixel", None, 7, 30);
        assert!(a.agrees(VARIANTS[1]));
        // align_corners=True.
        let a = axis("align_corners", None, 7, 30);
        assert!(a.agrees(VARIANTS[2]) && !a.agrees(VARIANTS[1]));
    }

    #[test]
    fn ties_are_not_papered_over() {
        // A 2x nearest downscale with half_pixel + round_prefer_floor lands exactly on ties: ONNX reads
        // index 2·o (as TFLite's legacy variant does), TFLite's half-pixel nearest 2·o + 1.
        let a = axis("half_pixel", Some("round_prefer_floor"), 8, 4);
        assert_eq!((0..4).map(|o| a.onnx_nearest(o)).collect::<Vec<_>>(), vec![0, 2, 4, 6]);
        assert!(a.agrees(VARIANTS[0]) && !a.agrees(VARIANTS[1]));
        let a = axis("half_pixel", Some("round_prefer_ceil"), 8, 4);
        assert!(a.agrees(VARIANTS[1]) && !a.agrees(VARIANTS[0]));
        // half_pixel + ceil: no TFLite variant reads the same rows (the lowering gathers them).
        let a = axis("half_pixel", Some("ceil"), 4, 8);
        assert_eq!(
            (0..8).map(|o| a.onnx_nearest(o)).collect::<Vec<_>>(),
            vec![0, 1, 1, 2, 2, 3, 3, 3]
        );
        assert!(VARIANTS.iter().all(|v| !a.agrees(*v)));
    }
}
