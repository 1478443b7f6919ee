// A real redis-server for the cluster tests: spawned on a free 127.0.0.1 port
// with persistence off, waited for with PING, killed (SIGKILL) and restarted
// on the same port to simulate an outage. Like the heralds of ./herald.mjs,
// every redis-server started here is SIGKILLed on process exit whatever
// happens in a test; tests also stop it in `after`.

import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { HOST, freePort, spawnTracked } from './herald.mjs';

/** The redis-server binary: $REDIS_SERVER_BIN, else `redis-server` on the PATH. */
export const REDIS_SERVER_BIN = process.env.REDIS_SERVER_BIN || 'redis-server';

/** `redis-server --version`, or throws a readable error when it is not installed. */
export function redisServerVersion() {
  const r = spawnSync(REDIS_SERVER_BIN, ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    throw new Error(
      `cannot run ${REDIS_SERVER_BIN} (${r.error?.message ?? `exit ${r.status}`}); ` +
        'install redis-server 7 (scripts/install-test-deps) or set REDIS_SERVER_BIN',
    );
  }
  return r.stdout.trim();
}

// ---------------------------------------------------------------------------
// A minimal RESP client: one command per connection, enough for PING and
// the odd inspection (no pipelining, no pub/sub).
// ---------------------------------------------------------------------------

function encodeCommand(args) {
  let out = `*${args.length}\r\n`;
  for (const a of args) {
    const s = Buffer.from(String(a));
    out += `$${s.length}\r\n${s.toString('latin1')}\r\n`;
  }
  return Buffer.from(out, 'latin1');
}

/** Parses one RESP2 reply at `buf[pos..]`; `undefined` when incomplete. */
function parseReply(buf, pos = 0) {
  const eol = buf.indexOf('\r\n', pos);
  if (eol < 0) return undefined;
  const type = String.fromCharCode(buf[pos]);
  const line = buf.toString('utf8', pos + 1, eol);
  const next = eol + 2;
  switch (type) {
    case '+':
      return { value: line, end: next };
    case '-':
      return { value: new Error(line), end: next };
    case ':':
      return { value: Number(line), end: next };
    case '$': {
      const len = Number(line);
      if (len < 0) return { value: null, end: next };
      if (buf.length < next + len + 2) return undefined;
      return { value: buf.toString('utf8', next, next + len), end: next + len + 2 };
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return { value: null, end: next };
      const items = [];
      let at = next;
      for (let i = 0; i < n; i++) {
        const item = parseReply(buf, at);
        if (!item) return undefined;
        items.push(item.value);
        at = item.end;
      }
      return { value: items, end: at };
    }
    default:
      throw new Error(`unexpected RESP reply type ${JSON.stringify(type)}`);
  }
}

/**
 * Send one command to the Redis at `port` and resolve with its reply (an Error
 * value for a Redis error reply). Rejects on connection errors or timeout.
 */
export function redisCommand(port, args, { timeoutMs = 2000 } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: HOST, port });
    let buf = Buffer.alloc(0);
    let done = false;
    const finish = (err, value) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(
      () => finish(new Error(`redis ${args[0]} on port ${port}: no reply within ${timeoutMs} ms`)),
      timeoutMs,
    );
    sock.on('connect', () => sock.write(encodeCommand(args)));
    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      let reply;
      try {
        reply = parseReply(buf);
      } catch (e) {
        finish(e);
        return;
      }
      if (reply) finish(null, reply.value);
    });
    sock.on('error', (e) => finish(e));
    sock.on('close', () => finish(new Error(`redis ${args[0]} on port ${port}: connection closed without a reply`)));
  });
}

/** True when the Redis at `port` answers PING with +PONG. */
export async function redisPing(port, { timeoutMs = 1000 } = {}) {
  try {
    return (await redisCommand(port, ['PING'], { timeoutMs })) === 'PONG';
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// The process
// ---------------------------------------------------------------------------

/** One redis-server (and its successors after `restart()`), always on the same port. */
export class RedisServer {
  constructor({ port, args = [] }) {
    this.port = port;
    this.args = args;
    this.url = `redis://${HOST}:${port}`;
    this.child = null;
    this._exited = null;
    this._logs = [];
  }

  get running() {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  logs() {
    return this._logs.join('');
  }

  logTail(n = 20) {
    return this.logs().split('\n').slice(-n).join('\n');
  }

  /** Spawn redis-server and resolve once it answers PING. */
  async start({ timeoutMs = 10000 } = {}) {
    if (this.running) throw new Error('redis-server is already running');
    // No persistence: a restart after SIGKILL comes back empty, by design.
    const argv = ['--port', String(this.port), '--bind', HOST, '--save', '', '--appendonly', 'no', ...this.args];
    this._logs.push(`--- spawn ${REDIS_SERVER_BIN} ${argv.map((a) => (a === '' ? "''" : a)).join(' ')}\n`);
    const { child, exited, spawnError } = spawnTracked(REDIS_SERVER_BIN, argv, {
      env: process.env,
      onLog: (text) => this._logs.push(text),
    });
    this.child = child;
    this._exited = exited;

    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.running) {
        await Promise.race([this._exited, spawnError]);
        throw new Error(`redis-server exited before answering PING\n${this.logTail()}`);
      }
      if (await redisPing(this.port, { timeoutMs: 500 })) return this;
      if (Date.now() > deadline) {
        await this.kill();
        throw new Error(`redis-server on port ${this.port} did not answer PING within ${timeoutMs} ms\n${this.logTail()}`);
      }
      await Promise.race([sleep(50), spawnError]);
    }
  }

  /** Send `signal` (SIGKILL by default: an outage, not a shutdown) and wait for the exit. */
  async kill(signal = 'SIGKILL', { timeoutMs = 5000 } = {}) {
    if (!this.child || !this.running) return;
    this.child.kill(signal);
    const winner = await Promise.race([this._exited, sleep(timeoutMs, 'timeout', { ref: false })]);
    if (winner === 'timeout') {
      this.child.kill('SIGKILL');
      await this._exited;
    }
  }

  /** Start again on the same port (after `kill()`). */
  async restart(opts) {
    await this.kill();
    return this.start(opts);
  }
}

/** Start a redis-server on a free port (retrying once or twice if the port was taken meanwhile). */
export async function startRedis({ port, args } = {}) {
  redisServerVersion();
  let lastError;
  for (let attempt = 0; attempt < 3; attempt++) {
    const r = new RedisServer({ port: port ?? (await freePort()), args });
    try {
      return await r.start();
    } catch (e) {
      lastError = e;
      await r.kill();
      if (port !== undefined || !/address already in use|bind/i.test(r.logs())) break;
    }
  }
  throw lastError;
}
