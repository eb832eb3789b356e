//! What more than one backend uses: the TFLite lowering (the `tflite` and `npu` backends both write
//! TFLite flatbuffers), and the backend-report helpers. Backends call into `common`, never into a sibling.
pub mod tflite;
