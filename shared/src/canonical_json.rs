//! Canonical JSON: UTF-8, no insignificant whitespace, object keys sorted by their UTF-8 bytes, strings escaped
//! the way `serde_json` escapes them, numbers written as `serde_json` writes them (storesync bodies hold integers
//! only). It is written by hand rather than relying on `serde_json::Map` ordering, because a single crate in the
//! build enabling `serde_json/preserve_order` would silently change every hash.
//!
//! A leaf of the crate: the event rules ([`crate::event`]) and the hash chain ([`crate::canonical`]) both encode
//! through it.

use serde_json::Value;

/// Writes `value` as canonical JSON.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, k);
                out.push(b':');
                write_value(out, v);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, v);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(out, s),
        // Null, booleans and numbers have exactly one serde_json rendering.
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's string escaping is deterministic (short escapes, \u00XX for other control characters).
    out.extend_from_slice(Value::String(s.to_owned()).to_string().as_bytes());
}
