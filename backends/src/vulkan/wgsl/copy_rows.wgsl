// Strided copy without padding whose innermost axis is contiguous on both sides (Transpose keeping the
// last axis, Concat and Split pieces, Slice of outer axes): each invocation copies 4 consecutive elements
// of a row. Axes were merged where both sides are contiguous across them.
// params: total rank shape[5] in in_str[5] out out_str[5] inner
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = linear_id(gid, nw);
  if (id >= p(0u)) { return; }
  let rank = p(1u);
  let inner = p(19u);
  let blocks = (inner + 3u) / 4u;
  let blk = id % blocks;
  var rem = id / blocks;
  var src = p(7u) + blk * 4u;
  var dst = p(13u) + blk * 4u;
  for (var k = 0u; k < rank; k++) {
    let d = rank - 1u - k;
    let s = p(2u + d);
    let o = rem % s;
    rem = rem / s;
    src += o * p(8u + d);
    dst += o * p(14u + d);
  }
  let n = min(4u, inner - blk * 4u);
  for (var e = 0u; e < n; e++) {
    data[dst + e] = data[src + e];
  }
}
