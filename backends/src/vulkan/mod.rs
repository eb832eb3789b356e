//! The `vulkan` backend: the model as a kiln Vulkan bundle (`model.kvk`, format in
//! `kiln_vk::bundle`): SPIR-V compute kernels generated on the host (WGSL compiled by naga, one module
//! per kernel variant, deduplicated), a dispatch plan (module, parameters, workgroup counts per step),
//! the constants (fp32, or fp16 convolution/matrix weights for `precision: fp16`) and an activation
//! arena planned by liveness. The runtime (`backends/vulkan-runtime`, `kiln run`, the C API) executes
//! it. Also writes `plan.txt`, the plan as text. Layout is the model's (NCHW); no options.
mod kernels;
mod lower;
mod ops;
mod plan;
mod resize;

use std::collections::BTreeMap;
use std::fmt::Write;

use kiln_compiler::backend::{
    ArtifactFile, Backend, Emitted, Fp16, Precision, QuantRules, TargetRules,
};
use kiln_compiler::config::Target;
use kiln_compiler::ir::Model;
use kiln_compiler::{Error, Result};
use kiln_vk::bundle::{self, BlobWriter, Manifest, Requires};

pub use kernels::{compile, Kernel};
use lower::{groups, Addr, Lowerer, Word};

pub struct VulkanBackend;

impl Backend for VulkanBackend {
    fn name(&self) -> &'static str {
        "vulkan"
    }

    fn precisions(&self) -> &'static [Precision] {
        &[Precision::Fp32, Precision::Fp16]
    }

    fn option_keys(&self) -> &'static [&'static str] {
        &[]
    }

    fn check_option(&self, key: &str, _: serde_yaml::Value) -> std::result::Result<(), String> {
        Err(format!("the vulkan backend has no option '{key}'"))
    }

    fn check(&self, _: &Target) -> std::result::Result<TargetRules, String> {
        // fp16 is storage: weights are float16, activations and arithmetic float32.
        Ok(TargetRules { quant: QuantRules::qdq(), fp16: Fp16::Storage })
    }

    fn emit(&self, model: &Model, target: &Target) -> Result<Emitted> {
        let err = |reason: String| Error::Backend {
            backend: "vulkan".into(),
            target: target.name.clone(),
            reason,
        };
        let b = build(model, target.precision == Precision::Fp16).map_err(|e| match e {
            Error::Node { .. } | Error::Shape { .. } => err(e.to_string()),
            e => e,
        })?;
        Ok(Emitted {
            files: vec![
                ArtifactFile { rel_path: "model.kvk".into(), bytes: b.bytes },
                ArtifactFile { rel_path: "plan.txt".into(), bytes: b.plan_text.into_bytes() },
            ],
            summary: Some(b.summary),
        })
    }
}

/// A built bundle.
pub struct Built {
    pub bytes: Vec<u8>,
    pub plan_text: String,
    pub summary: serde_json::Value,
}

