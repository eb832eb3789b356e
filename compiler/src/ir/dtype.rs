//! Element types, numbered as ONNX's `TensorProto.DataType` so import and export are a cast.
use std::fmt;

/// Element type of a tensor value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    Undefined,
    F32,
    U8,
    I8,
    U16,
    I16,
    I32,
    I64,
    String,
    Bool,
    F16,
    F64,
    U32,
    U64,
    C64,
    C128,
    BF16,
    /// Any other ONNX element type (float8 variants, 4-bit types, ...), kept by number.
    Other(i32),
}

impl DType {
    pub fn from_onnx(v: i32) -> DType {
        use DType::*;
        match v {
            0 => Undefined,
            1 => F32,
            2 => U8,
            3 => I8,
            4 => U16,
            5 => I16,
            6 => I32,
            7 => I64,
            8 => String,
            9 => Bool,
            10 => F16,
            11 => F64,
            12 => U32,
            13 => U64,
            14 => C64,
            15 => C128,
            16 => BF16,
            n => Other(n),
        }
    }

    pub fn to_onnx(self) -> i32 {
        use DType::*;
        match self {
            Undefined => 0,
            F32 => 1,
            U8 => 2,
            I8 => 3,
            U16 => 4,
            I16 => 5,
            I32 => 6,
            I64 => 7,
            String => 8,
            Bool => 9,
            F16 => 10,
            F64 => 11,
            U32 => 12,
            U64 => 13,
            C64 => 14,
            C128 => 15,
            BF16 => 16,
            Other(n) => n,
        }
    }

    /// Bytes per element, for fixed-size types that are byte-addressable (None for strings, sub-byte types).
    pub fn size(self) -> Option<usize> {
        use DType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 | F16 | BF16 => Some(2),
            F32 | I32 | U32 => Some(4),
            F64 | I64 | U64 | C64 => Some(8),
            C128 => Some(16),
            Other(17..=20) => Some(1), // float8 variants
            _ => None,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::F64 | DType::BF16)
    }

    pub fn name(self) -> std::string::String {
        use DType::*;
        match self {
            Undefined => "undefined".into(),
            F32 => "f32".into(),
            U8 => "u8".into(),
            I8 => "i8".into(),
            U16 => "u16".into(),
            I16 => "i16".into(),
            I32 => "i32".into(),
            I64 => "i64".into(),
            String => "string".into(),
            Bool => "bool".into(),
            F16 => "f16".into(),
            F64 => "f64".into(),
            U32 => "u32".into(),
            U64 => "u64".into(),
            C64 => "c64".into(),
            C128 => "c128".into(),
            BF16 => "bf16".into(),
            Other(n) => format!("onnx_type_{n}"),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}
