"""Fixtures and helpers for the python-socketio interop suite.

A real herald process (HERALD_BIN, default target/debug/herald) is started on
127.0.0.1 once per test session, on a port the OS picks (--port 0, read back
from herald's start line); tests talk to it with the
stock `socketio.Client` / `socketio.AsyncClient` and publish through its HTTP
API with `requests`.

Every test uses session ids of its own (`new_session_id`), so tests sharing
the one server cannot see each other's events.

Sample payloads and bad inputs come from tests/fixtures/events.json, which
the Rust, Node and browser suites read too.

Helpers defined here are plain module-level names; test modules import them
with `from conftest import ...` (this directory has no __init__.py, so pytest
puts it on sys.path and imports this file as the module `conftest`).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import signal
import subprocess
import tempfile
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import requests
import socketio
from socketio import packet as sio_packet

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
DEFAULT_HERALD_BIN = REPO_ROOT / "target" / "debug" / "herald"

# The sample events and bad inputs every suite shares (its "about" says what
# is where).
FIXTURES = json.loads(
    (REPO_ROOT / "tests" / "fixtures" / "events.json").read_text("utf-8"))


def _env_example_vars() -> frozenset:
    """Every variable .env.example lists (commented out or not): the settings
    herald reads from the environment. Derived, so it cannot drift."""
    text = (REPO_ROOT / ".env.example").read_text("utf-8")
    names = frozenset(re.findall(r"^[#\s]*([A-Z][A-Z0-9_]*)=", text, re.M))
    assert "PORT" in names, f".env.example lists no PORT: {sorted(names)}"
    return names


# Removed from the environment the test server gets, so a developer's shell
# cannot change what the suite tests.
HERALD_ENV_VARS = _env_example_vars()

# herald's start line (target herald::start): "... listening on
# http://127.0.0.1:PORT ...".
START_LINE = re.compile(r"listening on http://(?:\[[^\]]*\]|[^\s/:\"]+):(\d+)")

SOCKETIO_PATH = "/socket.io/"

# ISO 8601 / RFC 3339 date-time with an explicit offset (herald's own are
# JavaScript toISOString shaped: 2026-01-31T12:00:00.000Z).
ISO_8601 = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
)

EVENT_NAMES = tuple(FIXTURES["events"])

# Wait bounds (seconds). Generous next to what a local server needs, short
# enough that a missing event fails a test quickly.
WAIT = 5.0
QUIET = 0.4  # how long "nothing arrives" is watched for


# --------------------------------------------------------------------------
# herald process
# --------------------------------------------------------------------------

def herald_bin() -> Path:
    return Path(os.environ.get("HERALD_BIN") or DEFAULT_HERALD_BIN)


def _die_with_parent() -> None:
    """In the child before exec: have Linux SIGTERM herald if this test
    process dies without its teardown (killed, os._exit by a timeout)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _server_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in HERALD_ENV_VARS}
    env.setdefault("RUST_BACKTRACE", "1")
    env["NO_COLOR"] = "1"  # plain log text in failure reports
    return env


