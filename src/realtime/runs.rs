//! Socket.IO clients watching a ResearchFlow run: `subscribe { runId,
//! since?, epoch? }` and `unsubscribe { runId }` (PROTOCOL.md section 6).
//! They receive the run's events with the event name `type` and the payload
//! plus `runId`, `timestamp` and `seq`, converted once per publish; resume
//! with `since` follows the session rule (section 4).
//!
//! Watchers are kept per run with the floor of what their replay sent, not
//! in rooms: an event still on its way from another instance when the
//! replay was read is then skipped rather than sent twice.

use std::sync::{Arc, Weak};

use dashmap::DashMap;
use serde_json::{Value, json};
use socketioxide::{
    adapter::Adapter,
    extract::AckSender,
    socket::{Sid, Socket},
};
use tracing::{debug, info};

use super::Local;
use crate::{
    cluster::{
        Sequenced,
        history::{Attached, Start},
    },
    metrics::Metrics,
    protocol::{SessionId, Timestamp, Topic, socketio_payload},
};

struct Watcher<A: Adapter> {
    socket: Arc<Socket<A>>,
    /// Events at or below this seq were sent by its replay.
    floor: u64,
}

/// This instance's Socket.IO watchers of runs.
pub(super) struct RunWatchers<A: Adapter> {
    by_run: DashMap<SessionId, Vec<Watcher<A>>>,
}

impl<A: Adapter> Default for RunWatchers<A> {
    fn default() -> Self {
        Self {
            by_run: DashMap::new(),
        }
    }
}

impl<A: Adapter> RunWatchers<A> {
    pub(super) fn watches(&self, run: &SessionId) -> bool {
        self.by_run.contains_key(run)
    }

    pub(super) fn deliver(&self, event: &Sequenced<'_>, metrics: &Metrics) {
        let Some(watchers) = self.by_run.get(&event.topic.id) else {
            return;
        };
        let Some(payload) = socketio_payload(event.payload.get()) else {
            return;
        };
        let mut delivered = 0;
        for w in watchers.iter().filter(|w| event.seq > w.floor) {
            delivered += u64::from(w.socket.emit(event.name, &*payload).is_ok());
        }
        metrics.events_delivered.inc_by(delivered);
    }

    fn add(&self, run: SessionId, socket: Arc<Socket<A>>, floor: u64) {
        let mut watchers = self.by_run.entry(run).or_default();
        watchers.retain(|w| w.socket.id != socket.id);
        watchers.push(Watcher { socket, floor });
    }

    fn remove(&self, run: &SessionId, socket: Sid) -> bool {
        let mut removed = false;
        self.by_run.remove_if_mut(run, |_, watchers| {
            let before = watchers.len();
            watchers.retain(|w| w.socket.id != socket);
            removed = watchers.len() < before;
            watchers.is_empty()
        });
        removed
    }

    /// Ends a disconnected socket's run subscriptions.
    pub(super) fn forget_socket(&self, socket: Sid) {
        if self.by_run.is_empty() {
            return;
        }
        self.by_run.retain(|_, watchers| {
            watchers.retain(|w| w.socket.id != socket);
            !watchers.is_empty()
        });
    }
}

/// A `{ runId, since?, epoch? }` payload.
pub(super) struct RunRequest {
    run: SessionId,
    start: Start,
    /// A subscribe token, for a run the connection's token does not grant.
    token: Option<String>,
}

impl RunRequest {
    pub(super) fn run(&self) -> &SessionId {
        &self.run
    }

