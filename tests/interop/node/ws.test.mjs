// ResearchFlow's plain WebSocket at /ws (PROTOCOL.md section 6), spoken by
// the `ws` package as the seed's browsers and scripts speak it: every
// client message and its answer, every refusal (the connection stays open
// and keeps working), type and category filtering, and run / project /
// user / all scoping of events published over HTTP.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { isRecentIsoTimestamp } from './lib/herald.mjs';
import {
  connectWs,
  heraldForSuite,
  nothingMore,
  CATEGORIES,
  RUN_TYPES,
  runPayload,
  publishRun,
  publishRunOk,
} from './lib/ws.mjs';

let counter = 0;
const newRunId = (label) => `run-${label}-${process.pid}-${++counter}`;

/** A ping answered: the connection is open and still serving this client. */
async function stillServing(c) {
  const pong = await c.request({ type: 'ping' }, 'pong');
  assert.deepEqual(pong.payload, {});
}

describe('/ws message protocol', () => {
  const herald = heraldForSuite();

  test('on open: connection.established with a client id and a version', async () => {
    const a = await connectWs(herald.url);
    const b = await connectWs(herald.url);
    for (const c of [a, b]) {
      assert.equal(c.frames[0].type, 'connection.established', 'the first frame');
      assert.equal(typeof c.established.payload.clientId, 'string');
      assert.ok(c.established.payload.clientId.length > 0);
      assert.equal(typeof c.established.payload.version, 'string');
    }
    assert.notEqual(a.established.payload.clientId, b.established.payload.clientId, 'one id per connection');
  });

  test('ping -> pong { timestamp, payload: {} }', async () => {
    const c = await connectWs(herald.url);
    const pong = await c.request({ type: 'ping' }, 'pong');
    assert.ok(isRecentIsoTimestamp(pong.timestamp), `pong timestamp: ${pong.timestamp}`);
    assert.deepEqual(pong.payload, {});
  });

  test('auth -> auth.success with the fields named, any subset of them', async () => {
    const c = await connectWs(herald.url);
    for (const payload of [
      { userId: 'user-1', projectId: 'proj-1', runId: 'run-1' },
      { runId: 'run-2' },
      { userId: 'user-3' },
      {},
    ]) {
      const ok = await c.request({ type: 'auth', payload }, 'auth.success');
      assert.deepEqual(ok.payload, payload);
    }
  });

  test('subscribe / unsubscribe by type and by category: subscriptions lists the types after each change', async () => {
    const c = await connectWs(herald.url);
    const sorted = (list) => [...list].sort();
    let r = await c.request({ type: 'subscribe', payload: { eventType: 'run.completed' } }, 'subscription.added');
    assert.equal(r.payload.eventType, 'run.completed');
    assert.deepEqual(r.payload.subscriptions, ['run.completed']);

    r = await c.request({ type: 'subscribe', payload: { eventCategory: 'STAGE_EVENTS' } }, 'subscription.added');
    assert.equal(r.payload.eventCategory, 'STAGE_EVENTS');
    assert.deepEqual(sorted(r.payload.subscriptions), sorted(['run.completed', ...CATEGORIES.STAGE_EVENTS]));

    r = await c.request({ type: 'unsubscribe', payload: { eventType: 'stage.progress' } }, 'subscription.removed');
    assert.equal(r.payload.eventType, 'stage.progress');
    assert.deepEqual(
      sorted(r.payload.subscriptions),
      sorted(['run.completed', 'stage.started', 'stage.completed', 'stage.failed']),
    );

    r = await c.request({ type: 'unsubscribe', payload: { eventCategory: 'STAGE_EVENTS' } }, 'subscription.removed');
    assert.equal(r.payload.eventCategory, 'STAGE_EVENTS');
    assert.deepEqual(r.payload.subscriptions, ['run.completed']);

    r = await c.request({ type: 'subscribe', payload: { eventCategory: 'ALL_EVENTS' } }, 'subscription.added');
    assert.deepEqual(sorted(r.payload.subscriptions), sorted(RUN_TYPES));
  });

  test('get_status -> status { clientId, subscriptions, messageCount }, messageCount counting event frames', async () => {
    const runId = newRunId('status');
    const c = await connectWs(herald.url, { auth: { runId } });
    await c.request({ type: 'subscribe', payload: { eventType: 'stage.progress' } }, 'subscription.added');
    let status = await c.request({ type: 'get_status' }, 'status');
    assert.deepEqual(status.payload, {
      clientId: c.established.payload.clientId,
      subscriptions: ['stage.progress'],
      messageCount: 0,
    });
    await publishRunOk(herald, runId, 'stage.progress');
    await publishRunOk(herald, runId, 'run.started'); // filtered out: not counted
    await publishRunOk(herald, runId, 'stage.progress', runPayload('stage.progress', runId, undefined, { progress: 90 }));
    await c.next((f) => f.type === 'stage.progress' && f.seq === 3, { what: 'the second stage.progress' });
    status = await c.request({ type: 'get_status' }, 'status');
    assert.equal(status.payload.messageCount, 2, 'two event frames sent to this client');
  });

  const refusals = [
    ['not JSON', 'this is not json'],
    ['a JSON value that is not a message', '[1,2,3]'],
    ['JSON without a type', JSON.stringify({ payload: {} })],
    ['an unknown message type', JSON.stringify({ type: 'launch_rockets' })],
    ['subscribe to an unknown event type', JSON.stringify({ type: 'subscribe', payload: { eventType: 'run.exploded' } })],
    ['subscribe to an unknown category', JSON.stringify({ type: 'subscribe', payload: { eventCategory: 'PATIENT_EVENTS' } })],
    ['unsubscribe from an unknown category', JSON.stringify({ type: 'unsubscribe', payload: { eventCategory: 'NOPE' } })],
    ['subscribe without eventType or eventCategory', JSON.stringify({ type: 'subscribe', payload: {} })],
    ['subscribe without a payload', JSON.stringify({ type: 'subscribe' })],
    ['unsubscribe without a payload', JSON.stringify({ type: 'unsubscribe' })],
    ['an eventType that is not a string', JSON.stringify({ type: 'subscribe', payload: { eventType: 42 } })],
  ];
  for (const [what, frame] of refusals) {
    test(`${what}: an error frame { message, details }, the connection stays open`, async () => {
      const c = await connectWs(herald.url);
      const err = await c.request(frame, 'error');
      assert.equal(typeof err.payload.message, 'string', JSON.stringify(err));
      assert.ok(err.payload.message.length > 0);
      assert.ok('details' in err.payload, `error payload has details: ${JSON.stringify(err.payload)}`);
      await stillServing(c);
      const status = await c.request({ type: 'get_status' }, 'status');
      assert.deepEqual(status.payload.subscriptions, [], 'a refused subscribe changed nothing');
    });
  }

  test('a binary frame: an error frame, the connection stays open', async () => {
    const c = await connectWs(herald.url);
    const err = await c.request(Buffer.from(JSON.stringify({ type: 'ping' })), 'error');
    assert.equal(typeof err.payload.message, 'string');
    await stillServing(c);
  });

  test('a bad frame affects no other client', async () => {
    const runId = newRunId('bystander');
    const bystander = await connectWs(herald.url, { auth: { runId } });
    const bad = await connectWs(herald.url);
    for (let i = 0; i < 20; i++) bad.send('{"type":');
    await bad.next((f) => f.type === 'error', { what: 'an error' });
    await publishRunOk(herald, runId, 'run.started');
    const ev = await bystander.next((f) => f.type === 'run.started', { what: 'run.started' });
    assert.equal(ev.seq, 1);
    await stillServing(bad);
  });
});

