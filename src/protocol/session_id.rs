//! Session ids: the one rule (1 to 128 of `[A-Za-z0-9._:-]`) that the socket
//! handlers, the HTTP API and the Rust helpers all check, and the room name a
//! session maps to.
//!
//! The check lives in the type: a `SessionId` that exists is valid, so code
//! past the edges never re-validates.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

/// A validated session id. Cheap to clone: the text is shared.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(Arc<str>);

/// Why a session id was refused, worded for the client that sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSessionId {
    #[error("sessionId must not be empty")]
    Empty,
    #[error("sessionId is {0} characters long; the limit is {max}", max = SessionId::MAX_LEN)]
    TooLong(usize),
    #[error("sessionId may contain only A-Z, a-z, 0-9, '.', '_', ':' and '-'; found {0:?}")]
    BadCharacter(char),
}

impl SessionId {
    pub const MAX_LEN: usize = 128;

    /// Room prefix: a session room can never collide with a socket id or with
    /// the rooms of another event family.
    const ROOM_PREFIX: &'static str = "session:";
    const ARRIVING_PREFIX: &'static str = "arriving:";

    pub fn parse(text: &str) -> Result<Self, InvalidSessionId> {
        Self::check(text)?;
        Ok(Self(Arc::from(text)))
    }

    fn check(text: &str) -> Result<(), InvalidSessionId> {
        if text.is_empty() {
            return Err(InvalidSessionId::Empty);
        }
        let len = text.chars().count();
        if len > Self::MAX_LEN {
            return Err(InvalidSessionId::TooLong(len));
        }
        match text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            Some(bad) => Err(InvalidSessionId::BadCharacter(bad)),
            None => Ok(()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The session a room is for: its subscribers' room or its arriving
    /// subscribers' room.
    pub fn of_room(room: &str) -> Option<&str> {
        room.strip_prefix(Self::ROOM_PREFIX)
            .or_else(|| room.strip_prefix(Self::ARRIVING_PREFIX))
    }

    /// The Socket.IO room whose members are this session's subscribers.
    pub fn room(&self) -> String {
        self.prefixed(Self::ROOM_PREFIX)
    }

    /// The room of subscribers that have their snapshot or replay and wait
    /// for the first live event to join [`SessionId::room`]: counted as
    /// subscribers, not sent the room's events.
    pub fn arriving_room(&self) -> String {
        self.prefixed(Self::ARRIVING_PREFIX)
    }

    fn prefixed(&self, prefix: &str) -> String {
        let mut room = String::with_capacity(prefix.len() + self.0.len());
        room.push_str(prefix);
        room.push_str(&self.0);
        room
    }
}

impl TryFrom<String> for SessionId {
    type Error = InvalidSessionId;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::check(&text)?;
        Ok(Self(Arc::from(text)))
    }
}

impl TryFrom<&str> for SessionId {
    type Error = InvalidSessionId;
    fn try_from(text: &str) -> Result<Self, Self::Error> {
        Self::parse(text)
    }
}

impl std::str::FromStr for SessionId {
    type Err = InvalidSessionId;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl From<SessionId> for String {
    fn from(id: SessionId) -> String {
        id.0.to_string()
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_uuids_and_the_allowed_punctuation() {
        for ok in [
            "a",
            "0b6a3c1e-1f0e-4c4e-9a8e-5d1b1f4b2a10",
            "job.42:stage_1-b",
            &"x".repeat(128),
        ] {
            assert_eq!(SessionId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_each_class_of_bad_id() {
        assert_eq!(SessionId::parse(""), Err(InvalidSessionId::Empty));
        assert_eq!(
            SessionId::parse(&"x".repeat(129)),
            Err(InvalidSessionId::TooLong(129))
        );
        assert_eq!(
            SessionId::parse("a b"),
            Err(InvalidSessionId::BadCharacter(' '))
        );
        assert_eq!(
            SessionId::parse("a/b"),
            Err(InvalidSessionId::BadCharacter('/'))
        );
        assert_eq!(
            SessionId::parse("é"),
            Err(InvalidSessionId::BadCharacter('é'))
        );
    }

    #[test]
    fn rooms_are_prefixed() {
        let id = SessionId::parse("abc").unwrap();
        assert_eq!(
            (id.room(), id.arriving_room()),
            ("session:abc".into(), "arriving:abc".into())
        );
        assert_eq!(SessionId::of_room("arriving:abc"), Some("abc"));
        assert_eq!(SessionId::of_room("session:abc"), Some("abc"));
        assert_eq!(SessionId::of_room("abc"), None);
    }
}
