//! The kiln Vulkan bundle (`model.kvk`): one file holding everything a device needs to run a model, read
//! by the runtime and written by kiln's `vulkan` backend.
//!
//! Layout (little-endian):
//! ```text
//! 0   8 bytes   magic b"KILNVK\0\x01"
//! 8   u64       manifest length M
//! 16  M bytes   manifest, UTF-8 JSON (`Manifest`)
//! ..  padding to a multiple of 16
//! B   blobs     every `Blob` is {offset, len} in bytes relative to B, 16-byte aligned
//! ```
//!
//! Execution model: one storage buffer `data` of f32 (binding 0) holds the constants (copied in at load,
//! elements `[0, constants.len/4)`) and the activation arena (`arena_offset` .. `+arena_elems`), inputs and
//! outputs included at their `offset` (in f32 elements). Binding 1 is `params` (u32 words, read-only): each
//! step's kernel reads its parameters at the word index passed as its one 4-byte push constant. Binding 2 is
//! `weights16` (u32 words, read-only: fp16 weights packed two per word; one zero word when unused).
//! Bindings 3 and 4 are `data` and `weights16` again, for kernels reading them as vectors. Every
//! step is a dispatch of `groups` workgroups of module `module`'s entry point `main`; a memory barrier
//! (compute write → compute read/write) separates consecutive steps. Integer inputs and outputs are carried
//! as f32 values (exact below 2^24).
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"KILNVK\0\x01";
pub const FORMAT_VERSION: u32 = 1;

/// A byte range of the blob section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    pub offset: u64,
    pub len: u64,
}

/// One SPIR-V compute module.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Module {
    /// The kernel's name (`conv2d`, `eltwise`, ...) and variant, for people and profiles.
    pub name: String,
    pub spirv: Blob,
    /// Local size of the `main` entry point.
    pub workgroup_size: [u32; 3],
}

/// A model input or output: where it lives in `data`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub name: String,
    /// The model's element type (`float32`, `int64`, ...); the bundle carries every tensor as f32.
    pub dtype: String,
    pub shape: Vec<u64>,
    /// `NCHW` for 4-D image tensors as the model wrote them, else `as-model`.
    pub layout: String,
    /// First element in `data`.
    pub offset: u64,
}

impl Tensor {
    /// The number of elements (the product of the shape), `None` on overflow.
    pub fn elements(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }
}

/// One dispatch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub module: u32,
    /// Word index into `params` (the push constant).
    pub params: u32,
    pub groups: [u32; 3],
    /// The IR node(s) this step computes, and its op, for profiles and errors.
    pub node: String,
    pub op: String,
}

/// Device features a bundle needs beyond Vulkan 1.1 compute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Requires {
    /// `storageBuffer16BitAccess` (16-bit types in storage buffers).
    #[serde(default)]
    pub storage_buffer_16bit_access: bool,
    /// `shaderFloat16` arithmetic.
    #[serde(default)]
    pub shader_float16: bool,
}

/// The bundle's manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// `fp32` or `fp16` (fp16 weights, fp32 activations and arithmetic).
    pub precision: String,
    #[serde(default)]
    pub requires: Requires,
    pub modules: Vec<Module>,
    /// f32 constants copied to `data[0..]` at load.
    pub constants: Blob,
    /// u32 words of `weights16`.
    pub weights16: Blob,
    /// u32 words of `params`.
    pub params: Blob,
    /// Elements of `data`: constants, then the arena.
    pub data_elems: u64,
    pub arena_offset: u64,
    pub arena_elems: u64,
    /// The largest sum of simultaneously live activations (what a perfect plan would need).
    pub peak_live_elems: u64,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
    pub steps: Vec<Step>,
}

/// Errors reading a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a kiln Vulkan bundle (bad magic)")]
    Magic,
    #[error("truncated bundle: {0}")]
    Truncated(String),
    #[error("bad manifest: {0}")]
    Manifest(String),
    #[error(
        "bundle format {0} is not supported by this runtime (it reads format {FORMAT_VERSION})"
    )]
    Version(u32),
}

/// A parsed bundle borrowing the file's bytes.
pub struct Bundle<'a> {
    pub manifest: Manifest,
    blobs: &'a [u8],
}

fn align16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

