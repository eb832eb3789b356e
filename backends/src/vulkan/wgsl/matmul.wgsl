// Batched matrix product with strides (Gemm with transposes, MatMul with broadcast batch dims):
// C[b1,b2,m,n] = act(alpha·Σ_k A·B + beta·bias); one invocation per output element, C contiguous.
// params: total B1 B2 M N K a a_sb1 a_sb2 a_sm a_sk b b_sb1 b_sb2 b_sk b_sn c bias bias_sm bias_sn alpha beta act a b
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = linear_id(gid, nw);
  if (id >= p(0u)) { return; }
  let B2 = p(2u); let M = p(3u); let N = p(4u); let K = p(5u);
  let n = id % N; let t1 = id / N; let m = t1 % M; let t2 = t1 / M; let b2 = t2 % B2; let b1 = t2 / B2;
  let a0 = p(6u) + b1 * p(7u) + b2 * p(8u) + m * p(9u); let ask = p(10u);
  let b0 = p(11u) + b1 * p(12u) + b2 * p(13u) + n * p(15u); let bsk = p(14u);
  var acc = 0.0;
  for (var k = 0u; k < K; k++) {
    acc += data[a0 + k * ask] * wt(b0 + k * bsk);
  }
  acc *= pf(20u);
  let bias = p(17u);
  if (bias != NONE) { acc += pf(21u) * data[bias + m * p(18u) + n * p(19u)]; }
  data[p(16u) + id] = act(acc, p(22u), pf(23u), pf(24u));
}
