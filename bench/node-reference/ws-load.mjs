// The load side of bench/run's `/ws` scenarios (ResearchFlow's plain
// WebSocket, seed 001's protocol), for herald and for ws-server.mjs alike:
// opens N `/ws` clients, each `auth`ed to run `<prefix>-<i mod runs>`, and
// optionally publishes run events over the HTTP API and counts what every
// client receives. herald-loadgen speaks Socket.IO only; this uses `ws`, whose
// per-frame cost is a small part of what a server pays per delivery, and
// bench/run reports when its core saturates.
//
//   node ws-load.mjs --url http://127.0.0.1:3000 --clients 1000 --runs 1 \
//       [--publish 100]   # then publish 100 stage.progress events to run 0
//                         # and wait until every client has all of them
//
// Prints JSON lines on stdout: {"phase":"ready",...} once every client is
// authenticated, then {"phase":"done",...}. With --hold (and no --publish)
// it keeps the clients open until stdin closes, then reports `done`.

import http from 'node:http';
import { parseArgs } from 'node:util';
import { WebSocket } from 'ws';

const { values: opts } = parseArgs({
  options: {
    url: { type: 'string', default: 'http://127.0.0.1:3000' },
    clients: { type: 'string', default: '1000' },
    runs: { type: 'string', default: '1' },
    'run-prefix': { type: 'string', default: 'bench-run' },
    publish: { type: 'string', default: '0' },
    'connect-concurrency': { type: 'string', default: '128' },
    timeout: { type: 'string', default: '300' },
    grace: { type: 'string', default: '20' },
    hold: { type: 'boolean', default: false },
  },
  strict: true,
});
const N = Number(opts.clients);
const RUNS = Number(opts.runs);
const EVENTS = Number(opts.publish);
const base = new URL(opts.url);
const wsUrl = `ws://${base.host}/ws`;
const runId = (i) => `${opts['run-prefix']}-${i % RUNS}`;

const line = (doc) => process.stdout.write(`${JSON.stringify(doc)}\n`);
const fail = (why) => {
  process.stderr.write(`ws-load: ${why}\n`);
  process.exit(1);
};
setTimeout(() => fail(`still running after ${opts.timeout} s`), Number(opts.timeout) * 1000).unref();

const clients = [];
let deliveries = 0;
let reordered = 0;
let unexpected = 0;
let firstDelivery = 0;
let lastDelivery = 0;
let complete = 0;
let onComplete = () => {};

function open(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl, { perMessageDeflate: false });
    const c = { ws, lastSeq: 0, count: 0 };
    ws.on('error', reject);
    ws.on('close', () => {
      if (!c.closing) fail(`client ${i} closed by the server`);
    });
    ws.on('message', (data) => {
      const msg = JSON.parse(data);
      if (msg.type === 'connection.established') {
        ws.send(JSON.stringify({ type: 'auth', payload: { runId: runId(i) } }));
      } else if (msg.type === 'auth.success') {
        resolve(c);
      } else if (msg.type === 'stage.progress') {
        const now = performance.now();
        if (!firstDelivery) firstDelivery = now;
        lastDelivery = now;
        deliveries++;
        if (msg.seq !== undefined && msg.seq <= c.lastSeq) reordered++;
        c.lastSeq = msg.seq ?? c.lastSeq;
        if (++c.count === EVENTS && ++complete === N) onComplete();
      } else if (msg.type !== 'pong') {
        unexpected++;
      }
    });
  });
}

const started = performance.now();
let next = 0;
async function opener() {
  while (next < N) {
    const i = next++;
    clients[i] = await open(i);
  }
}
try {
  await Promise.all(Array.from({ length: Math.min(Number(opts['connect-concurrency']), N) }, opener));
} catch (e) {
  fail(`connecting: ${e.message}`);
}
const secs = (performance.now() - started) / 1000;
line({ phase: 'ready', connected: clients.length, connect_rate: clients.length / secs });

function report() {
  const span = (lastDelivery - firstDelivery) / 1000;
  line({
    phase: 'done',
    connected: clients.length,
    deliveries,
    expected: EVENTS * N,
    deliveries_per_sec: span > 0 ? deliveries / span : 0,
    lost: EVENTS * N - deliveries,
    reordered,
    unexpected,
  });
  for (const c of clients) {
    c.closing = true;
    c.ws.terminate();
  }
  process.exit(0);
}

if (EVENTS > 0) {
  if (RUNS !== 1) fail('--publish needs --runs 1: every client is expected to receive every event');
  const allIn = new Promise((resolve) => (onComplete = resolve));
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const target = runId(0);
  for (let k = 1; k <= EVENTS; k++) {
    const body = JSON.stringify({
      type: 'stage.progress',
      payload: { runId: target, stageId: 'stage-1', stageName: 'Ingest', progress: Math.round((100 * k) / EVENTS), itemsProcessed: k, itemsTotal: EVENTS },
    });
    const status = await new Promise((resolve, reject) => {
      const req = http.request(
        { host: base.hostname, port: base.port, path: `/api/v1/runs/${target}/events`, method: 'POST', agent,
          headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode));
        },
      );
      req.on('error', reject);
      req.end(body);
    });
    if (status !== 202) fail(`publish ${k} answered ${status}`);
  }
  // What is still on its way gets a grace period; a run that lost events
  // ends then, reporting what arrived.
  await Promise.race([allIn, new Promise((r) => setTimeout(r, Number(opts.grace) * 1000))]);
  report();
} else if (opts.hold) {
  process.stdin.on('close', report).resume();
} else {
  report();
}
