"""History, snapshot and resume (PROTOCOL.md section 4) with the stock
python-socketio client, on one herald (memory adapter) and on two heralds
sharing a real redis-server:

* a client whose transport is cut while 200 events are published resumes
  with `since` and `epoch` and ends with every event exactly once, in order;
* a late subscriber gets the snapshot of a running, a completed and a failed
  session, exactly as first delivered;
* a resume after Redis lost its data (restarted without persistence) is told
  `recovered: false, reason: "epoch_changed"`, and one past what history
  holds `history_truncated`.

The sync client runs handlers in threads of their own, so order is read off
the wire (conftest.WireTap); the handler-level record counts duplicates.
"""

import threading
import time

import pytest
import requests
import socketio

from conftest import (
    QUIET, WAIT, assert_delivered, make_client, model_result_payload,
    new_session_id, progress_payload, sample, wait_ready,
)

TOTAL = 200
CUT_AFTER = 40   # events the client has when its transport is cut
MISSED = 20      # events published while it is cut off, at least
GATE = 150       # the publisher waits here until the resume is sent...
LIVE = 175       # ...and here until it took effect: later events are live


def wait_until(cond, timeout=WAIT, what="condition", interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}",
                        pytrace=False)
        time.sleep(interval)


class Publisher(threading.Thread):
    """Publishes model_result 1..TOTAL to a session over `heralds` in turn
    (a requests session of its own), pausing before GATE until `gate` is set
    and before LIVE until `live` is."""

    def __init__(self, heralds, session_id):
        super().__init__(daemon=True)
        self.urls = [h.url for h in heralds]
        self.session_id = session_id
        self.gate = threading.Event()
        self.live = threading.Event()
        self.published = 0
        self.error = None

    def run(self):
        try:
            with requests.Session() as http:
                for i in range(1, TOTAL + 1):
                    if i == GATE and not self.gate.wait(30):
                        raise RuntimeError("the resume was never sent")
                    if i == LIVE and not self.live.wait(30):
                        raise RuntimeError("the resume never took effect")
                    url = self.urls[i % len(self.urls)]
                    r = http.post(
                        f"{url}/api/v1/sessions/{self.session_id}/events",
                        json={"event": "model_result",
                              "data": model_result_payload(i)},
                        timeout=WAIT)
                    if r.status_code != 202 or r.json().get("seq") != i:
                        raise RuntimeError(
                            f"publish #{i} on {url}: {r.status_code} {r.text[:200]}")
                    self.published = i
                    time.sleep(0.002)
        except Exception as e:  # reported by the test
            self.error = e

    def finish(self):
        self.gate.set()
        self.live.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the publisher did not finish"
        assert self.error is None, f"publisher: {self.error}"


def cut_while_publishing(first, publishers, resumer, reconnect):
    """The scenario: subscribe on `first`, publish TOTAL events over
    `publishers`, cut the client's transport after CUT_AFTER, let MISSED go
    by, resume on the connection `resumer(conn, old_sid)` returns (with the
    herald it is on), check every event arrived exactly once, in order."""
    sid = new_session_id("resume")
    clients = []
    publisher = Publisher(publishers, sid)
    try:
        c = make_client(first.url, ["websocket"], name="cut", herald=first,
                        reconnection=reconnect, reconnection_delay=0.1,
                        reconnection_delay_max=0.2, randomization_factor=0)
        clients.append(c)
        epoch = c.subscribe(sid).epoch
        publisher.start()

        c.events.wait_for_count("model_result", CUT_AFTER,
                                lambda d: d["sessionId"] == sid, timeout=10)
        old_sid = c.sid
        c.cut()
        gone = c.events.wait_for("__disconnect__")
        assert gone == [c.sio.reason.TRANSPORT_ERROR], (
            f"the cut was seen as {gone!r}")
        before = c.wire.seqs(sid)
        since = len(before)
        assert before == list(range(1, since + 1)), before
        assert since < GATE - MISSED, f"the cut came late (after {since})"

        # herald saw the connection drop; events go on without the client.
        wait_until(lambda: first.session(sid)["subscribers"] == 0,
                   what="herald to drop the cut socket")
        wait_until(lambda: publisher.published >= since + MISSED, timeout=10,
                   what=f"{MISSED} publishes while the client is cut off")

        again, there = resumer(c, old_sid)
        if again is not c:
            clients.append(again)
        publisher.gate.set()  # the publishes from GATE on race the resume
        r = again.subscribe(sid, payload={"sessionId": sid, "since": since,
                                          "epoch": epoch},
                            seq=None, epoch=epoch, resume={"recovered": True})
        publisher.live.set()  # the publishes from LIVE on follow it
        assert r.event["replayed"] >= MISSED, r.event
        assert r.seq < LIVE, r.event
        publisher.finish()

        conns = [c] if again is c else [c, again]

        def total():
            return sum(len(x.wire.seqs(sid)) for x in conns)

        wait_until(lambda: total() >= TOTAL, timeout=15,
                   what=f"all {TOTAL} events across the cut")
        time.sleep(QUIET)  # a duplicate would show up by now

        # On the wire: every event exactly once, in order, as published.
        wire = [e for x in conns for e in x.wire.session_events(sid)]
        assert [d["seq"] for _, d in wire] == list(range(1, TOTAL + 1))
        for event, d in wire:
            assert event == "model_result"
            assert_delivered(d, model_result_payload(d["seq"]), sid, seq=d["seq"])
        # And to the handlers: each once.
        handled = sorted(d["seq"] for x in conns
                         for d in x.events.all("model_result"))
        assert handled == list(range(1, TOTAL + 1))

        state = there.session(sid)
        assert state["seq"] == TOTAL and state["epoch"] == epoch, state
        assert again.sid != old_sid
        return {"since": since, "resumed_at": r.seq,
                "replayed": r.event["replayed"]}
    finally:
        publisher.gate.set()
        publisher.live.set()
        for x in clients:
            x.disconnect()


