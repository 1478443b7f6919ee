// The Node.js reference server: herald's wire contract (shared/spec/PROTOCOL.md
// sections 1-3) implemented the way a Node team would write it themselves,
// with socket.io 4.8 and, for several instances, @socket.io/redis-adapter.
// It exists to be benchmarked side by side with herald.
//
//   node server.mjs [--host 127.0.0.1] [--port 3000] [--redis-url redis://...]
//
// Every flag also reads an environment variable (PORT, REDIS_URL, ...); a flag
// wins. `node server.mjs --help` lists them.

import http from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Server } from 'socket.io';
import { createAdapter } from '@socket.io/redis-adapter';
import { createClient } from 'redis';
import jwt from 'jsonwebtoken';

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

const OPTIONS = {
  host: { type: 'string', env: 'HOST', default: '127.0.0.1' },
  port: { type: 'string', env: 'PORT', default: '3000' },
  'redis-url': { type: 'string', env: 'REDIS_URL' },
  'redis-prefix': { type: 'string', env: 'REDIS_PREFIX', default: 'node-ref' },
  'api-key': { type: 'string', env: 'API_KEY' },
  'cors-origins': { type: 'string', env: 'CORS_ORIGINS', default: '*' },
  'jwt-secret': { type: 'string', env: 'JWT_SECRET' },
  'ping-interval-ms': { type: 'string', env: 'PING_INTERVAL_MS', default: '25000' },
  'ping-timeout-ms': { type: 'string', env: 'PING_TIMEOUT_MS', default: '20000' },
  'max-payload-bytes': { type: 'string', env: 'MAX_PAYLOAD_BYTES', default: '1048576' },
  'session-ttl-secs': { type: 'string', env: 'SESSION_TTL_SECS', default: '86400' },
  'log-level': { type: 'string', env: 'LOG_LEVEL', default: 'info' },
  // socket.io's connectionStateRecovery, off by default: it keeps every
  // broadcast packet for its replay window, which the other benchmark
  // scenarios must not pay for.
  'connection-state-recovery': { type: 'boolean', env: 'CONNECTION_STATE_RECOVERY' },
  help: { type: 'boolean' },
};

function readConfig() {
  let values;
  try {
    ({ values } = parseArgs({
      options: Object.fromEntries(Object.entries(OPTIONS).map(([k, o]) => [k, { type: o.type }])),
      strict: true,
    }));
  } catch (e) {
    process.stderr.write(`${e.message}\nrun with --help for the options\n`);
    process.exit(2);
  }
  if (values.help) {
    const lines = Object.entries(OPTIONS)
      .filter(([, o]) => o.env)
      .map(([k, o]) => `  --${k.padEnd(26)} ${o.env}${o.default !== undefined ? ` (default ${o.default})` : ''}`);
    process.stdout.write(`usage: node server.mjs [options]\n${lines.join('\n')}\n`);
    process.exit(0);
  }
  const get = (name) => {
    const o = OPTIONS[name];
    const fromEnv = o.env && process.env[o.env] !== '' ? process.env[o.env] : undefined;
    return values[name] ?? fromEnv ?? o.default;
  };
  const int = (name) => {
    const n = Number(get(name));
    if (!Number.isInteger(n) || n < 0) {
      process.stderr.write(`--${name} must be a non-negative integer, got ${JSON.stringify(get(name))}\n`);
      process.exit(2);
    }
    return n;
  };
  const flag = (name) => {
    if (values[name] !== undefined) return values[name];
    const raw = (process.env[OPTIONS[name].env] ?? '').trim().toLowerCase();
    if (['', '0', 'false', 'no', 'off'].includes(raw)) return false;
    if (['1', 'true', 'yes', 'on'].includes(raw)) return true;
    process.stderr.write(`${OPTIONS[name].env} must be true or false, got ${JSON.stringify(raw)}\n`);
    process.exit(2);
  };
  const origins = get('cors-origins');
  return {
    host: get('host'),
    port: int('port'),
    redisUrl: get('redis-url') || null,
    redisPrefix: get('redis-prefix'),
    apiKey: get('api-key') || null,
    corsOrigin: origins.trim() === '*' ? '*' : origins.split(',').map((s) => s.trim()).filter(Boolean),
    jwtSecret: get('jwt-secret') || null,
    pingInterval: int('ping-interval-ms'),
    pingTimeout: int('ping-timeout-ms'),
    maxPayload: int('max-payload-bytes'),
    sessionTtl: int('session-ttl-secs'),
    logLevel: get('log-level').toLowerCase(),
    recovery: flag('connection-state-recovery'),
  };
}

