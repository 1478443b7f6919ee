// Fan-out: many stock clients on one session each receive every published
// event exactly once, in publish order.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, createSocket, sample, sessionId, sleep, until } from './lib/herald.mjs';

const SOCKETS = Number(process.env.FANOUT_SOCKETS || 500);
const EVENTS = 100;
const BATCH = 50;
const CONNECT_TIMEOUT_MS = 30000;
const DELIVERY_TIMEOUT_MS = 60000;

describe('fan-out', () => {
  let herald;
  const sockets = [];
  before(async () => {
    // Every client here comes from 127.0.0.1: more than one address may hold.
    herald = await startHerald({ args: ['--max-connections-per-address', '0'] });
  });
  after(async () => {
    for (const s of sockets) s.disconnect();
    await herald?.kill();
  });

  test(`${SOCKETS} websocket clients on one session each get seq 1..${EVENTS} in order`, async (t) => {
    const session = sessionId('fanout');
    const seqsBy = new Map(); // socket -> [seq...]
    const badBy = new Map(); // socket -> [problem...]
    const startedAt = Date.now();

    // Connect and subscribe in batches.
    for (let i = 0; i < SOCKETS; i += BATCH) {
      const batch = [];
      for (let j = i; j < Math.min(i + BATCH, SOCKETS); j++) {
        const socket = createSocket(herald.url, { transports: ['websocket'], reconnection: false });
        sockets.push(socket);
        seqsBy.set(socket, []);
        badBy.set(socket, []);
        socket.on('progress', (d) => {
          if (d.sessionId !== session || d.progress !== d.seq) badBy.get(socket).push(d);
          seqsBy.get(socket).push(d.seq);
        });
        batch.push(
          new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`socket #${j} did not connect`)), CONNECT_TIMEOUT_MS);
            socket.once('connect', async () => {
              clearTimeout(timer);
              try {
                const ack = await socket.timeout(CONNECT_TIMEOUT_MS).emitWithAck('subscribe', session);
                if (!ack || ack.ok !== true) reject(new Error(`socket #${j}: subscribe ack ${JSON.stringify(ack)}`));
                else resolve();
              } catch (e) {
                reject(new Error(`socket #${j}: no subscribe ack (${e.message})`));
              }
            });
            socket.once('connect_error', (e) => {
              clearTimeout(timer);
              reject(new Error(`socket #${j}: connect_error ${e.message}`));
            });
          }),
        );
      }
      await Promise.all(batch);
    }
    const connectedMs = Date.now() - startedAt;
    const state = await herald.session(session);
    assert.equal(state.subscribers, SOCKETS, 'subscriber count after subscribing everyone');

    // Publish sequentially over HTTP; progress == seq marks the payload.
    for (let i = 1; i <= EVENTS; i++) {
      const res = await herald.publish(session, 'progress', sample('progress', { progress: i }));
      assert.equal(res.status, 202, `publish #${i}: ${res.text}`);
      assert.equal(res.body.seq, i);
    }
    const publishedMs = Date.now() - startedAt;

    const total = () => [...seqsBy.values()].reduce((n, a) => n + a.length, 0);
    try {
      await until(() => total() >= SOCKETS * EVENTS, {
        timeoutMs: DELIVERY_TIMEOUT_MS,
        intervalMs: 100,
        what: `${SOCKETS * EVENTS} deliveries`,
      });
    } catch (e) {
      const short = [...seqsBy.values()].filter((a) => a.length < EVENTS).length;
      throw new Error(
        `${e.message}: got ${total()} of ${SOCKETS * EVENTS}; ${short} sockets short; ` +
          `stats ${JSON.stringify(await herald.stats())}`,
      );
    }
    // Give duplicates a moment to show up.
    await sleep(500);

    const expected = Array.from({ length: EVENTS }, (_, k) => k + 1);
    const wrong = [];
    for (const [i, socket] of sockets.entries()) {
      const seqs = seqsBy.get(socket);
      if (seqs.length !== EVENTS || seqs.some((s, k) => s !== expected[k])) {
        wrong.push(`#${i} (${socket.id}): ${seqs.length} events, first difference at ${seqs.findIndex((s, k) => s !== expected[k])}`);
      }
      if (badBy.get(socket).length) wrong.push(`#${i}: wrong payloads ${JSON.stringify(badBy.get(socket).slice(0, 2))}`);
    }
    assert.deepEqual(wrong.slice(0, 20), [], `${wrong.length} sockets got a wrong sequence`);
    const deliveredMs = Date.now() - startedAt;
    t.diagnostic(
      `fan-out: ${SOCKETS} sockets connected+subscribed in ${connectedMs} ms, ` +
        `${EVENTS} published by ${publishedMs} ms, all delivered by ${deliveredMs} ms`,
    );

    // Close everything; the server sees them go.
    for (const s of sockets) s.disconnect();
    await until(async () => (await herald.session(session)).subscribers === 0, {
      timeoutMs: 10000,
      intervalMs: 100,
      what: 'subscribers to drop to 0 after closing all sockets',
    });
  });
});
