//! kiln's Vulkan runtime: load a bundle written by kiln's `vulkan` backend, create its pipelines once,
//! upload its constants once, run it many times. See `bundle` for the file format and execution model.
pub mod bundle;
