//! Minimal `.npy` (format 1.0/2.0) reading and writing for little-endian numeric arrays, C order.
use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::tensor::element_count;
use crate::ir::{DType, TensorData};

fn descr_dtype(d: &str) -> Option<DType> {
    Some(match d {
        "<f4" => DType::F32,
        "<f8" => DType::F64,
        "<f2" => DType::F16,
        "<i8" => DType::I64,
        "<i4" => DType::I32,
        "<i2" => DType::I16,
        "|i1" => DType::I8,
        "|u1" => DType::U8,
        "<u2" => DType::U16,
        "<u4" => DType::U32,
        "<u8" => DType::U64,
        "|b1" => DType::Bool,
        _ => return None,
    })
}

fn dtype_descr(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::I16 => "<i2",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        _ => return None,
    })
}

/// Parse `.npy` bytes.
pub fn parse(bytes: &[u8], path: &Path) -> Result<TensorData> {
    let err = |reason: &str| Error::Npy { path: path.into(), reason: reason.into() };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("not a .npy file (bad magic)"));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(err("truncated header"));
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        _ => return Err(err("unsupported .npy version")),
    };
    let header = bytes.get(start..start + hlen).ok_or_else(|| err("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| err("header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))?;
        Some(header[i + key.len() + 2..].trim_start().trim_start_matches(':').trim_start())
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| err("no descr"))?;
    let dtype = descr_dtype(descr)
        .ok_or_else(|| err(&format!("unsupported dtype '{descr}' (little-endian numeric only)")))?;
    if field("fortran_order").map(|s| s.starts_with("True")).unwrap_or(false) {
        return Err(err("Fortran-order arrays are not supported"));
    }
    let shape_txt = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| err("no shape"))?;
    let dims: Vec<i64> = shape_txt
        .split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>().map_err(|_| err("bad shape")))
        .collect::<Result<_>>()?;
    let n = element_count(&dims).ok_or_else(|| err("bad shape"))?;
    let size = dtype.size().unwrap_or(1) as u64;
    let data = &bytes[start + hlen..];
    if n.checked_mul(size) != Some(data.len() as u64) {
        return Err(err(&format!(
            "data is {} bytes, shape {dims:?} of {dtype} needs {}",
            data.len(),
            n * size
        )));
    }
    Ok(TensorData::from_bytes(dtype, dims, data.to_vec()))
}

/// Read a `.npy` file.
pub fn read(path: &Path) -> Result<TensorData> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes, path)
}

/// Encode a tensor as `.npy` bytes.
pub fn encode(t: &TensorData) -> Result<Vec<u8>> {
    let descr = dtype_descr(t.dtype)
        .ok_or_else(|| Error::Eval(format!("cannot write {} as .npy", t.dtype)))?;
    let shape = match t.dims.len() {
        0 => "()".to_string(),
        1 => format!("({},)", t.dims[0]),
        _ => format!("({})", t.dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.bytes().len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(t.bytes());
    Ok(out)
}
