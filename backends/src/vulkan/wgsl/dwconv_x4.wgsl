// Depthwise 2-D convolution (one input channel per output channel), NCHW: each invocation computes 4
// horizontally adjacent outputs of one channel, so each weight is loaded once for the four; rows whose 4
// windows lie inside the input take unchecked loads. Bias, residual input and activation fused.
// params: total N C H W OC OH OW KH KW SH SW PH PW DH DW G x y w b act a b res OWB
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = linear_id(gid, nw);
  if (id >= p(0u)) { return; }
  let C = p(2u); let H = p(3u); let W = p(4u); let OH = p(6u); let OW = p(7u);
  let KH = p(8u); let KW = p(9u); let SH = p(10u); let SW = p(11u);
  let PH = pi(12u); let PW = pi(13u); let DH = p(14u); let DW = p(15u);
  let x_off = p(17u); let y_off = p(18u); let w_off = p(19u); let b_off = p(20u); let OWB = p(25u);
  let owb = id % OWB; let t = id / OWB; let oh = t % OH; let nc = t / OH; let c = nc % C;
  let ow0 = owb * 4u;
  var acc = vec4<f32>(0.0);
  if (b_off != NONE) { acc = vec4<f32>(data[b_off + c]); }
  let ih0 = i32(oh * SH) - PH; let iw0 = i32(ow0 * SW) - PW;
  let inside = iw0 >= 0 && iw0 + i32(3u * SW + (KW - 1u) * DW) < i32(W);
  let wrow = w_off + c * KH * KW;
  for (var kh = 0u; kh < KH; kh++) {
    let ih = ih0 + i32(kh * DH);
    if (ih < 0 || ih >= i32(H)) { continue; }
    let row = x_off + (nc * H + u32(ih)) * W;
    for (var kw = 0u; kw < KW; kw++) {
      let wv = wt(wrow + kh * KW + kw);
      let b = iw0 + i32(kw * DW);
      var xv: vec4<f32>;
      if (inside) {
        let i = row + u32(b);
        xv = vec4<f32>(data[i], data[i + SW], data[i + 2u * SW], data[i + 3u * SW]);
      } else {
        for (var e = 0u; e < 4u; e++) {
          let iw = b + i32(e * SW);
          xv[e] = select(0.0, data[row + u32(clamp(iw, 0, i32(W) - 1))], iw >= 0 && iw < i32(W));
        }
      }
      acc += xv * wv;
    }
  }
  let r = p(24u);
  let o = (nc * OH + oh) * OW + ow0;
  for (var e = 0u; e < 4u; e++) {
    if (ow0 + e >= OW) { break; }
    var v = acc[e];
    if (r != NONE) { v += data[r + o + e]; }
    data[y_off + o + e] = act(v, p(21u), pf(22u), pf(23u));
  }
}
