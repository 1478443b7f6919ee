//! Replays the transcript of `client-examples/wscat/README.md` against a real
//! herald, so the walkthrough users follow is what herald does.

mod common;

use common::{Herald, RawSocket};

/// One line of the transcript.
enum Step {
    Send(String),
    Expect(String),
    Curl { path: String, body: String },
}

fn transcript() -> Vec<Step> {
    let doc = include_str!("../client-examples/wscat/README.md");
    let block = doc
        .split("```transcript\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```transcript block");
    block
        .lines()
        .filter_map(|line| {
            if let Some(frame) = line.strip_prefix("> ") {
                Some(Step::Send(frame.to_string()))
            } else if let Some(frame) = line.strip_prefix("< ") {
                Some(Step::Expect(frame.to_string()))
            } else if let Some(cmd) = line.strip_prefix("$ curl ") {
                let path = cmd
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("localhost:3000"))
                    .expect("curl URL");
                let body = cmd
                    .split(" -d '")
                    .nth(1)
                    .and_then(|b| b.strip_suffix('\''))
                    .expect("curl -d");
                Some(Step::Curl {
                    path: path.to_string(),
                    body: body.to_string(),
                })
            } else {
                None
            }
        })
        .collect()
}

/// Whether `got` matches `expected`, where `"..."` in `expected` stands for
/// any JSON string.
fn matches(expected: &str, got: &str) -> bool {
    let mut rest = got;
    let mut parts = expected.split("\"...\"").peekable();
    while let Some(part) = parts.next() {
        let Some(after) = rest.strip_prefix(part) else {
            return false;
        };
        rest = after;
        if parts.peek().is_some() {
            let Some(after_quote) = rest.strip_prefix('"') else {
                return false;
            };
            let Some(end) = after_quote.find('"') else {
                return false;
            };
            rest = &after_quote[end + 1..];
        }
    }
    rest.is_empty()
}

#[tokio::test]
async fn the_wscat_walkthrough_is_what_herald_does() {
    // The transcript shows the defaults, so herald runs with them.
    let herald = Herald::start(&[]).await;
    let steps = transcript();
    assert!(
        steps.len() > 10,
        "transcript too short: {} steps",
        steps.len()
    );
    let mut ws = RawSocket::open(&herald.ws_url()).await;
    let mut checked = 0;
    for step in steps {
        match step {
            Step::Send(frame) => ws.send(&frame).await,
            Step::Expect(frame) => {
                let got = ws.recv_skipping_pings().await;
                assert!(
                    matches(&frame, &got),
                    "transcript says\n  {frame}\nherald sent\n  {got}"
                );
                checked += 1;
            }
            Step::Curl { path, body } => {
                let (status, receipt) = herald.post(&path, &body).await;
                assert_eq!(status, 202, "{path} {body} -> {receipt}");
            }
        }
    }
    assert!(checked >= 10);
}

#[test]
fn the_matcher_can_fail() {
    assert!(matches(r#"{"a":"...","b":1}"#, r#"{"a":"xyz","b":1}"#));
    assert!(!matches(r#"{"a":"...","b":1}"#, r#"{"a":"xyz","b":2}"#));
    assert!(!matches(r#"{"a":"..."}"#, r#"{"a":5}"#));
    assert!(!matches("42", "421"));
}
