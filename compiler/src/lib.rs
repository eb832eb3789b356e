//! kiln-compiler: the IR (petgraph), ONNX import/export, shape inference, statistics, evaluation with
//! tract-onnx, the YAML config schema, the `Pass` and `Backend` traits and the build driver.
pub mod artifact;
pub mod backend;
pub mod error;
pub mod ir;
pub mod onnx;
pub mod shape;

pub use error::{Error, Result};
pub mod accuracy;
pub mod calib;
pub mod config;
pub mod cost;
pub mod driver;
pub mod eval;
pub mod groups;
pub mod html;
pub mod npy;
pub mod pipeline;
pub mod profile;
pub mod progress;
pub mod stats;
