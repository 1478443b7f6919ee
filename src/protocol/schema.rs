//! Reading JSON by a schema, with refusals built from what serde knows rather
//! than from what serde_json's messages say.
//!
//! serde tells a deserializer's error type what went wrong through typed calls
//! (`missing_field("total")`, `invalid_type(found, expected)`, ...). With
//! serde_json's own deserializer those calls end in serde_json's error, which
//! keeps only text. So herald reads JSON through [`RawJson`], a deserializer
//! over JSON text already known to be well formed whose error type is
//! [`SchemaError`]: every refusal, however deep (`prompts.total`), arrives as
//! one of its variants, and its wording is ours.
//!
//! Objects and arrays are split into their members' raw text and read member
//! by member, so a `JsonObject` (serde_json's `RawValue`) still gets its text
//! byte for byte.

use std::{borrow::Cow, cell::Cell, fmt, sync::OnceLock};

use serde::{
    Deserialize, Deserializer,
    de::{
        self, Expected, IntoDeserializer, Unexpected, Visitor,
        value::{CowStrDeserializer, MapDeserializer, SeqDeserializer},
    },
    forward_to_deserialize_any,
};
use serde_json::{Number, value::RawValue};

use super::Invalid;

/// Why a JSON value does not fit its schema, as serde reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("duplicate field `{0}`")]
    DuplicateField(&'static str),
    #[error("unknown field `{field}`, expected {}", OneOf(expected))]
    UnknownField {
        field: String,
        expected: &'static [&'static str],
    },
    /// A string outside an enumeration (`"status": "DONE"`).
    #[error("unknown value `{value}`, expected {}", OneOf(expected))]
    UnknownVariant {
        value: String,
        expected: &'static [&'static str],
    },
    /// A value of the wrong JSON type (`"progress": "50"`).
    #[error("expected {expected}, got {found}")]
    InvalidType { found: Found, expected: String },
    /// A value of the right type out of its range (`"total": -1`).
    #[error("expected {expected}, got {found}")]
    InvalidValue { found: Found, expected: String },
    #[error("expected {expected}, got {len} elements")]
    InvalidLength { len: usize, expected: String },
    /// A rule of a value type, in that type's words (a [`super::ValueError`],
    /// an [`super::InvalidSessionId`]).
    #[error("{0}")]
    Custom(String),
}

impl de::Error for SchemaError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Custom(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        Self::MissingField(field)
    }

    fn duplicate_field(field: &'static str) -> Self {
        Self::DuplicateField(field)
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::UnknownField {
            field: field.to_string(),
            expected,
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::UnknownVariant {
            value: variant.to_string(),
            expected,
        }
    }

    fn invalid_type(found: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Self::InvalidType {
            found: found.into(),
            expected: in_json_terms(expected),
        }
    }

    fn invalid_value(found: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Self::InvalidValue {
            found: found.into(),
            expected: in_json_terms(expected),
        }
    }

    fn invalid_length(len: usize, expected: &dyn Expected) -> Self {
        Self::InvalidLength {
            len,
            expected: expected.to_string(),
        }
    }
}

/// The value a refusal found, told in JSON's terms (`null`, not "unit").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Null,
    Bool(bool),
    /// The number as JSON would print it.
    Number(String),
    String(String),
    Array,
    Object,
    /// Something JSON has no name for, in serde's words.
    Other(String),
}

impl Found {
    /// What well-formed JSON text holds.
    fn of(text: &str) -> Self {
        match text.as_bytes().first() {
            Some(b'{') => Self::Object,
            Some(b'[') => Self::Array,
            Some(b'"') => Self::String(serde_json::from_str(text).unwrap_or_default()),
            Some(b't') => Self::Bool(true),
            Some(b'f') => Self::Bool(false),
            Some(b'n') => Self::Null,
            _ => Self::Number(text.to_string()),
        }
    }
}

