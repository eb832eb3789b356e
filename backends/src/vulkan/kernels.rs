//! The kernels: WGSL sources in `wgsl/` (a shared prelude, then one body per kernel), compiled to SPIR-V
//! 1.3 (Vulkan 1.1) on the host by naga, validated by naga first. A kernel reads its parameters from the
//! `params` buffer at the word its push constant names, so one module serves every layer of its kind;
//! the variants are the weight storage (`f32` in `data`, or fp16 packed two per word in `w16`).
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

const PRELUDE: &str = include_str!("wgsl/prelude.wgsl");
const WT_F32: &str = "fn wt(i: u32) -> f32 { return data[i]; }\n";
const WT_F16: &str = "fn wt(i: u32) -> f32 {\n  let v = unpack2x16float(w16[i >> 1u]);\n  return select(v.x, v.y, (i & 1u) == 1u);\n}\n";

// Four weights at once (`i` counts vec4s) from `data4` / `w16v` (bindings 3 and 4, declared by the kernel).
const WT4_F32: &str = "fn wt4(i: u32) -> vec4<f32> { return data4[i]; }\n";
const WT4_F16: &str = "fn wt4(i: u32) -> vec4<f32> {\n  let w = w16v[i];\n  return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));\n}\n";

/// A kernel's entry with a linear invocation index, and its replacement for kernels dispatched by
/// workgroup ids (`wg` variants).
const LINEAR_HEAD: &str = "fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {\n  let id = linear_id(gid, nw);\n  if (id >= p(0u)) { return; }";
const WG_HEAD: &str = "fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {";

/// Invocations per workgroup of every kernel (`@workgroup_size(64)`).
pub const WORKGROUP: u32 = 64;

/// A window specialized into a convolution kernel's source: square kernel `k` and stride `s` as
/// constants (the compiler unrolls the window loops and folds the address arithmetic); `Spec::ANY`
/// reads them from the parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spec {
    pub k: u8,
    pub s: u8,
}

impl Spec {
    pub const ANY: Spec = Spec { k: 0, s: 0 };

    /// The specialization for a window, when it is a common one (3×3 or 5×5, stride 1 or 2).
    pub fn of(k: [u64; 2], s: [u64; 2]) -> Spec {
        match (k, s) {
            ([3, 3] | [5, 5], [1, 1] | [2, 2]) => Spec { k: k[0] as u8, s: s[0] as u8 },
            _ => Spec::ANY,
        }
    }

    fn apply(self, body: &str) -> String {
        if self == Spec::ANY {
            return body.to_string();
        }
        body.replace(
            "let KH = p(8u); let KW = p(9u); let SH = p(10u); let SW = p(11u);",
            &format!(
                "let KH = {k}u; let KW = {k}u; let SH = {s}u; let SW = {s}u;",
                k = self.k,
                s = self.s
            ),
        )
    }

    fn suffix(self) -> String {
        if self == Spec::ANY {
            String::new()
        } else {
            format!("_k{}s{}", self.k, self.s)
        }
    }
}

/// One kernel variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kernel {
    /// `f16w`: weights read from `w16`.
    Conv2d {
        f16w: bool,
    },
    /// Four output channels per invocation, weights packed [OC/4][C/G][KH·KW][4].
    Conv2dB4 {
        f16w: bool,
        spec: Spec,
    },
    /// Pointwise convolution, 8 channels × 4 pixels per invocation; `wg`: dispatched as (pixel blocks,
    /// channel blocks, images) so weight loads are uniform in a workgroup.
    Conv1x1O8 {
        f16w: bool,
        wg: bool,
    },
    /// Depthwise convolution, 4 adjacent outputs per invocation.
    DwConvX4 {
        f16w: bool,
        spec: Spec,
        /// Dispatched as (row blocks, image·channel): weights uniform in a workgroup.
        wg: bool,
    },
    MatMul {
        f16w: bool,
    },
    Eltwise,
    Copy,
    /// Copy of contiguous rows, 4 elements per invocation.
    CopyRows,
    Pool,
    Reduce,
    Rows,
    Gather,
    Resize,
}

