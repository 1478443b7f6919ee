// herald-resume.js: follow herald sessions over a stock socket.io-client
// socket and lose nothing across reconnects. One ES module, no dependencies
// and no build step: the browser page imports it as is, the React hook
// through Vite, Node programs with `import`.
//
//   import { watchSession } from './herald-resume.js';
//   const stop = watchSession(socket, 'doc-42', {
//     progress(data) {}, model_result(data) {}, clarification(data) {},
//     completed(data) {}, error(data) {},  // each session event once, in seq order
//     subscribed(info) {},                 // every (re)subscription took effect
//     lost(info) {},                       // herald no longer has some events: reload what you show
//     refused(reply) {},                   // herald refused the subscription: { error, code }
//   }, { storage: sessionStorage });       // optional: survive a page reload
//   ...
//   await stop();                          // unsubscribe (herald acked) and remove the listeners
//
// What it does (herald's protocol, section 4):
// - remembers the last `seq` and the `epoch` of the session;
// - subscribes on every `connect`: the first time without `since` (herald
//   sends a snapshot: the latest progress, and the end if the session ended),
//   after that with `{ sessionId, since: seq, epoch }`, so herald replays
//   exactly what was missed;
// - hands each event to the app once: an event with seq <= the last one is
//   dropped (defence in depth), and a hole in a live stream (a seq skipped)
//   makes it resubscribe from the last seq instead of going on without it;
// - reports `recovered: false` (herald says `reason`: "history_truncated" or
//   "epoch_changed") through `lost`, before the events herald still has;
// - asks again when herald does not answer a subscribe within 10 s.

/** The session events herald delivers; each carries `sessionId` and `seq`. */
export const SESSION_EVENTS = Object.freeze(['progress', 'model_result', 'clarification', 'completed', 'error']);

const RETRY_UNAVAILABLE_MS = 2000;
const ANSWER_TIMEOUT_MS = 10000;
const STOP_TIMEOUT_MS = 5000;

/**
 * Watch one session on `socket` (a socket.io-client Socket, connected or not).
 *
 * handlers: any of `progress`, `model_result`, `clarification`, `completed`,
 *   `error` (data), `event` (name, data) for all five, `subscribed` (info),
 *   `lost` (info), `refused` ({ ok: false, error, code }).
 *   info: { sessionId, seq, epoch, since, recovered, replayed, reason }
 *   (`since` undefined: a snapshot; `recovered`, `replayed`, `reason` only
 *   with `since`).
 * options:
 *   storage     a Web Storage (sessionStorage, localStorage) or anything with
 *               getItem/setItem: the position is saved there on every event and
 *               read back at the start, so a reloaded page resumes where it was.
 *   storageKey  default `herald:<sessionId>`.
 *   since       where to start when nothing is stored: undefined (a snapshot)
 *               or a seq (0: all the history herald holds).
 *   token       a JWT sent with every subscribe (herald with JWT auth).
 *   answerTimeoutMs  how long to wait for herald's answer to a subscribe
 *               before asking again (default 10000).
 *
 * Returns `stop()`, which removes the listeners and unsubscribes; its promise
 * resolves once herald acknowledged that (or at once when not connected, or
 * after 5 s without an answer), so `stop().then(() => socket.disconnect())`
 * leaves herald nothing to clean up. `stop.stats` is { received, duplicates,
 * missed, resyncs } (saved with the position), `stop.position` is
 * { seq, epoch }.
 */