impl From<Unexpected<'_>> for Found {
    fn from(found: Unexpected<'_>) -> Self {
        match found {
            Unexpected::Unit | Unexpected::Option => Self::Null,
            Unexpected::Bool(b) => Self::Bool(b),
            Unexpected::Unsigned(n) => Self::Number(n.to_string()),
            Unexpected::Signed(n) => Self::Number(n.to_string()),
            // Through serde_json's printer: `1e30`, not thirty-one digits.
            Unexpected::Float(n) => {
                Self::Number(Number::from_f64(n).map_or_else(|| n.to_string(), |n| n.to_string()))
            }
            Unexpected::Char(c) => Self::String(c.to_string()),
            Unexpected::Str(s) => Self::String(s.to_string()),
            Unexpected::Seq => Self::Array,
            Unexpected::Map => Self::Object,
            other => Self::Other(other.to_string()),
        }
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("null"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Number(n) => f.write_str(n),
            Self::String(s) => f.write_str(&serde_json::to_string(s).map_err(|_| fmt::Error)?),
            Self::Array => f.write_str("an array"),
            Self::Object => f.write_str("an object"),
            Self::Other(what) => f.write_str(what),
        }
    }
}

/// What serde's own readers expect, said to a JSON sender: serde's number
/// readers name the Rust type they fill (`u64`), which means nothing to a
/// client.
fn in_json_terms(expected: &dyn Expected) -> String {
    match expected.to_string().as_str() {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        other => other.into(),
    }
}

/// A list of names as a refusal offers them: "`a`", "`a` or `b`",
/// "one of `a`, `b`, `c`".
struct OneOf(&'static [&'static str]);

impl fmt::Display for OneOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => f.write_str("nothing"),
            [only] => write!(f, "`{only}`"),
            [a, b] => write!(f, "`{a}` or `{b}`"),
            all => {
                f.write_str("one of ")?;
                for (i, name) in all.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}`{name}`")?;
                }
                Ok(())
            }
        }
    }
}

/// Reads well-formed JSON into `T`. A refusal names the field at fault by its
/// path (`prompts.total`, `[3].sessionId`).
pub fn read_json<'de, T: Deserialize<'de>>(json: &'de RawValue) -> Result<T, Invalid> {
    serde_path_to_error::deserialize(RawJson(json)).map_err(located)
}

/// The fields of an object, each still as its raw text, read as `T`.
pub(crate) fn read_fields<'de, T: Deserialize<'de>>(
    fields: Vec<(String, &'de RawValue)>,
) -> Result<T, Invalid> {
    serde_path_to_error::deserialize(members(fields)).map_err(located)
}

fn located(e: serde_path_to_error::Error<SchemaError>) -> Invalid {
    let path = e.path().to_string();
    // The path of the value as a whole is ".".
    let path = if path == "." { "" } else { &path };
    Invalid::schema(path, e.into_inner())
}

fn members<'de>(
    fields: Vec<(String, &'de RawValue)>,
) -> MapDeserializer<'de, impl Iterator<Item = (String, RawJson<'de>)>, SchemaError> {
    MapDeserializer::new(fields.into_iter().map(|(k, v)| (k, RawJson(v))))
}

/// Every key and raw value of a JSON object, in order.
struct FieldList<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for FieldList<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = FieldList<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(FieldList(fields))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A deserializer over well-formed JSON text whose errors are
/// [`SchemaError`]s: see the module comment.
#[derive(Clone, Copy)]
pub(crate) struct RawJson<'de>(pub &'de RawValue);

