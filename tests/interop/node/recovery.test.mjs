// Resume after a cut transport (PROTOCOL.md section 4), with the stock
// socket.io-client: a client whose WebSocket is cut (terminated: no close
// frame, no Socket.IO disconnect) while 200 events are published resumes
// with `since` and `epoch`, and ends with every event exactly once, in
// order, payloads intact:
//
// - on the same instance (memory adapter): the client reconnects by itself
//   and resubscribes on the new connection;
// - on another instance (two heralds sharing a real redis-server, publishes
//   alternating between them): a new client on B resumes what A's client
//   last saw.
//
// The publisher runs throughout: it pauses at event GATE until the resume is
// sent (so the resume races the events after it), and at LIVE until the
// resume took effect (so the events from LIVE on can only arrive live).

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald,
  connect,
  closeAll,
  subscribe,
  sample,
  sessionId,
  sessionEvents,
  seqsOf,
  range,
  isRecentIsoTimestamp,
  until,
  sleep,
} from './lib/herald.mjs';
import { startRedis } from './lib/redis.mjs';

const TOTAL = 200;
const CUT_AFTER = 40; // events the client has before its transport is cut
const MISSED = 20; // events published while it is cut, at least
const GATE = 150;
const LIVE = 175;

/** The data of publish #i: its number is in `result` and `duration`. */
function dataOf(i) {
  return sample('model_result', { result: `r${i}`, duration: i });
}

/** Resolves when `socket` fires `event` (once), rejecting after `timeoutMs`. */
function next(socket, event, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${timeoutMs} ms`)), timeoutMs);
    socket.once(event, (arg) => {
      clearTimeout(timer);
      resolve(arg);
    });
  });
}

/**
 * Publishes 1..TOTAL to `session` over `heralds` in turn, pausing before
 * GATE until `gate` resolves and before LIVE until `live` resolves.
 * `progress.published` counts the accepted publishes.
 */
function publishAll(heralds, session, { gate, live }) {
  const progress = { published: 0 };
  progress.done = (async () => {
    for (let i = 1; i <= TOTAL; i++) {
      if (i === GATE) await gate;
      if (i === LIVE) await live;
      const h = heralds[i % heralds.length];
      const res = await h.publishOk(session, 'model_result', dataOf(i));
      assert.equal(res.seq, i, `publish #${i} got seq ${res.seq}`);
      progress.published = i;
      await sleep(2);
    }
  })();
  progress.done.catch(() => {}); // awaited by the test; must not go unhandled if it fails first
  return progress;
}

/**
 * The scenario. `first`: the herald the client starts on; `publishers`: the
 * heralds publishing in turn; `resumer(socket)`: the socket to resume on
 * (the same one once it reconnected, or a new one), with the herald it is on.
 */