def test_cut_transport_resume_on_the_same_instance(herald):
    """The client reconnects by itself (python-socketio's reconnection) and
    resumes on its new connection to the same herald."""

    def same_client(c, old_sid):
        wait_until(lambda: c.sio.connected and c.sid not in (None, old_sid),
                   timeout=10, what="the client to reconnect by itself")
        return c, herald

    got = cut_while_publishing(herald, [herald], same_client, reconnect=True)
    print(f"one instance: {got}")


def test_cut_transport_resume_on_another_instance(cluster):
    """Cut on A while A and B publish in turn; a new client on B resumes
    from what A's client last saw."""

    def client_on_b(c, old_sid):
        return make_client(cluster.b.url, ["websocket"], name="resumed",
                           herald=cluster.b), cluster.b

    got = cut_while_publishing(cluster.a, [cluster.a, cluster.b], client_on_b,
                               reconnect=False)
    print(f"two instances: {got}")


# --------------------------------------------------------------------------
# snapshot
# --------------------------------------------------------------------------

# name -> what is published (event, data), and the indexes (0-based) of the
# events the snapshot holds: the latest progress, then the event that ended
# the session (completed, or a published error), in seq order.
SESSIONS = {
    "running": ([("progress", progress_payload(10)),
                 ("model_result", model_result_payload(1)),
                 ("progress", progress_payload(40)),
                 ("clarification", sample("clarification"))], [2]),
    "completed": ([("progress", progress_payload(10)),
                   ("model_result", model_result_payload(1)),
                   ("progress", progress_payload(100, status="COMPLETED")),
                   ("completed", sample("completed"))], [2, 3]),
    "failed": ([("progress", progress_payload(30)),
                ("model_result", model_result_payload(2) | {"status": "failed"}),
                ("error", sample("error"))], [0, 2]),
    "no progress": ([("model_result", model_result_payload(1)),
                     ("clarification", sample("clarification"))], []),
}


