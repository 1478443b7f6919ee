//! Cheap field extraction from Socket.IO event frames, without parsing JSON.
//!
//! A session event arrives as one WebSocket text frame such as
//! `42["model_result",{"sessionId":"bench-3","timestamp":"...","seq":5,
//! "modelName":"bench","duration":0,"result":"1712345678901234567","status":"completed"}]`.
//! Field order differs between servers, so each key is searched for on its
//! own (SIMD substring search over a few hundred bytes).

use std::sync::LazyLock;

use memchr::memmem::Finder;

static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));
static SESSION: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"sessionId\":\""));
static RESULT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"result\":\""));

/// What a session event frame carries for the receiver's bookkeeping.
#[derive(Debug, PartialEq, Eq)]
pub struct EventFields<'a> {
    pub seq: u64,
    pub session: Option<&'a [u8]>,
    /// The publisher's send time (unix ns) from `data.result`, when it is a number.
    pub sent_ns: Option<u64>,
}

fn digits(s: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    let mut any = false;
    for &c in s {
        if c.is_ascii_digit() {
            n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            any = true;
        } else {
            break;
        }
    }
    any.then_some(n)
}

/// Extracts `seq`, `sessionId` and the send time from a `42[...]` frame;
/// `None` for frames that carry no `seq` (`connected`, `subscribed`, client
/// errors...).
pub fn event_fields(frame: &[u8]) -> Option<EventFields<'_>> {
    if !frame.starts_with(b"42[") {
        return None;
    }
    let at = SEQ.find(frame)? + 6;
    let rest = &frame[at..];
    let skip = rest.iter().take_while(|c| c.is_ascii_whitespace()).count();
    let seq = digits(&rest[skip..])?;
    let session = SESSION.find(frame).and_then(|i| {
        let start = i + 13;
        let len = memchr::memchr(b'"', &frame[start..])?;
        Some(&frame[start..start + len])
    });
    let sent_ns = RESULT.find(frame).and_then(|i| digits(&frame[i + 10..]));
    Some(EventFields {
        seq,
        session,
        sent_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_frame() {
        let f = br#"42["model_result",{"sessionId":"bench-3","timestamp":"2025-01-01T00:00:00.000Z","seq":17,"modelName":"bench","duration":0,"result":"1712345678901234567","status":"completed"}]"#;
        let e = event_fields(f).unwrap();
        assert_eq!(e.seq, 17);
        assert_eq!(e.session, Some(&b"bench-3"[..]));
        assert_eq!(e.sent_ns, Some(1_712_345_678_901_234_567));
    }

    #[test]
    fn other_order_and_spaces() {
        let f =
            br#"42["model_result",{"modelName":"bench","result":"99","seq": 5,"sessionId":"s"}]"#;
        let e = event_fields(f).unwrap();
        assert_eq!(
            (e.seq, e.session, e.sent_ns),
            (5, Some(&b"s"[..]), Some(99))
        );
    }

    #[test]
    fn not_session_events() {
        assert!(event_fields(br#"42["subscribed",{"sessionId":"s","timestamp":"x"}]"#).is_none());
        assert!(event_fields(b"2").is_none());
        assert!(event_fields(br#"42["connected",{"socketId":"a"}]"#).is_none());
        let f = br#"42["completed",{"sessionId":"s","seq":3,"result":{"a":1}}]"#;
        assert_eq!(event_fields(f).unwrap().sent_ns, None);
    }
}
