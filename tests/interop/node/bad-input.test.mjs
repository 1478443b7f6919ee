// Bad input, over Socket.IO and over HTTP: each class gets the documented
// error, the socket stays usable, and nothing is delivered or sequenced.

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
  sleep,
} from './lib/herald.mjs';

const MAX_PAYLOAD = 64 * 1024;

// Payloads that are not a valid session id, as [label, args] (args after the event name).
const BAD_SESSION_PAYLOADS = [
  ['missing payload', []],
  ['null', [null]],
  ['number', [42]],
  ['boolean', [true]],
  ['empty string', ['']],
  ['129 characters', ['a'.repeat(129)]],
  ['space', ['bad id']],
  ['slash', ['a/b']],
  ['non-ASCII', ['sessión']],
  ['angle brackets', ['<script>']],
  ['object without sessionId', [{ session: 'abc' }]],
  ['object with empty sessionId', [{ sessionId: '' }]],
  ['object with numeric sessionId', [{ sessionId: 7 }]],
  ['object with invalid sessionId', [{ sessionId: 'no way!' }]],
  ['array', [['abc']]],
];

function assertRequestError(payload, label) {
  assert.equal(typeof payload, 'object', `${label}: error payload ${JSON.stringify(payload)}`);
  assert.equal(payload.code, 'INVALID_SESSION_ID', `${label}: ${JSON.stringify(payload)}`);
  assert.equal(typeof payload.error, 'string');
  assert.ok(payload.error.length > 0);
  assert.ok(isRecentIsoTimestamp(payload.timestamp), `${label}: timestamp ${payload.timestamp}`);
  assert.equal('seq' in payload, false, `${label}: a request error must not carry seq`);
}

