//! Reading a request body as JSON: the content type, the size limit (a body
//! somewhat over it is read and dropped so that a proxy still sending it sees
//! an answer), and the split between malformed JSON (400) and JSON of the
//! wrong shape (422, with the field's path), and the nesting depth of what
//! is published.

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, StatusCode, header},
};
use http_body_util::BodyExt;
use serde::Deserialize;

use serde_json::value::RawValue;

use super::ApiError;
use crate::protocol::read_json;

/// How far past the size limit a body is still read (and dropped) before a 413.
const DRAIN_FACTOR: usize = 4;

/// Reads and discards a body, up to `cap` bytes; whether it all was read.
pub(crate) async fn drain(body: Body, cap: usize) -> bool {
    let mut body = body;
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                read += frame.data_ref().map_or(0, |d| d.len());
                if read > cap {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// Reads a body: content type absent or JSON, not empty, size within the limit.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let mime = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        let mime = mime.to_ascii_lowercase();
        if mime != "application/json"
            && !(mime.starts_with("application/") && mime.ends_with("+json"))
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content type {mime:?} is not supported; send application/json"),
            ));
        }
    }
    let too_large = |drained: bool| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
        .closing(!drained)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A body somewhat over the limit is read and dropped, so a proxy that is
    // still sending it sees an answer rather than a reset connection; a far
    // larger one is refused unread, and the connection closed.
    let drain_cap = limit.saturating_mul(DRAIN_FACTOR);
    if let Some(declared) = declared.filter(|n| *n > limit as u64) {
        let drained = declared <= drain_cap as u64 && drain(body, drain_cap).await;
        return Err(too_large(drained));
    }
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            )
        })?;
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > limit {
                return Err(too_large(drain(body, drain_cap).await));
            }
            bytes.extend_from_slice(data);
        }
    }
    let bytes = Bytes::from(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "request body is empty; expected JSON",
        ));
    }
    Ok(bytes)
}

/// Refuses JSON nested deeper than `max` levels below its `envelope` (the
/// levels the request's own shape takes: 1 for `{ event, data }`, 2 for a
/// batch), before anything parses it. serde_json's recursion limit does not
/// help here: payloads are kept as `RawValue`, whose parsing skips nested
/// values without counting them, and a subscriber's own parser (serde_json,
/// 128 levels) may then fail on what herald forwarded.
pub(crate) fn check_depth(bytes: &[u8], envelope: usize, max: usize) -> Result<(), ApiError> {
    match deeper_than(bytes, envelope.saturating_add(max)) {
        false => Ok(()),
        true => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("JSON nested deeper than the limit of {max} levels (MAX_JSON_DEPTH)"),
        )),
    }
}

/// Whether the arrays and objects of `bytes` nest deeper than `max`, brackets
/// inside strings (escapes included) not counted. One pass, no allocation,
/// strings skipped with `memchr`; malformed JSON is left for the parser to
/// refuse.
fn deeper_than(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        at += 1;
        match b {
            b'"' => {
                // To the closing quote: the next quote not escaped.
                loop {
                    match memchr::memchr2(b'"', b'\\', &bytes[at..]) {
                        Some(i) if bytes[at + i] == b'\\' => at = (at + i + 2).min(bytes.len()),
                        Some(i) => {
                            at += i + 1;
                            break;
                        }
                        None => return false,
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses JSON: syntax errors are 400, shape errors 422 with the field's path.
pub(crate) fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    // The whole body must be JSON before its shape is judged, as `JSON.parse`
    // would: trailing junk or a syntax error after a shape error is a 400.
    let json: &RawValue = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    read_json(json).map_err(ApiError::invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn depth_at_the_limit_passes_and_one_past_it_is_refused() {
        assert!(!deeper_than(nested(64).as_bytes(), 64));
        assert!(deeper_than(nested(65).as_bytes(), 64));
        assert!(!deeper_than(br#"{"a":{"b":[1,{"c":2}]}}"#, 4));
        assert!(deeper_than(br#"{"a":{"b":[1,{"c":2}]}}"#, 3));
    }

    #[test]
    fn brackets_in_strings_do_not_count() {
        assert!(!deeper_than(br#"{"a":"[[[[{{{{"}"#, 1));
        assert!(!deeper_than(br#"{"a":"\"[[[[\\"}"#, 1));
        // An escaped backslash ends before the quote: the string closes.
        assert!(deeper_than(br#"{"a":"\\","b":[[1]]}"#, 2));
        // Cut short inside a string or an escape: no panic, left to the parser.
        assert!(!deeper_than(br#"{"a":"x\"#, 1));
        assert!(!deeper_than(br#"{"a":"x"#, 1));
    }

    #[test]
    fn the_envelope_does_not_count_against_the_limit() {
        let body = format!(r#"{{"event":"completed","data":{}}}"#, nested(64));
        assert!(check_depth(body.as_bytes(), 1, 64).is_ok());
        let body = format!(r#"{{"event":"completed","data":{}}}"#, nested(65));
        let refused = check_depth(body.as_bytes(), 1, 64).unwrap_err();
        assert!(format!("{refused:?}").contains("64"), "{refused:?}");
    }
}