impl Kernel {
    pub fn name(self) -> String {
        let (base, f16w) = match self {
            Kernel::Conv2d { f16w } => ("conv2d", Some(f16w)),
            Kernel::Conv2dB4 { f16w, spec } => {
                return format!("conv2d_b4{}_{}", spec.suffix(), if f16w { "w16" } else { "w32" })
            }
            Kernel::DwConvX4 { f16w, spec, wg } => {
                return format!(
                    "dwconv_x4{}{}_{}",
                    spec.suffix(),
                    if wg { "_wg" } else { "" },
                    if f16w { "w16" } else { "w32" }
                )
            }
            Kernel::Conv1x1O8 { f16w, wg } => {
                return format!(
                    "conv1x1_o8{}_{}",
                    if wg { "_wg" } else { "" },
                    if f16w { "w16" } else { "w32" }
                )
            }
            Kernel::MatMul { f16w } => ("matmul", Some(f16w)),
            Kernel::Eltwise => ("eltwise", None),
            Kernel::Copy => ("copy", None),
            Kernel::CopyRows => ("copy_rows", None),
            Kernel::Pool => ("pool", None),
            Kernel::Reduce => ("reduce", None),
            Kernel::Rows => ("rows", None),
            Kernel::Gather => ("gather", None),
            Kernel::Resize => ("resize", None),
        };
        match f16w {
            Some(true) => format!("{base}_w16"),
            Some(false) => format!("{base}_w32"),
            None => base.into(),
        }
    }

    fn body(self) -> &'static str {
        match self {
            Kernel::Conv2d { .. } => include_str!("wgsl/conv2d.wgsl"),
            Kernel::Conv2dB4 { .. } => include_str!("wgsl/conv2d_b4.wgsl"),
            Kernel::DwConvX4 { .. } => include_str!("wgsl/dwconv_x4.wgsl"),
            Kernel::Conv1x1O8 { .. } => include_str!("wgsl/conv1x1_o8.wgsl"),
            Kernel::MatMul { .. } => include_str!("wgsl/matmul.wgsl"),
            Kernel::Eltwise => include_str!("wgsl/eltwise.wgsl"),
            Kernel::Copy => include_str!("wgsl/copy.wgsl"),
            Kernel::CopyRows => include_str!("wgsl/copy_rows.wgsl"),
            Kernel::Pool => include_str!("wgsl/pool.wgsl"),
            Kernel::Reduce => include_str!("wgsl/reduce.wgsl"),
            Kernel::Rows => include_str!("wgsl/rows.wgsl"),
            Kernel::Gather => include_str!("wgsl/gather.wgsl"),
            Kernel::Resize => include_str!("wgsl/resize.wgsl"),
        }
    }

    /// The full WGSL source.
    pub fn source(self) -> String {
        let wt = match self {
            Kernel::Conv2d { f16w: true }
            | Kernel::Conv2dB4 { f16w: true, .. }
            | Kernel::DwConvX4 { f16w: true, .. }
            | Kernel::MatMul { f16w: true } => WT_F16,
            Kernel::Conv1x1O8 { f16w: false, .. } => WT4_F32,
            Kernel::Conv1x1O8 { f16w: true, .. } => WT4_F16,
            _ => WT_F32,
        };
        let body = match self {
            Kernel::Conv2dB4 { spec, .. } => spec.apply(self.body()),
            Kernel::DwConvX4 { spec, wg, .. } => {
                let b = spec.apply(self.body());
                if wg {
                    b.replace(LINEAR_HEAD, WG_HEAD).replace(
                        "let owb = id % OWB; let t = id / OWB; let oh = t % OH; let nc = t / OH;",
                        "let q = gid.x; if (q >= OH * OWB) { return; }\n  let owb = q % OWB; let oh = q / OWB; let nc = wg.y;",
                    )
                } else {
                    b
                }
            }
            Kernel::Conv1x1O8 { wg: true, .. } => {
                self.body().replace(LINEAR_HEAD, WG_HEAD).replace(
                    "let p4 = id % P4; let t = id / P4; let ob = t % OB; let n = t / OB;",
                    "let p4 = gid.x; let ob = wg.y; let n = wg.z;\n  if (p4 >= P4) { return; }",
                )
            }
            _ => self.body().to_string(),
        };
        let body = body.replace("@workgroup_size(64)", &format!("@workgroup_size({WORKGROUP})"));
        format!("{PRELUDE}\nconst WG_SIZE: u32 = {WORKGROUP}u;\n{wt}\n{body}")
    }

    /// SPIR-V words (compiled once per process).
    pub fn spirv(self) -> Result<Vec<u32>, String> {
        static CACHE: OnceLock<Mutex<HashMap<Kernel, Vec<u32>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(w) = cache.lock().ok().and_then(|c| c.get(&self).cloned()) {
            return Ok(w);
        }
        let words = compile(&self.source()).map_err(|e| format!("kernel {}: {e}", self.name()))?;
        if let Ok(mut c) = cache.lock() {
            c.insert(self, words.clone());
        }
        Ok(words)
    }
}