const config = readConfig();
if (config.recovery && config.redisUrl) {
  // @socket.io/redis-adapter (the classic adapter) does not implement it:
  // sockets would silently reconnect without their missed packets.
  process.stderr.write('--connection-state-recovery needs the in-memory adapter; the Redis adapter does not support it\n');
  process.exit(2);
}

// ---------------------------------------------------------------------------
// Logging: one line per record on stderr.
// ---------------------------------------------------------------------------

const LEVELS = { error: 0, warn: 1, info: 2, debug: 3, trace: 4 };
const threshold = LEVELS[config.logLevel] ?? LEVELS.info;

function logAt(level, message) {
  if (LEVELS[level] > threshold) return;
  process.stderr.write(`${new Date().toISOString()} ${level.toUpperCase().padStart(5)} ${message}\n`);
}

const log = {
  error: (m) => logAt('error', m),
  warn: (m) => logAt('warn', m),
  info: (m) => logAt('info', m),
  debug: (m) => logAt('debug', m),
};

// ---------------------------------------------------------------------------
// The contract: session ids and the five session events
// ---------------------------------------------------------------------------

const SESSION_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Why `value` is not a valid session id, or null when it is one. */
function sessionIdProblem(value) {
  if (value === undefined) return 'a session id is required';
  if (typeof value !== 'string') return `sessionId must be a string, got ${kind(value)}`;
  if (value.length === 0) return 'sessionId must not be empty';
  if (value.length > 128) return `sessionId is ${value.length} characters long; the limit is 128`;
  if (!SESSION_ID.test(value)) return "sessionId may contain only A-Z, a-z, 0-9, '.', '_', ':' and '-'";
  return null;
}

const roomOf = (sessionId) => `session:${sessionId}`;
const ROOM_PREFIX = 'session:';

function kind(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  return `a ${typeof value}`;
}

const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);

class Invalid extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

// One checker per value shape; each throws Invalid naming the field.
const check = {
  string(v, f) {
    if (typeof v !== 'string') throw new Invalid(f, `${f} must be a string, got ${kind(v)}`);
  },
  bool(v, f) {
    if (typeof v !== 'boolean') throw new Invalid(f, `${f} must be a boolean, got ${kind(v)}`);
  },
  count(v, f) {
    if (!Number.isInteger(v) || v < 0) throw new Invalid(f, `${f} must be a non-negative integer, got ${JSON.stringify(v)}`);
  },
  percent(v, f) {
    if (typeof v !== 'number' || !(v >= 0 && v <= 100)) throw new Invalid(f, `${f} must be a number from 0 to 100, got ${JSON.stringify(v)}`);
  },
  millis(v, f) {
    if (typeof v !== 'number' || !(v >= 0)) throw new Invalid(f, `${f} must be a non-negative number of milliseconds, got ${JSON.stringify(v)}`);
  },
  object(v, f) {
    if (!isObject(v)) throw new Invalid(f, `${f} must be a JSON object, got ${kind(v)}`);
  },
  oneOf(...allowed) {
    return (v, f) => {
      if (!allowed.includes(v)) throw new Invalid(f, `${f} must be one of ${allowed.join(', ')}, got ${JSON.stringify(v)}`);
    };
  },
  prompts(v, f) {
    check.object(v, f);
    for (const key of Object.keys(v)) {
      if (!PROMPT_KEYS.includes(key)) throw new Invalid(`${f}.${key}`, `unknown field ${key} in prompts`);
    }
    for (const key of PROMPT_KEYS) {
      if (!Object.hasOwn(v, key)) throw new Invalid(`${f}.${key}`, `${f}.${key} is required`);
      check.count(v[key], `${f}.${key}`);
    }
  },
};

