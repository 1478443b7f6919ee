//! What a Socket.IO client sends (`subscribe`, `unsubscribe`) and the replies
//! herald sends back (`connected`, `subscribed`, `unsubscribed`, the `error`
//! with a `code`, and acks).

use serde::Serialize;
use serde_json::Value;

use super::{Epoch, InvalidSessionId, JsonKind, Lost, SessionId, Timestamp};

/// A `subscribe` or `unsubscribe` payload: a session id string, or
/// `{ "sessionId": s, "since": seq?, "epoch": e?, "token": jwt? }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    pub session_id: SessionId,
    /// The last `seq` the client has seen: resume after it.
    pub since: Option<u64>,
    /// The epoch the client last saw, so that a sequence that started over
    /// is not mistaken for the one it knew.
    pub epoch: Option<String>,
    /// A token for this one subscription, when the connection's own does
    /// not grant the session (docs/protocol.md, authentication).
    pub token: Option<String>,
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
    #[error("epoch must be a string, got {0}")]
    BadEpoch(JsonKind),
    #[error("token must be a string, got {0}")]
    BadToken(JsonKind),
    #[error("expected a sessionId string or {{ sessionId }}, got {0}")]
    NotARequest(JsonKind),
    #[error(transparent)]
    SessionId(#[from] InvalidSessionId),
}

impl InvalidRequest {
    /// The `code` of the `error` reply. docs/protocol.md gives every malformed
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
                let epoch = match fields.get("epoch") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(e)) => Some(e.clone()),
                    Some(other) => return Err(InvalidRequest::BadEpoch(JsonKind::of_value(other))),
                };
                let token = match fields.get("token") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(t)) => Some(t.clone()),
                    Some(other) => return Err(InvalidRequest::BadToken(JsonKind::of_value(other))),
                };
                return match fields.get("sessionId") {
                    Some(Value::String(id)) => Ok(Self {
                        session_id: SessionId::parse(id)?,
                        since,
                        epoch,
                        token,
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
            epoch: None,
            token: None,
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

/// `subscribed`: the subscription took effect. Right after it come the
/// snapshot or the replayed events, then live events, every one with a seq
/// larger than this `seq`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscribed<'a> {
    pub session_id: &'a SessionId,
    pub timestamp: Timestamp,
    /// The session's last seq when the subscription took effect (0: none).
    pub seq: u64,
    pub epoch: Epoch,
    /// For a resume (`since`): whether the client missed nothing after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// For a resume: how many held events follow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<usize>,
    /// Why `recovered` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Lost>,
}

/// `unsubscribed`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionReply<'a> {
    pub session_id: &'a SessionId,
    pub timestamp: Timestamp,
}

/// The `error` event answering a client request herald did not carry out:
/// it carries a `code` and no `seq`, which tells it apart from a published
/// session `error`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestError<'a> {
    pub error: String,
    pub code: &'static str,
    /// The session the request named, when it named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<&'a SessionId>,
    pub timestamp: Timestamp,
}

impl<'a> RequestError<'a> {
    /// A request whose payload was malformed.
    pub fn new(refusal: &InvalidRequest) -> Self {
        Self {
            error: refusal.to_string(),
            code: refusal.code(),
            session_id: None,
            timestamp: Timestamp::now(),
        }
    }

    /// A well-formed subscribe herald could not carry out now (Redis is
    /// unreachable, herald is shutting down): the client may try again.
    pub const UNAVAILABLE: &'static str = "UNAVAILABLE";

    /// A subscribe past MAX_SUBSCRIPTIONS_PER_SOCKET.
    pub const TOO_MANY_SUBSCRIPTIONS: &'static str = "TOO_MANY_SUBSCRIPTIONS";
    /// A request past CLIENT_REQUESTS_PER_SEC.
    pub const RATE_LIMITED: &'static str = "RATE_LIMITED";

    /// A well-formed request refused by one of the socket's limits.
    pub fn limited(code: &'static str, error: String, session_id: Option<&'a SessionId>) -> Self {
        Self {
            error,
            code,
            session_id,
            timestamp: Timestamp::now(),
        }
    }

    pub fn unavailable(session_id: &'a SessionId, why: String) -> Self {
        Self {
            error: why,
            code: Self::UNAVAILABLE,
            session_id: Some(session_id),
            timestamp: Timestamp::now(),
        }
    }

    /// A subscribe to a session the socket's tokens do not grant: it joined
    /// nothing and was sent nothing of the session.
    pub const FORBIDDEN: &'static str = "FORBIDDEN";

    pub fn forbidden(session_id: &'a SessionId, why: String) -> Self {
        Self {
            error: why,
            code: Self::FORBIDDEN,
            session_id: Some(session_id),
            timestamp: Timestamp::now(),
        }
    }
}

/// The acknowledgement of `subscribe`/`unsubscribe` when the client asked for one.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack<'a> {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<&'a SessionId>,
    /// For a subscribe: as in `subscribed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
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
        let r = SessionRequest::parse(Some(&json!({"sessionId": "abc", "token": "t"}))).unwrap();
        assert_eq!(r.token.as_deref(), Some("t"));
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
            (
                Some(json!({"sessionId": "ok", "token": 1})),
                BadToken(JsonKind::Number),
            ),
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
