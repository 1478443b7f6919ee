// --api-key: every /api/v1/ route needs `Authorization: Bearer <key>`;
// /health does not, and neither do Socket.IO clients.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald,
  connect,
  closeAll,
  waitFor,
  subscribe,
  sample,
  sessionId,
  sessionEvents,
  sleep,
} from './lib/herald.mjs';

const KEY = 'k3y-for-interop-tests_0123456789';

describe('API key', () => {
  let herald;
  before(async () => {
    herald = await startHerald({ args: ['--api-key', KEY] });
  });
  after(async () => {
    closeAll();
    await herald?.kill();
  });

  test('publish: missing or wrong bearer -> 401 JSON, nothing delivered; right key -> 202', async () => {
    const session = sessionId('auth');
    const socket = await connect(herald.url, { transports: ['websocket'] });
    await subscribe(socket, session);
    const path = `/api/v1/sessions/${session}/events`;
    const json = { event: 'progress', data: sample('progress') };

    const rejected = [
      ['no header', {}],
      ['wrong key', { authorization: 'Bearer not-the-key' }],
      ['key with suffix', { authorization: `Bearer ${KEY}x` }],
      ['key prefix', { authorization: `Bearer ${KEY.slice(0, -1)}` }],
      ['bare key, no scheme', { authorization: KEY }],
      ['Basic scheme', { authorization: `Basic ${KEY}` }],
      ['empty bearer', { authorization: 'Bearer ' }],
      ['key in another header', { 'x-api-key': KEY }],
    ];
    for (const [label, headers] of rejected) {
      const res = await herald.request('POST', path, { json, headers });
      assert.equal(res.status, 401, `${label}: ${res.status} ${res.text}`);
      assert.match(res.headers.get('content-type') ?? '', /application\/json/, label);
      assert.equal(typeof res.body?.error, 'string', `${label}: ${res.text}`);
    }

    // The right key.
    const arriving = waitFor(socket, 'progress', (d) => d.sessionId === session);
    const ok = await herald.request('POST', path, { json, apiKey: KEY });
    assert.equal(ok.status, 202, ok.text);
    assert.deepEqual(ok.body, { sessionId: session, event: 'progress', seq: 1 });
    const got = await arriving;
    assert.equal(got.seq, 1, 'rejected publishes must not consume seqs');

    await sleep(300);
    assert.deepEqual(
      sessionEvents(socket).map((e) => [e.event, e.data.seq]),
      [['progress', 1]],
      'only the authorised publish was delivered',
    );
  });

  test('every /api/v1/ route is guarded', async () => {
    const session = sessionId('guard');
    const routes = [
      ['GET', `/api/v1/sessions/${session}`],
      ['GET', '/api/v1/stats'],
      ['POST', '/api/v1/events', [{ sessionId: session, event: 'completed', data: sample('completed') }]],
      ['POST', `/api/v1/sessions/${session}/events`, { event: 'completed', data: sample('completed') }],
    ];
    for (const [method, p, json] of routes) {
      const denied = await herald.request(method, p, { json });
      assert.equal(denied.status, 401, `${method} ${p} without key: ${denied.status} ${denied.text}`);
      assert.equal(typeof denied.body?.error, 'string');
      const wrong = await herald.request(method, p, { json, apiKey: 'nope' });
      assert.equal(wrong.status, 401, `${method} ${p} wrong key: ${wrong.status}`);
    }
    for (const [method, p, json] of routes) {
      const allowed = await herald.request(method, p, { json, apiKey: KEY });
      assert.ok([200, 202].includes(allowed.status), `${method} ${p} with key: ${allowed.status} ${allowed.text}`);
    }
    // The two allowed publishes above got seqs 1 and 2; the denied ones none.
    const state = await herald.session(session, { apiKey: KEY });
    assert.equal(state.seq, 2);
  });

  test('/health needs no key', async () => {
    const res = await herald.request('GET', '/health');
    assert.equal(res.status, 200);
    assert.equal(res.body.status, 'ok');
    assert.equal(typeof res.body.version, 'string', JSON.stringify(res.body));
  });

  test('Socket.IO clients connect and subscribe without the key', async () => {
    const socket = await connect(herald.url, { transports: ['websocket'] });
    const greeting = await waitFor(socket, 'connected', () => true, 5000, { past: true });
    assert.equal(greeting.socketId, socket.id);
    const session = sessionId('nokey');
    const { event } = await subscribe(socket, session);
    // The epoch the socket was told is the one the (guarded) API reports.
    assert.equal((await herald.session(session, { apiKey: KEY })).epoch, event.epoch);
  });
});

describe('no API key configured', () => {
  let herald;
  before(async () => {
    herald = await startHerald();
  });
  after(async () => {
    await herald?.kill();
  });

  test('publishing needs no Authorization header (and an unexpected one is harmless)', async () => {
    const session = sessionId('open');
    const res = await herald.publish(session, 'completed', sample('completed'));
    assert.equal(res.status, 202, res.text);
    const res2 = await herald.publish(session, 'completed', sample('completed'), { apiKey: 'whatever' });
    assert.equal(res2.status, 202, res2.text);
    assert.equal(res2.body.seq, 2);
  });
});
