//! The session events a backend publishes and subscribers receive: one Rust
//! type per event, which is at once the validation schema (serde, with unknown
//! fields refused), the wire format, and the typed API of the emit helpers.
//!
//! A family of events is one `event_family!` list. Adding an event is adding a
//! struct and a line; adding a family (ResearchFlow's run events, MeatyMusic's
//! workflow events) is another list, and the publish pipeline, which only sees
//! [`EventFamily`], stays as it is.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    Family, Invalid, SessionId,
    schema::{RawJson, read_fields},
    values::{JsonKind, JsonObject, Millis, Percent, Timestamp},
};

/// Overall state of a session, as the `progress` event reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionStatus {
    Active,
    Processing,
    Completed,
    Failed,
    Expired,
}

/// Prompt counters of a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompts {
    pub total: u64,
    pub completed: u64,
    pub processing: u64,
    pub pending: u64,
    pub failed: u64,
}

/// `progress`: how far the whole session has come.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Progress {
    pub status: SessionStatus,
    pub progress: Percent,
    pub prompts: Prompts,
    pub has_clarifications: bool,
    pub clarification_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_result: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JsonObject>,
}

/// State of one model's run within a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelStatus {
    Processing,
    Completed,
    Failed,
}

/// `model_result`: one model of a multi-model run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelResult {
    pub model_name: String,
    pub duration: Millis,
    pub result: String,
    pub status: ModelStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// Whether a clarification still waits for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClarificationStatus {
    Pending,
    Answered,
}

/// `clarification`: the job needs an answer from the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Clarification {
    pub clarification_id: String,
    pub question: String,
    pub status: ClarificationStatus,
}

/// `completed`: the session finished; `result` is its final output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Completed {
    pub result: JsonObject,
}

/// `error`: the session failed. (A reply to a bad client request is also
/// named `error` but carries `code` and no `seq`: see `realtime`.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionError {
    pub error: String,
}

/// What publishing an event tells about the session as a whole, for the state
/// `GET /api/v1/sessions/{id}` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    pub is_progress: bool,
    pub completed: bool,
    pub failed: bool,
}

/// One event type. `outcome` says what publishing it means for the session as
/// a whole; most events mean nothing for it.
pub trait Event: Serialize + serde::de::DeserializeOwned {
    fn outcome(&self) -> Outcome {
        Outcome::default()
    }
}

/// What the publish pipeline needs of a family of events.
pub trait EventFamily: Serialize + Send + Sync + Sized + 'static {
    /// Which streams the family's events are sequenced in.
    const FAMILY: Family;

    /// Every event name of the family, for error messages and docs.
    const NAMES: &'static [&'static str];

    /// The wire name of this event.
    fn name(&self) -> &'static str;

    /// Builds the named event from the fields of a `data` object, refusing
    /// unknown fields and values outside the schema; `None` when the family
    /// has no event of that name.
    fn from_fields(name: &str, fields: Fields<'_>) -> Option<Result<Self, Invalid>>;

    /// What this event says about the session's overall state.
    fn outcome(&self) -> Outcome;

    /// Serializes the event once, as its stream's subscribers receive it,
    /// with a hole for the seq.
    fn encode(&self, id: &SessionId, timestamp: &Timestamp) -> Encoded;
}

/// Declares a family: the enum of its events, their wire names, and its
/// [`EventFamily`] implementation, from one list.
macro_rules! event_family {
    ($(#[$doc:meta])* $family:ident in $fam:expr, encoded by $encode:path {
        $($name:literal => $variant:ident($ty:ty),)+
    }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum $family {
            $($variant($ty),)+
        }

        impl EventFamily for $family {
            const FAMILY: Family = $fam;
            const NAMES: &'static [&'static str] = &[$($name),+];

            fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $name,)+
                }
            }

            fn from_fields(name: &str, fields: Fields<'_>) -> Option<Result<Self, Invalid>> {
                match name {
                    $($name => Some(fields.into_event().map(Self::$variant)),)+
                    _ => None,
                }
            }

            fn outcome(&self) -> Outcome {
                match self {
                    $(Self::$variant(event) => event.outcome(),)+
                }
            }

            fn encode(&self, id: &SessionId, timestamp: &Timestamp) -> Encoded {
                $encode(self, id, timestamp)
            }
        }

        $(impl From<$ty> for $family {
            fn from(event: $ty) -> Self {
                Self::$variant(event)
            }
        })+
    };
}