impl<'de> RawJson<'de> {
    fn text(self) -> &'de str {
        self.0.get().trim()
    }

    /// Splitting what serde_json already parsed cannot fail; should it, the
    /// refusal says so rather than panicking on a client's input.
    fn split<T: Deserialize<'de>>(self) -> Result<T, SchemaError> {
        serde_json::from_str(self.text()).map_err(de::Error::custom)
    }

    /// The members of an object, each as its raw text, in order.
    pub(crate) fn fields(self) -> Result<Vec<(String, &'de RawValue)>, SchemaError> {
        match self.text().as_bytes().first() {
            Some(b'{') => Ok(self.split::<FieldList>()?.0),
            _ => Err(self.wrong_type("an object")),
        }
    }

    fn wrong_type(self, expected: impl fmt::Display) -> SchemaError {
        SchemaError::InvalidType {
            found: Found::of(self.text()),
            expected: expected.to_string(),
        }
    }

    fn string(self) -> Result<Cow<'de, str>, SchemaError> {
        let text = self.text();
        match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            // Without escapes, a JSON string's text is its value.
            Some(inner) if !inner.contains('\\') => Ok(Cow::Borrowed(inner)),
            _ => self.split::<String>().map(Cow::Owned),
        }
    }
}

impl<'de> IntoDeserializer<'de, SchemaError> for RawJson<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for RawJson<'de> {
    type Error = SchemaError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        match self.text().as_bytes().first() {
            Some(b'{') => members(self.fields()?).deserialize_any(visitor),
            Some(b'[') => {
                let items: Vec<&'de RawValue> = self.split()?;
                SeqDeserializer::new(items.into_iter().map(RawJson)).deserialize_any(visitor)
            }
            Some(b'"') => match self.string()? {
                Cow::Borrowed(s) => visitor.visit_borrowed_str(s),
                Cow::Owned(s) => visitor.visit_string(s),
            },
            Some(b't') => visitor.visit_bool(true),
            Some(b'f') => visitor.visit_bool(false),
            Some(b'n') => visitor.visit_unit(),
            // Parsed by serde_json, so a number takes the value (and prints
            // again as) serde_json gives it elsewhere: `-0` is `-0.0`, a
            // float rounds the same way.
            _ => match serde_json::from_str::<Number>(self.text()) {
                Ok(n) => match (n.as_u64(), n.as_i64()) {
                    (Some(u), _) => visitor.visit_u64(u),
                    (None, Some(i)) => visitor.visit_i64(i),
                    (None, None) => visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN)),
                },
                // Well-formed, but too large for a 64-bit float (`1e400`).
                Err(_) => Err(SchemaError::InvalidValue {
                    found: Found::of(self.text()),
                    expected: "a finite number".into(),
                }),
            },
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        match self.text() {
            "null" => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        // serde_json's RawValue takes its text from serde_json's deserializer
        // alone; it is handed the member's text, which is all it keeps.
        if raw_value_name() == Some(name) {
            return serde_json::Deserializer::from_str(self.text())
                .deserialize_newtype_struct(name, visitor)
                .map_err(de::Error::custom);
        }
        visitor.visit_newtype_struct(self)
    }

    // A struct, a map or a list asks for a JSON type; refusing any other here
    // says so in JSON's words ("an object") rather than Rust's ("struct
    // Prompts"), and keeps an array from filling a struct by position.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        members(self.fields()?).deserialize_any(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        match self.text().as_bytes().first() {
            Some(b'[') => self.deserialize_any(visitor),
            _ => Err(self.wrong_type("an array")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        self.deserialize_seq(visitor)
    }

    /// Enumerations are strings (`"status": "ACTIVE"`).
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        match self.text().as_bytes().first() {
            Some(b'"') => visitor.visit_enum(CowStrDeserializer::new(self.string()?)),
            _ => Err(self.wrong_type(OneOf(variants))),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct identifier ignored_any
    }
}

