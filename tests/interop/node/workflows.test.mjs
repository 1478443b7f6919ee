// MeatyMusic's workflow stream (PROTOCOL.md section 7) with the `ws`
// package, as seed 003's useWorkflowWebSocket reads it: each WorkflowEvent
// one JSON text frame, byte for byte what its FastAPI backend sends, in
// publish order per run, on
// /ws/workflows/{runId} (one run) and /ws/workflows (every run). Then the
// families together: one run event published once reaches a /ws client
// and a socket.io-client subscribed with { runId }; and all of it across two
// instances through Redis.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, connect, closeAll, emitAck, waitFor, until, isRecentIsoTimestamp } from './lib/herald.mjs';
import { startRedis } from './lib/redis.mjs';
import {
  WsClient,
  connectWs,
  closeAllWs,
  heraldForSuite,
  nothingMore,
  fastApiFrame,
  workflowRun,
  publishWorkflow,
  publishWorkflowOk,
  runPayload,
  publishRunOk,
} from './lib/ws.mjs';

let counter = 0;
const newRunId = (label) => `wf-${label}-${process.pid}-${++counter}`;

/** Wait until `client` holds `n` frames. */
const frames = (client, n, what) => client.next(() => true, { from: n - 1, what: `${n} frames (${what})` });

describe('workflow stream', () => {
  const herald = heraldForSuite();

  test('/ws/workflows/{runId}: every WorkflowEvent of that run as the FastAPI backend sends it, in order; no other run', async () => {
    const runId = newRunId('one');
    const other = newRunId('other');
    const c = await WsClient.connect(herald.url, `/ws/workflows/${runId}`);
    const events = workflowRun(runId);
    for (const e of events) {
      await publishWorkflowOk(herald, runId, e);
      await publishWorkflowOk(herald, other, { ...e, run_id: other });
    }
    await frames(c, events.length, 'the run');
    await nothingMore(c, events.length);
    assert.deepEqual(c.rawFrames, events.map(fastApiFrame), 'each frame is what the FastAPI backend sends, byte for byte');
    assert.ok(c.rawFrames.every((raw) => !raw.includes(other)), 'nothing of the other run');
  });

  test('/ws/workflows: every run, each run in its publish order', async () => {
    const a = newRunId('all-a');
    const b = newRunId('all-b');
    const c = await WsClient.connect(herald.url, '/ws/workflows');
    const ea = workflowRun(a, ['PLAN', 'STYLE']);
    const eb = workflowRun(b, ['PLAN', 'LYRICS', 'RENDER']);
    await Promise.all([
      (async () => { for (const e of ea) await publishWorkflowOk(herald, a, e); })(),
      (async () => { for (const e of eb) await publishWorkflowOk(herald, b, e); })(),
    ]);
    await c.next(() => c.frames.filter((f) => f.run_id === a || f.run_id === b).length === ea.length + eb.length, {
      what: 'both runs',
    });
    const of = (run) => c.rawFrames.filter((_, i) => c.frames[i].run_id === run);
    assert.deepEqual(of(a), ea.map(fastApiFrame));
    assert.deepEqual(of(b), eb.map(fastApiFrame));
  });

  test('ts is filled when absent; optional fields may be left out', async () => {
    const runId = newRunId('ts');
    const c = await WsClient.connect(herald.url, `/ws/workflows/${runId}`);
    const bare = { run_id: runId, phase: 'start', request_id: 'req-bare' };
    await publishWorkflowOk(herald, runId, bare);
    const { ts } = await frames(c, 1, 'the event');
    assert.ok(isRecentIsoTimestamp(ts), `ts filled: ${ts}`);
    assert.equal(c.rawFrames[0], fastApiFrame({ ts, ...bare }), 'the absent optional fields arrive as null');
  });

  const refusals = [
    ['run_id differing from the path', (runId) => ({ ts: new Date().toISOString(), run_id: `${runId}-x`, phase: 'start', request_id: 'r' })],
    ['an unknown phase', (runId) => ({ run_id: runId, phase: 'paused', request_id: 'r' })],
    ['no phase', (runId) => ({ run_id: runId, request_id: 'r' })],
    ['a field outside WorkflowEvent', (runId) => ({ run_id: runId, phase: 'start', request_id: 'r', patientName: 'John Doe' })],
  ];
  for (const [what, make] of refusals) {
    test(`refused: ${what} (422), nothing streamed`, async () => {
      const runId = newRunId('refused');
      const c = await WsClient.connect(herald.url, `/ws/workflows/${runId}`);
      const res = await publishWorkflow(herald, runId, make(runId));
      assert.equal(res.status, 422, `${res.status} ${res.text}`);
      assert.equal(typeof res.body?.error, 'string');
      await nothingMore(c, 0);
    });
  }
});

