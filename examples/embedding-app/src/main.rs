//! A minimal backend embedding herald: its routes merged into the app's, its
//! background work spawned, and one event published through the `Emitter`
//! when `POST /jobs/{id}/done` is called.

use axum::{Router, extract::Path, extract::State, http::StatusCode, routing::post};
use clap::Parser;
use herald::{
    Config, Emitter, Herald, SessionId,
    protocol::{Completed, JsonObject},
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::parse();
    let (herald, background) = Herald::new(&config)?;
    background.spawn();
    let app = Router::new()
        .route("/jobs/{id}/done", post(done))
        .with_state(herald.emitter())
        .merge(herald.router());
    let listener = tokio::net::TcpListener::bind(config.listen_on()).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn done(State(emitter): State<Emitter>, Path(id): Path<String>) -> StatusCode {
    let Ok(session) = SessionId::parse(&id) else {
        return StatusCode::UNPROCESSABLE_ENTITY;
    };
    let mut result = serde_json::Map::new();
    result.insert("jobId".into(), id.into());
    let result = JsonObject::from(result);
    match emitter.completed(&session, Completed { result }).await {
        Ok(_) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}
