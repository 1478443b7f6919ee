// docker/nginx.conf, the load balancer the Docker cluster ships with, run
// for real (Debian's nginx) in front of two heralds sharing a Redis: every
// way in that herald serves must pass through it unchanged. Socket.IO over
// WebSocket and polling, the publish API and its size limit, ResearchFlow's
// /ws and MeatyMusic's /ws/workflows (WebSocket upgrades outside
// /socket.io/). The config is the committed file; only what Docker provides
// (its DNS resolver, the `herald` service name, port 80) is swapped for this
// machine's loopback.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  REPO_ROOT,
  HOST,
  startHerald,
  freePort,
  spawnTracked,
  connect,
  closeAll,
  subscribe,
  waitFor,
  sessionId,
  sample,
  until,
} from './lib/herald.mjs';
import { startRedis } from './lib/redis.mjs';
import {
  WsClient,
  connectWs,
  closeAllWs,
  runPayload,
  publishRunOk,
  workflowRun,
  publishWorkflowOk,
  fastApiFrame,
} from './lib/ws.mjs';

const NGINX_BIN = process.env.NGINX_BIN || '/usr/sbin/nginx';
/** MAX_CONNECTIONS_PER_ADDRESS of the heralds behind nginx. */
const PER_ADDRESS = 8;

/** docker/nginx.conf with Docker's names replaced by loopback addresses. */
function loopbackConfig(listenPort, upstreamPorts) {
  const committed = readFileSync(path.join(REPO_ROOT, 'docker/nginx.conf'), 'utf8');
  const replace = (text, from, to) => {
    assert.ok(text.includes(from), `docker/nginx.conf no longer has ${JSON.stringify(from)}: update this test`);
    return text.replace(from, to);
  };
  let conf = replace(committed, 'resolver 127.0.0.11 valid=5s ipv6=off;', '');
  conf = replace(
    conf,
    'server herald:3000 resolve max_fails=0;',
    upstreamPorts.map((p) => `server ${HOST}:${p} max_fails=0;`).join('\n    '),
  );
  return replace(conf, 'listen 80;', `listen ${HOST}:${listenPort};`);
}

/** nginx in the foreground with its files in `dir`; resolves once it answers. */
async function startNginx(dir, listenPort, upstreamPorts) {
  writeFileSync(path.join(dir, 'herald.conf'), loopbackConfig(listenPort, upstreamPorts));
  writeFileSync(
    path.join(dir, 'nginx.conf'),
    `daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  include ${dir}/herald.conf;
}
`,
  );
  const check = spawnSync(NGINX_BIN, ['-t', '-p', dir, '-c', `${dir}/nginx.conf`], { encoding: 'utf8' });
  assert.equal(check.status, 0, `nginx -t refused docker/nginx.conf:\n${check.stderr}${check.error ?? ''}`);
  let log = '';
  const { child, spawnError } = spawnTracked(NGINX_BIN, ['-p', dir, '-c', `${dir}/nginx.conf`], {
    onLog: (s) => (log += s),
  });
  const url = `http://${HOST}:${listenPort}`;
  await Promise.race([
    spawnError,
    until(async () => (await fetch(`${url}/nginx-health`).catch(() => null))?.ok === true, {
      timeoutMs: 10000,
      what: `nginx answering on ${url}`,
    }),
  ]);
  return { url, child, log: () => log };
}

