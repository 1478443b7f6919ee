//! What a Socket.IO client sends (`subscribe`, `unsubscribe`) and the replies
//! herald sends back (`connected`, `subscribed`, `unsubscribed`, the `error`
//! with a `code`, and acks).

use serde::Serialize;
use serde_json::Value;

use super::{SessionId, Timestamp};

/// A `subscribe` or `unsubscribe` payload: a session id string, or
/// `{ "sessionId": s, "since": seq? }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    pub session_id: SessionId,
    /// The last `seq` the client has seen. Accepted and checked now so that
    /// clients written for replay connect today; replay itself is not built yet.
    pub since: Option<u64>,
}

impl SessionRequest {
    /// Reads the first argument of the event, refusing each bad class of
    /// payload with a message that says what was wrong.
    pub fn parse(payload: Option<&Value>) -> Result<Self, String> {
        let id = match payload {
            None | Some(Value::Null) => return Err("a sessionId is required".into()),
            Some(Value::String(id)) => id,
            Some(Value::Object(fields)) => {
                let since = match fields.get("since") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(
                        v.as_u64()
                            .ok_or("since must be a non-negative integer sequence number")?,
                    ),
                };
                return match fields.get("sessionId") {
                    Some(Value::String(id)) => Ok(Self {
                        session_id: SessionId::parse(id).map_err(|e| e.to_string())?,
                        since,
                    }),
                    None | Some(Value::Null) => Err("the object has no sessionId field".into()),
                    Some(other) => Err(format!("sessionId must be a string, got {}", kind(other))),
                };
            }
            Some(other) => {
                return Err(format!(
                    "expected a sessionId string or {{ sessionId }}, got {}",
                    kind(other)
                ));
            }
        };
        Ok(Self {
            session_id: SessionId::parse(id).map_err(|e| e.to_string())?,
            since: None,
        })
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
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
    pub const INVALID_SESSION_ID: &'static str = "INVALID_SESSION_ID";

    pub fn invalid_session_id(error: String) -> Self {
        Self {
            error,
            code: Self::INVALID_SESSION_ID,
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
        for bad in [
            None,
            Some(json!(null)),
            Some(json!(42)),
            Some(json!("")),
            Some(json!("x".repeat(129))),
            Some(json!("a b")),
            Some(json!({})),
            Some(json!({"sessionId": 5})),
            Some(json!({"sessionId": "ok", "since": -1})),
            Some(json!(["abc"])),
            Some(json!(true)),
        ] {
            assert!(SessionRequest::parse(bad.as_ref()).is_err(), "{bad:?}");
        }
    }
}
