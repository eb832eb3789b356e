//! Cleanup passes: graph simplifications that never change results.
pub mod dce;
