// Reduction over up to 6 axes (ReduceMean/Sum/Max/Min, GlobalAveragePool): one invocation per output
// element, looping over the reduced axes by their strides. kind 0 mean, 1 sum, 2 max, 3 min, 4 sum of squares.
// params: total rank shape[6] in in_str[6] nred red_shape[6] red_str[6] y kind act a b
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = linear_id(gid, nw);
  if (id >= p(0u)) { return; }
  let rank = p(1u);
  var rem = id;
  var base = p(8u);
  for (var k = 0u; k < rank; k++) {
    let d = rank - 1u - k;
    let s = p(2u + d);
    base += (rem % s) * p(9u + d);
    rem = rem / s;
  }
  let nred = p(15u);
  var count = 1u;
  for (var k = 0u; k < nred; k++) { count *= p(16u + k); }
  let kind = p(29u);
  var acc = 0.0;
  if (kind == 2u) { acc = -3.4028235e38; } else if (kind == 3u) { acc = 3.4028235e38; }
  for (var j = 0u; j < count; j++) {
    var r = j;
    var off = base;
    for (var k = 0u; k < nred; k++) {
      let d = nred - 1u - k;
      let s = p(16u + d);
      off += (r % s) * p(22u + d);
      r = r / s;
    }
    let v = data[off];
    switch kind {
      case 2u: { acc = max(acc, v); }
      case 3u: { acc = min(acc, v); }
      case 4u: { acc += v * v; }
      default: { acc += v; }
    }
  }
  if (kind == 0u) { acc /= f32(count); }
  data[p(28u) + id] = act(acc, p(30u), pf(31u), pf(32u));
}
