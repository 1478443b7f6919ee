//! Which stream an event belongs to: a family (session, run, workflow) and
//! an id. Storage, sequencing, history and the cluster channel are keyed by
//! [`Topic`] and never look inside a family: what differs between families
//! (their event names, where Redis keeps them) is answered here, so a new
//! family is a variant and its event module, not edits across `cluster`.

use std::fmt;

use super::{EventFamily, RunEvent, SessionEvent, SessionId, WorkflowFamily};

/// A family of events, each with its own sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Document-processing sessions (Socket.IO, docs/protocol.md).
    Session,
    /// ResearchFlow research runs (`/ws`, and Socket.IO `{ runId }`).
    Run,
    /// MeatyMusic workflow runs (`/ws/workflows`).
    Workflow,
}

impl Family {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Run => "run",
            Self::Workflow => "workflow",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Session, Self::Run, Self::Workflow]
            .into_iter()
            .find(|f| f.as_str() == text)
    }

    /// Every event name of the family.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Self::Session => SessionEvent::NAMES,
            Self::Run => RunEvent::NAMES,
            Self::Workflow => WorkflowFamily::NAMES,
        }
    }

    /// The static name of a known event of the family, for events read back
    /// from Redis.
    pub fn event_name(self, name: &str) -> Option<&'static str> {
        self.names().iter().copied().find(|known| *known == name)
    }

    /// The Redis key names of a stream's state, history and idempotency
    /// keys. Sessions keep the names they had before families existed, so a
    /// rolling upgrade finds their seqs.
    pub(crate) fn storage_names(self) -> StorageNames {
        let (state, history, idempotency) = match self {
            Self::Session => ("session", "history", "idem"),
            Self::Run => ("run", "run-history", "run-idem"),
            Self::Workflow => ("workflow", "workflow-history", "workflow-idem"),
        };
        StorageNames {
            state,
            history,
            idempotency,
        }
    }
}

impl Family {
    /// How the cluster channel names the family in an event's first line
    /// (`run/stage.progress`); `None` for sessions, whose lines stay as they
    /// were before families, so that instances of both releases understand
    /// each other during a rolling upgrade.
    pub(crate) fn channel_tag(self) -> Option<&'static str> {
        match self {
            Self::Session => None,
            other => Some(other.as_str()),
        }
    }
}

impl Family {
    /// Whether every client watching one of the family's streams tells the
    /// sequencer first (`Sequencer::attach` or `watch`), so that a cluster
    /// can send a stream's events only to the instances that asked for
    /// them. MeatyMusic's `/ws/workflows` watches runs without a word, and
    /// every run at once, so workflow events go to every instance.
    pub(crate) fn per_stream_channels(self) -> bool {
        match self {
            Self::Session | Self::Run => true,
            Self::Workflow => false,
        }
    }
}

/// What a family's keys are called in Redis.
pub(crate) struct StorageNames {
    pub state: &'static str,
    pub history: &'static str,
    pub idempotency: &'static str,
}

/// One stream of events: its own seq, epoch, state and history.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    pub family: Family,
    pub id: SessionId,
}

impl Topic {
    pub fn session(id: SessionId) -> Self {
        Self {
            family: Family::Session,
            id,
        }
    }

    pub fn run(id: SessionId) -> Self {
        Self {
            family: Family::Run,
            id,
        }
    }

    pub fn workflow(id: SessionId) -> Self {
        Self {
            family: Family::Workflow,
            id,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.family.as_str(), self.id)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Who a live event is for, beyond its own stream's subscribers: ResearchFlow
/// addresses an event to a run (the default), a project, a user, or
/// everyone; the payload names the project or user. History and replays
/// ignore it: they belong to the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    Topic,
    Project,
    User,
    All,
}

impl Scope {
    /// The name on the wire (`to`) and on the cluster channel.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Topic => "run",
            Self::Project => "project",
            Self::User => "user",
            Self::All => "all",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Topic, Self::Project, Self::User, Self::All]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}
