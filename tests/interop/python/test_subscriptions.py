"""Room membership as python-socketio clients see it: unsubscribe, isolation
between sessions, several sessions on one socket, repeated subscribes."""

import time

import pytest

from conftest import (
    QUIET, TRANSPORTS, assert_delivered, model_result_payload, new_session_id,
    progress_payload, sample,
)


@pytest.mark.parametrize("ack", [True, False], ids=["ack", "no-ack"])
@pytest.mark.parametrize("form", ["string", "object"])
def test_unsubscribe_stops_delivery(herald, connect, ack, form):
    leaver = connect(["websocket"], name="leaver")
    control = connect(["polling"], name="control")
    sid = new_session_id("unsub")
    leaver.subscribe(sid)
    control.subscribe(sid)
    assert herald.session(sid)["subscribers"] == 2

    for i in range(3):
        herald.publish(sid, "model_result", model_result_payload(i))
    for c in (leaver, control):
        c.events.wait_for_count("model_result", 3, lambda d: d["sessionId"] == sid)

    leaver.unsubscribe(sid, payload=sid if form == "string" else {"sessionId": sid},
                       ack=ack)
    assert herald.session(sid)["subscribers"] == 1

    for i in range(3, 6):
        herald.publish(sid, "model_result", model_result_payload(i))
    herald.publish(sid, "completed", sample("completed"))
    # The control subscriber gets all of it...
    got = control.events.wait_for_count("model_result", 6, lambda d: d["sessionId"] == sid)
    assert sorted(d["seq"] for d in got) == [1, 2, 3, 4, 5, 6]
    control.events.wait_for("completed", lambda d: d["sessionId"] == sid)
    # ...and the one that left gets nothing more.
    leaver.events.assert_none("model_result", lambda d: d["seq"] > 3,
                              what="after unsubscribing ")
    leaver.events.assert_none("completed", within=0)
    assert sorted(d["seq"] for d in leaver.events.all("model_result")) == [1, 2, 3]
    assert leaver.sio.connected


def test_unsubscribe_then_resubscribe(herald, connect):
    c = connect(["websocket"])
    watcher = connect(["websocket"], name="watcher")
    sid = new_session_id("resub")
    first = c.subscribe(sid)
    watcher.subscribe(sid, epoch=first.epoch)
    c.unsubscribe(sid)
    missed = progress_payload(10)
    herald.publish(sid, "progress", missed)                        # seq 1
    seen = watcher.events.wait_for("progress", lambda d: d["sessionId"] == sid)
    assert_delivered(seen, missed, sid, seq=1)
    # Not delivered live to a socket that left...
    c.events.assert_none("progress", lambda d: d["sessionId"] == sid)
    # ...but subscribing again brings it as the snapshot: seq 1, exactly as
    # the watcher first got it (same timestamp), in the same epoch.
    again = c.subscribe(sid, seq=1, epoch=first.epoch,
                        snapshot=[("progress", seen)])
    assert again.held == [("progress", seen)]
    data = progress_payload(20)
    herald.publish(sid, "progress", data)                          # seq 2: live
    got = c.events.wait_for("progress", lambda d: d["sessionId"] == sid
                            and d["seq"] == 2)
    assert_delivered(got, data, sid, seq=2)
    assert c.wire.seqs(sid) == [1, 2]
    assert sorted(d["seq"] for d in c.events.all("progress")) == [1, 2]


def test_unsubscribe_from_a_session_never_joined(herald, connect):
    """Like a Socket.IO room leave: answered as a success, changes nothing."""
    c = connect(["websocket"])
    joined, other = new_session_id("joined"), new_session_id("never")
    c.subscribe(joined)
    c.unsubscribe(other, ack=True)
    c.unsubscribe(other, ack=False)
    assert herald.session(joined)["subscribers"] == 1
    assert herald.session(other)["subscribers"] == 0
    herald.publish(joined, "progress", progress_payload(5))
    c.events.wait_for("progress", lambda d: d["sessionId"] == joined)


