// 2-D max/average pooling, NCHW, pads and dilations; kind 0 = max, 1 = average counting pads,
// 2 = average over the valid elements. One invocation per output element.
// params: total N C H W OH OW KH KW SH SW PH PW DH DW x y kind act a b
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = linear_id(gid, nw);
  if (id >= p(0u)) { return; }
  let H = p(3u); let W = p(4u); let OH = p(5u); let OW = p(6u);
  let KH = p(7u); let KW = p(8u); let SH = p(9u); let SW = p(10u);
  let PH = pi(11u); let PW = pi(12u); let DH = p(13u); let DW = p(14u); let kind = p(17u);
  let ow = id % OW; let t1 = id / OW; let oh = t1 % OH; let nc = t1 / OH;
  let base = p(15u) + nc * H * W;
  let ih0 = i32(oh * SH) - PH; let iw0 = i32(ow * SW) - PW;
  var acc = select(0.0, -3.4028235e38, kind == 0u);
  var count = 0u;
  for (var kh = 0u; kh < KH; kh++) {
    let ih = ih0 + i32(kh * DH);
    if (ih < 0 || ih >= i32(H)) { continue; }
    for (var kw = 0u; kw < KW; kw++) {
      let iw = iw0 + i32(kw * DW);
      if (iw < 0 || iw >= i32(W)) { continue; }
      let v = data[base + u32(ih) * W + u32(iw)];
      if (kind == 0u) { acc = max(acc, v); } else { acc += v; }
      count += 1u;
    }
  }
  if (kind == 1u) {
    // Count the window's positions inside the padded input (ONNX count_include_pad).
    let hend = min(ih0 + i32((KH - 1u) * DH) + 1, i32(H) + PH);
    let wend = min(iw0 + i32((KW - 1u) * DW) + 1, i32(W) + PW);
    let hn = (hend - ih0 + i32(DH) - 1) / i32(DH);
    let wn = (wend - iw0 + i32(DW) - 1) / i32(DW);
    acc /= f32(max(hn * wn, 1));
  } else if (kind == 2u) {
    acc /= f32(max(count, 1u));
  }
  data[p(16u) + id] = act(acc, p(18u), pf(19u), pf(20u));
}
