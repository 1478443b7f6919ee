"""The stock socketio.AsyncClient (aiohttp underneath) against herald.

The async client calls a plain-function handler inline, in the order the
packets were read, so here the handler order itself is checked."""

import asyncio
import json

import aiohttp
import pytest
import socketio

from conftest import (
    EVENT_NAMES, SOCKETIO_PATH, TRANSPORTS, WAIT, assert_delivered,
    assert_iso8601, assert_refusal_ack, assert_subscribe_ack, assert_subscribed,
    is_session_event, model_result_payload, new_session_id, sample,
)


class AsyncCollector:
    def __init__(self, name):
        self.name = name
        self.items = []
        self._changed = asyncio.Event()

    def __call__(self, event, *args):  # catch-all, runs inline
        self.items.append((event, args[0] if len(args) == 1 else list(args)))
        self._changed.set()

    def all(self, event, predicate=lambda d: True):
        out = []
        for e, d in self.items:
            try:
                if e == event and predicate(d):
                    out.append(d)
            except (KeyError, TypeError):
                pass
        return out

    async def wait_for_count(self, event, n, predicate=lambda d: True,
                             timeout=WAIT):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = self.all(event, predicate)
            if len(found) >= n:
                return found
            left = deadline - loop.time()
            if left <= 0:
                recent = "\n".join(f"  {e}: {json.dumps(d)[:200]}"
                                   for e, d in self.items[-20:])
                pytest.fail(f"[{self.name}] waited {timeout}s for {n} {event!r}, "
                            f"got {len(found)}; received:\n{recent or '  (nothing)'}",
                            pytrace=False)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def wait_for(self, event, predicate=lambda d: True, timeout=WAIT):
        return (await self.wait_for_count(event, 1, predicate, timeout))[0]


async def _connect(url, transports, name):
    sio = socketio.AsyncClient(reconnection=False)
    col = AsyncCollector(name)
    sio.on("*", col)
    await sio.connect(url, socketio_path=SOCKETIO_PATH, transports=transports,
                      wait_timeout=WAIT)
    return sio, col


async def _publish(http, base, sid, event, data):
    async with http.post(f"{base}/api/v1/sessions/{sid}/events",
                         data=json.dumps({"event": event, "data": data}),
                         headers={"Content-Type": "application/json"}) as r:
        body = await r.json()
        assert r.status == 202, (r.status, body)
        return body


def _run(coro, timeout=60):
    asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_async_client_end_to_end(herald, transport):
    async def main():
        sio, col = await _connect(herald.url, TRANSPORTS[transport], transport)
        timeout = aiohttp.ClientTimeout(total=WAIT)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                hello = await col.wait_for("connected")
                assert hello["socketId"] == sio.get_sid("/")
                assert_iso8601(hello["timestamp"])
                if transport != "polling":
                    assert sio.transport() == "websocket"

                sid = new_session_id(f"async-{transport}")
                ack = await sio.call("subscribe", sid, timeout=WAIT)
                subscribed = await col.wait_for(
                    "subscribed", lambda d: d["sessionId"] == sid)
                assert_subscribed(subscribed, sid, seq=0)
                assert_subscribe_ack(ack, sid, 0, subscribed["epoch"])
                async with http.get(f"{herald.url}/api/v1/sessions/{sid}") as r:
                    assert (await r.json())["epoch"] == subscribed["epoch"]
                other = new_session_id("async-other")
                await sio.emit("subscribe", {"sessionId": other})
                assert_subscribed(await col.wait_for(
                    "subscribed", lambda d: d["sessionId"] == other), other, seq=0)

                sent = []
                for event in EVENT_NAMES:
                    data = sample(event)
                    body = await _publish(http, herald.url, sid, event, data)
                    sent.append((event, data, body["seq"]))
                await col.wait_for("error", lambda d: d.get("seq") == 5)
                got = [(e, d) for e, d in col.items if is_session_event(e, d, sid)]
                assert [e for e, _ in got] == list(EVENT_NAMES)
                for (event, data, seq), (_, d) in zip(sent, got):
                    assert_delivered(d, data, sid, seq=seq)

                # A bad payload: error event + ack, socket still usable.
                ack = await sio.call("subscribe", 7, timeout=WAIT)
                assert_refusal_ack(ack, "INVALID_SESSION_ID")
                err = await col.wait_for("error", lambda d: "code" in d)
                assert err["code"] == "INVALID_SESSION_ID" and "seq" not in err

                # Unsubscribe stops delivery of `sid`, `other` still arrives.
                ack = await sio.call("unsubscribe", sid, timeout=WAIT)
                assert ack == {"ok": True, "sessionId": sid}
                await _publish(http, herald.url, sid, "progress", sample("progress"))
                await _publish(http, herald.url, other, "completed", sample("completed"))
                await col.wait_for("completed", lambda d: d["sessionId"] == other)
                await asyncio.sleep(0.3)
                assert col.all("progress", lambda d: d["sessionId"] == sid) == [
                    d for e, d in got if e == "progress"]
                assert sio.connected
        finally:
            await sio.disconnect()

    _run(main())


def test_async_fanout_20_clients_40_events(herald):
    async def main():
        sid = new_session_id("async-fan")
        clients = []
        try:
            results = await asyncio.gather(*[
                _connect(herald.url, ["websocket"] if i % 2 else None, f"async#{i}")
                for i in range(20)])
            clients.extend(results)
            acks = await asyncio.gather(*[sio.call("subscribe", sid, timeout=WAIT)
                                          for sio, _ in clients])
            # All told seq 0 and the one epoch of the session.
            epoch = acks[0]["epoch"]
            for ack in acks:
                assert_subscribe_ack(ack, sid, 0, epoch)
            timeout = aiohttp.ClientTimeout(total=WAIT)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                for i in range(40):
                    body = await _publish(http, herald.url, sid, "model_result",
                                          model_result_payload(i))
                    assert body["seq"] == i + 1
            for _, col in clients:
                await col.wait_for_count("model_result", 40, timeout=15)
            await asyncio.sleep(0.3)
            for _, col in clients:
                seqs = [d["seq"] for d in col.all("model_result")]
                assert seqs == list(range(1, 41)), f"{col.name}: {seqs}"
                for i, d in enumerate(col.all("model_result")):
                    assert_delivered(d, model_result_payload(i), sid, seq=i + 1)
        finally:
            await asyncio.gather(*[sio.disconnect() for sio, _ in clients],
                                 return_exceptions=True)

    _run(main())
