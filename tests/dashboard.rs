//! Who may open `/dashboard`, through the real router: herald configured
//! for a non-loopback HOST (here only configured: the listener is still
//! 127.0.0.1, as every test's) keeps it off without ADMIN_TOKEN, and with
//! one asks for it. The page itself, live, is the browser suite's
//! (tests/interop/browser/dashboard.test.mjs).

use clap::Parser;
use herald::{Config, Herald};
use tokio::net::TcpListener;

/// A herald built from `args`, served on 127.0.0.1; its base URL.
async fn serve(args: &[&str]) -> String {
    let config = Config::parse_from(["herald"].iter().chain(args));
    let (herald, background) = Herald::new(&config).unwrap();
    background.spawn();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(herald.serve(listener, std::future::pending()));
    url
}

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    // An event stream never ends: its first bytes are enough.
    let mut res = res;
    let first = res.chunk().await.unwrap().unwrap_or_default();
    (status, String::from_utf8_lossy(&first).into_owned())
}

#[tokio::test]
async fn beyond_loopback_without_a_token_the_dashboard_is_off() {
    let url = serve(&["--host", "0.0.0.0"]).await;
    for path in [
        "/dashboard",
        "/dashboard/dashboard.js",
        "/dashboard/api/feed",
    ] {
        let (status, body) = get(&format!("{url}{path}"), Some("anything")).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("DASHBOARD_OFF"), "{body}");
        assert!(body.contains("ADMIN_TOKEN"), "{body}");
    }
}

#[tokio::test]
async fn with_a_token_the_dashboard_asks_for_it() {
    let url = serve(&["--host", "0.0.0.0", "--admin-token", "open-sesame"]).await;
    let (status, page) = get(&format!("{url}/dashboard"), None).await;
    assert_eq!(status, 200, "the page holds no data: it asks for the token");
    assert!(page.contains("Admin token"), "{page}");
    for wrong in [None, Some("open-sesam"), Some("open-sesame2")] {
        let (status, body) = get(&format!("{url}/dashboard/api/feed"), wrong).await;
        assert_eq!(status, 401, "{wrong:?}: {body}");
        assert!(body.contains("wrong admin token"), "{body}");
    }
    let (status, body) = get(&format!("{url}/dashboard/api/feed"), Some("open-sesame")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("event: history"), "{body}");
    let (status, body) = get(
        &format!("{url}/dashboard/api/sessions/doc-1"),
        Some("open-sesame"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""seq":0"#), "{body}");
}

#[tokio::test]
async fn a_foreign_origin_is_refused_as_on_the_rest_of_herald() {
    let url = serve(&["--cors-origins", "http://ops.test", "--admin-token", "t"]).await;
    let feed = format!("{url}/dashboard/api/feed");
    let from = |origin: &'static str| {
        reqwest::Client::new()
            .get(&feed)
            .bearer_auth("t")
            .header("origin", origin)
            .send()
    };
    let foreign = from("http://evil.test").await.unwrap();
    assert_eq!(foreign.status(), 403);
    assert!(foreign.text().await.unwrap().contains("CORS_ORIGINS"));
    assert_eq!(from("http://ops.test").await.unwrap().status(), 200);
}

/// The tail sends the held history first, in order and page after page
/// without waiting, then what is published next.
#[tokio::test]
async fn a_tail_sends_the_history_then_new_events() {
    let url = serve(&[]).await;
    let http = reqwest::Client::new();
    let publish = |n: u64| {
        let body = serde_json::json!({ "event": "error", "data": { "error": format!("e{n}") } });
        http.post(format!("{url}/api/v1/sessions/tailed/events"))
            .json(&body)
            .send()
    };
    for n in 1..=1000 {
        assert_eq!(publish(n).await.unwrap().status(), 202);
    }
    let started = std::time::Instant::now();
    let mut tail = http
        .get(format!("{url}/dashboard/api/sessions/tailed/tail?since=0"))
        .send()
        .await
        .unwrap();
    let mut seqs = Vec::new();
    let mut text = String::new();
    while seqs.len() < 1001 {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), tail.chunk())
            .await
            .expect("the tail went quiet")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                let event: serde_json::Value = serde_json::from_str(data).unwrap();
                seqs.push(event["seq"].as_u64().unwrap());
            }
        }
        if seqs.len() == 1000 {
            let took = started.elapsed();
            // Five pages: waiting between them would take a second.
            assert!(
                took < std::time::Duration::from_millis(750),
                "history took {took:?}"
            );
            assert_eq!(publish(1001).await.unwrap().status(), 202);
        }
    }
    assert_eq!(seqs, (1..=1001).collect::<Vec<u64>>());
}

#[tokio::test]
async fn health_says_the_version_and_the_instance() {
    let url = serve(&[]).await;
    let health: serde_json::Value = reqwest::get(format!("{url}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        health["instance"].as_str().is_some_and(|id| !id.is_empty()),
        "{health}"
    );
}
