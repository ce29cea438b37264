//! Lossless JSON encodings of SQLite values, for `POST /query` (D1-shaped) and base64 for
//! blobs (shared with the libSQL protocol).
//!
//! `/query` values, in `params` and in `results`:
//!
//! | SQLite | JSON |
//! | --- | --- |
//! | NULL | `null` |
//! | INTEGER within ±(2^53 − 1) | a number without a fraction: `42` |
//! | INTEGER beyond that | `{"integer": "9007199254740993"}` (requests may also send a bare number) |
//! | REAL | a number with a fraction or exponent: `1.5`, `3.0`, `1e300`; ±∞ as `{"real": "Infinity"}` |
//! | TEXT | a string |
//! | BLOB | `{"blob": "<base64>"}` |
//!
//! In requests, `true`/`false` are the integers 1/0 and `{"text": "..."}` is also text.

use rusqlite::types::Value;
use serde::ser::{SerializeSeq, Serializer};
use serde_json::{Map, Value as Json, json};

/// Largest integer a JSON number is guaranteed to carry exactly (JavaScript's safe range).
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
#[must_use]
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard or URL-safe base64, with or without padding.
///
/// # Errors
/// A character outside the alphabet, or a length no encoder produces.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.trim_end_matches('=').bytes().collect();
    if digits.len() % 4 == 1 {
        return Err("base64 text has an impossible length".into());
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n: u32 = 0;
        for (i, c) in chunk.iter().enumerate() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' | b'-' => 62,
                b'/' | b'_' => 63,
                _ => return Err(format!("{:?} is not a base64 character", *c as char)),
            };
            n |= u32::from(v) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}

/// A value as `/query` sends it back.
#[must_use]
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Integer(n) if n.unsigned_abs() <= MAX_SAFE_INTEGER as u64 => json!(n),
        Value::Integer(n) => json!({ "integer": n.to_string() }),
        Value::Real(f) if f.is_finite() => json!(f),
        Value::Real(f) => {
            json!({ "real": if f.is_nan() { "NaN".to_owned() } else if *f > 0.0 { "Infinity".to_owned() } else { "-Infinity".to_owned() } })
        }
        Value::Text(s) => Json::String(s.clone()),
        Value::Blob(b) => json!({ "blob": base64_encode(b) }),
    }
}

/// A value as `/query` accepts it.
///
/// # Errors
/// Anything that is not one of the documented encodings, as a message for the client.
pub fn from_json(json: &Json) -> Result<Value, String> {
    Ok(match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Integer(i64::from(*b)),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Integer(i)
            } else if n.is_u64() {
                return Err(format!("{n} is beyond SQLite's 64-bit integers"));
            } else {
                Value::Real(n.as_f64().ok_or_else(|| format!("{n} is not a number"))?)
            }
        }
        Json::String(s) => Value::Text(s.clone()),
        Json::Object(map) => tagged(map)?,
        Json::Array(_) => return Err("an array is not a SQLite value".into()),
    })
}

fn tagged(map: &Map<String, Json>) -> Result<Value, String> {
    let mut entries = map.iter();
    let (Some((tag, inner)), None) = (entries.next(), entries.next()) else {
        return Err("a tagged value has exactly one key: integer, real, text or blob".into());
    };
    let text = || {
        inner
            .as_str()
            .ok_or_else(|| format!("the value of {tag:?} must be a string"))
    };
    match tag.as_str() {
        "integer" => text()?
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("{inner} is not a 64-bit integer")),
        "real" => match text()? {
            "Infinity" => Ok(Value::Real(f64::INFINITY)),
            "-Infinity" => Ok(Value::Real(f64::NEG_INFINITY)),
            other => other
                .parse::<f64>()
                .map(Value::Real)
                .map_err(|_| format!("{other:?} is not a real number")),
        },
        "text" => text().map(|t| Value::Text(t.to_owned())),
        "blob" => base64_decode(text()?).map(Value::Blob),
        other => Err(format!(
            "unknown value tag {other:?}; use integer, real, text or blob"
        )),
    }
}

/// Serialises rows with [`to_json`], for `StatementResult`.
pub(crate) fn serialize_rows<S: Serializer>(rows: &[Vec<Value>], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(rows.len()))?;
    for row in rows {
        let row: Vec<Json> = row.iter().map(to_json).collect();
        seq.serialize_element(&row)?;
    }
    seq.end()
}

/// Reads rows written by [`serialize_rows`] (the Durable Object route sends results to the
/// worker this way).
pub(crate) fn deserialize_rows<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<Vec<Value>>, D::Error> {
    let rows: Vec<Vec<Json>> = serde::Deserialize::deserialize(d)?;
    rows.iter()
        .map(|row| row.iter().map(from_json).collect::<Result<Vec<_>, _>>())
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

/// Reads an integer written by [`serialize_integer`].
pub(crate) fn deserialize_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let json: Json = serde::Deserialize::deserialize(d)?;
    match from_json(&json).map_err(serde::de::Error::custom)? {
        Value::Integer(n) => Ok(n),
        other => Err(serde::de::Error::custom(format!(
            "{other:?} is not an integer"
        ))),
    }
}

/// Serialises an integer with [`to_json`] (a number, or `{"integer": ...}` beyond 2^53).
pub(crate) fn serialize_integer<S: Serializer>(n: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_some(&to_json(&Value::Integer(*n)))
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::testing::Rng;

    /// Base64 matches the standard's test vectors and round-trips random bytes.
    #[test]
    fn base64() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).unwrap(), plain.as_bytes());
        }
        let mut rng = Rng::new(7);
        for len in 0..64 {
            let bytes = rng.bytes(len);
            assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes);
        }
        assert!(base64_decode("a").is_err());
        assert!(base64_decode("ab!c").is_err());
    }

    /// Every value survives a trip through JSON text, including integers beyond 2^53 and
    /// reals that hold whole numbers.
    #[test]
    fn values_round_trip_through_json_text() {
        for v in [
            Value::Null,
            Value::Integer(0),
            Value::Integer(MAX_SAFE_INTEGER),
            Value::Integer(MAX_SAFE_INTEGER + 2),
            Value::Integer(i64::MIN),
            Value::Real(3.0),
            Value::Real(-0.1),
            Value::Real(1e300),
            Value::Real(f64::INFINITY),
            Value::Text(String::new()),
            Value::Text("{\"blob\":\"x\"}".into()),
            Value::Blob(vec![]),
            Value::Blob(vec![0, 1, 254, 255]),
        ] {
            let text = serde_json::to_string(&to_json(&v)).unwrap();
            let back: Json = serde_json::from_str(&text).unwrap();
            assert_eq!(from_json(&back).unwrap(), v, "{text}");
        }
        assert_eq!(
            to_json(&Value::Integer(MAX_SAFE_INTEGER + 2)),
            json!({"integer": "9007199254740993"})
        );
        assert_eq!(
            serde_json::to_string(&to_json(&Value::Real(3.0))).unwrap(),
            "3.0"
        );
        // A bare big number in a request is exact too.
        let big: Json = serde_json::from_str("9007199254740993").unwrap();
        assert_eq!(
            from_json(&big).unwrap(),
            Value::Integer(9_007_199_254_740_993)
        );
    }
}
