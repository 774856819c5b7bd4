//! GGUF metadata values (REFERENCE §1.2): the 13 value types and a typed value tree.

use std::fmt;

/// The type tag of a GGUF metadata value (`enum gguf_type`), stored on disk as an i32.
///
/// Exists so value types are never bare integers and so errors can name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgufValueType {
    /// u8.
    U8 = 0,
    /// i8.
    I8 = 1,
    /// u16.
    U16 = 2,
    /// i16.
    I16 = 3,
    /// u32.
    U32 = 4,
    /// i32.
    I32 = 5,
    /// f32.
    F32 = 6,
    /// One byte, non-zero = true.
    Bool = 7,
    /// u64 length + UTF-8 bytes.
    String = 8,
    /// Element type + u64 count + elements.
    Array = 9,
    /// u64.
    U64 = 10,
    /// i64.
    I64 = 11,
    /// f64.
    F64 = 12,
}

impl GgufValueType {
    /// The type with on-disk id `id`, `None` for unknown ids.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// The on-disk id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The name used by gguf-py and llama.cpp (`UINT32`, `STRING`, …), for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "UINT8",
            Self::I8 => "INT8",
            Self::U16 => "UINT16",
            Self::I16 => "INT16",
            Self::U32 => "UINT32",
            Self::I32 => "INT32",
            Self::F32 => "FLOAT32",
            Self::Bool => "BOOL",
            Self::String => "STRING",
            Self::Array => "ARRAY",
            Self::U64 => "UINT64",
            Self::I64 => "INT64",
            Self::F64 => "FLOAT64",
        }
    }

    /// Encoded size of one value of a fixed-size type; `None` for STRING and ARRAY.
    pub fn fixed_size(self) -> Option<u64> {
        match self {
            Self::U8 | Self::I8 | Self::Bool => Some(1),
            Self::U16 | Self::I16 => Some(2),
            Self::U32 | Self::I32 | Self::F32 => Some(4),
            Self::U64 | Self::I64 | Self::F64 => Some(8),
            Self::String | Self::Array => None,
        }
    }

    /// The fewest bytes one value of this type can take on disk (8 for an empty string, 12 for an
    /// empty array); used to bound counts read from a file before allocating.
    pub fn min_encoded_size(self) -> u64 {
        match self {
            Self::String => 8,
            Self::Array => 12,
            other => other.fixed_size().unwrap_or(1),
        }
    }
}

impl fmt::Display for GgufValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One GGUF metadata value.
///
/// Exists as the single in-memory form of metadata for both the reader and the writer, so that
/// what convert builds is exactly what gets written and what a test reads back.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// UINT8.
    U8(u8),
    /// INT8.
    I8(i8),
    /// UINT16.
    U16(u16),
    /// INT16.
    I16(i16),
    /// UINT32.
    U32(u32),
    /// INT32.
    I32(i32),
    /// FLOAT32.
    F32(f32),
    /// BOOL.
    Bool(bool),
    /// STRING (UTF-8).
    String(String),
    /// ARRAY.
    Array(GgufArray),
    /// UINT64.
    U64(u64),
    /// INT64.
    I64(i64),
    /// FLOAT64.
    F64(f64),
}

/// A GGUF array: its declared element type and the elements.
///
/// Exists because an empty array still has an element type on disk, which must round-trip.
/// Every element must have type `elem_type` (the writer checks). Arrays of arrays are accepted by
/// our reader and writer although llama.cpp rejects them.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufArray {
    /// The declared type of every element.
    pub elem_type: GgufValueType,
    /// The elements, in file order.
    pub values: Vec<GgufValue>,
}

impl GgufArray {
    /// An array of `elem_type` from values (not checked here; the writer checks).
    pub fn new(elem_type: GgufValueType, values: Vec<GgufValue>) -> Self {
        Self { elem_type, values }
    }

    /// An array of STRING, e.g. `tokenizer.ggml.tokens`.
    pub fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Self {
        Self::new(
            GgufValueType::String,
            items
                .into_iter()
                .map(|s| GgufValue::String(s.into()))
                .collect(),
        )
    }

    /// An array of INT32, e.g. `tokenizer.ggml.token_type`.
    pub fn i32s(items: impl IntoIterator<Item = i32>) -> Self {
        Self::new(
            GgufValueType::I32,
            items.into_iter().map(GgufValue::I32).collect(),
        )
    }

    /// An array of UINT32.
    pub fn u32s(items: impl IntoIterator<Item = u32>) -> Self {
        Self::new(
            GgufValueType::U32,
            items.into_iter().map(GgufValue::U32).collect(),
        )
    }