pub(super) use event_family;

event_family! {
    /// The document-processing session events of docs/protocol.md.
    SessionEvent in Family::Session, encoded by encode_session {
        "progress" => Progress(Progress),
        "model_result" => ModelResult(ModelResult),
        "clarification" => Clarification(Clarification),
        "completed" => Completed(Completed),
        "error" => Error(SessionError),
    }
}

impl Event for Progress {
    fn outcome(&self) -> Outcome {
        Outcome {
            is_progress: true,
            completed: self.status == SessionStatus::Completed,
            failed: self.status == SessionStatus::Failed,
        }
    }
}

impl Event for ModelResult {}

impl Event for Clarification {}

impl Event for Completed {
    fn outcome(&self) -> Outcome {
        Outcome {
            completed: true,
            ..Outcome::default()
        }
    }
}

impl Event for SessionError {
    fn outcome(&self) -> Outcome {
        Outcome {
            failed: true,
            ..Outcome::default()
        }
    }
}

/// The fields the server owns, which a backend may also set in `data`.
#[derive(Debug, Default)]
pub struct Envelope {
    pub session_id: Option<SessionId>,
    pub timestamp: Option<Timestamp>,
}

/// The top-level fields of a `data` object, each still as its JSON text.
pub struct Fields<'a>(Vec<(String, &'a RawValue)>);

impl<'a> Fields<'a> {
    /// Splits `data` into the envelope fields and the event's own fields.
    pub fn read(data: &'a RawValue) -> Result<(Envelope, Self), Invalid> {
        let all = RawJson(data).fields().map_err(|_| {
            Invalid::new(
                "",
                format!(
                    "data must be a JSON object, got {}",
                    JsonKind::of_text(data.get())
                ),
            )
        })?;
        let mut envelope = Envelope::default();
        let mut own = Vec::with_capacity(all.len());
        for (key, value) in all {
            match key.as_str() {
                // `null` for an optional field means absent.
                "sessionId" | "timestamp" if value.get() == "null" => {}
                "sessionId" => {
                    let text = String::deserialize(RawJson(value))
                        .map_err(|e| Invalid::schema("sessionId", e))?;
                    let id = SessionId::parse(&text)
                        .map_err(|e| Invalid::new("sessionId", e.to_string()))?;
                    envelope.session_id = Some(id);
                }
                "timestamp" => {
                    let ts = Timestamp::deserialize(RawJson(value))
                        .map_err(|e| Invalid::schema("timestamp", e))?;
                    envelope.timestamp = Some(ts);
                }
                "seq" => {
                    return Err(Invalid::new(
                        "seq",
                        "seq is assigned by the server and must not be sent",
                    ));
                }
                _ => own.push((key, value)),
            }
        }
        Ok((envelope, Self(own)))
    }

    /// Every top-level field of `data`, for families whose payload has no
    /// envelope of its own.
    pub fn all(data: &'a RawValue) -> Result<Self, Invalid> {
        RawJson(data).fields().map(Self).map_err(|_| {
            Invalid::new(
                "",
                format!(
                    "must be a JSON object, got {}",
                    JsonKind::of_text(data.get())
                ),
            )
        })
    }

    /// The field `name`, if present.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    /// The fields in the order they were written (for `herald tail`,
    /// which shows them as herald sent them).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &'a RawValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Adds a field that was absent.
    pub fn insert(&mut self, name: &str, value: &'a RawValue) {
        self.0.push((name.to_string(), value));
    }