impl<'a> Bundle<'a> {
    /// Parse and check a bundle: every blob in range, every step's module and every tensor in `data`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BundleError> {
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(BundleError::Magic);
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&bytes[8..16]);
        let mlen = usize::try_from(u64::from_le_bytes(len8))
            .map_err(|_| BundleError::Truncated("manifest length".into()))?;
        let end = 16usize
            .checked_add(mlen)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(|| BundleError::Truncated(format!("manifest of {mlen} bytes")))?;
        let manifest: Manifest = serde_json::from_slice(&bytes[16..end])
            .map_err(|e| BundleError::Manifest(e.to_string()))?;
        if manifest.format != FORMAT_VERSION {
            return Err(BundleError::Version(manifest.format));
        }
        let blobs = bytes.get(align16(end)..).unwrap_or(&[]);
        let b = Bundle { manifest, blobs };
        b.check()?;
        Ok(b)
    }

    fn check(&self) -> Result<(), BundleError> {
        let m = &self.manifest;
        let bad = |s: String| Err(BundleError::Manifest(s));
        for (what, blob) in m.modules.iter().map(|x| (x.name.as_str(), x.spirv)).chain([
            ("constants", m.constants),
            ("weights16", m.weights16),
            ("params", m.params),
        ]) {
            self.blob(blob).ok_or_else(|| {
                BundleError::Truncated(format!("blob '{what}' at {}+{}", blob.offset, blob.len))
            })?;
            if blob.len % 4 != 0 {
                return bad(format!("blob '{what}' is {} bytes, not whole words", blob.len));
            }
        }
        if m.constants.len / 4 > m.arena_offset
            || m.arena_offset.checked_add(m.arena_elems).is_none_or(|e| e > m.data_elems)
        {
            return bad("constants and arena do not fit in data".into());
        }
        let params_words = m.params.len / 4;
        for (i, s) in m.steps.iter().enumerate() {
            if s.module as usize >= m.modules.len() || u64::from(s.params) >= params_words.max(1) {
                return bad(format!("step {i} ('{}') names a missing module or params", s.node));
            }
        }
        for t in m.inputs.iter().chain(&m.outputs) {
            let n = t.elements().ok_or_else(|| {
                BundleError::Manifest(format!("tensor '{}' has too many elements", t.name))
            })?;
            if t.offset.checked_add(n).is_none_or(|e| e > m.data_elems) {
                return bad(format!("tensor '{}' lies outside data", t.name));
            }
        }
        Ok(())
    }

    /// The bytes of a blob, if in range.
    pub fn blob(&self, b: Blob) -> Option<&'a [u8]> {
        let start = usize::try_from(b.offset).ok()?;
        let len = usize::try_from(b.len).ok()?;
        self.blobs.get(start..start.checked_add(len)?)
    }
}

/// Serialize a bundle: the manifest's blob offsets must index `blobs` (see [`BlobWriter`]).
pub fn write(manifest: &Manifest, blobs: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(manifest).unwrap_or_default();
    let mut out = Vec::with_capacity(16 + json.len() + 16 + blobs.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.resize(align16(out.len()), 0);
    out.extend_from_slice(blobs);
    out
}

/// Collects blobs at 16-byte aligned offsets.
#[derive(Default)]
pub struct BlobWriter {
    pub bytes: Vec<u8>,
}

impl BlobWriter {
    pub fn push(&mut self, data: &[u8]) -> Blob {
        self.bytes.resize(align16(self.bytes.len()), 0);
        let b = Blob { offset: self.bytes.len() as u64, len: data.len() as u64 };
        self.bytes.extend_from_slice(data);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(blobs: &mut BlobWriter) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            precision: "fp32".into(),
            requires: Requires::default(),
            modules: vec![Module {
                name: "k".into(),
                spirv: blobs.push(&[0; 8]),
                workgroup_size: [64, 1, 1],
            }],
            constants: blobs.push(&[0; 4]),
            weights16: blobs.push(&[0; 4]),
            params: blobs.push(&[0; 4]),
            data_elems: 9,
            arena_offset: 1,
            arena_elems: 8,
            peak_live_elems: 8,
            inputs: vec![Tensor {
                name: "x".into(),
                dtype: "float32".into(),
                shape: vec![2, 2],
                layout: "as-model".into(),
                offset: 1,
            }],
            outputs: vec![],
            steps: vec![Step {
                module: 0,
                params: 0,
                groups: [1, 1, 1],
                node: "n".into(),
                op: "Relu".into(),
            }],
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let mut w = BlobWriter::default();
        let m = manifest(&mut w);
        let bytes = write(&m, &w.bytes);
        let b = Bundle::parse(&bytes).map(|b| b.manifest);
        assert_eq!(b.ok().as_ref(), Some(&m));
        assert!(matches!(Bundle::parse(&bytes[..20]), Err(BundleError::Truncated(_))));
        assert!(matches!(Bundle::parse(b"nope"), Err(BundleError::Magic)));
        let mut bad = m.clone();
        bad.inputs[0].offset = 8;
        assert!(matches!(Bundle::parse(&write(&bad, &w.bytes)), Err(BundleError::Manifest(_))));
        let mut bad = m.clone();
        bad.inputs[0].shape = vec![u64::MAX, 2];
        assert_eq!(bad.inputs[0].elements(), None);
        assert!(matches!(Bundle::parse(&write(&bad, &w.bytes)), Err(BundleError::Manifest(_))));
        let mut bad = m;
        bad.steps[0].module = 3;
        assert!(matches!(Bundle::parse(&write(&bad, &w.bytes)), Err(BundleError::Manifest(_))));
    }
}