describe('/ws events: envelope, filtering, scoping', () => {
  const herald = heraldForSuite();

  test('every event type arrives as { type, timestamp, payload, seq }, payload as published, seq 1..n', async () => {
    const runId = newRunId('envelope');
    const c = await connectWs(herald.url, { auth: { runId } });
    for (const [i, type] of RUN_TYPES.entries()) {
      const body = await publishRunOk(herald, runId, type);
      assert.equal(body.seq, i + 1, `202 body names the seq: ${JSON.stringify(body)}`);
    }
    await c.next((f) => f.seq === RUN_TYPES.length, { what: 'the last event' });
    const events = c.events();
    assert.deepEqual(events.map((e) => e.type), RUN_TYPES, 'every type, in publish order');
    events.forEach((e, i) => {
      assert.equal(e.seq, i + 1);
      assert.ok(isRecentIsoTimestamp(e.timestamp), `timestamp of ${e.type}: ${e.timestamp}`);
      assert.deepEqual(e.payload, runPayload(e.type, runId), `${e.type} payload unchanged`);
      assert.deepEqual(Object.keys(e).sort(), ['payload', 'seq', 'timestamp', 'type']);
    });
  });

  test('filtering: no subscription gets every type; a category its types; a type only that type', async () => {
    const runId = newRunId('filter');
    const everything = await connectWs(herald.url, { auth: { runId } });
    const stages = await connectWs(herald.url, { auth: { runId } });
    await stages.request({ type: 'subscribe', payload: { eventCategory: 'STAGE_EVENTS' } }, 'subscription.added');
    const completed = await connectWs(herald.url, { auth: { runId } });
    await completed.request({ type: 'subscribe', payload: { eventType: 'run.completed' } }, 'subscription.added');
    const governance = await connectWs(herald.url, { auth: { runId } });
    await governance.request({ type: 'subscribe', payload: { eventCategory: 'GOVERNANCE_EVENTS' } }, 'subscription.added');
    await governance.request({ type: 'subscribe', payload: { eventType: 'artifact.created' } }, 'subscription.added');
    // Subscribed, then unsubscribed from everything: back to receiving every type.
    const back = await connectWs(herald.url, { auth: { runId } });
    await back.request({ type: 'subscribe', payload: { eventType: 'run.failed' } }, 'subscription.added');
    await back.request({ type: 'unsubscribe', payload: { eventType: 'run.failed' } }, 'subscription.removed');

    for (const type of RUN_TYPES) await publishRunOk(herald, runId, type);
    const last = RUN_TYPES.length;
    await everything.next((f) => f.seq === last, { what: 'the last event' });
    await back.next((f) => f.seq === last, { what: 'the last event' });
    await stages.next((f) => f.type === 'stage.failed', { what: 'stage.failed' });
    await completed.next((f) => f.type === 'run.completed', { what: 'run.completed' });
    await governance.next((f) => f.type === 'approval.denied', { what: 'approval.denied' });
    await nothingMore(everything, 0, () => false); // let any stray frame arrive

    const typesOf = (c) => c.events().map((e) => e.type);
    assert.deepEqual(typesOf(everything), RUN_TYPES);
    assert.deepEqual(typesOf(back), RUN_TYPES);
    assert.deepEqual(typesOf(stages), CATEGORIES.STAGE_EVENTS);
    assert.deepEqual(typesOf(completed), ['run.completed']);
    assert.deepEqual(typesOf(governance), ['artifact.created', ...CATEGORIES.GOVERNANCE_EVENTS]);
    assert.deepEqual(
      stages.events().map((e) => e.seq),
      RUN_TYPES.flatMap((t, i) => (t.startsWith('stage.') ? [i + 1] : [])),
      'the run seq, with gaps where types were filtered out',
    );
  });

  test('scoping: run (default), project, user and all reach exactly the clients they address', async () => {
    const runA = newRunId('scope-a');
    const runB = newRunId('scope-b');
    const project = `proj-${process.pid}-${counter}`;
    const user = `user-${process.pid}-${counter}`;
    const clients = {
      runA: await connectWs(herald.url, { auth: { runId: runA } }),
      runB: await connectWs(herald.url, { auth: { runId: runB } }),
      project: await connectWs(herald.url, { auth: { projectId: project } }),
      user: await connectWs(herald.url, { auth: { userId: user } }),
      runAInProject: await connectWs(herald.url, { auth: { runId: runA, projectId: project, userId: user } }),
      anonymous: await connectWs(herald.url),
    };
    const marks = Object.fromEntries(Object.entries(clients).map(([k, c]) => [k, c.frames.length]));

    // seq 1: to the run (the default); 2: explicitly to the run;
    // 3: to the project; 4: to the user; 5: to everyone.
    await publishRunOk(herald, runA, 'run.started', runPayload('run.started', runA, project));
    await publishRunOk(herald, runA, 'stage.started', undefined, { to: 'run' });
    await publishRunOk(herald, runA, 'run.created', runPayload('run.created', runA, project), { to: 'project' });
    await publishRunOk(herald, runA, 'artifact.created', runPayload('artifact.created', runA, project, { userId: user }), { to: 'user' });
    await publishRunOk(herald, runA, 'run.completed', runPayload('run.completed', runA, project), { to: 'all' });

    const expected = {
      runA: [1, 2, 5],
      runB: [5],
      project: [3, 5],
      user: [4, 5],
      runAInProject: [1, 2, 3, 4, 5],
      anonymous: [5],
    };
    for (const [name, c] of Object.entries(clients)) {
      await c.next((f) => f.seq === 5, { from: marks[name], what: `${name}: the event to all` });
    }
    await nothingMore(clients.anonymous, 0, () => false);
    for (const [name, c] of Object.entries(clients)) {
      assert.deepEqual(
        c.events(marks[name]).map((e) => e.seq),
        expected[name],
        `${name} received exactly what was addressed to it`,
      );
    }
    // Nothing of run A reached run B's client before the broadcast.
    assert.ok(clients.runB.events().every((e) => e.payload.runId === runA && e.type === 'run.completed'));
  });

  test('auth again re-scopes the client: the old run stops, the new one starts', async () => {
    const first = newRunId('reauth-1');
    const second = newRunId('reauth-2');
    const c = await connectWs(herald.url, { auth: { runId: first } });
    await publishRunOk(herald, first, 'run.started');
    await c.next((f) => f.type === 'run.started' && f.payload.runId === first, { what: 'the first run' });
    await c.request({ type: 'auth', payload: { runId: second } }, 'auth.success');
    const mark = c.frames.length;
    await publishRunOk(herald, first, 'run.completed');
    await publishRunOk(herald, second, 'run.started');
    await c.next((f) => f.type === 'run.started' && f.payload.runId === second, { from: mark, what: 'the second run' });
    assert.deepEqual(c.events(mark).map((e) => e.payload.runId), [second], 'nothing more of the first run');
  });

  test('many events to one run arrive at every client in publish order', async () => {
    const runId = newRunId('order');
    const clients = [];
    for (let i = 0; i < 5; i++) clients.push(await connectWs(herald.url, { auth: { runId } }));
    const total = 200;
    await Promise.all(
      Array.from({ length: 4 }, async (_, lane) => {
        for (let k = lane; k < total; k += 4) {
          await publishRunOk(herald, runId, 'stage.progress', runPayload('stage.progress', runId, undefined, { progress: k % 101 }));
        }
      }),
    );
    for (const c of clients) {
      await c.next((f) => f.seq === total, { what: `seq ${total}` });
      assert.deepEqual(
        c.events().map((e) => e.seq),
        Array.from({ length: total }, (_, i) => i + 1),
        'every seq once, in order',
      );
    }
  });
});