    pub(super) fn into_event<T: Event>(self) -> Result<T, Invalid> {
        read_fields(self.0)
    }
}

/// An event serialized once, around the one field that is not known yet:
/// `head` + seq + `tail` is the payload every subscriber receives. Keeping the
/// seq out lets the sequencer (this process, or a Redis script) splice it in
/// without serializing again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub head: String,
    pub tail: String,
}

impl Encoded {
    pub fn with_seq(&self, seq: u64) -> Box<RawValue> {
        let mut text = String::with_capacity(self.head.len() + 20 + self.tail.len());
        text.push_str(&self.head);
        text.push_str(itoa::Buffer::new().format(seq));
        text.push_str(&self.tail);
        RawValue::from_string(text).expect("head + seq + tail is a JSON object")
    }
}

/// Serializes an event of any family, once, as its subscribers receive it.
pub fn encode<E: EventFamily>(id: &SessionId, timestamp: &Timestamp, event: &E) -> Encoded {
    event.encode(id, timestamp)
}

/// A session event with its envelope (`sessionId`, `timestamp`, `seq`).
fn encode_session(event: &SessionEvent, session_id: &SessionId, timestamp: &Timestamp) -> Encoded {
    let fields = serde_json::to_string(event).expect("event types always serialize");
    let fields = fields
        .strip_prefix('{')
        .expect("every event serializes to a JSON object");
    let mut head = String::with_capacity(64);
    head.push_str("{\"sessionId\":");
    head.push_str(&serde_json::to_string(session_id).expect("string"));
    head.push_str(",\"timestamp\":");
    head.push_str(&serde_json::to_string(timestamp).expect("string"));
    head.push_str(",\"seq\":");
    let tail = if fields == "}" {
        "}".to_string()
    } else {
        format!(",{fields}")
    };
    Encoded { head, tail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, data: &str) -> Result<(Envelope, SessionEvent), Invalid> {
        let raw: Box<RawValue> = serde_json::from_str(data).unwrap();
        let (envelope, fields) = Fields::read(&raw)?;
        let event = SessionEvent::from_fields(name, fields)
            .unwrap_or_else(|| Err(Invalid::new("event", "unknown")))?;
        Ok((envelope, event))
    }

    const PROGRESS: &str = r#"{"status":"PROCESSING","progress":50,"prompts":{"total":3,"completed":1,"processing":1,"pending":1,"failed":0},"hasClarifications":false,"clarificationCount":0}"#;

    #[test]
    fn progress_round_trips_with_its_envelope() {
        let (env, event) = parse("progress", PROGRESS).unwrap();
        assert!(env.session_id.is_none() && env.timestamp.is_none());
        let id = SessionId::parse("s1").unwrap();
        let ts = Timestamp::try_from("2026-01-01T00:00:00.000Z".to_string()).unwrap();
        let out: serde_json::Value =
            serde_json::from_str(encode(&id, &ts, &event).with_seq(7).get()).unwrap();
        let mut expected: serde_json::Value = serde_json::from_str(PROGRESS).unwrap();
        expected["sessionId"] = "s1".into();
        expected["timestamp"] = "2026-01-01T00:00:00.000Z".into();
        expected["seq"] = 7.into();
        assert_eq!(out, expected);
    }

    #[test]
    fn refusals_name_the_field_and_say_why() {
        let cases = [
            // Missing, at the top and nested.
            ("completed", "{}", "result", "missing field `result`"),
            (
                "progress",
                &PROGRESS.replace("\"total\":3,", ""),
                "prompts.total",
                "prompts: missing field `total`",
            ),
            // Unknown field, at the top and nested.
            (
                "error",
                r#"{"error":"x","eror":"y"}"#,
                "eror",
                "eror: unknown field `eror`, expected `error`",
            ),
            (
                "progress",
                &PROGRESS.replace("\"failed\":0", "\"failed\":0,\"x\":1"),
                "prompts.x",
                "prompts.x: unknown field `x`, expected one of `total`, `completed`, \
                 `processing`, `pending`, `failed`",
            ),
            // Wrong type, at the top and nested.
            (
                "progress",
                &PROGRESS.replace("false", "\"no\""),
                "hasClarifications",
                r#"hasClarifications: expected a boolean, got "no""#,
            ),
            (
                "progress",
                &PROGRESS.replace("\"total\":3", "\"total\":1.5"),
                "prompts.total",
                "prompts.total: expected a non-negative integer, got 1.5",
            ),
            (
                "progress",
                &PROGRESS.replace("\"prompts\":{", "\"prompts\":7,\"p\":{"),
                "prompts",
                "prompts: expected an object, got 7",
            ),
            // Out of range.
            (
                "progress",
                &PROGRESS.replace("\"total\":3", "\"total\":-3"),
                "prompts.total",
                "prompts.total: expected a non-negative integer, got -3",
            ),
            // Unknown enum value, and an enum that is not a string.
            (
                "clarification",
                r#"{"clarificationId":"c","question":"q","status":"open"}"#,
                "status",
                "status: unknown value `open`, expected `pending` or `answered`",
            ),
            (
                "model_result",
                r#"{"modelName":"m","duration":1,"result":"","status":true}"#,
                "status",
                "status: expected one of `processing`, `completed`, `failed`, got true",
            ),
            // A value type's own rule (custom, from its TryFrom).
            (
                "progress",
                &PROGRESS.replace("50", "150"),
                "progress",
                "progress: must be a number from 0 to 100, got 150",
            ),
            (
                "model_result",
                r#"{"modelName":"m","duration":-1,"result":"","status":"completed"}"#,
                "duration",
                "duration: must be a non-negative number of milliseconds, got -1",
            ),
            (
                "completed",
                r#"{"result":[1]}"#,
                "result",
                "result: must be a JSON object, got an array",
            ),
            // The envelope.
            (
                "error",
                r#"{"error":"x","timestamp":"later"}"#,
                "timestamp",
                "timestamp: must be an ISO 8601 date-time such as 2026-01-31T12:00:00.000Z, \
                 got \"later\"",
            ),
            (
                "error",
                r#"{"error":"x","timestamp":5}"#,
                "timestamp",
                "timestamp: expected a string, got 5",
            ),
            (
                "error",
                r#"{"error":"x","sessionId":"a b"}"#,
                "sessionId",
                "sessionId may contain only A-Z, a-z, 0-9, '.', '_', ':' and '-'; found ' '",
            ),
            (
                "progress",
                &PROGRESS.replace("}", ",\"seq\":3}"),
                "seq",
                "seq is assigned by the server and must not be sent",
            ),
            (
                "error",
                "[1]",
                "",
                "data must be a JSON object, got an array",
            ),
            ("nope", "{}", "event", "unknown"),
        ];
        for (name, data, field, message) in cases {
            match parse(name, data) {
                Err(e) => assert_eq!(
                    (e.field.as_str(), e.message.as_str()),
                    (field, message),
                    "{name} {data}"
                ),
                Ok(_) => panic!("{name} {data} was accepted"),
            }
        }
    }

    #[test]
    fn null_optional_fields_are_absent() {
        let (_, event) = parse(
            "model_result",
            r#"{"modelName":"m","duration":3,"result":"ok","status":"completed","error":null,"provider":null,"sessionId":null}"#,
        )
        .unwrap();
        let id = SessionId::parse("s").unwrap();
        let out = encode(&id, &Timestamp::now(), &event).with_seq(1);
        assert!(!out.get().contains("provider") && !out.get().contains("null"));
    }

    #[test]
    fn outcomes() {
        let (_, p) = parse("progress", &PROGRESS.replace("PROCESSING", "COMPLETED")).unwrap();
        assert!(p.outcome().completed && p.outcome().is_progress);
        let (_, e) = parse("error", r#"{"error":"boom"}"#).unwrap();
        assert!(e.outcome().failed);
        assert_eq!(SessionEvent::NAMES.len(), 5);
    }
}
