//! The one path every published event takes, whether it comes from the HTTP
//! API or from a Rust backend holding an [`Emitter`]:
//! validate -> take the session's next seq -> serialize once -> broadcast ->
//! record. Validation happens before a seq is taken, and the seq is recorded
//! only after the event reached the adapter, so a refused or failed publish
//! delivers nothing and consumes nothing.

pub mod http;

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::{BroadcastError, SocketError, SocketIo};
use tracing::{Instrument, debug, info_span, warn};

use crate::{
    cluster::SessionStore,
    ops::Metrics,
    protocol::{
        Clarification, Completed, EventFamily, Fields, Invalid, ModelResult, Progress,
        SessionError, SessionEvent, SessionId, Timestamp, encode,
    },
    realtime::Subscriptions,
};

/// A validated event, addressed to a session, not yet sequenced.
#[derive(Debug, Clone)]
pub struct Publication<E = SessionEvent> {
    pub session_id: SessionId,
    pub event: E,
    /// The backend's own timestamp, when it sent one; herald's clock otherwise.
    pub timestamp: Option<Timestamp>,
}

impl<E: EventFamily> Publication<E> {
    pub fn new(session_id: SessionId, event: impl Into<E>) -> Self {
        Self {
            session_id,
            event: event.into(),
            timestamp: None,
        }
    }

    /// Validates an `{ event, data }` pair addressed to `session_id`. Refusals
    /// name the field as the request spells it (`event`, `data.prompts.total`).
    pub fn from_json(session_id: SessionId, name: &str, data: &RawValue) -> Result<Self, Invalid> {
        let (envelope, fields) = Fields::read(data).map_err(|e| e.within("data"))?;
        if let Some(other) = envelope.session_id.filter(|id| *id != session_id) {
            return Err(Invalid::new(
                "data.sessionId",
                format!(
                    "data.sessionId {other:?} differs from the session addressed, {session_id:?}"
                ),
            ));
        }
        let event = E::from_fields(name, fields)
            .ok_or_else(|| {
                Invalid::new(
                    "event",
                    format!(
                        "unknown event {name:?}; expected one of: {}",
                        E::NAMES.join(", ")
                    ),
                )
            })?
            .map_err(|e| e.within("data"))?;
        Ok(Self {
            session_id,
            event,
            timestamp: envelope.timestamp,
        })
    }
}

/// What a publish answers: the seq the event was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub session_id: SessionId,
    pub event: &'static str,
    pub seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The adapter could not take the event; nothing was delivered.
    #[error("the event could not be broadcast: {0}")]
    Broadcast(String),
}

/// The handle a Rust backend embeds to publish events, and the HTTP API's
/// way in. Cheap to clone.
#[derive(Clone)]
pub struct Emitter {
    io: SocketIo,
    sessions: Arc<SessionStore>,
    subscriptions: Arc<Subscriptions>,
    metrics: Arc<Metrics>,
}

impl Emitter {
    pub(crate) fn new(
        io: SocketIo,
        sessions: Arc<SessionStore>,
        subscriptions: Arc<Subscriptions>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            io,
            sessions,
            subscriptions,
            metrics,
        }
    }

    pub async fn progress(
        &self,
        session: &SessionId,
        event: Progress,
    ) -> Result<Receipt, PublishError> {
        self.emit(session, event).await
    }

    pub async fn model_result(
        &self,
        session: &SessionId,
        event: ModelResult,
    ) -> Result<Receipt, PublishError> {
        self.emit(session, event).await
    }

    pub async fn clarification(
        &self,
        session: &SessionId,
        event: Clarification,
    ) -> Result<Receipt, PublishError> {
        self.emit(session, event).await
    }

    pub async fn completed(
        &self,
        session: &SessionId,
        event: Completed,
    ) -> Result<Receipt, PublishError> {
        self.emit(session, event).await
    }

    pub async fn error(
        &self,
        session: &SessionId,
        event: SessionError,
    ) -> Result<Receipt, PublishError> {
        self.emit(session, event).await
    }

    /// Publishes any session event to the session's subscribers.
    pub async fn emit(
        &self,
        session: &SessionId,
        event: impl Into<SessionEvent>,
    ) -> Result<Receipt, PublishError> {
        self.publish(Publication::new(session.clone(), event)).await
    }

    /// Sequences and broadcasts a validated event.
    pub async fn publish<E: EventFamily>(
        &self,
        publication: Publication<E>,
    ) -> Result<Receipt, PublishError> {
        let Publication {
            session_id,
            event,
            timestamp,
        } = publication;
        let name = event.name();
        let span =
            info_span!("publish", session = %session_id, event = name, seq = tracing::field::Empty);
        async move {
            // The lock is held until the event is handed to the adapter: the
            // next publish to this session cannot overtake it.
            let mut record = self.sessions.lock(&session_id).await;
            let seq = record.seq + 1;
            tracing::Span::current().record("seq", seq);
            let timestamp = timestamp.unwrap_or_else(Timestamp::now);
            let payload = encode(&session_id, &timestamp, seq, &event);
            let recipients = self.subscriptions.count(&session_id);
            let undelivered = match self.io.to(session_id.room()).emit(name, &*payload).await {
                Ok(()) => 0,
                Err(BroadcastError::Socket(errors)) => self.count_undelivered(&errors),
                Err(e) => return Err(PublishError::Broadcast(e.to_string())),
            };
            record.commit(seq, event.outcome(), payload);
            drop(record);
            let delivered = recipients.saturating_sub(undelivered);
            self.metrics.published(name, delivered);
            debug!(delivered, "published");
            Ok(Receipt {
                session_id,
                event: name,
                seq,
            })
        }
        .instrument(span)
        .await
    }

    /// Sockets that could not take an event: closing ones, and slow ones
    /// whose buffer is full, which lose this event (counted and logged).
    fn count_undelivered(&self, errors: &[SocketError]) -> u32 {
        let full = errors
            .iter()
            .filter(|e| matches!(e, SocketError::InternalChannelFull))
            .count();
        if full > 0 {
            self.metrics.dropped_deliveries.inc_by(full as u64);
            warn!(
                sockets = full,
                "socket buffers full: event dropped for slow consumers"
            );
        }
        errors.len() as u32
    }
}