const PROMPT_KEYS = ['total', 'completed', 'processing', 'pending', 'failed'];

/** Each event's fields: required and optional ones, with their checker. */
const SCHEMAS = {
  progress: {
    required: {
      status: check.oneOf('ACTIVE', 'PROCESSING', 'COMPLETED', 'FAILED', 'EXPIRED'),
      progress: check.percent,
      prompts: check.prompts,
      hasClarifications: check.bool,
      clarificationCount: check.count,
    },
    optional: { hasResult: check.bool, result: check.object },
  },
  model_result: {
    required: {
      modelName: check.string,
      duration: check.millis,
      result: check.string,
      status: check.oneOf('processing', 'completed', 'failed'),
    },
    optional: { error: check.string, provider: check.string },
  },
  clarification: {
    required: {
      clarificationId: check.string,
      question: check.string,
      status: check.oneOf('pending', 'answered'),
    },
    optional: {},
  },
  completed: { required: { result: check.object }, optional: {} },
  error: { required: { error: check.string }, optional: {} },
};
const EVENT_NAMES = Object.keys(SCHEMAS);

const ISO_8601 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

/**
 * Validates one publish request. `at` prefixes field paths (a batch's `[3].`).
 * Returns `{ sessionId, event, fields, timestamp }` with null optionals dropped.
 */
function validateEvent(sessionId, event, data, at = '') {
  if (event === undefined) throw new Invalid(`${at}event`, 'event is required');
  if (typeof event !== 'string') throw new Invalid(`${at}event`, `event must be a string, got ${kind(event)}`);
  if (!Object.hasOwn(SCHEMAS, event)) {
    throw new Invalid(`${at}event`, `unknown event ${JSON.stringify(event)}; expected one of ${EVENT_NAMES.join(', ')}`);
  }
  if (data === undefined) throw new Invalid(`${at}data`, 'data is required');
  if (!isObject(data)) throw new Invalid(`${at}data`, `data must be a JSON object, got ${kind(data)}`);

  const { required, optional } = SCHEMAS[event];
  const fields = {};
  let timestamp = null;
  for (const [key, value] of Object.entries(data)) {
    const field = `${at}data.${key}`;
    if (key === 'seq') throw new Invalid(field, 'seq is assigned by the server and must not be sent');
    if (key === 'sessionId') {
      if (value === null) continue;
      if (value !== sessionId) {
        throw new Invalid(field, `data.sessionId ${JSON.stringify(value)} differs from the session ${JSON.stringify(sessionId)}`);
      }
      continue;
    }
    if (key === 'timestamp') {
      if (value === null) continue;
      if (typeof value !== 'string' || !ISO_8601.test(value) || Number.isNaN(Date.parse(value))) {
        throw new Invalid(field, `timestamp must be an ISO 8601 date-time such as 2026-01-31T12:00:00.000Z, got ${JSON.stringify(value)}`);
      }
      timestamp = value;
      continue;
    }
    if (Object.hasOwn(required, key)) {
      required[key](value, field);
    } else if (Object.hasOwn(optional, key)) {
      if (value === null) continue; // null means absent
      optional[key](value, field);
    } else {
      throw new Invalid(field, `unknown field ${key} for ${event} events`);
    }
    fields[key] = value;
  }
  for (const key of Object.keys(required)) {
    if (!Object.hasOwn(fields, key)) throw new Invalid(`${at}data.${key}`, `${key} is required for ${event} events`);
  }
  return { sessionId, event, fields, timestamp };
}

/** What an event says about its session as a whole. */
function outcome(event, fields) {
  return {
    isProgress: event === 'progress',
    completed: event === 'completed' || (event === 'progress' && fields.status === 'COMPLETED'),
    failed: event === 'error' || (event === 'progress' && fields.status === 'FAILED'),
  };
}

// ---------------------------------------------------------------------------
// HTTP server and Socket.IO
// ---------------------------------------------------------------------------

const stats = { eventsPublished: 0, eventsDelivered: 0, publishedByEvent: {}, rejections: {} };
for (const name of EVENT_NAMES) stats.publishedByEvent[name] = 0;

