//! `herald tail <session>`: watches a session from a terminal, one line per
//! event (time, seq, event, compact payload; `--json`: one JSON object per
//! line, `{ event, data }` as the history API gives them), and keeps
//! watching across reconnects and herald restarts. It subscribes the way
//! docs/protocol.md's recovery section tells a client to: plainly the first
//! time (the session's snapshot, then live events) or with `--since N`, and
//! after every reconnect with `since` = the last seq seen and its `epoch`,
//! so that it shows every event once and in order. When herald cannot give
//! back all that was missed, it says so on stderr: which seqs are gone
//! (history truncated), or that the session's sequence started over (epoch
//! changed). stdout carries events only, so that it can be piped.

use std::{io::Write, time::Duration};

use herald::protocol::{Fields, Lost, SessionId};
use serde::Deserialize;
use serde_json::{Value, json, value::RawValue};

use super::{
    http::{Exit, Target},
    socketio::{Failure, Incoming, Socket},
};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The session to watch.
    #[arg(value_parser = SessionId::parse)]
    session: SessionId,

    /// Start after this seq: every held event after it, then live ones
    /// (`--since 0`: the whole held history). Without it, the session's
    /// latest state first.
    #[arg(long)]
    since: Option<u64>,

    /// Print each event as one JSON object, `{"event": ..., "data": ...}`.
    #[arg(long)]
    json: bool,

    /// A token (JWT) granting the session, when herald requires tokens.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// A shell command that prints a fresh token, run before every
    /// connection, as socket.io-client's `auth` callback: for a watch that
    /// outlives its tokens (herald closes a socket whose token expired, and
    /// the reconnect brings a new one). For example `--token-command
    /// 'herald token --sessions doc-42 --ttl 15m'`, or a call to the
    /// backend that mints them.
    #[arg(long, conflicts_with = "token")]
    token_command: Option<String>,

    #[command(flatten)]
    target: Target,
}

/// `subscribed`'s fields that steer resuming (docs/protocol.md, section 1).
#[derive(Deserialize)]
struct Subscribed {
    seq: u64,
    epoch: String,
    recovered: Option<bool>,
    reason: Option<String>,
}

/// Where the watch stands, carried across connections.
struct Position {
    /// Every event up to this seq was printed or deliberately not (before
    /// the snapshot): the `since` of the next subscribe.
    seen: Option<u64>,
    /// The sequence `seen` belongs to.
    epoch: Option<String>,
    /// The seq of `subscribed` while its snapshot is arriving: events at or
    /// below it are the snapshot, printed though older than `seen`.
    snapshot_until: Option<u64>,
}

