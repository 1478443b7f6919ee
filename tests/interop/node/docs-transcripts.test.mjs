// The wscat sessions of docs/protocol.md (its ```transcript blocks that open
// a plain WebSocket: /ws and /ws/workflows), replayed against a real herald,
// so the documentation shows what herald does. In a block: `$ wscat -c URL`
// opens the connection, `> frame` sends a text frame, `< frame` is the next
// frame herald must send, `$ curl ...` runs the publish it shows. Frames are
// compared as JSON with their fields in the order shown, where "..." matches
// any string; a frame that is not JSON must match as text.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from './lib/herald.mjs';
import { WsClient, heraldForSuite } from './lib/ws.mjs';

const DOC = path.join(REPO_ROOT, 'docs/protocol.md');

/** The plain-WebSocket transcript blocks of the doc, each a list of its lines. */
function transcripts() {
  const blocks = [...readFileSync(DOC, 'utf8').matchAll(/```transcript\n([\s\S]*?)```/g)].map((m) =>
    m[1].split('\n').filter((l) => l.trim()),
  );
  return blocks.filter((lines) => /^\$ wscat -c ws:\/\/localhost:3000\/ws\b/.test(lines[0]));
}

/** Whether `got` matches `want`, fields in the same order, "..." in `want` matching any string. */
function matches(want, got) {
  if (want === '...') return typeof got === 'string';
  if (Array.isArray(want)) return Array.isArray(got) && got.length === want.length && want.every((w, i) => matches(w, got[i]));
  if (want && typeof want === 'object') {
    if (!got || typeof got !== 'object' || Array.isArray(got)) return false;
    const keys = Object.keys(want);
    return keys.join() === Object.keys(got).join() && keys.every((k) => matches(want[k], got[k]));
  }
  return want === got;
}

/** The method, path and body of a transcript's `$ curl` line. */
function parseCurl(line) {
  const url = /\s(localhost:3000\/\S+)/.exec(line)?.[1];
  const body = /-d '([^']*)'/.exec(line)?.[1];
  assert.ok(url && body !== undefined, `cannot read the curl line: ${line}`);
  return { path: url.slice('localhost:3000'.length), body };
}

const herald = heraldForSuite();

test('docs/protocol.md has a wscat session for /ws and one for /ws/workflows', () => {
  const opened = transcripts().map((lines) => lines[0].split(' ').pop());
  assert.ok(opened.some((u) => u.endsWith('/ws')), `sessions found: ${opened}`);
  assert.ok(opened.some((u) => /\/ws\/workflows/.test(u)), `sessions found: ${opened}`);
});

test('the matcher can fail', () => {
  assert.equal(matches({ a: '...' }, { a: 1 }), false);
  assert.equal(matches({ a: '...' }, { a: 'x', b: 1 }), false);
  assert.equal(matches(['x'], ['x', 'y']), false);
  assert.equal(matches({ a: { b: 2 } }, { a: { b: 3 } }), false);
  assert.equal(matches({ a: '...', b: [1] }, { b: [1], a: 'z' }), false, 'fields in another order');
  assert.equal(matches({ a: '...', b: [1] }, { a: 'z', b: [1] }), true);
});

for (const lines of transcripts()) {
  test(`the wscat session of ${lines[0].slice(2)} is what herald does`, async () => {
    const wsPath = lines[0].split(' ').pop().replace('ws://localhost:3000', '');
    const client = await WsClient.connect(herald.url, wsPath);
    let next = 0;
    for (const [i, line] of lines.slice(1).entries()) {
      const where = `line ${i + 2} of the session: ${line}`;
      if (line.startsWith('$ curl ')) {
        const { path: p, body } = parseCurl(line);
        const res = await herald.request('POST', p, { body, headers: { 'content-type': 'application/json' } });
        assert.equal(res.status, 202, `${where}\n${res.status} ${res.text}`);
      } else if (line.startsWith('> ')) {
        client.send(line.slice(2));
      } else if (line.startsWith('< ')) {
        const text = line.slice(2);
        let want;
        try {
          want = JSON.parse(text);
        } catch {
          want = undefined;
        }
        const frame = await client.next(() => true, { from: next, what: `the frame of ${where}` });
        const raw = client.rawFrames[next];
        next += 1;
        assert.ok(
          want === undefined ? raw === text : matches(want, frame),
          `${where}\nherald sent: ${raw}`,
        );
      } else {
        assert.fail(`a transcript line starts with $, > or <: ${where}`);
      }
    }
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(client.rawFrames.length, next, `frames the session does not show: ${client.rawFrames.slice(next).join('\n')}`);
  });
}
