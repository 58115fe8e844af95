//! JSON objects read with every member's exact text, and the canonical string
//! that `sign` covers (README, "Signature").
//!
//! The canonical string is every top-level field except `sign` and nulls, sorted
//! by name (byte order), written `name=value` and joined with `&`. Strings are
//! written as-is, numbers exactly as their JSON text, booleans as `true`/`false`,
//! arrays and objects as compact JSON with sorted keys (numbers inside them
//! exact too). Keeping the raw text of every member is what makes amounts and
//! the signature exact: nothing passes through a float.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// Why a body is not a usable JSON object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonError {
    /// Not JSON, or not an object at the top.
    #[error("body is not a JSON object: {0}")]
    NotAnObject(String),
    /// The same name twice in one object; refused so that what is signed and what
    /// is read can never differ.
    #[error("field `{0}` appears twice")]
    DuplicateField(String),
    /// Arrays and objects nested deeper than [`MAX_DEPTH`]: no message needs
    /// it, and walking it would cost stack and time out of proportion.
    #[error("body nests arrays and objects deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// How deep arrays and objects may nest in a body (a batch payment needs 3).
pub const MAX_DEPTH: usize = 32;

/// Whether `body` nests `[`/`{` deeper than [`MAX_DEPTH`] outside strings; a
/// linear scan, so that nothing recursive ever sees such a body.
fn too_deep(body: &[u8]) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A JSON object with its members' raw text, sorted by name.
#[derive(Debug)]
pub struct RawObject {
    members: Vec<(String, Box<RawValue>)>,
}

/// An object's members in document order, duplicates and all.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<(String, Box<RawValue>)>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(entry);
                }
                Ok(members)
            }
        }
        d.deserialize_map(V).map(Members)
    }
}

impl RawObject {
    /// Reads a body that must be one JSON object (and nothing after it).
    pub fn parse(body: &[u8]) -> Result<Self, CanonError> {
        let (obj, duplicates) = Self::parse_with_duplicates(body)?;
        match duplicates.into_iter().next() {
            Some(name) => Err(CanonError::DuplicateField(name)),
            None => Ok(obj),
        }
    }

    /// Reads a JSON object that may name a member twice: for answering such
    /// a body, never for acting on it. Returns the object without its
    /// ambiguous members (a name given twice with different values is
    /// dropped; twice with the same value is kept once) and the names that
    /// appeared more than once.
    pub fn parse_with_duplicates(body: &[u8]) -> Result<(Self, Vec<String>), CanonError> {
        if too_deep(body) {
            return Err(CanonError::TooDeep);
        }
        let Members(mut members) = serde_json::from_slice(body)
            .map_err(|e: serde_json::Error| CanonError::NotAnObject(e.to_string()))?;
        // Stable: equal names keep their document order.
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let mut duplicates: Vec<String> = Vec::new();
        let mut kept: Vec<(String, Box<RawValue>)> = Vec::with_capacity(members.len());
        let mut members = members.into_iter().peekable();
        while let Some(first) = members.next() {
            let mut same = true;
            let mut twice = false;
            while let Some(next) = members.next_if(|m| m.0 == first.0) {
                twice = true;
                same &= next.1.get().trim() == first.1.get().trim();
            }
            if twice {
                duplicates.push(first.0.clone());
            }
            if same {
                kept.push(first);
            }
        }
        Ok((Self { members: kept }, duplicates))
    }

    /// The raw text of member `name`, if present.
    pub fn get(&self, name: &str) -> Option<&RawValue> {
        self.members
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| &*self.members[i].1)
    }

    /// Members in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.members.iter().map(|(k, v)| (k.as_str(), &**v))
    }

    /// The canonical string of this object, as signed.
    pub fn canonical_string(&self) -> Result<String, CanonError> {
        let mut out = String::with_capacity(256);
        for (name, value) in self.iter() {
            let text = value.get().trim();
            if name == "sign" || text == "null" {
                continue;
            }
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(name);
            out.push('=');
            if text.starts_with('"') {
                let s: String = serde_json::from_str(text)
                    .map_err(|e| CanonError::NotAnObject(e.to_string()))?;
                out.push_str(&s);
            } else {
                compact(value, &mut out)?;
            }
        }
        Ok(out)
    }
}

