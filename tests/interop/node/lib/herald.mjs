// Shared helpers for the Node interop suite: run a real herald process on
// 127.0.0.1, talk to its HTTP API with the built-in fetch, and drive stock
// socket.io-client sockets against it.
//
// Every herald started here is registered so that, whatever happens in a test,
// `process.on('exit')` still SIGKILLs it; tests also stop it in `after`.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { io } from 'socket.io-client';
import {
  REPO_ROOT,
  HERALD_ENV_VARS,
  QUIET_LOG_LEVEL,
  startLinePort,
  sample,
  EVENT_TYPES,
  FIXTURES,
  cases,
  build,
} from '../../../fixtures/fixtures.mjs';

// The shared fixtures (tests/fixtures/events.json), for the tests.
export { REPO_ROOT, HERALD_ENV_VARS, sample, EVENT_TYPES, FIXTURES, cases, build };

/** The herald binary under test: $HERALD_BIN, else the debug build. */
export const HERALD_BIN = process.env.HERALD_BIN || path.join(REPO_ROOT, 'target/debug/herald');

export const HOST = '127.0.0.1';

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

const liveChildren = new Set();
process.on('exit', () => {
  for (const child of liveChildren) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/**
 * Spawns a server process whose output goes to `onLog` and which is killed
 * if the test process exits first. Returns the child, a promise of its exit
 * `{ code, signal }`, and a promise that rejects if it could not be spawned.
 */
export function spawnTracked(bin, argv, { env, onLog, cwd }) {
  const child = spawn(bin, argv, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  liveChildren.add(child);
  const onData = (chunk) => onLog(chunk.toString());
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      liveChildren.delete(child);
      onLog(`--- exited code=${code} signal=${signal}\n`);
      resolve({ code, signal });
    });
  });
  const spawnError = new Promise((_, reject) =>
    child.on('error', (e) => reject(new Error(`cannot spawn ${bin}: ${e.message}`))),
  );
  spawnError.catch(() => {});
  return { child, exited, spawnError };
}

/**
 * A TCP port that was free a moment ago: listen on port 0, read it, close.
 * Racy (someone else may take it before it is used): only for what cannot
 * report the port it bound (redis-server) and for "nothing listens here".
 * herald itself starts on --port 0 and reports its port.
 */
