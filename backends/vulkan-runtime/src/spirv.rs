//! SPIR-V blobs: conversion to aligned words, and the capabilities a module declares, from which the
//! device features to check and enable are derived (together with the manifest's `requires`).
use crate::bundle::{Bundle, BundleError, Requires};
use crate::error::Error;

const MAGIC: u32 = 0x0723_0203;
const OP_CAPABILITY: u32 = 17;
const OP_MEMORY_MODEL: u32 = 14;

// SPIR-V capability numbers.
const FLOAT64: u32 = 10;
const INT64: u32 = 11;
const INT16: u32 = 22;
const FLOAT16: u32 = 9;
const STORAGE_BUFFER_16: u32 = 4433;
const UNIFORM_AND_STORAGE_BUFFER_16: u32 = 4434;
const STORAGE_PUSH_CONSTANT_16: u32 = 4435;
const STORAGE_INPUT_OUTPUT_16: u32 = 4436;

/// Optional device features a bundle uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    pub(crate) storage_buffer16: bool,
    pub(crate) uniform_and_storage_buffer16: bool,
    pub(crate) storage_push_constant16: bool,
    pub(crate) storage_input_output16: bool,
    pub(crate) float16: bool,
    pub(crate) int16: bool,
    pub(crate) int64: bool,
    pub(crate) float64: bool,
}

impl Needs {
    /// What the manifest asks for, plus what the modules' SPIR-V declares.
    pub(crate) fn new(requires: &Requires, modules: &[Vec<u32>]) -> Needs {
        let mut n = Needs {
            storage_buffer16: requires.storage_buffer_16bit_access,
            float16: requires.shader_float16,
            ..Needs::default()
        };
        for cap in modules.iter().flat_map(|m| capabilities(m)) {
            match cap {
                FLOAT64 => n.float64 = true,
                INT64 => n.int64 = true,
                INT16 => n.int16 = true,
                FLOAT16 => n.float16 = true,
                STORAGE_BUFFER_16 => n.storage_buffer16 = true,
                UNIFORM_AND_STORAGE_BUFFER_16 => n.uniform_and_storage_buffer16 = true,
                STORAGE_PUSH_CONSTANT_16 => n.storage_push_constant16 = true,
                STORAGE_INPUT_OUTPUT_16 => n.storage_input_output16 = true,
                _ => {}
            }
        }
        n
    }
}

/// The capabilities declared by a module (the `OpCapability` instructions before `OpMemoryModel`).
pub(crate) fn capabilities(words: &[u32]) -> impl Iterator<Item = u32> + '_ {
    let mut at = 5;
    std::iter::from_fn(move || loop {
        let &head = words.get(at)?;
        let (op, len) = (head & 0xffff, (head >> 16) as usize);
        if len == 0 || op == OP_MEMORY_MODEL {
            return None;
        }
        let operand = words.get(at + 1).copied();
        at += len;
        if op == OP_CAPABILITY {
            return operand;
        }
    })
}

/// A module's SPIR-V as aligned words (the blob's bytes may sit at any address).
pub(crate) fn words(name: &str, bytes: &[u8]) -> Result<Vec<u32>, Error> {
    let bad = |why: String| Error::Bundle(BundleError::Manifest(format!("module '{name}': {why}")));
    if !bytes.len().is_multiple_of(4) || bytes.len() < 20 {
        return Err(bad(format!("SPIR-V of {} bytes is not a whole module", bytes.len())));
    }
    let words: Vec<u32> =
        bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    if words.first() != Some(&MAGIC) {
        return Err(bad("not SPIR-V (bad magic number, or not little-endian)".into()));
    }
    Ok(words)
}

/// Every module's SPIR-V words, in module order.
pub(crate) fn modules(bundle: &Bundle<'_>) -> Result<Vec<Vec<u32>>, Error> {
    bundle
        .manifest
        .modules
        .iter()
        .map(|m| {
            let bytes = bundle.blob(m.spirv).ok_or_else(|| {
                Error::Bundle(BundleError::Truncated(format!("SPIR-V of module '{}'", m.name)))
            })?;
            words(&m.name, bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_check_magic_and_length() {
        let mut b = MAGIC.to_le_bytes().to_vec();
        b.resize(20, 0);
        assert_eq!(words("m", &b).unwrap().len(), 5);
        // Unaligned source: same words.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&b);
        assert_eq!(words("m", &shifted[1..]).unwrap()[0], MAGIC);
        assert!(words("m", &b[..19]).is_err());
        b[0] = 0;
        assert!(words("m", &b).unwrap_err().to_string().contains("module 'm'"));
    }

    #[test]
    fn capabilities_stop_at_the_memory_model() {
        let cap = |c| [(2 << 16) | OP_CAPABILITY, c];
        let mut m = vec![MAGIC, 0x10300, 0, 10, 0];
        m.extend(cap(1));
        m.extend(cap(FLOAT16));
        m.extend([(3 << 16) | OP_MEMORY_MODEL, 0, 1]);
        m.extend(cap(INT64));
        assert_eq!(capabilities(&m).collect::<Vec<_>>(), [1, FLOAT16]);
        let n = Needs::new(&Requires::default(), &[m]);
        assert!(n.float16 && !n.int64 && !n.storage_buffer16);
        // Truncated and zero-length instructions end the scan.
        assert_eq!(capabilities(&[MAGIC, 0, 0, 0, 0, 0]).count(), 0);
        assert_eq!(capabilities(&[MAGIC, 0, 0, 0, 0, (2 << 16) | OP_CAPABILITY]).count(), 0);
    }
}
