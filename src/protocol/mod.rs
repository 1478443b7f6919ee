//! The wire contract of PROTOCOL.md as types, with no I/O: session ids, the
//! session events, the client requests and the server's replies to them.
//! Everything that decides whether input is valid lives here, so the socket
//! handlers and the HTTP API only translate refusals into their own shapes.

mod events;
mod requests;
mod session_id;
mod values;

pub use events::{
    Clarification, ClarificationStatus, Completed, Encoded, Envelope, Event, EventFamily, Fields,
    ModelResult, ModelStatus, Outcome, Progress, Prompts, SessionError, SessionEvent,
    SessionStatus, encode,
};
pub use requests::{
    Ack, Connected, InvalidRequest, RequestError, SessionRequest, SubscriptionReply,
};
pub use session_id::{InvalidSessionId, SessionId};
pub use values::{JsonKind, JsonObject, Millis, Percent, Timestamp, ValueError};

/// A refusal of input: a readable message and the path of the offending field
/// (empty for the value as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Wraps a serde error found at `field`, dropping serde_json's "at line 1
    /// column 7" (it points into a fragment the sender never saw) and naming
    /// the missing field itself when one is missing.
    pub fn from_serde(field: &str, err: &serde_json::Error) -> Self {
        let text = err.to_string();
        let message = match text.rfind(" at line ") {
            Some(cut) if err.line() > 0 => &text[..cut],
            _ => &text,
        };
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'));
        let at = Self::new(missing.unwrap_or_default(), String::new()).within(field);
        let message = if at.field.is_empty() || missing.is_some() {
            message.to_string()
        } else {
            format!("{}: {message}", at.field)
        };
        Self::new(at.field, message)
    }

    /// The same refusal, located inside `parent` (`data`, `[3].data`, ...).
    pub fn within(mut self, parent: &str) -> Self {
        self.field = match (parent.is_empty(), self.field.is_empty()) {
            (true, _) => self.field,
            (false, true) => parent.to_string(),
            (false, false) => format!("{parent}.{}", self.field),
        };
        self
    }
}
