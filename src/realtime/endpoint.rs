//! The HTTP edge of the Socket.IO endpoint: its routes, which browser
//! origins may use them, and what of a request its socket keeps.

use axum::{
    Router,
    extract::Request,
    http::Extensions,
    middleware::{self},
};

use crate::{http::Origins, limits::Admitted};

/// The Socket.IO endpoint, with or without the trailing slash. With a list
/// of allowed origins, a browser from another origin is refused on every
/// transport: CORS alone would stop only polling, not a WebSocket upgrade.
pub(super) fn routes<S>(service: S, origins: &Origins) -> Router
where
    S: tower::Service<axum::extract::Request, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    let routes = Router::new()
        .route_service("/socket.io/", service.clone())
        .route_service("/socket.io", service)
        .route_layer(middleware::map_request(only_upgrade_extension));
    origins.guard(routes)
}

/// Leaves a Socket.IO request only the extensions it needs: hyper's upgrade
/// handle, and the connection's slot in the limits (which must live as long
/// as the socket). Every socket keeps its request's extensions for as long
/// as it lives, and axum's routing data in them cost 0.2 KiB per socket.
///
/// With the patched engine the slot goes as a `SessionGuard`, which the
/// engine keeps in a field of the socket (vendor patch 16): the engine takes
/// the upgrade handle out too, so the socket keeps no extension map at all,
/// which alone is about as much as the slot, the request bucket and the
/// outbox's bound together (0.2 KiB).
async fn only_upgrade_extension(mut req: Request) -> Request {
    let upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    let admitted = req.extensions_mut().remove::<Admitted>();
    *req.extensions_mut() = Extensions::new();
    if let Some(upgrade) = upgrade {
        req.extensions_mut().insert(upgrade);
    }
    if let Some(admitted) = admitted {
        #[cfg(feature = "patched-engine")]
        req.extensions_mut().insert(admitted.into_guard());
        #[cfg(not(feature = "patched-engine"))]
        req.extensions_mut().insert(admitted);
    }
    req
}
