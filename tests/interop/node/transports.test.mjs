// Each transport the stock client can use: long-polling only, WebSocket only,
// and the default (polling, upgraded to WebSocket). For each: connect, the
// `connected` greeting, subscribe (event + ack), and a published event arrives.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald,
  connect,
  closeAll,
  waitFor,
  subscribe,
  emitAck,
  sample,
  sessionId,
  isRecentIsoTimestamp,
  until,
  received,
  assertSubscribed,
} from './lib/herald.mjs';

const VARIANTS = [
  { name: 'polling only', opts: { transports: ['polling'] }, final: 'polling' },
  { name: 'websocket only', opts: { transports: ['websocket'] }, final: 'websocket' },
  { name: 'default (polling upgraded to websocket)', opts: {}, final: 'websocket', upgrade: true },
];

describe('transports', () => {
  let herald;
  before(async () => {
    herald = await startHerald();
  });
  afterEach(() => closeAll());
  after(async () => {
    closeAll();
    await herald?.kill();
  });

  for (const variant of VARIANTS) {
    test(variant.name, async () => {
      const socket = await connect(herald.url, { path: '/socket.io/', ...variant.opts });
      assert.equal(socket.connected, true);
      assert.equal(typeof socket.id, 'string');
      assert.ok(socket.id.length > 0);

      // `connected` right after the connect, naming this very socket.
      const greeting = await waitFor(socket, 'connected', () => true, 5000, { past: true });
      assert.deepEqual(Object.keys(greeting).sort(), ['socketId', 'timestamp']);
      assert.equal(greeting.socketId, socket.id);
      assert.ok(isRecentIsoTimestamp(greeting.timestamp), `bad timestamp ${greeting.timestamp}`);
      assert.equal(received(socket, 'connected').length, 1, 'exactly one connected event');

      if (variant.upgrade) {
        // Starts on polling, then upgrades.
        await until(() => socket.io.engine.transport.name === 'websocket', {
          timeoutMs: 5000,
          what: 'the engine to upgrade from polling to websocket',
        });
      }
      assert.equal(socket.io.engine.transport.name, variant.final);

      const session = sessionId('transport');
      // subscribe() asserts `subscribed` and the ack exactly: seq 0, one
      // epoch, the one GET /api/v1/sessions/{id} reports.
      const { ack, event } = await subscribe(socket, session, { herald });
      assert.deepEqual(ack, { ok: true, sessionId: session, seq: 0, epoch: event.epoch });

      const data = sample('progress');
      const arriving = waitFor(socket, 'progress', (d) => d.sessionId === session);
      const res = await herald.publishOk(session, 'progress', data);
      assert.deepEqual(res, { sessionId: session, event: 'progress', seq: 1 });
      const got = await arriving;
      const { sessionId: sid, timestamp, seq, ...rest } = got;
      assert.equal(sid, session);
      assert.equal(seq, 1);
      assert.ok(isRecentIsoTimestamp(timestamp), `bad timestamp ${timestamp}`);
      assert.deepEqual(rest, data);

      // The transport did not change under us (polling stays polling).
      assert.equal(socket.io.engine.transport.name, variant.final);

      // A second event over the same transport, after the first.
      const second = waitFor(socket, 'completed', (d) => d.sessionId === session);
      await herald.publishOk(session, 'completed', sample('completed'));
      assert.equal((await second).seq, 2);
      socket.disconnect();
    });
  }

  test('subscribe with an object payload {sessionId} and without an ack callback', async () => {
    const socket = await connect(herald.url, { transports: ['websocket'] });
    const session = sessionId('objform');
    const confirmed = waitFor(socket, 'subscribed', (d) => d.sessionId === session);
    socket.emit('subscribe', { sessionId: session });
    const ev = await confirmed;
    assertSubscribed(ev, session, { seq: 0, epoch: (await herald.session(session)).epoch });

    const arriving = waitFor(socket, 'clarification', (d) => d.sessionId === session);
    await herald.publishOk(session, 'clarification', sample('clarification'));
    assert.equal((await arriving).seq, 1);

    // object form of unsubscribe, with ack
    const ack = await emitAck(socket, 'unsubscribe', { sessionId: session });
    assert.deepEqual(ack, { ok: true, sessionId: session });
    socket.disconnect();
  });

  test('each connection gets its own socket id and its own connected event', async () => {
    const sockets = await Promise.all([
      connect(herald.url, { transports: ['websocket'] }),
      connect(herald.url, { transports: ['polling'] }),
      connect(herald.url),
    ]);
    const greetings = await Promise.all(
      sockets.map((s) => waitFor(s, 'connected', () => true, 5000, { past: true })),
    );
    const ids = sockets.map((s) => s.id);
    assert.equal(new Set(ids).size, 3, `socket ids not unique: ${ids}`);
    assert.deepEqual(
      greetings.map((g) => g.socketId),
      ids,
    );
    for (const s of sockets) s.disconnect();
  });
});