const httpServer = http.createServer((req, res) => {
  handleHttp(req, res).catch((e) => {
    log.error(`${req.method} ${req.url}: ${e.stack || e}`);
    if (!res.headersSent) sendJson(res, 500, { error: 'internal error' });
    else res.destroy();
  });
});

const io = new Server(httpServer, {
  path: '/socket.io/',
  maxHttpBufferSize: config.maxPayload,
  pingInterval: config.pingInterval,
  pingTimeout: config.pingTimeout,
  cors: { origin: config.corsOrigin },
  // As socket.io's docs show it, with its defaults (a 2-minute window,
  // middlewares skipped for a recovered socket).
  ...(config.recovery ? { connectionStateRecovery: {} } : {}),
});

// Tokens, the usual way: a jsonwebtoken middleware checks the handshake's
// auth.token, and a subscribe must be covered by its `sessions` claim.
if (config.jwtSecret) {
  io.use((socket, next) => {
    try {
      socket.data.grant = jwt.verify(socket.handshake.auth?.token ?? '', config.jwtSecret, { algorithms: ['HS256'] });
      next();
    } catch (e) {
      next(new Error(`unauthorized: ${e.message}`));
    }
  });
}

const granted = (socket, sessionId) =>
  !config.jwtSecret ||
  (socket.data.grant?.sessions ?? []).some((p) => (p.endsWith('*') ? sessionId.startsWith(p.slice(0, -1)) : p === sessionId));

// ---------------------------------------------------------------------------
// Where seq and session state live: a Map, or Redis with the Redis adapter.
// ---------------------------------------------------------------------------

/** Subscribers of a session on this instance. */
const localSubscribers = (sessionId) => io.of('/').adapter.rooms.get(roomOf(sessionId))?.size ?? 0;

/** This instance's figures. */
function localStats() {
  let subscriptions = 0;
  const sessions = [];
  for (const [room, members] of io.of('/').adapter.rooms) {
    if (room.startsWith(ROOM_PREFIX)) {
      subscriptions += members.size;
      sessions.push(room.slice(ROOM_PREFIX.length));
    }
  }
  return {
    connections: io.of('/').sockets.size,
    subscriptions,
    sessions,
    eventsPublished: stats.eventsPublished,
    eventsDelivered: stats.eventsDelivered,
  };
}

function countPublished(event) {
  stats.eventsPublished += 1;
  stats.publishedByEvent[event] += 1;
}

class MemoryStore {
  adapter = 'memory';
  sessions = new Map(); // sessionId -> { seq, progress, completed, failed }

  readiness() {
    return null;
  }

  async publish({ sessionId, event, fields, timestamp }) {
    let state = this.sessions.get(sessionId);
    if (!state) {
      state = { seq: 0, progress: null, completed: false, failed: false };
      this.sessions.set(sessionId, state);
    }
    state.seq += 1;
    const payload = { ...fields, sessionId, timestamp: timestamp ?? new Date().toISOString(), seq: state.seq };
    io.to(roomOf(sessionId)).emit(event, payload);
    const o = outcome(event, fields);
    if (o.isProgress) state.progress = payload;
    if (o.completed) state.completed = true;
    if (o.failed) state.failed = true;
    countPublished(event);
    return state.seq;
  }

  async session(sessionId) {
    const state = this.sessions.get(sessionId);
    return {
      sessionId,
      seq: state?.seq ?? 0,
      progress: state?.progress ?? null,
      completed: state?.completed ?? false,
      failed: state?.failed ?? false,
      subscribers: localSubscribers(sessionId),
    };
  }

  async stats() {
    const { sessions, ...rest } = localStats();
    return { ...rest, sessions: sessions.length, scope: 'instance' };
  }
}

class RedisStore {
  adapter = 'redis';

  constructor(pub, sub, prefix, ttl) {
    this.pub = pub;
    this.sub = sub;
    this.prefix = prefix;
    this.ttl = ttl;
    this.lastError = null;
  }

  seqKey(sessionId) {
    return `${this.prefix}:seq:${sessionId}`;
  }

  stateKey(sessionId) {
    return `${this.prefix}:session:${sessionId}`;
  }

