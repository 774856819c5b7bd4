//! Special-token ids, `add_*_token` flags, chat template and normalizer flags: a port of gguf-py's
//! `SpecialVocab` (the copy vendored with llama-cpp-python 0.3.36, `gguf-py/gguf/vocab.py`), so a
//! GGUF from r1q carries the same values, in the same order, as one from `convert_hf_to_gguf.py`.
//!
//! Comparisons between tokenizer_config entries and post-processor token strings are done on
//! JSON values, exactly like the Python (where an `AddedToken` dict never equals a string).

use std::path::Path;

use serde_json::{Map, Value};

use super::files::{err, Files};
use crate::error::Result;

/// A special-token kind as gguf-py names it, and the GGUF key its id goes to (`None`: gguf-py has
/// no writer for it, so it is never written).
struct Kind {
    typ: &'static str,
    id_key: Option<&'static str>,
    add_key: Option<&'static str>,
}

const fn kind(
    typ: &'static str,
    id_key: Option<&'static str>,
    add_key: Option<&'static str>,
) -> Kind {
    Kind {
        typ,
        id_key,
        add_key,
    }
}

/// gguf-py's `special_token_types` (plus `eot`/`eom`, which a `TemplateProcessing` may add).
const KINDS: [Kind; 9] = [
    kind(
        "bos",
        Some("tokenizer.ggml.bos_token_id"),
        Some("tokenizer.ggml.add_bos_token"),
    ),
    kind(
        "eos",
        Some("tokenizer.ggml.eos_token_id"),
        Some("tokenizer.ggml.add_eos_token"),
    ),
    kind("unk", Some("tokenizer.ggml.unknown_token_id"), None),
    kind(
        "sep",
        Some("tokenizer.ggml.seperator_token_id"),
        Some("tokenizer.ggml.add_sep_token"),
    ),
    kind("pad", Some("tokenizer.ggml.padding_token_id"), None),
    kind("cls", None, None),
    kind("mask", Some("tokenizer.ggml.mask_token_id"), None),
    kind("eot", Some("tokenizer.ggml.eot_token_id"), None),
    kind("eom", Some("tokenizer.ggml.eom_token_id"), None),
];

fn find_kind(typ: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.typ == typ)
}

/// The chat template(s) to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// One template → `tokenizer.chat_template`.
    Single(String),
    /// Named templates (`default` → `tokenizer.chat_template`, others →
    /// `tokenizer.chat_template.NAME` plus the `tokenizer.chat_templates` name list).
    Named(Vec<(String, String)>),
}

