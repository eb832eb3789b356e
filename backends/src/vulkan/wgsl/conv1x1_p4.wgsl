// Pointwise (1×1, stride 1, no padding, one group) convolution as a register-tiled matrix product: each
// invocation computes 4 output channels × 4 adjacent pixels (16 sums) from 4 input pixels and one vec4 of
// weights per input channel. When H·W is a multiple of 4 the pixels are one vec4 load and store (every
// buffer is 16-byte aligned by the memory plan); otherwise scalar loads, clamped at the plane's end, and
// stores of the pixels that exist. Weights packed [OC/4][C][4]. Bias, residual input and activation fused.
// params: total N C P OC x y w b act a b res OB
@group(0) @binding(3) var<storage, read_write> data4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> w16v: array<vec2<u32>>;

fn act4(v: vec4<f32>) -> vec4<f32> {
  let c = p(9u); let a = pf(10u); let b = pf(11u);
  return vec4<f32>(act(v.x, c, a, b), act(v.y, c, a, b), act(v.z, c, a, b), act(v.w, c, a, b));
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = linear_id(gid, nw);
  if (id >= p(0u)) { return; }
  let C = p(2u); let P = p(3u); let P4 = (P + 3u) / 4u; let OC = p(4u); let OB = p(13u);
  let p4 = id % P4; let t = id / P4; let ob = t % OB; let n = t / OB;
  let oc0 = ob * 4u;
  var bias = vec4<f32>(0.0);
  let b_off = p(8u);
  if (b_off != NONE) {
    let last = OC - 1u;
    bias = vec4<f32>(data[b_off + oc0], data[b_off + min(oc0 + 1u, last)], data[b_off + min(oc0 + 2u, last)], data[b_off + min(oc0 + 3u, last)]);
  }
  var a0 = vec4<f32>(bias.x); var a1 = vec4<f32>(bias.y); var a2 = vec4<f32>(bias.z); var a3 = vec4<f32>(bias.w);
  let wb = (p(7u) >> 2u) + ob * C;
  // vec4 loads and stores need the plane size and every offset (parts of a Concat, Split pieces) aligned.
  let r0 = select(p(12u), 0u, p(12u) == NONE);
  let aligned = ((P | p(5u) | p(6u) | r0) & 3u) == 0u;
  if (aligned) {
    let xb = (p(5u) >> 2u) + n * C * P4 + p4;
    for (var c = 0u; c < C; c++) {
      let xv = data4[xb + c * P4];
      let w = wt4(wb + c);
      a0 += xv * w.x; a1 += xv * w.y; a2 += xv * w.z; a3 += xv * w.w;
    }
  } else {
    let p0 = p4 * 4u; let last = P - 1u;
    let i1 = min(p0 + 1u, last); let i2 = min(p0 + 2u, last); let i3 = min(p0 + 3u, last);
    var xs = p(5u) + n * C * P;
    for (var c = 0u; c < C; c++) {
      let xv = vec4<f32>(data[xs + p0], data[xs + i1], data[xs + i2], data[xs + i3]);
      let w = wt4(wb + c);
      a0 += xv * w.x; a1 += xv * w.y; a2 += xv * w.z; a3 += xv * w.w;
      xs += P;
    }
  }
  let r = p(12u);
  for (var j = 0u; j < 4u; j++) {
    let oc = oc0 + j;
    if (oc >= OC) { break; }
    var v = a0;
    if (j == 1u) { v = a1; } else if (j == 2u) { v = a2; } else if (j == 3u) { v = a3; }
    if (aligned) {
      let o = (n * OC + oc) * P4 + p4;
      if (r != NONE) { v += data4[(r >> 2u) + o]; }
      data4[(p(6u) >> 2u) + o] = act4(v);
    } else {
      let o = (n * OC + oc) * P + p4 * 4u;
      for (var e = 0u; e < 4u; e++) {
        if (p4 * 4u + e >= P) { break; }
        var s = v[e];
        if (r != NONE) { s += data[r + o + e]; }
        data[p(6u) + o + e] = act(s, p(9u), pf(10u), pf(11u));
      }
    }
  }
}
