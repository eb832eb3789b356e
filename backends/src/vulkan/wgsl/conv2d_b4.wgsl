// 2-D convolution, NCHW: each invocation computes 4 output channels × 4 horizontally adjacent pixels (16
// sums), loading each input value once for the four channels and each weight vec4 once for the four
// pixels (weights packed [OC/4][C/G][KH·KW][4]); rows whose 4 windows lie inside the input take unchecked
// loads. Any stride/pad/dilation; groups when each group's output channels are a multiple of 4. Bias, a
// residual input (added before the activation) and the activation are fused.
// params: total N C H W OC OH OW KH KW SH SW PH PW DH DW G x y w b act a b res OB OWB
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = linear_id(gid, nw);
  if (id >= p(0u)) { return; }
  let C = p(2u); let H = p(3u); let W = p(4u); let OC = p(5u); let OH = p(6u); let OW = p(7u);
  let KH = p(8u); let KW = p(9u); let SH = p(10u); let SW = p(11u);
  let PH = pi(12u); let PW = pi(13u); let DH = p(14u); let DW = p(15u); let G = p(16u);
  let x_off = p(17u); let y_off = p(18u); let w_off = p(19u); let b_off = p(20u); let OB = p(25u);
  let OWB = p(26u);
  let owb = id % OWB; let t1 = id / OWB; let oh = t1 % OH; let t2 = t1 / OH; let ob = t2 % OB; let n = t2 / OB;
  let oc0 = ob * 4u; let ow0 = owb * 4u;
  let cg = C / G; let g = oc0 / (OC / G);
  let kk = KH * KW;
  var bias = vec4<f32>(0.0);
  if (b_off != NONE) {
    let last = OC - 1u;
    bias = vec4<f32>(data[b_off + oc0], data[b_off + min(oc0 + 1u, last)], data[b_off + min(oc0 + 2u, last)], data[b_off + min(oc0 + 3u, last)]);
  }
  // a_j: channel oc0 + j, over the 4 pixels.
  var a0 = vec4<f32>(bias.x); var a1 = vec4<f32>(bias.y); var a2 = vec4<f32>(bias.z); var a3 = vec4<f32>(bias.w);
  let ih0 = i32(oh * SH) - PH; let iw0 = i32(ow0 * SW) - PW;
  let inside = iw0 >= 0 && iw0 + i32(3u * SW + (KW - 1u) * DW) < i32(W);
  for (var ic = 0u; ic < cg; ic++) {
    let xbase = x_off + (n * C + g * cg + ic) * H * W;
    let wbase = w_off + (ob * cg + ic) * kk * 4u;
    for (var kh = 0u; kh < KH; kh++) {
      let ih = ih0 + i32(kh * DH);
      if (ih < 0 || ih >= i32(H)) { continue; }
      let row = xbase + u32(ih) * W;
      for (var kw = 0u; kw < KW; kw++) {
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
        let k = wbase + (kh * KW + kw) * 4u;
        a0 += xv * wt(k); a1 += xv * wt(k + 1u); a2 += xv * wt(k + 2u); a3 += xv * wt(k + 3u);
      }
    }
  }
  let r = p(24u);
  for (var j = 0u; j < 4u; j++) {
    let oc = oc0 + j;
    if (oc >= OC) { break; }
    var v = a0;
    if (j == 1u) { v = a1; } else if (j == 2u) { v = a2; } else if (j == 3u) { v = a3; }
    let o = ((n * OC + oc) * OH + oh) * OW + ow0;
    for (var e = 0u; e < 4u; e++) {
      if (ow0 + e >= OW) { break; }
      var s = v[e];
      if (r != NONE) { s += data[r + o + e]; }
      data[y_off + o + e] = act(s, p(21u), pf(22u), pf(23u));
    }
  }
}
