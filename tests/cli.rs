//! The command-line tools (`herald tail`, `publish`, `check`) run as a user
//! runs them: the real binary, against a real herald on 127.0.0.1 (and a
//! real redis-server where the test needs history to survive a restart, or
//! Redis to fail), asserting on what they print and how they exit.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::{Herald, Redis, free_port, sample};
use serde_json::Value;

/// The herald binary with a client subcommand, without any setting of the
/// caller's shell (API_KEY, HERALD_URL...) that would change what is tested.
fn herald_cli(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.args(args).current_dir(std::env::temp_dir());
    for var in ["API_KEY", "API_KEY_FILE", "HERALD_URL", "HERALD_TOKEN"] {
        command.env_remove(var);
    }
    command
}

fn run(command: &mut Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the herald CLI");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for the herald CLI")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `herald tail`, its stdout read line by line on a thread.
struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Tail {
    fn start(args: &[&str]) -> Self {
        let mut child = herald_cli(&[&["tail"], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald tail");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// `herald tail <session> --json` against `herald`, plus `extra` flags.
    fn json(herald: &Herald, session: &str, extra: &[&str]) -> Self {
        let url = herald.url("");
        Self::start(&[&[session, "--json", "--url", &url], extra].concat())
    }

    /// The next `n` events it prints (`--json` lines), or a panic after 15 s.
    fn events(&self, n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| {
                let line = self
                    .lines
                    .recv_timeout(Duration::from_secs(15))
                    .unwrap_or_else(|_| panic!("herald tail printed {i} of {n} events"));
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// Stops it, returning what it said on stderr.
    fn stop(mut self) -> String {
        assert!(
            self.child.try_wait().expect("wait").is_none(),
            "herald tail exited by itself"
        );
        let _ = self.child.kill();
        let output = self.child.wait_with_output().expect("wait for herald tail");
        text(&output.stderr)
    }
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["data"]["seq"].as_u64().expect("every event has a seq"))
        .collect()
}

fn progress(percent: u32) -> Value {
    let mut data = sample("progress");
    data["progress"] = percent.into();
    data
}

async fn publish_progress(herald: &Herald, session: &str, percents: impl Iterator<Item = u32>) {
    for percent in percents {
        let (status, body) = herald.publish(session, "progress", progress(percent)).await;
        assert_eq!(status, 202, "{body}");
    }
}

/// The session's last seq, read with the publish key.
async fn session_seq(herald: &Herald, session: &str, key: &str) -> u64 {
    let state: Value = reqwest::Client::new()
        .get(herald.url(&format!("/api/v1/sessions/{session}")))
        .bearer_auth(key)
        .send()
        .await
        .expect("GET the session")
        .json()
        .await
        .expect("its state");
    state["seq"].as_u64().expect("a seq")
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_prints_events_in_order_and_resumes_after_a_restart() {
    let redis = Redis::start().await;
    let redis_args = ["--redis-url", &redis.url()];
    let mut a = Herald::start(&redis_args).await;
    let b = Herald::start(&redis_args).await;
    publish_progress(&a, "cli-tail", 1..=3).await;

    let tail = Tail::json(&a, "cli-tail", &["--since", "0"]);
    let first = tail.events(3);
    assert_eq!(seqs(&first), [1, 2, 3]);
    assert_eq!(first[0]["event"], "progress");
    assert_eq!(first[2]["data"]["progress"], 3);
    assert_eq!(first[0]["data"]["sessionId"], "cli-tail");

    // While the instance it watches is down, the cluster goes on.
    a.kill();
    publish_progress(&b, "cli-tail", 4..=6).await;
    a.restart(&redis_args).await;
    a.wait_ready(200, Duration::from_secs(10)).await;
    // Published after the restart, perhaps before the tail is back.
    publish_progress(&a, "cli-tail", 7..=8).await;

    let resumed = tail.events(5);
    assert_eq!(seqs(&resumed), [4, 5, 6, 7, 8], "no gap, no duplicate");
    assert_eq!(resumed[4]["data"]["progress"], 8);
    assert!(tail.lines.recv_timeout(Duration::from_millis(300)).is_err());
    let stderr = tail.stop();
    assert!(stderr.contains("reconnecting"), "{stderr}");
    assert!(
        !stderr.contains("missed") && !stderr.contains("started over"),
        "{stderr}"
    );
}

#[tokio::test]
async fn tail_reports_a_sequence_that_started_over() {
    // In memory, a restart loses the session: its epoch changes.
    let mut herald = Herald::start(&[]).await;
    publish_progress(&herald, "cli-epoch", 1..=2).await;
    let tail = Tail::json(&herald, "cli-epoch", &[]);
    // A plain tail starts from the snapshot: the latest progress.
    assert_eq!(seqs(&tail.events(1)), [2]);
    herald.restart(&[]).await;
    publish_progress(&herald, "cli-epoch", 10..=10).await;
    let after = tail.events(1);
    assert_eq!(seqs(&after), [1]);
    assert_eq!(after[0]["data"]["progress"], 10);
    let stderr = tail.stop();
    assert!(stderr.contains("started over"), "{stderr}");
}

#[tokio::test]
async fn tail_prints_one_readable_line_per_event() {
    let herald = Herald::start(&[]).await;
    publish_progress(&herald, "cli-lines", 40..=40).await;
    let tail = Tail::start(&["cli-lines", "--since", "0", "--url", &herald.url("")]);
    let line = tail
        .lines
        .recv_timeout(Duration::from_secs(15))
        .expect("a line");
    let fields: Vec<&str> = line.split("  ").collect();
    assert_eq!(fields.len(), 4, "{line}");
    assert!(fields[0].ends_with('Z'), "a timestamp first: {line}");
    assert_eq!(fields[1..3], ["#1", "progress"], "{line}");
    assert!(fields[3].starts_with("{\"status\":"), "{line}");
    assert!(fields[3].contains("\"progress\":40"), "{line}");
    tail.stop();
}

#[tokio::test]
async fn publish_prints_the_seq_and_fails_with_the_servers_message() {
    let herald = Herald::start(&["--api-key", "k1,k2"]).await;
    let url = herald.url("");
    let data = progress(30).to_string();
    let publish = |key: &str, data: &str| {
        let mut command = herald_cli(&["publish", "cli-pub", "progress", data, "--url", &url]);
        command.env("API_KEY", key);
        run(&mut command, "")
    };

    let ok = publish("k1, k2", &data);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert_eq!(text(&ok.stdout), "cli-pub progress seq 1\n");

    let invalid = publish("k1", &progress(140).to_string());
    assert_eq!(invalid.status.code(), Some(1));
    let stderr = text(&invalid.stderr);
    assert!(stderr.contains("422"), "{stderr}");
    assert!(
        stderr.contains("must be a number from 0 to 100"),
        "{stderr}"
    );
    assert!(stderr.contains("data.progress"), "{stderr}");
    assert!(invalid.stdout.is_empty());

    let wrong_key = publish("nope", &data);
    assert_eq!(wrong_key.status.code(), Some(1));
    let stderr = text(&wrong_key.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("API key"),
        "{stderr}"
    );

    // `@file` and `-` read the data; `--json` prints herald's receipt.
    let file = std::env::temp_dir().join(format!("herald-cli-{}.json", std::process::id()));
    std::fs::write(&file, &data).expect("write the data file");
    let from_file = herald_cli(&["publish", "cli-pub", "progress"])
        .arg(format!("@{}", file.display()))
        .args(["--url", &url, "--api-key", "k2", "--json"])
        .output()
        .expect("run");
    std::fs::remove_file(&file).ok();
    let receipt: Value = serde_json::from_slice(&from_file.stdout).expect("a JSON receipt");
    assert_eq!(receipt["seq"], 2);
    // The key may come from API_KEY_FILE, as herald reads it.
    let keys = std::env::temp_dir().join(format!("herald-cli-{}.keys", std::process::id()));
    std::fs::write(&keys, "# publish keys\n\nk2\n").expect("write the key file");
    let from_stdin = run(
        herald_cli(&["publish", "cli-pub", "progress", "-", "--url", &url])
            .env("API_KEY_FILE", &keys),
        &data,
    );
    std::fs::remove_file(&keys).ok();
    assert_eq!(text(&from_stdin.stdout), "cli-pub progress seq 3\n");

    // Nothing was published by the refusals: seq went on from 3.
    assert_eq!(session_seq(&herald, "cli-pub", "k1").await, 3);

    let unreachable = run(
        herald_cli(&["publish", "cli-pub", "progress", &data])
            .args(["--url", &format!("http://127.0.0.1:{}", free_port())]),
        "",
    );
    assert_eq!(unreachable.status.code(), Some(3));
    let bad_json = run(
        &mut herald_cli(&["publish", "cli-pub", "progress", "{", "--url", &url]),
        "",
    );
    assert_eq!(bad_json.status.code(), Some(2));
}

#[tokio::test]
async fn publish_batch_takes_items_line_by_line() {
    let herald = Herald::start(&["--api-key", "k1"]).await;
    let url = herald.url("");
    let item = |session: &str, percent| {
        serde_json::json!({ "sessionId": session, "event": "progress", "data": progress(percent) })
            .to_string()
    };
    let input = format!(
        "{}\n\n{}\n{}\n",
        item("b-1", 1),
        item("b-2", 2),
        item("b-1", 3)
    );
    let batch = run(
        herald_cli(&["publish", "--batch", "--url", &url]).env("API_KEY", "k1"),
        &input,
    );
    assert!(batch.status.success(), "{}", text(&batch.stderr));
    assert_eq!(
        text(&batch.stdout),
        "b-1 progress seq 1\nb-2 progress seq 1\nb-1 progress seq 2\n"
    );

    // One bad item refuses its whole request; the error names its line.
    let input = format!("{}\n{}\n", item("b-1", 4), item("b-2", 400));
    let refused = run(
        herald_cli(&["publish", "--batch", "--url", &url]).env("API_KEY", "k1"),
        &input,
    );
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("422") && stderr.contains("(line 2)"),
        "{stderr}"
    );
    assert_eq!(
        session_seq(&herald, "b-1", "k1").await,
        2,
        "nothing of the refused batch was published"
    );
}

#[tokio::test]
async fn check_exits_zero_when_ready_and_not_when_redis_is_down() {
    let mut redis = Redis::start().await;
    let herald = Herald::start(&["--redis-url", &redis.url()]).await;
    herald.wait_ready(200, Duration::from_secs(10)).await;
    let check = |urls: &[String]| {
        let mut command = herald_cli(&["check"]);
        for url in urls {
            command.args(["--url", url]);
        }
        run(&mut command, "")
    };

    let ready = check(&[herald.url("")]);
    assert!(ready.status.success(), "{}", text(&ready.stdout));
    let stdout = text(&ready.stdout);
    assert!(
        stdout.contains("  ready") && stdout.contains("adapter redis"),
        "{stdout}"
    );
    // Once /health says which version it is, so does check.
    let (_, health) = herald.get("/health").await;
    if let Some(version) = health.get("version").and_then(Value::as_str) {
        assert!(stdout.contains(&format!("herald {version}")), "{stdout}");
    }

    let dead = format!("http://127.0.0.1:{}", free_port());
    let one_unreachable = check(&[herald.url(""), dead.clone()]);
    assert_eq!(one_unreachable.status.code(), Some(3));
    let stdout = text(&one_unreachable.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.contains(&format!("{dead}  unreachable")), "{stdout}");

    redis.kill();
    herald.wait_ready(503, Duration::from_secs(15)).await;
    let (_, body) = herald.get("/ready").await;
    let not_ready = check(&[herald.url("")]);
    assert_eq!(not_ready.status.code(), Some(1));
    let stdout = text(&not_ready.stdout);
    let reason = body["reason"].as_str().expect("/ready gives a reason");
    assert!(stdout.contains("NOT READY"), "{stdout}");
    assert!(stdout.contains(reason), "the reason /ready gives: {stdout}");
}

#[tokio::test]
async fn tail_presents_a_token_and_stops_when_refused() {
    let herald = Herald::start(&["--jwt-secret", "cli-secret"]).await;
    publish_progress(&herald, "cli-jwt", 5..=5).await;
    let url = herald.url("");

    let refused = run(&mut herald_cli(&["tail", "cli-jwt", "--url", &url]), "");
    assert_eq!(refused.status.code(), Some(1), "refused, not retried");
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("unauthorized: missing token"), "{stderr}");

    let minted = herald_cli(&["token", "--sessions", "cli-*", "--secret", "cli-secret"])
        .output()
        .expect("herald token");
    let token = text(&minted.stdout).trim().to_string();
    let tail = Tail::json(&herald, "cli-jwt", &["--token", &token]);
    let events = tail.events(1);
    assert_eq!(events[0]["data"]["progress"], 5);
    tail.stop();
}

/// `--token-command` is run before every connection: when herald closes
/// the socket at its token's expiry, tail reconnects with a fresh token and
/// misses nothing.
#[tokio::test]
async fn tail_renews_its_token_with_a_token_command() {
    let herald = Herald::start(&["--jwt-secret", "cli-secret"]).await;
    publish_progress(&herald, "cli-renew", 1..=1).await;
    let runs = std::env::temp_dir().join(format!("herald-cli-token-runs-{}", std::process::id()));
    let _ = std::fs::remove_file(&runs);
    let command = format!(
        "echo run >> {} && {} token --sessions cli-renew --secret cli-secret --ttl 2",
        runs.display(),
        env!("CARGO_BIN_EXE_herald")
    );
    let tail = Tail::json(
        &herald,
        "cli-renew",
        &["--since", "0", "--token-command", &command],
    );
    assert_eq!(tail.events(1)[0]["data"]["progress"], 1);
    // Past the first token's expiry, which closes the socket.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    publish_progress(&herald, "cli-renew", 2..=2).await;
    assert_eq!(
        tail.events(1)[0]["data"]["progress"],
        2,
        "nothing missed across the renewal"
    );
    let ran = std::fs::read_to_string(&runs)
        .unwrap_or_default()
        .lines()
        .count();
    let stderr = tail.stop();
    assert!(
        ran >= 2,
        "the command ran {ran} time(s); tail said:\n{stderr}"
    );
    assert!(stderr.contains("reconnecting"), "{stderr}");
    let _ = std::fs::remove_file(&runs);

    let failing = run(
        &mut herald_cli(&[
            "tail",
            "cli-renew",
            "--url",
            &herald.url(""),
            "--token-command",
            "exit 3",
        ]),
        "",
    );
    assert_eq!(failing.status.code(), Some(1));
    assert!(
        text(&failing.stderr).contains("the token command failed"),
        "{}",
        text(&failing.stderr)
    );
}

/// `herald token --secret-file` signs with the file's first secret, the one
/// a rotation adds first; herald, reading the same file, takes its token.
#[tokio::test]
async fn token_signs_with_the_first_secret_of_a_secret_file() {
    let file = std::env::temp_dir().join(format!("herald-cli-secrets-{}", std::process::id()));
    std::fs::write(&file, "# newest first\ncli-new\ncli-old\n").unwrap();
    let path = file.to_str().unwrap();
    let herald = Herald::start(&["--jwt-secret-file", path]).await;
    publish_progress(&herald, "cli-rot", 7..=7).await;

    let minted = herald_cli(&["token", "--sessions", "cli-*", "--secret-file", path])
        .output()
        .expect("herald token");
    assert!(minted.status.success(), "{}", text(&minted.stderr));
    let token = text(&minted.stdout).trim().to_string();
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    for (secret, signed) in [("cli-new", true), ("cli-old", false)] {
        let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()).unwrap();
        let decoded = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation);
        assert_eq!(decoded.is_ok(), signed, "signed with {secret}?");
    }
    let tail = Tail::json(&herald, "cli-rot", &["--token", &token]);
    assert_eq!(tail.events(1)[0]["data"]["progress"], 7);
    tail.stop();

    let both = herald_cli(&[
        "token",
        "--sessions",
        "a",
        "--secret",
        "s",
        "--secret-file",
        path,
    ])
    .output()
    .expect("herald token");
    assert_eq!(both.status.code(), Some(1));
    assert!(
        text(&both.stderr).contains("not both"),
        "{}",
        text(&both.stderr)
    );
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn tail_says_which_seqs_history_no_longer_holds() {
    let herald = Herald::start(&["--history-max-events", "3"]).await;
    publish_progress(&herald, "cli-gap", 1..=10).await;
    let tail = Tail::json(&herald, "cli-gap", &["--since", "2"]);
    assert_eq!(
        seqs(&tail.events(3)),
        [8, 9, 10],
        "what history still holds"
    );
    let stderr = tail.stop();
    assert!(stderr.contains("missed seq 3 to 7"), "{stderr}");
}

#[tokio::test]
async fn publish_batch_waits_out_the_rate_limit() {
    let herald = Herald::start(&[
        "--publish-rate-per-key",
        "2",
        "--publish-burst-per-key",
        "2",
    ])
    .await;
    let input: String = (1..=4)
        .map(|percent| {
            let item = serde_json::json!({ "sessionId": "b-rate", "event": "progress", "data": progress(percent) });
            format!("{item}\n")
        })
        .collect();
    let started = std::time::Instant::now();
    let batch = run(
        &mut herald_cli(&[
            "publish",
            "--batch",
            "--chunk",
            "2",
            "--url",
            &herald.url(""),
        ]),
        &input,
    );
    assert!(batch.status.success(), "{}", text(&batch.stderr));
    let stdout = text(&batch.stdout);
    let published: Vec<&str> = stdout.lines().collect();
    assert_eq!(published.len(), 4, "{stdout}");
    assert_eq!(published[3], "b-rate progress seq 4");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the second chunk waited"
    );
}

#[tokio::test]
async fn tail_notices_a_frozen_herald_and_resumes_when_it_thaws() {
    let herald = Herald::start(&["--ping-interval-ms", "200", "--ping-timeout-ms", "200"]).await;
    publish_progress(&herald, "cli-frozen", 1..=1).await;
    let tail = Tail::json(&herald, "cli-frozen", &["--since", "0"]);
    assert_eq!(seqs(&tail.events(1)), [1]);
    // Frozen with its connections open: no close, no ping.
    herald.signal("STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    herald.signal("CONT");
    publish_progress(&herald, "cli-frozen", 2..=3).await;
    assert_eq!(seqs(&tail.events(2)), [2, 3]);
    let stderr = tail.stop();
    assert!(stderr.contains("not even a ping"), "{stderr}");
}