export function watchSession(socket, sessionId, handlers = {}, options = {}) {
  const { storage = null, storageKey = `herald:${sessionId}`, token, answerTimeoutMs = ANSWER_TIMEOUT_MS } = options;
  const saved = load();
  let epoch = saved?.epoch ?? null;
  // The highest seq handed to the app (or resumed from); null: a snapshot is
  // still to come.
  let last = saved ? saved.seq : Number.isInteger(options.since) ? options.since : null;
  let skipTo = 0; // a snapshot skips the events up to here on purpose
  let lossTo = 0; // herald said events up to here may be gone (counted in `missed`)
  let asked = null; // the subscribe sent and not answered yet; events meanwhile are dropped
  let active = true;
  let unanswered = null; // the timer that asks again if herald does not answer
  const stats = { received: 0, duplicates: 0, missed: 0, resyncs: 0, ...saved?.stats };

  // Where to resume from: everything up to here was handed over or skipped.
  const position = () => (last === null ? null : Math.max(last, skipTo));

  function load() {
    try {
      const value = storage && JSON.parse(storage.getItem(storageKey));
      return value && Number.isInteger(value.seq) ? value : null;
    } catch {
      return null;
    }
  }
  function save() {
    storage?.setItem(storageKey, JSON.stringify({ seq: position(), epoch, stats }));
  }

  function subscribe() {
    const since = position();
    const payload = since === null ? { sessionId } : { sessionId, since };
    if (since !== null && epoch) payload.epoch = epoch;
    if (token) payload.token = token;
    asked = payload;
    // herald answers every subscribe, but a request can still be lost (herald
    // may drop one sent the instant the connection opened): ask again.
    clearTimeout(unanswered);
    unanswered = setTimeout(() => active && socket.connected && asked === payload && subscribe(), answerTimeoutMs);
    socket.emit('subscribe', payload, (ack) => {
      if (!active || !ack || ack.ok !== false) return;
      if (ack.code === 'UNAVAILABLE') {
        // herald could not reach its store (Redis) in time: ask again.
        setTimeout(() => active && socket.connected && asked === payload && subscribe(), RETRY_UNAVAILABLE_MS);
      } else {
        asked = null;
        clearTimeout(unanswered);
        handlers.refused?.(ack);
      }
    });
  }

  function onSubscribed(reply) {
    if (!reply || reply.sessionId !== sessionId || !asked) return; // not the answer to ours
    const { since } = asked;
    asked = null;
    clearTimeout(unanswered);
    epoch = reply.epoch;
    if (since === undefined) {
      // A snapshot: events up to reply.seq come (the latest state) or not.
      last ??= 0;
      skipTo = reply.seq;
      lossTo = 0;
    } else {
      // A replay of everything after `since` that herald holds, in order. With a
      // new epoch the old seqs mean nothing: the replay is the session anew.
      last = reply.reason === 'epoch_changed' ? 0 : since;
      skipTo = 0;
      lossTo = reply.recovered === false ? reply.seq : 0;
    }
    save();
    const info = { sessionId, seq: reply.seq, epoch, since, recovered: reply.recovered, replayed: reply.replayed, reason: reply.reason };
    handlers.subscribed?.(info);
    if (reply.recovered === false) handlers.lost?.(info);
  }

  function onEvent(name, data) {
    if (!data || data.sessionId !== sessionId || typeof data.seq !== 'number') return; // another session, or a refusal
    if (asked || last === null) return; // leftovers from before a resubscribe: the replay brings them again
    const { seq } = data;
    if (seq <= last) {
      stats.duplicates += 1;
      save();
      return;
    }
    const from = position();
    if (seq > from + 1) {
      if (seq > Math.max(from, lossTo) + 1) {
        // A hole herald did not announce: get it from herald's history rather
        // than go on without it. Until herald answers, what arrives is
        // dropped: the replay brings it again, in order.
        stats.resyncs += 1;
        socket.emit('unsubscribe', sessionId);
        subscribe();
        return;
      }
      stats.missed += seq - from - 1; // announced by `lost`
    }
    last = seq;
    stats.received += 1;
    save();
    handlers[name]?.(data);
    handlers.event?.(name, data);
  }

  const listeners = SESSION_EVENTS.map((name) => [name, (data) => onEvent(name, data)]);
  listeners.push(['subscribed', onSubscribed], ['connect', subscribe]);
  for (const [name, fn] of listeners) socket.on(name, fn);
  if (socket.connected) subscribe();

  function stop() {
    const subscribed = active && socket.connected;
    active = false;
    clearTimeout(unanswered);
    for (const [name, fn] of listeners) socket.off(name, fn);
    if (!subscribed) return Promise.resolve();
    return new Promise((resolve) => socket.timeout(STOP_TIMEOUT_MS).emit('unsubscribe', sessionId, () => resolve()));
  }
  stop.stats = stats;
  Object.defineProperty(stop, 'position', { get: () => ({ seq: position(), epoch }) });
  return stop;
}
