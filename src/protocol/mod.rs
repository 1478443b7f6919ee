//! The wire contract (docs/protocol.md) as types, with no I/O: session ids, the
//! session events, the client requests and the server's replies to them.
//! Everything that decides whether input is valid lives here, so the socket
//! handlers and the HTTP API only translate refusals into their own shapes.
//! Refusals are typed: [`Invalid`] for a published event or HTTP body (built
//! from serde's structured errors, see `schema`), [`InvalidRequest`] for a
//! client's request, [`ValueError`] and [`InvalidSessionId`] for a value that
//! breaks its own rule.

mod events;
mod recovery;
mod requests;
mod runs;
mod schema;
mod session_id;
mod topic;
mod values;
mod workflows;

pub use events::{
    Clarification, ClarificationStatus, Completed, Encoded, Envelope, Event, EventFamily, Fields,
    ModelResult, ModelStatus, Outcome, Progress, Prompts, SessionError, SessionEvent,
    SessionStatus, encode,
};
pub use recovery::{Epoch, Lost};
pub use requests::{
    Ack, Connected, InvalidRequest, RequestError, SessionRequest, Subscribed, SubscriptionReply,
};
pub use runs::{
    ApprovalDenied, ApprovalGranted, ArtifactCreated, GovernanceRequired, RUN_CATEGORIES,
    RunCompleted, RunCreated, RunEvent, RunFailed, RunStarted, RunTypes, StageCompleted,
    StageFailed, StageProgress, StageStarted, socketio_payload,
};
pub use schema::{Found, SchemaError, read_json};
pub use session_id::{InvalidSessionId, SessionId};
pub use topic::{Family, Scope, Topic};
pub use values::{JsonKind, JsonObject, Millis, Percent, Timestamp, ValueError};
pub use workflows::{Phase, WorkflowEvent, WorkflowFamily, workflow_frame};

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

    /// A value that does not fit its schema, found at `path` (for a missing
    /// field, in the object that lacks it). The message leads with the path,
    /// so it reads on its own.
    pub fn schema(path: &str, err: SchemaError) -> Self {
        let field = match &err {
            SchemaError::MissingField(name) => Self::new(*name, "").within(path).field,
            _ => path.to_string(),
        };
        let message = if path.is_empty() {
            err.to_string()
        } else {
            format!("{path}: {err}")
        };
        Self::new(field, message)
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

/// A random number, without a dependency for it: epochs and instance ids
/// need to differ, not to be unguessable.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}
