//! Value types with a rule attached (a percentage, a duration, a JSON object, a
//! timestamp). Each checks its rule when it is built, from JSON or from Rust,
//! so the HTTP API and the Rust emit helpers cannot disagree about what is
//! valid.
//!
//! Numbers and objects keep the JSON text they arrived as: a backend that sends
//! `"progress": 50` has its subscribers see `50`, not `50.0`, and a `result`
//! object reaches them byte for byte, key order included, without being parsed
//! into a tree and printed again.
//!
//! A value that breaks its rule is refused with a [`ValueError`], worded for
//! the client that sent it; the schema reader places it at the field it was
//! found in.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use serde_json::{Number, value::RawValue};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Why a value was refused: each variant is one rule of this module.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("must be a finite number, got {0}")]
    NotFinite(f64),
    #[error("must be a number from 0 to 100, got {0}")]
    NotAPercent(Number),
    #[error("must be a non-negative number of milliseconds, got {0}")]
    NegativeMillis(Number),
    #[error("must be a JSON object, got {0}")]
    NotAnObject(JsonKind),
    #[error("must be an ISO 8601 date-time such as 2026-01-31T12:00:00.000Z, got {0:?}")]
    NotATimestamp(String),
}

/// The JSON type of a value, for refusals that say what arrived instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Object,
    Array,
    String,
    Boolean,
    Null,
    Number,
}

impl JsonKind {
    /// The type of well-formed JSON text, told by its first character.
    pub fn of_text(text: &str) -> Self {
        match text.trim_start().as_bytes().first() {
            Some(b'{') => Self::Object,
            Some(b'[') => Self::Array,
            Some(b'"') => Self::String,
            Some(b't' | b'f') => Self::Boolean,
            Some(b'n') => Self::Null,
            _ => Self::Number,
        }
    }

    pub fn of_value(value: &serde_json::Value) -> Self {
        match value {
            serde_json::Value::Object(_) => Self::Object,
            serde_json::Value::Array(_) => Self::Array,
            serde_json::Value::String(_) => Self::String,
            serde_json::Value::Bool(_) => Self::Boolean,
            serde_json::Value::Null => Self::Null,
            serde_json::Value::Number(_) => Self::Number,
        }
    }
}

impl fmt::Display for JsonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Object => "an object",
            Self::Array => "an array",
            Self::String => "a string",
            Self::Boolean => "a boolean",
            Self::Null => "null",
            Self::Number => "a number",
        })
    }
}

/// A number from 0 to 100.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Number", into = "Number")]
pub struct Percent(Number);

impl Percent {
    pub fn new(value: f64) -> Result<Self, ValueError> {
        Number::from_f64(value)
            .ok_or(ValueError::NotFinite(value))
            .and_then(Self::try_from)
    }

    pub fn get(&self) -> f64 {
        self.0.as_f64().unwrap_or_default()
    }
}

impl TryFrom<Number> for Percent {
    type Error = ValueError;
    fn try_from(n: Number) -> Result<Self, ValueError> {
        match n.as_f64() {
            Some(v) if (0.0..=100.0).contains(&v) => Ok(Self(n)),
            _ => Err(ValueError::NotAPercent(n)),
        }
    }
}

impl From<Percent> for Number {
    fn from(p: Percent) -> Number {
        p.0
    }
}

/// A duration in milliseconds: any non-negative number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Number", into = "Number")]
pub struct Millis(Number);

impl Millis {
    pub fn new(ms: f64) -> Result<Self, ValueError> {
        Number::from_f64(ms)
            .ok_or(ValueError::NotFinite(ms))
            .and_then(Self::try_from)
    }

    pub fn get(&self) -> f64 {
        self.0.as_f64().unwrap_or_default()
    }
}

impl From<u64> for Millis {
    fn from(ms: u64) -> Self {
        Self(ms.into())
    }
}

impl TryFrom<Number> for Millis {
    type Error = ValueError;
    fn try_from(n: Number) -> Result<Self, ValueError> {
        match n.as_f64() {
            Some(v) if v >= 0.0 => Ok(Self(n)),
            _ => Err(ValueError::NegativeMillis(n)),
        }
    }
}

impl From<Millis> for Number {
    fn from(m: Millis) -> Number {
        m.0
    }
}

/// A JSON object, held as its text.
#[derive(Clone)]
pub struct JsonObject(Box<RawValue>);

