//! End-to-end tests of `Session` on whatever Vulkan device the machine has (lavapipe in CI), with the
//! Khronos validation layer on.
mod common;

use common::*;
use kiln_vk::bundle::Requires;
use kiln_vk::{Error, LoadOptions};

fn validated() -> LoadOptions {
    LoadOptions { pipeline_cache: None, validation: true }
}

#[test]
fn runs_two_chained_steps_exactly_without_validation_errors() {
    let bytes = bundle_bytes();
    let Some(mut s) = load_or_skip(&bytes, &validated()) else { return };
    eprintln!(
        "device: {}, load {:.1} ms, pipelines {:.1} ms",
        s.device_name(),
        s.load_ms(),
        s.pipeline_ms()
    );
    assert_eq!(s.dispatches(), 2, "the zero-group step is skipped");
    assert_eq!(s.inputs().len(), 1);
    assert_eq!(s.input_index("x"), Some(0));
    assert_eq!(s.input_index("nope"), None);
    assert_eq!(s.output_index("y"), Some(0));
    assert_eq!(s.manifest().steps.len(), 3);
    assert!(s.first_run_ms().is_none());
    for round in 0..4 {
        let x = input(round as f32);
        s.set_input(0, &x).unwrap();
        s.run().unwrap();
        assert_eq!(s.output(0).unwrap(), expected(&x).as_slice(), "round {round}");
        let mut out = vec![0.0; N];
        s.output_into(0, &mut out).unwrap();
        assert_eq!(out, expected(&x));
    }
    assert!(s.first_run_ms().is_some_and(|t| t >= 0.0));
    let (errors, messages) = s.validation_messages();
    for m in &messages {
        eprintln!("validation: {m}");
    }
    assert_eq!(errors, 0, "validation errors: {messages:#?}");
    drop(s);
}

#[test]
fn validation_errors_are_counted() {
    // A push-constant block larger than the layout's 4 bytes is a validation error at pipeline creation.
    let bad = KERNEL.replace("struct PC { base: u32 }", "struct PC { base: u32, extra: u32 }");
    let bytes = bundle_with(&compile(&bad));
    let Some(s) = load_or_skip(&bytes, &validated()) else { return };
    let (errors, messages) = s.validation_messages();
    assert!(errors > 0, "expected validation errors, got {messages:#?}");
    assert!(messages.iter().any(|m| m.starts_with("[ERROR]")), "{messages:#?}");
    eprintln!("first message: {}", messages[0]);
}

#[test]
fn fp16_features_are_enabled_when_required() {
    // Adds the fp16 weight w16[0].x (1.0) computed in f16: y = 4x + 4.5 + 3 * 1.0.
    let src = KERNEL
        .replace("struct PC", "enable f16;\nstruct PC")
        .replace("array<u32>;\n@compute", "array<vec2<f16>>;\n@compute")
        .replace("+ data[c];", "+ data[c] + f32(w16[0].x * f16(1.0));");
    assert!(src.contains("vec2<f16>"), "{src}");
    let requires = Requires { storage_buffer_16bit_access: true, shader_float16: true };
    let one_f16 = [0x00u8, 0x3c, 0, 0];
    let bytes = bundle_custom(&compile(&src), requires, &one_f16);
    let mut s = match kiln_vk::Session::load(&bytes, &validated()) {
        Err(e @ Error::MissingFeature { .. }) => return eprintln!("skipped: {e}"),
        other => match other {
            Ok(s) => s,
            Err(Error::NoVulkan(_) | Error::NoDevice(_)) => {
                return eprintln!("skipped: no Vulkan driver")
            }
            Err(e) => panic!("{e}"),
        },
    };
    let x = input(0.0);
    s.set_input(0, &x).unwrap();
    s.run().unwrap();
    let want: Vec<f32> = expected(&x).iter().map(|v| v + 3.0).collect();
    assert_eq!(s.output(0).unwrap(), want.as_slice());
    assert_eq!(s.validation_messages().0, 0, "{:#?}", s.validation_messages().1);
}

#[test]
fn input_and_index_errors_name_the_tensor() {
    let bytes = bundle_bytes();
    let Some(mut s) = load_or_skip(&bytes, &LoadOptions::default()) else { return };
    let e = s.set_input(0, &[1.0; 3]).unwrap_err();
    assert!(matches!(e, Error::Input { .. }), "{e}");
    assert!(e.to_string().contains("'x'") && e.to_string().contains("1000"), "{e}");
    assert!(matches!(s.set_input(1, &[]), Err(Error::Index(_))));
    assert!(matches!(s.output(5), Err(Error::Index(_))));
    let e = s.output_into(0, &mut [0.0; 2]).unwrap_err();
    assert!(e.to_string().contains("'y'"), "{e}");
}

#[test]
fn bad_bundles_are_rejected_before_vulkan() {
    let opts = LoadOptions::default();
    assert!(matches!(kiln_vk::Session::load(b"not a bundle", &opts), Err(Error::Bundle(_))));
    let e = kiln_vk::Session::load_file("/nonexistent/model.kvk", &opts).err().unwrap();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("/nonexistent/model.kvk"),
        "{e}"
    );
}

#[test]
fn pipeline_cache_is_written_and_reused() {
    let dir = temp_path("cache");
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("pipelines.bin");
    let opts = LoadOptions { pipeline_cache: Some(cache.clone()), validation: true };
    let bytes = bundle_bytes();
    let Some(s) = load_or_skip(&bytes, &opts) else { return };
    drop(s);
    let written = std::fs::read(&cache).unwrap();
    assert!(!written.is_empty(), "cache file is empty");
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let mut s = load_or_skip(&bytes, &opts).unwrap();
    let x = input(0.5);
    s.set_input(0, &x).unwrap();
    s.run().unwrap();
    assert_eq!(s.output(0).unwrap(), expected(&x).as_slice());
    assert_eq!(s.validation_messages().0, 0, "{:#?}", s.validation_messages().1);
    drop(s);
    // A corrupt cache is ignored, not fatal.
    std::fs::write(&cache, b"garbage").unwrap();
    let s = load_or_skip(&bytes, &opts).unwrap();
    assert_eq!(s.validation_messages().0, 0, "{:#?}", s.validation_messages().1);
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kernel_passes_spirv_val() {
    let words = kernel_spirv();
    let path = temp_path("kernel").with_extension("spv");
    std::fs::write(&path, words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let out = std::process::Command::new("spirv-val")
        .args(["--target-env", "vulkan1.1"])
        .arg(&path)
        .output();
    std::fs::remove_file(&path).unwrap();
    match out {
        Err(_) => eprintln!("skipped: spirv-val not on PATH"),
        Ok(o) => assert!(o.status.success(), "spirv-val: {}", String::from_utf8_lossy(&o.stderr)),
    }
}
