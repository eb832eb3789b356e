// 2-D Resize of NCHW (nearest or bilinear), ONNX coordinate transformation modes:
// 0 half_pixel, 1 asymmetric, 2 pytorch_half_pixel, 3 align_corners; nearest modes: 0 round_prefer_floor,
// 1 round_prefer_ceil, 2 floor, 3 ceil. One invocation per output element.
// params: total NC H W OH OW x y linear coord nearest scale_h scale_w
fn src_coord(o: u32, scale: f32, insz: u32, outsz: u32, coord: u32) -> f32 {
  let x = f32(o);
  switch coord {
    case 1u: { return x / scale; }
    case 2u: { return select(0.0, (x + 0.5) / scale - 0.5, outsz > 1u); }
    case 3u: { return select(0.0, x * f32(insz - 1u) / f32(outsz - 1u), outsz > 1u); }
    default: { return (x + 0.5) / scale - 0.5; }
  }
}

fn nearest(x: f32, mode: u32) -> f32 {
  switch mode {
    case 1u: { return select(round(x), floor(x) + 1.0, fract(x) == 0.5); }
    case 2u: { return floor(x); }
    case 3u: { return ceil(x); }
    default: { return select(round(x), floor(x), fract(x) == 0.5); }
  }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = linear_id(gid, nw);
  if (id >= p(0u)) { return; }
  let H = p(2u); let W = p(3u); let OH = p(4u); let OW = p(5u);
  let ow = id % OW; let t = id / OW; let oh = t % OH; let nc = t / OH;
  let base = p(6u) + nc * H * W;
  let coord = p(9u);
  let sy = src_coord(oh, pf(11u), H, OH, coord);
  let sx = src_coord(ow, pf(12u), W, OW, coord);
  var v = 0.0;
  if (p(8u) == 0u) {
    let iy = u32(clamp(nearest(sy, p(10u)), 0.0, f32(H - 1u)));
    let ix = u32(clamp(nearest(sx, p(10u)), 0.0, f32(W - 1u)));
    v = data[base + iy * W + ix];
  } else {
    let cy = clamp(sy, 0.0, f32(H - 1u));
    let cx = clamp(sx, 0.0, f32(W - 1u));
    let y0 = u32(floor(cy)); let x0 = u32(floor(cx));
    let y1 = min(y0 + 1u, H - 1u); let x1 = min(x0 + 1u, W - 1u);
    let fy = cy - f32(y0); let fx = cx - f32(x0);
    let top = mix(data[base + y0 * W + x0], data[base + y0 * W + x1], fx);
    let bot = mix(data[base + y1 * W + x0], data[base + y1 * W + x1], fx);
    v = mix(top, bot, fy);
  }
  data[p(7u) + id] = v;
}