/// What `SpecialVocab` would write besides the merges, in its order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Special {
    /// (gguf-py type name, id), in the order they were found.
    pub ids: Vec<(&'static str, u64)>,
    /// (gguf-py type name, add flag), in the order they were set.
    pub add: Vec<(&'static str, bool)>,
    /// The chat template, if any.
    pub chat_template: Option<ChatTemplate>,
    /// `tokenizer.ggml.normalizer.lowercase`.
    pub normalizer_lowercase: Option<bool>,
    /// `tokenizer.ggml.normalizer.strip_accents`.
    pub normalizer_strip_accents: Option<bool>,
    /// The BOS text from tokenizer_config (for telling `deepseek-r1-qwen` from `qwen2`).
    pub bos_content: Option<String>,
}

impl Special {
    fn set_add(&mut self, typ: &'static str, v: bool) {
        match self.add.iter_mut().find(|(t, _)| *t == typ) {
            Some(slot) => slot.1 = v,
            None => self.add.push((typ, v)),
        }
    }

    fn setdefault_add(&mut self, typ: &'static str, v: bool) {
        if !self.has_add(typ) {
            self.add.push((typ, v));
        }
    }

    fn has_add(&self, typ: &str) -> bool {
        self.add.iter().any(|(t, _)| *t == typ)
    }

    fn set_id(&mut self, path: &Path, typ: &'static str, id: &Value) -> Result<()> {
        // Python: only ints count (lists such as `eos_token_id: [1, 2]` are skipped).
        if let Some(i) = id.as_i64() {
            if i < 0 {
                return Err(err(
                    path,
                    format!("invalid value for special token type {typ}: {i}"),
                ));
            }
        }
        let Some(id) = id.as_u64() else {
            return Ok(());
        };
        if !self.ids.iter().any(|(t, _)| *t == typ) {
            self.ids.push((typ, id));
        }
        Ok(())
    }

    /// The GGUF key/values for ids, flags, chat template and normalizer flags, in gguf-py's order
    /// (`SpecialVocab.add_to_gguf`, after the merges). Ids must be below `vocab_size`.
    pub fn entries(
        &self,
        path: &Path,
        vocab_size: usize,
    ) -> Result<Vec<(String, formats::gguf::GgufValue)>> {
        use formats::gguf::{GgufArray, GgufValue};
        let mut out = Vec::new();
        for &(typ, id) in &self.ids {
            let Some(key) = find_kind(typ).and_then(|k| k.id_key) else {
                continue;
            };
            let id32 = u32::try_from(id)
                .ok()
                .filter(|&i| (i as usize) < vocab_size)
                .ok_or_else(|| {
                    err(
                        path,
                        format!(
                            "{typ} token id {id} is outside the vocabulary (vocab_size {vocab_size})"
                        ),
                    )
                })?;
            out.push((key.to_owned(), GgufValue::U32(id32)));
        }
        for &(typ, v) in &self.add {
            if let Some(key) = find_kind(typ).and_then(|k| k.add_key) {
                out.push((key.to_owned(), GgufValue::Bool(v)));
            }
        }
        match &self.chat_template {
            None => {}
            Some(ChatTemplate::Single(t)) => {
                out.push(("tokenizer.chat_template".to_owned(), t.clone().into()));
            }
            Some(ChatTemplate::Named(list)) => {
                let mut default = None;
                let mut names: Vec<String> = Vec::new();
                for (name, template) in list {
                    if name == "default" {
                        default = Some(template);
                    } else {
                        if !names.contains(name) {
                            names.push(name.clone());
                        }
                        out.push((
                            format!("tokenizer.chat_template.{name}"),
                            template.clone().into(),
                        ));
                    }
                }
                if !names.is_empty() {
                    out.push((
                        "tokenizer.chat_templates".to_owned(),
                        GgufArray::strings(names).into(),
                    ));
                }
                if let Some(t) = default {
                    out.push(("tokenizer.chat_template".to_owned(), t.clone().into()));
                }
            }
        }
        if let Some(v) = self.normalizer_lowercase {
            out.push(("tokenizer.ggml.normalizer.lowercase".to_owned(), v.into()));
        }
        if let Some(v) = self.normalizer_strip_accents {
            out.push((
                "tokenizer.ggml.normalizer.strip_accents".to_owned(),
                v.into(),
            ));
        }
        Ok(out)
    }

    fn parse_normalizer(&mut self, n: &Value) {
        match n.get("type").and_then(Value::as_str) {
            Some("Lowercase") => self.normalizer_lowercase = Some(true),
            Some("StripAccents") => self.normalizer_strip_accents = Some(true),
            Some("BertNormalizer") => {
                if let Some(v) = n.get("lowercase") {
                    self.normalizer_lowercase = v.as_bool();
                }
                if let Some(v) = n.get("strip_accents") {
                    self.normalizer_strip_accents = v.as_bool();
                }
            }
            Some("Sequence") => {
                for m in n
                    .get("normalizers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    self.parse_normalizer(m);
                }
            }
            _ => {}
        }
    }
}

/// Python truthiness of a JSON value (`None`, `""`, `{}`, `[]`, `0`, `false` are false).
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
    }
}

/// `SpecialToken.id` of a template piece.
fn special_token_id(piece: Option<&Value>) -> Option<&Value> {
    piece?
        .get("SpecialToken")?
        .get("id")
        .filter(|v| truthy(Some(v)))
}

