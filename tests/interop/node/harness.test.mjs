// The harness itself: the helpers fail loudly when they should, so the other
// tests cannot pass by accident; and herald's process behaviour the helpers
// rely on (health, logs, exit codes).

import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import {
  HERALD_BIN,
  Herald,
  startHerald,
  freePort,
  connect,
  closeAll,
  waitFor,
  sample,
  EVENT_TYPES,
  FIXTURES,
  cases,
  sessionId,
  subscribe,
  sessionEvents,
  until,
} from './lib/herald.mjs';

describe('harness', () => {
  const heralds = [];
  after(async () => {
    closeAll();
    for (const h of heralds) await h.kill();
  });

  test('herald starts, answers /health, logs, and exits 0 on SIGTERM', async () => {
    const herald = await startHerald();
    heralds.push(herald);
    assert.match(herald.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    const health = await herald.request('GET', '/health');
    assert.equal(health.status, 200);
    assert.deepEqual(Object.keys(health.body).sort(), ['instance', 'status', 'version']);
    assert.equal(health.body.status, 'ok');
    assert.match(health.body.version, /^\d+\.\d+\.\d+/);
    assert.match(herald.logs(), new RegExp(`listening on http://127\\.0\\.0\\.1:${herald.port}`));
    const code = await herald.stop('SIGTERM');
    assert.equal(code, 0, herald.logTail());
    assert.equal(herald.running, false);
    await assert.rejects(fetch(`${herald.url}/health`), 'nothing listens after stop');
  });

  test('SIGINT also stops herald with exit code 0', async () => {
    const herald = await startHerald();
    heralds.push(herald);
    assert.equal(await herald.stop('SIGINT'), 0, herald.logTail());
  });

  // A fixed port on purpose: one that is taken.
  test('a port already in use makes start() fail with herald\'s message', async () => {
    const blocker = net.createServer();
    blocker.listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    try {
      const h = new Herald({ port: blocker.address().port });
      heralds.push(h);
      await assert.rejects(h.start({ timeoutMs: 5000 }), /exited before becoming healthy \(code=1/);
      assert.match(h.logs(), /cannot listen/);
    } finally {
      blocker.close();
    }
  });

  test('waitFor rejects with a clear message naming the event', async () => {
    const herald = await startHerald();
    heralds.push(herald);
    const socket = await connect(herald.url, { transports: ['websocket'] });
    const t0 = Date.now();
    await assert.rejects(
      waitFor(socket, 'progress', (d) => d.seq === 99, 300),
      (e) => /timed out after 300 ms waiting for "progress"/.test(e.message) && /d\.seq === 99/.test(e.message),
    );
    assert.ok(Date.now() - t0 >= 290);
    // A non-matching event is listed in the message.
    const s = sessionId('h');
    socket.emit('subscribe', s);
    await waitFor(socket, 'subscribed', (d) => d.sessionId === s);
    const pending = waitFor(socket, 'progress', (d) => d.seq === 99, 1000);
    await herald.publishOk(s, 'progress', sample('progress'));
    await assert.rejects(pending, /non-matching "progress" events meanwhile: \{/);
  });

  test('subscribe() fails on a wrong seq, epoch or snapshot, and passes on the right ones', async () => {
    const herald = heralds.find((h) => h.running) ?? (await startHerald());
    if (!heralds.includes(herald)) heralds.push(herald);
    const early = await connect(herald.url, { transports: ['websocket'] });
    const late = await connect(herald.url, { transports: ['websocket'] });
    const s = sessionId('shapes');
    const { event } = await subscribe(early, s, { herald });
    await herald.publishOk(s, 'progress', sample('progress'));
    await herald.publishOk(s, 'model_result', sample('model_result'));
    await until(() => sessionEvents(early, s).length === 2, { what: 'the early subscriber to get both events' });
    const [progress] = sessionEvents(early, s);

    // The defaults describe a session nothing was published to.
    await assert.rejects(subscribe(late, s), /seq \(the session's last seq\)/);
    // The right seq, but the snapshot the late subscriber gets is not stated.
    await assert.rejects(subscribe(late, s, { seq: 2 }), /the events that followed subscribed/);
    // A snapshot event that differs from what was first delivered.
    const restamped = { event: 'progress', data: { ...progress.data, timestamp: new Date(0).toISOString() } };
    await assert.rejects(subscribe(late, s, { seq: 2, snapshot: [restamped] }), /the events that followed subscribed/);
    await assert.rejects(subscribe(late, s, { seq: 2, epoch: 'ffffffffffff', snapshot: [progress] }), /epoch/);
    // Resuming needs its expectations stated, and they are checked.
    await assert.rejects(subscribe(late, s, { payload: { sessionId: s, since: 1 }, seq: 2 }), /say what the resume reports/);
    await assert.rejects(
      subscribe(late, s, { payload: { sessionId: s, since: 1 }, seq: 2, resume: { recovered: false, reason: 'epoch_changed' } }),
      /recovered/,
    );
    // And the right ones pass.
    const snap = await subscribe(late, s, { seq: 2, epoch: event.epoch, snapshot: [progress], herald });
    assert.deepEqual(snap.held, [progress]);
    const resumed = await subscribe(late, s, {
      payload: { sessionId: s, since: 1, epoch: event.epoch },
      seq: 2,
      epoch: event.epoch,
      resume: { recovered: true, replayed: 1 },
      replay: [sessionEvents(early, s)[1]],
    });
    assert.equal(resumed.event.replayed, 1);
  });

  test('connect rejects when nothing listens', async () => {
    const port = await freePort();
    await assert.rejects(
      connect(`http://127.0.0.1:${port}`, { transports: ['websocket'], reconnection: false }, { timeoutMs: 3000 }),
      /connect_error/,
    );
  });

  test('samples exist for the five events and are accepted by herald', async () => {
    assert.deepEqual(EVENT_TYPES, ['progress', 'model_result', 'clarification', 'completed', 'error']);
    const herald = heralds.find((h) => h.running) ?? (await startHerald());
    if (!heralds.includes(herald)) heralds.push(herald);
    const s = sessionId('samples');
    for (const [i, event] of EVENT_TYPES.entries()) {
      const res = await herald.publish(s, event, sample(event));
      assert.equal(res.status, 202, `${event}: ${res.text}`);
      assert.equal(res.body.seq, i + 1);
    }
    // sample() returns independent copies.
    const a = sample('progress');
    a.prompts.total = 999;
    assert.notEqual(sample('progress').prompts.total, 999);
  });

  test('the shared fixtures (tests/fixtures/events.json) are what they claim', () => {
    const SESSION_ID = /^[A-Za-z0-9._:-]{1,128}$/;
    const valid = cases('sessionIds.valid').map((c) => c.id);
    assert.ok(valid.every((id) => SESSION_ID.test(id)), `valid ids: ${valid}`);
    assert.ok(valid.some((id) => id.length === 1) && valid.some((id) => id.length === 128));
    const invalid = cases('sessionIds.invalid');
    for (const { label, args } of invalid) {
      const [arg] = args;
      const id = arg !== null && typeof arg === 'object' && !Array.isArray(arg) ? arg.sessionId : arg;
      assert.ok(args.length === 0 || typeof id !== 'string' || !SESSION_ID.test(id), `${label} is a valid id`);
    }
    assert.ok(invalid.some(({ args }) => args[0]?.length === 129), 'a 129-character id');
    for (const c of cases('refusals.publish')) {
      assert.ok('body' in c || c.event in FIXTURES.events, `${c.label}: no sample ${c.event}`);
      assert.ok(Number.isInteger(c.status), c.label);
    }
  });

  test('HERALD_BIN points at an existing binary', async () => {
    const { existsSync } = await import('node:fs');
    assert.ok(existsSync(HERALD_BIN), `${HERALD_BIN} missing: run cargo build or set HERALD_BIN`);
  });
});
