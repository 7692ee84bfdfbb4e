//! The configuration file's JSON Schema, generated (schemars) from the same types that read
//! the file ([`super::file`]), their doc comments as descriptions: `ballast schema` prints it,
//! `conf/ballast.schema.json` is a copy the tests keep current, and `conf/*.yaml` name it for
//! YAML language servers (`# yaml-language-server: $schema=ballast.schema.json`).
//! [`explain`] answers `ballast check --explain KEY` from it.
//!
//! The value types that parse text (durations, addresses, CIDRs, rates, payloads) describe
//! their forms here; the ranges of bounded integers come from their type.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;

use super::file::{
    Address, BindAddress, Bounded, BoundedDuration, Cidr, FileConfig, Matcher, Payload,
    PositiveDuration, RateText, VersionText,
};

/// A string schema with `pattern` and `description`, inlined where used.
fn text(pattern: &str, description: &str) -> Schema {
    json_schema!({ "type": "string", "pattern": pattern, "description": description })
}

const DURATION: &str = r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d)\s*$";

macro_rules! inline_schema {
    ($t:ty, $name:literal, $body:expr) => {
        impl JsonSchema for $t {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                $body
            }
        }
    };
}

inline_schema!(
    PositiveDuration,
    "PositiveDuration",
    text(
        DURATION,
        "A duration above zero and at most 30 days: 500ms, 2s, 5m, 1h, 1d."
    )
);
inline_schema!(
    BoundedDuration,
    "BoundedDuration",
    text(
        DURATION,
        "A duration from 0s to 30 days: 0s, 500ms, 2s, 5m, 1h."
    )
);
inline_schema!(
    Address,
    "Address",
    json_schema!({
        "type": "string",
        "description": "ip:port ([ipv6]:port) or host:port, resolved once at load.",
        "pattern": r"^.+:[0-9]{1,5}$"
    })
);
inline_schema!(
    BindAddress,
    "BindAddress",
    json_schema!({
        "type": "string",
        "description": "ip:port ([ipv6]:port) or host:port, resolved once at load; :port or *:port for every IPv4 address (0.0.0.0).",
        "pattern": r"^.*:[0-9]{1,5}$"
    })
);
inline_schema!(
    Cidr,
    "Cidr",
    json_schema!({
        "type": "string",
        "description": "A network in CIDR notation (10.0.0.0/8, 2001:db8::/32) or one address."
    })
);
inline_schema!(
    RateText,
    "Rate",
    text(
        r"^\s*[0-9]+\s*/\s*(s|m|min)\s*$",
        "A rate: 20/s or 600/m (1 to 1000000 per period)."
    )
);
inline_schema!(
    VersionText,
    "TlsVersion",
    json_schema!({
        "description": "A TLS version: 1.2 or 1.3.",
        "enum": ["1.2", "1.3", 1.2, 1.3]
    })
);
inline_schema!(
    Payload,
    "Payload",
    json_schema!({
        "description": "Bytes: text, or {hex: \"70 69 6e 67\"} (spaces ignored).",
        "anyOf": [
            { "type": "string" },
            { "type": "object", "properties": { "hex": { "type": "string" } },
              "required": ["hex"], "additionalProperties": false }
        ]
    })
);
inline_schema!(
    Matcher,
    "Matcher",
    json_schema!({
        "description": "Bytes the reply must contain: text, {hex: \"…\"}, or {regex: \"…\"}.",
        "anyOf": [
            { "type": "string" },
            { "type": "object", "properties": { "hex": { "type": "string" } },
              "required": ["hex"], "additionalProperties": false },
            { "type": "object", "properties": { "regex": { "type": "string" } },
              "required": ["regex"], "additionalProperties": false }
        ]
    })
);

impl<const MIN: u64, const MAX: u64> JsonSchema for Bounded<MIN, MAX> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        format!("Bounded_{MIN}_{MAX}").into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "integer", "minimum": MIN, "maximum": MAX })
    }
}

/// The configuration file's JSON Schema (draft-07, which YAML language servers read), as a
/// JSON value.
pub fn schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<FileConfig>();
    schema.insert("title".into(), "Ballast configuration file".into());
    let mut value = schema.to_value();
    tidy(&mut value);
    value
}

