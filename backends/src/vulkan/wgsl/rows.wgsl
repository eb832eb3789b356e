// Row-wise ops over `len` elements at stride `str` (the axis), one invocation per row; a row's start is
// found from its index by the outer shape and strides (rank ≤ 6). kind 0 softmax, 1 log-softmax,
// 2 layer normalization (gamma, beta optional, eps).
// params: rows rank shape[6] str[6] len lstr x y kind gamma beta eps
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = linear_id(gid, nw);
  if (id >= p(0u)) { return; }
  let rank = p(1u);
  var rem = id;
  var start = 0u;
  for (var k = 0u; k < rank; k++) {
    let d = rank - 1u - k;
    let s = p(2u + d);
    start += (rem % s) * p(8u + d);
    rem = rem / s;
  }
  let len = p(14u); let ls = p(15u);
  let x = p(16u) + start; let y = p(17u) + start; let kind = p(18u);
  if (kind == 2u) {
    var mean = 0.0;
    for (var i = 0u; i < len; i++) { mean += data[x + i * ls]; }
    mean /= f32(len);
    var var_ = 0.0;
    for (var i = 0u; i < len; i++) { let d = data[x + i * ls] - mean; var_ += d * d; }
    let inv = 1.0 / sqrt(var_ / f32(len) + pf(21u));
    let g = p(19u); let b = p(20u);
    for (var i = 0u; i < len; i++) {
      var v = (data[x + i * ls] - mean) * inv;
      if (g != NONE) { v *= data[g + i]; }
      if (b != NONE) { v += data[b + i]; }
      data[y + i * ls] = v;
    }
    return;
  }
  var mx = -3.4028235e38;
  for (var i = 0u; i < len; i++) { mx = max(mx, data[x + i * ls]); }
  var sum = 0.0;
  for (var i = 0u; i < len; i++) { sum += exp(data[x + i * ls] - mx); }
  for (var i = 0u; i < len; i++) {
    let e = data[x + i * ls] - mx;
    data[y + i * ls] = select(exp(e) / sum, e - log(sum), kind == 1u);
  }
}