class Herald:
    """One running herald process with its log file."""

    def __init__(self, log_path: Path, extra_args: Optional[list] = None):
        self.log_path = log_path
        self.extra_args = list(extra_args or [])
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self._log_file = None
        self.http = requests.Session()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "Herald":
        """Starts herald on --port 0, reads its port from the start line in
        its log file, and waits until GET /health answers 200. Its log is at
        info level: it goes to a file, shown with any failing test."""
        binary = herald_bin()
        if not binary.is_file():
            raise RuntimeError(
                f"herald binary not found at {binary}; build it with "
                "`cargo build` in the repo root or set HERALD_BIN"
            )
        offset = self.log_size()
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(binary), "--host", "127.0.0.1", "--port", "0",
             "--log-level", "info", *self.extra_args],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=_server_env(),
            # A directory without a .env: a developer's .env in the checkout
            # must not reach the tests either.
            cwd=tempfile.gettempdir(),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + timeout
        self.port = None
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.port is None:
                found = START_LINE.search(self.log_since(offset))
                if found:
                    self.port = int(found.group(1))
            if self.port is not None:
                try:
                    r = requests.get(self.url + "/health", timeout=1)
                    if r.status_code == 200:
                        return self
                except requests.RequestException:
                    pass
            time.sleep(0.02)
        if self.proc.poll() is not None:
            error = f"herald exited with code {self.proc.returncode}"
        elif self.port is None:
            error = f"herald logged no start line within {timeout}s"
        else:
            error = (f"herald on port {self.port} did not answer GET /health "
                     f"200 within {timeout}s")
        self._kill()
        raise RuntimeError(f"{error}\n--- herald log ---\n{self.log_tail()}")

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM, then kill if it has not exited within `timeout`.
        Returns the exit code after SIGTERM, or None if it had to be killed."""
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
        elif self.proc is not None:
            code = self.proc.returncode
        self._kill()
        self.http.close()
        return code

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int, limit: int = 20000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return ""
        text = data.decode("utf-8", "replace")
        if len(text) > limit:
            text = "...(cut)...\n" + text[-limit:]
        return text

    def log_tail(self, limit: int = 8000) -> str:
        return self.log_since(max(0, self.log_size() - limit), limit)

    # ---- HTTP API ----

    def publish(self, session_id: str, event: str, data: dict,
                expect: int = 202) -> dict:
        """POST /api/v1/sessions/{id}/events; asserts the status code."""
        r = self.http.post(
            f"{self.url}/api/v1/sessions/{session_id}/events",
            data=json.dumps({"event": event, "data": data}),
            headers={"Content-Type": "application/json"},
            timeout=WAIT,
        )
        assert r.status_code == expect, (
            f"publish {event} to {session_id}: expected HTTP {expect}, got "
            f"{r.status_code}: {r.text[:500]}"
        )
        body = r.json()
        if expect == 202:
            assert body.get("sessionId") == session_id, body
            assert body.get("event") == event, body
            assert isinstance(body.get("seq"), int), body
        return body

    def post_json(self, path: str, body: Any) -> requests.Response:
        """POSTs `body` as JSON, whatever it is; asserts nothing."""
        return self.http.post(
            f"{self.url}{path}", data=json.dumps(body),
            headers={"Content-Type": "application/json"}, timeout=WAIT)

    def publish_batch(self, items: list, expect: int = 202) -> dict:
        """POST /api/v1/events with [{sessionId, event, data}, ...]."""
        r = self.http.post(
            f"{self.url}/api/v1/events",
            data=json.dumps(items),
            headers={"Content-Type": "application/json"},
            timeout=WAIT,
        )
        assert r.status_code == expect, (
            f"batch publish: expected HTTP {expect}, got {r.status_code}: "
            f"{r.text[:500]}"
        )
        return r.json()

    def session(self, session_id: str) -> dict:
        """GET /api/v1/sessions/{id}."""
        r = self.http.get(f"{self.url}/api/v1/sessions/{session_id}",
                          timeout=WAIT)
        assert r.status_code == 200, (
            f"GET session {session_id}: {r.status_code} {r.text[:500]}"
        )
        return r.json()

    def stats(self) -> dict:
        r = self.http.get(f"{self.url}/api/v1/stats", timeout=WAIT)
        assert r.status_code == 200, f"GET stats: {r.status_code} {r.text[:500]}"
        return r.json()


_RUNNING: list = []


@pytest.fixture(scope="session")
def herald(tmp_path_factory) -> Herald:
    """The shared herald server for the whole run."""
    log_path = tmp_path_factory.mktemp("herald") / "herald.log"
    server = Herald(log_path)
    _RUNNING.append(server)
    try:
        server.start()
        yield server
    finally:
        code = server.stop()
        _RUNNING.remove(server)
    assert code == 0, (
        f"herald did not exit 0 on SIGTERM (exit code: {code}; None means it "
        f"had to be killed)\n--- herald log ---\n{server.log_tail()}"
    )


def pytest_runtest_setup(item):
    item.stash[_log_offsets_key] = [(h, h.log_size()) for h in _RUNNING]


_log_offsets_key = pytest.StashKey[list]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        offsets = dict((id(h), off) for h, off in
                       item.stash.get(_log_offsets_key, []))
        for h in list(_RUNNING):
            off = offsets.get(id(h), 0)
            report.sections.append(
                (f"herald log (port {h.port}) during this test",
                 h.log_since(off) or "(empty)")
            )


# --------------------------------------------------------------------------
# ids, timestamps, payloads
# --------------------------------------------------------------------------

def new_session_id(prefix: str = "py") -> str:
    return f"{prefix}-{uuid.uuid4()}"


def assert_iso8601(value: Any, what: str = "timestamp",
                   near_now: bool = True) -> dt.datetime:
    assert isinstance(value, str), f"{what} must be a string, got {value!r}"
    assert ISO_8601.match(value), f"{what} is not ISO 8601: {value!r}"
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, f"{what} has no offset: {value!r}"
    if near_now:
        skew = abs((dt.datetime.now(dt.timezone.utc) - parsed).total_seconds())
        assert skew < 300, f"{what} {value!r} is {skew:.0f}s away from now"
    return parsed


def sample_payloads() -> dict:
    """One valid `data` object per event type (tests/fixtures/events.json),
    with every optional field set, exercising ints, floats, nested objects,
    null, and non-ASCII text. A fresh copy on every call."""
    return copy.deepcopy(FIXTURES["events"])


def sample(event: str) -> dict:
    return copy.deepcopy(FIXTURES["events"][event])


def fixture_cases(dotted: str) -> list:
    """A copy of the fixture's cases under `dotted` (e.g. "refusals.publish")."""
    found = FIXTURES
    for key in dotted.split("."):
        found = found[key]
    assert isinstance(found, list), dotted
    return copy.deepcopy(found)