/// Descriptions as an editor shows them: rustdoc links (`` [`x`] ``) as plain code, wrapped
/// lines joined.
fn tidy(value: &mut Value) {
    let link = regex::Regex::new(r"\[(`[^`]+`)\](\([^)]*\))?").expect("a valid pattern");
    tidy_with(value, &link);
}

fn tidy_with(value: &mut Value, link: &regex::Regex) {
    match value {
        Value::Object(o) => {
            for (k, v) in o.iter_mut() {
                match v {
                    Value::String(d) if k == "description" => {
                        *d = link.replace_all(&d.replace('\n', " "), "$1").into_owned();
                    }
                    v => tidy_with(v, link),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| tidy_with(v, link)),
        _ => {}
    }
}

/// `ballast check --explain KEY`: what `KEY` (a dotted path such as
/// `listeners.tls.min_version` or `target_groups.health_check`; `.` for the top level) takes
/// and means, from [`schema`]: its description, its form (type, values, range, pattern) and,
/// for a section, its keys with the first sentence of each.
///
/// # Errors
/// An unknown key, naming the keys that exist where it was looked for.
pub fn explain(key: &str) -> Result<String, String> {
    let root = schema();
    let defs = root.get("definitions").cloned().unwrap_or(Value::Null);
    let mut node = resolve(&root, &defs);
    let mut walked = Vec::new();
    for part in key.split('.').filter(|p| !p.is_empty()) {
        let section = section(&node, &defs);
        let props = section.get("properties").and_then(Value::as_object);
        let Some(next) = props.and_then(|p| p.get(part)) else {
            let here = if walked.is_empty() {
                "the top level".to_string()
            } else {
                walked.join(".")
            };
            let known: Vec<&str> = props
                .map(|p| p.keys().map(String::as_str).collect())
                .unwrap_or_default();
            return Err(if known.is_empty() {
                format!("`{key}`: {here} has no keys")
            } else {
                format!(
                    "`{key}`: no key `{part}` in {here}; it has: {}",
                    known.join(", ")
                )
            });
        };
        walked.push(part.to_string());
        node = resolve(next, &defs);
    }
    let mut out = String::new();
    let name = if walked.is_empty() {
        "(top level)".to_string()
    } else {
        walked.join(".")
    };
    out += &format!("{name}\n");
    if let Some(d) = node.get("description").and_then(Value::as_str) {
        out += &format!("  {}\n", d.replace('\n', " "));
    }
    out += &format!("  form: {}\n", form(&node));
    let section = section(&node, &defs);
    if let Some(props) = section.get("properties").and_then(Value::as_object) {
        let required: Vec<&str> = section
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out += "  keys:\n";
        for (k, v) in props {
            let v = resolve(v, &defs);
            let first = v
                .get("description")
                .and_then(Value::as_str)
                .map(|d| d.replace('\n', " "))
                .map(|d| {
                    d.split(". ")
                        .next()
                        .unwrap_or("")
                        .trim_end_matches('.')
                        .to_string()
                })
                .unwrap_or_default();
            let req = if required.contains(&k.as_str()) {
                " (required)"
            } else {
                ""
            };
            out += &format!("    {k}{req}: {first}\n");
        }
    }
    Ok(out)
}

/// Every key of the file, depth first in the file's order: `(dotted path, form,
/// description)`, the top level's keys first (for the manual page's CONFIGURATION section).
/// The same text as [`explain`], from the same schema.
pub fn reference() -> Vec<(String, String, String)> {
    let root = schema();
    let defs = root.get("definitions").cloned().unwrap_or(Value::Null);
    let mut out = Vec::new();
    walk(&resolve(&root, &defs), &defs, "", 0, &mut out);
    out
}

fn walk(
    node: &Value,
    defs: &Value,
    path: &str,
    depth: usize,
    out: &mut Vec<(String, String, String)>,
) {
    // The file is at most five sections deep; the bound keeps a recursive type finite.
    let node = section(node, defs);
    let Some(props) = node
        .get("properties")
        .and_then(Value::as_object)
        .filter(|_| depth < 6)
    else {
        return;
    };
    for (k, v) in props {
        let v = resolve(v, defs);
        let key = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        let description = v
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .replace('\n', " ");
        out.push((key.clone(), form(&v), description));
        walk(&v, defs, &key, depth + 1, out);
    }
}

/// The section `node` is, or the section among its alternatives (a key that takes a string
/// or a section, as `access_log`); `node` itself when it has no section form.
fn section(node: &Value, defs: &Value) -> Value {
    if node.get("properties").is_some() {
        return node.clone();
    }
    node.get("anyOf")
        .or_else(|| node.get("oneOf"))
        .and_then(Value::as_array)
        .and_then(|alts| {
            alts.iter()
                .map(|a| {
                    // A documented alternative wraps its reference in a one-item `allOf`.
                    let one = a
                        .get("allOf")
                        .and_then(Value::as_array)
                        .and_then(|all| all.first());
                    resolve(one.unwrap_or(a), defs)
                })
                .find(|a| a.get("properties").is_some())
        })
        .unwrap_or_else(|| node.clone())
}

/// `schema` with `$ref`s followed and `Option`'s null alternative dropped; an array's items
/// stand for the array (a key inside `listeners` is a key of each listener), but the
/// array's own description is kept.
fn resolve(schema: &Value, defs: &Value) -> Value {
    let mut s = schema.clone();
    for _ in 0..8 {
        let description = s.get("description").cloned();
        let next = if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            defs.get(r.trim_start_matches("#/definitions/")).cloned()
        } else if let Some(alts) = s.get("anyOf").and_then(Value::as_array) {
            let real: Vec<&Value> = alts
                .iter()
                .filter(|a| a.get("type") != Some(&"null".into()))
                .collect();
            (real.len() == 1 && alts.len() == 2).then(|| real[0].clone())
        } else if s.get("type") == Some(&"array".into()) {
            s.get("items").cloned().map(|mut items| {
                if let Value::Object(o) = &mut items {
                    o.insert("x-list".into(), true.into());
                }
                items
            })
        } else {
            None
        };
        let Some(mut next) = next else { break };
        if let (Some(d), Value::Object(o)) = (description, &mut next) {
            o.insert("description".into(), d);
        }
        s = next;
    }
    s
}

/// A one-line form of `schema`: `a list of` …, type, enum values, range, pattern.
fn form(schema: &Value) -> String {
    let mut parts = Vec::new();
    if schema.get("x-list").is_some() {
        parts.push("a list of".to_string());
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let mut v: Vec<String> = values
            .iter()
            .filter(|v| !v.is_null())
            .map(|v| v.as_str().map_or(v.to_string(), str::to_string))
            .collect();
        // `Option<enum>` repeats the values (a string and a number for a TLS version).
        let mut seen = std::collections::HashSet::new();
        v.retain(|x| seen.insert(x.clone()));
        parts.push(format!("one of {}", v.join(" | ")));
    } else if let Some(t) = schema.get("type") {
        let t = match t {
            Value::Array(ts) => ts
                .iter()
                .filter(|t| *t != "null")
                .map(|t| t.as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(" or "),
            t => t.as_str().unwrap_or("?").to_string(),
        };
        parts.push(if t == "object" {
            "a section (keys below)".into()
        } else {
            t
        });
    } else if let Some(alts) = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
    {
        // An enum whose variants have docs comes as one `const` (or one-value `enum`) each.
        let values: Option<Vec<String>> = alts
            .iter()
            .filter(|a| a.get("type") != Some(&"null".into()))
            .map(|a| {
                let one = a.get("const").or_else(|| {
                    a.get("enum")
                        .and_then(Value::as_array)
                        .filter(|e| e.len() == 1)
                        .and_then(|e| e.first())
                })?;
                Some(one.as_str().map_or(one.to_string(), str::to_string))
            })
            .collect();
        parts.push(match values {
            Some(v) if !v.is_empty() => format!("one of {}", v.join(" | ")),
            _ => "one of several forms (see the description)".into(),
        });
    }
    match (schema.get("minimum"), schema.get("maximum")) {
        (Some(lo), Some(hi)) => parts.push(format!("from {lo} to {hi}")),
        (Some(lo), None) => parts.push(format!("at least {lo}")),
        _ => {}
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        parts.push(format!("matching {p}"));
    }
    parts.join(", ")
}
