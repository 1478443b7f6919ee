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
  cases,
  build,
  sessionId,
  isRecentIsoTimestamp,
  sessionEvents,
  assertRefusalAck,
  sleep,
} from './lib/herald.mjs';

const MAX_PAYLOAD = 64 * 1024;

// Payloads that are not a valid session id (tests/fixtures/events.json):
// `args` are the arguments after the event name.
const BAD_SESSION_PAYLOADS = cases('sessionIds.invalid');
const VALID_SESSION_IDS = cases('sessionIds.valid');

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
          for (const { label, args } of BAD_SESSION_PAYLOADS) {
            // Without an ack callback: an `error` event.
            const errEvent = waitFor(socket, 'error', (d) => d && d.code === 'INVALID_SESSION_ID', 3000);
            socket.emit(eventName, ...args);
            assertRequestError(await errEvent, `${eventName} ${label} (no ack)`);

            // With an ack callback: the `error` event and ack {ok:false, error, code}.
            const errEvent2 = waitFor(socket, 'error', (d) => d && d.code === 'INVALID_SESSION_ID', 3000);
            let ack;
            try {
              ack = await socket.timeout(3000).emitWithAck(eventName, ...args);
            } catch (e) {
              assert.fail(`${eventName} ${label}: no ack (${e.message})`);
            }
            assertRefusalAck(ack, 'INVALID_SESSION_ID');
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
          await subscribe(socket, s, { herald });
          const arriving = waitFor(socket, 'completed', (d) => d.sessionId === s);
          await herald.publishOk(s, 'completed', sample('completed'));
          assert.equal((await arriving).seq, 1);
          socket.disconnect();
        });
      }
    }

    test('boundaries: ids of 1 and 128 characters, of every allowed character class, are valid', async () => {
      const socket = await connect(herald.url, { transports: ['websocket'] });
      assert.ok(VALID_SESSION_IDS.some(({ id }) => id.length === 128), 'the fixtures hold a 128-character id');
      for (const { label, id } of VALID_SESSION_IDS) {
        // A herald of this file's own: these ids have no events yet.
        await subscribe(socket, id, { herald });
        const arriving = waitFor(socket, 'progress', (d) => d.sessionId === id);
        await herald.publishOk(id, 'progress', sample('progress'));
        assert.equal((await arriving).seq, 1, label);
      }
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

    /** POST `json` to the target session and expect `status` (+ `field`; null: none). */
    async function expectReject(label, body, status, field) {
      const res = await herald.request('POST', path, { json: body });
      assert.equal(res.status, status, `${label}: expected ${status}, got ${res.status} ${res.text}`);
      assert.match(res.headers.get('content-type') ?? '', /application\/json/, `${label}: not JSON`);
      assert.equal(typeof res.body?.error, 'string', `${label}: body ${res.text}`);
      assert.ok(res.body.error.length > 0);
      if (field === null) {
        assert.equal(res.body.field, undefined, `${label}: no field expected in ${res.text}`);
      } else if (field !== undefined) {
        assert.equal(res.body.field, field, `${label}: field in ${res.text}`);
      }
      return res;
    }

    /** Send a raw fixture case: its bytes, with its content type or none at all. */
    function sendRaw(c, sessionPath) {
      const raw = 'raw' in c ? c.raw : JSON.stringify(build(c));
      const to = c.to === 'batch' ? '/api/v1/events' : sessionPath;
      // A byte body makes fetch send no content type; a string one would get text/plain.
      if (c.contentType === null) return herald.request('POST', to, { body: new TextEncoder().encode(raw) });
      return herald.request('POST', to, { body: raw, headers: { 'content-type': c.contentType } });
    }

    test('invalid session id in the path -> 422 field sessionId', async () => {
      for (const { label, segment: bad } of cases('sessionIds.invalidInPath')) {
        const res = await herald.request('POST', `/api/v1/sessions/${bad}/events`, {
          json: { event: 'progress', data: sample('progress') },
        });
        assert.equal(res.status, 422, `${label} ${bad}: ${res.status} ${res.text}`);
        assert.equal(res.body?.field, 'sessionId', `${label} ${bad}: ${res.text}`);
        assert.equal(typeof res.body.error, 'string');
        const get = await herald.request('GET', `/api/v1/sessions/${bad}`);
        assert.equal(get.status, 422, `GET ${label} ${bad}: ${get.text}`);
        assert.equal(get.body?.field, 'sessionId');
      }
    });

    // Every refused publish of tests/fixtures/events.json: schema violations
    // (422 naming the field) and JSON bodies that are not an object.
    test('schema violations -> 422 naming the field; a body that is not an object -> 422', async () => {
      const failures = [];
      for (const c of cases('refusals.publish')) {
        try {
          await expectReject(c.label, build(c), c.status, c.field);
        } catch (e) {
          failures.push(e.message);
        }
      }
      assert.deepEqual(failures, [], `refusals that did not get the expected answer:\n${failures.join('\n')}`);
    });

    test('malformed and empty JSON -> 400', async () => {
      // Its own session, so that a wrongly accepted body shows up here rather
      // than only in the final "nothing advanced" check.
      const garbage = sessionId('garbage');
      const failures = [];
      const malformed = cases('refusals.raw').filter((c) => c.status === 400);
      assert.ok(malformed.some((c) => c.to === 'batch'), 'the fixtures hold a malformed batch');
      for (const c of malformed) {
        const res = await sendRaw(c, `/api/v1/sessions/${garbage}/events`);
        if (res.status !== 400 || typeof res.body?.error !== 'string') {
          failures.push(`${c.label} ${JSON.stringify(c.raw)}: expected 400 JSON error, got ${res.status} ${res.text}`);
        }
      }
      assert.deepEqual(failures, []);
      assert.equal((await herald.session(garbage)).seq, 0, 'a malformed body was published');
    });

    test('wrong content type -> 415; missing content type is read as JSON', async () => {
      const good = JSON.stringify({ event: 'completed', data: sample('completed') });
      const wrongType = cases('refusals.raw').filter((c) => c.status === 415);
      assert.ok(wrongType.length >= 3, 'the fixtures hold content-type refusals');
      for (const c of wrongType) {
        const res = await sendRaw(c, path);
        assert.equal(res.status, 415, `${c.label} (${c.contentType}): ${res.status} ${res.text}`);
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
      // Items naming no session go to the target; the others (e.g.
      // batch-other) are watched too: nothing may reach them.
      const batches = cases('refusals.batch');
      const others = [
        ...new Set(batches.flatMap((c) => (c.items ?? []).map((i) => i.set?.sessionId)).filter(Boolean)),
      ];
      assert.ok(others.includes('batch-other'), 'the fixtures hold a batch with a second session');
      const watcher2 = await connect(herald.url, { transports: ['websocket'] });
      for (const other of others) {
        // Only valid ids can be watched; an invalid one is refused anyway.
        if (/^[A-Za-z0-9._:-]{1,128}$/.test(other)) await subscribe(watcher2, other);
      }
      for (const c of batches) {
        const body = c.items ? c.items.map((item) => build(item, target)) : build(c);
        const r = await herald.publishBatch(body);
        assert.equal(r.status, c.status, `${c.label}: ${r.text}`);
        if (c.field === null) assert.equal(r.body?.field, undefined, `${c.label}: ${r.text}`);
        else if (c.field !== undefined) assert.equal(r.body?.field, c.field, `${c.label}: ${r.text}`);
      }

      await sleep(300);
      assert.deepEqual(sessionEvents(watcher2), [], 'an item of a rejected batch was delivered');
      assert.equal((await herald.session('batch-other')).seq, 0, 'a rejected batch consumed a seq');
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
    const delivered = sessionEvents(watcher).map((e) => [e.event, e.data.sessionId, e.data.seq]);
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