def build(case: dict, session: Optional[str] = None) -> Any:
    """The request body of a fixture case: its `body` as is, or {event, data:
    sample(event)} (with sessionId first when given, for a batch item) with
    the case's `set` (dotted path -> value) and `unset` applied."""
    if "body" in case:
        return copy.deepcopy(case["body"])
    body: dict = {} if session is None else {"sessionId": session}
    body["event"] = case["event"]
    body["data"] = sample(case["event"])

    def walk(path):
        *parents, key = path.split(".")
        at = body
        for p in parents:
            at = at[p]
        return at, key

    for path, value in case.get("set", {}).items():
        at, key = walk(path)
        at[key] = copy.deepcopy(value)
    for path in case.get("unset", []):
        at, key = walk(path)
        del at[key]
    return body


def progress_payload(pct, status: str = "PROCESSING", **extra) -> dict:
    data = {
        "status": status,
        "progress": pct,
        "prompts": {"total": 10, "completed": 0, "processing": 0,
                    "pending": 10, "failed": 0},
        "hasClarifications": False,
        "clarificationCount": 0,
    }
    data.update(extra)
    return data


def model_result_payload(i: int) -> dict:
    return {"modelName": f"model-{i}", "duration": i, "result": f"chunk {i}",
            "status": "completed"}


def assert_delivered(received: dict, published: dict, session_id: str,
                     seq: Optional[int] = None) -> None:
    """`received` is `published` plus sessionId, timestamp (ISO 8601) and seq;
    numbers keep their JSON type (50 stays int 50)."""
    assert isinstance(received, dict), f"payload is not an object: {received!r}"
    assert received.get("sessionId") == session_id, received
    assert_iso8601(received.get("timestamp"),
                   near_now="timestamp" not in published)
    assert isinstance(received.get("seq"), int) and not isinstance(
        received.get("seq"), bool), f"seq is not an integer: {received!r}"
    if seq is not None:
        assert received["seq"] == seq, (
            f"expected seq {seq}, got {received['seq']}: {received!r}")
    extra = {"sessionId", "timestamp", "seq"}
    own = {k: v for k, v in received.items() if k not in extra}
    expected = {k: v for k, v in published.items() if k not in extra}
    assert own == expected, (
        f"fields differ from what was published\n published: {expected!r}\n"
        f" received:  {own!r}")
    _assert_same_types(own, expected, "data")
    if "timestamp" in published:
        assert received["timestamp"] == published["timestamp"]


