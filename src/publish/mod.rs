//! The one path every published event takes, whether it comes from the HTTP
//! API or from a Rust backend holding an [`Emitter`]:
//! validate -> serialize once -> sequence, and hand to the fan-out (a
//! [`Sequencer`](crate::cluster::Sequencer), whichever backend runs).
//! Validation happens before a seq is taken, and a seq is recorded only with
//! an event that reached the broadcast, so a refused or failed publish
//! delivers nothing and consumes nothing.

pub(crate) mod api;
pub(crate) mod families;

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use tracing::{Instrument, debug, info_span};

use crate::{
    cluster::{Fingerprint, Keyed, Outbound, Published, Sequencer, SequencerError},
    metrics::Metrics,
    protocol::{
        Clarification, Completed, EventFamily, Fields, Invalid, ModelResult, Progress, Scope,
        SessionError, SessionEvent, SessionId, Timestamp, Topic, encode,
    },
};

/// A validated event, addressed to a stream of its family (a session, a
/// run, a workflow run: `session_id` is that stream's id), not yet sequenced.
#[derive(Debug, Clone)]
pub struct Publication<E = SessionEvent> {
    pub session_id: SessionId,
    pub event: E,
    /// The backend's own timestamp, when it sent one; herald's clock otherwise.
    pub timestamp: Option<Timestamp>,
    /// Who the live event is for beyond the stream's subscribers.
    pub to: Scope,
}

impl<E: EventFamily> Publication<E> {
    pub fn new(session_id: SessionId, event: impl Into<E>) -> Self {
        Self {
            session_id,
            event: event.into(),
            timestamp: None,
            to: Scope::Topic,
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
            to: Scope::Topic,
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

/// Why a validated event was not published, or may not have been.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event could not be made to reach every subscriber (the cluster
    /// link is down, Redis failed the request); nothing was delivered and no
    /// seq consumed, except with [`SequencerError::OutcomeUnknown`]: then
    /// Redis may have published it (retry with the same idempotency key).
    #[error(transparent)]
    Unavailable(#[from] SequencerError),
    /// The idempotency key already published a different event to the
    /// session (it got `seq`), within `IDEMPOTENCY_TTL_SECS`: nothing was
    /// published. A new event needs a new key.
    #[error(
        "this idempotency key already published a different event to {session:?} (seq {seq}); a new event needs a new key"
    )]
    KeyReused { session: SessionId, seq: u64 },
}

impl PublishError {
    /// Whether the event may have been published all the same.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(SequencerError::OutcomeUnknown { .. })
        )
    }
}

/// The handle a Rust backend embeds to publish events, and the HTTP API's
/// way in. Cheap to clone.
#[derive(Clone)]
pub struct Emitter {
    sequencer: Arc<dyn Sequencer>,
    metrics: Arc<Metrics>,
}

impl Emitter {
    pub(crate) fn new(sequencer: Arc<dyn Sequencer>, metrics: Arc<Metrics>) -> Self {
        Self { sequencer, metrics }
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
        self.publish_once(publication, None).await
    }

    /// Like [`Emitter::publish`], with an idempotency key: a publish to the
    /// same session with a key already used (within `IDEMPOTENCY_TTL_SECS`)
    /// publishes nothing. The same event again is a retry, answered with the
    /// first one's seq, so that a publish whose outcome was unknown can be
    /// retried safely; a different event is refused with
    /// [`PublishError::KeyReused`].
    pub async fn publish_once<E: EventFamily>(
        &self,
        publication: Publication<E>,
        idempotency_key: Option<&str>,
    ) -> Result<Receipt, PublishError> {
        let keyed = idempotency_key.map(|key| {
            let mut sent = publication.event.name().as_bytes().to_vec();
            sent.push(b'\n');
            serde_json::to_writer(&mut sent, &publication.event).expect("events serialize");
            Keyed {
                key,
                fingerprint: Fingerprint::of(&sent),
            }
        });
        self.publish_keyed(publication, keyed).await
    }

    /// [`Emitter::publish_once`] with the fingerprint of what the publisher
    /// sent (the HTTP API's request), so that a retry is judged by its bytes.
    pub(crate) async fn publish_keyed<E: EventFamily>(
        &self,
        publication: Publication<E>,
        idempotency: Option<Keyed<'_>>,
    ) -> Result<Receipt, PublishError> {
        let Publication {
            session_id,
            event,
            timestamp,
            to,
        } = publication;
        let name = event.name();
        let family = E::FAMILY.as_str();
        let span = info_span!("publish", family, session = %session_id, event = name, seq = tracing::field::Empty);
        async move {
            let timestamp = timestamp.unwrap_or_else(Timestamp::now);
            let topic = Topic {
                family: E::FAMILY,
                id: session_id,
            };
            let out = Outbound {
                topic: &topic,
                name,
                scope: to,
                encoded: encode(&topic.id, &timestamp, &event),
                outcome: event.outcome(),
                idempotency,
            };
            let seq = match self.sequencer.publish(out).await? {
                Published::Sent(seq) => {
                    self.metrics.published(E::FAMILY, name);
                    debug!(seq, "published");
                    seq
                }
                Published::Repeat(seq) => {
                    debug!(seq, "a retry of an idempotent publish: nothing sent again");
                    seq
                }
                Published::KeyReused(seq) => {
                    return Err(PublishError::KeyReused {
                        session: topic.id,
                        seq,
                    });
                }
            };
            tracing::Span::current().record("seq", seq);
            Ok(Receipt {
                session_id: topic.id,
                event: name,
                seq,
            })
        }
        .instrument(span)
        .await
    }
}
