//! The HTTP publish API as a backend reaches it: a body (with one of a few
//! content types) posted to the one-event or the batch route of a real
//! herald router, in memory. Nothing may panic or answer 5xx; a refusal is
//! JSON with a readable `error`; an accepted body was valid JSON.
#![no_main]

use std::sync::{Mutex, OnceLock};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode, header},
};
use clap::Parser;
use herald::{Config, Herald};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt;

/// Inputs one herald serves before a fresh one replaces it, so that the
/// sessions and history the accepted publishes leave stay bounded.
const INPUTS_PER_HERALD: u32 = 20_000;

struct Target {
    rt: tokio::runtime::Runtime,
    herald: Mutex<(Router, u32)>,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| Target {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        herald: Mutex::new((router(), 0)),
    })
}

fn router() -> Router {
    // No API key and no Redis: the body path alone.
    let config = Config::parse_from(["herald", "--history-max-bytes", "16777216"]);
    let (herald, _background) = Herald::new(&config).expect("herald builds");
    herald.router()
}

fuzz_target!(|data: &[u8]| {
    let Some((choice, body)) = data.split_first() else {
        return;
    };
    let target = target();
    let router = {
        let mut held = target.herald.lock().unwrap();
        held.1 += 1;
        if held.1 > INPUTS_PER_HERALD {
            *held = (router(), 0);
        }
        held.0.clone()
    };
    let path = if choice & 1 == 0 {
        "/api/v1/sessions/fuzz/events"
    } else {
        "/api/v1/events"
    };
    let content_type = match (choice >> 1) % 4 {
        0 => None,
        1 => Some("application/json"),
        2 => Some("application/cloudevents+json; charset=utf-8"),
        _ => Some("text/plain"),
    };
    let mut request = Request::post(path);
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    let request = request
        .body(Body::from(body.to_vec()))
        .expect("a request");
    let (status, answer) = target.rt.block_on(async {
        let response = router.oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        (status, bytes)
    });
    assert!(
        !status.is_server_error(),
        "{status} for {:?}",
        String::from_utf8_lossy(body)
    );
    let answer: Value = serde_json::from_slice(&answer).expect("every answer is JSON");
    if status == StatusCode::ACCEPTED {
        assert!(
            serde_json::from_slice::<Value>(body).is_ok(),
            "accepted a body that is not JSON: {:?}",
            String::from_utf8_lossy(body)
        );
    } else {
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{status} without a reason: {answer}");
    }
});