def _assert_same_types(got, want, path):
    # 50 == 50.0 and 1 == True in Python; the wire types must match too.
    assert type(got) is type(want), (
        f"{path}: published {want!r} ({type(want).__name__}) arrived as "
        f"{got!r} ({type(got).__name__})")
    if isinstance(want, dict):
        for k in want:
            _assert_same_types(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same_types(g, w, f"{path}[{i}]")


# --------------------------------------------------------------------------
# receiving
# --------------------------------------------------------------------------

class Collector:
    """Thread-safe record of the events a client's handlers were called with.

    python-socketio's sync client runs each incoming message's handler in a
    thread of its own, so the order of this record is not the wire order (see
    WireTap for that); use it to wait for and count events."""

    def __init__(self, name: str = "client"):
        self.name = name
        self._items: list = []
        self._cond = threading.Condition()

    # catch-all handler: sio.on('*', collector)
    def __call__(self, event, *args):
        self.add(event, args[0] if len(args) == 1 else (list(args) or None))

    def add(self, event: str, data: Any) -> None:
        with self._cond:
            self._items.append((event, data))
            self._cond.notify_all()

    def all(self, event: Optional[str] = None,
            predicate: Optional[Callable[[Any], bool]] = None) -> list:
        with self._cond:
            items = list(self._items)
        return [d for e, d in items
                if (event is None or e == event)
                and (predicate is None or _safe(predicate, d))]

    def count(self, event=None, predicate=None) -> int:
        return len(self.all(event, predicate))

    def names(self) -> list:
        with self._cond:
            return [e for e, _ in self._items]

    def wait_for(self, event: str,
                 predicate: Optional[Callable[[Any], bool]] = None,
                 timeout: float = WAIT, what: str = "") -> Any:
        """Returns the first matching event received (now or earlier)."""
        return self.wait_for_count(event, 1, predicate, timeout, what)[0]

    def wait_for_count(self, event: str, n: int,
                       predicate: Optional[Callable[[Any], bool]] = None,
                       timeout: float = WAIT, what: str = "") -> list:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [d for e, d in self._items
                         if e == event and (predicate is None
                                            or _safe(predicate, d))]
                if len(found) >= n:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            summary = self._summary()
        desc = what or (getattr(predicate, "__name__", "") if predicate else "")
        pytest.fail(
            f"[{self.name}] waited {timeout}s for {n} {event!r} event(s)"
            f"{' matching ' + desc if desc else ''}, got {len(found)}.\n"
            f"Received so far ({len(self._items)}):\n{summary}",
            pytrace=False,
        )

    def assert_none(self, event: str,
                    predicate: Optional[Callable[[Any], bool]] = None,
                    within: float = QUIET, what: str = "") -> None:
        """Waits `within` seconds and fails if a matching event arrived."""
        time.sleep(within)
        got = self.all(event, predicate)
        if got:
            pytest.fail(
                f"[{self.name}] expected no {event!r} event "
                f"{what}but got {len(got)}: {got[:5]!r}", pytrace=False)

    def _summary(self, limit: int = 30) -> str:
        items = self._items[-limit:]
        lines = [f"  {e}: {json.dumps(d, default=str)[:300]}" for e, d in items]
        if len(self._items) > limit:
            lines.insert(0, f"  ... {len(self._items) - limit} earlier")
        return "\n".join(lines) or "  (nothing)"


def _safe(predicate, data) -> bool:
    try:
        return bool(predicate(data))
    except (KeyError, TypeError, AttributeError, IndexError):
        return False


class WireTap:
    """Records Socket.IO EVENT packets of the default namespace in the order
    the Engine.IO client read them off the connection, before the client hands
    them to handler threads. Observation only: wraps the client's own packet
    receiver and always calls it."""

    def __init__(self, sio: socketio.Client):
        self._items: list = []
        self._lock = threading.Lock()
        eio = sio.eio
        original = eio._receive_packet

        def receive(pkt):
            try:
                if pkt.packet_type == 4 and isinstance(pkt.data, str):  # MESSAGE
                    p = sio_packet.Packet(encoded_packet=pkt.data)
                    if p.packet_type == sio_packet.EVENT and p.namespace in (
                            None, "/") and p.data:
                        with self._lock:
                            self._items.append(
                                (p.data[0], p.data[1] if len(p.data) > 1 else None))
            except Exception:  # never break the client
                pass
            return original(pkt)

        eio._receive_packet = receive

    def events(self, event: str) -> list:
        """Payloads of the named event, in wire order."""
        with self._lock:
            return [d for e, d in self._items if e == event]

    def pairs(self) -> list:
        """(event, payload) of every event, in wire order."""
        with self._lock:
            return list(self._items)


class Conn:
    """A connected stock socketio.Client with its collector and wire tap."""

    def __init__(self, sio: socketio.Client, events: Collector, wire: WireTap):
        self.sio = sio
        self.events = events
        self.wire = wire

    @property
    def sid(self) -> Optional[str]:
        return self.sio.get_sid("/")

    def subscribe(self, session_id, payload: Any = None,
                  ack: bool = True) -> Optional[dict]:
        """Subscribes (payload defaults to the id string) and waits for the
        `subscribed` reply; with ack=True also returns the ack."""
        return self._room("subscribe", "subscribed", session_id, payload, ack)

    def unsubscribe(self, session_id, payload: Any = None,
                    ack: bool = True) -> Optional[dict]:
        return self._room("unsubscribe", "unsubscribed", session_id, payload, ack)

    def _room(self, event, reply, session_id, payload, ack):
        before = self.events.count(reply, lambda d: d["sessionId"] == session_id)
        data = session_id if payload is None else payload
        result = None
        if ack:
            result = self.sio.call(event, data, timeout=WAIT)
            assert result == {"ok": True, "sessionId": session_id}, (
                f"{event} ack: expected {{ok: true, sessionId: {session_id!r}}}, "
                f"got {result!r}")
        else:
            self.sio.emit(event, data)
        replies = self.events.wait_for_count(
            reply, before + 1, lambda d: d["sessionId"] == session_id,
            what=f"sessionId == {session_id!r}")
        r = replies[before]
        assert set(r) == {"sessionId", "timestamp"}, f"{reply} payload: {r!r}"
        assert_iso8601(r["timestamp"], f"{reply}.timestamp")
        return result

    def disconnect(self) -> None:
        try:
            self.sio.disconnect()
        except Exception:
            pass


def make_client(url: str, transports=None, name: str = "client",
                **client_kwargs) -> Conn:
    sio = socketio.Client(reconnection=False, **client_kwargs)
    events = Collector(name)
    sio.on("*", events)
    sio.on("disconnect", lambda *a: events.add("__disconnect__", list(a)))
    wire = WireTap(sio)
    sio.connect(url, socketio_path=SOCKETIO_PATH, transports=transports,
                wait_timeout=WAIT)
    return Conn(sio, events, wire)


@pytest.fixture
def connect(herald):
    """Factory: connect(transports=None, name=...) -> Conn; all disconnected
    at teardown."""
    made: list = []

    def _connect(transports=None, name: Optional[str] = None, **kw) -> Conn:
        conn = make_client(herald.url, transports,
                           name or f"client{len(made) + 1}", **kw)
        made.append(conn)
        return conn

    yield _connect
    for conn in made:
        conn.disconnect()


TRANSPORTS = {
    "polling": ["polling"],
    "websocket": ["websocket"],
    "default": None,
}
