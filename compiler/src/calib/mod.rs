//! Calibration: data loading (images with preprocessing, or `.npy` tensors) and activation statistics.
pub mod data;
pub mod stats;

pub use data::{Preprocess, Source};
pub use stats::{collect, collect_with, Calibration, TensorStats, BINS};