describe('bad input', () => {
  let herald;
  let watcher; // subscribed to the session all bad publishes target
  const target = sessionId('target');
  let baseline; // target's seq before the bad input

  before(async () => {
    herald = await startHerald({ args: ['--max-payload-bytes', String(MAX_PAYLOAD)] });
    watcher = await connect(herald.url, { transports: ['websocket'] });
    await subscribe(watcher, target);
    // Two good events first, so "seq did not advance" is measured from 2.
    await herald.publishOk(target, 'progress', sample('progress'));
    await herald.publishOk(target, 'model_result', sample('model_result'));
    await waitFor(watcher, 'model_result', (d) => d.sessionId === target && d.seq === 2, 5000, { past: true });
    baseline = (await herald.session(target)).seq;
    assert.equal(baseline, 2);
  });
  after(async () => {
    closeAll();
    await herald?.kill();
  });

  describe('over Socket.IO', () => {
    for (const eventName of ['subscribe', 'unsubscribe']) {
      for (const transports of [['websocket'], ['polling']]) {
        test(`${eventName} over ${transports[0]}: every bad payload class, without and with ack`, async () => {
          const socket = await connect(herald.url, { transports });
          for (const [label, args] of BAD_SESSION_PAYLOADS) {
            // Without an ack callback: an `error` event.
            const errEvent = waitFor(socket, 'error', (d) => d && d.code === 'INVALID_SESSION_ID', 3000);
            socket.emit(eventName, ...args);
            assertRequestError(await errEvent, `${eventName} ${label} (no ack)`);

            // With an ack callback: the `error` event and ack {ok:false, error}.
            const errEvent2 = waitFor(socket, 'error', (d) => d && d.code === 'INVALID_SESSION_ID', 3000);
            let ack;
            try {
              ack = await socket.timeout(3000).emitWithAck(eventName, ...args);
            } catch (e) {
              assert.fail(`${eventName} ${label}: no ack (${e.message})`);
            }
            assert.equal(ack.ok, false, `${eventName} ${label}: ack ${JSON.stringify(ack)}`);
            assert.equal(typeof ack.error, 'string');
            assert.ok(ack.error.length > 0);
            assertRequestError(await errEvent2, `${eventName} ${label} (ack)`);
            assert.equal(socket.connected, true, `socket disconnected after ${label}`);
          }
          // No subscribed/unsubscribed confirmation was sent for any of them.
          assert.deepEqual(
            socket.received.filter((r) => r.event === 'subscribed' || r.event === 'unsubscribed'),
            [],
          );

          // The socket is still usable: subscribe properly and receive.
          const s = sessionId('after-bad');
          const { ack } = await subscribe(socket, s);
          assert.deepEqual(ack, { ok: true, sessionId: s });
          const arriving = waitFor(socket, 'completed', (d) => d.sessionId === s);
          await herald.publishOk(s, 'completed', sample('completed'));
          assert.equal((await arriving).seq, 1);
          socket.disconnect();
        });
      }
    }

    test('boundary: a 128-character id of every allowed character class is valid', async () => {
      const socket = await connect(herald.url, { transports: ['websocket'] });
      const id = `Az09._:-${'x'.repeat(120)}`;
      assert.equal(id.length, 128);
      const { ack } = await subscribe(socket, id);
      assert.deepEqual(ack, { ok: true, sessionId: id });
      const arriving = waitFor(socket, 'progress', (d) => d.sessionId === id);
      await herald.publishOk(id, 'progress', sample('progress'));
      assert.equal((await arriving).seq, 1);
      socket.disconnect();
    });

    test('unknown client events are ignored and the socket stays usable', async () => {
      const socket = await connect(herald.url, { transports: ['websocket'] });
      socket.emit('no_such_event', { a: 1 });
      socket.emit('publish', { sessionId: target, event: 'progress' });
      const s = sessionId('after-unknown');
      await subscribe(socket, s);
      assert.equal(socket.connected, true);
      assert.equal((await herald.session(target)).seq, baseline);
      socket.disconnect();
    });
  });

  describe('over HTTP', () => {
    const path = `/api/v1/sessions/${target}/events`;

    /** POST `json` to the target session and expect `status` (+ `field`). */
    async function expectReject(label, body, status, field) {
      const res = await herald.request('POST', path, { json: body });
      assert.equal(res.status, status, `${label}: expected ${status}, got ${res.status} ${res.text}`);
      assert.match(res.headers.get('content-type') ?? '', /application\/json/, `${label}: not JSON`);
      assert.equal(typeof res.body?.error, 'string', `${label}: body ${res.text}`);
      assert.ok(res.body.error.length > 0);
      if (field instanceof RegExp) {
        assert.match(String(res.body.field), field, `${label}: field in ${res.text}`);
      } else if (field !== undefined) {
        assert.equal(res.body.field, field, `${label}: field in ${res.text}`);
      }
      return res;
    }

    test('invalid session id in the path -> 422 field sessionId', async () => {
      for (const bad of ['bad%20id', 'a!b', `${'x'.repeat(129)}`, 'sessi%C3%B3n', '%3Cscript%3E']) {
        const res = await herald.request('POST', `/api/v1/sessions/${bad}/events`, {
          json: { event: 'progress', data: sample('progress') },
        });
        assert.equal(res.status, 422, `${bad}: ${res.status} ${res.text}`);
        assert.equal(res.body?.field, 'sessionId', `${bad}: ${res.text}`);
        assert.equal(typeof res.body.error, 'string');
      }
      const get = await herald.request('GET', '/api/v1/sessions/a!b');
      assert.equal(get.status, 422, get.text);
      assert.equal(get.body?.field, 'sessionId');
    });

    test('schema violations -> 422 naming the field', async () => {
      const progressMissingPrompts = sample('progress');
      delete progressMissingPrompts.prompts;
      const promptsMissingTotal = sample('progress');
      delete promptsMissingTotal.prompts.total;
      const modelMissingName = sample('model_result');
      delete modelMissingName.modelName;

      const cases = [
        ['unknown event name', { event: 'progres', data: sample('progress') }, 'event'],
        ['missing event', { data: sample('progress') }, 'event'],
        ['event not a string', { event: 5, data: sample('progress') }, 'event'],
        ['missing data', { event: 'completed' }, 'data'],
        ['data not an object', { event: 'completed', data: 'done' }, 'data'],
        ['unknown top-level field', { event: 'completed', data: sample('completed'), extra: 1 }, /extra/],
        ['missing required field', { event: 'progress', data: progressMissingPrompts }, 'data.prompts'],
        ['missing nested field', { event: 'progress', data: promptsMissingTotal }, 'data.prompts.total'],
        ['missing modelName', { event: 'model_result', data: modelMissingName }, 'data.modelName'],
        ['wrong status enum', { event: 'progress', data: sample('progress', { status: 'RUNNING' }) }, 'data.status'],
        ['lower-case status enum', { event: 'progress', data: sample('progress', { status: 'active' }) }, 'data.status'],
        ['model status enum', { event: 'model_result', data: sample('model_result', { status: 'done' }) }, 'data.status'],
        ['clarification status enum', { event: 'clarification', data: sample('clarification', { status: 'open' }) }, 'data.status'],
        ['progress 150', { event: 'progress', data: sample('progress', { progress: 150 }) }, 'data.progress'],
        ['progress -1', { event: 'progress', data: sample('progress', { progress: -1 }) }, 'data.progress'],
        ['progress as string', { event: 'progress', data: sample('progress', { progress: '50' }) }, 'data.progress'],
        ['negative duration', { event: 'model_result', data: sample('model_result', { duration: -5 }) }, 'data.duration'],
        ['negative prompt count', { event: 'progress', data: sample('progress', { prompts: { total: 1, completed: -1, processing: 0, pending: 0, failed: 0 } }) }, 'data.prompts.completed'],
        ['fractional prompt count', { event: 'progress', data: sample('progress', { prompts: { total: 1.5, completed: 0, processing: 0, pending: 0, failed: 0 } }) }, 'data.prompts.total'],
        ['hasClarifications not bool', { event: 'progress', data: sample('progress', { hasClarifications: 'yes' }) }, 'data.hasClarifications'],
        ['result not an object (completed)', { event: 'completed', data: { result: 'ok' } }, 'data.result'],
        ['result not a string (model_result)', { event: 'model_result', data: sample('model_result', { result: { a: 1 } }) }, 'data.result'],
        ['error not a string', { event: 'error', data: { error: 500 } }, 'data.error'],
        ['unknown field (typo) in data', { event: 'model_result', data: sample('model_result', { modelname: 'x' }) }, 'data.modelname'],
        ['unknown field in progress', { event: 'progress', data: sample('progress', { percent: 3 }) }, 'data.percent'],
        ['seq in data', { event: 'completed', data: sample('completed', { seq: 99 }) }, 'data.seq'],
        ['sessionId in data differs from path', { event: 'completed', data: sample('completed', { sessionId: 'someone-else' }) }, /^(data\.)?sessionId$/],
        ['timestamp not a string', { event: 'completed', data: sample('completed', { timestamp: 12345 }) }, 'data.timestamp'],
      ];
      const failures = [];
      for (const [label, body, field] of cases) {
        try {
          await expectReject(label, body, 422, field);
        } catch (e) {
          failures.push(e.message);
        }
      }
      assert.deepEqual(failures, [], `schema cases that did not get the expected 422:\n${failures.join('\n')}`);
    });

    test('body not an object -> 4xx JSON error', async () => {
      for (const body of [[], 'string', 42, null]) {
        const res = await herald.request('POST', path, { json: body });
        assert.ok([400, 422].includes(res.status), `${JSON.stringify(body)}: ${res.status} ${res.text}`);
        assert.equal(typeof res.body?.error, 'string');
      }
    });

    test('malformed and empty JSON -> 400', async () => {
      // Its own session, so that a wrongly accepted body shows up here rather
      // than only in the final "nothing advanced" check.
      const garbage = sessionId('garbage');
      const failures = [];
      for (const [label, raw] of [
        ['truncated', '{"event":"progress","data":{'],
        ['not JSON', 'hello'],
        ['trailing garbage', '{"event":"completed","data":{"result":{}}} x'],
        ['empty body', ''],
        ['only whitespace', '   '],
      ]) {
        const res = await herald.request('POST', `/api/v1/sessions/${garbage}/events`, {
          body: raw,
          headers: { 'content-type': 'application/json' },
        });
        if (res.status !== 400 || typeof res.body?.error !== 'string') {
          failures.push(`${label} ${JSON.stringify(raw)}: expected 400 JSON error, got ${res.status} ${res.text}`);
        }
      }
      assert.deepEqual(failures, []);
      assert.equal((await herald.session(garbage)).seq, 0, 'a malformed body was published');
      const batch = await herald.request('POST', '/api/v1/events', {
        body: '[{"sessionId":',
        headers: { 'content-type': 'application/json' },
      });
      assert.equal(batch.status, 400, batch.text);
    });

    test('wrong content type -> 415; missing content type is read as JSON', async () => {
      const good = JSON.stringify({ event: 'completed', data: sample('completed') });
      for (const ct of ['text/plain', 'application/x-www-form-urlencoded', 'text/html; charset=utf-8']) {
        const res = await herald.request('POST', path, { body: good, headers: { 'content-type': ct } });
        assert.equal(res.status, 415, `${ct}: ${res.status} ${res.text}`);
        assert.equal(typeof res.body?.error, 'string');
      }
      // fetch adds text/plain for a string body, so this one is a 415 too.
      const plain = await fetch(`${herald.url}${path}`, { method: 'POST', body: good });
      assert.equal(plain.status, 415);

      // A byte body makes fetch send no content type at all: read as JSON.
      // (Its own session, so the target's seq is untouched.)
      const elsewhere = sessionId('no-ctype');
      const noType = await fetch(`${herald.url}/api/v1/sessions/${elsewhere}/events`, {
        method: 'POST',
        body: new TextEncoder().encode(good),
      });
      const noTypeBody = await noType.text();
      assert.equal(noType.status, 202, `no content type: ${noType.status} ${noTypeBody}`);
      assert.equal(JSON.parse(noTypeBody).seq, 1);
      // A charset parameter is fine.
      const withCharset = await herald.request('POST', `/api/v1/sessions/${elsewhere}/events`, {
        body: good,
        headers: { 'content-type': 'application/json; charset=utf-8' },
      });
      assert.equal(withCharset.status, 202, withCharset.text);
      assert.equal(withCharset.body.seq, 2);
    });

    test('body over --max-payload-bytes -> 413; just under is accepted', async () => {
      const big = { event: 'completed', data: { result: { blob: 'x'.repeat(MAX_PAYLOAD + 1000) } } };
      const res = await herald.request('POST', path, { json: big });
      assert.equal(res.status, 413, `${res.status} ${res.text.slice(0, 200)}`);
      assert.equal(typeof res.body?.error, 'string');
      const batch = await herald.request('POST', '/api/v1/events', {
        json: [{ sessionId: target, ...big }],
      });
      assert.equal(batch.status, 413, batch.text.slice(0, 200));
    });

    test('unknown routes -> 404 JSON', async () => {
      for (const [method, p] of [
        ['GET', '/nope'],
        ['POST', '/api/v1/nope'],
        ['GET', '/api/v2/sessions/abc'],
        ['POST', `/api/v1/sessions/${target}/event`],
      ]) {
        const res = await herald.request(method, p, method === 'POST' ? { json: {} } : {});
        assert.equal(res.status, 404, `${method} ${p}: ${res.status} ${res.text}`);
        assert.match(res.headers.get('content-type') ?? '', /application\/json/);
        assert.equal(typeof res.body?.error, 'string', `${method} ${p}: ${res.text}`);
      }
    });

    test('batch with one bad item -> 422 with an indexed field, nothing from the batch published', async () => {
      const other = sessionId('batch-other');
      const watcher2 = await connect(herald.url, { transports: ['websocket'] });
      await subscribe(watcher2, other);
      const res = await herald.publishBatch([
        { sessionId: target, event: 'progress', data: sample('progress') },
        { sessionId: other, event: 'progress', data: sample('progress', { progress: 150 }) },
        { sessionId: other, event: 'completed', data: sample('completed') },
      ]);
      assert.equal(res.status, 422, res.text);
      assert.equal(res.body?.field, '[1].data.progress');

      for (const [items, field] of [
        [[{ sessionId: target, event: 'completed', data: sample('completed') }, { sessionId: 'bad id', event: 'completed', data: sample('completed') }], '[1].sessionId'],
        [[{ sessionId: target, event: 'nope', data: {} }], '[0].event'],
        [[{ sessionId: target, event: 'completed', data: sample('completed') }, { sessionId: target, event: 'model_result', data: sample('model_result', { seq: 1 }) }], '[1].data.seq'],
        [[{ sessionId: target, event: 'completed', data: sample('completed') }, { sessionId: target, event: 'completed', data: sample('completed', { sessionId: 'x' }) }], /^\[1\]\.(data\.)?sessionId$/],
      ]) {
        const r = await herald.publishBatch(items);
        assert.equal(r.status, 422, r.text);
        if (field instanceof RegExp) assert.match(String(r.body?.field), field);
        else assert.equal(r.body?.field, field, r.text);
      }

      const notArray = await herald.request('POST', '/api/v1/events', { json: { sessionId: target } });
      assert.ok([400, 422].includes(notArray.status), notArray.text);

      await sleep(300);
      assert.deepEqual(
        watcher2.received.filter((r) => r.args[0] && 'seq' in r.args[0]),
        [],
        'an item of a rejected batch was delivered',
      );
      assert.equal((await herald.session(other)).seq, 0, 'a rejected batch consumed a seq');
      watcher2.disconnect();
    });

    test('stats answers JSON with the documented keys', async () => {
      const stats = await herald.stats();
      for (const k of ['connections', 'sessions', 'subscriptions', 'eventsPublished', 'eventsDelivered', 'scope']) {
        assert.ok(k in stats, `stats lacks ${k}: ${JSON.stringify(stats)}`);
      }
      assert.equal(stats.scope, 'instance');
    });
  });

  test('after all the bad input: nothing was delivered and seq did not advance', async () => {
    await sleep(300);
    const delivered = watcher.received
      .filter((r) => r.args[0] && typeof r.args[0] === 'object' && 'seq' in r.args[0])
      .map((r) => [r.event, r.args[0].sessionId, r.args[0].seq]);
    assert.deepEqual(delivered, [
      ['progress', target, 1],
      ['model_result', target, 2],
    ]);
    const state = await herald.session(target);
    assert.equal(state.seq, baseline, 'rejected publishes consumed seqs');
    assert.equal(state.subscribers, 1);
    assert.equal(state.completed, false, 'a rejected completed event changed state');

    const arriving = waitFor(watcher, 'clarification', (d) => d.sessionId === target);
    const res = await herald.publishOk(target, 'clarification', sample('clarification'));
    assert.equal(res.seq, baseline + 1);
    assert.equal((await arriving).seq, baseline + 1);
    assert.equal((await herald.session(target)).seq, baseline + 1);
  });
});
