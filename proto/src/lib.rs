//! The ONNX protobuf schema (`proto/onnx.proto3`, from the `onnx` PyPI package) as prost-generated Rust.
//! The generated file is committed so a normal build needs no protoc; regenerate with
//! `cargo run --manifest-path proto/regen/Cargo.toml` (needs `protoc`, Debian package protobuf-compiler).
#![allow(clippy::all, missing_docs)]

/// Messages of the `onnx` protobuf package.
pub mod onnx {
    include!("onnx.rs");
}
