// Cluster: two herald instances sharing one real redis-server. Events published
// on either instance reach stock socket.io-client subscribers on both, with one
// seq per session for the whole cluster, in order, without duplicates; the
// session API and stats speak for the cluster; and a Redis outage is survived:
// /ready and publishes answer 503 while it lasts, sockets stay connected, one
// error is logged, and everything works again once Redis is back.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald,
  connect,
  closeAll,
  subscribe,
  sample,
  sessionId,
  isRecentIsoTimestamp,
  sessionEvents,
  seqsOf,
  range,
  assertSubscribeAck,
  EPOCH,
  until,
  sleep,
} from './lib/herald.mjs';
import { startRedis } from './lib/redis.mjs';

async function ready(herald) {
  return herald.request('GET', '/ready', { timeoutMs: 2000 });
}

/** Poll /ready until it answers `status`; resolves with the last response and how long it took. */
async function waitReadyStatus(herald, status, { timeoutMs, what }) {
  const t0 = Date.now();
  let last;
  for (;;) {
    try {
      last = await ready(herald);
      if (last.status === status) return { res: last, ms: Date.now() - t0 };
    } catch (e) {
      last = { status: 'no answer', text: e.message };
    }
    if (Date.now() - t0 > timeoutMs) {
      throw new Error(
        `${what}: /ready on ${herald.url} did not answer ${status} within ${timeoutMs} ms; last: ${last.status} ${last.text}\n${herald.logTail(15)}`,
      );
    }
    await sleep(50);
  }
}

/** Lines of `text` containing `needle`. */
function linesWith(text, needle) {
  return text.split('\n').filter((l) => l.includes(needle));
}

/**
 * Sockets on both instances, both transports, subscribed to `session`: all
 * told seq 0 and the one epoch both instances report.
 */
async function subscribersOnBoth(a, b, session) {
  const sockets = {
    'A/websocket': await connect(a.url, { transports: ['websocket'] }),
    'A/polling': await connect(a.url, { transports: ['polling'] }),
    'B/websocket': await connect(b.url, { transports: ['websocket'] }),
    'B/polling': await connect(b.url, { transports: ['polling'] }),
  };
  let epoch;
  for (const [name, s] of Object.entries(sockets)) {
    const { event } = await subscribe(s, session, { herald: name.startsWith('A') ? a : b, epoch });
    epoch = event.epoch;
  }
  assert.equal(sockets['A/polling'].io.engine.transport.name, 'polling');
  assert.equal(sockets['B/polling'].io.engine.transport.name, 'polling');
  return sockets;
}