/// Waits between reconnection attempts: doubling from the first, up to the
/// last, back to the first once a subscription takes effect.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn run(args: &Args) -> Exit {
    let mut position = Position {
        seen: args.since,
        epoch: None,
        snapshot_until: None,
    };
    let mut backoff = BACKOFF.0;
    loop {
        let token = match &args.token_command {
            Some(command) => match run_token_command(command) {
                Ok(token) => Some(token),
                Err(why) => return refused(&why),
            },
            None => args.token.clone(),
        };
        let auth = token.map(|token| json!({ "token": token }));
        let why = match Socket::connect(&args.target.url, auth.as_ref()).await {
            Ok(mut socket) => match watch(&mut socket, args, &mut position, &mut backoff).await {
                Ok(exit) => return exit,
                Err(Failure::Lost(why)) => why,
                Err(Failure::Refused(why)) => return refused(&why),
            },
            Err(Failure::Lost(why)) => why,
            Err(Failure::Refused(why)) => return refused(&why),
        };
        note(&format!(
            "disconnected ({why}); reconnecting in {} ms",
            backoff.as_millis()
        ));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// The token `command` prints (`sh -c`), trimmed. Blocking: nothing else
/// runs while tail connects.
fn run_token_command(command: &str) -> Result<String, String> {
    let output = std::process::Command::new("sh")
        .args(["-c", command])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run the token command: {e}"))?;
    if !output.status.success() {
        return Err(format!("the token command failed ({})", output.status));
    }
    let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if token.is_empty() {
        return Err("the token command printed no token".into());
    }
    Ok(token)
}

fn refused(why: &str) -> Exit {
    note(&format!("refused: {why}"));
    Exit::Refused
}

/// A status line, on stderr so that stdout stays events only.
fn note(text: &str) {
    eprintln!("herald tail: {text}");
}

/// Subscribes on `socket` and prints what arrives until the connection ends
/// (`Err`) or stdout is closed (`Ok`).
async fn watch(
    socket: &mut Socket,
    args: &Args,
    position: &mut Position,
    backoff: &mut Duration,
) -> Result<Exit, Failure> {
    let mut request = json!({ "sessionId": args.session.as_str() });
    if let Some(seen) = position.seen {
        request["since"] = json!(seen);
    }
    if let Some(epoch) = &position.epoch {
        request["epoch"] = json!(epoch);
    }
    let ack_id = socket.emit_with_ack("subscribe", &request).await?;
    let mut out = std::io::stdout().lock();
    loop {
        let (name, data) = match socket.next().await? {
            Incoming::Ack(id, ack) if id == ack_id => {
                if ack.get("ok") != Some(&Value::Bool(true)) {
                    return Err(subscribe_refused(&ack));
                }
                continue;
            }
            Incoming::Ack(..) => continue,
            Incoming::Event(name, data) => (name, data),
        };
        let Ok(fields) = Fields::all(&data) else {
            continue;
        };
        let text = |name| {
            fields
                .get(name)
                .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        };
        if text("sessionId").as_deref() != Some(args.session.as_str()) {
            continue;
        }
        if name == "subscribed" {
            if let Ok(subscribed) = serde_json::from_str(data.get()) {
                subscribed_to(position, subscribed);
                *backoff = BACKOFF.0;
            }
            continue;
        }
        // Session events carry a seq; the replies to requests do not.
        let Some(seq) = fields
            .get("seq")
            .and_then(|raw| serde_json::from_str::<u64>(raw.get()).ok())
        else {
            if let Some(error) = text("error") {
                note(&format!("herald refused a request: {error}"));
            }
            continue;
        };
        if !position.admits(seq) {
            continue;
        }
        if write_event(&mut out, args.json, &name, &data, &fields).is_err() {
            // stdout closed (`| head`): nothing more to do.
            return Ok(Exit::Ok);
        }
    }
}

/// A refused subscribe: a FORBIDDEN or malformed one would be refused again,
/// but one herald cannot serve now (UNAVAILABLE, RATE_LIMITED) is retried.
fn subscribe_refused(ack: &Value) -> Failure {
    let field = |name| ack.get(name).and_then(Value::as_str).unwrap_or("");
    let why = format!("subscribe refused: {} ({})", field("error"), field("code"));
    match field("code") {
        "FORBIDDEN" | "INVALID_SESSION_ID" | "TOO_MANY_SUBSCRIPTIONS" => Failure::Refused(why),
        _ => Failure::Lost(why),
    }
}

/// Takes in a `subscribed`: says what resuming could not recover.
fn subscribed_to(position: &mut Position, subscribed: Subscribed) {
    // A snapshot still arriving on the connection before is over.
    position.snapshot_until = None;
    let changed = position
        .epoch
        .as_ref()
        .is_some_and(|known| *known != subscribed.epoch)
        || subscribed.reason.as_deref() == Some(Lost::EpochChanged.reason());
    if changed {
        note(&format!(
            "the session's sequence started over (epoch {} -> {}): whatever followed seq {} in \
             the old one is gone; showing what herald holds of the new one",
            position.epoch.as_deref().unwrap_or("unknown"),
            subscribed.epoch,
            position.seen.unwrap_or(0),
        ));
        position.seen = Some(0);
    } else if subscribed.recovered == Some(false) {
        // history_truncated: the gap shows when the first replayed event
        // arrives (`admits`), with the seqs that are gone.
        note(&format!(
            "not everything after seq {} is still held ({})",
            position.seen.unwrap_or(0),
            subscribed.reason.as_deref().unwrap_or("no reason given"),
        ));
    }
    position.epoch = Some(subscribed.epoch);
    if position.seen.is_none() {
        // A plain subscribe: its snapshot follows, then events after `seq`.
        position.snapshot_until = Some(subscribed.seq);
        position.seen = Some(subscribed.seq);
    }
}

impl Position {
    /// Whether to print the event with `seq` (not one already shown), noting
    /// any seqs skipped before it.
    fn admits(&mut self, seq: u64) -> bool {
        if self.snapshot_until.is_some_and(|until| seq <= until) {
            return true;
        }
        self.snapshot_until = None;
        let seen = self.seen.unwrap_or(0);
        if seq <= seen {
            return false;
        }
        if seq > seen + 1 {
            note(&format!(
                "missed seq {} to {}: no longer held by herald",
                seen + 1,
                seq - 1
            ));
        }
        self.seen = Some(seq);
        true
    }
}

/// One event as a line: `time  #seq  event  {its own fields}`, the
/// fields as herald sent them; or `{"event", "data"}` with `data` as sent.
/// Both without the whitespace a backend may have put in a `result`, so that
/// an event stays one line.
fn write_event(
    out: &mut impl Write,
    json: bool,
    name: &str,
    data: &RawValue,
    fields: &Fields<'_>,
) -> std::io::Result<()> {
    let name_json = serde_json::to_string(name).expect("a string serializes");
    if json {
        writeln!(
            out,
            "{{\"event\":{name_json},\"data\":{}}}",
            compact(data.get())
        )?;
    } else {
        let own: Vec<String> = fields
            .iter()
            .filter(|(key, _)| !matches!(*key, "sessionId" | "timestamp" | "seq"))
            .map(|(key, value)| {
                let key = serde_json::to_string(key).expect("a string serializes");
                format!("{key}:{}", compact(value.get()))
            })
            .collect();
        let field = |key| fields.get(key).map_or("-", RawValue::get);
        writeln!(
            out,
            "{}  #{}  {name}  {{{}}}",
            field("timestamp").trim_matches('"'),
            field("seq"),
            own.join(","),
        )?;
    }
    out.flush()
}

/// JSON text without whitespace outside its strings.
fn compact(json: &str) -> std::borrow::Cow<'_, str> {
    if !json.contains(|c: char| c.is_ascii_whitespace()) {
        return json.into();
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            (escaped, in_string) = (!escaped && c == '\\', escaped || c != '"');
        } else if c == '"' {
            in_string = true;
        } else if c.is_ascii_whitespace() {
            continue;
        }
        out.push(c);
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(seen: Option<u64>) -> Position {
        Position {
            seen,
            epoch: None,
            snapshot_until: None,
        }
    }

    #[test]
    fn a_resume_shows_each_event_once() {
        let mut p = position(Some(3));
        assert!(!p.admits(2) && !p.admits(3));
        assert!(p.admits(4) && p.admits(5));
        assert!(!p.admits(5));
        assert_eq!(p.seen, Some(5));
        assert!(p.admits(8), "a gap is shown, and noted");
        assert_eq!(p.seen, Some(8));
    }

    #[test]
    fn a_snapshot_then_live_events() {
        let mut p = position(None);
        subscribed_to(
            &mut p,
            Subscribed {
                seq: 7,
                epoch: "0123456789ab".into(),
                recovered: None,
                reason: None,
            },
        );
        // The latest progress (5) and the final event (7), then live 8.
        assert!(p.admits(5) && p.admits(7) && p.admits(8));
        assert!(!p.admits(6), "past the snapshot, older seqs are duplicates");
        assert_eq!(p.seen, Some(8));
    }

    #[test]
    fn a_new_epoch_starts_over() {
        let mut p = position(Some(40));
        p.epoch = Some("0123456789ab".into());
        p.snapshot_until = Some(40);
        subscribed_to(
            &mut p,
            Subscribed {
                seq: 2,
                epoch: "ba9876543210".into(),
                recovered: Some(false),
                reason: Some("epoch_changed".into()),
            },
        );
        assert!(p.admits(1) && p.admits(2));
        assert_eq!(p.seen, Some(2), "counted from the new sequence's start");
    }

    #[test]
    fn compacting_keeps_strings() {
        assert_eq!(
            compact("{ \"a b\": \"x \\\" y\",\n \"c\": [1, 2] }"),
            r#"{"a b":"x \" y","c":[1,2]}"#
        );
        assert_eq!(compact(r#"["\\", " "]"#), r#"["\\"," "]"#);
    }

    #[test]
    fn lines_leave_out_the_envelope() {
        let data = RawValue::from_string(
            r#"{"sessionId":"d","timestamp":"T","seq":3,"progress":50.0,"a":{"b": 1}}"#.into(),
        )
        .unwrap();
        let fields = Fields::all(&data).unwrap();
        let mut out = Vec::new();
        write_event(&mut out, false, "progress", &data, &fields).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "T  #3  progress  {\"progress\":50.0,\"a\":{\"b\":1}}\n",
            "as herald sent them, in order"
        );
        let mut out = Vec::new();
        write_event(&mut out, true, "progress", &data, &fields).unwrap();
        let line: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["event"], "progress");
        assert_eq!(line["data"]["seq"], 3);
    }
}
