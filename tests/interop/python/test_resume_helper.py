"""client-examples/python/herald_resume.py (watch_session) on the stock
socketio.AsyncClient against a real herald, and the example script built on
it (watch_session_resume.py): what the app is handed when its connection is
cut while a session is published, when an event comes twice or goes missing
on the way, when herald's history no longer holds what was missed, and when
herald lost the session (a new epoch).

The connection is cut with a TCP proxy between the client and herald: it
closes every connection through it and turns new ones away for a while, as a
network going down does; herald itself is not told. The proxy can also be
pointed at another herald (a restarted one listens on another port).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import aiohttp
import pytest
import socketio

from conftest import (REPO_ROOT, SOCKETIO_PATH, WAIT, Herald, _RUNNING,
                      model_result_payload, new_session_id, progress_payload,
                      sample)

EXAMPLES = REPO_ROOT / "client-examples" / "python"
sys.path.insert(0, str(EXAMPLES))
from herald_resume import watch_session  # noqa: E402

@pytest.fixture(autouse=True, scope="module")
def _restore_max_decode_packets():
    """watch_session() raises a process-wide python-engineio limit (see
    herald_resume): put it back for the other test modules."""
    from engineio.payload import Payload
    before = Payload.max_decode_packets
    yield
    Payload.max_decode_packets = before


FAST_RECONNECT = dict(reconnection_delay=0.05, reconnection_delay_max=0.2,
                      randomization_factor=0)


# --------------------------------------------------------------------------
# herald servers of this module's own (one restarts; one keeps 5 events)
# --------------------------------------------------------------------------

def _server(tmp_path_factory, name, args=()):
    server = Herald(tmp_path_factory.mktemp(name) / "herald.log", list(args))
    _RUNNING.append(server)
    server.start()
    return server


def _stop(server):
    server.stop()
    if server in _RUNNING:
        _RUNNING.remove(server)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = _server(tmp_path_factory, "herald-resume")
    yield s
    _stop(s)


@pytest.fixture(scope="module")
def short_history(tmp_path_factory):
    s = _server(tmp_path_factory, "herald-short-history", ["--history-max-events", "5"])
    yield s
    _stop(s)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

class Proxy:
    """A TCP proxy to herald on `port` whose connections can be cut."""

    def __init__(self, port: int):
        self.port = port
        self.is_down = False
        self.pairs: set = set()

    async def start(self) -> "Proxy":
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _accept(self, reader, writer):
        if self.is_down:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self.pairs.add(pair)

        async def pump(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                for w in pair:
                    w.transport.abort()
                self.pairs.discard(pair)

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def down(self):
        """Close every connection through the proxy; refuse new ones until up()."""
        self.is_down = True
        for pair in list(self.pairs):
            for w in pair:
                w.transport.abort()
        self.pairs.clear()

    def up(self, port=None):
        self.port = port or self.port
        self.is_down = False

    async def close(self):
        self.down()
        self.server.close()
        await self.server.wait_closed()


class Seen:
    """What watch_session hands the app."""

    def __init__(self):
        self.events: list = []       # (name, seq)
        self.subscribed: list = []
        self.lost: list = []
        self.refused: list = []
        self.changed = asyncio.Event()

    def on_event(self, name, data):
        self.events.append((name, data["seq"]))
        self.changed.set()

    def on_subscribed(self, info):
        self.subscribed.append(info)
        self.changed.set()

    def on_lost(self, info):
        self.lost.append(info)

    def on_refused(self, reply):
        self.refused.append(reply)
        self.changed.set()

    def seqs(self):
        return [seq for _, seq in self.events]

    async def until(self, cond, what, timeout=15.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            left = deadline - loop.time()
            if left <= 0:
                pytest.fail(f"timed out after {timeout}s waiting for {what}; "
                            f"seqs {self.seqs()}, subscribed {self.subscribed}",
                            pytrace=False)
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 0.2))
            except asyncio.TimeoutError:
                pass


def watch(sio, session, **options):
    seen = Seen()
    seen.watch = watch_session(sio, session, seen.on_event,
                               on_subscribed=seen.on_subscribed,
                               on_lost=seen.on_lost,
                               on_refused=seen.on_refused, **options)
    return seen


def stream_event(i, total):
    """A long session: model results and progress, then completed."""
    if i == total:
        return "completed", sample("completed")
    if i % 2:
        return "model_result", model_result_payload(i)
    return "progress", progress_payload(round(100 * i / total))


async def publish(http, server, session, event, data):
    async with http.post(f"{server.url}/api/v1/sessions/{session}/events",
                         json={"event": event, "data": data}) as r:
        body = await r.json()
        assert r.status == 202, (r.status, body)
        return body["seq"]


async def client(url, transports=("websocket",)):
    sio = socketio.AsyncClient(**FAST_RECONNECT)
    return sio, dict(url=url, socketio_path=SOCKETIO_PATH,
                     transports=list(transports), wait_timeout=WAIT)


# --------------------------------------------------------------------------
# the helper
# --------------------------------------------------------------------------

@pytest.mark.parametrize("transports", [["websocket"], ["polling"]])
def test_connection_cut_while_200_events_are_published(server, transports):
    async def scenario():
        proxy = await (Proxy(server.port)).start()
        session = new_session_id("py-resume-cut")
        sio, how = await client(proxy.url, transports)
        seen = watch(sio, session)
        async with aiohttp.ClientSession() as http:
            try:
                await sio.connect(**how)
                await seen.until(lambda: len(seen.subscribed) == 1, "the first subscription")
                assert seen.subscribed[0]["since"] is None, "a snapshot first"
                first_sid = sio.get_sid()
                total, names = 200, []
                for i in range(1, total + 1):
                    if i == 60:
                        await seen.until(lambda: 59 in seen.seqs(), "seq 59 before the cut")
                        proxy.down()
                    if i == 140:
                        await asyncio.sleep(0.2)
                        proxy.up()
                    event, data = stream_event(i, total)
                    names.append(event)
                    assert await publish(http, server, session, event, data) == i
                await seen.until(lambda: total in seen.seqs(), f"seq {total}")
                await asyncio.sleep(0.2)  # a duplicate would arrive now

                assert seen.seqs() == list(range(1, total + 1)), "every seq once, in order"
                assert [name for name, _ in seen.events] == names
                assert sio.get_sid() != first_sid, "the client reconnected"
                resumes = seen.subscribed[1:]
                replayed = [r for r in resumes if r["replayed"]]
                assert replayed, f"one resume replayed what was missed: {resumes}"
                assert 59 <= replayed[0]["since"] < 140, replayed
                assert all(r["recovered"] is True for r in resumes), resumes
                assert seen.lost == []
                assert seen.watch.stats["received"] == total
                assert seen.watch.stats["missed"] == 0
                assert seen.watch.position == {"seq": total, "epoch": seen.subscribed[0]["epoch"]}
                await seen.watch.stop()
            finally:
                await sio.disconnect()
                await proxy.close()

    asyncio.run(scenario())


def test_snapshot_then_live_and_resume_from_a_saved_position(server):
    async def scenario():
        session = new_session_id("py-resume-snapshot")
        async with aiohttp.ClientSession() as http:
            for i in range(1, 6):  # seq 5 is a model result: the snapshot is progress 4
                await publish(http, server, session, *stream_event(i, 20))
            sio, how = await client(server.url)
            first = watch(sio, session)
            try:
                await sio.connect(**how)
                await first.until(lambda: first.events, "the snapshot")
                await publish(http, server, session, *stream_event(6, 20))
                await first.until(lambda: 6 in first.seqs(), "live after the snapshot")
                assert first.events == [("progress", 4), ("progress", 6)]
                assert first.subscribed[0]["seq"] == 5
                saved = first.watch.position
                await first.watch.stop()
            finally:
                await sio.disconnect()

            # The script stops while events keep coming; the next run starts
            # from the position it saved.
            for i in range(7, 10):
                await publish(http, server, session, *stream_event(i, 20))
            sio, how = await client(server.url)
            second = watch(sio, session, position=saved)
            try:
                await sio.connect(**how)
                await second.until(lambda: 9 in second.seqs(), "what the first one missed")
                await publish(http, server, session, *stream_event(10, 20))
                await second.until(lambda: 10 in second.seqs(), "live")
                await asyncio.sleep(0.1)
                assert second.seqs() == [7, 8, 9, 10]
                assert second.subscribed[0]["since"] == 6
                assert second.subscribed[0]["recovered"] is True
                await second.watch.stop()
            finally:
                await sio.disconnect()

    asyncio.run(scenario())


def test_duplicates_dropped_and_a_hole_fetched_again(server):
    async def scenario():
        session = new_session_id("py-resume-dup")
        sio, how = await client(server.url)
        # Lose seq 5 on the way in, once, as a socket that overflowed would.
        handle_event = sio._handle_event
        dropped = []

        async def lossy(namespace, id, data):
            if (isinstance(data, list) and len(data) > 1 and isinstance(data[1], dict)
                    and data[1].get("seq") == 5 and not dropped):
                dropped.append(data)
                return
            await handle_event(namespace, id, data)

        sio._handle_event = lossy
        seen = watch(sio, session)
        async with aiohttp.ClientSession() as http:
            try:
                await sio.connect(**how)
                await seen.until(lambda: seen.subscribed, "the first subscription")
                for i in range(1, 11):
                    await publish(http, server, session, *stream_event(i, 20))
                await seen.until(lambda: 10 in seen.seqs(), "seq 10")
                assert len(dropped) == 1, "seq 5 was dropped once on the way"
                assert seen.seqs() == list(range(1, 11)), "the hole filled, in order"
                assert seen.watch.stats["resyncs"] == 1
                assert seen.subscribed[1]["since"] == 4, seen.subscribed

                # Something else on this client asks for the whole history
                # again: herald sends seqs 1..10 a second time.
                ack = await sio.call("subscribe", {"sessionId": session, "since": 0}, timeout=WAIT)
                assert ack["ok"] is True
                await seen.until(lambda: seen.watch.stats["duplicates"] == 10,
                                 "10 duplicates dropped")
                await publish(http, server, session, *stream_event(11, 20))
                await seen.until(lambda: 11 in seen.seqs(), "seq 11")
                assert seen.seqs() == list(range(1, 12))
                assert len(seen.subscribed) == 2, "a reply to a subscribe it did not send is not its own"
                assert seen.lost == []
                await seen.watch.stop()
            finally:
                await sio.disconnect()

    asyncio.run(scenario())


def test_unanswered_subscribe_is_sent_again(server):
    async def scenario():
        session = new_session_id("py-resume-unanswered")
        sio, how = await client(server.url)
        # Lose the first subscribe on the way out, as herald may lose one
        # sent the instant the connection opens.
        emit = sio.emit
        subscribes = []

        async def lossy_emit(event, data=None, **kw):
            if event == "subscribe":
                subscribes.append(data)
                if len(subscribes) == 1:
                    return
            await emit(event, data, **kw)

        sio.emit = lossy_emit
        seen = watch(sio, session, answer_timeout=0.3)
        async with aiohttp.ClientSession() as http:
            try:
                await sio.connect(**how)
                await seen.until(lambda: seen.subscribed, "the subscription, asked again")
                assert len(subscribes) == 2, subscribes
                await publish(http, server, session, *stream_event(1, 20))
                await seen.until(lambda: 1 in seen.seqs(), "seq 1")
                await asyncio.sleep(0.7)  # answered: not asked a third time
                assert len(subscribes) == 2, subscribes
                await seen.watch.stop()
            finally:
                await sio.disconnect()

    asyncio.run(scenario())


def test_refused_subscription_is_reported(server):
    async def scenario():
        sio, how = await client(server.url)
        seen = watch(sio, "not a valid id!")
        try:
            await sio.connect(**how)
            await seen.until(lambda: seen.refused, "the refusal")
            await asyncio.sleep(0.2)
            assert [r["code"] for r in seen.refused] == ["INVALID_SESSION_ID"]
            assert seen.subscribed == []
            await seen.watch.stop()
        finally:
            await sio.disconnect()

    asyncio.run(scenario())


def test_history_truncated_is_reported_and_counted(short_history):
    server = short_history

    async def scenario():
        proxy = await Proxy(server.port).start()
        session = new_session_id("py-resume-truncated")
        sio, how = await client(proxy.url)
        seen = watch(sio, session)
        async with aiohttp.ClientSession() as http:
            try:
                await sio.connect(**how)
                await seen.until(lambda: seen.subscribed, "the first subscription")
                for i in range(1, 4):
                    await publish(http, server, session, *stream_event(i, 30))
                await seen.until(lambda: 3 in seen.seqs(), "seq 3")
                proxy.down()
                for i in range(4, 21):  # herald keeps the last 5: 16..20
                    await publish(http, server, session, *stream_event(i, 30))
                proxy.up()
                await seen.until(lambda: 20 in seen.seqs(), "the held history")
                await publish(http, server, session, *stream_event(21, 30))
                await seen.until(lambda: 21 in seen.seqs(), "live")
                assert seen.seqs() == [1, 2, 3, *range(16, 22)]
                assert [(i["since"], i["recovered"], i["reason"], i["replayed"]) for i in seen.lost] \
                    == [(3, False, "history_truncated", 5)]
                assert seen.watch.stats["missed"] == 12, "seqs 4..15 are gone"
                assert seen.watch.stats["resyncs"] == 0
                await seen.watch.stop()
            finally:
                await sio.disconnect()
                await proxy.close()

    asyncio.run(scenario())


def test_new_epoch_after_herald_lost_its_state(tmp_path_factory):
    """A herald restarted (in memory: seq and history gone) behind the same
    address: the new seqs 1, 2, ... are the session anew, not duplicates."""
    first = _server(tmp_path_factory, "herald-epoch-1")
    second = None

    async def scenario():
        nonlocal second
        proxy = await Proxy(first.port).start()
        session = new_session_id("py-resume-epoch")
        sio, how = await client(proxy.url)
        seen = watch(sio, session)
        async with aiohttp.ClientSession() as http:
            try:
                await sio.connect(**how)
                await seen.until(lambda: seen.subscribed, "the first subscription")
                for i in range(1, 5):
                    await publish(http, first, session, *stream_event(i, 30))
                await seen.until(lambda: 4 in seen.seqs(), "seq 4")
                old_epoch = seen.subscribed[0]["epoch"]

                proxy.down()
                _stop(first)
                second = await asyncio.to_thread(_server, tmp_path_factory, "herald-epoch-2")
                proxy.up(second.port)
                await seen.until(lambda: len(seen.subscribed) == 2, "the resubscription")
                assert [(i["reason"], i["since"]) for i in seen.lost] == [("epoch_changed", 4)]
                assert seen.lost[0]["epoch"] != old_epoch

                for i in range(1, 4):
                    await publish(http, second, session, *stream_event(i, 30))
                await seen.until(lambda: len(seen.events) == 7, "the new epoch's events")
                await asyncio.sleep(0.1)
                assert seen.seqs() == [1, 2, 3, 4, 1, 2, 3]
                assert seen.watch.position == {"seq": 3, "epoch": seen.lost[0]["epoch"]}
                await seen.watch.stop()
            finally:
                await sio.disconnect()
                await proxy.close()

    try:
        asyncio.run(scenario())
    finally:
        _stop(first)
        if second is not None:
            _stop(second)


# --------------------------------------------------------------------------
# the example script
# --------------------------------------------------------------------------

def test_watch_session_resume_script_through_a_cut_and_a_restart(server, tmp_path):
    """watch_session_resume.py prints each event once, in order, across a
    dropped connection; run again with the same STATE_FILE, it goes on from
    where it stopped."""
    script = EXAMPLES / "watch_session_resume.py"
    state = tmp_path / "state.json"

    async def run_script(proxy_url, session):
        return await asyncio.create_subprocess_exec(
            sys.executable, str(script), session, cwd=str(EXAMPLES),
            env={**os.environ, "HERALD_URL": proxy_url, "STATE_FILE": str(state)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    async def read_until(proc, lines, want, timeout=15.0):
        async def read():
            while not any(line.startswith(want) for line in lines):
                line = await proc.stdout.readline()
                if not line:
                    return
                lines.append(line.decode().rstrip("\n"))
        try:
            await asyncio.wait_for(read(), timeout)
        except asyncio.TimeoutError:
            pass
        assert any(line.startswith(want) for line in lines), (want, lines)

    async def scenario():
        proxy = await Proxy(server.port).start()
        session = new_session_id("py-resume-script")
        async with aiohttp.ClientSession() as http:
            try:
                proc = await run_script(proxy.url, session)
                out = []
                await read_until(proc, out, f"subscribed to {session}")
                for i in range(1, 21):
                    await publish(http, server, session, *stream_event(i, 60))
                await read_until(proc, out, "seq 20 ")
                proxy.down()
                for i in range(21, 41):
                    await publish(http, server, session, *stream_event(i, 60))
                await asyncio.sleep(0.2)
                proxy.up()
                await read_until(proc, out, "seq 40 ")
                # It saves its position right after printing an event.
                for _ in range(100):
                    if json.loads(state.read_text())["seq"] == 40:
                        break
                    await asyncio.sleep(0.05)
                assert json.loads(state.read_text())["seq"] == 40
                proc.kill()  # stopped midway; the next run goes on from STATE_FILE
                await proc.wait()

                for i in range(41, 61):
                    await publish(http, server, session, *stream_event(i, 60))
                proc = await run_script(proxy.url, session)
                await read_until(proc, out, "seq 60 completed")
                assert await asyncio.wait_for(proc.wait(), 10) == 0
                rest = (await proc.stdout.read()).decode().splitlines()
                out += rest

                seqs = [int(line.split()[1]) for line in out if line.startswith("seq ")]
                assert seqs == list(range(1, 61)), "\n".join(out)
                assert any(line.startswith("resumed after seq 20: ") for line in out), \
                    "\n".join(out)
                assert "resumed after seq 40: 20 replayed" in out, "\n".join(out)
                assert not any(line.startswith("lost") for line in out), out
            finally:
                await proxy.close()

    asyncio.run(scenario())
