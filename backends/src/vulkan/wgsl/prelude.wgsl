// Shared by every kiln Vulkan kernel: the three bindings, the push constant (this step's first word in
// `params`), parameter readers, the fused activations and the linear invocation index.
struct PC { base: u32 }
var<immediate> pc: PC;
@group(0) @binding(0) var<storage, read_write> data: array<f32>;
@group(0) @binding(1) var<storage, read> params: array<u32>;
@group(0) @binding(2) var<storage, read> w16: array<u32>;

const NONE: u32 = 0xffffffffu;

fn p(i: u32) -> u32 { return params[pc.base + i]; }
fn pf(i: u32) -> f32 { return bitcast<f32>(params[pc.base + i]); }
fn pi(i: u32) -> i32 { return bitcast<i32>(params[pc.base + i]); }

fn linear_id(gid: vec3<u32>, nw: vec3<u32>) -> u32 { return gid.x + gid.y * nw.x * WG_SIZE; }

// Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
fn erf_(x: f32) -> f32 {
  let a = abs(x);
  let t = 1.0 / (1.0 + 0.3275911 * a);
  let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
  return select(-y, y, x >= 0.0);
}

fn sigmoid_(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }

fn act(x: f32, code: u32, a: f32, b: f32) -> f32 {
  switch code {
    case 1u: { return max(x, 0.0); }
    case 2u: { return min(max(x, a), b); }
    case 3u: { return sigmoid_(x); }
    case 4u: { return tanh(clamp(x, -15.0, 15.0)); }
    case 5u: { return x * clamp(x / 6.0 + 0.5, 0.0, 1.0); }
    case 6u: { return clamp(a * x + b, 0.0, 1.0); }
    case 7u: { return select(a * x, x, x >= 0.0); }
    case 8u: { return 0.5 * x * (1.0 + erf_(x * 0.70710678118654752)); }
    case 9u: {
      let u = clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), -15.0, 15.0);
      return 0.5 * x * (1.0 + tanh(u));
    }
    case 10u: { return x * sigmoid_(x); }
    default: { return x; }
  }
}
