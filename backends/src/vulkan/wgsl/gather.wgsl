// Gather along an axis with indices computed at run time (carried as f32; negative ones count from the
// end): out[o, j, i] = in[o, idx[j], i]. One invocation per output element.
// params: total axis_len inner nidx in idx y
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = linear_id(gid, nw);
  if (id >= p(0u)) { return; }
  let len = p(1u); let inner = p(2u); let nidx = p(3u);
  let i = id % inner; let t = id / inner; let j = t % nidx; let o = t / nidx;
  var k = i32(round(data[p(5u) + j]));
  if (k < 0) { k += i32(len); }
  k = clamp(k, 0, i32(len) - 1);
  data[p(6u) + id] = data[p(4u) + (o * len + u32(k)) * inner + i];
}
