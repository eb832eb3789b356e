//! `TensorProto` ⇄ `TensorData`, including external data (memory-mapped, confined to the model's folder).
//!
//! Security: an external data `location` must be a relative path made of plain components that resolves,
//! after following symlinks, inside the model's folder. Absolute paths, `..` and symlinks that escape are
//! refused. Offsets and lengths are checked against the file before anything is mapped into a tensor.
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use kiln_proto::onnx as pb;
use prost::Message;

use crate::error::{Error, Result};
use crate::ir::tensor::element_count;
use crate::ir::{DType, Storage, TensorData};

/// State shared while importing one model: where external files live and the files mapped so far.
pub struct ImportCx {
    pub base_dir: Option<PathBuf>,
    maps: HashMap<PathBuf, Arc<memmap2::Mmap>>,
    pub external_files: Vec<PathBuf>,
}

impl ImportCx {
    pub fn new(base_dir: Option<PathBuf>) -> Self {
        ImportCx { base_dir, maps: HashMap::new(), external_files: Vec::new() }
    }

    fn map(&mut self, path: &Path, tensor: &str) -> Result<Arc<memmap2::Mmap>> {
        if let Some(m) = self.maps.get(path) {
            return Ok(m.clone());
        }
        let f = std::fs::File::open(path).map_err(|e| Error::ExternalData {
            name: tensor.into(),
            reason: format!("cannot open {}: {e}", path.display()),
        })?;
        // SAFETY: the map is read-only; kiln never writes through it. A file truncated by another process
        // while mapped is outside what any memory-mapping reader can defend against.
        let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::ExternalData {
            name: tensor.into(),
            reason: format!("cannot map {}: {e}", path.display()),
        })?;
        let m = Arc::new(m);
        self.maps.insert(path.to_path_buf(), m.clone());
        self.external_files.push(path.to_path_buf());
        Ok(m)
    }
}

/// Resolve an external data location against the model folder, refusing anything that escapes it.
pub fn resolve_external(base: &Path, location: &str, tensor: &str) -> Result<PathBuf> {
    let err = |reason: String| Error::ExternalData { name: tensor.into(), reason };
    if location.is_empty() {
        return Err(err("empty location".into()));
    }
    let p = Path::new(location);
    if p.is_absolute() || p.has_root() || location.starts_with('/') || location.starts_with('\\') {
        return Err(err(format!("location '{location}' is an absolute path; refused (external data must stay in the model's folder)")));
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(err(format!(
                    "location '{location}' escapes the model's folder ('..' or a root); refused"
                )))
            }
        }
    }
    let full = base.join(p);
    let canon_base =
        base.canonicalize().map_err(|e| err(format!("model folder {}: {e}", base.display())))?;
    let canon =
        full.canonicalize().map_err(|e| err(format!("cannot open {}: {e}", full.display())))?;
    if !canon.starts_with(&canon_base) {
        return Err(err(format!(
            "location '{location}' resolves to {} outside the model's folder (symlink); refused",
            canon.display()
        )));
    }
    Ok(canon)
}

fn le_bytes<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * N);
    for x in v {
        out.extend_from_slice(&f(*x));
    }
    out
}

/// Convert a `TensorProto` into IR tensor data, checking sizes.
pub fn tensor_from_proto(t: pb::TensorProto, cx: &mut ImportCx) -> Result<TensorData> {
    let name = t.name.clone();
    let dtype = DType::from_onnx(t.data_type);
    let dims = t.dims.clone();
    let n = element_count(&dims).ok_or_else(|| Error::Tensor {
        name: name.clone(),
        reason: format!("invalid dims {dims:?} (negative or overflowing element count)"),
    })?;
    if t.segment.is_some() {
        return Ok(TensorData {
            dtype,
            dims,
            storage: Storage::Opaque(Arc::new(t.encode_to_vec())),
        });
    }
    let storage = if t.data_location == pb::tensor_proto::DataLocation::External as i32 {
        external_storage(&t, dtype, n, cx)?
    } else if !t.raw_data.is_empty() {
        if dtype == DType::String {
            return Err(Error::Tensor { name, reason: "string tensor with raw_data".into() });
        }
        if dtype.size().is_none() {
            return Ok(TensorData {
                dtype,
                dims,
                storage: Storage::Opaque(Arc::new(t.encode_to_vec())),
            });
        }
        Storage::Bytes(Arc::new(t.raw_data))
    } else {
        match dtype {
            DType::F32 | DType::C64 => {
                Storage::Bytes(Arc::new(le_bytes(&t.float_data, f32::to_le_bytes)))
            }
            DType::F64 | DType::C128 => {
                Storage::Bytes(Arc::new(le_bytes(&t.double_data, f64::to_le_bytes)))
            }
            DType::I64 => Storage::Bytes(Arc::new(le_bytes(&t.int64_data, i64::to_le_bytes))),
            DType::U64 => Storage::Bytes(Arc::new(le_bytes(&t.uint64_data, u64::to_le_bytes))),
            DType::U32 => {
                Storage::Bytes(Arc::new(le_bytes(&t.uint64_data, |v| (v as u32).to_le_bytes())))
            }
            DType::I32 => Storage::Bytes(Arc::new(le_bytes(&t.int32_data, i32::to_le_bytes))),
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => {
                Storage::Bytes(Arc::new(le_bytes(&t.int32_data, |v| (v as u16).to_le_bytes())))
            }
            DType::I8 | DType::U8 | DType::Bool | DType::Other(17..=20) => {
                Storage::Bytes(Arc::new(t.int32_data.iter().map(|v| *v as u8).collect()))
            }
            DType::String => Storage::Strings(Arc::new(t.string_data)),
            _ => {
                return Ok(TensorData {
                    dtype,
                    dims,
                    storage: Storage::Opaque(Arc::new(t.encode_to_vec())),
                })
            }
        }
    };
    let td = TensorData { dtype, dims, storage };
    td.check(&name)?;
    Ok(td)
}

