// Direct 2-D convolution, NCHW, any group/stride/pad/dilation; one invocation per output element.
// Bias, a residual input (added before the activation) and the activation are fused.
// params: total N C H W OC OH OW KH KW SH SW PH PW DH DW G x y w b act a b res
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = linear_id(gid, nw);
  if (id >= p(0u)) { return; }
  let C = p(2u); let H = p(3u); let W = p(4u); let OC = p(5u); let OH = p(6u); let OW = p(7u);
  let KH = p(8u); let KW = p(9u); let SH = p(10u); let SW = p(11u);
  let PH = pi(12u); let PW = pi(13u); let DH = p(14u); let DW = p(15u); let G = p(16u);
  let x_off = p(17u); let y_off = p(18u); let w_off = p(19u); let b_off = p(20u);
  let ow = id % OW; let t1 = id / OW; let oh = t1 % OH; let t2 = t1 / OH; let oc = t2 % OC; let n = t2 / OC;
  let cg = C / G; let g = oc / (OC / G);
  var acc = 0.0;
  if (b_off != NONE) { acc = data[b_off + oc]; }
  let ih0 = i32(oh * SH) - PH; let iw0 = i32(ow * SW) - PW;
  for (var ic = 0u; ic < cg; ic++) {
    let xbase = x_off + (n * C + g * cg + ic) * H * W;
    let wbase = w_off + (oc * cg + ic) * KH * KW;
    for (var kh = 0u; kh < KH; kh++) {
      let ih = ih0 + i32(kh * DH);
      if (ih < 0 || ih >= i32(H)) { continue; }
      for (var kw = 0u; kw < KW; kw++) {
        let iw = iw0 + i32(kw * DW);
        if (iw < 0 || iw >= i32(W)) { continue; }
        acc += data[xbase + u32(ih) * W + u32(iw)] * wt(wbase + kh * KW + kw);
      }
    }
  }
  let r = p(24u);
  if (r != NONE) { acc += data[r + id]; }
  data[y_off + id] = act(acc, p(21u), pf(22u), pf(23u));
}