describe('cluster: two heralds sharing one Redis', () => {
  let redis;
  let a;
  let b;

  before(async () => {
    redis = await startRedis();
    const args = ['--redis-url', redis.url];
    // At info: the outage test reads "cluster link up" from their logs.
    [a, b] = await Promise.all([startHerald({ args, logLevel: 'info' }), startHerald({ args, logLevel: 'info' })]);
    await Promise.all([
      waitReadyStatus(a, 200, { timeoutMs: 10000, what: 'instance A at start' }),
      waitReadyStatus(b, 200, { timeoutMs: 10000, what: 'instance B at start' }),
    ]);
  });

  afterEach(() => closeAll());

  after(async () => {
    closeAll();
    await Promise.all([a?.kill(), b?.kill()]);
    await redis?.kill();
  });

  test('both instances are ready with the redis adapter', async () => {
    for (const h of [a, b]) {
      const res = await ready(h);
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.body, { status: 'ready', adapter: 'redis' });
    }
  });

  test('every event type published on B reaches subscribers on A unchanged, seq 1..5', async () => {
    const session = sessionId('cluster-types');
    const wsA = await connect(a.url, { transports: ['websocket'] });
    const pollA = await connect(a.url, { transports: ['polling'] });
    const { event } = await subscribe(wsA, session, { herald: a });
    await subscribe(pollA, session, { herald: b, epoch: event.epoch });
    assert.equal(pollA.io.engine.transport.name, 'polling');

    const published = [
      [
        'progress',
        sample('progress', {
          status: 'COMPLETED',
          progress: 100,
          prompts: { total: 3, completed: 3, processing: 0, pending: 0, failed: 0 },
          hasClarifications: false,
          clarificationCount: 0,
          hasResult: true,
          result: { answer: 42, items: [1, 'two', { three: 3 }], empty: {}, flag: false, none: null, text: 'ü € "q" \\ \n' },
        }),
      ],
      ['model_result', sample('model_result', { status: 'failed', error: 'rate limited', provider: 'openai', duration: 12.5 })],
      ['clarification', sample('clarification', { status: 'answered' })],
      ['completed', sample('completed')],
      ['error', sample('error')],
    ];
    for (const [i, [event, data]] of published.entries()) {
      const res = await b.publish(session, event, data);
      assert.equal(res.status, 202, `publish ${event} on B: ${res.text}`);
      assert.deepEqual(res.body, { sessionId: session, event, seq: i + 1 });
    }

    for (const [name, socket] of [
      ['A/websocket', wsA],
      ['A/polling', pollA],
    ]) {
      await until(() => sessionEvents(socket, session).length >= published.length, {
        timeoutMs: 5000,
        what: `${name} to receive the ${published.length} events published on B (got ${JSON.stringify(seqsOf(socket, session))})`,
      });
      await sleep(100); // anything extra (a duplicate) would arrive by now
      const got = sessionEvents(socket, session);
      assert.equal(got.length, published.length, `${name}: ${JSON.stringify(got)}`);
      for (const [i, [event, data]] of published.entries()) {
        assert.equal(got[i].event, event, `${name}: event #${i + 1}`);
        const { sessionId: sid, timestamp, seq, ...rest } = got[i].data;
        assert.equal(sid, session);
        assert.equal(seq, i + 1, `${name}: seq of ${event}`);
        assert.ok(isRecentIsoTimestamp(timestamp), `${name}: timestamp ${timestamp}`);
        assert.deepEqual(rest, data, `${name}: ${event} payload changed crossing instances`);
      }
    }
  });

  test('1,000 sequential publishes alternating A/B: seq 1..1000 in order on both instances', async () => {
    const session = sessionId('cluster-seq');
    const sockets = await subscribersOnBoth(a, b, session);
    const N = 1000;
    for (let i = 1; i <= N; i++) {
      const h = i % 2 ? a : b;
      const res = await h.publish(session, 'model_result', sample('model_result', { result: `r${i}`, duration: i }));
      assert.equal(res.status, 202, `publish #${i} on ${h === a ? 'A' : 'B'}: ${res.text}`);
      assert.equal(res.body.seq, i, `publish #${i} on ${h === a ? 'A' : 'B'} got seq ${res.body.seq}`);
    }
    for (const [name, socket] of Object.entries(sockets)) {
      await until(() => sessionEvents(socket, session).length >= N, {
        timeoutMs: 15000,
        intervalMs: 50,
        what: `${name} to receive ${N} events (has ${sessionEvents(socket, session).length})`,
      });
    }
    await sleep(200);
    for (const [name, socket] of Object.entries(sockets)) {
      const got = sessionEvents(socket, session);
      assert.deepEqual(
        got.map((e) => e.data.seq),
        range(1, N),
        `${name}: seqs not exactly 1..${N} in order`,
      );
      const wrong = got.filter((e) => e.data.result !== `r${e.data.seq}`);
      assert.deepEqual(wrong.slice(0, 5), [], `${name}: payloads not matching their seq`);
    }
    const [sa, sb] = await Promise.all([a.session(session), b.session(session)]);
    assert.equal(sa.seq, N);
    assert.equal(sb.seq, N);
  });

  test('4 concurrent publishers (2 on A, 2 on B), 100 each: every subscriber gets seq 1..400 in order', async () => {
    const session = sessionId('cluster-conc');
    const sockets = await subscribersOnBoth(a, b, session);
    const PER = 100;
    const publishers = [
      ['A1', a],
      ['A2', a],
      ['B1', b],
      ['B2', b],
    ];
    const bySeq = new Map();
    await Promise.all(
      publishers.map(async ([name, h]) => {
        let last = 0;
        for (let j = 1; j <= PER; j++) {
          const tag = `${name}-${j}`;
          const res = await h.publish(session, 'model_result', sample('model_result', { result: tag }));
          assert.equal(res.status, 202, `publisher ${name} #${j}: ${res.text}`);
          const { seq } = res.body;
          assert.ok(seq > last, `publisher ${name}: seq ${seq} after ${last}`);
          last = seq;
          assert.ok(!bySeq.has(seq), `seq ${seq} given to both ${bySeq.get(seq)} and ${tag}`);
          bySeq.set(seq, tag);
        }
      }),
    );
    const total = publishers.length * PER;
    assert.deepEqual(
      [...bySeq.keys()].sort((x, y) => x - y),
      range(1, total),
      'the 202s did not hand out exactly seq 1..400',
    );
    for (const [name, socket] of Object.entries(sockets)) {
      await until(() => sessionEvents(socket, session).length >= total, {
        timeoutMs: 10000,
        intervalMs: 50,
        what: `${name} to receive ${total} events (has ${sessionEvents(socket, session).length})`,
      });
    }
    await sleep(200);
    for (const [name, socket] of Object.entries(sockets)) {
      const got = sessionEvents(socket, session);
      assert.deepEqual(
        got.map((e) => e.data.seq),
        range(1, total),
        `${name}: seqs not exactly 1..${total} in increasing order`,
      );
      const wrong = got.filter((e) => e.data.result !== bySeq.get(e.data.seq));
      assert.deepEqual(wrong.slice(0, 5), [], `${name}: payload delivered under another publish's seq`);
    }
  });

  test('session state and stats are cluster-wide on either instance', async () => {
    const session = sessionId('cluster-state');
    const other = sessionId('cluster-state-other');
    // 2 sockets on A, 3 on B; 3 of them watch `session` (2 on A, 1 on B).
    const a1 = await connect(a.url, { transports: ['websocket'] });
    const a2 = await connect(a.url, { transports: ['polling'] });
    const b1 = await connect(b.url, { transports: ['websocket'] });
    const b2 = await connect(b.url, { transports: ['websocket'] });
    const b3 = await connect(b.url, { transports: ['polling'] });
    await subscribe(a1, session);
    await subscribe(a2, session);
    await subscribe(b1, session);
    await subscribe(b2, other);

    for (const h of [a, b]) {
      const fresh = await h.session(session);
      assert.deepEqual(
        { seq: fresh.seq, progress: fresh.progress, completed: fresh.completed, failed: fresh.failed },
        { seq: 0, progress: null, completed: false, failed: false },
      );
    }

    const progress = sample('progress', { progress: 60 });
    assert.equal((await a.publishOk(session, 'progress', progress)).seq, 1);
    assert.equal((await b.publishOk(session, 'completed', sample('completed'))).seq, 2);

    const [sa, sb] = await Promise.all([a.session(session), b.session(session)]);
    for (const [name, s] of [
      ['A', sa],
      ['B', sb],
    ]) {
      assert.equal(s.sessionId, session);
      assert.equal(s.seq, 2, `${name}: seq`);
      assert.equal(s.subscribers, 3, `${name}: subscribers should count both instances (2 on A + 1 on B)`);
      assert.equal(s.completed, true, `${name}: completed`);
      assert.equal(s.failed, false, `${name}: failed`);
      assert.equal(s.progress?.progress, 60, `${name}: last progress`);
    }
    assert.deepEqual(sa, sb, 'A and B disagree about the session');
    assert.equal((await a.session(other)).subscribers, 1, 'the B-only session, asked on A');

    // Instances report their figures every second: wait until both include all 5 sockets.
    const expected = { connections: 5, subscriptions: 4, sessions: 2, scope: 'cluster' };
    const pick = (s) => ({ connections: s.connections, subscriptions: s.subscriptions, sessions: s.sessions, scope: s.scope });
    let last = {};
    await until(
      async () => {
        const [ta, tb] = await Promise.all([a.stats(), b.stats()]);
        last = { A: ta, B: tb };
        return JSON.stringify(pick(ta)) === JSON.stringify(expected) && JSON.stringify(pick(tb)) === JSON.stringify(expected);
      },
      { timeoutMs: 8000, intervalMs: 200, what: 'cluster stats to count 5 connections on both' },
    ).catch((e) => {
      throw new Error(`${e.message}; expected ${JSON.stringify(expected)} from both, last stats: ${JSON.stringify(last)}`);
    });
    assert.equal(last.A.eventsPublished, last.B.eventsPublished, 'eventsPublished differs between A and B');
    assert.ok(last.A.eventsPublished >= 2);
    void b3;
  });

  test('a publish refused with 422 on B consumes no seq', async () => {
    const session = sessionId('cluster-422');
    const wsA = await connect(a.url, { transports: ['websocket'] });
    const pollB = await connect(b.url, { transports: ['polling'] });
    await subscribe(wsA, session);
    await subscribe(pollB, session);

    assert.equal((await a.publishOk(session, 'clarification', sample('clarification', { clarificationId: 'c1' }))).seq, 1);
    const refusals = [
      ['unknown field', () => b.publish(session, 'clarification', sample('clarification', { colour: 'red' }))],
      ['seq in data', () => b.publish(session, 'clarification', sample('clarification', { seq: 2 }))],
      ['unknown event', () => b.publish(session, 'progres', sample('progress'))],
      ['out of range', () => b.publish(session, 'progress', sample('progress', { progress: 101 }))],
      ['other sessionId', () => b.publish(session, 'error', sample('error', { sessionId: `${session}-x` }))],
      [
        'batch with one bad item',
        () =>
          b.publishBatch([
            { sessionId: session, event: 'clarification', data: sample('clarification') },
            { sessionId: session, event: 'clarification', data: sample('clarification', { status: 'maybe' }) },
          ]),
      ],
    ];
    for (const [what, send] of refusals) {
      const res = await send();
      assert.equal(res.status, 422, `${what}: ${res.text}`);
      assert.equal(typeof res.body?.error, 'string', `${what}: ${res.text}`);
    }
    assert.equal(
      (await b.publishOk(session, 'clarification', sample('clarification', { clarificationId: 'c2' }))).seq,
      2,
      'the refused publishes on B consumed a seq',
    );
    const bad = await a.publish(session, 'clarification', sample('clarification', { status: 'unknown' }));
    assert.equal(bad.status, 422, bad.text);
    assert.equal((await a.publishOk(session, 'clarification', sample('clarification', { clarificationId: 'c3' }))).seq, 3);

    for (const [name, socket] of [
      ['A/websocket', wsA],
      ['B/polling', pollB],
    ]) {
      await until(() => sessionEvents(socket, session).length >= 3, { timeoutMs: 5000, what: `${name}: 3 events` });
      await sleep(100);
      assert.deepEqual(
        sessionEvents(socket, session).map((e) => [e.data.seq, e.data.clarificationId]),
        [
          [1, 'c1'],
          [2, 'c2'],
          [3, 'c3'],
        ],
        `${name}: a refused publish was delivered or consumed a seq`,
      );
    }
    assert.equal((await b.session(session)).seq, 3);
  });

  test('Redis killed mid-stream and restarted: 503 while down, sockets stay, delivery resumes on both', async () => {
    const session = sessionId('cluster-outage');
    const sockets = await subscribersOnBoth(a, b, session);
    const epochBefore = (await a.session(session)).epoch;
    const disconnects = [];
    const ids = {};
    for (const [name, s] of Object.entries(sockets)) {
      ids[name] = s.id;
      s.on('disconnect', (reason) => disconnects.push(`${name}: ${reason}`));
    }
    const logStart = { A: a.logs().length, B: b.logs().length };

    // A stream of publishes alternating A/B, running across the kill.
    const stream = [];
    let streaming = true;
    const streamer = (async () => {
      for (let i = 1; streaming && i <= 2000; i++) {
        const [name, h] = i % 2 ? ['A', a] : ['B', b];
        let res;
        try {
          res = await h.publish(session, 'progress', sample('progress', { progress: i % 101 }), { timeoutMs: 5000 });
        } catch (e) {
          res = { status: `no answer (${e.message})`, text: '' };
        }
        stream.push({ i, name, status: res.status, seq: res.body?.seq, body: res.body, at: Date.now() });
        await sleep(15);
      }
    })();

    await until(() => stream.filter((s) => s.status === 202).length >= 20, {
      timeoutMs: 5000,
      what: '20 accepted publishes before the kill',
    });
    const killedAt = Date.now();
    await redis.kill('SIGKILL');

    // Both instances notice within ~3 s and say why.
    const down = await Promise.all(
      [a, b].map((h, i) => waitReadyStatus(h, 503, { timeoutMs: 3000, what: `instance ${'AB'[i]} after the Redis kill` })),
    );
    for (const [i, { res }] of down.entries()) {
      assert.equal(res.body?.status, 'unavailable', res.text);
      assert.equal(res.body?.adapter, 'redis', res.text);
      assert.equal(typeof res.body?.reason, 'string', res.text);
      assert.ok(res.body.reason.length > 0, `instance ${'AB'[i]}: empty reason`);
    }
    const noticedMs = Date.now() - killedAt;

    // Publishes answer 503 JSON on both.
    for (const [name, h] of [
      ['A', a],
      ['B', b],
    ]) {
      const res = await h.publish(session, 'error', sample('error'));
      assert.equal(res.status, 503, `publish on ${name} while Redis is down: ${res.status} ${res.text}`);
      assert.match(res.headers.get('content-type') ?? '', /application\/json/, `publish on ${name}: content type`);
      assert.equal(typeof res.body?.error, 'string', `publish on ${name}: ${res.text}`);
      assert.ok(res.body.error.length > 0);
    }

    // Stats still answer, from this instance alone.
    for (const [name, h] of [
      ['A', a],
      ['B', b],
    ]) {
      const st = await h.stats();
      assert.equal(st.scope, 'instance', `stats on ${name} while Redis is down: ${JSON.stringify(st)}`);
      assert.equal(st.connections, 2, `stats on ${name} while Redis is down: ${JSON.stringify(st)}`);
    }

    // Let the outage last a few probe rounds (the error must not repeat every second), then stop the stream.
    await sleep(2500);
    streaming = false;
    await streamer;

    assert.ok(a.running && b.running, `a herald died during the outage\nA: ${a.logTail(10)}\nB: ${b.logTail(10)}`);
    // A publish in flight at the kill may have run in Redis: herald answers
    // it 504 OUTCOME_UNKNOWN rather than claim it failed.
    const unknown = (s) => s.status === 504 && s.body?.code === 'OUTCOME_UNKNOWN';
    const odd = stream.filter((s) => s.status !== 202 && s.status !== 503 && !unknown(s));
    assert.deepEqual(odd.slice(0, 5), [], 'publishes around the outage answered something other than 202, 503 or 504 OUTCOME_UNKNOWN');
    const after503 = stream.filter((s) => s.status === 503);
    assert.ok(after503.length > 0, 'the stream saw no 503');
    for (const s of after503) assert.equal(typeof s.body?.error, 'string', `503 without JSON error: ${JSON.stringify(s)}`);
    const late202 = stream.filter((s) => s.status === 202 && s.at > killedAt + noticedMs + 100);
    assert.deepEqual(late202, [], 'publishes accepted after /ready said 503 on both');

    // Everything accepted before the kill reached every subscriber, in order, once.
    const accepted = stream.filter((s) => s.status === 202).map((s) => s.seq);
    assert.deepEqual(accepted, range(1, accepted.length), 'the accepted publishes did not get seq 1..n');
    for (const [name, socket] of Object.entries(sockets)) {
      await until(() => seqsOf(socket, session).length >= accepted.length, {
        timeoutMs: 5000,
        what: `${name} to have every event accepted before the kill (has ${JSON.stringify(seqsOf(socket, session))}, accepted 1..${accepted.length})`,
      });
      const seqs = seqsOf(socket, session);
      // A publish in flight at the kill may have run in Redis without its 202 coming back.
      assert.deepEqual(seqs, range(1, seqs.length), `${name}: seqs around the outage not 1..n in order`);
    }

    // Local sockets still connected and usable while Redis is down.
    assert.deepEqual(disconnects, [], 'clients saw a disconnect during the outage');
    for (const [name, s] of Object.entries(sockets)) {
      assert.equal(s.connected, true, `${name} is no longer connected`);
      assert.equal(s.id, ids[name], `${name} reconnected under a new id`);
    }
    // A subscribe while Redis is down waits for it (up to 30 s) rather than
    // answering from nothing: no ack and no `subscribed` yet.
    const late = sessionId('during-outage');
    const waiting = sockets['B/websocket'];
    let lateAck;
    const lateAnswer = waiting
      .timeout(30000)
      .emitWithAck('subscribe', late)
      .then((ack) => {
        lateAck = ack;
        return ack;
      });
    lateAnswer.catch(() => {}); // awaited below; a test failing before must not leave it unhandled
    await sleep(700);
    assert.equal(lateAck, undefined, `a subscribe during the outage was answered: ${JSON.stringify(lateAck)}`);
    assert.deepEqual(
      waiting.received.filter((r) => r.event === 'subscribed' && r.args[0]?.sessionId === late),
      [],
      'subscribed sent for a subscribe during the outage',
    );

    // Redis back on the same port (empty: no persistence).
    const restartedAt = Date.now();
    await redis.start();
    const up = await Promise.all(
      [a, b].map((h, i) => waitReadyStatus(h, 200, { timeoutMs: 5000, what: `instance ${'AB'[i]} after Redis restarted` })),
    );
    for (const { res } of up) assert.deepEqual(res.body, { status: 'ready', adapter: 'redis' });
    const recoveredMs = Date.now() - restartedAt;

    // The subscribe made during the outage takes effect now: a session
    // nothing was published to, in an epoch both instances agree on.
    const ackLate = await lateAnswer;
    const subscribedLate = waiting.received.filter((r) => r.event === 'subscribed' && r.args[0]?.sessionId === late);
    assert.equal(subscribedLate.length, 1, 'one subscribed for the subscribe made during the outage');
    assertSubscribeAck(ackLate, late, { seq: 0, epoch: subscribedLate[0].args[0].epoch });
    assert.equal((await b.session(late)).epoch, ackLate.epoch);
    assert.equal((await a.session(late)).epoch, ackLate.epoch);

    const r1 = await a.publishOk(session, 'clarification', sample('clarification', { clarificationId: 'after-A' }));
    const r2 = await b.publishOk(session, 'clarification', sample('clarification', { clarificationId: 'after-B' }));
    assert.ok(Number.isInteger(r1.seq) && r1.seq >= 1, `seq after the restart: ${r1.seq}`);
    assert.equal(r2.seq, r1.seq + 1, 'after the restart, A and B no longer share one seq');
    // Redis lost the session's state, so its sequence is a new one: a new
    // epoch, the same on both instances.
    const [epochA, epochB] = [(await a.session(session)).epoch, (await b.session(session)).epoch];
    assert.match(epochA, EPOCH);
    assert.equal(epochB, epochA, 'A and B disagree about the epoch after the restart');
    assert.notEqual(epochA, epochBefore, 'the epoch did not change although Redis lost the session');
    for (const [name, socket] of Object.entries(sockets)) {
      const clar = () => sessionEvents(socket, session).filter((e) => e.event === 'clarification');
      await until(() => clar().length >= 2, {
        timeoutMs: 5000,
        what: `${name} to receive the publishes made on A and B after Redis came back (got ${JSON.stringify(clar())})`,
      });
      await sleep(50);
      assert.deepEqual(
        clar().map((e) => [e.data.clarificationId, e.data.seq]),
        [
          ['after-A', r1.seq],
          ['after-B', r2.seq],
        ],
        `${name}: events after the restart`,
      );
    }
    assert.deepEqual(disconnects, [], 'clients saw a disconnect');

    // The cluster-wide questions work again too.
    let lastState = {};
    await until(
      async () => {
        const [sa, sb] = await Promise.all([a.session(session), b.session(session)]);
        lastState = { A: sa, B: sb };
        return sa.subscribers === 4 && sb.subscribers === 4 && sa.seq === r2.seq && sb.seq === r2.seq;
      },
      { timeoutMs: 3000, intervalMs: 100, what: 'session state after the restart' },
    ).catch((e) => {
      throw new Error(`${e.message}: expected 4 subscribers and seq ${r2.seq} on both, got ${JSON.stringify(lastState)}`);
    });
    await until(async () => (await a.stats()).scope === 'cluster' && (await b.stats()).scope === 'cluster', {
      timeoutMs: 3000,
      what: 'stats scope "cluster" on both after the restart',
    });

    // One error per instance for the outage, not one per second or per request.
    for (const [name, h] of [
      ['A', a],
      ['B', b],
    ]) {
      const logged = h.logs().slice(logStart[name]);
      const downLines = linesWith(logged, 'cluster link down');
      assert.ok(downLines.length >= 1, `instance ${name} logged no "cluster link down"\n${logged}`);
      assert.ok(downLines.length <= 2, `instance ${name} logged "cluster link down" ${downLines.length} times:\n${downLines.join('\n')}`);
      assert.ok(linesWith(logged, 'cluster link up').length >= 1, `instance ${name} never logged "cluster link up"\n${logged}`);
      const loud = logged.split('\n').filter((l) => /\b(ERROR|WARN)\b/.test(l));
      assert.ok(loud.length <= 4, `instance ${name} logged ${loud.length} ERROR/WARN lines for one outage:\n${loud.slice(0, 20).join('\n')}`);
    }
    console.log(`# outage: /ready 503 on both ${noticedMs} ms after the kill, 200 on both ${recoveredMs} ms after the restart`);
  });
});