describe('behind docker/nginx.conf', () => {
  let redis;
  let heralds = [];
  let nginx;
  let dir;
  /** herald's test helpers, pointed at nginx instead of one instance. */
  let front;

  before(async () => {
    redis = await startRedis();
    for (let i = 0; i < 2; i += 1) {
      heralds.push(
        await startHerald({
          args: ['--redis-url', redis.url, '--trusted-proxies', HOST, '--max-connections-per-address', String(PER_ADDRESS)],
        }),
      );
    }
    dir = mkdtempSync(path.join(os.tmpdir(), 'herald-nginx-'));
    nginx = await startNginx(dir, await freePort(), heralds.map((h) => h.port));
    front = Object.create(heralds[0], { url: { value: nginx.url } });
  });

  after(async () => {
    closeAll();
    closeAllWs();
    nginx?.child.kill('SIGTERM');
    await Promise.all(heralds.map((h) => h.kill()));
    await redis?.kill();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const transports of [['websocket'], ['polling']]) {
    test(`Socket.IO over ${transports[0]}: subscribe, then an event published through nginx arrives`, async () => {
      const session = sessionId(`nginx-${transports[0]}`);
      const socket = await connect(nginx.url, { transports });
      await subscribe(socket, session);
      const res = await front.request('POST', `/api/v1/sessions/${session}/events`, {
        json: { event: 'progress', data: sample('progress') },
      });
      assert.equal(res.status, 202, res.text);
      const data = await waitFor(socket, 'progress', () => true, 5000, { past: true });
      assert.equal(data.sessionId, session);
      assert.equal(data.seq, 1);
      assert.equal(socket.io.engine.transport.name, transports[0], 'stayed on the transport asked for');
    });
  }

  test('/ws (ResearchFlow): the upgrade passes, a run event arrives', async () => {
    const runId = sessionId('nginx-run');
    const c = await connectWs(nginx.url, { auth: { runId } });
    await publishRunOk(front, runId, 'run.started');
    const frame = await c.next((f) => f.type === 'run.started', { what: 'run.started through nginx' });
    assert.deepEqual(frame.payload, runPayload('run.started', runId));
  });

  test('/ws/workflows/{runId} (MeatyMusic): each frame as the backend sent it', async () => {
    const runId = sessionId('nginx-wf');
    const c = await WsClient.connect(nginx.url, `/ws/workflows/${runId}`);
    const events = workflowRun(runId, ['PLAN']);
    for (const e of events) await publishWorkflowOk(front, runId, e);
    await c.next(() => true, { from: events.length - 1, what: `${events.length} workflow frames` });
    assert.deepEqual(c.rawFrames, events.map(fastApiFrame));
  });

  test('with TRUSTED_PROXIES naming nginx, the per-address limit counts each client, not nginx', async () => {
    // Every connection reaches herald from nginx's address; X-Forwarded-For
    // names the client. Loopback has every 127.x address to connect from.
    const from = (localAddress) =>
      connect(nginx.url, { transports: ['websocket'], localAddress, reconnection: false }, { timeoutMs: 5000 });
    for (let i = 0; i < PER_ADDRESS; i += 1) await from('127.0.0.2');
    await assert.rejects(from('127.0.0.2'), /connect_error/, 'one more from the same client is refused');
    const other = await from('127.0.0.3');
    assert.ok(other.connected, 'another client is still let in');
  });

  test('the dashboard: its live feed (Server-Sent Events) passes at once, not when a buffer fills', async () => {
    const res = await fetch(`${nginx.url}/dashboard/api/feed`, { signal: AbortSignal.timeout(5000) });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/event-stream/);
    const reader = res.body.getReader();
    let text = '';
    const deadline = Date.now() + 3000;
    while (!text.includes('event: snapshot') && Date.now() < deadline) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    await reader.cancel();
    assert.match(text, /event: history/, 'the history came first');
    assert.match(text, /event: snapshot/, 'a snapshot followed within 3 s');
  });

  test('a body over the limit: 413 with herald-shaped JSON from nginx, and nginx keeps serving', async () => {
    const res = await front.request('POST', '/api/v1/sessions/too-big/events', {
      json: { event: 'progress', data: { pad: 'x'.repeat(1024 * 1024 + 1) } },
    });
    assert.equal(res.status, 413);
    assert.match(res.body?.error ?? '', /larger than the limit/);
    assert.equal((await fetch(`${nginx.url}/health`)).status, 200);
  });
});
