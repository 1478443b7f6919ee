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
/// `None` for frames that carry no `seq` (`connected`, client errors...)
/// and for `subscribed`.
pub fn event_fields(frame: &[u8]) -> Option<EventFields<'_>> {
    // herald's `subscribed` reply carries the session's `seq` too: it is
    // not an event.
    if !frame.starts_with(b"42[") || frame.starts_with(b"42[\"subscribed\"") {
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

/// The string value of `"key":"` (given with its quotes and colon, e.g.
/// `b"\"epoch\":\""`), up to the next quote: for ids and epochs, which
/// never hold escapes.
pub fn string_field<'a>(frame: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let start = memchr::memmem::find(frame, key)? + key.len();
    let len = memchr::memchr(b'"', &frame[start..])?;
    Some(&frame[start..start + len])
}

/// The unsigned integer value of `"key":` (given with its quotes and colon).
pub fn number_field(frame: &[u8], key: &[u8]) -> Option<u64> {
    let start = memchr::memmem::find(frame, key)? + key.len();
    let rest = &frame[start..];
    let skip = rest.iter().take_while(|c| c.is_ascii_whitespace()).count();
    digits(&rest[skip..])
}

/// The last argument of a `42[...]` event frame when it is a plain string
/// after at least one other element: where Socket.IO's connection state
/// recovery puts the packet's offset (`42["ev",{...},"<offset>"]`). The
/// client remembers it and sends it back in the CONNECT auth on reconnect.
pub fn trailing_string(frame: &[u8]) -> Option<&[u8]> {
    if !frame.starts_with(b"42[") || !frame.ends_with(b"\"]") || frame.len() < 6 {
        return None;
    }
    let end = frame.len() - 2;
    let open = memchr::memrchr(b'"', &frame[..end])?;
    let value = &frame[open + 1..end];
    (frame[open - 1] == b',' && !value.contains(&b'\\')).then_some(value)
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
        assert!(
            event_fields(br#"42["subscribed",{"sessionId":"s","seq":4,"epoch":"e"}]"#).is_none()
        );
        assert!(event_fields(b"2").is_none());
        assert!(event_fields(br#"42["connected",{"socketId":"a"}]"#).is_none());
        let f = br#"42["completed",{"sessionId":"s","seq":3,"result":{"a":1}}]"#;
        assert_eq!(event_fields(f).unwrap().sent_ns, None);
    }

    #[test]
    fn recovery_fields() {
        let f = br#"42["model_result",{"sessionId":"s","seq":3,"result":"1"},"abc-_9"]"#;
        assert_eq!(trailing_string(f), Some(&b"abc-_9"[..]));
        assert_eq!(event_fields(f).unwrap().seq, 3);
        assert_eq!(trailing_string(br#"42["model_result",{"seq":3}]"#), None);
        assert_eq!(trailing_string(br#"42["only"]"#), None);
        let sub = br#"42["subscribed",{"sessionId":"s","seq":9,"epoch":"a55bd42d7126","recovered":true,"replayed": 4}]"#;
        assert_eq!(
            string_field(sub, b"\"epoch\":\""),
            Some(&b"a55bd42d7126"[..])
        );
        assert_eq!(number_field(sub, b"\"replayed\":"), Some(4));
        assert_eq!(number_field(sub, b"\"missing\":"), None);
        assert_eq!(
            string_field(br#"40{"sid":"x","pid":"p1"}"#, b"\"pid\":\""),
            Some(&b"p1"[..])
        );
    }
}