/// Writes `value` as compact JSON with sorted object keys and exact numbers.
fn compact(value: &RawValue, out: &mut String) -> Result<(), CanonError> {
    let text = value.get().trim();
    let bad = |e: serde_json::Error| CanonError::NotAnObject(e.to_string());
    match text.as_bytes().first() {
        Some(b'{') => {
            let obj = RawObject::parse(text.as_bytes())?;
            out.push('{');
            for (i, (k, v)) in obj.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).map_err(bad)?);
                out.push(':');
                compact(v, out)?;
            }
            out.push('}');
        }
        Some(b'[') => {
            let items: Vec<Box<RawValue>> = serde_json::from_str(text).map_err(bad)?;
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                compact(v, out)?;
            }
            out.push(']');
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(text).map_err(bad)?;
            out.push_str(&serde_json::to_string(&s).map_err(bad)?);
        }
        // Numbers, booleans and null: their text is already canonical.
        _ => out.push_str(text),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(body: &str) -> String {
        RawObject::parse(body.as_bytes())
            .and_then(|o| o.canonical_string())
            .expect("canonical string")
    }

    #[test]
    fn sorts_skips_sign_and_nulls_and_keeps_number_text() {
        let body = r#"{"timestamp": 1758610297, "symbol":"USDT", "sign":"x", "memo": null,
                      "amount": 50.250, "chain":"ETH", "ok": true}"#;
        assert_eq!(
            canon(body),
            "amount=50.250&chain=ETH&ok=true&symbol=USDT&timestamp=1758610297"
        );
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        // Deep enough to overflow a thread's stack if anything recursed on it.
        let deep = format!(
            r#"{{"address":"0x1","a":{}1{}}}"#,
            "[".repeat(200_000),
            "]".repeat(200_000)
        );
        assert_eq!(
            RawObject::parse(deep.as_bytes()).map(|_| ()),
            Err(CanonError::TooDeep)
        );
        let at_limit = format!(
            r#"{{"a":{}1{}}}"#,
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(RawObject::parse(at_limit.as_bytes()).is_ok());
        let over = format!(
            r#"{{"a":{}1{}}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert_eq!(
            RawObject::parse(over.as_bytes()).map(|_| ()),
            Err(CanonError::TooDeep)
        );
        // Brackets inside strings (escaped quotes too) do not count.
        let text = format!(r#"{{"a":"\"{}"}}"#, "[".repeat(1_000));
        assert!(RawObject::parse(text.as_bytes()).is_ok());
    }

    #[test]
    fn nested_values_are_compact_and_sorted() {
        let body = r#"{"transactions": [ {"to_address": "0xA", "amount": 1.50, "order_id": "o\"1", "x": null} ],
                      "queue_id": "q"}"#;
        assert_eq!(
            canon(body),
            r#"queue_id=q&transactions=[{"amount":1.50,"order_id":"o\"1","to_address":"0xA","x":null}]"#
        );
    }

    #[test]
    fn strings_are_unescaped_at_the_top_level() {
        assert_eq!(canon(r#"{"a":"caf\u00e9 \"x\""}"#), "a=café \"x\"");
    }

    #[test]
    fn refuses_duplicates_and_non_objects() {
        assert_eq!(
            RawObject::parse(br#"{"a":1,"a":2}"#).err(),
            Some(CanonError::DuplicateField("a".into()))
        );
        assert!(matches!(
            RawObject::parse(br#"{"o":{"k":1,"k":2}}"#).and_then(|o| o.canonical_string()),
            Err(CanonError::DuplicateField(_))
        ));
        for bad in [
            &b"[1]"[..],
            b"42",
            b"\"s\"",
            b"{",
            b"",
            b"{} x",
            b"\xff\xfe",
        ] {
            assert!(matches!(
                RawObject::parse(bad),
                Err(CanonError::NotAnObject(_))
            ));
        }
    }

    #[test]
    fn get_finds_members() {
        let o = RawObject::parse(br#"{"b":2,"a":"x"}"#).expect("parses");
        assert_eq!(o.get("a").map(|v| v.get()), Some("\"x\""));
        assert_eq!(o.get("b").map(|v| v.get()), Some("2"));
        assert!(o.get("c").is_none());
    }
}
