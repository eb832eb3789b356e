//! Cleanup passes: graph simplifications that never change results.
pub mod cse;
pub mod dce;
pub mod fold_constants;
pub mod identity;
pub mod pad;
pub mod reshape;
pub mod transpose;
