"""Each transport of the stock python-socketio sync client: polling only,
websocket only, and the default (polling, upgraded to websocket)."""

import time

import pytest

from conftest import (
    TRANSPORTS, WAIT, assert_delivered, assert_iso8601, assert_subscribe_ack,
    assert_subscribed, new_session_id, progress_payload, sample,
)


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_connect_subscribe_receive(herald, connect, transport):
    c = connect(TRANSPORTS[transport], name=transport)
    assert c.sio.connected

    # The transport the client ended up on.
    expected = "polling" if transport == "polling" else "websocket"
    deadline = time.monotonic() + WAIT
    while c.sio.transport() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.sio.transport() == expected, (
        f"transports={TRANSPORTS[transport]!r}: expected to end on "
        f"{expected}, on {c.sio.transport()}")

    # `connected` carries the namespace sid of the 40 packet.
    hello = c.events.wait_for("connected")
    assert set(hello) == {"socketId", "timestamp"}, hello
    assert hello["socketId"] == c.sid, (
        f"connected.socketId {hello['socketId']!r} != client sid {c.sid!r}")
    assert isinstance(hello["socketId"], str) and hello["socketId"]
    assert_iso8601(hello["timestamp"], "connected.timestamp")
    assert c.events.count("connected") == 1

    # Subscribe without a callback: only the `subscribed` event answers.
    # (subscribe() asserts `subscribed`, the ack and the epoch GET reports.)
    s1 = new_session_id(transport)
    c.subscribe(s1, ack=False)
    # Subscribe with a callback: ack {ok: true, sessionId, seq, epoch} plus
    # `subscribed`.
    s2 = new_session_id(transport)
    c.subscribe(s2, ack=True)
    # The object form, with and without a callback.
    s3 = new_session_id(transport)
    c.subscribe(s3, payload={"sessionId": s3}, ack=True)
    s4 = new_session_id(transport)
    c.subscribe(s4, payload={"sessionId": s4}, ack=False)

    for sid in (s1, s2, s3, s4):
        assert herald.session(sid)["subscribers"] == 1

    sent = {}
    for i, sid in enumerate((s1, s2, s3, s4)):
        sent[sid] = progress_payload(10 * (i + 1))
        assert herald.publish(sid, "progress", sent[sid])["seq"] == 1
    for sid in (s1, s2, s3, s4):
        got = c.events.wait_for("progress", lambda d, sid=sid: d["sessionId"] == sid,
                                what=f"sessionId == {sid!r}")
        assert_delivered(got, sent[sid], sid, seq=1)
    assert c.events.count("progress") == 4

    # Every transport also carries the other event types.
    data = sample("completed")
    herald.publish(s2, "completed", data)
    got = c.events.wait_for("completed", lambda d: d["sessionId"] == s2)
    assert_delivered(got, data, s2, seq=2)
    assert c.sio.connected


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_acks_have_exactly_their_fields(herald, connect, transport):
    """subscribe: {ok, sessionId, seq, epoch}, the seq and epoch of the
    `subscribed` it follows; unsubscribe: {ok, sessionId}."""
    c = connect(TRANSPORTS[transport], name=transport)
    sid = new_session_id()
    ack = c.sio.call("subscribe", sid, timeout=WAIT)
    subscribed = c.events.wait_for("subscribed", lambda d: d["sessionId"] == sid)
    assert_subscribed(subscribed, sid, seq=0, epoch=herald.session(sid)["epoch"])
    assert_subscribe_ack(ack, sid, 0, subscribed["epoch"])
    assert set(ack) == {"ok", "sessionId", "seq", "epoch"}
    ack = c.sio.call("unsubscribe", {"sessionId": sid}, timeout=WAIT)
    assert ack == {"ok": True, "sessionId": sid}
    c.events.wait_for("unsubscribed", lambda d: d["sessionId"] == sid)


def test_callback_style_emit(herald, connect):
    """emit(..., callback=fn): the callback runs with the ack object."""
    import threading

    c = connect(["websocket"])
    sid = new_session_id()
    acks = []
    done = threading.Event()

    def on_ack(*args):
        acks.append(args)
        done.set()

    c.sio.emit("subscribe", sid, callback=on_ack)
    assert done.wait(WAIT), "subscribe callback was never called"
    subscribed = c.events.wait_for("subscribed", lambda d: d["sessionId"] == sid)
    epoch = herald.session(sid)["epoch"]
    assert_subscribed(subscribed, sid, seq=0, epoch=epoch)
    assert acks == [({"ok": True, "sessionId": sid, "seq": 0, "epoch": epoch},)]


def test_default_transport_upgrade_keeps_subscriptions(herald, connect):
    """Subscribe, then publish a burst: the upgraded connection delivers all
    of it, and the socket id is unchanged by the upgrade."""
    c = connect(None, name="default")
    hello = c.events.wait_for("connected")
    sid = new_session_id()
    c.subscribe(sid)
    assert c.sio.transport() == "websocket"
    for i in range(20):
        herald.publish(sid, "progress", progress_payload(i * 5))
    got = c.events.wait_for_count("progress", 20, lambda d: d["sessionId"] == sid)
    assert sorted(d["seq"] for d in got) == list(range(1, 21))
    assert [d["seq"] for d in c.wire.events("progress")] == list(range(1, 21))
    assert hello["socketId"] == c.sid
