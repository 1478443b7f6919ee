//! The words of recovery on the wire: a sequence's epoch, and why a resume
//! was not complete. Herald makes epochs; clients only hand them back.

use std::fmt;

use serde::{Serialize, Serializer};

/// The identity of a session's sequence: fixed when its state is created,
/// new whenever that state was lost and `seq` started again at 1. Opaque to
/// clients: 12 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(u64);

impl Epoch {
    /// A fresh epoch; 48 random bits, so that two sequences of one session
    /// never share one in practice.
    pub fn fresh() -> Self {
        Self(super::random_u64() & 0xffff_ffff_ffff)
    }

    /// Reads an epoch as herald wrote it (lowercase hex, the way the Redis
    /// scripts compare them); anything else is no epoch of ours.
    pub fn parse(text: &str) -> Option<Self> {
        let ours = text.len() == 12 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ours.then(|| u64::from_str_radix(text, 16).ok())
            .flatten()
            .map(Self)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

impl Serialize for Epoch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why a resume could not be told "you missed nothing".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lost {
    /// Events after `since` were already dropped from history.
    HistoryTruncated,
    /// The sequence the client knew is gone (its epoch is not the session's,
    /// or it claims a seq this sequence never reached).
    EpochChanged,
}

impl Lost {
    /// The `reason` a client is given.
    pub fn reason(self) -> &'static str {
        match self {
            Self::HistoryTruncated => "history_truncated",
            Self::EpochChanged => "epoch_changed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_print_and_parse_as_twelve_hex_digits() {
        let e = Epoch::fresh();
        let text = e.to_string();
        assert_eq!(text.len(), 12);
        assert_eq!(Epoch::parse(&text), Some(e));
        assert_eq!(Epoch::parse("xyz"), None);
        assert_eq!(Epoch::parse("0000000000001"), None);
        assert_eq!(Epoch::parse("00000000000A"), None, "as the scripts compare");
        assert_ne!(Epoch::fresh(), Epoch::fresh());
    }

    #[test]
    fn reasons_are_snake_case() {
        assert_eq!(
            serde_json::to_value(Lost::EpochChanged).unwrap(),
            Lost::EpochChanged.reason()
        );
        assert_eq!(Lost::HistoryTruncated.reason(), "history_truncated");
    }
}
