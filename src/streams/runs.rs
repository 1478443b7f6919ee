//! `/ws`: ResearchFlow's message protocol (PROTOCOL.md section 6), as seed
//! 001's WebSocket manager speaks it: `connection.established`, ping/pong,
//! `auth` naming the client's user, project and run, subscriptions by event
//! type or category, `get_status`, and `error` replies that keep the
//! connection open. Events are delivered as the stored frame `{ type,
//! timestamp, seq, payload }`, to the clients they are addressed to (run,
//! project, user or all) whose type filter lets them through.
//!
//! A client's filter and resume floor are atomics, so delivering reads no
//! lock; who is addressed is looked up in per-run, per-project and per-user
//! indexes, so a publish walks only its recipients (all clients for `to:
//! "all"`).

use std::sync::{
    Arc, Mutex, Weak,
    atomic::{AtomicU16, AtomicU64, Ordering},
};

use axum::{
    Router,
    extract::{Request, State},
    routing::get,
};
use dashmap::DashMap;
use futures_util::future::{BoxFuture, FutureExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::info;

use super::{Handler, Outbox, Settings, client_id, upgrade};
use crate::{
    auth::{Grant, Refusal, Unauthorized, Verifier, unix_now},
    cluster::{
        FanOut, Sequenced, Sequencer,
        history::{Attached, Start},
    },
    protocol::{
        EventFamily, Family, RUN_CATEGORIES, RunEvent, RunTypes, Scope, SessionId, Timestamp, Topic,
    },
};

/// What a `/ws` client claims in its `auth` message.
#[derive(Debug, Default)]
struct RunAuth<'a> {
    user_id: Option<&'a str>,
    project_id: Option<&'a str>,
    run_id: Option<&'a str>,
    /// The `token` of the payload, when the client sent one.
    token: Option<&'a str>,
}

/// A connected `/ws` client.
struct RunClient {
    id: Box<str>,
    outbox: Arc<Outbox>,
    /// Event types it asked for (`RunTypes` bits); none means every type.
    types: AtomicU16,
    /// Events of its run at or below this seq were sent to it by a replay.
    floor: AtomicU64,
    /// Event frames sent to it, for `get_status`.
    sent: AtomicU64,
    /// Who it said it is; changed only by its own requests.
    claims: Mutex<Claims>,
    /// Until when (Unix seconds) it may receive events: 0 until a token is
    /// accepted when tokens are required, else forever. Read at every offer,
    /// so an expired token stops deliveries without a timer.
    until: AtomicU64,
    /// What its `auth` token grants, for later `subscribe { runId }`.
    grant: Mutex<Option<Arc<Grant>>>,
}

#[derive(Default, Clone)]
struct Claims {
    user: Option<Box<str>>,
    project: Option<Box<str>>,
    run: Option<SessionId>,
}

impl RunClient {
    /// `now`: Unix seconds, read once per event rather than per client.
    fn offer(&self, frame: &Utf8Bytes, bit: RunTypes, seq: Option<u64>, now: u64) -> bool {
        if self.until.load(Ordering::Relaxed) <= now {
            return false;
        }
        let types = RunTypes(self.types.load(Ordering::Relaxed));
        if !types.is_empty() && !types.contains(bit) {
            return false;
        }
        if seq.is_some_and(|seq| seq <= self.floor.load(Ordering::Relaxed)) {
            return false;
        }
        let sent = self.outbox.offer(frame);
        if sent {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }
}

type Index<K> = DashMap<K, Vec<Arc<RunClient>>>;

/// Every `/ws` client of this instance, indexed by what events address.
pub(crate) struct RunHub {
    settings: Arc<Settings>,
    clients: DashMap<usize, Arc<RunClient>>,
    by_run: Index<SessionId>,
    by_project: Index<Box<str>>,
    by_user: Index<Box<str>>,
    verifier: Option<Arc<Verifier>>,
    sequencer: std::sync::OnceLock<Weak<dyn Sequencer>>,
}

fn key(client: &Arc<RunClient>) -> usize {
    Arc::as_ptr(client) as usize
}

fn index_add<K: std::hash::Hash + Eq>(index: &Index<K>, k: K, client: &Arc<RunClient>) {
    index.entry(k).or_default().push(client.clone());
}

fn index_remove<K: std::hash::Hash + Eq>(index: &Index<K>, k: &K, client: &Arc<RunClient>) {
    index.remove_if_mut(k, |_, clients| {
        clients.retain(|c| !Arc::ptr_eq(c, client));
        clients.is_empty()
    });
}

impl RunHub {
    pub(crate) fn new(settings: Arc<Settings>, verifier: Option<Arc<Verifier>>) -> Self {
        Self {
            settings,
            clients: DashMap::new(),
            by_run: DashMap::new(),
            by_project: DashMap::new(),
            by_user: DashMap::new(),
            verifier,
            sequencer: std::sync::OnceLock::new(),
        }
    }

