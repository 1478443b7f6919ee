// Every session event type, published over HTTP and received by a stock
// client: the payload arrives deep-equal to what was published, plus
// `sessionId`, an ISO `timestamp` and a per-session `seq` growing by one.

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
  isRecentIsoTimestamp,
  received,
  sessionEvents,
  EPOCH,
  sleep,
} from './lib/herald.mjs';

/** Publish `data` as `event` and return the delivered payload, checking the envelope. */
async function roundTrip(herald, socket, session, event, data, expectedSeq) {
  const arriving = waitFor(socket, event, (d) => d && d.sessionId === session && d.seq === expectedSeq);
  const res = await herald.publish(session, event, data);
  assert.equal(res.status, 202, `publish ${event}: ${res.text}`);
  assert.deepEqual(res.body, { sessionId: session, event, seq: expectedSeq });
  const got = await arriving;
  const { sessionId: sid, timestamp, seq, ...rest } = got;
  assert.equal(sid, session);
  assert.equal(seq, expectedSeq);
  if (data.timestamp !== undefined) {
    assert.equal(timestamp, data.timestamp, 'a timestamp given in data is kept');
  } else {
    assert.ok(isRecentIsoTimestamp(timestamp), `server timestamp not ISO 8601/recent: ${timestamp}`);
  }
  const { timestamp: _t, sessionId: _s, ...publishedRest } = data;
  assert.deepEqual(rest, publishedRest, `${event} payload changed in transit`);
  return got;
}

