//! `herald check`: is a running herald (or each instance of a cluster,
//! `--url` repeated) up and ready, and which version is it? One line per
//! instance, and an exit code a deploy script or a cron job can test: 0 when
//! every instance is ready, 1 when one answers but is not ready (its `/ready`
//! reason is printed: Redis down, fallen behind...), 3 when one cannot be
//! reached. Reads `/health` and `/ready` only, which need no key.

use std::time::Duration;

use reqwest::Url;
use serde_json::Value;

use super::http::{self, Exit};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// An instance's base URL; repeat for each instance of a cluster.
    #[arg(long = "url", env = "HERALD_URL", value_delimiter = ',',
          default_value = http::DEFAULT_URL, value_parser = http::parse_url)]
    urls: Vec<Url>,

    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn run(args: &Args) -> Exit {
    let client = http::client(Duration::from_secs(args.timeout));
    let checks = args.urls.iter().map(|url| check(&client, url));
    let mut worst = Exit::Ok;
    for (url, state) in args
        .urls
        .iter()
        .zip(futures_util::future::join_all(checks).await)
    {
        println!("{}  {}", url.as_str().trim_end_matches('/'), state.line);
        worst = worst.max(state.exit);
    }
    worst
}

/// What one instance said, as a line and an exit code.
struct State {
    line: String,
    exit: Exit,
}

async fn check(client: &reqwest::Client, base: &Url) -> State {
    let unreachable = |why: String| State {
        line: format!("unreachable: {why}"),
        exit: Exit::Unreachable,
    };
    let health = match get(client, base, "health").await {
        Ok((200, health)) => health,
        Ok((status, _)) => return unreachable(format!("/health answered {status}")),
        Err(why) => return unreachable(why),
    };
    // `version` and `instance` came with the dashboard; older herald lacks them.
    let mut about = String::new();
    for (field, label) in [("version", "herald"), ("instance", "instance")] {
        match health.get(field) {
            Some(Value::String(text)) => about.push_str(&format!("  {label} {text}")),
            Some(other @ Value::Number(_)) => about.push_str(&format!("  {label} {other}")),
            _ => {}
        }
    }
    let (status, ready) = match get(client, base, "ready").await {
        Ok(answer) => answer,
        Err(why) => return unreachable(why),
    };
    if let Some(adapter) = ready.get("adapter").and_then(Value::as_str) {
        about.push_str(&format!("  adapter {adapter}"));
    }
    if status == 200 {
        return State {
            line: format!("ready{about}"),
            exit: Exit::Ok,
        };
    }
    let reason = ready
        .get("reason")
        .and_then(Value::as_str)
        .map_or_else(|| format!("/ready answered {status}"), str::to_string);
    State {
        line: format!("NOT READY: {reason}{about}"),
        exit: Exit::Refused,
    }
}

/// GETs `path`, returning the status and the JSON body (`null` if none).
async fn get(client: &reqwest::Client, base: &Url, path: &str) -> Result<(u16, Value), String> {
    let res = client
        .get(http::endpoint(base, path))
        .send()
        .await
        .map_err(|e| http::describe(&e))?;
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}