    /// Gives resuming subscriptions the sequencer that reports to this hub.
    pub(crate) fn subscribe_through(&self, sequencer: &Arc<dyn Sequencer>) {
        let _ = self.sequencer.set(Arc::downgrade(sequencer));
    }

    fn set_claims(&self, client: &Arc<RunClient>, new: Claims) {
        let mut claims = client.claims.lock().expect("not poisoned");
        if claims.run != new.run {
            if let Some(run) = &claims.run {
                index_remove(&self.by_run, run, client);
            }
            if let Some(run) = &new.run {
                index_add(&self.by_run, run.clone(), client);
            }
        }
        if claims.project != new.project {
            if let Some(p) = &claims.project {
                index_remove(&self.by_project, p, client);
            }
            if let Some(p) = &new.project {
                index_add(&self.by_project, p.clone(), client);
            }
        }
        if claims.user != new.user {
            if let Some(u) = &claims.user {
                index_remove(&self.by_user, u, client);
            }
            if let Some(u) = &new.user {
                index_add(&self.by_user, u.clone(), client);
            }
        }
        *claims = new;
    }

    fn leave(&self, client: &Arc<RunClient>) {
        self.set_claims(client, Claims::default());
        self.clients.remove(&key(client));
        self.settings.metrics.stream_connections("ws").dec();
    }
}

/// The project or user a `to: "project"` / `"user"` event names.
#[derive(Deserialize)]
struct Addressed<'a> {
    #[serde(borrow)]
    payload: AddressedPayload<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddressedPayload<'a> {
    #[serde(borrow, default)]
    project_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    user_id: Option<std::borrow::Cow<'a, str>>,
}

impl FanOut for RunHub {
    fn watches(&self, topic: &Topic) -> bool {
        topic.family == Family::Run && self.by_run.contains_key(&topic.id)
    }

    fn deliver<'a>(&'a self, event: Sequenced<'a>) -> BoxFuture<'a, ()> {
        async move {
            if event.topic.family != Family::Run {
                return;
            }
            let Some(bit) = RunTypes::of_type(event.name) else {
                return;
            };
            // Serialized once here; every client's queue shares these bytes.
            let frame = Utf8Bytes::from(event.payload.get().to_string());
            let mut delivered = 0u64;
            let now = unix_now();
            let mut send = |clients: &[Arc<RunClient>], seq| {
                for c in clients {
                    delivered += u64::from(c.offer(&frame, bit, seq, now));
                }
            };
            let addressed = || serde_json::from_str::<Addressed>(event.payload.get()).ok();
            match event.scope {
                Scope::Topic => {
                    if let Some(clients) = self.by_run.get(&event.topic.id) {
                        send(&clients, Some(event.seq));
                    }
                }
                Scope::Project => {
                    if let Some(p) = addressed().and_then(|a| a.payload.project_id)
                        && let Some(clients) = self.by_project.get(p.as_ref())
                    {
                        send(&clients, None);
                    }
                }
                Scope::User => {
                    if let Some(u) = addressed().and_then(|a| a.payload.user_id)
                        && let Some(clients) = self.by_user.get(u.as_ref())
                    {
                        send(&clients, None);
                    }
                }
                // Walked in place: an offer only takes its client's queue
                // lock, never one of the map's.
                Scope::All => {
                    for c in self.clients.iter() {
                        delivered += u64::from(c.offer(&frame, bit, None, now));
                    }
                }
            }
            self.settings.metrics.events_delivered.inc_by(delivered);
        }
        .boxed()
    }
}

