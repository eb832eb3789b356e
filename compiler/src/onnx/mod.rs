//! ONNX import and export: the only module that sees prost types.
mod attr;
pub mod export;
pub mod import;
pub mod lower;
pub mod tensor;
pub mod upgrade;

pub use export::{save, to_bytes, to_files, ExportOptions, ExternalData};
pub use import::{load, load_bytes};