  /** Null when both clients are connected, else why not. */
  readiness() {
    if (this.pub.isReady && this.sub.isReady) return null;
    return `redis unavailable${this.lastError ? `: ${this.lastError}` : ''}`;
  }

  async publish({ sessionId, event, fields, timestamp }) {
    const seqKey = this.seqKey(sessionId);
    const [seq] = await this.pub.multi().incr(seqKey).expire(seqKey, this.ttl).exec();
    const payload = { ...fields, sessionId, timestamp: timestamp ?? new Date().toISOString(), seq };
    io.to(roomOf(sessionId)).emit(event, payload);
    countPublished(event);
    const o = outcome(event, fields);
    const update = {};
    if (o.isProgress) update.progress = JSON.stringify(payload);
    if (o.completed) update.completed = '1';
    if (o.failed) update.failed = '1';
    if (Object.keys(update).length > 0) {
      const stateKey = this.stateKey(sessionId);
      await this.pub.multi().hSet(stateKey, update).expire(stateKey, this.ttl).exec();
    }
    return seq;
  }

  async session(sessionId) {
    const [seq, state] = await Promise.all([
      this.pub.get(this.seqKey(sessionId)),
      this.pub.hGetAll(this.stateKey(sessionId)),
    ]);
    let subscribers;
    try {
      subscribers = (await io.in(roomOf(sessionId)).fetchSockets()).length;
    } catch (e) {
      log.debug(`cluster-wide subscriber count unavailable, counting local ones: ${e.message}`);
      subscribers = localSubscribers(sessionId);
    }
    return {
      sessionId,
      seq: Number(seq ?? 0),
      progress: state.progress ? JSON.parse(state.progress) : null,
      completed: state.completed === '1',
      failed: state.failed === '1',
      subscribers,
    };
  }

  async stats() {
    const mine = localStats();
    if (this.readiness() === null) {
      try {
        const others = await io.serverSideEmitWithAck('stats');
        const all = [mine, ...others];
        const sessions = new Set();
        for (const s of all) for (const id of s.sessions) sessions.add(id);
        const sum = (k) => all.reduce((n, s) => n + s[k], 0);
        return {
          connections: sum('connections'),
          sessions: sessions.size,
          subscriptions: sum('subscriptions'),
          eventsPublished: sum('eventsPublished'),
          eventsDelivered: sum('eventsDelivered'),
          scope: 'cluster',
        };
      } catch (e) {
        log.debug(`cluster stats unavailable, answering for this instance: ${e.message}`);
      }
    }
    const { sessions, ...rest } = mine;
    return { ...rest, sessions: sessions.length, scope: 'instance' };
  }
}

// ---------------------------------------------------------------------------
// Stopping (SIGTERM/SIGINT): close every connection, exit 0.
// ---------------------------------------------------------------------------

const redisClients = [];
let stopping = false;
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  log.info(`${signal}: shutting down`);
  setTimeout(() => {
    log.warn('connections still open after 3 s; exiting anyway');
    process.exit(0);
  }, 3000).unref();
  // Closes every engine connection (clients see a transport close and
  // reconnect by themselves) and the HTTP server.
  io.close(async () => {
    await Promise.allSettled(redisClients.map(async (c) => c.quit()));
    log.info('stopped');
    process.exit(0);
  });
  httpServer.closeIdleConnections();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

// A command the Redis adapter sent without waiting for it (a PUBLISH in flight
// when Redis went away) must not bring the process down.
process.on('unhandledRejection', (e) => log.warn(`unhandled rejection: ${e?.message ?? e}`));

/** A Redis URL without its credentials, for the logs. */
const redact = (url) => url.replace(/\/\/[^@/]*@/, '//***@');