/// `GET /ws`.
pub(crate) fn routes(hub: Arc<RunHub>) -> Router {
    Router::new().route("/ws", get(connect)).with_state(hub)
}

async fn connect(State(hub): State<Arc<RunHub>>, req: Request) -> axum::response::Response {
    let settings = hub.settings.clone();
    upgrade(req, &settings, move |outbox| {
        let client = Arc::new(RunClient {
            id: client_id(),
            outbox,
            types: AtomicU16::new(0),
            floor: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            claims: Mutex::new(Claims::default()),
            until: AtomicU64::new(if hub.verifier.is_some() { 0 } else { u64::MAX }),
            grant: Mutex::new(None),
        });
        hub.clients.insert(key(&client), client.clone());
        hub.settings.metrics.stream_connections("ws").inc();
        let hello = json!({
            "type": "connection.established",
            "payload": { "clientId": &*client.id, "version": env!("CARGO_PKG_VERSION") },
        });
        let _ = client.outbox.offer(&Utf8Bytes::from(hello.to_string()));
        Connection { hub, client }
    })
}

/// One client's requests, answered in the order they arrive.
struct Connection {
    hub: Arc<RunHub>,
    client: Arc<RunClient>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.hub.leave(&self.client);
    }
}

/// A client's message: `{ type, payload? }`.
#[derive(Deserialize)]
struct Request_ {
    #[serde(rename = "type")]
    kind: Option<Value>,
    #[serde(default)]
    payload: Option<Value>,
}

fn reply(kind: &str, payload: Value) -> String {
    json!({ "type": kind, "payload": payload }).to_string()
}

fn error(message: &str, details: impl Into<Value>) -> String {
    reply(
        "error",
        json!({ "message": message, "details": details.into() }),
    )
}

fn names(types: RunTypes) -> Vec<&'static str> {
    types.names().collect()
}

/// A string field of the payload; `Err` when present but not a string.
fn text<'a>(payload: &'a Value, field: &str) -> Result<Option<&'a str>, String> {
    match payload.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{field} must be a string, got {other}")),
    }
}

impl Handler for Connection {
    async fn on_text(&mut self, text_frame: &str) -> Vec<String> {
        let request: Request_ = match serde_json::from_str(text_frame) {
            Ok(r) => r,
            Err(e) => return vec![error("Invalid message format", e.to_string())],
        };
        let payload = request.payload.unwrap_or(Value::Null);
        let kind = match request.kind {
            Some(Value::String(kind)) => kind,
            _ => {
                return vec![error(
                    "Invalid message format",
                    "a message needs a string `type`",
                )];
            }
        };
        match kind.as_str() {
            "ping" => vec![
                json!({ "type": "pong", "timestamp": Timestamp::now(), "payload": {} }).to_string(),
            ],
            "auth" => vec![self.auth(&payload).await],
            "subscribe" if payload.get("runId").is_some() => vec![self.resume(&payload).await]
                .into_iter()
                .flatten()
                .collect(),
            "subscribe" => vec![self.filter(&payload, true)],
            "unsubscribe" => vec![self.filter(&payload, false)],
            "get_status" => vec![reply(
                "status",
                json!({
                    "clientId": &*self.client.id,
                    "subscriptions": names(RunTypes(self.client.types.load(Ordering::Relaxed))),
                    "messageCount": self.client.sent.load(Ordering::Relaxed),
                }),
            )],
            other => vec![error(
                "Unknown message type",
                format!("{other:?}; expected ping, auth, subscribe, unsubscribe or get_status"),
            )],
        }
    }

    /// Before auth (`until` 0) the client is not closed: it may still
    /// authenticate, and it receives nothing meanwhile.
    fn until(&self) -> u64 {
        match self.client.until.load(Ordering::Relaxed) {
            0 => u64::MAX,
            until => until,
        }
    }

    fn on_binary(&mut self) -> Option<String> {
        Some(error(
            "Binary frames are not supported",
            "send JSON text frames",
        ))
    }
}

