//! `herald publish`: publishes a session event from a shell or a script,
//! through the HTTP API a backend uses (`POST /api/v1/sessions/{id}/events`,
//! or `POST /api/v1/events` with `--batch`), with the publish key from
//! `API_KEY` as the server reads it. Prints the receipt (the seq); a refusal
//! exits non-zero with herald's own message, since herald is the one that
//! validates events (the CLI checks only what it must to build the request:
//! the session id and that the data is JSON, kept byte for byte).

use std::{
    io::{BufRead, Read},
    time::Duration,
};

use herald::protocol::SessionId;
use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde_json::{Value, value::RawValue};

use super::http::{self, Exit, Target};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The session to publish to.
    #[arg(value_parser = SessionId::parse, required_unless_present = "batch")]
    session: Option<SessionId>,

    /// The event: progress, model_result, clarification, completed or error.
    #[arg(required_unless_present = "batch")]
    event: Option<String>,

    /// The event's `data`: JSON text, `@file` to read it from a file, or `-`
    /// to read it from stdin.
    #[arg(required_unless_present = "batch")]
    data: Option<String>,

    /// Publish items from stdin instead, one JSON object a line, as the
    /// batch endpoint takes them: `{"sessionId", "event", "data",
    /// "idempotencyKey"?}`. Sent in requests of `--chunk` items (or fewer
    /// when stdin pauses), each one all-or-nothing.
    #[arg(long, conflicts_with_all = ["session", "event", "data", "idempotency_key"])]
    batch: bool,

    /// Items per request with `--batch` (herald refuses a batch larger than
    /// its PUBLISH_BURST_PER_KEY).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000), requires = "batch")]
    chunk: u32,

    /// Sent as `Idempotency-Key`: a retry with the same key publishes once.
    #[arg(long)]
    idempotency_key: Option<String>,

    /// Print each receipt as herald's JSON instead of a line of text.
    #[arg(long)]
    json: bool,

    /// The publish key; the first of API_KEY's comma-separated keys by
    /// default.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// Without a key, the first key of this file (one a line, `#` comments),
    /// as herald reads API_KEY_FILE.
    #[arg(long, env = "API_KEY_FILE")]
    api_key_file: Option<std::path::PathBuf>,

    #[command(flatten)]
    target: Target,

    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// The body of a single publish: `data` goes out as the user wrote it.
#[derive(Serialize)]
struct Publish<'a> {
    event: &'a str,
    data: &'a RawValue,
}

/// How many times a batch chunk refused with 429 is sent again, after the
/// `Retry-After` herald asks for (nothing was published).
const RATE_LIMIT_RETRIES: u32 = 10;

pub(crate) fn run(args: &Args) -> Exit {
    let key = match publish_key(args) {
        Ok(key) => key,
        Err(why) => {
            eprintln!("herald publish: {why}");
            return Exit::Usage;
        }
    };
    let publisher = Publisher {
        client: http::client(Duration::from_secs(args.timeout)),
        base: args.target.url.clone(),
        key,
        json: args.json,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if args.batch {
        return runtime.block_on(publisher.batch(args.chunk as usize));
    }
    let (Some(session), Some(event), Some(data)) = (&args.session, &args.event, &args.data) else {
        unreachable!("clap requires them without --batch");
    };
    let data = match read_data(data) {
        Ok(data) => data,
        Err(why) => {
            eprintln!("herald publish: {why}");
            return Exit::Usage;
        }
    };
    let body = serde_json::to_string(&Publish { event, data: &data }).expect("serializable");
    let path = format!("api/v1/sessions/{}/events", session.as_str());
    runtime.block_on(async {
        let mut request = publisher.post(&path, body);
        if let Some(key) = &args.idempotency_key {
            request = request.header("idempotency-key", key);
        }
        match publisher.send(request).await {
            Ok(Answer::Published(receipt)) => {
                publisher.print(&receipt);
                Exit::Ok
            }
            Ok(Answer::Refused { message, .. }) => {
                eprintln!("herald publish: {message}");
                Exit::Refused
            }
            Err(why) => {
                eprintln!(
                    "herald publish: cannot reach herald at {}: {why}",
                    publisher.base
                );
                Exit::Unreachable
            }
        }
    })
}

/// The key to publish with: the first of `--api-key` (API_KEY), else the
/// first of `--api-key-file` (API_KEY_FILE), else none.
fn publish_key(args: &Args) -> Result<Option<String>, String> {
    let first = |keys: &str, separator: char| {
        keys.split(separator)
            .map(str::trim)
            .find(|k| !k.is_empty() && !k.starts_with('#'))
            .map(str::to_string)
    };
    if let Some(key) = args.api_key.as_deref().and_then(|keys| first(keys, ',')) {
        return Ok(Some(key));
    }
    match &args.api_key_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|keys| first(&keys, '\n'))
            .map_err(|e| format!("cannot read the key file {}: {e}", path.display())),
        None => Ok(None),
    }
}

/// The data argument as JSON: the text itself, `@file`, or `-` (stdin).
fn read_data(arg: &str) -> Result<Box<RawValue>, String> {
    let text = if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the data from stdin: {e}"))?;
        text
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?
    } else {
        arg.to_string()
    };
    RawValue::from_string(text.trim().to_string()).map_err(|e| format!("the data is not JSON: {e}"))
}

struct Publisher {
    client: reqwest::Client,
    base: Url,
    key: Option<String>,
    json: bool,
}

