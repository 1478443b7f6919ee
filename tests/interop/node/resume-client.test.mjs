// client-examples/resume/herald-resume.js (watchSession) on a stock
// socket.io-client socket against a real herald: what an app receives when
// its connection is cut while a session is being published, when an event
// arrives twice or goes missing on the way, when herald's history no longer
// holds what was missed, and when herald lost the session (a new epoch).
//
// The connection is cut with a TCP proxy between the client and herald: it
// closes every connection through it and turns new ones away for a while,
// as a network going down does; herald itself is not told.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { startProxy } from '../tcp-proxy.mjs';
import { REPO_ROOT, HOST, startHerald, createSocket, closeAll, sessionId, sample, until, sleep } from './lib/herald.mjs';

const { watchSession } = await import(pathToFileURL(path.join(REPO_ROOT, 'client-examples/resume/herald-resume.js')).href);

// Reconnect fast: the outages below last a few hundred milliseconds.
const FAST_RECONNECT = { reconnectionDelay: 50, reconnectionDelayMax: 200, randomizationFactor: 0 };


/**
 * watchSession on `socket`, recording what the app is handed: `events` as
 * [name, seq], every `subscribed` info, every `lost` info.
 */
function watch(socket, session, options) {
  const seen = { events: [], subscribed: [], lost: [], refused: [] };
  seen.stop = watchSession(
    socket,
    session,
    {
      event: (name, data) => seen.events.push([name, data.seq]),
      subscribed: (info) => seen.subscribed.push(info),
      lost: (info) => seen.lost.push(info),
      refused: (reply) => seen.refused.push(reply),
    },
    options,
  );
  seen.seqs = () => seen.events.map(([, seq]) => seq);
  return seen;
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** The events of a long session: model results and progress, then completed. */
function streamEvent(i, total) {
  if (i === total) return ['completed', sample('completed')];
  if (i % 2) return ['model_result', sample('model_result', { modelName: `model-${i}` })];
  return ['progress', sample('progress', { progress: Math.round((100 * i) / total) })];
}

async function waitForSeq(seen, seq, what, timeoutMs = 15000) {
  await until(() => seen.seqs().includes(seq), {
    timeoutMs,
    what: `${what}: seq ${seq} handed to the app (got ${JSON.stringify(seen.seqs())}, subscribed ${JSON.stringify(seen.subscribed)})`,
  });
}

describe('client-examples/resume (watchSession) against a real herald', () => {
  let herald;
  let proxy;
  before(async () => {
    herald = await startHerald();
    proxy = await startProxy(herald.port);
  });
  after(async () => {
    closeAll();
    await proxy?.close();
    await herald?.kill();
  });

  for (const transports of [['websocket'], ['polling']]) {
    test(`a connection cut while 200 events are published: every event exactly once, in order (${transports})`, async () => {
      const session = sessionId('resume-cut');
      const socket = createSocket(proxy.url, { transports, ...FAST_RECONNECT });
      const seen = watch(socket, session);
      await until(() => seen.subscribed.length === 1, { what: 'the first subscription' });
      assert.equal(seen.subscribed[0].since, undefined, 'the first subscribe asks for a snapshot');
      const firstSid = socket.id;

      const total = 200;
      const names = [];
      for (let i = 1; i <= total; i++) {
        if (i === 60) {
          await waitForSeq(seen, 59, 'before the cut');
          proxy.down(); // the connection drops; reconnecting fails for now
        }
        if (i === 140) {
          await sleep(200);
          proxy.up();
        }
        const [event, data] = streamEvent(i, total);
        names.push(event);
        const { seq } = await herald.publishOk(session, event, data);
        assert.equal(seq, i);
      }
      await waitForSeq(seen, total, 'after the reconnect');
      await sleep(200); // anything more (a duplicate) would arrive now

      assert.deepEqual(seen.seqs(), range(1, total), 'every seq once, in order');
      assert.deepEqual(seen.events.map(([name]) => name), names, 'each seq with its event');
      assert.notEqual(socket.id, firstSid, 'the socket reconnected');
      const resumes = seen.subscribed.slice(1);
      assert.ok(resumes.length >= 1, `resubscribed after the cut: ${JSON.stringify(seen.subscribed)}`);
      const resume = resumes.find((r) => r.replayed > 0);
      assert.ok(resume, `one resume replayed what was missed: ${JSON.stringify(resumes)}`);
      assert.ok(resume.since >= 59 && resume.since < 140, `resumed from where it was: ${JSON.stringify(resume)}`);
      for (const r of resumes) {
        assert.equal(r.recovered, true, `nothing lost: ${JSON.stringify(r)}`);
        assert.equal(r.epoch, seen.subscribed[0].epoch, 'same epoch');
      }
      assert.deepEqual(seen.lost, []);
      assert.equal(seen.stop.stats.received, total);
      assert.equal(seen.stop.stats.missed, 0);
      assert.deepEqual(seen.stop.position, { seq: total, epoch: seen.subscribed[0].epoch });
      await seen.stop();
      socket.disconnect();
    });
  }

  test('a late start gets the snapshot, then every later event; a reload resumes from storage', async () => {
    const session = sessionId('resume-snapshot');
    for (let i = 1; i <= 5; i++) await herald.publishOk(session, ...streamEvent(i, 20));
    // seq 5 is a model result: the snapshot is the latest progress (seq 4).
    const storage = new Map();
    const store = { getItem: (k) => storage.get(k) ?? null, setItem: (k, v) => storage.set(k, v) };
    const socket = createSocket(herald.url, { transports: ['websocket'] });
    const first = watch(socket, session, { storage: store });
    await until(() => first.subscribed.length === 1 && first.events.length === 1, { what: 'the snapshot' });
    assert.deepEqual(first.events, [['progress', 4]]);
    assert.equal(first.subscribed[0].seq, 5);
    await herald.publishOk(session, ...streamEvent(6, 20));
    await waitForSeq(first, 6, 'live after the snapshot');
    // The app goes away (a page reload) while events keep coming.
    await first.stop();
    socket.disconnect();
    for (let i = 7; i <= 9; i++) await herald.publishOk(session, ...streamEvent(i, 20));

    const again = createSocket(herald.url, { transports: ['websocket'] });
    const second = watch(again, session, { storage: store });
    await waitForSeq(second, 9, 'after the reload');
    await herald.publishOk(session, ...streamEvent(10, 20));
    await waitForSeq(second, 10, 'live after the reload');
    await sleep(100);
    assert.deepEqual(second.seqs(), [7, 8, 9, 10], 'exactly what the first one did not get');
    assert.equal(second.subscribed[0].since, 6);
    assert.equal(second.subscribed[0].recovered, true);
    assert.equal(second.stop.stats.received, 2 + 4, 'stats kept in storage (snapshot, 6; then 7..10)');
    await second.stop();
    again.disconnect();
  });

  test('an event delivered twice is handed to the app once', async () => {
    const session = sessionId('resume-dup');
    const socket = createSocket(herald.url, { transports: ['websocket'] });
    const seen = watch(socket, session);
    await until(() => seen.subscribed.length === 1, { what: 'the first subscription' });
    for (let i = 1; i <= 10; i++) await herald.publishOk(session, ...streamEvent(i, 20));
    await waitForSeq(seen, 10, 'live');
    // Something else on this socket asks for the whole history again: herald
    // sends seqs 1..10 a second time.
    const again = await socket.timeout(5000).emitWithAck('subscribe', { sessionId: session, since: 0 });
    assert.equal(again.ok, true);
    await until(() => seen.stop.stats.duplicates === 10, {
      what: `10 duplicates dropped (stats ${JSON.stringify(seen.stop.stats)})`,
    });
    await herald.publishOk(session, ...streamEvent(11, 20));
    await waitForSeq(seen, 11, 'live after the duplicates');
    assert.deepEqual(seen.seqs(), range(1, 11));
    assert.equal(seen.subscribed.length, 1, 'a reply to a subscribe it did not send is not taken for its own');
    await seen.stop();
    socket.disconnect();
  });

  test('an event missing from a live stream is fetched again from history, before what follows it', async () => {
    const session = sessionId('resume-hole');
    const socket = createSocket(herald.url, { transports: ['websocket'] });
    // Lose seq 5 on the way in, once, as a socket that overflowed would.
    // (socket.io-client hands every incoming event to emitEvent.)
    const emitEvent = socket.emitEvent.bind(socket);
    let dropped = 0;
    socket.emitEvent = (args) => {
      if (args[1]?.sessionId === session && args[1]?.seq === 5 && dropped === 0) {
        dropped += 1;
        return;
      }
      emitEvent(args);
    };
    const seen = watch(socket, session);
    await until(() => seen.subscribed.length === 1, { what: 'the first subscription' });
    for (let i = 1; i <= 12; i++) await herald.publishOk(session, ...streamEvent(i, 20));
    await waitForSeq(seen, 12, 'the end of the stream');
    await sleep(100);
    assert.equal(dropped, 1, 'seq 5 was dropped on the way once');
    assert.deepEqual(seen.seqs(), range(1, 12), 'the hole filled, in order, nothing twice');
    assert.equal(seen.stop.stats.resyncs, 1);
    assert.deepEqual(seen.lost, []);
    const resync = seen.subscribed[1];
    assert.equal(resync.since, 4, `resubscribed from the last seq before the hole: ${JSON.stringify(resync)}`);
    assert.equal(resync.recovered, true);
    await seen.stop();
    socket.disconnect();
  });

  test('a subscribe herald never answers is sent again', async () => {
    const session = sessionId('resume-unanswered');
    const socket = createSocket(herald.url, { transports: ['websocket'] });
    // Lose the first subscribe on the way out, as herald may lose one sent
    // the instant the connection opens.
    const emit = socket.emit.bind(socket);
    const subscribes = [];
    socket.emit = (event, ...args) => {
      if (event === 'subscribe') {
        subscribes.push(args[0]);
        if (subscribes.length === 1) return socket;
      }
      return emit(event, ...args);
    };
    const seen = watch(socket, session, { answerTimeoutMs: 300 });
    await until(() => seen.subscribed.length === 1, { what: 'the subscription, asked again' });
    assert.equal(subscribes.length, 2, `subscribes sent: ${JSON.stringify(subscribes)}`);
    await herald.publishOk(session, ...streamEvent(1, 20));
    await waitForSeq(seen, 1, 'live');
    await sleep(700); // answered: not asked a third time
    assert.equal(subscribes.length, 2);
    await seen.stop();
    socket.disconnect();
  });

  test('a subscription herald refuses is reported, not retried in a loop', async () => {
    const socket = createSocket(herald.url, { transports: ['websocket'] });
    const seen = watch(socket, 'not a valid id!');
    await until(() => seen.refused.length === 1, { what: 'the refusal' });
    assert.equal(seen.refused[0].code, 'INVALID_SESSION_ID');
    await sleep(200);
    assert.equal(seen.refused.length, 1);
    assert.deepEqual(seen.subscribed, []);
    await seen.stop();
    socket.disconnect();
  });
});

describe('client-examples/resume when herald cannot give everything back', () => {
  let herald;
  let proxy;
  before(async () => {
    herald = await startHerald({ args: ['--history-max-events', '5'] });
    proxy = await startProxy(herald.port);
  });
  after(async () => {
    closeAll();
    await proxy?.close();
    await herald?.kill();
  });

  test('history truncated: reported through lost, counted as missed, then the rest in order', async () => {
    const session = sessionId('resume-truncated');
    const socket = createSocket(proxy.url, { transports: ['websocket'], ...FAST_RECONNECT });
    const seen = watch(socket, session);
    await until(() => seen.subscribed.length === 1, { what: 'the first subscription' });
    for (let i = 1; i <= 3; i++) await herald.publishOk(session, ...streamEvent(i, 30));
    await waitForSeq(seen, 3, 'before the cut');
    proxy.down();
    // 17 events while away; herald keeps the last 5 (16..20).
    for (let i = 4; i <= 20; i++) await herald.publishOk(session, ...streamEvent(i, 30));
    proxy.up();
    await waitForSeq(seen, 20, 'the held history');
    await herald.publishOk(session, ...streamEvent(21, 30));
    await waitForSeq(seen, 21, 'live');
    assert.deepEqual(seen.seqs(), [1, 2, 3, ...range(16, 21)]);
    assert.equal(seen.lost.length, 1, `lost once: ${JSON.stringify(seen.lost)}`);
    assert.deepEqual(
      { since: seen.lost[0].since, recovered: seen.lost[0].recovered, reason: seen.lost[0].reason, replayed: seen.lost[0].replayed },
      { since: 3, recovered: false, reason: 'history_truncated', replayed: 5 },
    );
    assert.equal(seen.stop.stats.missed, 12, 'seqs 4..15 are gone');
    assert.equal(seen.stop.stats.resyncs, 0, 'an announced loss is not a hole to fetch');
    await seen.stop();
    socket.disconnect();
  });

  test('a new epoch (herald lost its state): reported through lost, and the new seqs 1, 2, ... are not taken for duplicates', async () => {
    const session = sessionId('resume-epoch');
    const socket = createSocket(herald.url, { transports: ['websocket'], ...FAST_RECONNECT });
    const seen = watch(socket, session);
    await until(() => seen.subscribed.length === 1, { what: 'the first subscription' });
    for (let i = 1; i <= 4; i++) await herald.publishOk(session, ...streamEvent(i, 30));
    await waitForSeq(seen, 4, 'before the restart');
    const oldEpoch = seen.subscribed[0].epoch;

    await herald.restart(); // in memory: the session's seq and history are gone
    await until(() => seen.subscribed.length === 2, { timeoutMs: 15000, what: 'the resubscription after the restart' });
    assert.equal(seen.lost.length, 1, `lost: ${JSON.stringify(seen.subscribed)}`);
    assert.equal(seen.lost[0].reason, 'epoch_changed');
    assert.equal(seen.lost[0].since, 4);
    assert.notEqual(seen.lost[0].epoch, oldEpoch);

    for (let i = 1; i <= 3; i++) await herald.publishOk(session, ...streamEvent(i, 30));
    await until(() => seen.events.length === 7, { what: `the new epoch's events (got ${JSON.stringify(seen.seqs())})` });
    await sleep(100);
    assert.deepEqual(seen.seqs(), [1, 2, 3, 4, 1, 2, 3]);
    assert.deepEqual(seen.stop.position, { seq: 3, epoch: seen.lost[0].epoch });
    await seen.stop();
    socket.disconnect();
  });
});