describe('one publish, every family that watches the run', () => {
  const herald = heraldForSuite();

  test('a run event reaches a /ws client and a socket.io-client subscribed with { runId }, same seq', async () => {
    const runId = newRunId('families');
    const plain = await connectWs(herald.url, { auth: { runId } });
    const sio = await connect(herald.url, { transports: ['websocket'] });
    const ack = await emitAck(sio, 'subscribe', { runId });
    assert.equal(ack.ok, true, `subscribe { runId } ack: ${JSON.stringify(ack)}`);

    const payload = runPayload('stage.progress', runId);
    const arriving = waitFor(sio, 'stage.progress', (d) => d?.runId === runId);
    const { seq } = await publishRunOk(herald, runId, 'stage.progress', payload);
    const overSio = await arriving;
    const overWs = await plain.next((f) => f.type === 'stage.progress', { what: 'stage.progress on /ws' });

    assert.equal(overWs.seq, seq);
    assert.deepEqual(overWs.payload, payload);
    const { timestamp, seq: sioSeq, ...rest } = overSio;
    assert.equal(sioSeq, seq, 'the same seq on both families');
    assert.equal(timestamp, overWs.timestamp, 'the same timestamp on both');
    assert.deepEqual(rest, { ...payload, runId }, 'Socket.IO: the payload plus runId, timestamp, seq');
  });
});

describe('two instances and Redis: every family, in order, wherever it was published', () => {
  let redis;
  let a;
  let b;
  before(async () => {
    redis = await startRedis();
    const args = ['--redis-url', redis.url];
    [a, b] = await Promise.all([startHerald({ args }), startHerald({ args })]);
  });
  after(async () => {
    closeAll();
    closeAllWs();
    await Promise.all([a?.kill(), b?.kill()]);
    await redis?.kill();
  });

  test('run events published on both instances reach /ws and Socket.IO clients on both, one seq, in order', async () => {
    const runId = newRunId('cluster-run');
    const plainA = await connectWs(a.url, { auth: { runId } });
    const plainB = await connectWs(b.url, { auth: { runId } });
    const sio = await connect(b.url, { transports: ['websocket'] });
    assert.equal((await emitAck(sio, 'subscribe', { runId })).ok, true);
    const sioSeqs = [];
    sio.on('stage.progress', (d) => d?.runId === runId && sioSeqs.push(d.seq));

    const total = 40;
    for (let k = 1; k <= total; k++) {
      const via = k % 2 ? a : b;
      const { seq } = await publishRunOk(via, runId, 'stage.progress', runPayload('stage.progress', runId, undefined, { progress: k }));
      assert.equal(seq, k, 'one seq per run across instances');
    }
    const all = Array.from({ length: total }, (_, i) => i + 1);
    for (const [name, c] of [['/ws on A', plainA], ['/ws on B', plainB]]) {
      await c.next((f) => f.seq === total, { what: `seq ${total} on ${name}`, timeoutMs: 10000 });
      assert.deepEqual(c.events().map((e) => e.seq), all, `${name}: every event once, in order`);
      assert.deepEqual(c.events().map((e) => e.payload.progress), all, `${name}: the payloads in publish order`);
    }
    await until(() => sioSeqs.length === total, { timeoutMs: 10000, what: `${total} events over Socket.IO` });
    assert.deepEqual(sioSeqs, all, 'Socket.IO on B: every event once, in order');
  });

  test('workflow events published on A stream on B, per run in order, to the run and the every-run streams', async () => {
    const runId = newRunId('cluster-wf');
    const one = await WsClient.connect(b.url, `/ws/workflows/${runId}`);
    const every = await WsClient.connect(a.url, '/ws/workflows');
    const events = workflowRun(runId);
    for (const [i, e] of events.entries()) await publishWorkflowOk(i % 2 ? a : b, runId, e);
    await frames(one, events.length, 'the run on B');
    await every.next(() => every.frames.filter((f) => f.run_id === runId).length === events.length, { what: 'the run on A' });
    assert.deepEqual(one.rawFrames, events.map(fastApiFrame));
    assert.deepEqual(every.rawFrames.filter((_, i) => every.frames[i].run_id === runId), events.map(fastApiFrame));
  });
});