async function setUpRedis(url) {
  const pub = createClient({ url });
  const sub = pub.duplicate();
  redisClients.push(pub, sub);
  const store = new RedisStore(pub, sub, config.redisPrefix, config.sessionTtl);
  // Log the link going down and coming up once each, not every reconnect attempt.
  let link = 'starting'; // then 'up' or 'down'
  const update = (cause) => {
    if (stopping) return;
    const ready = pub.isReady && sub.isReady;
    if (ready && link !== 'up') {
      link = 'up';
      log.info('cluster link up: Redis reachable and subscribed');
    } else if (!ready && (link === 'up' || (link === 'starting' && cause === 'error'))) {
      link = 'down';
      log.error(`cluster link down: ${store.readiness()}; retrying, publishes answer 503 meanwhile`);
    }
  };
  for (const client of [pub, sub]) {
    client.on('error', (e) => {
      store.lastError = e.message || String(e);
      log.debug(`redis: ${store.lastError}`);
      update('error');
    });
    for (const ev of ['ready', 'end', 'reconnecting']) client.on(ev, () => update(ev));
  }
  // As the adapter's README does: both clients connected before the adapter
  // subscribes (node-redis 4 retries until Redis answers; the HTTP server
  // starts listening once it has).
  log.info(`connecting to Redis at ${redact(url)}`);
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub, { key: `${config.redisPrefix}:socket.io`, requestsTimeout: 1000 }));
  // Other instances ask for this one's figures for /api/v1/stats.
  io.on('stats', (reply) => reply(localStats()));
  return store;
}

const store = config.redisUrl ? await setUpRedis(config.redisUrl) : new MemoryStore();

// ---------------------------------------------------------------------------
// Socket.IO handlers
// ---------------------------------------------------------------------------

/** The session id of a subscribe/unsubscribe payload: a string or { sessionId }. */
function requestedSessionId(payload) {
  if (isObject(payload)) {
    if (!Object.hasOwn(payload, 'sessionId')) return { problem: 'expected a session id or { sessionId }' };
    payload = payload.sessionId;
  }
  const problem = sessionIdProblem(payload);
  return problem ? { problem } : { sessionId: payload };
}

function onRoomRequest(socket, kind, args) {
  const ack = typeof args[args.length - 1] === 'function' ? args.pop() : null;
  const { sessionId, problem } = requestedSessionId(args[0]);
  if (problem) {
    log.info(`socket ${socket.id}: refused ${kind}: ${problem}`);
    socket.emit('error', { error: problem, code: 'INVALID_SESSION_ID', timestamp: new Date().toISOString() });
    if (ack) ack({ ok: false, error: problem });
    return;
  }
  if (kind === 'subscribe' && !granted(socket, sessionId)) {
    const error = `forbidden: the token does not grant session ${sessionId}`;
    socket.emit('error', { error, code: 'FORBIDDEN', sessionId, timestamp: new Date().toISOString() });
    if (ack) ack({ ok: false, error, code: 'FORBIDDEN' });
    return;
  }
  if (kind === 'subscribe') socket.join(roomOf(sessionId));
  else socket.leave(roomOf(sessionId));
  log.info(`socket ${socket.id} ${kind}d to session ${sessionId}`);
  socket.emit(`${kind}d`, { sessionId, timestamp: new Date().toISOString() });
  if (ack) ack({ ok: true, sessionId });
}

io.on('connection', (socket) => {
  log.info(`socket ${socket.id} connected (${socket.conn.transport.name})`);
  socket.emit('connected', { socketId: socket.id, timestamp: new Date().toISOString() });
  socket.on('subscribe', (...args) => onRoomRequest(socket, 'subscribe', args));
  socket.on('unsubscribe', (...args) => onRoomRequest(socket, 'unsubscribe', args));
  // Count session events handed to this socket (they are the ones with a seq).
  socket.onAnyOutgoing((_event, payload) => {
    if (payload && payload.seq !== undefined) stats.eventsDelivered += 1;
  });
  socket.on('disconnect', (reason) => log.info(`socket ${socket.id} disconnected (${reason})`));
});

// ---------------------------------------------------------------------------
// HTTP API
// ---------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