@pytest.mark.parametrize("where", ["one instance", "two instances"])
@pytest.mark.parametrize("kind", list(SESSIONS))
def test_late_subscriber_gets_the_snapshot(request, where, kind):
    """A subscriber that comes after the events gets the latest progress and
    the final event, exactly as first delivered (original seq and
    timestamp), then live events; on two instances, published on A and
    subscribed to on B."""
    if where == "one instance":
        on = request.getfixturevalue("herald")
        publish_on = subscribe_on = on
    else:
        cl = request.getfixturevalue("cluster")
        publish_on, subscribe_on = cl.a, cl.b
    events, snap = SESSIONS[kind]
    sid = new_session_id(f"snap-{kind.replace(' ', '-')}")
    early = make_client(publish_on.url, ["websocket"], name="early", herald=publish_on)
    late = None
    try:
        epoch = early.subscribe(sid).epoch
        for event, data in events:
            publish_on.publish(sid, event, data)
        wait_until(lambda: len(early.wire.session_events(sid)) == len(events),
                   what="the early subscriber to get every event")
        first = early.wire.session_events(sid)
        for (event, data), (got_event, got) in zip(events, first):
            assert got_event == event
            assert_delivered(got, data, sid)
        time.sleep(0.05)  # a restamped event would show another timestamp

        late = make_client(subscribe_on.url, ["websocket"], name="late",
                           herald=subscribe_on)
        r = late.subscribe(sid, seq=len(events), epoch=epoch,
                           snapshot=[first[i] for i in snap])
        assert [d["seq"] for _, d in r.held] == [i + 1 for i in snap]

        # Then live, after the snapshot; the early subscriber gets no snapshot.
        data = model_result_payload(99)
        publish_on.publish(sid, "model_result", data)
        got = late.events.wait_for("model_result", lambda d: d["seq"] == len(events) + 1)
        assert_delivered(got, data, sid, seq=len(events) + 1)
        assert late.wire.seqs(sid) == [i + 1 for i in snap] + [len(events) + 1]
        wait_until(lambda: len(early.wire.seqs(sid)) == len(events) + 1,
                   what="the early subscriber to get the live event")
        time.sleep(QUIET)
        assert early.wire.seqs(sid) == list(range(1, len(events) + 2))
        assert late.wire.seqs(sid) == [i + 1 for i in snap] + [len(events) + 1]
    finally:
        early.disconnect()
        if late is not None:
            late.disconnect()


def test_subscribe_helper_fails_on_wrong_expectations(herald, connect):
    """Conn.subscribe() is what holds the other tests to the contract: it
    must fail on a wrong seq, epoch, snapshot or resume."""
    early = connect(["websocket"], name="early")
    late = connect(["websocket"], name="late")
    sid = new_session_id("helper")
    epoch = early.subscribe(sid).epoch
    herald.publish(sid, "progress", progress_payload(5))
    herald.publish(sid, "model_result", model_result_payload(1))
    wait_until(lambda: len(early.wire.session_events(sid)) == 2, what="2 events")
    progress, result = early.wire.session_events(sid)
    restamped = ("progress", progress[1] | {"timestamp": "2000-01-01T00:00:00.000Z"})
    wrong = [
        dict(),                                    # seq 0, no snapshot
        dict(seq=2),                               # the snapshot not stated
        dict(seq=2, snapshot=[restamped]),         # not as first delivered
        dict(seq=2, snapshot=[progress, result]),  # not in a snapshot
        dict(seq=2, snapshot=[progress], epoch="ffffffffffff"),
        dict(seq=2, payload={"sessionId": sid, "since": 1, "epoch": epoch},
             resume={"recovered": False, "reason": "epoch_changed"}),
        dict(seq=2, payload={"sessionId": sid, "since": 1, "epoch": epoch},
             resume={"recovered": True}, replay=[progress]),
    ]
    for kwargs in wrong:
        with pytest.raises(AssertionError):
            late.subscribe(sid, **kwargs)
    late.subscribe(sid, seq=2, epoch=epoch, snapshot=[progress])
    late.subscribe(sid, payload={"sessionId": sid, "since": 1, "epoch": epoch},
                   seq=2, epoch=epoch, resume={"recovered": True, "replayed": 1},
                   replay=[result])


# --------------------------------------------------------------------------
# incomplete resumes
# --------------------------------------------------------------------------

