//! Constant tensor data: shared, cheap to clone, and possibly memory-mapped from an external data file.
//!
//! Fixed-size element types are stored as little-endian bytes whatever field of the ONNX `TensorProto`
//! they came from; strings as a list of byte strings. Element types kiln cannot normalize (sub-byte types
//! in typed fields, segmented tensors) are kept as the encoded proto so they still round-trip.
use std::sync::Arc;

use super::DType;
use crate::error::{Error, Result};

/// The largest tensor kiln materializes while folding or evaluating (elements), far beyond any real weight.
pub const MAX_FOLD_ELEMENTS: u64 = 1 << 28;

/// Backing bytes of a tensor.
#[derive(Clone)]
pub enum Storage {
    /// Little-endian bytes owned in memory.
    Bytes(Arc<Vec<u8>>),
    /// A window into a memory-mapped external data file.
    Mapped { map: Arc<memmap2::Mmap>, offset: usize, len: usize },
    /// String elements.
    Strings(Arc<Vec<Vec<u8>>>),
    /// An encoded `TensorProto` kiln does not interpret (kept verbatim for round-trip).
    Opaque(Arc<Vec<u8>>),
}

/// A constant tensor.
#[derive(Clone)]
pub struct TensorData {
    pub dtype: DType,
    pub dims: Vec<i64>,
    pub storage: Storage,
}

impl std::fmt::Debug for TensorData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorData({} {:?}, {} bytes)", self.dtype, self.dims, self.byte_len())
    }
}

/// Number of elements of `dims`, refusing negative dims and overflow.
pub fn element_count(dims: &[i64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |acc, &d| if d < 0 { None } else { acc.checked_mul(d as u64) })
}

impl TensorData {
    pub fn from_bytes(dtype: DType, dims: Vec<i64>, bytes: Vec<u8>) -> Self {
        TensorData { dtype, dims, storage: Storage::Bytes(Arc::new(bytes)) }
    }

    pub fn from_f32(dims: Vec<i64>, data: &[f32]) -> Self {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::from_bytes(DType::F32, dims, bytes)
    }

    /// Float16 storage of `data` (rounded to nearest): float16 weights and constants.
    pub fn from_f32_as_f16(dims: Vec<i64>, data: &[f32]) -> Self {
        let bytes =
            data.iter().flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes()).collect();
        Self::from_bytes(DType::F16, dims, bytes)
    }

    pub fn from_i64(dims: Vec<i64>, data: &[i64]) -> Self {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::from_bytes(DType::I64, dims, bytes)
    }

    /// Number of elements (0 when the dims are invalid; import rejects those).
    pub fn len(&self) -> u64 {
        element_count(&self.dims).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw little-endian bytes (empty for strings and opaque tensors).
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Bytes(b) => b,
            Storage::Mapped { map, offset, len } => map.get(*offset..*offset + *len).unwrap_or(&[]),
            Storage::Strings(_) | Storage::Opaque(_) => &[],
        }
    }

    pub fn byte_len(&self) -> usize {
        match &self.storage {
            Storage::Strings(s) => s.iter().map(|x| x.len()).sum(),
            Storage::Opaque(b) => b.len(),
            _ => self.bytes().len(),
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }

    /// Elements as f64, for any numeric type kiln normalizes (None otherwise or when too large).
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        if self.len() > MAX_FOLD_ELEMENTS {
            return None;
        }
        let b = self.bytes();
        let n = self.len() as usize;
        let sz = self.dtype.size()?;
        if b.len() != n * sz {
            return None;
        }
        let out = match self.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            DType::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            DType::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64)
                .collect(),
            DType::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            DType::U32 => b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            DType::I16 => {
                b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f64).collect()
            }
            DType::U16 => {
                b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as f64).collect()
            }
            DType::I8 => b.iter().map(|&v| v as i8 as f64).collect(),
            DType::U8 | DType::Bool => b.iter().map(|&v| v as f64).collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])) as f64)
                .collect(),
            _ => return None,
        };
        Some(out)
    }

    /// Elements as i64 for integer types (None otherwise or when too large).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        if self.len() > MAX_FOLD_ELEMENTS {
            return None;
        }
        let b = self.bytes();
        let n = self.len() as usize;
        match self.dtype {
            DType::I64 if b.len() == n * 8 => Some(
                b.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            ),
            DType::I32 if b.len() == n * 4 => Some(
                b.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect(),
            ),
            DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::U32 | DType::Bool => {
                self.to_f64_vec().map(|v| v.into_iter().map(|x| x as i64).collect())
            }
            _ => None,
        }
    }

    /// Elements as f32 for numeric types.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        self.to_f64_vec().map(|v| v.into_iter().map(|x| x as f32).collect())
    }

    /// Check that the stored bytes agree with dtype and dims.
    pub fn check(&self, name: &str) -> Result<()> {
        let n = element_count(&self.dims).ok_or_else(|| Error::Tensor {
            name: name.into(),
            reason: format!("invalid dims {:?} (negative or overflowing element count)", self.dims),
        })?;
        match &self.storage {
            Storage::Strings(s) => {
                if s.len() as u64 != n {
                    return Err(Error::Tensor {
                        name: name.into(),
                        reason: format!(
                            "{} strings stored, dims {:?} need {n}",
                            s.len(),
                            self.dims
                        ),
                    });
                }
            }
            Storage::Opaque(_) => {}
            _ => {
                if let Some(sz) = self.dtype.size() {
                    let want = n.checked_mul(sz as u64);
                    if want != Some(self.bytes().len() as u64) {
                        return Err(Error::Tensor {
                            name: name.into(),
                            reason: format!(
                                "data is {} bytes but dims {:?} of {} need {}",
                                self.bytes().len(),
                                self.dims,
                                self.dtype,
                                want.map(|w| w.to_string())
                                    .unwrap_or_else(|| "more than 2^64".into())
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// IEEE half → single precision.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) & 1) as u32;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if frac == 0 {
            sign << 31
        } else {
            // subnormal: normalize
            let mut e = 127 - 15 + 1;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            (sign << 31) | ((e as u32) << 23) | ((f & 0x3ff) << 13)
        }
    } else if exp == 0x1f {
        (sign << 31) | (0xff << 23) | (frac << 13)
    } else {
        (sign << 31) | ((exp + 127 - 15) << 23) | (frac << 13)
    };
    f32::from_bits(bits)
}