function sendJson(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  if (status >= 400) stats.rejections[status] = (stats.rejections[status] ?? 0) + 1;
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function sendError(res, e) {
  const body = { error: e.message };
  if (e.field) body.field = e.field;
  sendJson(res, e.status, body, e.headers);
}

const invalid = (e) => new HttpError(422, e.message, e.field || undefined);

/** Reads a JSON body: content type JSON or absent, within the size limit, parsed. */
async function readJson(req) {
  const type = req.headers['content-type'];
  if (type !== undefined) {
    const mime = type.split(';')[0].trim().toLowerCase();
    if (mime !== 'application/json' && !(mime.startsWith('application/') && mime.endsWith('+json'))) {
      throw new HttpError(415, `content type ${JSON.stringify(mime)} is not supported; send application/json`);
    }
  }
  const tooLarge = () => {
    const e = new HttpError(413, `request body is larger than the limit of ${config.maxPayload} bytes`);
    e.headers = { connection: 'close' };
    return e;
  };
  const declared = Number(req.headers['content-length']);
  if (declared > config.maxPayload) {
    req.resume();
    throw tooLarge();
  }
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > config.maxPayload) {
      req.resume();
      throw tooLarge();
    }
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') throw new HttpError(400, 'request body is empty; expected JSON');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, `malformed JSON: ${e.message}`);
  }
}

function pathSessionId(raw) {
  let id;
  try {
    id = decodeURIComponent(raw);
  } catch {
    throw new HttpError(422, 'sessionId is not valid percent-encoding', 'sessionId');
  }
  const problem = sessionIdProblem(id);
  if (problem) throw new HttpError(422, problem, 'sessionId');
  return id;
}

function requireReady() {
  const problem = store.readiness();
  if (problem) throw new HttpError(503, `cannot publish cluster-wide: ${problem}`);
}

/** Publishes one validated event; a Redis failure on the way is a 503. */
async function publish(publication) {
  requireReady();
  try {
    return await store.publish(publication);
  } catch (e) {
    throw new HttpError(503, `cannot publish cluster-wide: ${e.message}`);
  }
}

function checkApiKey(req) {
  const header = req.headers.authorization ?? '';
  const given = header.startsWith('Bearer ') ? Buffer.from(header.slice(7).trim()) : null;
  const key = Buffer.from(config.apiKey);
  if (!given || given.length !== key.length || !timingSafeEqual(given, key)) {
    const e = new HttpError(401, 'missing or wrong API key: send Authorization: Bearer <key>');
    e.headers = { 'www-authenticate': 'Bearer' };
    throw e;
  }
}

async function publishOne(req, res, rawId) {
  const sessionId = pathSessionId(rawId);
  const body = await readJson(req);
  if (!isObject(body)) throw new HttpError(422, `body must be a JSON object { event, data }, got ${kind(body)}`);
  for (const key of Object.keys(body)) {
    if (key !== 'event' && key !== 'data') throw new HttpError(422, `unknown field ${key}; expected event and data`, key);
  }
  let publication;
  try {
    publication = validateEvent(sessionId, body.event, body.data);
  } catch (e) {
    if (e instanceof Invalid) throw invalid(e);
    throw e;
  }
  const seq = await publish(publication);
  sendJson(res, 202, { sessionId, event: publication.event, seq });
}

async function publishBatch(req, res) {
  const body = await readJson(req);
  if (!Array.isArray(body)) throw new HttpError(422, `body must be a JSON array of { sessionId, event, data }, got ${kind(body)}`);
  // Validate every item before publishing any.
  const publications = body.map((item, i) => {
    const at = `[${i}]`;
    try {
      if (!isObject(item)) throw new Invalid(at, `${at} must be a JSON object { sessionId, event, data }, got ${kind(item)}`);
      for (const key of Object.keys(item)) {
        if (!['sessionId', 'event', 'data'].includes(key)) throw new Invalid(`${at}.${key}`, `unknown field ${key}`);
      }
      const problem = sessionIdProblem(item.sessionId);
      if (problem) throw new Invalid(`${at}.sessionId`, problem);
      return validateEvent(item.sessionId, item.event, item.data, `${at}.`);
    } catch (e) {
      if (e instanceof Invalid) throw invalid(e);
      throw e;
    }
  });
  const results = [];
  for (const publication of publications) {
    const seq = await publish(publication);
    results.push({ sessionId: publication.sessionId, event: publication.event, seq });
  }
  sendJson(res, 202, { results });
}

async function getSession(res, rawId) {
  const sessionId = pathSessionId(rawId);
  const problem = store.readiness();
  if (problem) throw new HttpError(503, `session state unavailable: ${problem}`);
  let state;
  try {
    state = await store.session(sessionId);
  } catch (e) {
    throw new HttpError(503, `session state unavailable: ${e.message}`);
  }
  sendJson(res, 200, state);
}