/// What herald answered a publish.
enum Answer {
    /// `202`: the receipt (`{ sessionId, event, seq }`, or `{ results }`).
    Published(Value),
    Refused {
        status: StatusCode,
        message: String,
        body: Value,
        retry_after: Option<u64>,
    },
}

impl Publisher {
    fn post(&self, path: &str, body: String) -> reqwest::RequestBuilder {
        let request = self
            .client
            .post(http::endpoint(&self.base, path))
            .header("content-type", "application/json")
            .body(body);
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, String> {
        let res = request.send().await.map_err(|e| http::describe(&e))?;
        let status = res.status();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let text = res.text().await.map_err(|e| http::describe(&e))?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .map(Answer::Published)
                .map_err(|_| format!("{status} with a body that is not herald's receipt: {text}"));
        }
        Ok(Answer::Refused {
            status,
            message: http::refusal_message(status, &text),
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            retry_after,
        })
    }

    /// Prints one receipt (`{ sessionId, event, seq }`) on stdout.
    fn print(&self, receipt: &Value) {
        if self.json {
            println!("{receipt}");
            return;
        }
        let field = |name| receipt.get(name).map_or(Value::Null, Value::clone);
        match (field("sessionId"), field("event"), field("seq")) {
            (Value::String(session), Value::String(event), Value::Number(seq)) => {
                println!("{session} {event} seq {seq}");
            }
            _ => println!("{receipt}"),
        }
    }

    /// Publishes stdin's items, a chunk at a time.
    async fn batch(&self, chunk: usize) -> Exit {
        let mut lines = stdin_lines();
        let mut line_no = 0;
        loop {
            // Each item with its input line, to name the line in errors.
            let mut items: Vec<(usize, Box<RawValue>)> = Vec::new();
            let mut ended = false;
            while items.len() < chunk {
                // A producer that pauses gets its items published now
                // rather than when the chunk fills.
                let wait = if items.is_empty() {
                    Duration::MAX
                } else {
                    Duration::from_millis(200)
                };
                let line = match tokio::time::timeout(wait, lines.recv()).await {
                    Err(_) => break,
                    Ok(None) => {
                        ended = true;
                        break;
                    }
                    Ok(Some(Err(e))) => {
                        eprintln!("herald publish: cannot read stdin: {e}");
                        return Exit::Usage;
                    }
                    Ok(Some(Ok(line))) => line,
                };
                line_no += 1;
                if line.trim().is_empty() {
                    continue;
                }
                match RawValue::from_string(line) {
                    Ok(item) => items.push((line_no, item)),
                    Err(e) => {
                        eprintln!("herald publish: line {line_no} is not JSON: {e}");
                        return Exit::Usage;
                    }
                }
            }
            if !items.is_empty() {
                let exit = self.publish_chunk(&items).await;
                if exit != Exit::Ok {
                    return exit;
                }
            }
            if ended {
                return Exit::Ok;
            }
        }
    }

    async fn publish_chunk(&self, items: &[(usize, Box<RawValue>)]) -> Exit {
        let body = format!(
            "[{}]",
            items
                .iter()
                .map(|(_, item)| item.get())
                .collect::<Vec<_>>()
                .join(",")
        );
        let line_of = |index: &Value| {
            index
                .as_u64()
                .and_then(|i| items.get(i as usize))
                .map_or_else(|| index.to_string(), |(line, _)| line.to_string())
        };
        let mut retries = 0;
        loop {
            let answer = match self.send(self.post("api/v1/events", body.clone())).await {
                Ok(answer) => answer,
                Err(why) => {
                    eprintln!(
                        "herald publish: cannot reach herald at {}: {why}; lines {} to {} are not confirmed published",
                        self.base,
                        items[0].0,
                        items[items.len() - 1].0
                    );
                    return Exit::Unreachable;
                }
            };
            let (status, message, body, retry_after) = match answer {
                Answer::Published(receipt) => {
                    self.print_results(&receipt);
                    return Exit::Ok;
                }
                Answer::Refused {
                    status,
                    message,
                    body,
                    retry_after,
                } => (status, message, body, retry_after),
            };
            if status == StatusCode::TOO_MANY_REQUESTS && retries < RATE_LIMIT_RETRIES {
                retries += 1;
                tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
                continue;
            }
            // A batch stopped part-way still says what it published.
            self.print_results(&body);
            let mut text = format!(
                "herald publish: lines {} to {} refused: {message}",
                items[0].0,
                items[items.len() - 1].0
            );
            // `field` names the item by its index (`[1].data.status`).
            if let Some(index) = body
                .get("field")
                .and_then(Value::as_str)
                .and_then(|f| f.strip_prefix('[')?.split_once(']')?.0.parse::<u64>().ok())
            {
                text.push_str(&format!(" (line {})", line_of(&Value::from(index))));
            }
            if let Some(index) = body.get("outcomeUnknown") {
                text.push_str(&format!(
                    "; line {} may or may not be published (retry it with its idempotencyKey)",
                    line_of(index)
                ));
            }
            if let Some(Value::Array(unpublished)) = body.get("unpublished") {
                let lines: Vec<String> = unpublished.iter().map(line_of).collect();
                text.push_str(&format!("; not published: lines {}", lines.join(", ")));
            }
            eprintln!("{text}");
            return Exit::Refused;
        }
    }

    fn print_results(&self, body: &Value) {
        if let Some(Value::Array(results)) = body.get("results") {
            for receipt in results {
                self.print(receipt);
            }
        }
    }
}

/// stdin's lines, read on a thread of their own so that waiting for the
/// next one can time out.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}