impl JsonObject {
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The same object without insignificant whitespace, keys in their
    /// order: what Python's `json.dumps(..., separators=(",", ":"))` makes
    /// of the object a backend sent.
    pub fn compact(self) -> Self {
        let text = self.get();
        let mut out = String::with_capacity(text.len());
        let (mut in_string, mut escaped) = (false, false);
        for c in text.chars() {
            if in_string {
                let was_escaped = escaped;
                escaped = !was_escaped && c == '\\';
                in_string = was_escaped || c != '"';
            } else if c.is_ascii_whitespace() {
                continue;
            } else {
                in_string = c == '"';
            }
            out.push(c);
        }
        Self(RawValue::from_string(out).expect("whitespace outside strings is insignificant"))
    }

    fn checked(raw: Box<RawValue>) -> Result<Self, ValueError> {
        match JsonKind::of_text(raw.get()) {
            JsonKind::Object => Ok(Self(raw)),
            other => Err(ValueError::NotAnObject(other)),
        }
    }
}

impl TryFrom<serde_json::Value> for JsonObject {
    type Error = ValueError;
    fn try_from(value: serde_json::Value) -> Result<Self, ValueError> {
        match value {
            serde_json::Value::Object(map) => Ok(map.into()),
            other => Err(ValueError::NotAnObject(JsonKind::of_value(&other))),
        }
    }
}

impl From<serde_json::Map<String, serde_json::Value>> for JsonObject {
    fn from(map: serde_json::Map<String, serde_json::Value>) -> Self {
        let raw = serde_json::value::to_raw_value(&map).expect("a JSON map always serializes");
        Self(raw)
    }
}

impl PartialEq for JsonObject {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl fmt::Debug for JsonObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for JsonObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::checked(Box::<RawValue>::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// An ISO 8601 / RFC 3339 instant, as text. Herald's own are UTC with
/// milliseconds, the shape of JavaScript's `Date.prototype.toISOString`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Timestamp(String);

impl Timestamp {
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        Self(format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.millisecond()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Timestamp {
    type Error = ValueError;
    fn try_from(text: String) -> Result<Self, ValueError> {
        match OffsetDateTime::parse(&text, &Rfc3339) {
            Ok(_) => Ok(Self(text)),
            Err(_) => Err(ValueError::NotATimestamp(text)),
        }
    }
}

impl From<Timestamp> for String {
    fn from(t: Timestamp) -> String {
        t.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_text() {
        let p: Percent = serde_json::from_str("50").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "50");
        let p: Percent = serde_json::from_str("12.5").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "12.5");
    }

    #[test]
    fn percent_and_millis_bounds() {
        assert!(serde_json::from_str::<Percent>("100").is_ok());
        assert!(serde_json::from_str::<Percent>("100.01").is_err());
        assert!(serde_json::from_str::<Percent>("-1").is_err());
        assert!(serde_json::from_str::<Millis>("0").is_ok());
        assert!(serde_json::from_str::<Millis>("-0.5").is_err());
        assert!(matches!(Percent::new(f64::NAN), Err(ValueError::NotFinite(v)) if v.is_nan()));
        assert_eq!(
            Percent::new(100.5).unwrap_err().to_string(),
            "must be a number from 0 to 100, got 100.5"
        );
        assert_eq!(
            Millis::new(-2.0).unwrap_err().to_string(),
            "must be a non-negative number of milliseconds, got -2.0"
        );
    }

    #[test]
    fn objects_pass_through_verbatim() {
        let text = r#"{"z":1,"a":{"b":[1,2]}}"#;
        let o: JsonObject = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&o).unwrap(), text);
        let err = serde_json::from_str::<JsonObject>("[1]").unwrap_err();
        assert!(
            err.to_string()
                .contains("must be a JSON object, got an array")
        );
        assert_eq!(
            JsonObject::try_from(serde_json::json!("text")),
            Err(ValueError::NotAnObject(JsonKind::String))
        );
        let o = JsonObject::try_from(serde_json::json!({"a": [1]})).unwrap();
        assert_eq!(o.get(), r#"{"a":[1]}"#);
    }

    #[test]
    fn timestamps_are_iso_8601() {
        let now = Timestamp::now();
        assert_eq!(now.as_str().len(), "2026-01-31T12:00:00.000Z".len());
        assert!(Timestamp::try_from(now.as_str().to_string()).is_ok());
        assert!(Timestamp::try_from("2026-01-31T12:00:00+02:00".to_string()).is_ok());
        assert_eq!(
            Timestamp::try_from("yesterday".to_string()),
            Err(ValueError::NotATimestamp("yesterday".into()))
        );
    }
}
