//! A document-processing backend that embeds herald in its own axum app and
//! publishes through the typed emit helpers instead of HTTP.
//!
//! ```text
//! cargo run --example embedded -- --port 3000
//! curl -s -X POST localhost:3000/documents            # -> {"sessionId":"doc-..."}
//! node client-examples/node/watch-session.mjs doc-... # watch it
//! curl -s -X POST localhost:3000/documents/doc-.../start
//! ```
//!
//! herald's own routes (`/socket.io/`, `/api/v1/...`, `/health`) are merged
//! into the app, so browsers connect to the backend itself, and events the
//! backend emits in-process share one seq with any published over HTTP.

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::post,
    serve::ListenerExt,
};
use clap::Parser;
use herald::{
    Config, Emitter, Herald, SessionId,
    protocol::{
        Clarification, ClarificationStatus, Completed, ModelResult, ModelStatus, Progress, Prompts,
        SessionStatus,
    },
};
use serde_json::json;

/// The simulated job: a few models read a document, one asks a question.
const MODELS: [(&str, &str); 3] = [
    ("llama3.1:8b", "ollama"),
    ("gpt-4o-mini", "openai"),
    ("claude-haiku", "anthropic"),
];

#[tokio::main]
async fn main() {
    // herald's settings (port, API key, CORS...) are this app's settings too.
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(config.log_level.as_str())
        .init();
    let (herald, background) = Herald::new(&config).expect("valid settings");
    // Cluster delivery, housekeeping and load watching: /ready says 503
    // until this runs.
    background.spawn();

    let app = Router::new()
        .route("/documents", post(create_document))
        .route("/documents/{id}/start", post(start_processing))
        .with_state(herald.emitter())
        .merge(herald.router());

    // TCP_NODELAY, as herald's own server sets it: events are small frames
    // that must not wait for the client's delayed ACK.
    let listener = tokio::net::TcpListener::bind(config.listen_on())
        .await
        .expect("bind");
    tracing::info!(
        "document backend with embedded herald on http://{}",
        listener.local_addr().expect("bound")
    );
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.expect("serve");
}

async fn create_document() -> (StatusCode, Json<serde_json::Value>) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    (
        StatusCode::CREATED,
        Json(json!({ "sessionId": format!("doc-{nanos:x}") })),
    )
}

async fn start_processing(
    State(emitter): State<Emitter>,
    Path(id): Path<String>,
) -> Result<StatusCode, (StatusCode, String)> {
    let session =
        SessionId::parse(&id).map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = process(&emitter, &session).await {
            tracing::error!(%session, "simulation stopped: {e}");
        }
    });
    Ok(StatusCode::ACCEPTED)
}

/// Plays one document-processing session through the emit helpers.
async fn process(emitter: &Emitter, session: &SessionId) -> Result<(), herald::PublishError> {
    let step = Duration::from_millis(
        std::env::var("SIM_STEP_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    let total = MODELS.len() as u64;
    let progress = |status, pct: f64, completed: u64, clarifications: u64| Progress {
        status,
        progress: herald::protocol::Percent::new(pct).expect("0..=100"),
        prompts: Prompts {
            total,
            completed,
            processing: u64::from(completed < total),
            pending: total - completed - u64::from(completed < total),
            failed: 0,
        },
        has_clarifications: clarifications > 0,
        clarification_count: clarifications,
        has_result: None,
        result: None,
    };

    emitter
        .progress(session, progress(SessionStatus::Processing, 0.0, 0, 0))
        .await?;
    for (i, (model, provider)) in MODELS.iter().enumerate() {
        tokio::time::sleep(step).await;
        emitter
            .model_result(
                session,
                ModelResult {
                    model_name: model.to_string(),
                    duration: herald::protocol::Millis::from(step.as_millis() as u64 * 3),
                    result: format!("{model}: the document describes a 12% revenue increase"),
                    status: ModelStatus::Completed,
                    error: None,
                    provider: Some(provider.to_string()),
                },
            )
            .await?;
        let done = i as u64 + 1;
        let pct = 90.0 * done as f64 / total as f64;
        emitter
            .progress(session, progress(SessionStatus::Processing, pct, done, 0))
            .await?;
    }
    emitter
        .clarification(
            session,
            Clarification {
                clarification_id: format!("{session}-c1"),
                question: "Should the summary cover fiscal or calendar year?".into(),
                status: ClarificationStatus::Pending,
            },
        )
        .await?;
    tokio::time::sleep(step).await;
    emitter
        .progress(session, progress(SessionStatus::Completed, 100.0, total, 1))
        .await?;
    let result = json!({ "summary": "Revenue grew 12% year over year", "models": total });
    emitter
        .completed(
            session,
            Completed {
                result: result.try_into().expect("an object"),
            },
        )
        .await?;
    Ok(())
}