describe('POST /api/v1/runs/{runId}/events refusals', () => {
  const herald = heraldForSuite();

  const cases = [
    ['an unknown event type', { type: 'run.exploded', payload: { runId: 'x' } }, /run\.exploded|type/],
    ['a PHI field (patientName)', { type: 'run.completed', payload: { ...runPayload('run.completed', 'x'), patientName: 'John Doe' } }, /patientName/],
    ['a PHI field (mrn)', { type: 'stage.progress', payload: { ...runPayload('stage.progress', 'x'), mrn: '123-45-6789' } }, /mrn/],
    ['free text outside the schema', { type: 'run.completed', payload: { ...runPayload('run.completed', 'x'), analysisResult: 'Patient has elevated HbA1c' } }, /analysisResult/],
    ['an unknown audience', { type: 'run.started', payload: runPayload('run.started', 'x'), to: 'planet' }, /to|planet/],
  ];
  for (const [what, body, names] of cases) {
    test(`${what}: 422 naming it, nothing delivered, no seq used`, async () => {
      const runId = newRunId('refused');
      const c = await connectWs(herald.url, { auth: { runId } });
      const json = { ...body, payload: { ...body.payload, runId } };
      const res = await publishRun(herald, runId, json.type, json.payload, json.to ? { to: json.to } : {});
      assert.equal(res.status, 422, `${res.status} ${res.text}`);
      assert.match(res.text, names);
      assert.equal(typeof res.body?.error, 'string');
      const ok = await publishRunOk(herald, runId, 'run.started');
      assert.equal(ok.seq, 1, 'the refused publish consumed no seq');
      const ev = await c.next((f) => f.seq === 1, { what: 'the accepted event' });
      assert.equal(ev.type, 'run.started');
      assert.deepEqual(c.events().map((e) => e.type), ['run.started'], 'the refused event was not delivered');
    });
  }
});

