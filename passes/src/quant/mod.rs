//! Quantization: ranges from calibration statistics and QDQ insertion.
pub mod bias_correction;
pub mod params;
pub mod qdq;
