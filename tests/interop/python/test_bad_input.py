"""Bad subscribe/unsubscribe payloads over Socket.IO: each class gets an
`error` event {error, code: INVALID_SESSION_ID, timestamp} (and, when the
client asked for an ack, {ok: false, error, code}); nothing is published or
sequenced, no membership changes, and the same socket keeps working."""

import pytest

from conftest import (
    QUIET, WAIT, assert_delivered, assert_iso8601, assert_refusal_ack,
    fixture_cases, model_result_payload, new_session_id, progress_payload,
)

# tests/fixtures/events.json: label -> the Socket.IO arguments after the
# event name ([] sends none, [None] one JSON null).
BAD_PAYLOADS = {c["label"]: c["args"]
                for c in fixture_cases("sessionIds.invalid")}
VALID_IDS = {c["label"]: c["id"] for c in fixture_cases("sessionIds.valid")}


def _send(conn, event, args, ack):
    """Emits the bad payload; returns the ack when one was asked for."""
    sio = conn.sio
    # python-socketio sends a tuple as that many arguments: () none at all,
    # (None,) one JSON null.
    data = tuple(args)
    if ack:
        return sio.call(event, data, timeout=WAIT)
    sio.emit(event, data)
    return None


def _request_errors(conn):
    return conn.events.all("error", lambda d: "code" in d)


@pytest.mark.parametrize("ack", [False, True], ids=["no-ack", "ack"])
@pytest.mark.parametrize("event", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize("case", list(BAD_PAYLOADS))
def test_bad_payload_is_refused_and_socket_stays_usable(herald, connect,
                                                        case, event, ack):
    c = connect(["websocket"], name=f"{event}-{case}")
    control = new_session_id("control")
    c.subscribe(control)
    herald.publish(control, "progress", progress_payload(1))
    c.events.wait_for("progress", lambda d: d["sessionId"] == control)
    published_before = herald.stats()["eventsPublished"]

    answer = _send(c, event, BAD_PAYLOADS[case], ack)

    err = c.events.wait_for("error", lambda d: "code" in d,
                            what="a request error (with `code`)")
    assert set(err) == {"error", "code", "timestamp"}, (
        f"request error should be {{error, code, timestamp}}, got {err!r}")
    assert err["code"] == "INVALID_SESSION_ID"
    assert isinstance(err["error"], str) and err["error"].strip(), err
    assert_iso8601(err["timestamp"], "error.timestamp")
    if ack:
        assert_refusal_ack(answer, "INVALID_SESSION_ID")

    # No reply of the success kind, no membership change, nothing published.
    reply = "subscribed" if event == "subscribe" else "unsubscribed"
    assert c.events.all(reply, lambda d: d["sessionId"] != control) == []
    state = herald.session(control)
    assert state["seq"] == 1 and state["subscribers"] == 1, state
    assert herald.stats()["eventsPublished"] == published_before
    assert c.sio.connected

    # The same socket still subscribes and receives, on both sessions.
    fresh = new_session_id("after")
    c.subscribe(fresh, ack=not ack)
    data = model_result_payload(7)
    assert herald.publish(fresh, "model_result", data)["seq"] == 1
    assert_delivered(c.events.wait_for("model_result",
                                       lambda d: d["sessionId"] == fresh),
                     data, fresh, seq=1)
    later = progress_payload(2)
    assert herald.publish(control, "progress", later)["seq"] == 2
    assert_delivered(c.events.wait_for("progress", lambda d: d["seq"] == 2),
                     later, control, seq=2)

    # Exactly one refusal was sent (everything the server sent before the
    # last delivery has been read off the connection by now).
    wire_errors = [d for e, d in c.wire.pairs() if e == "error"]
    assert len(wire_errors) == 1, wire_errors
    assert len(_request_errors(c)) == 1
    assert c.events.count("__disconnect__") == 0


@pytest.mark.parametrize("transport", [["polling"], None], ids=["polling", "default"])
def test_bad_payloads_in_a_row_on_other_transports(herald, connect, transport):
    """All classes one after another on one polling / upgraded socket."""
    c = connect(transport)
    n = 0
    for case, payload in BAD_PAYLOADS.items():
        for event in ("subscribe", "unsubscribe"):
            for ack in (False, True):
                answer = _send(c, event, payload, ack)
                n += 1
                if ack:
                    assert_refusal_ack(answer, "INVALID_SESSION_ID")
                errs = c.events.wait_for_count("error", n, lambda d: "code" in d,
                                               what=f"after {case} ({event})")
                assert all(e["code"] == "INVALID_SESSION_ID" for e in errs)
    assert c.sio.connected
    sid = new_session_id("row")
    c.subscribe(sid)
    data = progress_payload(50)
    herald.publish(sid, "progress", data)
    assert_delivered(c.events.wait_for("progress"), data, sid, seq=1)
    assert len(_request_errors(c)) == n


@pytest.mark.parametrize("label", list(VALID_IDS))
def test_boundary_ids_are_accepted(herald, connect, label):
    session_id = VALID_IDS[label]
    c = connect(["websocket"])
    # No other test of this run uses these ids: nothing was published to it
    # (so subscribe() can expect seq 0 and no snapshot).
    assert herald.session(session_id)["seq"] == 0
    c.subscribe(session_id)
    data = progress_payload(3)
    seq = herald.publish(session_id, "progress", data)["seq"]
    assert seq == 1
    assert_delivered(c.events.wait_for("progress"), data, session_id, seq=seq)
    assert _request_errors(c) == []


def test_unknown_client_events_are_ignored(herald, connect):
    c = connect(["websocket"])
    c.sio.emit("subscrbe", "typo-session")
    c.sio.emit("publish", {"sessionId": "x", "event": "progress"})
    c.sio.emit("hello")
    sid = new_session_id("unknown")
    c.subscribe(sid)
    c.events.assert_none("error", within=QUIET)
    assert herald.session("typo-session")["subscribers"] == 0
    data = progress_payload(9)
    herald.publish(sid, "progress", data)
    assert_delivered(c.events.wait_for("progress"), data, sid, seq=1)
    assert c.sio.connected
