// 2-D convolution, NCHW, four output channels per invocation (the input value is loaded once for the
// four; weights packed [OC/4][C/G][KH·KW][4] so the four are adjacent). Any stride/pad/dilation; groups
// when each group's output channels are a multiple of 4. Bias, a residual input (added before the
// activation) and the activation are fused.
// params: total N C H W OC OH OW KH KW SH SW PH PW DH DW G x y w b act a b res OB
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = linear_id(gid, nw);
  if (id >= p(0u)) { return; }
  let C = p(2u); let H = p(3u); let W = p(4u); let OC = p(5u); let OH = p(6u); let OW = p(7u);
  let KH = p(8u); let KW = p(9u); let SH = p(10u); let SW = p(11u);
  let PH = pi(12u); let PW = pi(13u); let DH = p(14u); let DW = p(15u); let G = p(16u);
  let x_off = p(17u); let y_off = p(18u); let w_off = p(19u); let b_off = p(20u); let OB = p(25u);
  let ow = id % OW; let t1 = id / OW; let oh = t1 % OH; let t2 = t1 / OH; let ob = t2 % OB; let n = t2 / OB;
  let oc0 = ob * 4u;
  let cg = C / G; let g = oc0 / (OC / G);
  let kk = KH * KW;
  var acc = vec4<f32>(0.0);
  if (b_off != NONE) {
    let last = OC - 1u;
    acc = vec4<f32>(data[b_off + oc0], data[b_off + min(oc0 + 1u, last)], data[b_off + min(oc0 + 2u, last)], data[b_off + min(oc0 + 3u, last)]);
  }
  let ih0 = i32(oh * SH) - PH; let iw0 = i32(ow * SW) - PW;
  for (var ic = 0u; ic < cg; ic++) {
    let xbase = x_off + (n * C + g * cg + ic) * H * W;
    let wbase = w_off + (ob * cg + ic) * kk * 4u;
    for (var kh = 0u; kh < KH; kh++) {
      let ih = ih0 + i32(kh * DH);
      if (ih < 0 || ih >= i32(H)) { continue; }
      for (var kw = 0u; kw < KW; kw++) {
        let iw = iw0 + i32(kw * DW);
        if (iw < 0 || iw >= i32(W)) { continue; }
        let xv = data[xbase + u32(ih) * W + u32(iw)];
        let k = wbase + (kh * KW + kw) * 4u;
        acc += xv * vec4<f32>(wt(k), wt(k + 1u), wt(k + 2u), wt(k + 3u));
      }
    }
  }
  let r = p(24u);
  let plane = OH * OW;
  let pix = oh * OW + ow;
  for (var j = 0u; j < 4u; j++) {
    let oc = oc0 + j;
    if (oc >= OC) { break; }
    let o = (n * OC + oc) * plane + pix;
    var v = acc[j];
    if (r != NONE) { v += data[r + o]; }
    data[y_off + o] = act(v, p(21u), pf(22u), pf(23u));
  }
}
