"""Tokens with python-socketio (PROTOCOL.md section 5): `auth={"token": ...}`
on both transports, refusals as connect_error messages, FORBIDDEN for a
session the token does not grant, and a subscribe token; tokens minted with
PyJWT, as a Python backend would."""

import threading
import time

import jwt
import pytest
import socketio

from conftest import (
    _RUNNING, SOCKETIO_PATH, WAIT, Herald, new_session_id, progress_payload,
)

SECRET = "python-interop-secret-0123456789abcdef"


def token(sessions, ttl=300, key=SECRET, **claims):
    now = int(time.time())
    return jwt.encode({"sessions": sessions, "exp": now + ttl, "iat": now,
                       "sub": "py-user", **claims}, key, algorithm="HS256")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Herald(tmp_path_factory.mktemp("herald-tokens") / "herald.log",
               ["--jwt-secret", SECRET])
    _RUNNING.append(s)
    s.start()
    yield s
    s.stop()
    _RUNNING.remove(s)


class Client:
    """A stock socketio.Client that records what it receives."""

    def __init__(self):
        self.sio = socketio.Client(reconnection=False)
        self.events = []
        self.refused = []
        self.changed = threading.Condition()
        self.sio.on("*", self._record)
        self.sio.on("connect_error", self._refused)

    def _record(self, event, data=None):
        with self.changed:
            self.events.append((event, data))
            self.changed.notify_all()

    def _refused(self, data=None):
        with self.changed:
            self.refused.append(data)
            self.changed.notify_all()

    def connect(self, url, auth, transports):
        self.sio.connect(url, socketio_path=SOCKETIO_PATH, auth=auth,
                         transports=transports, wait_timeout=WAIT)
        return self

    def wait(self, event, pred=lambda d: True):
        deadline = time.monotonic() + WAIT
        with self.changed:
            while True:
                for e, d in self.events:
                    if e == event and pred(d):
                        return d
                left = deadline - time.monotonic()
                assert left > 0, f"no {event} matching; got {self.events!r}"
                self.changed.wait(left)

    def of(self, session):
        return [(e, d) for e, d in self.events
                if isinstance(d, dict) and d.get("sessionId") == session]


@pytest.fixture
def clients():
    made = []

    def make():
        c = Client()
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.sio.disconnect()
        except Exception:
            pass


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]])
def test_auth_token_grants_its_sessions_only(server, clients, transports):
    mine, theirs = new_session_id("tenant-3:doc"), new_session_id("tenant-4:doc")
    server.publish(theirs, "progress", progress_payload(10))
    c = clients().connect(server.url, {"token": token(["tenant-3:*"])}, transports)

    ack = c.sio.call("subscribe", mine, timeout=WAIT)
    assert ack["ok"] is True, ack

    ack = c.sio.call("subscribe", theirs, timeout=WAIT)
    assert ack["ok"] is False and ack["code"] == "FORBIDDEN", ack
    assert set(ack) == {"ok", "error", "code", "sessionId"}
    assert ack["sessionId"] == theirs
    err = c.wait("error", lambda d: d.get("code") == "FORBIDDEN")
    assert err["sessionId"] == theirs and theirs in err["error"]

    server.publish(theirs, "progress", progress_payload(20))
    server.publish(mine, "progress", progress_payload(30))
    c.wait("progress", lambda d: d["sessionId"] == mine)
    time.sleep(0.2)
    assert c.of(theirs) == [("error", err)], "nothing of the refused session"


def test_a_subscribe_token_widens_one_subscription(server, clients):
    other = new_session_id("tenant-9:doc")
    server.publish(other, "progress", progress_payload(10))
    c = clients().connect(server.url, {"token": token(["tenant-3:*"])}, ["websocket"])
    ack = c.sio.call("subscribe", {"sessionId": other, "token": token([other])},
                     timeout=WAIT)
    assert ack["ok"] is True, ack
    snapshot = c.wait("progress", lambda d: d["sessionId"] == other)
    assert snapshot["seq"] == 1


@pytest.mark.parametrize("auth, message", [
    (None, "unauthorized: missing token"),
    ({"token": "garbage"}, "unauthorized: malformed token"),
    ({"token": token(["*"], ttl=-30)}, "unauthorized: token expired"),
    ({"token": token(["*"], key="not-the-secret-0123456789abcdef-xyz")},
     "unauthorized: bad signature"),
])
def test_refusals_reach_python_socketio(server, clients, auth, message):
    c = clients()
    with pytest.raises(socketio.exceptions.ConnectionError):
        c.connect(server.url, auth, ["websocket"])
    assert c.refused, "connect_error was not delivered"
    assert c.refused[0]["message"].startswith(message), c.refused
