//! Fuzz the ONNX importer and everything that runs on what it accepts: verify, shape inference,
//! statistics, IR dump and export. Any panic, overflow or runaway allocation is a bug.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut m) = kiln_compiler::onnx::load_bytes(data, None, std::path::Path::new("fuzz.onnx")) else { return };
    let _ = kiln_compiler::ir::verify::verify(&m.graph);
    if kiln_compiler::shape::infer(&mut m, &Default::default()).is_err() {
        return;
    }
    let _ = kiln_compiler::stats::model_stats(&m);
    let _ = kiln_compiler::ir::dump::dump_model(&m);
    if let Ok(bytes) = kiln_compiler::onnx::to_bytes(&m, &Default::default()) {
        // What kiln writes, kiln must read back.
        let back = kiln_compiler::onnx::load_bytes(&bytes, None, std::path::Path::new("fuzz-rt.onnx"));
        assert!(back.is_ok(), "re-import of exported model failed: {:?}", back.err());
    }
});
