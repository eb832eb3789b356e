//! kiln's Vulkan runtime: load a bundle written by kiln's `vulkan` backend, create its pipelines once,
//! upload its constants once, run it many times. See `bundle` for the file format and execution model,
//! [`Session`] for the Rust API and `include/kiln_vk.h` for the C API.
pub mod bundle;
pub mod capi;
mod commands;
mod device;
mod error;
mod instance;
mod limits;
mod memory;
mod pipelines;
mod resources;
pub mod session;
mod spirv;

pub use session::{Error, LoadOptions, Session};