fn align(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// Every graph input's unknown dims pinned to 1 (and shapes inferred again): the bundle is static.
/// Returns the pinned inputs' names.
fn pin_inputs(model: &Model) -> Result<(Option<Model>, Vec<String>)> {
    let g = &model.graph;
    let mut pins = kiln_compiler::shape::Pins::new();
    for &v in &g.inputs {
        let val = g.value(v);
        if g.const_data(v).is_some() {
            continue;
        }
        if let Some(shape) = &val.shape {
            if shape.iter().any(|d| d.known().is_none()) {
                pins.insert(
                    val.name.clone(),
                    shape.iter().map(|d| d.known().unwrap_or(1)).collect(),
                );
            }
        }
    }
    if pins.is_empty() {
        return Ok((None, Vec::new()));
    }
    let mut m = model.clone();
    kiln_compiler::shape::infer(&mut m, &pins)?;
    Ok((Some(m), pins.keys().cloned().collect()))
}

/// Lower, plan and serialize `model` (`f16`: fp16 weights).
pub fn build(model: &Model, f16: bool) -> Result<Built> {
    let (pinned, pinned_names) = pin_inputs(model)?;
    let model = pinned.as_ref().unwrap_or(model);
    let low = Lowerer::new(model, f16).run()?;
    let ins: Vec<u32> = low.inputs.iter().map(|i| i.buf).collect();
    let outs: Vec<u32> = low.outputs.iter().map(|i| i.buf).collect();
    let place = plan::place(&low.bufs, &low.steps, &ins, &outs);

    // Constants, then the arena, in `data`; fp16 weights in `w16`.
    let mut const_off = Vec::with_capacity(low.consts.len());
    let mut consts: Vec<f32> = Vec::new();
    for c in &low.consts {
        const_off.push(consts.len() as u64);
        consts.extend_from_slice(c);
        consts.resize(align(consts.len() as u64, 4) as usize, 0.0);
    }
    let arena_offset = consts.len() as u64;
    let mut w16_off = Vec::with_capacity(low.w16.len());
    let mut halves: Vec<u16> = Vec::new();
    for w in &low.w16 {
        w16_off.push(halves.len() as u64);
        halves.extend(w.iter().map(|x| half::f16::from_f32(*x).to_bits()));
        // Four halves: kernels read them as vec2<u32> too.
        halves.resize(align(halves.len() as u64, 4) as usize, 0);
    }
    if halves.is_empty() {
        halves = vec![0; 4];
    }
    let data_elems = arena_offset + place.arena;
    if data_elems >= u64::from(u32::MAX) {
        return Err(Error::invalid(format!("the model needs {data_elems} f32 elements of device memory; the kernels address at most 2^32")));
    }
    let resolve = |a: Addr, d: u64| -> u32 {
        (match a {
            Addr::Buf(b, off) => arena_offset + place.offsets[b as usize] + off + d,
            Addr::Const(c) => const_off[c as usize] + d,
            Addr::W16(w) => w16_off[w as usize] + d,
            Addr::None => return u32::MAX,
        }) as u32
    };

    // Modules (one per kernel variant used), params and steps.
    let mut blobs = BlobWriter::default();
    let mut module_of: BTreeMap<Kernel, u32> = BTreeMap::new();
    let mut modules = Vec::new();
    let mut params: Vec<u32> = Vec::new();
    let mut steps = Vec::new();
    let mut text = String::new();
    for s in low.steps.iter().filter(|s| s.threads > 0) {
        let module = match module_of.get(&s.kernel) {
            Some(m) => *m,
            None => {
                let words = s.kernel.spirv().map_err(Error::invalid)?;
                let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
                modules.push(bundle::Module {
                    name: s.kernel.name(),
                    spirv: blobs.push(&bytes),
                    workgroup_size: [kernels::WORKGROUP, 1, 1],
                });
                module_of.insert(s.kernel, modules.len() as u32 - 1);
                modules.len() as u32 - 1
            }
        };
        let base = params.len() as u32;
        params.extend(s.words.iter().map(|w| match *w {
            Word::U(x) => x,
            Word::I(x) => x as u32,
            Word::F(x) => x.to_bits(),
            Word::At(a, d) => resolve(a, d),
        }));
        let g = s.groups.unwrap_or_else(|| groups(s.threads));
        let _ = writeln!(
            text,
            "{:>4}  {:<10} {:<22} groups {:?}  {}",
            steps.len(),
            s.op,
            s.kernel.name(),
            g,
            s.node
        );
        steps.push(bundle::Step {
            module,
            params: base,
            groups: g,
            node: s.node.clone(),
            op: s.op.clone(),
        });
    }
    if params.is_empty() {
        params.push(0);
    }
    let const_bytes: Vec<u8> = consts.iter().flat_map(|x| x.to_le_bytes()).collect();
    let w16_bytes: Vec<u8> = halves.iter().flat_map(|x| x.to_le_bytes()).collect();
    let param_bytes: Vec<u8> = params.iter().flat_map(|x| x.to_le_bytes()).collect();
    let tensor = |io: &lower::Io| bundle::Tensor {
        name: io.name.clone(),
        dtype: io.dtype.clone(),
        shape: io.shape.clone(),
        layout: if io.shape.len() == 4 { "NCHW".into() } else { "as-model".into() },
        offset: arena_offset + place.offsets[io.buf as usize] + io.off,
    };
    let manifest = Manifest {
        format: bundle::FORMAT_VERSION,
        precision: if f16 { "fp16" } else { "fp32" }.into(),
        requires: Requires::default(),
        constants: blobs.push(&const_bytes),
        weights16: blobs.push(&w16_bytes),
        params: blobs.push(&param_bytes),
        modules,
        data_elems,
        arena_offset,
        arena_elems: place.arena,
        peak_live_elems: place.peak,
        inputs: low.inputs.iter().map(tensor).collect(),
        outputs: low.outputs.iter().map(tensor).collect(),
        steps,
    };
    let mut head = format!(
        "kiln vulkan bundle: {} dispatches ({} ops), {} modules, arena {} elements (peak live {}), constants {} elements, fp16 weights {} halves\n",
        manifest.steps.len(),
        low.ops,
        manifest.modules.len(),
        place.arena,
        place.peak,
        arena_offset,
        if f16 { halves.len() } else { 0 }
    );
    head.push_str(&text);
    let summary = serde_json::json!({
        "format": "kiln-vk",
        "precision": manifest.precision,
        "ops": low.ops,
        "dispatches": manifest.steps.len(),
        "modules": manifest.modules.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
        "arena_bytes": place.arena * 4,
        "peak_live_bytes": place.peak * 4,
        "arena_over_peak": if place.peak > 0 { place.arena as f64 / place.peak as f64 } else { 1.0 },
        "constants_bytes": arena_offset * 4,
        "weights16_bytes": if f16 { halves.len() * 2 } else { 0 },
        "inputs_pinned_to_1": pinned_names,
    });
    let bytes = bundle::write(&manifest, &blobs.bytes);
    Ok(Built { bytes, plan_text: head, summary })
}