describe('event types', () => {
  let herald;
  let socket;
  before(async () => {
    herald = await startHerald();
    socket = await connect(herald.url, { transports: ['websocket'] });
  });
  after(async () => {
    closeAll();
    await herald?.kill();
  });

  test('all five events, with and without optional fields, in order with seq 1..n', async () => {
    const session = sessionId('types');
    const { event: subscribed } = await subscribe(socket, session, { herald });

    const payloads = [
      ['progress', sample('progress')],
      [
        'progress',
        sample('progress', {
          status: 'COMPLETED',
          progress: 100,
          prompts: { total: 3, completed: 3, processing: 0, pending: 0, failed: 0 },
          hasClarifications: false,
          clarificationCount: 0,
          hasResult: true,
          result: { answer: 42, items: [1, 'two', { three: 3 }], empty: {}, flag: false, none: null },
        }),
      ],
      ['progress', sample('progress', { status: 'ACTIVE', progress: 0, hasResult: false })],
      ['model_result', sample('model_result')],
      [
        'model_result',
        sample('model_result', {
          modelName: 'gpt-4o',
          status: 'failed',
          result: '',
          duration: 0,
          error: 'rate limited by provider',
          provider: 'openai',
        }),
      ],
      ['model_result', sample('model_result', { status: 'processing', provider: 'ollama', duration: 12.5 })],
      ['clarification', sample('clarification')],
      ['clarification', sample('clarification', { status: 'answered', question: 'Unicode ok? ü €  "quotes" \\ \n' })],
      ['error', sample('error')],
      ['completed', sample('completed')],
      ['completed', sample('completed', { result: {} })],
    ];

    let expectedSeq = 0;
    for (const [event, data] of payloads) {
      expectedSeq += 1;
      await roundTrip(herald, socket, session, event, data, expectedSeq);
    }

    // Nothing else for this session arrived, and the seqs seen are exactly 1..n in order.
    const seqs = sessionEvents(socket, session).map((e) => [e.event, e.data.seq]);
    assert.deepEqual(
      seqs,
      payloads.map(([event], i) => [event, i + 1]),
    );

    const state = await herald.session(session);
    assert.equal(state.sessionId, session);
    assert.equal(state.seq, payloads.length);
    assert.equal(state.epoch, subscribed.epoch, 'publishing does not change the epoch');
    assert.equal(state.subscribers, 1);
    assert.equal(state.completed, true);
    assert.equal(state.failed, true, 'an error event was published, so failed is true');
    // Latest progress payload is the third one.
    assert.equal(state.progress.status, 'ACTIVE');
    assert.equal(state.progress.progress, 0);
  });

  test('a timestamp given in data is kept as is', async () => {
    const session = sessionId('ts');
    await subscribe(socket, session);
    const ts = '2024-01-02T03:04:05.678Z';
    let seq = 0;
    for (const event of ['progress', 'model_result', 'clarification', 'error', 'completed']) {
      seq += 1;
      await roundTrip(herald, socket, session, event, sample(event, { timestamp: ts }), seq);
    }
  });

  test('a sessionId in data equal to the path is accepted and delivered', async () => {
    const session = sessionId('samesid');
    await subscribe(socket, session);
    const got = await roundTrip(herald, socket, session, 'completed', sample('completed', { sessionId: session }), 1);
    assert.equal(got.sessionId, session);
  });

  test('null for an optional field means absent', async () => {
    const session = sessionId('nulls');
    await subscribe(socket, session);
    const arriving = waitFor(socket, 'model_result', (d) => d.sessionId === session);
    const res = await herald.publish(session, 'model_result', sample('model_result', { error: null, provider: null }));
    assert.equal(res.status, 202, res.text);
    const got = await arriving;
    assert.equal(got.modelName, sample('model_result').modelName);
    assert.ok(got.error === undefined || got.error === null, `error should be absent, got ${JSON.stringify(got.error)}`);
    assert.ok(got.provider === undefined || got.provider === null);
  });

  test('GET session of a session never published to', async () => {
    const session = sessionId('never');
    const state = await herald.session(session);
    assert.deepEqual(state, {
      sessionId: session,
      seq: 0,
      epoch: null,
      progress: null,
      completed: false,
      failed: false,
      subscribers: 0,
    });
  });

  test('progress status COMPLETED / FAILED set the completed / failed flags', async () => {
    const a = sessionId('flagc');
    const b = sessionId('flagf');
    await herald.publishOk(a, 'progress', sample('progress', { status: 'COMPLETED', progress: 100 }));
    await herald.publishOk(b, 'progress', sample('progress', { status: 'FAILED' }));
    const sa = await herald.session(a);
    const sb = await herald.session(b);
    assert.equal(sa.seq, 1);
    assert.equal(sa.completed, true);
    assert.equal(sa.failed, false);
    assert.equal(sa.progress.status, 'COMPLETED');
    assert.equal(sb.completed, false);
    assert.equal(sb.failed, true);
    // A session's epoch exists from its first publish, subscriber or not.
    assert.match(sa.epoch, EPOCH);
    assert.match(sb.epoch, EPOCH);
  });

  test('a published error is told apart from a request error: it has seq and no code', async () => {
    const session = sessionId('errkind');
    await subscribe(socket, session);
    const got = await roundTrip(herald, socket, session, 'error', sample('error'), 1);
    assert.equal(got.code, undefined);
    assert.equal(got.seq, 1);
  });

  test('batch publish delivers every item in order with per-session seqs', async () => {
    const s1 = sessionId('batch1');
    const s2 = sessionId('batch2');
    await subscribe(socket, s1);
    await subscribe(socket, s2);
    const before = socket.received.length;
    const items = [
      { sessionId: s1, event: 'progress', data: sample('progress') },
      { sessionId: s2, event: 'model_result', data: sample('model_result') },
      { sessionId: s1, event: 'completed', data: sample('completed') },
    ];
    const done = waitFor(socket, 'completed', (d) => d.sessionId === s1);
    const res = await herald.publishBatch(items);
    assert.equal(res.status, 202, res.text);
    assert.deepEqual(res.body, {
      results: [
        { sessionId: s1, event: 'progress', seq: 1 },
        { sessionId: s2, event: 'model_result', seq: 1 },
        { sessionId: s1, event: 'completed', seq: 2 },
      ],
    });
    await done;
    await waitFor(socket, 'model_result', (d) => d.sessionId === s2, 2000, { past: true });
    await sleep(200);
    const got = sessionEvents(socket, undefined, { from: before }).map((e) => ({
      event: e.event,
      sessionId: e.data.sessionId,
      seq: e.data.seq,
    }));
    const s1Events = got.filter((g) => g.sessionId === s1);
    assert.deepEqual(s1Events, [
      { event: 'progress', sessionId: s1, seq: 1 },
      { event: 'completed', sessionId: s1, seq: 2 },
    ]);
    assert.deepEqual(
      got.filter((g) => g.sessionId === s2),
      [{ event: 'model_result', sessionId: s2, seq: 1 }],
    );
    for (const item of items) {
      const payload = received(socket, item.event).find((d) => d.sessionId === item.sessionId);
      const { sessionId: _s, timestamp, seq: _q, ...rest } = payload;
      assert.ok(isRecentIsoTimestamp(timestamp));
      assert.deepEqual(rest, item.data);
    }
  });

  test('an empty batch is a no-op 202', async () => {
    const res = await herald.publishBatch([]);
    assert.equal(res.status, 202, res.text);
    assert.deepEqual(res.body, { results: [] });
  });
});
