// Strided copy, rank ≤ 6: out[o] = in[start + o·step] per axis, with padding (constant, edge or reflect)
// where that falls outside the input. Transpose, Slice, Split, Concat (into a region of the output),
// Pad, Expand and Tile (wrap) are all this kernel. mode 0 constant, 1 edge, 2 reflect, 3 wrap.
// params: total rank shape[6] in in_dim[6] in_str[6] start[6] step[6] out out_str[6] mode value
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = linear_id(gid, nw);
  if (id >= p(0u)) { return; }
  let rank = p(1u);
  let mode = p(40u);
  var rem = id;
  var src = i32(p(8u));
  var dst = p(33u);
  var inside = true;
  for (var k = 0u; k < rank; k++) {
    let d = rank - 1u - k;
    let s = p(2u + d);
    let o = rem % s;
    rem = rem / s;
    dst += o * p(34u + d);
    let dim = i32(p(9u + d));
    var c = pi(21u + d) + i32(o) * pi(27u + d);
    if (c < 0 || c >= dim) {
      if (mode == 1u) {
        c = clamp(c, 0, dim - 1);
      } else if (mode == 3u) {
        c = ((c % dim) + dim) % dim;
      } else if (mode == 2u) {
        let period = max(2 * dim - 2, 1);
        var r = c % period;
        if (r < 0) { r += period; }
        c = select(r, period - r, r >= dim);
      } else {
        inside = false;
      }
    }
    src += c * pi(15u + d);
  }
  data[dst] = select(pf(41u), data[u32(src)], inside);
}