export async function freePort() {
  const server = net.createServer();
  server.listen(0, HOST);
  await once(server, 'listening');
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * One herald process (and its successors after `restart()`). Create with
 * `await startHerald(...)`. Without a `port`, the first start is on --port 0
 * and the port is read from herald's start line; later starts (restart) use
 * that same port on purpose, so that clients reconnect to where they were.
 * The log filter is `logLevel` (default: warnings and the start line; pass
 * 'info' to read what herald logs at info), unless `args` set --log-level.
 */
export class Herald {
  constructor({ port, args = [], env = {}, echoLogs = !!process.env.HERALD_TEST_LOGS, logLevel = QUIET_LOG_LEVEL }) {
    this.port = port;
    this.args = args;
    this.extraEnv = env;
    this.echoLogs = echoLogs;
    this.logLevel = logLevel;
    this.url = port === undefined ? undefined : `http://${HOST}:${port}`;
    this.child = null;
    this.exitCode = undefined;
    this.exitSignal = undefined;
    this._logs = [];
    this._exited = null;
  }

  /** Everything herald wrote to stdout/stderr so far, over all its runs. */
  logs() {
    return this._logs.join('');
  }

  /** The last `n` lines of the logs (for error messages). */
  logTail(n = 30) {
    return this.logs().split('\n').slice(-n).join('\n');
  }

  get running() {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  /**
   * Spawn herald, read its port from its start line, and resolve once GET
   * /health answers 200.
   */
  async start({ timeoutMs = 15000 } = {}) {
    if (this.running) throw new Error('herald is already running');
    const env = { ...process.env };
    for (const name of HERALD_ENV_VARS) delete env[name];
    Object.assign(env, { NO_COLOR: '1' }, this.extraEnv);
    const logLevel = this.args.includes('--log-level') ? [] : ['--log-level', this.logLevel];
    const argv = ['--host', HOST, '--port', String(this.port ?? 0), ...logLevel, ...this.args];
    this._logs.push(`--- spawn ${HERALD_BIN} ${argv.join(' ')}\n`);
    const spawnedAt = this._logs.length;
    const { child, exited, spawnError } = spawnTracked(HERALD_BIN, argv, {
      env,
      // A directory without a .env: a developer's .env in the checkout must
      // not reach the tests either.
      cwd: os.tmpdir(),
      onLog: (text) => {
        this._logs.push(text);
        if (this.echoLogs) process.stderr.write(`[herald:${this.port ?? '?'}] ${text}`);
      },
    });
    this.child = child;
    this.exitCode = undefined;
    this.exitSignal = undefined;
    this._exited = exited.then((result) => {
      this.exitCode = result.code;
      this.exitSignal = result.signal;
      return result;
    });

    const deadline = Date.now() + timeoutMs;
    let listening = false;
    for (;;) {
      if (!this.running) {
        await Promise.race([this._exited, spawnError]);
        throw new Error(
          `herald exited before becoming healthy (code=${this.exitCode} signal=${this.exitSignal})\n${this.logTail()}`,
        );
      }
      if (!listening) {
        const port = startLinePort(this._logs.slice(spawnedAt).join(''));
        if (port !== undefined) {
          if (this.port !== undefined && port !== this.port) {
            await this.kill();
            throw new Error(`herald listens on port ${port}, not ${this.port}\n${this.logTail()}`);
          }
          this.port = port;
          this.url = `http://${HOST}:${port}`;
          listening = true;
        }
      }
      if (!listening) {
        if (Date.now() > deadline) {
          await this.kill();
          throw new Error(`herald logged no start line within ${timeoutMs} ms\n${this.logTail()}`);
        }
        await Promise.race([sleep(10), spawnError]);
        continue;
      }
      try {
        const res = await fetch(`${this.url}/health`, { signal: AbortSignal.timeout(1000) });
        const body = await res.text();
        if (res.status === 200) return this;
        this._logs.push(`--- /health answered ${res.status} ${body}\n`);
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        await this.kill();
        throw new Error(`herald on port ${this.port} not healthy after ${timeoutMs} ms\n${this.logTail()}`);
      }
      await Promise.race([sleep(50), spawnError]);
    }
  }

  /**
   * Send `signal` and wait for the process to exit. Resolves with the exit
   * code (null when it died of a signal; see `exitSignal`). If it has not
   * exited after `timeoutMs`, it is SIGKILLed and the promise rejects.
   */
  async stop(signal = 'SIGTERM', { timeoutMs = 10000 } = {}) {
    if (!this.child) return this.exitCode;
    if (this.running) this.child.kill(signal);
    const timer = sleep(timeoutMs, 'timeout', { ref: false });
    const winner = await Promise.race([this._exited, timer]);
    if (winner === 'timeout') {
      this.child.kill('SIGKILL');
      await this._exited;
      throw new Error(`herald did not exit within ${timeoutMs} ms of ${signal}\n${this.logTail()}`);
    }
    return this.exitCode;
  }

  /** Cleanup for `after`/`finally`: SIGTERM, then SIGKILL; never throws. */
  async kill() {
    if (!this.child || !this.running) return;
    try {
      await this.stop('SIGTERM', { timeoutMs: 5000 });
    } catch {
      // stop() already SIGKILLed it
    }
  }

  /** Stop (if running) and start again on the same port (on purpose: see the class). */
  async restart(opts) {
    if (this.running) await this.stop('SIGTERM');
    return this.start(opts);
  }

  // --- HTTP ---------------------------------------------------------------

  /**
   * Raw HTTP request. `json` is serialised with content-type application/json;
   * `body` is sent as is (set headers yourself). Resolves with
   * `{ status, headers, text, body }` where body is the parsed JSON or null.
   */
  async request(method, urlPath, { json, body, headers = {}, apiKey, timeoutMs = 10000 } = {}) {
    const h = { ...headers };
    let payload = body;
    if (json !== undefined) {
      payload = JSON.stringify(json);
      if (!Object.keys(h).some((k) => k.toLowerCase() === 'content-type')) {
        h['content-type'] = 'application/json';
      }
    }
    if (apiKey) h.authorization = `Bearer ${apiKey}`;
    const res = await fetch(`${this.url}${urlPath}`, {
      method,
      headers: h,
      body: payload,
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = null;
    }
    return { status: res.status, headers: res.headers, text, body: parsed };
  }

  /** POST /api/v1/sessions/{session}/events `{event, data}`. */
  publish(session, event, data, opts = {}) {
    return this.request('POST', `/api/v1/sessions/${encodeURIComponent(session)}/events`, {
      json: { event, data },
      ...opts,
    });
  }

  /** publish(), asserting a 202; resolves with the response body. */
  async publishOk(session, event, data, opts = {}) {
    const res = await this.publish(session, event, data, opts);
    if (res.status !== 202) {
      throw new Error(`publish ${event} to ${session}: expected 202, got ${res.status} ${res.text}`);
    }
    return res.body;
  }

  /** POST /api/v1/events with a batch array. */
  publishBatch(items, opts = {}) {
    return this.request('POST', '/api/v1/events', { json: items, ...opts });
  }

  /** GET /api/v1/sessions/{session}, asserting 200; resolves with the body. */
  async session(session, opts = {}) {
    const res = await this.request('GET', `/api/v1/sessions/${encodeURIComponent(session)}`, opts);
    if (res.status !== 200) throw new Error(`GET session ${session}: ${res.status} ${res.text}`);
    return res.body;
  }

  async stats(opts = {}) {
    const res = await this.request('GET', '/api/v1/stats', opts);
    if (res.status !== 200) throw new Error(`GET stats: ${res.status} ${res.text}`);
    return res.body;
  }
}

/**
 * Start a herald with extra CLI `args`: on a port the OS picks (--port 0,
 * read back from its start line), or on `port` when a test needs that one.
 * `logLevel`: see Herald.
 */
export async function startHerald({ args = [], port, env, echoLogs, logLevel } = {}) {
  const h = new Herald({ port, args, env, echoLogs, logLevel });
  try {
    return await h.start();
  } catch (e) {
    await h.kill();
    throw e;
  }
}

/** A unique, valid session id. */
let sessionCounter = 0;
export function sessionId(prefix = 'sess') {
  sessionCounter += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${sessionCounter}`;
}

export const ISO_TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

/** True when `value` is an ISO 8601 date-time string within `skewMs` of now. */
export function isRecentIsoTimestamp(value, skewMs = 5 * 60 * 1000) {
  return (
    typeof value === 'string' &&
    ISO_TIMESTAMP.test(value) &&
    !Number.isNaN(Date.parse(value)) &&
    Math.abs(Date.parse(value) - Date.now()) < skewMs
  );
}

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

const openSockets = new Set();

/**
 * Attach a recorder: `socket.received` gets `{ event, args, at }` for every
 * incoming event (via onAny), from before the connection is up, so events sent
 * right after connecting (`connected`) are not missed.
 */
export function record(socket) {
  if (socket.received) return socket;
  socket.received = [];
  socket.onAny((event, ...args) => {
    socket.received.push({ event, args, at: Date.now() });
  });
  return socket;
}

/** The recorded payloads (first argument) of `event` on `socket`. */
export function received(socket, event) {
  return (socket.received || []).filter((r) => r.event === event).map((r) => r.args[0]);
}

/** A new socket.io-client socket (not waited for); recorded and tracked for closeAll(). */
export function createSocket(url, opts = {}) {
  const socket = io(url, { forceNew: true, ...opts });
  record(socket);
  openSockets.add(socket);
  socket.once('disconnect', () => {
    if (!socket.active) openSockets.delete(socket);
  });
  return socket;
}

/**
 * Connect a stock socket.io-client socket and resolve once `connect` fired.
 * Rejects on `connect_error` (when reconnection is off) or after `timeoutMs`.
 */
export function connect(url, opts = {}, { timeoutMs = 10000 } = {}) {
  const socket = createSocket(url, opts);
  return new Promise((resolve, reject) => {
    const errors = [];
    const timer = setTimeout(() => {
      cleanup();
      socket.disconnect();
      reject(
        new Error(
          `socket.io-client did not connect to ${url} (${JSON.stringify(opts.transports ?? 'default transports')}) within ${timeoutMs} ms; connect_error: ${errors.join(' | ') || 'none'}`,
        ),
      );
    }, timeoutMs);
    const onConnect = () => {
      cleanup();
      resolve(socket);
    };
    const onError = (err) => {
      errors.push(`${err.message}${err.description ? ` (${err.description})` : ''}`);
      if (!socket.active || socket.io.reconnection() === false) {
        cleanup();
        socket.disconnect();
        reject(new Error(`connect_error from ${url}: ${errors.join(' | ')}`));
      }
    };
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('connect', onConnect);
      socket.off('connect_error', onError);
    };
    socket.on('connect', onConnect);
    socket.on('connect_error', onError);
  });
}

/** Disconnect every socket made by createSocket()/connect() that is still around. */
export function closeAll() {
  for (const socket of openSockets) socket.disconnect();
  openSockets.clear();
}

function describe(fn) {
  if (!fn) return 'any payload';
  const src = String(fn).replace(/\s+/g, ' ');
  return src.length > 120 ? `${src.slice(0, 117)}...` : src;
}

function short(value) {
  const s = JSON.stringify(value);
  return s && s.length > 300 ? `${s.slice(0, 297)}...` : s;
}

/**
 * Resolve with the payload (first argument) of the next `event` on `socket`
 * for which `predicate(payload, ...rest)` is true. With `{ past: true }`,
 * events already recorded on the socket count too. Rejects after `timeoutMs`
 * with a message naming the event, the predicate and what did arrive.
 */
export function waitFor(socket, event, predicate = () => true, timeoutMs = 5000, { past = false } = {}) {
  if (past) {
    const hit = (socket.received || []).find((r) => r.event === event && predicate(...r.args));
    if (hit) return Promise.resolve(hit.args[0]);
  }
  return new Promise((resolve, reject) => {
    const seen = [];
    const handler = (...args) => {
      let ok = false;
      try {
        ok = predicate(...args);
      } catch {
        ok = false;
      }
      if (ok) {
        cleanup();
        resolve(args[0]);
      } else {
        seen.push(args[0]);
      }
    };
    const onDisconnect = (reason) => {
      seen.push(`<disconnect: ${reason}>`);
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(
        new Error(
          `timed out after ${timeoutMs} ms waiting for "${event}" matching ${describe(predicate)} ` +
            `on socket ${socket.id ?? '(not connected)'}; non-matching "${event}" events meanwhile: ` +
            `${seen.length ? seen.map(short).join(', ') : 'none'}; last events recorded: ` +
            `${short((socket.received || []).slice(-5).map((r) => [r.event, r.args[0]]))}`,
        ),
      );
    }, timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      socket.off(event, handler);
      socket.off('disconnect', onDisconnect);
    };
    socket.on(event, handler);
    socket.on('disconnect', onDisconnect);
  });
}

/** Emit with an ack callback; resolves with the ack or rejects after `timeoutMs`. */
export async function emitAck(socket, event, payload, timeoutMs = 5000) {
  try {
    if (payload === undefined) return await socket.timeout(timeoutMs).emitWithAck(event);
    return await socket.timeout(timeoutMs).emitWithAck(event, payload);
  } catch (e) {
    throw new Error(`no ack for ${event} ${short(payload)} within ${timeoutMs} ms (${e.message})`);
  }
}

// ---------------------------------------------------------------------------
// Shapes (PROTOCOL.md sections 1 and 4)
// ---------------------------------------------------------------------------

/** How long subscribe() watches for held events beyond those expected. */
const SETTLE_MS = 100;

/** A session's epoch: 12 lowercase hex digits. */
export const EPOCH = /^[0-9a-f]{12}$/;

/**
 * Whether a recorded `{ event, args }` is a published session event (one of
 * the five, carrying an integer seq), as opposed to a reply such as
 * `subscribed` (which carries a seq too) or a request error (no seq).
 */
export function isSessionEvent(record, session) {
  const d = record.args[0];
  return (
    EVENT_TYPES.includes(record.event) &&
    d !== null &&
    typeof d === 'object' &&
    Number.isInteger(d.seq) &&
    (session === undefined || d.sessionId === session)
  );
}

/**
 * The published session events recorded on `socket`, in arrival (wire)
 * order, as `{ event, data }`: all of them, or only `session`'s when given,
 * from index `from` of `socket.received` on.
 */
export function sessionEvents(socket, session, { from = 0 } = {}) {
  return (socket.received || [])
    .slice(from)
    .filter((r) => isSessionEvent(r, session))
    .map((r) => ({ event: r.event, data: r.args[0] }));
}

/** The seqs of sessionEvents(socket, session, opts). */
export function seqsOf(socket, session, opts) {
  return sessionEvents(socket, session, opts).map((e) => e.data.seq);
}

/** [from, from + 1, ..., to] (empty when to < from). */
export function range(from, to) {
  return Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);
}

/**
 * Asserts a `subscribed` payload exactly: `{ sessionId, timestamp, seq,
 * epoch }`, and for a resume (`resume` given) also `recovered`, `replayed`
 * and, when not recovered, `reason`. `seq` is the session's last seq at
 * subscription (null: not known in advance, any integer >= 0); `epoch`, when
 * given, must match; `resume` is `{ recovered, replayed?, reason? }`.
 */
export function assertSubscribed(payload, session, { seq = 0, epoch, resume } = {}) {
  const what = `subscribed ${short(payload)}`;
  assert.ok(payload !== null && typeof payload === 'object', what);
  const keys = ['sessionId', 'timestamp', 'seq', 'epoch'];
  if (resume) keys.push('recovered', 'replayed', ...(resume.recovered ? [] : ['reason']));
  assert.deepEqual(Object.keys(payload).sort(), keys.sort(), `${what}: fields`);
  assert.equal(payload.sessionId, session, what);
  assert.ok(isRecentIsoTimestamp(payload.timestamp), `${what}: timestamp`);
  assert.ok(typeof payload.epoch === 'string' && EPOCH.test(payload.epoch), `${what}: epoch is not 12 lowercase hex digits`);
  if (epoch !== undefined) assert.equal(payload.epoch, epoch, `${what}: epoch`);
  assert.ok(Number.isInteger(payload.seq) && payload.seq >= 0, `${what}: seq`);
  if (seq !== null) assert.equal(payload.seq, seq, `${what}: seq (the session's last seq)`);
  if (resume) {
    assert.equal(payload.recovered, resume.recovered, `${what}: recovered`);
    assert.ok(Number.isInteger(payload.replayed) && payload.replayed >= 0, `${what}: replayed`);
    if (resume.replayed !== undefined) assert.equal(payload.replayed, resume.replayed, `${what}: replayed`);
    if (!resume.recovered) assert.equal(payload.reason, resume.reason, `${what}: reason`);
  }
}

/** Asserts a subscribe ack exactly: `{ ok: true, sessionId, seq, epoch }`. */
export function assertSubscribeAck(ack, session, { seq, epoch }) {
  assert.deepEqual(ack, { ok: true, sessionId: session, seq, epoch }, `subscribe ack ${short(ack)}`);
}

/** Asserts a refused request's ack exactly: `{ ok: false, error, code }`. */
export function assertRefusalAck(ack, code = 'INVALID_SESSION_ID') {
  const what = `refusal ack ${short(ack)}`;
  assert.ok(ack !== null && typeof ack === 'object', what);
  assert.deepEqual(Object.keys(ack).sort(), ['code', 'error', 'ok'], what);
  assert.equal(ack.ok, false, what);
  assert.equal(ack.code, code, what);
  assert.ok(typeof ack.error === 'string' && ack.error.length > 0, what);
}

/**
 * Subscribe `socket` to `session` and wait for the ack, the `subscribed`
 * event and the held events that follow it (the snapshot, or the replay of
 * a resume); asserts all of them exactly. Resolves with `{ ack, event, held }`
 * (`held`: `{ event, data }` in arrival order).
 *
 * - `seq`: the session's last seq, which `subscribed` and the ack must carry
 *   (default 0, a session nothing was published to; null: not known in
 *   advance).
 * - `epoch`: the epoch they must carry, when known; with `herald`, it must
 *   also be the one GET /api/v1/sessions/{id} reports.
 * - `snapshot`: for a subscribe without `since`, the events expected right
 *   after `subscribed`, exactly as first delivered (`{ event, data }`).
 * - `resume`: required when `payload` has `since`: `{ recovered, replayed?,
 *   reason? }` (see assertSubscribed). The replayed events must then be
 *   `replayed` events in seq order, exactly since+1..seq when recovered, and
 *   equal to `replay` when given.
 */
export async function subscribe(
  socket,
  session,
  { timeoutMs = 5000, payload = session, seq = 0, epoch, snapshot = [], resume, replay, herald } = {},
) {
  const since = payload !== null && typeof payload === 'object' ? payload.since : undefined;
  const resuming = since !== undefined && since !== null;
  if (resuming && !resume) throw new Error(`subscribe ${short(payload)}: say what the resume reports ({ resume })`);
  const subscribed = waitFor(socket, 'subscribed', (d) => d && d.sessionId === session, timeoutMs);
  const ack = await emitAck(socket, 'subscribe', payload, timeoutMs);
  const event = await subscribed;
  assertSubscribed(event, session, { seq, epoch, resume: resuming ? resume : undefined });
  assertSubscribeAck(ack, session, { seq: event.seq, epoch: event.epoch });
  if (herald) {
    const state = await herald.session(session);
    assert.equal(state.epoch, event.epoch, `GET session ${session}: epoch differs from subscribed's`);
  }

  // What `subscribed` is followed by: the session's events up to its seq.
  const at = socket.received.findIndex((r) => r.event === 'subscribed' && r.args[0] === event);
  const heldNow = () => sessionEvents(socket, session, { from: at + 1 }).filter((e) => e.data.seq <= event.seq);
  const expected = resuming ? replay : snapshot;
  const count = expected ? expected.length : event.replayed;
  await until(() => heldNow().length >= count, {
    timeoutMs,
    what: `${count} held events after subscribed ${short(event)}`,
  }).catch((e) => {
    throw new Error(`${e.message}; got ${short(heldNow())}`);
  });
  // They leave herald in one burst right behind `subscribed` and the ack; a
  // moment more shows one too many. (With seq 0 there is nothing to hold.)
  if (event.seq > 0) await sleep(SETTLE_MS);
  const held = heldNow();
  if (expected) {
    assert.deepEqual(held, expected, `the events that followed subscribed ${short(event)}`);
  }
  if (resuming) {
    const seqs = held.map((e) => e.data.seq);
    assert.equal(held.length, event.replayed, `replayed ${event.replayed}, got ${short(seqs)}`);
    assert.ok(
      seqs.every((s, i) => i === 0 || s > seqs[i - 1]),
      `replay not in seq order: ${short(seqs)}`,
    );
    if (resume.recovered) {
      assert.deepEqual(seqs, range(since + 1, event.seq), `a recovered resume after ${since} replays exactly ${since + 1}..${event.seq}`);
    }
  }
  return { ack, event, held };
}

/**
 * Unsubscribe with ack + `unsubscribed` event; asserts both exactly (`{ ok:
 * true, sessionId }` and `{ sessionId, timestamp }`).
 */
export async function unsubscribe(socket, session, { timeoutMs = 5000, payload = session } = {}) {
  const unsubscribed = waitFor(socket, 'unsubscribed', (d) => d && d.sessionId === session, timeoutMs);
  const ack = await emitAck(socket, 'unsubscribe', payload, timeoutMs);
  const event = await unsubscribed;
  assert.deepEqual(ack, { ok: true, sessionId: session }, `unsubscribe ack ${short(ack)}`);
  assert.deepEqual(Object.keys(event).sort(), ['sessionId', 'timestamp'], `unsubscribed ${short(event)}`);
  assert.ok(isRecentIsoTimestamp(event.timestamp), `unsubscribed ${short(event)}: timestamp`);
  return { ack, event };
}

/** Wait until `cond()` is truthy, polling every `intervalMs`; rejects with `what` after `timeoutMs`. */
export async function until(cond, { timeoutMs = 5000, intervalMs = 20, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await cond();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

export { sleep };
