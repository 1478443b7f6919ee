//! What a Socket.IO client sends (`subscribe`, `unsubscribe`) and the replies
//! herald sends back (`connected`, `subscribed`, `unsubscribed`, the `error`
//! with a `code`, and acks).

use serde::Serialize;
use serde_json::Value;

use super::{InvalidSessionId, JsonKind, SessionId, Timestamp};

/// A `subscribe` or `unsubscribe` payload: a session id string, or
/// `{ "sessionId": s, "since": seq? }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    pub session_id: SessionId,
    /// The last `seq` the client has seen. Accepted and checked now so that
    /// clients written for replay connect today; replay itself is not built yet.
    pub since: Option<u64>,
}

/// Why a `subscribe` or `unsubscribe` payload was refused, worded for the
/// client that sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("a sessionId is required")]
    MissingSessionId,
    #[error("the object has no sessionId field")]
    NoSessionIdField,
    #[error("sessionId must be a string, got {0}")]
    SessionIdNotAString(JsonKind),
    #[error("since must be a non-negative integer sequence number")]
    BadSince,
    #[error("expected a sessionId string or {{ sessionId }}, got {0}")]
    NotARequest(JsonKind),
    #[error(transparent)]
    SessionId(#[from] InvalidSessionId),
}

impl InvalidRequest {
    /// The `code` of the `error` reply. PROTOCOL.md gives every malformed
    /// payload this one, whatever was wrong with it.
    pub fn code(&self) -> &'static str {
        "INVALID_SESSION_ID"
    }
}

impl SessionRequest {
    /// Reads the first argument of the event, refusing each bad class of
    /// payload with a reason of its own.
    pub fn parse(payload: Option<&Value>) -> Result<Self, InvalidRequest> {
        let id = match payload {
            None | Some(Value::Null) => return Err(InvalidRequest::MissingSessionId),
            Some(Value::String(id)) => id,
            Some(Value::Object(fields)) => {
                let since = match fields.get("since") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(v.as_u64().ok_or(InvalidRequest::BadSince)?),
                };
                return match fields.get("sessionId") {
                    Some(Value::String(id)) => Ok(Self {
                        session_id: SessionId::parse(id)?,
                        since,
                    }),
                    None | Some(Value::Null) => Err(InvalidRequest::NoSessionIdField),
                    Some(other) => Err(InvalidRequest::SessionIdNotAString(JsonKind::of_value(
                        other,
                    ))),
                };
            }
            Some(other) => return Err(InvalidRequest::NotARequest(JsonKind::of_value(other))),
        };
        Ok(Self {
            session_id: SessionId::parse(id)?,
            since: None,
        })
    }
}

/// `connected`, sent right after the Socket.IO handshake.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connected<'a> {
    pub socket_id: &'a str,
    pub timestamp: Timestamp,
}

/// `subscribed` and `unsubscribed`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionReply<'a> {
    pub session_id: &'a SessionId,
    pub timestamp: Timestamp,
}

/// The `error` event answering a bad client request: it carries a `code` and
/// no `seq`, which tells it apart from a published session `error`.
#[derive(Debug, Serialize)]
pub struct RequestError {
    pub error: String,
    pub code: &'static str,
    pub timestamp: Timestamp,
}

impl RequestError {
    pub fn new(refusal: &InvalidRequest) -> Self {
        Self {
            error: refusal.to_string(),
            code: refusal.code(),
            timestamp: Timestamp::now(),
        }
    }
}

/// The acknowledgement of `subscribe`/`unsubscribe` when the client asked for one.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack<'a> {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<&'a SessionId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_a_string_or_an_object() {
        let r = SessionRequest::parse(Some(&json!("abc"))).unwrap();
        assert_eq!((r.session_id.as_str(), r.since), ("abc", None));
        let r = SessionRequest::parse(Some(&json!({"sessionId": "abc", "since": 4}))).unwrap();
        assert_eq!((r.session_id.as_str(), r.since), ("abc", Some(4)));
    }

    #[test]
    fn refuses_every_bad_class() {
        use InvalidRequest::*;
        for (bad, why) in [
            (None, MissingSessionId),
            (Some(json!(null)), MissingSessionId),
            (Some(json!(42)), NotARequest(JsonKind::Number)),
            (Some(json!("")), SessionId(InvalidSessionId::Empty)),
            (
                Some(json!("x".repeat(129))),
                SessionId(InvalidSessionId::TooLong(129)),
            ),
            (
                Some(json!("a b")),
                SessionId(InvalidSessionId::BadCharacter(' ')),
            ),
            (Some(json!({})), NoSessionIdField),
            (
                Some(json!({"sessionId": 5})),
                SessionIdNotAString(JsonKind::Number),
            ),
            (Some(json!({"sessionId": "ok", "since": -1})), BadSince),
            (Some(json!(["abc"])), NotARequest(JsonKind::Array)),
            (Some(json!(true)), NotARequest(JsonKind::Boolean)),
        ] {
            assert_eq!(SessionRequest::parse(bad.as_ref()), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn refusals_read_as_sentences_with_their_code() {
        let why = SessionRequest::parse(Some(&json!(42))).unwrap_err();
        let reply = RequestError::new(&why);
        assert_eq!(
            reply.error,
            "expected a sessionId string or { sessionId }, got a number"
        );
        assert_eq!(reply.code, "INVALID_SESSION_ID");
        let why = SessionRequest::parse(Some(&json!({"sessionId": "a/b"}))).unwrap_err();
        assert_eq!(
            why.to_string(),
            "sessionId may contain only A-Z, a-z, 0-9, '.', '_', ':' and '-'; found '/'"
        );
    }
}