def test_epoch_changed_after_redis_restarted_without_persistence(new_cluster):
    """Redis loses its data: the session's seq starts again at 1 in a new
    epoch. A client resuming with the old epoch is told epoch_changed and
    gets the whole held history of the new epoch; so is one whose `since` is
    past the new sequence's seq."""
    cl = new_cluster()
    sid = new_session_id("epoch")
    watcher = make_client(cl.a.url, ["websocket"], name="watcher", herald=cl.a)
    clients = [watcher]
    try:
        old_epoch = watcher.subscribe(sid).epoch
        for i in range(5):
            (cl.a if i % 2 else cl.b).publish(sid, "model_result", model_result_payload(i))
        wait_until(lambda: watcher.wire.seqs(sid) == [1, 2, 3, 4, 5],
                   what="seq 1..5 before the restart")

        cl.redis.kill()
        for h in (cl.a, cl.b):
            wait_until(lambda h=h: h.http.get(h.url + "/ready", timeout=2).status_code == 503,
                       timeout=10, what=f"{h.url} to notice Redis is gone")
        cl.redis.start()
        for h in (cl.a, cl.b):
            wait_ready(h)

        # The new sequence: seq 1..8 again, in a new epoch, on both instances.
        for i in range(8):
            r = (cl.b if i % 2 else cl.a).publish(sid, "progress", progress_payload(i * 10))
            assert r["seq"] == i + 1, r
        new_epoch = cl.a.session(sid)["epoch"]
        assert new_epoch != old_epoch
        assert cl.b.session(sid)["epoch"] == new_epoch
        # The watcher stayed subscribed and saw the sequence start again.
        wait_until(lambda: len(watcher.wire.seqs(sid)) == 13,
                   what="the 8 events after the restart")
        assert watcher.wire.seqs(sid) == [1, 2, 3, 4, 5] + list(range(1, 9))
        new_events = watcher.wire.session_events(sid)[5:]

        # Resuming with the old epoch, since 5: the seq exists in the new
        # sequence, but it is another sequence.
        for name, h in (("on A", cl.a), ("on B", cl.b)):
            c = make_client(h.url, ["websocket"], name=f"resume {name}", herald=h)
            clients.append(c)
            r = c.subscribe(sid, payload={"sessionId": sid, "since": 5,
                                          "epoch": old_epoch},
                            seq=8, epoch=new_epoch,
                            resume={"recovered": False, "reason": "epoch_changed",
                                    "replayed": 8},
                            replay=new_events)
            assert r.event["epoch"] != old_epoch
        # Without an epoch, a since the sequence never reached says the same.
        c = make_client(cl.b.url, ["websocket"], name="resume past", herald=cl.b)
        clients.append(c)
        c.subscribe(sid, payload={"sessionId": sid, "since": 12},
                    seq=8, epoch=new_epoch,
                    resume={"recovered": False, "reason": "epoch_changed",
                            "replayed": 8},
                    replay=new_events)
        # With the new epoch, the same resume is complete.
        c.subscribe(sid, payload={"sessionId": sid, "since": 5, "epoch": new_epoch},
                    seq=8, epoch=new_epoch,
                    resume={"recovered": True, "replayed": 3},
                    replay=new_events[5:])
    finally:
        for x in clients:
            x.disconnect()


def test_history_truncated(new_herald):
    """With history capped at 10 events, a resume from before what is held
    is told history_truncated and gets what is held after `since`; one from
    within it is complete."""
    h = new_herald("--history-max-events", "10")
    watcher = make_client(h.url, ["websocket"], name="watcher", herald=h)
    late = make_client(h.url, ["websocket"], name="late", herald=h)
    try:
        sid = new_session_id("truncated")
        epoch = watcher.subscribe(sid).epoch
        for i in range(25):
            h.publish(sid, "model_result", model_result_payload(i))
        wait_until(lambda: len(watcher.wire.seqs(sid)) == 25, what="25 events")
        first = watcher.wire.session_events(sid)
        late.subscribe(sid, payload={"sessionId": sid, "since": 5, "epoch": epoch},
                       seq=25, epoch=epoch,
                       resume={"recovered": False, "reason": "history_truncated",
                               "replayed": 10},
                       replay=first[15:])
        late.subscribe(sid, payload={"sessionId": sid, "since": 15, "epoch": epoch},
                       seq=25, epoch=epoch,
                       resume={"recovered": True, "replayed": 10},
                       replay=first[15:])
    finally:
        watcher.disconnect()
        late.disconnect()


# A replay longer than python-engineio's 16-packet limit per polling
# response reaches a polling client over several polls (patch 13).
def test_polling_client_resumes_more_than_16_events(herald, connect):
    watcher = connect(["websocket"], name="watcher")
    sid = new_session_id("poll-resume")
    epoch = watcher.subscribe(sid).epoch
    herald.publish_batch([{"sessionId": sid, "event": "model_result",
                           "data": model_result_payload(i)} for i in range(30)])
    wait_until(lambda: len(watcher.wire.seqs(sid)) == 30, what="30 events")
    c = connect(["polling"], name="polling")
    c.subscribe(sid, payload={"sessionId": sid, "since": 0, "epoch": epoch},
                seq=30, epoch=epoch, resume={"recovered": True, "replayed": 30},
                replay=watcher.wire.session_events(sid))
    assert c.sio.connected
