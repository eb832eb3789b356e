// Element-wise unary and binary ops with numpy broadcasting (strides 0 on broadcast axes), rank ≤ 6,
// the activation fused; per-tensor QuantizeLinear/DequantizeLinear. Output contiguous.
// params: total rank shape[6] a a_str[6] b b_str[6] y op act a b
fn unary(op: u32, x: f32) -> f32 {
  switch op {
    case 20u: { return sqrt(x); }
    case 21u: { return exp(x); }
    case 22u: { return log(x); }
    case 23u: { return -x; }
    case 24u: { return abs(x); }
    case 25u: { return 1.0 / x; }
    case 26u: { return erf_(x); }
    case 27u: { return floor(x); }
    case 28u: { return ceil(x); }
    case 29u: { return round(x); }
    case 30u: { return sin(x); }
    case 31u: { return cos(x); }
    case 32u: { return trunc(x); }
    default: { return x; }
  }
}

fn binary(op: u32, x: f32, y: f32) -> f32 {
  switch op {
    case 1u: { return x + y; }
    case 2u: { return x - y; }
    case 3u: { return x * y; }
    case 4u: { return x / y; }
    case 5u: {
      if (y == 2.0) { return x * x; }
      if (y == 0.5) { return sqrt(x); }
      if (y == 1.0) { return x; }
      if (x < 0.0 && y == round(y)) {
        let m = pow(-x, y);
        return select(m, -m, (i32(y) & 1) == 1);
      }
      return pow(x, y);
    }
    case 6u: { return max(x, y); }
    case 7u: { return min(x, y); }
    default: { return x; }
  }
}

// round(v / s) as onnxruntime computes it: the correctly rounded quotient, rounded half to even. A device's
// division may be off by ulps (Vulkan allows 2.5) and its fma may be unfused, while quantization meets
// (near-)ties all the time (v = s·(k + ½) rounded to f32). With f = ⌊v/s⌋ and h = f + ½, the quotient rounds
// to exactly h when |v − h·s| ≤ ½ulp(h)·s, else to the side given by the sign of h·s − v. These are
// computed without rounding where it matters: s splits into s_hi (12 significant bits) + s_lo, so h·s_hi
// and h·s_lo are exact for |h| < 1024, h·s_hi − v is exact near the tie (Sterbenz), and ½ulp(h)·s is a
// power-of-two scaling. Beyond |f| ≥ 1000 the clamp decides anyway.
fn round_div(v: f32, s: f32) -> f32 {
  let q = v / s;
  let f = floor(q);
  if (abs(f) >= 1000.0) { return round(q); }
  let h = f + 0.5;
  let s_hi = bitcast<f32>(bitcast<u32>(s) & 0xfffff000u);
  let s_lo = s - s_hi;
  let d1 = h * s_hi - v;
  let d2 = h * s_lo;
  let e = (bitcast<u32>(abs(h)) >> 23u) & 0xffu;
  let half_ulp = bitcast<f32>((max(e, 25u) - 24u) << 23u);
  let below = (d1 - half_ulp * s_hi) + (d2 - half_ulp * s_lo);
  let above = (d1 + half_ulp * s_hi) + (d2 + half_ulp * s_lo);
  if (below <= 0.0 && above >= 0.0) {
    return select(f + 1.0, f, floor(f * 0.5) * 2.0 == f);
  }
  return select(f, f + 1.0, d1 + d2 < 0.0);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let id = linear_id(gid, nw);
  if (id >= p(0u)) { return; }
  let rank = p(1u);
  var rem = id;
  var ia = p(8u);
  var ib = p(15u);
  for (var k = 0u; k < rank; k++) {
    let d = rank - 1u - k;
    let s = p(2u + d);
    let c = rem % s;
    rem = rem / s;
    ia += c * p(9u + d);
    ib += c * p(16u + d);
  }
  let op = p(23u);
  var v = data[ia];
  if (op >= 40u) {
    // QuantizeLinear (40 int8, 42 uint8) / DequantizeLinear (41), per-tensor scale and zero point.
    let s = pf(25u); let z = pf(26u);
    if (op == 41u) {
      v = (v - z) * s;
    } else {
      v = clamp(round_div(v, s) + z, select(-128.0, 0.0, op == 42u), select(127.0, 255.0, op == 42u));
    }
    data[p(22u) + id] = v;
    return;
  }
  if (op >= 20u) { v = unary(op, v); } else if (op != 0u) { v = binary(op, v, data[ib]); }
  data[p(22u) + id] = act(v, p(24u), pf(25u), pf(26u));
}
