//! Runs `examples/embedded.rs` (a backend embedding herald) and watches its
//! simulated session arrive over a raw Socket.IO connection; an event
//! published over the merged HTTP API shares the session's seq.

mod common;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{RawSocket, free_port, herald_env_vars, sample};
use serde_json::{Value, json};

struct Example(Child);

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn example_binary() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_herald"));
    bin.parent().unwrap().join("examples").join("embedded")
}

#[tokio::test]
async fn an_embedding_backend_drives_a_session_a_client_can_watch() {
    let path = example_binary();
    assert!(path.exists(), "build the example first: {}", path.display());
    // A fixed port, picked first: the example logs the address it was
    // given, not the one it bound, so it cannot be started on port 0 and
    // read back as herald is.
    let port = free_port();
    let mut command = Command::new(&path);
    command
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--log-level",
            "warn",
        ])
        .env("SIM_STEP_MS", "20")
        .stdout(Stdio::null());
    // herald's settings are the example's: none from the caller's shell.
    for var in herald_env_vars() {
        command.env_remove(var);
    }
    let _example = Example(command.spawn().expect("spawn example"));
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let created: Value = loop {
        if let Ok(res) = client.post(format!("{base}/documents")).send().await {
            break res.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "example did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let session = created["sessionId"].as_str().unwrap().to_string();

    let (mut ws, _, _) = RawSocket::connect(&format!(
        "ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    ))
    .await;
    ws.emit("subscribe", json!(session)).await;
    assert_eq!(ws.next_event().await.0, "subscribed");

    // One event over the merged HTTP API first: seq 1.
    let res = client
        .post(format!("{base}/api/v1/sessions/{session}/events"))
        .header("content-type", "application/json")
        .body(json!({ "event": "clarification", "data": sample("clarification") }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(ws.next_event().await.1["seq"], 1);

    let started = client
        .post(format!("{base}/documents/{session}/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let mut names = Vec::new();
    let mut seq = 1;
    loop {
        let (name, payload) = ws.next_event().await;
        seq += 1;
        assert_eq!(payload["seq"], seq, "{name} {payload}");
        assert_eq!(payload["sessionId"], session.as_str());
        names.push(name.clone());
        if name == "completed" {
            assert_eq!(payload["result"]["models"], 3);
            break;
        }
    }
    assert_eq!(
        names,
        [
            "progress",
            "model_result",
            "progress",
            "model_result",
            "progress",
            "model_result",
            "progress",
            "clarification",
            "progress",
            "completed"
        ]
    );
    let state: Value = client
        .get(format!("{base}/api/v1/sessions/{session}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (state["seq"].as_u64(), state["completed"].as_bool()),
        (Some(11), Some(true))
    );
    assert_eq!(state["progress"]["progress"], 100.0);
}
