"""Every session event type reaches a python-socketio subscriber with the
published fields unchanged plus sessionId, timestamp and seq."""

import pytest

from conftest import (
    EVENT_NAMES, WAIT, assert_delivered, build, fixture_cases,
    model_result_payload, new_session_id, progress_payload, sample,
    sample_payloads,
)


@pytest.mark.parametrize("transport", [["websocket"], ["polling"]],
                         ids=["websocket", "polling"])
def test_every_event_type_arrives_unchanged(herald, connect, transport):
    c = connect(transport)
    sid = new_session_id("types")
    epoch = c.subscribe(sid).epoch
    published = []
    for event in EVENT_NAMES:
        data = sample(event)
        reply = herald.publish(sid, event, data)
        published.append((event, data, reply["seq"]))
    assert [seq for _, _, seq in published] == [1, 2, 3, 4, 5]

    for event, data, seq in published:
        got = c.events.wait_for(event, lambda d: d["sessionId"] == sid and "seq" in d)
        assert_delivered(got, data, sid, seq=seq)

    # On the wire, in publish order.
    wire = [(e, d["seq"]) for e, d in c.wire.session_events(sid)]
    assert wire == [(e, s) for e, _, s in published]

    state = herald.session(sid)
    assert state["seq"] == 5
    assert state["epoch"] == epoch  # publishing keeps the epoch
    assert state["failed"] is True  # an `error` event was published
    assert state["completed"] is True
    assert state["subscribers"] == 1


def test_progress_numbers_keep_their_type(herald, connect):
    """`progress: 50` arrives as the int 50, 42.5 as a float, and so on."""
    c = connect(["websocket"])
    sid = new_session_id("numbers")
    c.subscribe(sid)
    cases = [
        progress_payload(50),
        progress_payload(0, status="ACTIVE"),
        progress_payload(42.5),
        progress_payload(100, status="COMPLETED", hasResult=True,
                         result={"n": 1, "f": 1.5, "big": 12345678901}),
    ]
    for data in cases:
        herald.publish(sid, "progress", data)
    got = c.events.wait_for_count("progress", len(cases),
                                  lambda d: d["sessionId"] == sid)
    by_seq = {d["seq"]: d for d in got}
    assert sorted(by_seq) == [1, 2, 3, 4]
    for seq, data in enumerate(cases, start=1):
        assert_delivered(by_seq[seq], data, sid, seq=seq)
    assert type(by_seq[1]["progress"]) is int and by_seq[1]["progress"] == 50
    assert type(by_seq[3]["progress"]) is float and by_seq[3]["progress"] == 42.5
    assert type(by_seq[1]["prompts"]["total"]) is int


def test_model_result_variants(herald, connect):
    c = connect(["websocket"])
    sid = new_session_id("models")
    c.subscribe(sid)
    cases = [
        {"modelName": "gpt-4o", "duration": 87.5, "result": "",
         "status": "failed", "error": "rate limited", "provider": "openai"},
        {"modelName": "mistral:7b", "duration": 0, "result": "partial",
         "status": "processing"},
        # null for an optional field means absent.
        {"modelName": "m", "duration": 3, "result": "r", "status": "completed",
         "error": None, "provider": None},
    ]
    for data in cases:
        herald.publish(sid, "model_result", data)
    got = {d["seq"]: d for d in c.events.wait_for_count(
        "model_result", 3, lambda d: d["sessionId"] == sid)}
    assert_delivered(got[1], cases[0], sid, seq=1)
    assert_delivered(got[2], cases[1], sid, seq=2)
    # Delivered without the nulled fields (a null that survives is accepted
    # too: both mean "absent").
    third = {k: v for k, v in got[3].items() if v is not None}
    assert_delivered(third, {k: v for k, v in cases[2].items() if v is not None},
                     sid, seq=3)


