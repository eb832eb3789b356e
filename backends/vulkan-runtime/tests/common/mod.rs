//! Shared test fixtures: a WGSL kernel compiled to SPIR-V with naga, and a small two-step bundle using it.
#![allow(dead_code)]

use kiln_vk::bundle::{self, BlobWriter, Manifest, Module, Requires, Step, Tensor};
use kiln_vk::{Error, LoadOptions, Session};

/// `data[dst + i] = data[src + i] * 2 + data[c]` for `i < n`, parameters at `params[pc.base..+4]`.
pub const KERNEL: &str = r#"
struct PC { base: u32 }
var<immediate> pc: PC;
@group(0) @binding(0) var<storage, read_write> data: array<f32>;
@group(0) @binding(1) var<storage, read> params: array<u32>;
@group(0) @binding(2) var<storage, read> w16: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let i = gid.x + gid.y * nw.x * 64u;
  let n = params[pc.base]; let src = params[pc.base + 1u]; let dst = params[pc.base + 2u]; let c = params[pc.base + 3u];
  if (i >= n) { return; }
  data[dst + i] = data[src + i] * 2.0 + data[c];
}
"#;

/// The kernel as SPIR-V 1.3 words.
pub fn kernel_spirv() -> Vec<u32> {
    compile(KERNEL)
}

/// WGSL to SPIR-V 1.3 words.
pub fn compile(wgsl: &str) -> Vec<u32> {
    let module = naga::front::wgsl::parse_str(wgsl).unwrap();
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap();
    let opts = naga::back::spv::Options { lang_version: (1, 3), ..Default::default() };
    naga::back::spv::write_vec(&module, &info, &opts, None).unwrap()
}

/// Elements of the input and output.
pub const N: usize = 1000;
pub const CONSTANT: f32 = 1.5;

/// A bundle: input `x` [1, N] at data[1..], `tmp` after it, output `y` after that.
/// Step 0 (module 0): tmp = x*2 + 1.5; a zero-group step (skipped); step 2 (module 1, same kernel):
/// y = tmp*2 + 1.5, so y = 4x + 4.5.
pub fn bundle_bytes() -> Vec<u8> {
    bundle_with(&kernel_spirv())
}

/// [`bundle_bytes`] with another kernel.
pub fn bundle_with(kernel: &[u32]) -> Vec<u8> {
    bundle_custom(kernel, Requires::default(), &[])
}

/// [`bundle_bytes`] with another kernel, device requirements and `weights16` contents.
pub fn bundle_custom(kernel: &[u32], requires: Requires, weights16: &[u8]) -> Vec<u8> {
    let spirv: Vec<u8> = kernel.iter().flat_map(|w| w.to_le_bytes()).collect();
    let n = N as u32;
    let (x, tmp, y) = (1u32, 1 + n, 1 + 2 * n);
    let params: Vec<u8> =
        [n, x, tmp, 0, n, tmp, y, 0].iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut w = BlobWriter::default();
    // An odd byte first so no blob starts at the beginning of the section.
    w.push(&[7]);
    let module = |name: &str, w: &mut BlobWriter| Module {
        name: name.into(),
        spirv: w.push(&spirv),
        workgroup_size: [64, 1, 1],
    };
    let modules = vec![module("double_add", &mut w), module("double_add_b", &mut w)];
    let tensor = |name: &str, offset: u32| Tensor {
        name: name.into(),
        dtype: "float32".into(),
        shape: vec![1, N as u64],
        layout: "as-model".into(),
        offset: offset.into(),
    };
    let groups = [n.div_ceil(64), 1, 1];
    let step = |module, params, groups| Step {
        module,
        params,
        groups,
        node: format!("n{params}"),
        op: "Mul".into(),
    };
    let m = Manifest {
        format: bundle::FORMAT_VERSION,
        precision: "fp32".into(),
        requires,
        modules,
        constants: w.push(&CONSTANT.to_le_bytes()),
        weights16: w.push(weights16),
        params: w.push(&params),
        data_elems: u64::from(1 + 3 * n),
        arena_offset: 1,
        arena_elems: u64::from(3 * n),
        peak_live_elems: u64::from(2 * n),
        inputs: vec![tensor("x", x)],
        outputs: vec![tensor("y", y)],
        steps: vec![step(0, 0, groups), step(1, 4, [0, 1, 1]), step(1, 4, groups)],
    };
    bundle::write(&m, &w.bytes)
}

/// An input whose result is exact in f32.
pub fn input(seed: f32) -> Vec<f32> {
    (0..N).map(|i| (i as f32) * 0.25 - 100.0 + seed).collect()
}

pub fn expected(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| (v * 2.0 + CONSTANT) * 2.0 + CONSTANT).collect()
}

/// Load, or `None` (printing "skipped: no Vulkan driver") when this machine has no Vulkan.
pub fn load_or_skip(bytes: &[u8], opts: &LoadOptions) -> Option<Session> {
    match Session::load(bytes, opts) {
        Ok(s) => Some(s),
        Err(e @ (Error::NoVulkan(_) | Error::NoDevice(_))) => {
            eprintln!("skipped: no Vulkan driver ({e})");
            None
        }
        Err(e) => panic!("load failed: {e}"),
    }
}

/// A fresh path under the system temp directory.
pub fn temp_path(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("kiln-vk-{tag}-{}-{n}", std::process::id()))
}
