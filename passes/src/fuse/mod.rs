//! Fusion passes: fold neighbouring ops into the weighted ops backends lower, and recognize idioms.
pub mod activation;
pub mod batchnorm;
pub mod const_arith;
pub mod matmul_gemm;
pub mod patterns;