    /// An array of FLOAT32, e.g. `tokenizer.ggml.scores`.
    pub fn f32s(items: impl IntoIterator<Item = f32>) -> Self {
        Self::new(
            GgufValueType::F32,
            items.into_iter().map(GgufValue::F32).collect(),
        )
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// All elements as `&str`, or `None` if any element is not a STRING.
    pub fn as_strs(&self) -> Option<Vec<&str>> {
        self.values.iter().map(GgufValue::as_str).collect()
    }

    /// All elements as i64 (any integer type that fits), or `None`.
    pub fn as_i64s(&self) -> Option<Vec<i64>> {
        self.values.iter().map(GgufValue::as_i64).collect()
    }

    /// All elements as f32 (FLOAT32 only), or `None`.
    pub fn as_f32s(&self) -> Option<Vec<f32>> {
        self.values.iter().map(GgufValue::as_f32).collect()
    }
}

impl GgufValue {
    /// The value's type tag.
    pub fn value_type(&self) -> GgufValueType {
        match self {
            Self::U8(_) => GgufValueType::U8,
            Self::I8(_) => GgufValueType::I8,
            Self::U16(_) => GgufValueType::U16,
            Self::I16(_) => GgufValueType::I16,
            Self::U32(_) => GgufValueType::U32,
            Self::I32(_) => GgufValueType::I32,
            Self::F32(_) => GgufValueType::F32,
            Self::Bool(_) => GgufValueType::Bool,
            Self::String(_) => GgufValueType::String,
            Self::Array(_) => GgufValueType::Array,
            Self::U64(_) => GgufValueType::U64,
            Self::I64(_) => GgufValueType::I64,
            Self::F64(_) => GgufValueType::F64,
        }
    }

    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Any integer value that fits in u64 (negative values and non-integers give `None`).
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    /// Any integer value that fits in u32.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_i128().and_then(|v| u32::try_from(v).ok())
    }

    /// Any integer value that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|v| i64::try_from(v).ok())
    }

    /// Any integer value that fits in i32.
    pub fn as_i32(&self) -> Option<i32> {
        self.as_i128().and_then(|v| i32::try_from(v).ok())
    }

    /// A FLOAT32 value.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Self::F32(v) => Some(v),
            _ => None,
        }
    }

    /// A FLOAT32 or FLOAT64 value, widened to f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A BOOL value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// A STRING value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// An ARRAY value.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl From<u8> for GgufValue {
    fn from(v: u8) -> Self {
        Self::U8(v)
    }
}
impl From<i8> for GgufValue {
    fn from(v: i8) -> Self {
        Self::I8(v)
    }
}
impl From<u16> for GgufValue {
    fn from(v: u16) -> Self {
        Self::U16(v)
    }
}
impl From<i16> for GgufValue {
    fn from(v: i16) -> Self {
        Self::I16(v)
    }
}
impl From<u32> for GgufValue {
    fn from(v: u32) -> Self {
        Self::U32(v)
    }
}
impl From<i32> for GgufValue {
    fn from(v: i32) -> Self {
        Self::I32(v)
    }
}
impl From<f32> for GgufValue {
    fn from(v: f32) -> Self {
        Self::F32(v)
    }
}
impl From<bool> for GgufValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}
impl From<String> for GgufValue {
    fn from(v: String) -> Self {
        Self::String(v)
    }
}
impl From<&str> for GgufValue {
    fn from(v: &str) -> Self {
        Self::String(v.to_owned())
    }
}
impl From<GgufArray> for GgufValue {
    fn from(v: GgufArray) -> Self {
        Self::Array(v)
    }
}
impl From<u64> for GgufValue {
    fn from(v: u64) -> Self {
        Self::U64(v)
    }
}
impl From<i64> for GgufValue {
    fn from(v: i64) -> Self {
        Self::I64(v)
    }
}
impl From<f64> for GgufValue {
    fn from(v: f64) -> Self {
        Self::F64(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_ids_round_trip() {
        for id in 0..13 {
            let t = GgufValueType::from_id(id).expect("ids 0..13 are valid");
            assert_eq!(t.id(), id);
        }
        assert_eq!(GgufValueType::from_id(13), None);
        assert_eq!(GgufValueType::from_id(u32::MAX), None);
        assert_eq!(GgufValueType::U32.to_string(), "UINT32");
    }

    #[test]
    fn integer_accessors_convert_when_the_value_fits() {
        assert_eq!(GgufValue::U8(7).as_u32(), Some(7));
        assert_eq!(GgufValue::I32(7).as_u64(), Some(7));
        assert_eq!(GgufValue::I32(-1).as_u64(), None);
        assert_eq!(GgufValue::I64(-1).as_i32(), Some(-1));
        assert_eq!(GgufValue::U64(u64::MAX).as_u32(), None);
        assert_eq!(GgufValue::U64(u64::MAX).as_u64(), Some(u64::MAX));
        assert_eq!(GgufValue::U64(u64::MAX).as_i64(), None);
        assert_eq!(GgufValue::F32(1.0).as_u32(), None);
        assert_eq!(GgufValue::Bool(true).as_u32(), None);
        assert_eq!(GgufValue::F32(1.5).as_f64(), Some(1.5));
        assert_eq!(GgufValue::from("x").as_str(), Some("x"));
        assert_eq!(GgufValue::from(true).as_bool(), Some(true));
    }

    #[test]
    fn array_helpers() {
        let a = GgufArray::strings(["a", "b"]);
        assert_eq!(a.elem_type, GgufValueType::String);
        assert_eq!(a.as_strs(), Some(vec!["a", "b"]));
        assert_eq!(a.as_i64s(), None);
        assert_eq!(GgufArray::i32s([1, -2]).as_i64s(), Some(vec![1, -2]));
        assert_eq!(GgufArray::f32s([0.5]).as_f32s(), Some(vec![0.5]));
        assert!(GgufArray::u32s([]).is_empty());
        let v = GgufValue::from(GgufArray::u32s([3]));
        assert_eq!(v.value_type(), GgufValueType::Array);
        assert_eq!(v.as_array().map(GgufArray::len), Some(1));
    }
}