impl Connection {
    /// The `auth` rule when tokens are required: a valid token whose `sub`
    /// is the `userId` and whose `projects` and `runs` claims cover the
    /// `projectId` and `runId` named.
    fn authorize(&self, verifier: &Verifier, auth: &RunAuth<'_>) -> Result<Grant, String> {
        let Some(token) = auth.token else {
            return Err(Unauthorized(Refusal::Missing).to_string());
        };
        let grant = verifier
            .verify(token)
            .map_err(|r| Unauthorized(r).to_string())?;
        if let Some(user) = auth.user_id
            && grant.sub() != Some(user)
        {
            return Err(format!("forbidden: the token's sub is not user {user}"));
        }
        if let Some(project) = auth.project_id
            && !grant.covers_project(project)
        {
            return Err(format!(
                "forbidden: the token's projects claim does not grant project {project}"
            ));
        }
        if let Some(run) = auth.run_id
            && !grant.covers_run(run)
        {
            return Err(format!(
                "forbidden: the token's runs claim does not grant run {run}"
            ));
        }
        Ok(grant)
    }

    /// Why this client may not watch `run`, if it may not: it must have
    /// authenticated, and its `auth` token or `token` must grant the run.
    fn forbids_run(&self, run: &str, token: Option<&str>) -> Option<String> {
        let verifier = self.hub.verifier.as_ref()?;
        let grant = self.client.grant.lock().expect("not poisoned").clone();
        let Some(grant) = grant else {
            return Some("authenticate first: send auth with a token".into());
        };
        if grant.covers_run(run) {
            return None;
        }
        match token.map(|t| verifier.verify(t)) {
            Some(Ok(g)) if g.covers_run(run) => None,
            Some(Err(refusal)) => Some(format!(
                "forbidden: the subscribe token was refused ({refusal})"
            )),
            _ => Some(format!(
                "forbidden: no token of this client grants run {run}"
            )),
        }
    }

    async fn auth(&self, payload: &Value) -> String {
        let failed = |message: String| reply("auth.failed", json!({ "message": message }));
        let read = (|| {
            Ok::<_, String>(RunAuth {
                user_id: text(payload, "userId")?,
                project_id: text(payload, "projectId")?,
                run_id: text(payload, "runId")?,
                token: text(payload, "token")?,
            })
        })();
        let auth = match read {
            Ok(auth) => auth,
            Err(message) => return failed(message),
        };
        let run = match auth.run_id.map(SessionId::parse).transpose() {
            Ok(run) => run,
            Err(e) => return failed(format!("runId: {e}")),
        };
        if let Some(verifier) = &self.hub.verifier {
            match self.authorize(verifier, &auth) {
                Ok(grant) => {
                    self.client.until.store(grant.exp(), Ordering::Relaxed);
                    *self.client.grant.lock().expect("not poisoned") = Some(Arc::new(grant));
                }
                Err(message) => {
                    info!(client = %self.client.id, "auth refused: {message}");
                    return failed(message);
                }
            }
        }
        // Its events must reach this instance before `auth.success` says
        // they will.
        if let Some(run) = &run
            && let Some(sequencer) = self.hub.sequencer.get().and_then(Weak::upgrade)
            && let Err(e) = sequencer.watch(&Topic::run(run.clone())).await
        {
            return failed(e.to_string());
        }
        let claims = Claims {
            user: auth.user_id.map(Into::into),
            project: auth.project_id.map(Into::into),
            run,
        };
        self.client.floor.store(0, Ordering::Relaxed);
        self.hub.set_claims(&self.client, claims);
        let mut echo = serde_json::Map::new();
        for (field, value) in [
            ("userId", auth.user_id),
            ("projectId", auth.project_id),
            ("runId", auth.run_id),
        ] {
            if let Some(value) = value {
                echo.insert(field.into(), value.into());
            }
        }
        reply("auth.success", Value::Object(echo))
    }

