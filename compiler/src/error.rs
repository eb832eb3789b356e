//! Typed errors of the compiler crate. Every user-reachable failure is one of these, with enough context
//! (file, node, value) to find the problem; nothing in the library panics on user input.
use std::path::PathBuf;

/// Errors raised while importing, checking, transforming or exporting a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid ONNX model: {reason}")]
    NotOnnx { path: PathBuf, reason: String },
    #[error("invalid model: {0}")]
    Invalid(String),
    #[error("tensor '{name}': {reason}")]
    Tensor { name: String, reason: String },
    #[error("external data for tensor '{name}': {reason}")]
    ExternalData { name: String, reason: String },
    #[error("node '{node}' ({op}): {reason}")]
    Node { node: String, op: String, reason: String },
    #[error("graph verification failed:\n  {}", .0.join("\n  "))]
    Verify(Vec<String>),
    #[error("shape inference: node '{node}' ({op}): {reason}")]
    Shape { node: String, op: String, reason: String },
    #[error("config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("input '{name}': {reason}")]
    Input { name: String, reason: String },
    #[error("{path}: {reason}")]
    Npy { path: PathBuf, reason: String },
    #[error("evaluation failed: {0}")]
    Eval(String),
    #[error("backend '{backend}', target '{target}': {reason}")]
    Backend { backend: String, target: String, reason: String },
    #[error("pass '{pass}': {reason}")]
    Pass { pass: String, reason: String },
    /// A quantized model measured as broken (quant/guard.rs): the build fails that target alone.
    #[error("quality guard: {0}")]
    Guard(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