describe('/ws heartbeat (WS_PING_INTERVAL_MS 200, WS_CLIENT_TIMEOUT_MS 700)', () => {
  const herald = heraldForSuite({ args: ['--ws-ping-interval-ms', '200', '--ws-client-timeout-ms', '700'] });

  test('herald pings; a client that answers stays, a silent one is closed, and only it', async () => {
    const runId = newRunId('heartbeat');
    const answering = await connectWs(herald.url, { auth: { runId } });
    const silent = await connectWs(herald.url, { autoPong: false });
    const started = Date.now();
    const { code } = await Promise.race([
      silent.closed,
      new Promise((_, reject) => setTimeout(() => reject(new Error('the silent client is still open after 5 s')), 5000)),
    ]);
    const after = Date.now() - started;
    assert.ok(after >= 500, `closed after ${after} ms, before the timeout`);
    assert.ok(silent.pings >= 2, `herald pinged the silent client (${silent.pings} pings)`);
    assert.ok(code !== undefined);

    await new Promise((r) => setTimeout(r, 800));
    assert.ok(answering.isOpen, 'the client answering pings is still connected');
    assert.ok(answering.pings >= 5, `pinged every 200 ms (${answering.pings} pings)`);
    await publishRunOk(herald, runId, 'run.started');
    await answering.next((f) => f.type === 'run.started', { what: 'an event after the heartbeats' });
  });
});

describe('/ws frame size (MAX_PAYLOAD_BYTES 4096)', () => {
  const herald = heraldForSuite({ args: ['--max-payload-bytes', '4096'] });

  test('a frame over the limit closes that connection (1009), and no other', async () => {
    const runId = newRunId('oversize');
    const bystander = await connectWs(herald.url, { auth: { runId } });
    const big = await connectWs(herald.url);
    big.send(JSON.stringify({ type: 'ping', payload: { pad: 'x'.repeat(8000) } }));
    const { code } = await big.closed;
    assert.equal(code, 1009, 'closed as "message too big"');
    await publishRunOk(herald, runId, 'run.started');
    await bystander.next((f) => f.type === 'run.started', { what: 'the event, on the other connection' });
    const pong = await bystander.request({ type: 'ping', payload: { pad: 'x'.repeat(3000) } }, 'pong');
    assert.deepEqual(pong.payload, {}, 'a frame under the limit is served');
  });
});
