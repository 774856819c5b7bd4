//! Helpers shared by the tokenizer test files: look up keys in the metadata list.

#![allow(dead_code)]

use formats::gguf::{GgufValue, GgufValueType};

/// The value of `key`, panicking (test failure) with the key name when absent.
pub fn get<'a>(md: &'a [(String, GgufValue)], key: &str) -> &'a GgufValue {
    md.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("metadata has no {key}"))
}

/// Whether `key` is present.
pub fn has(md: &[(String, GgufValue)], key: &str) -> bool {
    md.iter().any(|(k, _)| k == key)
}

/// A STRING value.
pub fn string<'a>(md: &'a [(String, GgufValue)], key: &str) -> &'a str {
    get(md, key)
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string"))
}

/// A UINT32 value (the exact type llama.cpp requires for token ids).
pub fn u32_of(md: &[(String, GgufValue)], key: &str) -> u32 {
    match get(md, key) {
        GgufValue::U32(v) => *v,
        other => panic!("{key} is {other:?}, expected UINT32"),
    }
}

/// A BOOL value.
pub fn bool_of(md: &[(String, GgufValue)], key: &str) -> bool {
    match get(md, key) {
        GgufValue::Bool(v) => *v,
        other => panic!("{key} is {other:?}, expected BOOL"),
    }
}

/// A STRING array.
pub fn strings(md: &[(String, GgufValue)], key: &str) -> Vec<String> {
    let a = get(md, key)
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array"));
    assert_eq!(a.elem_type, GgufValueType::String, "{key} element type");
    a.as_strs()
        .unwrap_or_else(|| panic!("{key} has non-string elements"))
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// `tokenizer.ggml.token_type`, checked to be an INT32 array.
pub fn token_types(md: &[(String, GgufValue)]) -> Vec<i32> {
    let a = get(md, "tokenizer.ggml.token_type")
        .as_array()
        .expect("token_type is an array");
    assert_eq!(a.elem_type, GgufValueType::I32, "token_type element type");
    a.values
        .iter()
        .map(|v| match v {
            GgufValue::I32(t) => *t,
            other => panic!("token_type element {other:?}"),
        })
        .collect()
}

/// The keys in order.
pub fn keys(md: &[(String, GgufValue)]) -> Vec<&str> {
    md.iter().map(|(k, _)| k.as_str()).collect()
}
