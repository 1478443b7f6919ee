"""Fixtures and helpers for the python-socketio interop suite.

A real herald process (HERALD_BIN, default target/debug/herald) is started on
127.0.0.1 once per test session, on a port the OS picks (--port 0, read back
from herald's start line); tests talk to it with the
stock `socketio.Client` / `socketio.AsyncClient` and publish through its HTTP
API with `requests`.

Every test uses session ids of its own (`new_session_id`), so tests sharing
the one server cannot see each other's events.

Tests of several instances use `cluster` (two heralds sharing a real
redis-server, spawned without persistence on a free 127.0.0.1 port, like
the Node suite's lib/redis.mjs) or, to restart Redis, `new_cluster`; tests
needing herald flags of their own use `new_herald`.

Conn.subscribe() asserts the subscribe contract of PROTOCOL.md section 4
exactly (`subscribed` and ack with seq and epoch, and the snapshot or
replay that follows); the shape helpers are defined here once.

Sample payloads and bad inputs come from tests/fixtures/events.json, which
the Rust, Node and browser suites read too.

Helpers defined here are plain module-level names; test modules import them
with `from conftest import ...` (this directory has no __init__.py, so pytest
puts it on sys.path and imports this file as the module `conftest`).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

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

# A session's epoch (PROTOCOL.md section 4): 12 lowercase hex digits.
EPOCH = re.compile(r"^[0-9a-f]{12}\Z")

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


# --------------------------------------------------------------------------
# redis-server, for the tests of several heralds sharing one Redis
# --------------------------------------------------------------------------

def redis_server_bin() -> str:
    """$REDIS_SERVER_BIN, else redis-server on the PATH."""
    found = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
    if not found:
        raise RuntimeError(
            "redis-server is not installed: install redis-server 7 "
            "(scripts/install-test-deps) or set REDIS_SERVER_BIN")
    return found


def free_port() -> int:
    """A TCP port that was free a moment ago (racy: only for what cannot
    report the port it bound, like redis-server; herald starts on port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_ping(port: int, timeout: float = 1.0) -> bool:
    """True when the Redis at `port` answers PING with +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = s.recv(64)
                if not chunk:
                    return False
                reply += chunk
            return reply == b"+PONG\r\n"
    except OSError:
        return False


class RedisServer:
    """One redis-server on 127.0.0.1, with persistence off (so that a restart
    after kill() comes back empty, as a Redis without persistence does), and
    its successors after restart(), always on the same port."""

    def __init__(self, port: int, log_path: Path):
        self.port = port
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [redis_server_bin(), "--port", str(self.port),
                 "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=tempfile.gettempdir(),
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if redis_ping(self.port, timeout=0.5):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING "
                           f"within {timeout}s\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL (an outage, not a shutdown), and wait for the exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> "RedisServer":
        self.kill()
        return self.start()

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")[-limit:]
        except OSError:
            return ""


def start_redis(log_dir: Path) -> RedisServer:
    """A redis-server on a free port (retried if the port was taken meanwhile)."""
    error = None
    for attempt in range(3):
        server = RedisServer(free_port(), log_dir / f"redis-{attempt}.log")
        try:
            return server.start()
        except RuntimeError as e:
            error = e
            if "in use" not in server.log_tail():
                break
    raise error


def wait_ready(server: "Herald", timeout: float = 10.0) -> dict:
    """Waits for GET /ready to answer 200; returns its body."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = server.http.get(server.url + "/ready", timeout=1)
            last = f"{r.status_code} {r.text[:200]}"
            if r.status_code == 200:
                return r.json()
        except requests.RequestException as e:
            last = str(e)
        time.sleep(0.05)
    raise AssertionError(f"{server.url}/ready not 200 within {timeout}s: {last}")


@dataclasses.dataclass
class Cluster:
    """A redis-server and two heralds sharing it."""
    redis: RedisServer
    a: "Herald"
    b: "Herald"


class ClusterFactory:
    """Starts clusters (redis-server + two heralds with --redis-url) and
    stops them all at teardown; every herald must exit 0 on SIGTERM."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.made: list = []

    def __call__(self) -> Cluster:
        n = len(self.made)
        redis = start_redis(self.log_dir)
        heralds = []
        self.made.append((redis, heralds))
        for name in "ab":
            h = Herald(self.log_dir / f"herald-{n}{name}.log",
                       ["--redis-url", redis.url])
            _RUNNING.append(h)
            heralds.append(h)
            h.start()
        for h in heralds:
            assert wait_ready(h) == {"status": "ready", "adapter": "redis"}
        return Cluster(redis, *heralds)

    def close(self) -> list:
        problems = []
        for redis, heralds in self.made:
            for h in heralds:
                code = h.stop()
                _RUNNING.remove(h)
                if code != 0:
                    problems.append(f"herald on port {h.port} exited with {code}"
                                    f"\n{h.log_tail()}")
            redis.kill()
        return problems


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    """Two heralds sharing one real redis-server, for a test module."""
    factory = ClusterFactory(tmp_path_factory.mktemp("cluster"))
    try:
        yield factory()
    finally:
        problems = factory.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def new_cluster(tmp_path_factory):
    """Factory of clusters of a test's own (for tests that restart Redis)."""
    factory = ClusterFactory(tmp_path_factory.mktemp("cluster"))
    try:
        yield factory
    finally:
        problems = factory.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def new_herald(tmp_path):
    """Factory: new_herald(*args) -> a herald of the test's own, started with
    extra CLI args; stopped at teardown, where it must exit 0."""
    made: list = []

    def _start(*args: str) -> Herald:
        h = Herald(tmp_path / f"herald-{len(made)}.log", list(args))
        _RUNNING.append(h)
        made.append(h)
        return h.start()

    yield _start
    problems = []
    for h in made:
        code = h.stop()
        _RUNNING.remove(h)
        if code != 0:
            problems.append(f"herald on port {h.port} exited with {code}\n{h.log_tail()}")
    assert not problems, "\n".join(problems)


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
# replies to subscribe / unsubscribe (PROTOCOL.md sections 1 and 4)
# --------------------------------------------------------------------------

def is_session_event(event: str, data: Any, session_id: Optional[str] = None) -> bool:
    """Whether (event, data) is a published session event: one of the five,
    carrying an integer seq. Not a reply such as `subscribed` (which carries a
    seq too) nor a request error (no seq)."""
    return (event in EVENT_NAMES and isinstance(data, dict)
            and isinstance(data.get("seq"), int)
            and not isinstance(data.get("seq"), bool)
            and (session_id is None or data.get("sessionId") == session_id))


def assert_subscribed(payload: Any, session_id: str, seq: Optional[int] = 0,
                      epoch: Optional[str] = None,
                      resume: Optional[dict] = None) -> dict:
    """A `subscribed` payload, exactly: {sessionId, timestamp, seq, epoch};
    for a resume (`resume` given) also recovered and replayed, and reason
    when not recovered. `seq` is the session's last seq when the
    subscription took effect (None: not known in advance); `epoch`, when
    given, must match; `resume` is {recovered, replayed?, reason?}."""
    what = f"subscribed {payload!r}"
    assert isinstance(payload, dict), what
    keys = {"sessionId", "timestamp", "seq", "epoch"}
    if resume is not None:
        keys |= {"recovered", "replayed"}
        if not resume["recovered"]:
            keys.add("reason")
    assert set(payload) == keys, f"{what}: fields should be {sorted(keys)}"
    assert payload["sessionId"] == session_id, what
    assert_iso8601(payload["timestamp"], "subscribed.timestamp")
    assert isinstance(payload["epoch"], str) and EPOCH.match(payload["epoch"]), (
        f"{what}: epoch is not 12 lowercase hex digits")
    if epoch is not None:
        assert payload["epoch"] == epoch, f"{what}: expected epoch {epoch!r}"
    assert type(payload["seq"]) is int and payload["seq"] >= 0, what
    if seq is not None:
        assert payload["seq"] == seq, (
            f"{what}: expected seq {seq} (the session's last seq)")
    if resume is not None:
        assert payload["recovered"] is resume["recovered"], (
            f"{what}: expected recovered {resume['recovered']}")
        assert type(payload["replayed"]) is int and payload["replayed"] >= 0, what
        if "replayed" in resume:
            assert payload["replayed"] == resume["replayed"], (
                f"{what}: expected replayed {resume['replayed']}")
        if not resume["recovered"]:
            assert payload["reason"] == resume["reason"], (
                f"{what}: expected reason {resume['reason']!r}")
    return payload


def assert_subscribe_ack(ack: Any, session_id: str, seq: int, epoch: str) -> None:
    """A subscribe ack, exactly: {ok: true, sessionId, seq, epoch}."""
    expected = {"ok": True, "sessionId": session_id, "seq": seq, "epoch": epoch}
    assert ack == expected and type(ack["seq"]) is int, (
        f"subscribe ack: expected {expected!r}, got {ack!r}")


def assert_refusal_ack(ack: Any, code: str = "INVALID_SESSION_ID") -> None:
    """The ack of a refused request, exactly: {ok: false, error, code}."""
    assert isinstance(ack, dict), f"refusal ack should be an object, got {ack!r}"
    assert set(ack) == {"ok", "error", "code"}, f"refusal ack: {ack!r}"
    assert ack["ok"] is False and ack["code"] == code, f"refusal ack: {ack!r}"
    assert isinstance(ack["error"], str) and ack["error"].strip(), f"refusal ack: {ack!r}"


@dataclasses.dataclass
class Subscription:
    """What a subscribe got: the `subscribed` payload, the ack (None when
    none was asked for), and the held events that followed `subscribed` (the
    snapshot or the replay) as (event, data), in wire order."""
    event: dict
    ack: Optional[dict]
    held: list

    @property
    def epoch(self) -> str:
        return self.event["epoch"]

    @property
    def seq(self) -> int:
        return self.event["seq"]


# How long subscribe() watches for held events beyond those expected: they
# leave herald in one burst right behind `subscribed` and the ack.
SETTLE = 0.1


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

    def session_events(self, session_id: Optional[str] = None,
                       start: int = 0) -> list:
        """(event, payload) of the published session events (see
        is_session_event), of one session when given, in wire order, from
        index `start` of pairs() on."""
        return [(e, d) for e, d in self.pairs()[start:]
                if is_session_event(e, d, session_id)]

    def seqs(self, session_id: str) -> list:
        """The seqs of the session's events, in wire order."""
        return [d["seq"] for _, d in self.session_events(session_id)]


class Conn:
    """A connected stock socketio.Client with its collector and wire tap;
    `herald` (when known) is the server it is connected to."""

    def __init__(self, sio: socketio.Client, events: Collector, wire: WireTap,
                 herald: Optional["Herald"] = None):
        self.sio = sio
        self.events = events
        self.wire = wire
        self.herald = herald

    @property
    def sid(self) -> Optional[str]:
        return self.sio.get_sid("/")

    def subscribe(self, session_id, payload: Any = None, ack: bool = True, *,
                  seq: Optional[int] = 0, epoch: Optional[str] = None,
                  snapshot: Sequence = (), resume: Optional[dict] = None,
                  replay: Optional[Sequence] = None) -> Subscription:
        """Subscribes (payload defaults to the id string), waits for the
        `subscribed` reply (and the ack, with ack=True) and for the held
        events that follow it; asserts all of them exactly.

        - seq: the session's last seq, which `subscribed` and the ack must
          carry (default 0: nothing was published to it; None: not known in
          advance).
        - epoch: the epoch they must carry, when known; when the connection
          knows its herald, it must also be what GET /api/v1/sessions/{id}
          reports.
        - snapshot: for a subscribe without `since`, the (event, data)
          expected right after `subscribed`, exactly as first delivered.
        - resume: required when the payload has `since`: {recovered,
          replayed?, reason?} (see assert_subscribed). The replay must then
          be `replayed` events in seq order, exactly since+1..seq when
          recovered, and equal to `replay` when given.
        """
        data = session_id if payload is None else payload
        since = data.get("since") if isinstance(data, dict) else None
        resuming = since is not None
        assert not resuming or resume is not None, (
            f"subscribe {data!r}: say what the resume reports (resume=...)")
        mine = lambda d: d["sessionId"] == session_id  # noqa: E731
        before = self.events.count("subscribed", mine)
        wire_before = len([1 for e, d in self.wire.pairs()
                           if e == "subscribed" and _safe(mine, d)])
        result = None
        if ack:
            result = self.sio.call("subscribe", data, timeout=WAIT)
        else:
            self.sio.emit("subscribe", data)
        reply = self.events.wait_for_count(
            "subscribed", before + 1, mine,
            what=f"sessionId == {session_id!r}")[before]
        assert_subscribed(reply, session_id, seq, epoch,
                          resume if resuming else None)
        if ack:
            assert_subscribe_ack(result, session_id, reply["seq"], reply["epoch"])
        if self.herald is not None:
            state = self.herald.session(session_id)
            assert state["epoch"] == reply["epoch"], (
                f"GET session {session_id}: epoch {state['epoch']!r}, "
                f"subscribed said {reply['epoch']!r}")

        # What follows this `subscribed` on the wire: the session's events
        # up to its seq.
        def held_now():
            pairs = self.wire.pairs()
            mine_at = [i for i, (e, d) in enumerate(pairs)
                       if e == "subscribed" and _safe(mine, d)]
            if len(mine_at) <= wire_before:
                return []
            start = mine_at[wire_before] + 1
            return [(e, d) for e, d in self.wire.session_events(session_id, start)
                    if d["seq"] <= reply["seq"]]

        expected = replay if resuming else snapshot
        count = len(expected) if expected is not None else reply["replayed"]
        deadline = time.monotonic() + WAIT
        while len(held_now()) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        if reply["seq"] > 0:
            time.sleep(SETTLE)  # one too many would show by now
        held = held_now()
        if expected is not None:
            want = [(e, d) for e, d in expected]
            assert held == want, (
                f"the events that followed subscribed {reply!r}:\n"
                f" expected: {want!r}\n got:      {held!r}")
        if resuming:
            seqs = [d["seq"] for _, d in held]
            assert len(held) == reply["replayed"], (
                f"replayed {reply['replayed']}, got seqs {seqs}")
            assert seqs == sorted(set(seqs)), f"replay not in seq order: {seqs}"
            if resume["recovered"]:
                assert seqs == list(range(since + 1, reply["seq"] + 1)), (
                    f"a recovered resume after {since} replays exactly "
                    f"{since + 1}..{reply['seq']}, got {seqs}")
        return Subscription(reply, result, held)

    def unsubscribe(self, session_id, payload: Any = None,
                    ack: bool = True) -> Optional[dict]:
        """Unsubscribes and waits for `unsubscribed`; asserts it and the ack
        exactly ({sessionId, timestamp} and {ok: true, sessionId})."""
        mine = lambda d: d["sessionId"] == session_id  # noqa: E731
        before = self.events.count("unsubscribed", mine)
        data = session_id if payload is None else payload
        result = None
        if ack:
            result = self.sio.call("unsubscribe", data, timeout=WAIT)
            assert result == {"ok": True, "sessionId": session_id}, (
                f"unsubscribe ack: expected {{ok: true, sessionId: "
                f"{session_id!r}}}, got {result!r}")
        else:
            self.sio.emit("unsubscribe", data)
        r = self.events.wait_for_count(
            "unsubscribed", before + 1, mine,
            what=f"sessionId == {session_id!r}")[before]
        assert set(r) == {"sessionId", "timestamp"}, f"unsubscribed payload: {r!r}"
        assert_iso8601(r["timestamp"], "unsubscribed.timestamp")
        return result

    def cut(self) -> None:
        """Cuts the connection under the client, as a network would: the
        WebSocket's TCP connection is shut down, with no close frame and no
        Socket.IO disconnect. The client sees a transport error (and
        reconnects, if it was made to)."""
        assert self.sio.transport() == "websocket", "cut() needs a websocket"
        self.sio.eio.ws.abort()

    def disconnect(self) -> None:
        try:
            self.sio.disconnect()
        except Exception:
            pass


def make_client(url: str, transports=None, name: str = "client",
                herald: Optional[Herald] = None, **client_kwargs) -> Conn:
    """A connected stock socketio.Client (reconnection off unless asked for);
    with `herald`, subscribe() also checks the epoch its API reports."""
    client_kwargs.setdefault("reconnection", False)
    sio = socketio.Client(**client_kwargs)
    events = Collector(name)
    sio.on("*", events)
    sio.on("disconnect", lambda *a: events.add("__disconnect__", list(a)))
    wire = WireTap(sio)
    sio.connect(url, socketio_path=SOCKETIO_PATH, transports=transports,
                wait_timeout=WAIT)
    return Conn(sio, events, wire, herald)


@pytest.fixture
def connect(herald):
    """Factory: connect(transports=None, name=...) -> Conn; all disconnected
    at teardown."""
    made: list = []

    def _connect(transports=None, name: Optional[str] = None, **kw) -> Conn:
        conn = make_client(herald.url, transports,
                           name or f"client{len(made) + 1}", herald, **kw)
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
