//! What more than one backend uses: the TFLite lowering (the `tflite` and `npu` backends both write
//! TFLite flatbuffers), the float16 ONNX conversion (`onnx` fp16 targets, and `tensorrt` fp16 for
//! TensorRT 11's strongly typed networks), device profiles named by `device:` (npu, tensorrt), and the
//! backend-report helpers. Backends call into `common`,
//! never into a sibling.
pub mod device;
pub mod onnx_fp16;
pub mod tflite;