    /// `subscribe` / `unsubscribe` by `eventType` or `eventCategory`.
    fn filter(&self, payload: &Value, add: bool) -> String {
        if self.client.until.load(Ordering::Relaxed) == 0 {
            return error(
                "Authentication required",
                "events need auth: send auth with a token first",
            );
        }
        let (field, types) = match (text(payload, "eventType"), text(payload, "eventCategory")) {
            (Ok(Some(t)), _) => match RunTypes::of_type(t) {
                Some(types) => (("eventType", t), types),
                None => {
                    return error(
                        "Unknown event type",
                        format!("{t:?}; expected one of: {}", RunEvent::NAMES.join(", ")),
                    );
                }
            },
            (_, Ok(Some(c))) => match RunTypes::of_category(c) {
                Some(types) => (("eventCategory", c), types),
                None => {
                    let known: Vec<&str> = RUN_CATEGORIES.iter().map(|(c, _)| *c).collect();
                    return error(
                        "Unknown event category",
                        format!("{c:?}; expected one of: {}", known.join(", ")),
                    );
                }
            },
            _ => {
                return error(
                    "Invalid subscription",
                    "the payload needs a string eventType or eventCategory (or runId to resume)",
                );
            }
        };
        let now = if add {
            self.client.types.fetch_or(types.0, Ordering::Relaxed) | types.0
        } else {
            self.client.types.fetch_and(!types.0, Ordering::Relaxed) & !types.0
        };
        let kind = if add {
            "subscription.added"
        } else {
            "subscription.removed"
        };
        reply(
            kind,
            json!({ field.0: field.1, "subscriptions": names(RunTypes(now)) }),
        )
    }

    /// `subscribe { runId, since?, epoch? }`: watch the run, replaying what
    /// was published after `since` with no gap before the live events.
    async fn resume(&self, payload: &Value) -> Option<String> {
        let run = match text(payload, "runId").map(|r| r.map(SessionId::parse)) {
            Ok(Some(Ok(run))) => run,
            Ok(Some(Err(e))) => return Some(error("Invalid subscription", format!("runId: {e}"))),
            Ok(None) | Err(_) => {
                return Some(error("Invalid subscription", "runId must be a string"));
            }
        };
        let start = match payload.get("since") {
            None | Some(Value::Null) => Start::Snapshot,
            Some(since) => match since.as_u64() {
                Some(since) => Start::Resume {
                    since,
                    epoch: text(payload, "epoch").ok().flatten().map(str::to_owned),
                },
                None => {
                    return Some(error(
                        "Invalid subscription",
                        format!("since must be a non-negative integer, got {since}"),
                    ));
                }
            },
        };
        if let Some(message) = self.forbids_run(run.as_str(), text(payload, "token").ok().flatten())
        {
            return Some(error("Forbidden", message));
        }
        let sequencer = self.hub.sequencer.get().and_then(Weak::upgrade)?;
        let topic = Topic::run(run.clone());
        let (hub, client) = (self.hub.clone(), self.client.clone());
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
        let join = Box::new(move |result: Result<Attached, _>| {
            let answer = match result {
                Ok(attached) => {
                    joined(&hub, &client, run, attached);
                    None
                }
                Err(e) => Some(error("Subscription failed", format!("{e}"))),
            };
            let _ = answer_tx.send(answer);
        });
        sequencer.attach(&topic, start, join).await;
        answer_rx.await.ok().flatten()
    }
}

/// Sends the answer and the replay through the client's queue (so they come
/// before any live event) and makes the run the client's.
fn joined(hub: &RunHub, client: &Arc<RunClient>, run: SessionId, attached: Attached) {
    let replayed = attached.events.len() + attached.caught_up.len();
    let mut answer = json!({
        "runId": run.as_ref(),
        "seq": attached.seq,
        "epoch": attached.epoch,
        "subscriptions": names(RunTypes(client.types.load(Ordering::Relaxed))),
    });
    if let Some(recovery) = attached.recovery {
        answer["recovered"] = recovery.lost.is_none().into();
        answer["replayed"] = replayed.into();
        if let Some(lost) = recovery.lost {
            answer["reason"] = json!(lost);
        }
    }
    let _ = client
        .outbox
        .offer(&Utf8Bytes::from(reply("subscription.added", answer)));
    let mut floor = attached.seq;
    for held in attached.events.iter().chain(&attached.caught_up) {
        floor = floor.max(held.seq);
        if client
            .outbox
            .offer(&Utf8Bytes::from(held.payload.get().to_string()))
        {
            client.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    client.floor.store(floor, Ordering::Relaxed);
    let mut claims = client.claims.lock().expect("not poisoned").clone();
    claims.run = Some(run);
    hub.set_claims(client, claims);
}