def test_seq_increments_by_one_per_session(herald, connect):
    c = connect(["websocket"])
    a, b = new_session_id("seqA"), new_session_id("seqB")
    c.subscribe(a)
    c.subscribe(b)
    seqs = {a: [], b: []}
    order = [a, a, b, a, b, b, b, a]
    for i, sid in enumerate(order):
        seqs[sid].append(herald.publish(sid, "model_result",
                                        model_result_payload(i))["seq"])
    assert seqs[a] == [1, 2, 3, 4]
    assert seqs[b] == [1, 2, 3, 4]
    for sid in (a, b):
        c.events.wait_for_count("model_result", 4, lambda d, s=sid: d["sessionId"] == s)
        wire = [d["seq"] for d in c.wire.events("model_result") if d["sessionId"] == sid]
        assert wire == [1, 2, 3, 4], f"{sid}: {wire}"
    assert herald.session(a)["seq"] == 4


def test_explicit_timestamp_and_matching_session_id_are_kept(herald, connect):
    c = connect(["websocket"])
    sid = new_session_id("envelope")
    c.subscribe(sid)
    data = {"error": "disk full", "timestamp": "2026-01-31T12:00:00.000Z",
            "sessionId": sid}
    herald.publish(sid, "error", data)
    got = c.events.wait_for("error", lambda d: d["sessionId"] == sid)
    assert got["timestamp"] == "2026-01-31T12:00:00.000Z"
    assert_delivered(got, data, sid, seq=1)


def test_batch_publish_is_delivered_in_order(herald, connect):
    c = connect(["websocket"])
    a, b = new_session_id("batchA"), new_session_id("batchB")
    c.subscribe(a)
    c.subscribe(b)
    payloads = sample_payloads()
    items = [
        {"sessionId": a, "event": "progress", "data": payloads["progress"]},
        {"sessionId": b, "event": "clarification", "data": payloads["clarification"]},
        {"sessionId": a, "event": "model_result", "data": payloads["model_result"]},
        {"sessionId": a, "event": "completed", "data": payloads["completed"]},
    ]
    body = herald.publish_batch(items)
    assert body == {"results": [
        {"sessionId": a, "event": "progress", "seq": 1},
        {"sessionId": b, "event": "clarification", "seq": 1},
        {"sessionId": a, "event": "model_result", "seq": 2},
        {"sessionId": a, "event": "completed", "seq": 3},
    ]}
    got = c.events.wait_for("completed", lambda d: d["sessionId"] == a)
    assert_delivered(got, payloads["completed"], a, seq=3)
    got = c.events.wait_for("clarification", lambda d: d["sessionId"] == b)
    assert_delivered(got, payloads["clarification"], b, seq=1)
    wire = [(e, d["sessionId"], d["seq"]) for e, d in c.wire.session_events()]
    assert wire == [(i["event"], i["sessionId"], r["seq"])
                    for i, r in zip(items, body["results"])]


def test_rejected_publish_delivers_nothing_and_takes_no_seq(herald, connect):
    c = connect(["websocket"])
    sid = new_session_id("reject")
    c.subscribe(sid)
    herald.publish(sid, "progress", progress_payload(10))
    # Every refused publish of tests/fixtures/events.json.
    refusals = fixture_cases("refusals.publish")
    assert any(c["body"]["event"] == "nope" for c in refusals if "body" in c)
    failures = []
    for case in refusals:
        r = herald.post_json(f"/api/v1/sessions/{sid}/events", build(case))
        body = r.json()
        ok = (r.status_code == case["status"]
              and isinstance(body.get("error"), str) and body["error"]
              and ("field" not in case or body.get("field") == case["field"]))
        if not ok:
            failures.append(f"{case['label']}: expected {case['status']} "
                            f"field {case.get('field')!r}, got "
                            f"{r.status_code} {r.text[:300]}")
    assert failures == [], "\n".join(failures)
    assert herald.session(sid)["seq"] == 1
    after = progress_payload(20)
    assert herald.publish(sid, "progress", after)["seq"] == 2
    got = c.events.wait_for("progress", lambda d: d["sessionId"] == sid and d["seq"] == 2)
    assert_delivered(got, after, sid, seq=2)
    # Exactly the two accepted events reached the subscriber.
    assert c.wire.seqs(sid) == [1, 2]
    assert sorted(d["seq"] for d in c.events.all("progress")) == [1, 2]
    assert c.events.count("nope") == 0
