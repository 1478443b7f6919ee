"""Fan-out: 50 stock sync clients subscribed to one session receive 50 events
each, complete, in publish order on the wire, without duplicates.

Two things about the stock python-socketio client shape these tests:

* The sync client runs every incoming event's handler in a thread of its own,
  so the order in which handlers run is not the order the server sent. Wire
  order is read with conftest.WireTap; the handler-level record is used for
  completeness and duplicates.
* python-engineio refuses a long-polling response holding more than 16
  packets (`Payload.max_decode_packets = 16`: "Unexpected packet from server",
  then a "transport error" disconnect). The Node reference server (socket.io
  4.8) sends a whole burst in one polling response too, and a python-socketio
  polling client loses it the same way there (checked by hand against
  socket.io 4.8.1). So bursts go to websocket / upgraded clients, and the
  polling fan-out publishes in steps small enough for that client;
  test_polling_burst_over_16_events records the limit itself.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import (
    QUIET, TRANSPORTS, assert_delivered, make_client, model_result_payload,
    new_session_id,
)

CLIENTS = 50
EVENTS = 50


def _open_clients(herald, sid, transports_cycle, opened):
    def open_one(i):
        kind = transports_cycle[i % len(transports_cycle)]
        c = make_client(herald.url, TRANSPORTS[kind], name=f"{kind}#{i}")
        opened.append(c)
        c.subscribe(sid, ack=bool(i % 2))
        return c

    with ThreadPoolExecutor(max_workers=10) as pool:
        return list(pool.map(open_one, range(CLIENTS)))


def _close_all(opened):
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda c: c.disconnect(), opened))


def _check_all(conns, sid, sent, deadline):
    for c in conns:
        c.events.wait_for_count("model_result", EVENTS,
                                timeout=max(0.1, deadline - time.monotonic()))
    time.sleep(QUIET)  # time for any duplicate to show up
    expected_seqs = list(range(1, EVENTS + 1))
    problems = []
    for c in conns:
        wire = [d["seq"] for d in c.wire.events("model_result")]
        handled = sorted(d["seq"] for d in c.events.all("model_result"))
        if wire != expected_seqs:
            problems.append(f"{c.events.name}: wire order {wire}")
        if handled != expected_seqs:
            problems.append(f"{c.events.name}: handled {handled}")
        if any(d["sessionId"] != sid for d in c.events.all("model_result")):
            problems.append(f"{c.events.name}: got another session's event")
        if c.events.count("__disconnect__"):
            problems.append(f"{c.events.name}: disconnected "
                            f"{c.events.all('__disconnect__')}")
    assert not problems, "\n".join(problems[:20])
    # Payloads intact (checked on a few clients).
    for c in conns[:4]:
        for d, data, seq in zip(c.wire.events("model_result"), sent, expected_seqs):
            assert_delivered(d, data, sid, seq=seq)


def test_fanout_50_clients_50_events_burst(herald):
    """Websocket and upgraded clients; the events go out as fast as the HTTP
    API takes them: half one request each, half in batches of 5 mixed with
    another session's events."""
    sid = new_session_id("fanout")
    other = new_session_id("fanout-other")
    opened = []
    try:
        conns = _open_clients(herald, sid, ["websocket", "default"], opened)
        assert all(c.sio.transport() == "websocket" for c in conns)
        assert herald.session(sid)["subscribers"] == CLIENTS

        sent = []
        for i in range(EVENTS // 2):
            data = model_result_payload(i)
            assert herald.publish(sid, "model_result", data)["seq"] == i + 1
            sent.append(data)
        for start in range(EVENTS // 2, EVENTS, 5):
            items = []
            for i in range(start, start + 5):
                data = model_result_payload(i)
                items.append({"sessionId": sid, "event": "model_result", "data": data})
                items.append({"sessionId": other, "event": "model_result",
                              "data": model_result_payload(1000 + i)})
                sent.append(data)
            results = herald.publish_batch(items)["results"]
            assert [r["seq"] for r in results if r["sessionId"] == sid] == \
                list(range(start + 1, start + 6))

        _check_all(conns, sid, sent, time.monotonic() + 30)
    finally:
        _close_all(opened)


def test_fanout_50_polling_clients_50_events_paced(herald):
    """Long-polling clients only; events go out in steps of 5, the next step
    once every client has the previous one (keeps each polling response well
    under python-engineio's 16-packet limit)."""
    sid = new_session_id("fanout-poll")
    opened = []
    try:
        conns = _open_clients(herald, sid, ["polling"], opened)
        assert all(c.sio.transport() == "polling" for c in conns)
        assert herald.session(sid)["subscribers"] == CLIENTS

        sent = []
        deadline = time.monotonic() + 40
        for start in range(0, EVENTS, 5):
            items = []
            for i in range(start, start + 5):
                data = model_result_payload(i)
                items.append({"sessionId": sid, "event": "model_result", "data": data})
                sent.append(data)
            herald.publish_batch(items)
            for c in conns:
                c.events.wait_for_count(
                    "model_result", start + 5,
                    timeout=max(0.1, deadline - time.monotonic()))

        _check_all(conns, sid, sent, deadline)
    finally:
        _close_all(opened)


def test_polling_burst_within_client_limit(herald, connect):
    """Bursts of 12 events to a polling client arrive whole and in order."""
    c = connect(["polling"])
    sid = new_session_id("poll-burst")
    c.subscribe(sid)
    seq = 0
    for burst in range(4):
        items = [{"sessionId": sid, "event": "model_result",
                  "data": model_result_payload(burst * 12 + i)} for i in range(12)]
        herald.publish_batch(items)
        seq += 12
        c.events.wait_for_count("model_result", seq)
    assert [d["seq"] for d in c.wire.events("model_result")] == list(range(1, 49))
    assert c.sio.connected


# python-engineio's polling client refuses a response of more than 16
# packets (Payload.max_decode_packets) and drops the connection: herald
# caps what one long-poll response carries (vendor/README.md, patch 13).
def test_polling_burst_over_16_events(herald, connect):
    c = connect(["polling"])
    sid = new_session_id("poll-burst-big")
    c.subscribe(sid)
    time.sleep(0.2)  # let the client's next long-poll GET be pending
    herald.publish_batch([{"sessionId": sid, "event": "model_result",
                           "data": model_result_payload(i)} for i in range(30)])
    c.events.wait_for_count("model_result", 30, timeout=3)
    assert [d["seq"] for d in c.wire.events("model_result")] == list(range(1, 31))
    assert c.sio.connected
