// Room membership as clients see it: unsubscribe stops delivery, sessions are
// isolated from each other, one socket can follow several sessions, and a burst
// of subscribe/unsubscribe emits leaves exactly the last state.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald,
  connect,
  closeAll,
  waitFor,
  subscribe,
  unsubscribe,
  sample,
  sessionId,
  received,
  sessionEvents,
  assertSubscribed,
  assertSubscribeAck,
  sleep,
  until,
} from './lib/herald.mjs';

const QUIET_WINDOW_MS = 700;

/** Published session events on `socket` (not replies), as [event, sessionId, seq]. */
function published(socket, fromIndex = 0) {
  return sessionEvents(socket, undefined, { from: fromIndex }).map((e) => [e.event, e.data.sessionId, e.data.seq]);
}

describe('subscriptions', () => {
  let herald;
  before(async () => {
    herald = await startHerald();
  });
  afterEach(() => closeAll());
  after(async () => {
    closeAll();
    await herald?.kill();
  });

  test('unsubscribe stops delivery while a control subscriber still receives', async () => {
    const session = sessionId('unsub');
    const leaver = await connect(herald.url, { transports: ['websocket'] });
    const control = await connect(herald.url, { transports: ['websocket'] });
    const first = await subscribe(leaver, session, { herald });
    await subscribe(control, session, { herald, epoch: first.event.epoch });

    // Both receive while subscribed.
    const a1 = waitFor(leaver, 'progress', (d) => d.sessionId === session && d.seq === 1);
    const c1 = waitFor(control, 'progress', (d) => d.sessionId === session && d.seq === 1);
    await herald.publishOk(session, 'progress', sample('progress'));
    await Promise.all([a1, c1]);
    assert.equal((await herald.session(session)).subscribers, 2);

    const { ack, event } = await unsubscribe(leaver, session);
    assert.deepEqual(ack, { ok: true, sessionId: session });
    assert.equal(event.sessionId, session);
    assert.equal(typeof event.timestamp, 'string');
    assert.equal((await herald.session(session)).subscribers, 1);

    const mark = leaver.received.length;
    const c2 = waitFor(control, 'model_result', (d) => d.sessionId === session && d.seq === 2);
    const c3 = waitFor(control, 'completed', (d) => d.sessionId === session && d.seq === 3);
    await herald.publishOk(session, 'model_result', sample('model_result'));
    await herald.publishOk(session, 'completed', sample('completed'));
    await Promise.all([c2, c3]);
    await sleep(QUIET_WINDOW_MS);
    assert.deepEqual(published(leaver, mark), [], 'the unsubscribed socket still received events');
    assert.deepEqual(published(control), [
      ['progress', session, 1],
      ['model_result', session, 2],
      ['completed', session, 3],
    ]);

    // Unsubscribing from a session one is not in is still acknowledged.
    const again = await unsubscribe(leaver, session);
    assert.deepEqual(again.ack, { ok: true, sessionId: session });
    // And the socket can come back: at seq 3, in the same epoch, with the
    // snapshot (latest progress, then the completed event) exactly as the
    // control subscriber first got them, then live events.
    const [progress1, , completed3] = sessionEvents(control, session);
    assert.deepEqual(
      [progress1.event, progress1.data.seq, completed3.event, completed3.data.seq],
      ['progress', 1, 'completed', 3],
    );
    const mark2 = leaver.received.length;
    const back = await subscribe(leaver, session, {
      herald,
      seq: 3,
      epoch: first.event.epoch,
      snapshot: [progress1, completed3],
    });
    assert.deepEqual(back.held.map((e) => e.data.seq), [1, 3]);
    const live = waitFor(leaver, 'clarification', (d) => d.sessionId === session && d.seq === 4);
    await herald.publishOk(session, 'clarification', sample('clarification'));
    await live;
    await sleep(QUIET_WINDOW_MS);
    assert.deepEqual(published(leaver, mark2), [
      ['progress', session, 1],
      ['completed', session, 3],
      ['clarification', session, 4],
    ]);
  });

  test('sessions are isolated from each other', async () => {
    const s1 = sessionId('iso-a');
    const s2 = sessionId('iso-b');
    const s3 = sessionId('iso-c'); // nobody subscribed
    const a = await connect(herald.url, { transports: ['websocket'] });
    const b = await connect(herald.url, { transports: ['websocket'] });
    const idle = await connect(herald.url, { transports: ['websocket'] });
    await subscribe(a, s1);
    await subscribe(b, s2);

    const aDone = waitFor(a, 'completed', (d) => d.sessionId === s1);
    const bDone = waitFor(b, 'completed', (d) => d.sessionId === s2);
    await herald.publishOk(s1, 'progress', sample('progress', { progress: 10 }));
    await herald.publishOk(s2, 'progress', sample('progress', { progress: 20 }));
    await herald.publishOk(s3, 'progress', sample('progress', { progress: 30 }));
    await herald.publishOk(s2, 'completed', sample('completed'));
    await herald.publishOk(s1, 'completed', sample('completed'));
    await Promise.all([aDone, bDone]);
    await sleep(QUIET_WINDOW_MS);

    assert.deepEqual(published(a), [
      ['progress', s1, 1],
      ['completed', s1, 2],
    ]);
    assert.deepEqual(published(b), [
      ['progress', s2, 1],
      ['completed', s2, 2],
    ]);
    assert.equal(received(a, 'progress')[0].progress, 10);
    assert.equal(received(b, 'progress')[0].progress, 20);
    assert.deepEqual(published(idle), [], 'a socket with no subscription received events');
  });

  test('a session id is not confused with a socket id (rooms are namespaced)', async () => {
    const target = await connect(herald.url, { transports: ['websocket'] });
    const other = await connect(herald.url, { transports: ['websocket'] });
    // Publishing to a "session" named like another socket's id must not reach that socket.
    const asSession = target.id;
    assert.match(asSession, /^[A-Za-z0-9._:-]{1,128}$/, 'socket id happens to be a valid session id');
    await subscribe(other, asSession);
    const arriving = waitFor(other, 'progress', (d) => d.sessionId === asSession);
    await herald.publishOk(asSession, 'progress', sample('progress'));
    await arriving;
    await sleep(QUIET_WINDOW_MS);
    assert.deepEqual(published(target), [], 'event for session named after a socket id reached that socket');
  });

  test('several sessions on one socket: each event tagged with its own sessionId and seq', async () => {
    const socket = await connect(herald.url, { transports: ['websocket'] });
    const sessions = [sessionId('multi-a'), sessionId('multi-b'), sessionId('multi-c')];
    for (const s of sessions) await subscribe(socket, s);
    assert.equal((await herald.stats()).subscriptions >= 3, true);

    // Interleave: a, b, c, a, b, c, each carrying a marker.
    const expected = [];
    const counters = new Map();
    for (let round = 0; round < 2; round++) {
      for (const [i, s] of sessions.entries()) {
        const seq = (counters.get(s) ?? 0) + 1;
        counters.set(s, seq);
        const data = sample('model_result', { modelName: `model-${i}-${round}` });
        await herald.publishOk(s, 'model_result', data);
        expected.push(['model_result', s, seq, data.modelName]);
      }
    }
    await until(() => received(socket, 'model_result').length >= expected.length, {
      timeoutMs: 5000,
      what: `${expected.length} model_result events`,
    });
    await sleep(300);
    const got = received(socket, 'model_result').map((d) => ['model_result', d.sessionId, d.seq, d.modelName]);
    assert.deepEqual(got, expected);

    // Leaving one session leaves the others.
    await unsubscribe(socket, sessions[1]);
    const mark = socket.received.length;
    for (const s of sessions) await herald.publishOk(s, 'completed', sample('completed'));
    await waitFor(socket, 'completed', (d) => d.sessionId === sessions[2], 3000, { past: true });
    await sleep(QUIET_WINDOW_MS);
    assert.deepEqual(published(socket, mark), [
      ['completed', sessions[0], 3],
      ['completed', sessions[2], 3],
    ]);
  });

  test('subscribing twice to the same session delivers each event once', async () => {
    const socket = await connect(herald.url, { transports: ['websocket'] });
    const session = sessionId('twice');
    const { event } = await subscribe(socket, session, { herald });
    await subscribe(socket, session, { herald, epoch: event.epoch });
    assert.equal((await herald.session(session)).subscribers, 1);
    await herald.publishOk(session, 'progress', sample('progress'));
    await waitFor(socket, 'progress', (d) => d.sessionId === session, 3000, { past: true });
    await sleep(QUIET_WINDOW_MS);
    assert.deepEqual(published(socket), [['progress', session, 1]]);
  });

  test('1,001 back-to-back alternating subscribe/unsubscribe emits end subscribed, one delivery', async () => {
    const socket = await connect(herald.url, { transports: ['websocket'] });
    const session = sessionId('churn');
    const EMITS = 1001; // subscribe, unsubscribe, ..., subscribe
    let lastAck;
    for (let i = 0; i < EMITS; i++) {
      const event = i % 2 === 0 ? 'subscribe' : 'unsubscribe';
      if (i === EMITS - 1) {
        lastAck = socket.timeout(15000).emitWithAck(event, session);
      } else {
        socket.emit(event, session);
      }
    }
    const ack = await lastAck;
    const { epoch } = await herald.session(session);
    assertSubscribeAck(ack, session, { seq: 0, epoch });

    // Every emit was answered, in order; the last reply is `subscribed`.
    await until(
      () => received(socket, 'subscribed').length + received(socket, 'unsubscribed').length >= EMITS,
      { timeoutMs: 15000, what: `${EMITS} subscribed/unsubscribed replies` },
    );
    const replies = socket.received
      .filter((r) => r.event === 'subscribed' || r.event === 'unsubscribed')
      .map((r) => r.event);
    assert.equal(replies.length, EMITS);
    assert.equal(replies.filter((e) => e === 'subscribed').length, 501);
    assert.equal(replies.filter((e) => e === 'unsubscribed').length, 500);
    assert.ok(
      replies.every((e, i) => e === (i % 2 === 0 ? 'subscribed' : 'unsubscribed')),
      'replies not in emit order',
    );
    // Every `subscribed`: nothing published yet (seq 0), one epoch throughout.
    for (const payload of received(socket, 'subscribed')) assertSubscribed(payload, session, { seq: 0, epoch });

    assert.equal((await herald.session(session)).subscribers, 1);

    const data = sample('completed');
    await herald.publishOk(session, 'completed', data);
    await waitFor(socket, 'completed', (d) => d.sessionId === session, 5000, { past: true });
    await sleep(1000); // catch duplicates
    const got = received(socket, 'completed').filter((d) => d.sessionId === session);
    assert.equal(got.length, 1, `expected exactly one delivery, got ${got.length}`);
    assert.equal(got[0].seq, 1);

    const state = await herald.session(session);
    assert.equal(state.subscribers, 1);
    assert.equal(state.seq, 1);
  });

  test('a disconnected socket no longer counts as a subscriber', async () => {
    const socket = await connect(herald.url, { transports: ['websocket'] });
    const session = sessionId('gone');
    await subscribe(socket, session);
    assert.equal((await herald.session(session)).subscribers, 1);
    socket.disconnect();
    await until(async () => (await herald.session(session)).subscribers === 0, {
      timeoutMs: 5000,
      what: 'subscribers to drop to 0 after disconnect',
    });
    const res = await herald.publish(session, 'progress', sample('progress'));
    assert.equal(res.status, 202);
    assert.equal(res.body.seq, 1);
  });
});