function metricsText() {
  const s = localStats();
  const lines = [
    '# TYPE node_ref_connections gauge',
    `node_ref_connections ${s.connections}`,
    '# TYPE node_ref_subscriptions gauge',
    `node_ref_subscriptions ${s.subscriptions}`,
    '# TYPE node_ref_sessions_watched gauge',
    `node_ref_sessions_watched ${s.sessions.length}`,
    '# TYPE node_ref_events_published_total counter',
    ...EVENT_NAMES.map((e) => `node_ref_events_published_total{event="${e}"} ${stats.publishedByEvent[e]}`),
    '# TYPE node_ref_events_delivered_total counter',
    `node_ref_events_delivered_total ${s.eventsDelivered}`,
    '# TYPE node_ref_publish_rejections_total counter',
    ...Object.entries(stats.rejections).map(([status, n]) => `node_ref_publish_rejections_total{status="${status}"} ${n}`),
    '# TYPE process_resident_memory_bytes gauge',
    `process_resident_memory_bytes ${process.memoryUsage.rss()}`,
  ];
  return `${lines.join('\n')}\n`;
}

async function handleHttp(req, res) {
  const path = (req.url ?? '/').split('?')[0];
  const method = req.method;
  try {
    if (path.startsWith('/api/v1/')) {
      res.setHeader('access-control-allow-origin', '*');
      if (method === 'OPTIONS') {
        res.writeHead(204, {
          'access-control-allow-methods': 'GET, POST',
          'access-control-allow-headers': 'authorization, content-type',
        });
        res.end();
        return;
      }
      if (config.apiKey) checkApiKey(req);
      const parts = path.slice('/api/v1/'.length).split('/');
      if (parts.length === 3 && parts[0] === 'sessions' && parts[2] === 'events') {
        if (method !== 'POST') throw new HttpError(405, `${method} is not allowed on ${path}`);
        return await publishOne(req, res, parts[1]);
      }
      if (parts.length === 1 && parts[0] === 'events') {
        if (method !== 'POST') throw new HttpError(405, `${method} is not allowed on ${path}`);
        return await publishBatch(req, res);
      }
      if (parts.length === 2 && parts[0] === 'sessions') {
        if (method !== 'GET') throw new HttpError(405, `${method} is not allowed on ${path}`);
        return await getSession(res, parts[1]);
      }
      if (parts.length === 1 && parts[0] === 'stats') {
        if (method !== 'GET') throw new HttpError(405, `${method} is not allowed on ${path}`);
        return sendJson(res, 200, await store.stats());
      }
    } else if (method === 'GET' && path === '/health') {
      return sendJson(res, 200, { status: 'ok' });
    } else if (method === 'GET' && path === '/ready') {
      const problem = store.readiness();
      if (problem) return sendJson(res, 503, { status: 'unavailable', adapter: store.adapter, reason: problem });
      return sendJson(res, 200, { status: 'ready', adapter: store.adapter });
    } else if (method === 'GET' && path === '/metrics') {
      const text = metricsText();
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
      return res.end(text);
    }
    throw new HttpError(404, `no route for ${method} ${path}`);
  } catch (e) {
    if (!(e instanceof HttpError)) throw e;
    sendError(res, e);
  }
}

// ---------------------------------------------------------------------------
// Start and stop
// ---------------------------------------------------------------------------

httpServer.on('error', (e) => {
  log.error(`cannot listen on http://${config.host}:${config.port}: ${e.message}`);
  process.exit(1);
});

httpServer.listen(config.port, config.host, () => {
  const adapter = config.redisUrl
    ? `redis at ${redact(config.redisUrl)}`
    : `in-memory (single instance)${config.recovery ? ', connection state recovery on' : ''}`;
  log.info(
    `node reference (socket.io 4.8) listening on http://${config.host}:${config.port} ` +
      `(Socket.IO at /socket.io/, API at /api/v1), adapter: ${adapter}, API key: ${config.apiKey ? 'required' : 'off'}`,
  );
});
