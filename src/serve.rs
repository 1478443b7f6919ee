//! The accept loop: every TCP connection herald takes, served as HTTP/1
//! with upgrades (WebSockets), until shutdown. It is herald's own rather
//! than axum's `serve` for the limits a public server needs: a header-read
//! timeout (a connection that sends nothing, or its headers a byte a second,
//! must not hold a descriptor for ever), each request's peer address (the
//! per-address limits), and an accept error that waits instead of spinning.

use std::{future::Future, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Accepts and serves HTTP/1 connections until `stop` resolves, then waits
/// for them to finish. axum's `serve` would do, but has no header-read
/// timeout: a connection that sends nothing, or its headers a byte a second,
/// would hold a descriptor for ever. Each request carries its peer address
/// (`ConnectInfo`), from which the limits tell clients apart.
pub(crate) async fn connections(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Finalized once: serving the Router itself would make axum clone and
    // re-finalize the whole route table for every connection.
    let app: Router = router.with_state(());
    // Dropped at shutdown, which each connection sees; each connection holds
    // a receiver of `open` until it ends, so its closing says all are done.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(());
    let (open, all_closed) = tokio::sync::watch::channel(());
    let mut stop = std::pin::pin!(stop);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (or a connection reset before it was
                    // taken): wait rather than spin; the clients that hold
                    // them are timed out or capped.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Events are small frames sent as they happen: without TCP_NODELAY,
        // Nagle's algorithm holds one back until the client acknowledges the
        // previous, up to its delayed-ACK timeout (40 ms on Linux).
        if let Err(e) = tcp.set_nodelay(true) {
            debug!("could not set TCP_NODELAY: {e}");
        }
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req.map(Body::new))
        });
        let conn = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let (mut stopping, open) = (stopping.clone(), all_closed.clone());
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = stopping.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                debug!(%peer, "connection ended: {e}");
            }
            drop(open);
        });
    }
    drop(listener);
    drop(stopping_tx);
    drop(all_closed);
    open.closed().await;
    Ok(())
}