    pub(super) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// The run request in `payload`, if it names a run (and no session).
pub(super) fn run_request(payload: Option<&Value>) -> Option<Result<RunRequest, String>> {
    let fields = payload?.as_object()?;
    if fields.contains_key("sessionId") {
        return None;
    }
    let run = fields.get("runId")?;
    Some((|| {
        let run = run
            .as_str()
            .ok_or_else(|| format!("runId must be a string, got {run}"))?;
        let run = SessionId::parse(run).map_err(|e| format!("runId: {e}"))?;
        let start = match fields.get("since") {
            None | Some(Value::Null) => Start::Snapshot,
            Some(since) => Start::Resume {
                since: since
                    .as_u64()
                    .ok_or("since must be a non-negative integer sequence number")?,
                epoch: fields
                    .get("epoch")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            },
        };
        let token = fields
            .get("token")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(RunRequest { run, start, token })
    })())
}

/// Refuses a malformed run request, keeping the socket.
pub(super) fn refuse<A: Adapter>(s: &Socket<A>, rt: &Local<A>, why: String, ack: AckSender<A>) {
    info!(socket = %s.id, %why, "refused");
    refuse_run(s, rt, "INVALID_RUN_ID", None, why, ack);
}

/// Refuses a run the socket's tokens do not grant, as sessions are refused
/// (`FORBIDDEN`), naming the run as the other run refusals do.
pub(super) fn forbid<A: Adapter>(
    s: &Socket<A>,
    rt: &Local<A>,
    run: &SessionId,
    why: String,
    ack: AckSender<A>,
) {
    rt.metrics.auth_refused("forbidden");
    info!(socket = %s.id, run = %run, %why, "subscribe forbidden");
    refuse_run(s, rt, "FORBIDDEN", Some(run), why, ack);
}

/// Sends a refused run request its `error` (kept among the dashboard's
/// recent refusals, as session refusals are) and its ack.
fn refuse_run<A: Adapter>(
    s: &Socket<A>,
    rt: &Local<A>,
    code: &'static str,
    run: Option<&SessionId>,
    why: String,
    ack: AckSender<A>,
) {
    rt.metrics
        .recent_refusals
        .record("socket", code.into(), &why, s.id.to_string());
    let mut reply = json!({ "error": why, "code": code });
    if let Some(run) = run {
        reply["runId"] = json!(run.as_ref());
    }
    let mut answer = reply.clone();
    answer["ok"] = json!(false);
    reply["timestamp"] = json!(Timestamp::now());
    let _ = s.emit("error", &reply);
    let _ = ack.send(&answer);
}

pub(super) fn subscribe<A: Adapter>(
    s: Arc<Socket<A>>,
    rt: Local<A>,
    request: RunRequest,
    ack: AckSender<A>,
) {
    tokio::spawn(async move {
        if !super::connected_soon(&s).await {
            return;
        }
        let Some(sequencer) = rt.sequencer.get().and_then(Weak::upgrade) else {
            return;
        };
        let RunRequest { run, start, .. } = request;
        let topic = Topic::run(run.clone());
        let join = Box::new(move |result: Result<Attached, _>| match result {
            Ok(attached) => joined(&s, &rt, run, attached, ack),
            Err(e) => {
                let why = format!("{e}");
                let reply = json!({ "error": why, "code": "UNAVAILABLE", "runId": run.as_ref(), "timestamp": Timestamp::now() });
                let _ = s.emit("error", &reply);
                let _ = ack.send(&json!({ "ok": false, "error": why, "code": "UNAVAILABLE" }));
            }
        });
        sequencer.attach(&topic, start, join).await;
    });
}

fn joined<A: Adapter>(
    s: &Arc<Socket<A>>,
    rt: &Local<A>,
    run: SessionId,
    attached: Attached,
    ack: AckSender<A>,
) {
    if !s.connected() {
        return;
    }
    let replayed = attached.events.len() + attached.caught_up.len();
    let mut reply = json!({
        "runId": run.as_ref(),
        "timestamp": Timestamp::now(),
        "seq": attached.seq,
        "epoch": attached.epoch,
    });
    if let Some(recovery) = attached.recovery {
        rt.metrics.resumed(recovery.lost, replayed);
        reply["recovered"] = recovery.lost.is_none().into();
        reply["replayed"] = replayed.into();
        if let Some(lost) = recovery.lost {
            reply["reason"] = json!(lost);
        }
    }
    let _ = s.emit("subscribed", &reply);
    let _ = ack.send(
        &json!({ "ok": true, "runId": run.as_ref(), "seq": attached.seq, "epoch": attached.epoch }),
    );
    let mut floor = attached.seq;
    for held in attached.events.iter().chain(&attached.caught_up) {
        floor = floor.max(held.seq);
        match socketio_payload(held.payload.get()) {
            Some(payload) => {
                let _ = s.emit(held.name, &*payload);
            }
            None => debug!(seq = held.seq, "a held run event is not a run frame"),
        }
    }
    rt.runs.add(run, s.clone(), floor);
}

pub(super) fn unsubscribe<A: Adapter>(
    s: &Socket<A>,
    rt: &Local<A>,
    run: &SessionId,
    ack: AckSender<A>,
) {
    let removed = rt.runs.remove(run, s.id);
    info!(socket = %s.id, run = %run, removed, "unsubscribed from run");
    let _ = s.emit(
        "unsubscribed",
        &json!({ "runId": run.as_ref(), "timestamp": Timestamp::now() }),
    );
    let _ = ack.send(&json!({ "ok": true, "runId": run.as_ref() }));
}