/// The text of a tokenizer_config special-token entry (a string or an `AddedToken` dict).
fn entry_content(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// Runs the `SpecialVocab` logic on the loaded files.
///
/// `add_bos_token`/`add_eos_token`: **deliberate parity decision.** A `ByteLevel` post-processor
/// (or a `Sequence` holding only `ByteLevel`, as in all three DeepSeek families) records
/// add_bos = add_eos = false, and the vendored `SpecialVocab` keeps the post-processor's value
/// when tokenizer_config.json disagrees ("opting for the latter"). So, like current llama.cpp, the
/// GGUF says `add_bos_token = false` for R1, R1-Distill-Qwen and R1-Distill-Llama even though their
/// tokenizer_config.json says `add_bos_token: true` (REFERENCE §4.5). The chat templates emit the
/// BOS themselves.
///
/// Ids come from tokenizer_config's `*_token` text looked up in `added_tokens` (first match, not
/// the BPE vocab — as gguf-py does), then from config.json's `*_token_id` for kinds still unset.
pub fn collect(files: &Files) -> Result<Special> {
    let mut s = Special::default();
    let tpath = &files.tokenizer_path;
    let tok = &files.tokenizer;
    s.parse_normalizer(&tok.normalizer);

    let mut tc: Option<Map<String, Value>> = files
        .tokenizer_config
        .as_ref()
        .and_then(Value::as_object)
        .cloned();
    let mut types: Vec<&'static str> = vec!["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

    let get = |tc: &Option<Map<String, Value>>, k: &str| -> Option<Value> {
        tc.as_ref().and_then(|m| m.get(k)).cloned()
    };
    let mut special_bos = get(&tc, "bos_token");
    let mut special_cls = get(&tc, "cls_token");
    let mut special_eos = get(&tc, "eos_token");
    let mut special_sep = get(&tc, "sep_token");
    let tc_truthy = |tc: &Option<Map<String, Value>>| tc.as_ref().is_some_and(|m| !m.is_empty());
    if !truthy(special_bos.as_ref()) && truthy(special_cls.as_ref()) && tc_truthy(&tc) {
        special_bos = special_cls.clone();
        if let (Some(m), Some(v)) = (tc.as_mut(), special_bos.clone()) {
            m.insert("bos_token".into(), v);
        }
    }
    if !truthy(special_eos.as_ref()) && truthy(special_sep.as_ref()) && tc_truthy(&tc) {
        special_eos = special_sep.clone();
        if let (Some(m), Some(v)) = (tc.as_mut(), special_eos.clone()) {
            m.insert("eos_token".into(), v);
        }
    }

    let pp = &tok.post_processor;
    if truthy(Some(pp)) {
        let processors: Vec<&Value> = match pp.get("processors").and_then(Value::as_array) {
            Some(list) => list.iter().collect(),
            None if pp.get("processors").is_some() => Vec::new(),
            None => vec![pp],
        };
        for p in processors {
            match p.get("type").and_then(Value::as_str) {
                Some("ByteLevel") => {
                    s.setdefault_add("bos", false);
                    s.setdefault_add("eos", false);
                }
                Some("RobertaProcessing") => {
                    s.set_add("bos", true);
                    s.set_add("eos", true);
                    s.set_add("sep", true);
                    let first_of = |key: &str, fallback: &Option<Value>| -> Option<Value> {
                        match p.get(key) {
                            Some(v) => v.get(0).cloned(),
                            None => fallback.clone(),
                        }
                    };
                    if !truthy(special_cls.as_ref()) && tc_truthy(&tc) {
                        special_cls = first_of("cls", &special_bos);
                        if let Some(m) = tc.as_mut() {
                            m.insert(
                                "cls_token".into(),
                                special_cls.clone().unwrap_or(Value::Null),
                            );
                        }
                    }
                    if !truthy(special_sep.as_ref()) && tc_truthy(&tc) {
                        special_sep = first_of("sep", &special_eos);
                        if let Some(m) = tc.as_mut() {
                            m.insert(
                                "sep_token".into(),
                                special_sep.clone().unwrap_or(Value::Null),
                            );
                        }
                    }
                }
                Some("TemplateProcessing") => template_processing(
                    &mut s,
                    p,
                    &mut tc,
                    &mut types,
                    [
                        &mut special_bos,
                        &mut special_cls,
                        &mut special_eos,
                        &mut special_sep,
                    ],
                ),
                _ => {}
            }
        }
    }

    if tc_truthy(&tc) {
        let tc_map = tc.as_ref().cloned().unwrap_or_default();
        s.chat_template = chat_template(files, &tc_map)?;
        for typ in types.iter().copied() {
            if let Some(Value::Bool(v)) = tc_map.get(&format!("add_{typ}_token")) {
                // Post-processor value wins on conflict (see the doc comment).
                s.setdefault_add(typ, *v);
            }
            let Some(content) = entry_content(tc_map.get(&format!("{typ}_token"))) else {
                continue;
            };
            if typ == "bos" {
                s.bos_content = Some(content.to_owned());
            }
            if let Some(t) = tok.added_tokens.iter().find(|t| t.content == content) {
                s.set_id(&files.config_path, typ, &Value::from(t.id))?;
            }
        }
    }

    if let Some(cfg) = &files.model_config {
        for typ in types.iter().copied() {
            let key = format!("{typ}_token_id");
            let v = cfg
                .get(&key)
                .filter(|v| !v.is_null())
                .or_else(|| cfg.get("text_config").and_then(|t| t.get(&key)));
            if let Some(v) = v {
                s.set_id(tpath, typ, v)?;
            }
        }
    }
    Ok(s)
}

/// gguf-py's "crude parsing" of a `TemplateProcessing` post-processor: a leading special token
/// equal to BOS/CLS means add_bos; a trailing one equal to EOS means add_eos (a different trailing
/// token becomes the EOS, the old EOS the EOT/EOM); the pair template decides add_sep.
fn template_processing(
    s: &mut Special,
    p: &Value,
    tc: &mut Option<Map<String, Value>>,
    types: &mut Vec<&'static str>,
    specials: [&mut Option<Value>; 4],
) {
    let [special_bos, special_cls, special_eos, special_sep] = specials;
    let empty = Vec::new();
    let single = p.get("single").and_then(Value::as_array).unwrap_or(&empty);
    let pair = p.get("pair").and_then(Value::as_array).unwrap_or(&empty);
    let tc_some = tc.as_ref().is_some_and(|m| !m.is_empty());
    let mut special_first: Option<Value> = None;
    let mut special_last: Option<Value> = None;
    if single.len() > 1 {
        special_first = special_token_id(single.first()).cloned();
        if let Some(first) = &special_first {
            let is_bos_or_cls = |b: &Option<Value>, c: &Option<Value>| {
                b.as_ref() == Some(first) || c.as_ref() == Some(first)
            };
            if !tc_some {
                *special_bos = Some(first.clone());
            } else if !is_bos_or_cls(special_bos, special_cls) {
                if !truthy(special_bos.as_ref()) {
                    *special_bos = Some(first.clone());
                    if let Some(m) = tc.as_mut() {
                        m.insert("bos_token".into(), first.clone());
                    }
                }
                if !truthy(special_cls.as_ref()) {
                    *special_cls = Some(first.clone());
                    if let Some(m) = tc.as_mut() {
                        m.insert("cls_token".into(), first.clone());
                    }
                }
            }
            s.set_add("bos", is_bos_or_cls(special_bos, special_cls));
        }
        special_last = special_token_id(single.last()).cloned();
        if let Some(last) = &special_last {
            if !tc_some {
                *special_eos = Some(last.clone());
            } else if special_eos.as_ref() != Some(last) {
                let old_eos = special_eos.clone().unwrap_or(Value::Null);
                if !types.contains(&"eot") {
                    types.push("eot");
                    if let Some(m) = tc.as_mut() {
                        m.insert("eot_token".into(), old_eos);
                    }
                } else if !types.contains(&"eom") {
                    types.push("eom");
                    if let Some(m) = tc.as_mut() {
                        m.insert("eom_token".into(), old_eos);
                    }
                }
                *special_eos = Some(last.clone());
                if let Some(m) = tc.as_mut() {
                    m.insert("eos_token".into(), last.clone());
                }
            }
            s.set_add("eos", special_eos.as_ref() == Some(last));
        }
    }
    if pair.is_empty() {
        return;
    }
    let start = usize::from(
        special_first.is_some() && special_token_id(pair.first()) == special_first.as_ref(),
    );
    let stop = usize::from(
        special_last.is_some() && special_token_id(pair.last()) == special_last.as_ref(),
    );
    let Some(inner) = pair.get(start..pair.len().saturating_sub(stop).max(start)) else {
        return;
    };
    if inner.is_empty() {
        return;
    }
    let seq_id = |v: Option<&Value>| {
        v.and_then(|x| x.get("Sequence"))
            .and_then(|x| x.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if seq_id(inner.first()).as_deref() != Some("A") || seq_id(inner.last()).as_deref() != Some("B")
    {
        return;
    }
    let middle = match inner.get(1..inner.len().saturating_sub(1)) {
        Some(m) if !m.is_empty() => m,
        _ => return,
    };
    let is_sep_or_eos =
        |v: &Value| special_sep.as_ref() == Some(v) || special_eos.as_ref() == Some(v);
    let mut add_sep = false;
    if let Some(e) = special_token_id(middle.first()) {
        if is_sep_or_eos(e) && special_last.is_none() {
            add_sep = true;
        }
    }
    if middle.len() == 2 {
        if let Some(e) = special_token_id(middle.get(1)) {
            if is_sep_or_eos(e) {
                add_sep = true;
            }
        }
    }
    s.set_add("sep", add_sep);
    if add_sep && !truthy(special_sep.as_ref()) && tc_some {
        if let Some(m) = tc.as_mut() {
            m.insert(
                "sep_token".into(),
                special_eos.clone().unwrap_or(Value::Null),
            );
        }
    }
}

/// tokenizer_config's `chat_template`, else `chat_template.jinja` (with
/// `additional_chat_templates/*.jinja` as named ones), else `chat_template.json`.
fn chat_template(files: &Files, tc: &Map<String, Value>) -> Result<Option<ChatTemplate>> {
    let value = match tc.get("chat_template") {
        Some(v) => v.clone(),
        None => match alt_chat_template(files)? {
            Some(t) => return Ok(Some(t)),
            None => Value::Null,
        },
    };
    Ok(template_from_value(&value))
}

fn template_from_value(v: &Value) -> Option<ChatTemplate> {
    match v {
        Value::String(s) => Some(ChatTemplate::Single(s.clone())),
        Value::Array(list) => {
            let named = list
                .iter()
                .filter_map(|c| {
                    let name: String = c
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .chars()
                        .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
                        .collect();
                    let template = c.get("template")?.as_str()?;
                    (!name.is_empty()).then(|| (name, template.to_owned()))
                })
                .collect();
            Some(ChatTemplate::Named(named))
        }
        _ => None,
    }
}

fn alt_chat_template(files: &Files) -> Result<Option<ChatTemplate>> {
    let Some(dir) = files.tokenizer_path.parent() else {
        return Ok(None);
    };
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|error| crate::ConvertError::Io {
            path: p.to_path_buf(),
            error,
        })
    };
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let default = read(&jinja)?;
        let mut extra: Vec<(String, String)> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir.join("additional_chat_templates")) {
            let mut paths: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jinja") && p.is_file())
                .collect();
            paths.sort();
            for p in paths {
                let stem = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                extra.push((stem, read(&p)?));
            }
        }
        if extra.is_empty() {
            return Ok(Some(ChatTemplate::Single(default)));
        }
        let mut list = vec![serde_json::json!({"name": "default", "template": default})];
        list.extend(
            extra
                .into_iter()
                .map(|(n, t)| serde_json::json!({"name": n, "template": t})),
        );
        return Ok(template_from_value(&Value::Array(list)));
    }
    let json = dir.join("chat_template.json");
    if json.is_file() {
        let text = read(&json)?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| err(&json, format!("not valid JSON: {e}")))?;
        return Ok(v.get("chat_template").and_then(template_from_value));
    }
    Ok(None)
}