/// The newtype name serde_json's `RawValue` asks for its text by. It is
/// private to serde_json, so it is learnt by asking `RawValue` once; should
/// `RawValue` stop asking by name, every `JsonObject` is refused, loudly.
fn raw_value_name() -> Option<&'static str> {
    static NAME: OnceLock<Option<&'static str>> = OnceLock::new();
    *NAME.get_or_init(|| {
        struct Probe<'a>(&'a Cell<Option<&'static str>>);
        impl<'de> Deserializer<'de> for Probe<'_> {
            type Error = SchemaError;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, SchemaError> {
                Err(de::Error::custom("not asked by name"))
            }
            fn deserialize_newtype_struct<V: Visitor<'de>>(
                self,
                name: &'static str,
                _: V,
            ) -> Result<V::Value, SchemaError> {
                self.0.set(Some(name));
                Err(de::Error::custom("asked by name"))
            }
            forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct seq tuple tuple_struct map struct
                enum identifier ignored_any
            }
        }
        let name = Cell::new(None);
        let _ = Box::<RawValue>::deserialize(Probe(&name));
        name.get()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Progress, Prompts, SessionStatus};

    /// The structured error and where it was found, as `read_json` sees them
    /// before rendering a refusal.
    fn refusal<'de, T: Deserialize<'de>>(json: &'de str) -> (String, SchemaError) {
        let raw: &RawValue = serde_json::from_str(json).unwrap();
        match serde_path_to_error::deserialize::<_, T>(RawJson(raw)) {
            Ok(_) => panic!("{json} was accepted"),
            Err(e) => (e.path().to_string(), e.into_inner()),
        }
    }

    const PROGRESS: &str = r#"{"status":"PROCESSING","progress":50,"prompts":{"total":3,"completed":1,"processing":1,"pending":1,"failed":0},"hasClarifications":false,"clarificationCount":0}"#;

    #[test]
    fn reads_what_serde_json_reads_and_prints_it_the_same() {
        for json in [
            PROGRESS.to_string(),
            PROGRESS.replace("50", "12.5"),
            PROGRESS.replace("50", "1e2"),
            PROGRESS.replace("50", "-0"),
            PROGRESS.replace("50", "0.30000000000000004"),
            PROGRESS.replace(
                "\"clarificationCount\":0",
                "\"clarificationCount\":0,\"hasResult\":null,\"result\":{ \"z\" : [1, {\"a\":\"\\u00e9\\\"\"}], \"a\":null }",
            ),
            PROGRESS.replace("{\"status\"", " {\n\"status\"") + "\n",
        ] {
            let raw: &RawValue = serde_json::from_str(&json).unwrap();
            let ours: Progress = read_json(raw).unwrap();
            let theirs: Progress = serde_json::from_str(&json).unwrap();
            assert_eq!(ours, theirs, "{json}");
            assert_eq!(
                serde_json::to_string(&ours).unwrap(),
                serde_json::to_string(&theirs).unwrap()
            );
        }
    }

    #[test]
    fn objects_keep_their_text() {
        let json = r#"{"result":{ "z" : [1, 2.50], "a":"\u00e9" },"error":"a\"b"}"#;
        #[derive(Deserialize)]
        struct Holder {
            result: crate::protocol::JsonObject,
            error: String,
        }
        let raw: &RawValue = serde_json::from_str(json).unwrap();
        let holder: Holder = read_json(raw).unwrap();
        assert_eq!(holder.result.get(), r#"{ "z" : [1, 2.50], "a":"\u00e9" }"#);
        assert_eq!(holder.error, "a\"b");
    }

    #[test]
    fn each_class_of_serde_error_arrives_structured() {
        let prompts: &'static [&'static str] =
            &["total", "completed", "processing", "pending", "failed"];
        let statuses: &'static [&'static str] =
            &["ACTIVE", "PROCESSING", "COMPLETED", "FAILED", "EXPIRED"];
        let cases: Vec<(String, (&str, SchemaError))> = vec![
            (
                PROGRESS.replace("\"total\":3,", ""),
                ("prompts", SchemaError::MissingField("total")),
            ),
            (
                PROGRESS.replace("\"total\":3", "\"total\":3,\"total\":4"),
                ("prompts", SchemaError::DuplicateField("total")),
            ),
            (
                PROGRESS.replace("\"failed\":0", "\"failed\":0,\"x\":1"),
                (
                    "prompts.x",
                    SchemaError::UnknownField {
                        field: "x".into(),
                        expected: prompts,
                    },
                ),
            ),
            (
                PROGRESS.replace("50", "\"50\""),
                (
                    "progress",
                    SchemaError::InvalidType {
                        found: Found::String("50".into()),
                        expected: "a JSON number".into(),
                    },
                ),
            ),
            (
                PROGRESS.replace("\"total\":3", "\"total\":-3"),
                (
                    "prompts.total",
                    SchemaError::InvalidValue {
                        found: Found::Number("-3".into()),
                        expected: "a non-negative integer".into(),
                    },
                ),
            ),
            (
                PROGRESS.replace("\"total\":3", "\"total\":1e400"),
                (
                    "prompts.total",
                    SchemaError::InvalidValue {
                        found: Found::Number("1e400".into()),
                        expected: "a finite number".into(),
                    },
                ),
            ),
            (
                PROGRESS.replace("PROCESSING", "DONE"),
                (
                    "status",
                    SchemaError::UnknownVariant {
                        value: "DONE".into(),
                        expected: statuses,
                    },
                ),
            ),
            (
                PROGRESS.replace("\"PROCESSING\"", "3"),
                (
                    "status",
                    SchemaError::InvalidType {
                        found: Found::Number("3".into()),
                        expected: OneOf(statuses).to_string(),
                    },
                ),
            ),
            (
                PROGRESS.replace(
                    r#"{"total":3,"completed":1,"processing":1,"pending":1,"failed":0}"#,
                    "[3,1,1,1,0]",
                ),
                (
                    "prompts",
                    SchemaError::InvalidType {
                        found: Found::Array,
                        expected: "an object".into(),
                    },
                ),
            ),
            (
                PROGRESS.replace("50", "150"),
                (
                    "progress",
                    SchemaError::Custom("must be a number from 0 to 100, got 150".into()),
                ),
            ),
        ];
        for (json, (path, expected)) in cases {
            let (at, err) = refusal::<Progress>(&json);
            assert_eq!((at.as_str(), err), (path, expected), "{json}");
        }
        assert_eq!(
            refusal::<(u8, u8)>("[1]").1,
            SchemaError::InvalidLength {
                len: 1,
                expected: "a tuple of size 2".into()
            }
        );
        assert_eq!(
            refusal::<Vec<Prompts>>("{}").1,
            SchemaError::InvalidType {
                found: Found::Object,
                expected: "an array".into()
            }
        );
        assert_eq!(
            refusal::<SessionStatus>(r#""active""#).1,
            SchemaError::UnknownVariant {
                value: "active".into(),
                expected: statuses
            }
        );
    }

    #[test]
    fn refusals_read_as_sentences() {
        let read = |json: &str| {
            let raw: &RawValue = serde_json::from_str(json).unwrap();
            let refusal = read_json::<Vec<Progress>>(raw).unwrap_err();
            (refusal.field, refusal.message)
        };
        let item = |progress: &str| format!("[{}]", PROGRESS.replace("50", progress));
        assert_eq!(
            read(&item("\"50\"")),
            (
                "[0].progress".into(),
                r#"[0].progress: expected a JSON number, got "50""#.into()
            )
        );
        assert_eq!(
            read(&format!("[{}]", PROGRESS.replace("\"total\":3,", ""))),
            (
                "[0].prompts.total".into(),
                "[0].prompts: missing field `total`".into()
            )
        );
        assert_eq!(
            read(&format!(
                "[{}]",
                PROGRESS.replace("\"failed\":0", "\"failed\":0,\"x\":1")
            )),
            (
                "[0].prompts.x".into(),
                "[0].prompts.x: unknown field `x`, expected one of `total`, `completed`, \
                 `processing`, `pending`, `failed`"
                    .into()
            )
        );
        assert_eq!(
            read(r#"{"a":1}"#),
            ("".into(), "expected an array, got an object".into())
        );
    }
}