def test_isolation_between_two_sessions(herald, connect):
    a_client = connect(["websocket"], name="A")
    b_client = connect(None, name="B")
    a, b = new_session_id("isoA"), new_session_id("isoB")
    a_client.subscribe(a)
    b_client.subscribe(b)
    for i in range(5):
        herald.publish(a, "model_result", model_result_payload(i))
        herald.publish(b, "progress", progress_payload(i * 10))
    a_got = a_client.events.wait_for_count("model_result", 5)
    b_got = b_client.events.wait_for_count("progress", 5)
    assert all(d["sessionId"] == a for d in a_got)
    assert all(d["sessionId"] == b for d in b_got)
    a_client.events.assert_none("progress", within=0.2)
    b_client.events.assert_none("model_result", within=0)
    # Each side saw exactly its own session, 1..5.
    assert [d["seq"] for d in a_client.wire.events("model_result")] == [1, 2, 3, 4, 5]
    assert [d["seq"] for d in b_client.wire.events("progress")] == [1, 2, 3, 4, 5]
    # A session id that equals the other client's socket id is just a session:
    # publishing to it reaches no socket (rooms cannot collide with socket ids).
    herald.publish(b_client.sid, "error", {"error": "must not reach B"})
    b_client.events.assert_none("error", lambda d: "seq" in d)
    a_client.events.assert_none("error", within=0)


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_several_sessions_on_one_socket(herald, connect, transport):
    c = connect(TRANSPORTS[transport])
    sessions = [new_session_id(f"multi{i}") for i in range(4)]
    for i, sid in enumerate(sessions):
        if i % 2:
            c.subscribe(sid, payload={"sessionId": sid})
        else:
            c.subscribe(sid)
    not_mine = new_session_id("notmine")
    sent = {sid: [] for sid in sessions}
    for round_ in range(5):
        for sid in sessions:
            data = model_result_payload(round_) | {"result": f"{sid}/{round_}"}
            herald.publish(sid, "model_result", data)
            sent[sid].append(data)
        herald.publish(not_mine, "progress", progress_payload(round_))
        # One round at a time: keeps a polling response far below
        # python-engineio's 16-packet limit (see test_fanout.py).
        c.events.wait_for_count("model_result", 4 * (round_ + 1))
    got = c.events.wait_for_count("model_result", 20)
    for sid in sessions:
        mine = sorted((d for d in got if d["sessionId"] == sid), key=lambda d: d["seq"])
        assert [d["seq"] for d in mine] == [1, 2, 3, 4, 5], sid
        for d, data in zip(mine, sent[sid]):
            assert_delivered(d, data, sid)
        assert [d["seq"] for d in c.wire.events("model_result")
                if d["sessionId"] == sid] == [1, 2, 3, 4, 5]
    c.events.assert_none("progress")
    assert c.events.count("model_result") == 20

    # Leaving one session leaves the others.
    c.unsubscribe(sessions[0])
    for sid in sessions:
        herald.publish(sid, "completed", sample("completed"))
    for sid in sessions[1:]:
        c.events.wait_for("completed", lambda d, s=sid: d["sessionId"] == s)
    c.events.assert_none("completed", lambda d: d["sessionId"] == sessions[0])


def test_repeated_subscribe_delivers_once(herald, connect):
    c = connect(["websocket"])
    sid = new_session_id("twice")
    epoch = c.subscribe(sid).epoch
    c.subscribe(sid, ack=False, epoch=epoch)
    c.subscribe(sid, payload={"sessionId": sid}, epoch=epoch)
    assert herald.session(sid)["subscribers"] == 1
    for i in range(3):
        herald.publish(sid, "progress", progress_payload(i))
    c.events.wait_for_count("progress", 3)
    time.sleep(QUIET)  # time for a duplicate to show up
    assert sorted(d["seq"] for d in c.events.all("progress")) == [1, 2, 3]
    # One unsubscribe is enough to leave.
    c.unsubscribe(sid)
    assert herald.session(sid)["subscribers"] == 0


def test_subscribe_with_since_is_accepted(herald, connect):
    """`{sessionId, since}` is a valid subscribe payload (spec section 1):
    on a session with nothing yet, a complete resume with nothing to replay."""
    c = connect(["websocket"])
    sid = new_session_id("since")
    c.subscribe(sid, payload={"sessionId": sid, "since": 0},
                resume={"recovered": True, "replayed": 0})
    data = progress_payload(1)
    herald.publish(sid, "progress", data)
    assert_delivered(c.events.wait_for("progress"), data, sid, seq=1)


def test_subscribe_with_since_replays_what_came_after(herald, connect):
    """A resume replays every held event after `since`, exactly as first
    delivered, then live events (PROTOCOL.md section 4)."""
    watcher = connect(["websocket"], name="watcher")
    late = connect(["websocket"], name="late")
    sid = new_session_id("since-replay")
    epoch = watcher.subscribe(sid).epoch
    for i in range(4):
        herald.publish(sid, "model_result", model_result_payload(i))
    watcher.events.wait_for_count("model_result", 4, lambda d: d["sessionId"] == sid)
    first = watcher.wire.session_events(sid)
    assert [d["seq"] for _, d in first] == [1, 2, 3, 4]
    r = late.subscribe(sid, payload={"sessionId": sid, "since": 1, "epoch": epoch},
                       seq=4, epoch=epoch,
                       resume={"recovered": True, "replayed": 3},
                       replay=first[1:])
    assert [d["seq"] for _, d in r.held] == [2, 3, 4]
    herald.publish(sid, "completed", sample("completed"))
    late.events.wait_for("completed", lambda d: d["seq"] == 5)
    assert late.wire.seqs(sid) == [2, 3, 4, 5]


def test_disconnect_removes_subscriptions(herald, connect):
    c = connect(["websocket"])
    sid = new_session_id("bye")
    c.subscribe(sid)
    assert herald.session(sid)["subscribers"] == 1
    c.sio.disconnect()
    deadline = time.monotonic() + 5
    while herald.session(sid)["subscribers"] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert herald.session(sid)["subscribers"] == 0