fn external_storage(
    t: &pb::TensorProto,
    dtype: DType,
    n: u64,
    cx: &mut ImportCx,
) -> Result<Storage> {
    let name = t.name.as_str();
    let err = |reason: String| Error::ExternalData { name: name.into(), reason };
    let mut location = None;
    let mut offset: u64 = 0;
    let mut length: Option<u64> = None;
    for kv in &t.external_data {
        match kv.key.as_str() {
            "location" => location = Some(kv.value.clone()),
            "offset" => {
                offset = kv.value.parse().map_err(|_| err(format!("bad offset '{}'", kv.value)))?
            }
            "length" => {
                length =
                    Some(kv.value.parse().map_err(|_| err(format!("bad length '{}'", kv.value)))?)
            }
            _ => {}
        }
    }
    let location = location.ok_or_else(|| err("no location".into()))?;
    let base = cx.base_dir.clone().ok_or_else(|| {
        err("the model was not loaded from a file, so its external data cannot be found".into())
    })?;
    let path = resolve_external(&base, &location, name)?;
    let size = dtype
        .size()
        .ok_or_else(|| err(format!("external data of type {dtype} is not supported")))?;
    let need = n.checked_mul(size as u64).ok_or_else(|| err("size overflows".into()))?;
    let map = cx.map(&path, name)?;
    let file_len = map.len() as u64;
    let len = length.unwrap_or_else(|| file_len.saturating_sub(offset));
    if len != need {
        return Err(err(format!(
            "length {len} disagrees with dims {:?} of {dtype} ({need} bytes)",
            t.dims
        )));
    }
    let end = offset.checked_add(len).ok_or_else(|| err("offset + length overflows".into()))?;
    if end > file_len {
        return Err(err(format!(
            "bytes {offset}..{end} lie beyond the end of {} ({file_len} bytes)",
            path.display()
        )));
    }
    Ok(Storage::Mapped { map, offset: offset as usize, len: len as usize })
}

/// Where tensor bytes go on export.
pub enum TensorSink<'a> {
    Inline,
    /// Append to an external data file (returns offset); `location` is written into the proto.
    External {
        location: &'a str,
        buf: &'a mut Vec<u8>,
        threshold: usize,
    },
}

/// Convert IR tensor data back into a `TensorProto` named `name`.
pub fn tensor_to_proto(name: &str, t: &TensorData, sink: &mut TensorSink) -> pb::TensorProto {
    if let Storage::Opaque(bytes) = &t.storage {
        if let Ok(mut p) = pb::TensorProto::decode(bytes.as_slice()) {
            p.name = name.to_string();
            return p;
        }
    }
    let mut p = pb::TensorProto {
        name: name.to_string(),
        data_type: t.dtype.to_onnx(),
        dims: t.dims.clone(),
        ..Default::default()
    };
    match &t.storage {
        Storage::Strings(s) => p.string_data = s.as_ref().clone(),
        _ => {
            let bytes = t.bytes();
            match sink {
                TensorSink::External { location, buf, threshold } if bytes.len() >= *threshold => {
                    while buf.len() % 64 != 0 {
                        buf.push(0);
                    }
                    let offset = buf.len();
                    buf.extend_from_slice(bytes);
                    p.data_location = pb::tensor_proto::DataLocation::External as i32;
                    p.external_data = vec![
                        kv("location", location),
                        kv("offset", &offset.to_string()),
                        kv("length", &bytes.len().to_string()),
                    ];
                }
                _ => p.raw_data = bytes.to_vec(),
            }
        }
    }
    p
}

fn kv(k: &str, v: &str) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto { key: k.into(), value: v.into() }
}
