"""herald_resume: follow herald sessions with python-socketio's AsyncClient and
lose nothing across reconnects. The Python twin of
client-examples/resume/herald-resume.js; one file, python-socketio only.

    import socketio
    from herald_resume import watch_session

    sio = socketio.AsyncClient()
    watch = watch_session(sio, 'doc-42', on_event, on_lost=on_lost)
    await sio.connect('http://localhost:3000', socketio_path='/socket.io/')
    ...
    await watch.stop()          # unsubscribe (herald acked); the client stays connected

    def on_event(name, data):   # or async def: each event once, in seq order
        print(name, data['seq'])

What it does (herald's protocol, section 4):
- remembers the last `seq` and the `epoch` of the session;
- subscribes on every connect: the first time without `since` (herald sends a
  snapshot: the latest progress, and the end if the session ended), after that
  with {sessionId, since: seq, epoch}, so herald replays exactly what was
  missed;
- hands each event over once: one with seq <= the last one is dropped
  (defence in depth), and a hole in a live stream (a seq skipped) makes it
  resubscribe from the last seq instead of going on without it;
- reports recovered: false (herald's `reason`: "history_truncated" or
  "epoch_changed") through on_lost, before the events herald still has;
- asks again when herald does not answer a subscribe within 10 s.

The callbacks (plain or async functions) are called one at a time, in order,
from a task of the watch's own. The helper registers the client's handlers
for `connect`, `subscribed` and the five session events (python-socketio
keeps one handler per event), shared by every session watched on that client;
a `connect` handler registered before it is still called.

Over HTTP long-polling, herald sends all the packets waiting for a client in
one response, and python-engineio's client drops the connection when a
response holds more than engineio.payload.Payload.max_decode_packets packets
(16 by default, a guard meant for servers): every replay longer than that
would end in a reconnect, and a replay again. watch_session() raises that
limit, for the whole process, to MAX_DECODE_PACKETS.

Only socketio.AsyncClient: the sync socketio.Client runs every event's
handler in a thread of its own, so events do not reach a handler in the order
they arrived, and putting them back in order needs the very seq bookkeeping
done here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from typing import Any, Callable, Optional

from engineio.payload import Payload

logger = logging.getLogger(__name__)

SESSION_EVENTS = ('progress', 'model_result', 'clarification', 'completed', 'error')

RETRY_UNAVAILABLE_SECS = 2.0
ANSWER_TIMEOUT_SECS = 10.0
STOP_TIMEOUT_SECS = 5.0

# herald queues at most 4096 packets for a socket (SOCKET_BUFFER_PACKETS).
MAX_DECODE_PACKETS = 4096

# client -> {session id: SessionWatch}: the handlers are registered once per client.
_watches: 'weakref.WeakKeyDictionary[Any, dict]' = weakref.WeakKeyDictionary()


def watch_session(sio, session_id: str, on_event: Optional[Callable] = None, *,
                  on_subscribed: Optional[Callable] = None,
                  on_lost: Optional[Callable] = None,
                  on_refused: Optional[Callable] = None,
                  position: Optional[dict] = None,
                  since: Optional[int] = None,
                  token: Optional[str] = None,
                  answer_timeout: float = ANSWER_TIMEOUT_SECS) -> 'SessionWatch':
    """Watch `session_id` on `sio` (a socketio.AsyncClient, connected or not);
    call from a coroutine.

    on_event(name, data): every session event once, in seq order.
    on_subscribed(info), on_lost(info): info is {sessionId, seq, epoch, since,
      recovered, replayed, reason} (since None: a snapshot); on_lost when
      herald says recovered: false (reload what you show).
    on_refused(reply): herald refused the subscription ({ok, error, code}).
    position: {seq, epoch} saved from an earlier run (`watch.position`), to
      resume from there; since: where to start otherwise (None: a snapshot,
      0: all the history herald holds).
    answer_timeout: seconds to wait for herald's answer to a subscribe
      before asking again.
    """
    Payload.max_decode_packets = max(Payload.max_decode_packets, MAX_DECODE_PACKETS)
    watches = _watches.get(sio)
    if watches is None:
        watches = _watches[sio] = {}
        _install(sio, watches)
    if session_id in watches:
        raise ValueError(f'{session_id} is already watched on this client')
    watch = SessionWatch(sio, session_id, on_event, on_subscribed, on_lost,
                         on_refused, position, since, token, answer_timeout)
    watches[session_id] = watch
    if sio.connected:
        watch._subscribe()
    return watch


def _install(sio, watches: dict) -> None:
    previous_connect = sio.handlers.get('/', {}).get('connect')

    async def on_connect(*args):
        for watch in list(watches.values()):
            watch._subscribe()
        if previous_connect is not None:
            result = previous_connect(*args)
            if inspect.isawaitable(result):
                await result

    def on_subscribed(reply):
        watch = watches.get(_session(reply))
        if watch is not None:
            watch._on_subscribed(reply)

    def handler(name):
        def on_session_event(data):
            watch = watches.get(_session(data))
            if watch is not None:
                watch._on_event(name, data)
        return on_session_event

    sio.on('connect', on_connect)
    sio.on('subscribed', on_subscribed)
    for name in SESSION_EVENTS:
        sio.on(name, handler(name))


def _session(data) -> Optional[str]:
    return data.get('sessionId') if isinstance(data, dict) else None


class SessionWatch:
    """One watched session: see watch_session()."""

    def __init__(self, sio, session_id, on_event, on_subscribed, on_lost,
                 on_refused, position, since, token, answer_timeout):
        self.sio = sio
        self.session_id = session_id
        self._callbacks = {'event': on_event, 'subscribed': on_subscribed,
                           'lost': on_lost, 'refused': on_refused}
        self._token = token
        self._answer_timeout = answer_timeout
        self._unanswered = None  # asks again if herald does not answer
        saved = position if position and isinstance(position.get('seq'), int) else None
        self._epoch = saved.get('epoch') if saved else None
        # The highest seq handed over (or resumed from); None: a snapshot is
        # still to come.
        self._last = saved['seq'] if saved else since
        self._skip_to = 0   # a snapshot skips the events up to here on purpose
        self._loss_to = 0   # herald said events up to here may be gone (counted in missed)
        self._asked = None  # the subscribe sent and not answered yet: events meanwhile are dropped
        self._active = True
        self.stats = {'received': 0, 'duplicates': 0, 'missed': 0, 'resyncs': 0}
        # The callbacks run in this task, one at a time, in order.
        self._queue: asyncio.Queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    @property
    def position(self) -> dict:
        """{seq, epoch}: where to resume from; save it to continue another run."""
        seq = None if self._last is None else max(self._last, self._skip_to)
        return {'seq': seq, 'epoch': self._epoch}

    async def stop(self) -> None:
        """Unsubscribe (waiting up to 5 s for herald's ack, so that a
        disconnect right after leaves herald nothing to clean up), and return
        once the callbacks already due have run."""
        if not self._active:
            return
        self._active = False
        if self._unanswered is not None:
            self._unanswered.cancel()
        _watches.get(self.sio, {}).pop(self.session_id, None)
        if self.sio.connected:
            try:
                await self.sio.call('unsubscribe', self.session_id, timeout=STOP_TIMEOUT_SECS)
            except Exception:  # timed out, or the connection went meanwhile
                pass
        self._queue.put_nowait(None)
        await self._worker

    # -- inside: called by the client's handlers, in the order events arrive

    def _subscribe(self, *before) -> None:
        since = self.position['seq']
        payload = {'sessionId': self.session_id}
        if since is not None:
            payload['since'] = since
            if self._epoch:
                payload['epoch'] = self._epoch
        if self._token:
            payload['token'] = self._token
        self._asked = payload
        # herald answers every subscribe, but a request can still be lost
        # (herald may drop one sent the instant the connection opened).
        if self._unanswered is not None:
            self._unanswered.cancel()
        self._unanswered = asyncio.get_running_loop().call_later(
            self._answer_timeout, self._retry, payload)

        def on_ack(ack=None, *_):
            if not self._active or not isinstance(ack, dict) or ack.get('ok') is not False:
                return
            if ack.get('code') == 'UNAVAILABLE':
                # herald could not reach its store (Redis) in time: ask again.
                asyncio.get_running_loop().call_later(RETRY_UNAVAILABLE_SECS, self._retry, payload)
            else:
                self._asked = None
                self._queue.put_nowait(('refused', (ack,)))

        self._send(*before, ('subscribe', payload, on_ack))

    def _retry(self, payload) -> None:
        if self._active and self.sio.connected and self._asked is payload:
            self._subscribe()

    def _send(self, *emits) -> None:
        async def send():
            for event, payload, callback in emits:
                await self.sio.emit(event, payload, callback=callback)
        asyncio.get_running_loop().create_task(send())

    def _on_subscribed(self, reply: dict) -> None:
        if self._asked is None or not self._active:
            return  # not the answer to ours
        since = self._asked.get('since')
        self._asked = None
        self._unanswered.cancel()
        self._epoch = reply.get('epoch')
        recovered = reply.get('recovered')
        if since is None:
            # A snapshot: events up to reply.seq come (the latest state) or not.
            self._last = self._last or 0
            self._skip_to = reply['seq']
            self._loss_to = 0
        else:
            # A replay of everything after `since` that herald holds, in
            # order. With a new epoch the old seqs mean nothing: the replay
            # is the session anew.
            self._last = 0 if reply.get('reason') == 'epoch_changed' else since
            self._skip_to = 0
            self._loss_to = reply['seq'] if recovered is False else 0
        info = {'sessionId': self.session_id, 'seq': reply['seq'],
                'epoch': self._epoch, 'since': since, 'recovered': recovered,
                'replayed': reply.get('replayed'), 'reason': reply.get('reason')}
        self._queue.put_nowait(('subscribed', (info,)))
        if recovered is False:
            self._queue.put_nowait(('lost', (info,)))

    def _on_event(self, name: str, data: dict) -> None:
        seq = data.get('seq')
        if not isinstance(seq, int) or not self._active:
            return  # a refusal, not a session event
        if self._asked is not None or self._last is None:
            return  # leftovers from before a resubscribe: the replay brings them again
        if seq <= self._last:
            self.stats['duplicates'] += 1
            return
        start = self.position['seq']
        if seq > start + 1:
            if seq > max(start, self._loss_to) + 1:
                # A hole herald did not announce: get it from herald's
                # history rather than go on without it.
                self.stats['resyncs'] += 1
                self._subscribe(('unsubscribe', self.session_id, None))
                return
            self.stats['missed'] += seq - start - 1  # announced by on_lost
        self._last = seq
        self.stats['received'] += 1
        self._queue.put_nowait(('event', (name, data)))

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            which, args = item
            callback = self._callbacks[which]
            if callback is None:
                continue
            try:
                result = callback(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # The app's bug: say so, and go on with the next event.
                logger.exception('herald_resume: the %s callback of %s failed', which, self.session_id)