async function cutWhilePublishing(t, { first, publishers, reconnect, resumer }) {
  const session = sessionId('resume');
  const socket = await connect(first.url, {
    transports: ['websocket'],
    reconnection: reconnect,
    reconnectionDelay: 100,
    reconnectionDelayMax: 200,
    randomizationFactor: 0,
  });
  const { event: subscribed } = await subscribe(socket, session, { herald: first });
  const { epoch } = subscribed;

  let openGate;
  let openLive;
  const gate = new Promise((resolve) => (openGate = resolve));
  const live = new Promise((resolve) => (openLive = resolve));
  const publisher = publishAll(publishers, session, { gate, live });

  // Cut the transport for real: the TCP connection under the WebSocket is
  // destroyed; herald sees the connection drop, the client a transport close.
  await until(() => seqsOf(socket, session).length >= CUT_AFTER, {
    timeoutMs: 10000,
    what: `${CUT_AFTER} events before the cut`,
  });
  const firstId = socket.id;
  const dropped = next(socket, 'disconnect');
  socket.io.engine.transport.ws.terminate();
  const reason = await dropped;
  assert.equal(reason, 'transport close', `the cut was seen as ${reason}`);
  const before = seqsOf(socket, session);
  assert.deepEqual(before, range(1, before.length), 'events before the cut: 1..n in order');
  const since = before.length;
  assert.ok(since < GATE - MISSED, `the cut came late (after ${since} events)`);

  // herald noticed the cut, and events went on without the client.
  await until(async () => (await first.session(session)).subscribers === 0, {
    timeoutMs: 5000,
    what: 'herald to drop the cut socket',
  });
  await until(() => publisher.published >= since + MISSED, {
    timeoutMs: 10000,
    what: `${MISSED} publishes while the client is cut off`,
  });

  const { socket: again, herald: there } = await resumer(socket, firstId);
  openGate(); // the publishes from GATE on race the resume
  const resumed = await subscribe(again, session, {
    payload: { sessionId: session, since, epoch },
    seq: null,
    epoch,
    resume: { recovered: true },
    herald: there,
  });
  openLive(); // the publishes from LIVE on follow the resume
  const { seq: resumedAt, replayed } = resumed.event;
  assert.ok(replayed >= MISSED, `only ${replayed} events replayed, ${MISSED} at least were missed`);
  assert.ok(resumedAt < LIVE, `resumed at ${resumedAt}: the events from ${LIVE} on cannot be live`);

  await publisher.done;
  // One socket's record spans both its connections; a new socket adds its own.
  const all = () =>
    again === socket ? sessionEvents(socket, session) : [...sessionEvents(socket, session), ...sessionEvents(again, session)];
  await until(() => all().length >= TOTAL, {
    timeoutMs: 10000,
    what: `all ${TOTAL} events across the cut`,
  }).catch((e) => {
    throw new Error(`${e.message}; got ${JSON.stringify(all().map((x) => x.data.seq))}`);
  });
  await sleep(300); // a duplicate would show up by now

  // Every event exactly once, in order, each with its own payload.
  const got = all();
  assert.deepEqual(
    got.map((e) => e.data.seq),
    range(1, TOTAL),
    'seqs across the cut are not exactly 1..200 in order',
  );
  for (const { event, data } of got) {
    const { sessionId: sid, timestamp, seq, ...rest } = data;
    assert.equal(event, 'model_result');
    assert.equal(sid, session);
    assert.ok(isRecentIsoTimestamp(timestamp), `seq ${seq}: timestamp ${timestamp}`);
    assert.deepEqual(rest, dataOf(seq), `seq ${seq}: payload`);
  }
  const state = await there.session(session);
  assert.equal(state.seq, TOTAL);
  assert.equal(state.epoch, epoch, 'the epoch changed without a loss of state');
  t.diagnostic(
    `cut after ${since} (${reason}), resumed on ${again === socket ? 'the same socket' : 'another instance'} at seq ${resumedAt}: ` +
      `${replayed} replayed, ${TOTAL - resumedAt} live`,
  );
  assert.notEqual(again.id, firstId);
}

describe('resume after a cut transport', () => {
  afterEach(() => closeAll());

  describe('one instance (memory adapter)', () => {
    let herald;
    before(async () => {
      herald = await startHerald();
    });
    after(async () => {
      closeAll();
      await herald?.kill();
    });

    test('the client reconnects by itself and resumes: 200 events exactly once, in order', async (t) => {
      await cutWhilePublishing(t, {
        first: herald,
        publishers: [herald],
        reconnect: true,
        resumer: async (socket, firstId) => {
          await until(() => socket.connected && socket.id !== firstId, {
            timeoutMs: 10000,
            what: 'the client to reconnect by itself',
          });
          return { socket, herald };
        },
      });
    });
  });

  describe('two instances sharing a Redis', () => {
    let redis;
    let a;
    let b;
    before(async () => {
      redis = await startRedis();
      const args = ['--redis-url', redis.url];
      [a, b] = await Promise.all([startHerald({ args }), startHerald({ args })]);
      for (const h of [a, b]) {
        await until(async () => (await h.request('GET', '/ready')).status === 200, {
          timeoutMs: 10000,
          what: `${h.url} ready`,
        });
      }
    });
    after(async () => {
      closeAll();
      await Promise.all([a?.kill(), b?.kill()]);
      await redis?.kill();
    });

    test('cut on A, resumed by a new client on B while A and B publish: 200 events exactly once, in order', async (t) => {
      await cutWhilePublishing(t, {
        first: a,
        publishers: [a, b],
        reconnect: false,
        resumer: async () => ({ socket: await connect(b.url, { transports: ['websocket'] }), herald: b }),
      });
    });
  });
});
