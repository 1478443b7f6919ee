//! Tokens on the Socket.IO side: checked in the connect middleware, before
//! the socket exists for anyone; what each socket's token grants, asked at
//! every `subscribe`; and the end of a socket whose token expired, by
//! closing its transport so that a stock client reconnects with a fresh
//! token (a Socket.IO disconnect packet would stop it for good).
//!
//! Exists only when a key is configured: anonymous sockets cost nothing
//! here, not even a map entry.

use std::{borrow::Cow, sync::Arc};

use dashmap::DashMap;
use serde::Deserialize;
use socketioxide::{
    adapter::Adapter,
    extract::{SocketRef, State, TryData},
    socket::Sid,
};
use tracing::{debug, info};

use super::Local;
use crate::{
    auth::{Expiry, Grant, Refusal, Throttle, Unauthorized, Verifier},
    metrics::Metrics,
    protocol::SessionRequest,
};

/// The tokens of this server's sockets.
pub(super) struct Tokens {
    verifier: Arc<Verifier>,
    /// Per socket, what its connection token grants.
    grants: DashMap<Sid, Arc<Grant>>,
    expiry: Expiry<Sid>,
    refusals_logged: Throttle,
}

/// The handshake's `auth` payload, as far as herald reads it.
#[derive(Deserialize)]
pub(super) struct HandshakeAuth {
    token: Option<String>,
}

impl Tokens {
    pub(super) fn new(verifier: Arc<Verifier>) -> Self {
        Self {
            verifier,
            grants: DashMap::new(),
            expiry: Expiry::new(),
            refusals_logged: Throttle::default(),
        }
    }

    /// What socket `id`'s connection token grants.
    pub(super) fn grant(&self, id: Sid) -> Option<Arc<Grant>> {
        self.grants.get(&id).map(|g| g.clone())
    }

    /// Forgets a socket that went away.
    pub(super) fn forget(&self, id: Sid) {
        if let Some((_, grant)) = self.grants.remove(&id) {
            self.expiry.remove(grant.exp(), id);
        }
    }

    /// Why `request` may not subscribe, if it may not: the socket's grant,
    /// or else the request's own token, must cover the session.
    pub(super) fn forbids(&self, id: Sid, request: &SessionRequest) -> Option<String> {
        let session = request.session_id.as_str();
        self.forbids_by(id, request.token.as_deref(), |g| g.covers(session))
            .map(|why| format!("{why} session {session}"))
    }

    /// Why a `subscribe { runId }` may not, if it may not: the same rule as
    /// sessions, with the `runs` claim.
    pub(super) fn forbids_run(&self, id: Sid, run: &str, token: Option<&str>) -> Option<String> {
        self.forbids_by(id, token, |g| g.covers_run(run))
            .map(|why| format!("{why} run {run}"))
    }

    fn forbids_by(
        &self,
        id: Sid,
        token: Option<&str>,
        covers: impl Fn(&Grant) -> bool,
    ) -> Option<String> {
        if self.grants.get(&id).is_some_and(|g| covers(&g)) {
            return None;
        }
        let Some(token) = token else {
            return Some("forbidden: this connection's token does not grant".into());
        };
        match self.verifier.verify(token) {
            Ok(grant) if covers(&grant) => None,
            Ok(_) => Some(
                "forbidden: neither this connection's token nor the subscribe token grants".into(),
            ),
            Err(refusal) => Some(format!(
                "forbidden: the subscribe token was refused ({refusal}) for"
            )),
        }
    }

    /// Ends, as their tokens expire, the sockets `close` is given.
    pub(super) async fn expire(&self, metrics: &Metrics, mut close: impl FnMut(Sid)) {
        self.expiry
            .run(|id| {
                let Some((_, grant)) = self.grants.remove(&id) else {
                    return;
                };
                metrics.auth_refused("token_expired");
                info!(socket = %id, sub = grant.sub(), "token expired: closing the socket's transport (the client reconnects with a fresh token)");
                close(id);
            })
            .await;
    }
}

/// The connect middleware: refuses a socket without a valid token with a
/// `connect_error` saying why, or keeps what its token grants.
pub(super) async fn authenticate<A: Adapter>(
    s: SocketRef<A>,
    TryData(auth): TryData<HandshakeAuth>,
    State(rt): State<Local<A>>,
) -> Result<(), Unauthorized> {
    let Some(tokens) = &rt.tokens else {
        return Ok(());
    };
    let token = auth
        .ok()
        .and_then(|a| a.token)
        .map(Cow::Owned)
        .or_else(|| handshake_token(s.req_parts()).map(Cow::Borrowed));
    let verified = match token {
        Some(token) => tokens.verifier.verify(&token),
        None => Err(Refusal::Missing),
    };
    match verified {
        Ok(grant) => {
            debug!(socket = %s.id, sub = grant.sub(), exp = grant.exp(), "token accepted");
            let grant = Arc::new(grant);
            tokens.expiry.insert(grant.exp(), s.id);
            tokens.grants.insert(s.id, grant);
            Ok(())
        }
        Err(refusal) => {
            rt.metrics.auth_refused(refusal.label());
            if let Some(left_out) = tokens.refusals_logged.allow() {
                let agent = s
                    .req_parts()
                    .headers
                    .get(axum::http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok());
                info!(socket = %s.id, %refusal, user_agent = agent, refusals_not_logged = left_out, "connection refused");
            }
            Err(Unauthorized(refusal))
        }
    }
}

/// A token sent with the handshake request itself.
fn handshake_token(req: &axum::http::request::Parts) -> Option<&str> {
    crate::auth::request_token(&req.uri, &req.headers)
}