/// WGSL → validated naga module → SPIR-V 1.3.
pub fn compile(src: &str) -> Result<Vec<u32>, String> {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::IMMEDIATES
            | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32,
    )
    .validate(&module)
    .map_err(|e| e.emit_to_string(src))?;
    // Every loop of the kernels is bounded by its parameters: naga's loop-bounding counters (a guard
    // against infinite-loop UB) would cost an add and a branch per inner iteration.
    let opts = naga::back::spv::Options {
        lang_version: (1, 3),
        force_loop_bounding: false,
        use_storage_input_output_16: false,
        ..Default::default()
    };
    naga::back::spv::write_vec(&module, &info, &opts, None).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_compiles() {
        for k in [
            Kernel::Conv2d { f16w: false },
            Kernel::Conv2d { f16w: true },
            Kernel::Conv2dB4 { f16w: false, spec: Spec::ANY },
            Kernel::Conv2dB4 { f16w: true, spec: Spec { k: 3, s: 2 } },
            Kernel::Conv1x1O8 { f16w: false, wg: false },
            Kernel::Conv1x1O8 { f16w: true, wg: true },
            Kernel::DwConvX4 { f16w: false, spec: Spec::ANY, wg: false },
            Kernel::DwConvX4 { f16w: true, spec: Spec { k: 5, s: 1 }, wg: true },
            Kernel::MatMul { f16w: false },
            Kernel::MatMul { f16w: true },
            Kernel::Eltwise,
            Kernel::Copy,
            Kernel::CopyRows,
            Kernel::Pool,
            Kernel::Reduce,
            Kernel::Rows,
            Kernel::Gather,
            Kernel::Resize,
        ] {
            let w = k.spirv();
            assert!(w.is_ok(), "{}: {}", k.name(), w.as_ref().err().cloned().unwrap_or_default());
            // The variants are text substitutions: each must have applied.
            if matches!(k, Kernel::Conv2dB4 { spec, .. } | Kernel::DwConvX4 { spec, .. } if spec != Spec::ANY)
            {
                assert!(
                    !k.source().contains("let KH = p(8u)"),
                    "{}: the window was not specialized",
                    k.name()
                );
            }
            if matches!(k, Kernel::Conv1x1O8 { wg: true, .. } | Kernel::DwConvX4 { wg: true, .. }) {
                assert!(
                    k.source().contains("wg.y"),
                    "{}: the workgroup mapping was not applied",
                    k.name()
                );
            }
            // spirv-val (spirv-tools), where installed: the Vulkan 1.1 environment's rules.
            let path =
                std::env::temp_dir().join(format!("kiln-{}-{}.spv", k.name(), std::process::id()));
            let bytes: Vec<u8> =
                w.unwrap_or_default().iter().flat_map(|x| x.to_le_bytes()).collect();
            std::fs::write(&path, bytes).unwrap();
            if let Ok(o) = std::process::Command::new("spirv-val")
                .args(["--target-env", "vulkan1.1"])
                .arg(&path)
                .output()
            {
                assert!(o.status.success(), "{}: {}", k.name(), String::from_utf8_lossy(&o.stderr));
            }
            let _ = std::fs::remove_file(&path);
        }
    }
}
