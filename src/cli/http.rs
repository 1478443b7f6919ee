//! What the client tools (`tail`, `publish`, `check`) share: where herald
//! is (`--url`), the exit codes scripts test, and reading herald's answers
//! (a refusal's readable message). Kept apart from the tools so that each
//! states the same thing the same way.

use std::{process::ExitCode, time::Duration};

use reqwest::Url;
use serde_json::Value;

/// How a client tool ends, for scripts: the codes are the same for every
/// tool (`2` is also clap's own code for a bad command line).
/// Ordered by gravity, so that several outcomes fold into the worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Exit {
    Ok = 0,
    /// herald answered and refused (or, for `check`, is not ready).
    Refused = 1,
    /// The command line or its input is wrong; nothing was sent.
    Usage = 2,
    /// herald could not be reached (or did not answer as herald does).
    Unreachable = 3,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit as u8)
    }
}

/// Where herald serves, for `--url`.
#[derive(clap::Args)]
pub(crate) struct Target {
    /// herald's base URL (http://host:port, plus a path prefix if a proxy
    /// serves it under one).
    #[arg(long, env = "HERALD_URL", default_value = DEFAULT_URL, value_parser = parse_url)]
    pub url: Url,
}

pub(crate) const DEFAULT_URL: &str = "http://127.0.0.1:3000";

/// Reads a base URL: http only, since this build has no TLS client (reach
/// a TLS deployment through its private address or a tunnel).
pub(crate) fn parse_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(
                "https is not supported by the herald CLI; use herald's http address".into(),
            );
        }
        other => return Err(format!("expected an http:// URL, got {other}://")),
    }
    if !url.path().ends_with('/') {
        // So that joining "api/v1/..." keeps a proxy's path prefix.
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// `path` (relative, no leading slash) under the base URL.
pub(crate) fn endpoint(base: &Url, path: &str) -> Url {
    base.join(path).expect("a relative path joins any http URL")
}

/// An HTTP client whose requests give up after `timeout`.
pub(crate) fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("a plain-http client always builds")
}

/// A transport error worded for a person: its root cause (connection
/// refused, timed out, no such host), which reqwest's own text hides behind
/// the URL (callers say which URL).
pub(crate) fn describe(err: &reqwest::Error) -> String {
    let mut root: &dyn std::error::Error = err;
    while let Some(cause) = root.source() {
        root = cause;
    }
    root.to_string()
}

/// The readable part of a refusal body (`{ error, field?, code? }`, see
/// docs/protocol.md), or the body itself when it is not one.
pub(crate) fn refusal_message(status: reqwest::StatusCode, body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let Some(error) = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str)
    else {
        return format!("{status}: {}", body.trim());
    };
    let mut text = format!("{status}: {error}");
    for key in ["field", "code"] {
        if let Some(value) = parsed
            .as_ref()
            .and_then(|v| v.get(key))
            .and_then(Value::as_str)
        {
            text.push_str(&format!(" ({key} {value})"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_path_prefix_and_refuse_tls() {
        let base = parse_url("http://h:3000").unwrap();
        assert_eq!(endpoint(&base, "ready").as_str(), "http://h:3000/ready");
        let base = parse_url("http://h/herald").unwrap();
        assert_eq!(endpoint(&base, "ready").as_str(), "http://h/herald/ready");
        assert!(parse_url("https://h").unwrap_err().contains("https"));
        assert!(parse_url("h:3000").is_err());
    }

    #[test]
    fn refusals_read_as_herald_worded_them() {
        let status = reqwest::StatusCode::UNPROCESSABLE_ENTITY;
        let body = r#"{"error":"progress: must be a number from 0 to 100, got 140","field":"data.progress"}"#;
        assert_eq!(
            refusal_message(status, body),
            "422 Unprocessable Entity: progress: must be a number from 0 to 100, got 140 (field data.progress)"
        );
        assert_eq!(
            refusal_message(reqwest::StatusCode::BAD_GATEWAY, "bad gateway\n"),
            "502 Bad Gateway: bad gateway"
        );
    }
}
