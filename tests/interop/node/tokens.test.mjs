// Tokens (PROTOCOL.md section 5): with a JWT key configured, every socket
// presents a token (auth.token, ?token=, Authorization: Bearer), each bad
// token is refused with its own connect_error, the `sessions` claim decides
// which subscribes are allowed (FORBIDDEN otherwise, with nothing of the
// session sent), a subscribe may bring its own token, an expired token
// closes the transport so socket.io-client reconnects with a fresh one, and
// the history routes take a covering token.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import jwt from 'jsonwebtoken';
import WebSocket from 'ws';
import {
  startHerald,
  connect,
  createSocket,
  closeAll,
  waitFor,
  emitAck,
  subscribe,
  sample,
  sessionEvents,
  isRecentIsoTimestamp,
  until,
  sleep,
  HERALD_BIN,
  REPO_ROOT,
} from './lib/herald.mjs';

const SECRET = 'interop-secret-0123456789abcdef0123';
const AUD = 'herald-tests';
const ISS = 'interop-backend';

/** A token for `sessions`, valid for `ttl` seconds, signed with `key`. */
function token(sessions, { ttl = 300, key = SECRET, algorithm = 'HS256', ...claims } = {}) {
  return jwt.sign({ sessions, aud: AUD, iss: ISS, sub: 'user-7', ...claims }, key, {
    algorithm,
    expiresIn: ttl,
  });
}

const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/** A token signed by hand (jsonwebtoken signs neither `none` nor EdDSA). */
function rawToken(header, claims, sign = () => '') {
  const message = `${b64url(header)}.${b64url(claims)}`;
  return `${message}.${sign(message)}`;
}

const inAMinute = () => Math.floor(Date.now() / 1000) + 60;

/** A FORBIDDEN ack: `{ ok: false, error, code, sessionId }`. */
function assertForbiddenAck(ack, session) {
  assert.deepEqual(Object.keys(ack).sort(), ['code', 'error', 'ok', 'sessionId'], JSON.stringify(ack));
  assert.equal(ack.ok, false);
  assert.equal(ack.code, 'FORBIDDEN');
  assert.equal(ack.sessionId, session);
  assert.match(ack.error, /^forbidden: /);
}

/** Subscribes to a session holding one `progress`, and waits for its snapshot. */
async function subscribed(socket, session, payload = session) {
  const snapshot = waitFor(socket, 'progress', (d) => d.sessionId === session);
  const ack = await emitAck(socket, 'subscribe', payload);
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal((await snapshot).seq, 1);
}

/** The connect_error message herald answers `auth` with. */
async function refusal(url, auth, opts = {}) {
  const socket = createSocket(url, { transports: ['websocket'], reconnection: false, auth, ...opts });
  try {
    const err = await new Promise((resolve, reject) => {
      socket.once('connect', () => reject(new Error(`connected with ${JSON.stringify(auth)}`)));
      socket.once('connect_error', resolve);
    });
    return err.message;
  } finally {
    socket.disconnect();
  }
}

/** A raw Engine.IO/Socket.IO WebSocket (as wscat): the reply to `40`. */
async function rawConnect(url, { query = '', headers } = {}) {
  const ws = new WebSocket(`${url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket${query}`, { headers });
  const frames = [];
  ws.on('message', (data) => frames.push(data.toString()));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  await until(() => frames.some((f) => f.startsWith('0{')), { what: 'the Engine.IO open packet' });
  ws.send('40');
  await until(() => frames.some((f) => f.startsWith('40') || f.startsWith('44')), { what: 'the reply to 40' });
  ws.close();
  return frames.find((f) => f.startsWith('40') || f.startsWith('44'));
}

describe('tokens: HS256 with audience and issuer', () => {
  let herald;
  before(async () => {
    herald = await startHerald({ args: ['--jwt-secret', SECRET, '--jwt-audience', AUD, '--jwt-issuer', ISS] });
  });
  after(async () => {
    closeAll();
    await herald?.kill();
  });

  test('each bad token is refused before connecting, with its own message', async () => {
    const base = { sessions: ['*'], aud: AUD, iss: ISS, exp: inAMinute() };
    const cases = [
      ['missing', undefined, /^unauthorized: missing token/],
      ['no token field', { other: 1 }, /^unauthorized: missing token/],
      ['malformed', { token: 'not-a-jwt' }, /^unauthorized: malformed token/],
      ['garbage segments', { token: 'a.b.c' }, /^unauthorized: malformed token/],
      ['bad signature', { token: token(['*'], { key: 'another-secret-0123456789abcdef' }) }, /^unauthorized: bad signature$/],
      ['alg none', { token: rawToken({ alg: 'none', typ: 'JWT' }, base) }, /^unauthorized: wrong algorithm: the token is signed with none/],
      ['HS384', { token: token(['*'], { algorithm: 'HS384' }) }, /^unauthorized: wrong algorithm: the token is signed with HS384/],
      ['expired', { token: token(['*'], { ttl: -10 }) }, /^unauthorized: token expired$/],
      ['wrong audience', { token: token(['*'], { aud: 'someone-else' }) }, /^unauthorized: wrong audience$/],
      ['wrong issuer', { token: token(['*'], { iss: 'mallory' }) }, /^unauthorized: wrong issuer$/],
      ['no exp', { token: jwt.sign({ sessions: ['*'], aud: AUD, iss: ISS }, SECRET) }, /^unauthorized: the token has no exp claim$/],
    ];
    for (const [label, auth, expected] of cases) {
      assert.match(await refusal(herald.url, auth), expected, label);
    }
    // Polling is refused the same way.
    assert.match(await refusal(herald.url, undefined, { transports: ['polling'] }), /^unauthorized: missing token/);
    // And herald still serves a good token.
    const socket = await connect(herald.url, { transports: ['websocket'], auth: { token: token(['*']) } });
    assert.ok(socket.connected);
    const metrics = await herald.request('GET', '/metrics');
    assert.match(metrics.text, /herald_auth_refusals_total\{reason="bad_signature"\} 1/);
  });

  test('a token for doc-42:* watches doc-42:7 and gets FORBIDDEN, and nothing else, for doc-43:1', async () => {
    await herald.publishOk('doc-43:1', 'progress', sample('progress'));
    await herald.publishOk('doc-42:7', 'progress', sample('progress'));
    const socket = await connect(herald.url, { transports: ['websocket'], auth: { token: token(['doc-42:*']) } });

    await subscribed(socket, 'doc-42:7');

    const error = waitFor(socket, 'error', (e) => e?.code === 'FORBIDDEN');
    const ack = await emitAck(socket, 'subscribe', 'doc-43:1');
    assertForbiddenAck(ack, 'doc-43:1');
    const reply = await error;
    assert.deepEqual(Object.keys(reply).sort(), ['code', 'error', 'sessionId', 'timestamp']);
    assert.equal(reply.sessionId, 'doc-43:1');
    assert.match(reply.error, /^forbidden: .*doc-43:1/);
    assert.ok(isRecentIsoTimestamp(reply.timestamp));

    // Live events of the refused session do not reach it; the granted one's do.
    await herald.publishOk('doc-43:1', 'completed', sample('completed'));
    await herald.publishOk('doc-42:7', 'completed', sample('completed'));
    await waitFor(socket, 'completed', (d) => d.sessionId === 'doc-42:7', 5000, { past: true });
    await sleep(200);
    assert.deepEqual(sessionEvents(socket, 'doc-43:1'), [], 'nothing of doc-43:1, not even its snapshot');
    assert.equal(socket.received.filter((r) => r.event === 'subscribed' && r.args[0].sessionId === 'doc-43:1').length, 0);
    assert.ok(socket.connected, 'a forbidden subscribe leaves the socket usable');
  });

  test('a subscribe token widens one subscription of one socket', async () => {
    await herald.publishOk('doc-50:1', 'progress', sample('progress'));
    const connection = token(['doc-42:*']);
    const socket = await connect(herald.url, { transports: ['websocket'], auth: { token: connection } });
    const other = await connect(herald.url, { transports: ['websocket'], auth: { token: connection } });

    const wider = token(['doc-50:1']);
    await subscribed(socket, 'doc-50:1', { sessionId: 'doc-50:1', token: wider });

    // It names one session: not another, not for the other socket.
    assertForbiddenAck(await emitAck(socket, 'subscribe', { sessionId: 'doc-51:1', token: wider }), 'doc-51:1');
    assertForbiddenAck(await emitAck(other, 'subscribe', 'doc-50:1'), 'doc-50:1');
    // A subscribe token must be valid: an expired one widens nothing.
    const stale = token(['doc-52:1'], { ttl: -5 });
    const ack = await emitAck(socket, 'subscribe', { sessionId: 'doc-52:1', token: stale });
    assertForbiddenAck(ack, 'doc-52:1');
    assert.match(ack.error, /token expired/);

    await herald.publishOk('doc-50:1', 'completed', sample('completed'));
    await waitFor(socket, 'completed', (d) => d.sessionId === 'doc-50:1', 5000, { past: true });
    await sleep(200);
    assert.deepEqual(sessionEvents(other, 'doc-50:1'), []);
  });

  test('an expired token closes the transport; the auth callback brings a fresh one and the client resubscribes', async () => {
    let minted = 0;
    const socket = createSocket(herald.url, {
      transports: ['websocket'],
      reconnectionDelay: 100,
      reconnectionDelayMax: 200,
      auth: (cb) => {
        minted += 1;
        cb({ token: token(['doc-60:*'], { ttl: 2 }) });
      },
    });
    // The application's resubscription, as client-examples/tokens does.
    socket.on('connect', () => socket.emit('subscribe', 'doc-60:1'));
    await waitFor(socket, 'subscribed', (d) => d.sessionId === 'doc-60:1', 5000);
    const firstId = socket.id;

    const reason = await new Promise((resolve) => socket.once('disconnect', resolve));
    assert.equal(reason, 'transport close', 'a transport close, which the client reconnects from');
    await waitFor(socket, 'subscribed', (d) => d.sessionId === 'doc-60:1', 5000);
    assert.notEqual(socket.id, firstId);
    assert.ok(minted >= 2, `the auth callback ran again (${minted})`);

    const live = waitFor(socket, 'completed', (d) => d.sessionId === 'doc-60:1');
    await herald.publishOk('doc-60:1', 'completed', sample('completed'));
    await live;
    socket.disconnect();
    const metrics = await herald.request('GET', '/metrics');
    assert.match(metrics.text, /herald_auth_refusals_total\{reason="token_expired"\} [1-9]/);
  });

  test('client-examples/node/watch-with-token.mjs comes back with a fresh token after expiry', async () => {
    const dir = path.join(REPO_ROOT, 'client-examples/node');
    const children = [];
    const run = (script, args, env) => {
      const child = spawn(process.execPath, [path.join(dir, script), ...args], {
        cwd: dir,
        env: { PATH: process.env.PATH, ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const proc = { out: '', exit: new Promise((resolve) => child.on('close', resolve)) };
      child.stdout.on('data', (c) => (proc.out += c));
      child.stderr.on('data', (c) => (proc.out += c));
      children.push(child);
      return proc;
    };
    try {
      const backend = run('token-backend.mjs', [], { JWT_SECRET: SECRET, JWT_AUDIENCE: AUD, JWT_ISSUER: ISS, PORT: '0', TOKEN_TTL: '2' });
      await until(() => /listening on (\S+)/.test(backend.out), { what: 'the token backend', timeoutMs: 10000 });
      const tokenUrl = /listening on (\S+)/.exec(backend.out)[1];
      const watcher = run('watch-with-token.mjs', ['doc-95'], { HERALD_URL: herald.url, TOKEN_URL: tokenUrl });
      const subscribes = () => (watcher.out.match(/Subscribed to session: doc-95/g) || []).length;
      await until(() => subscribes() >= 2, { timeoutMs: 15000, what: `a second subscribe after expiry; output:\n${watcher.out}` });
      assert.match(watcher.out, /Disconnected: transport close/);
      await herald.publishOk('doc-95', 'completed', sample('completed'));
      assert.equal(await watcher.exit, 0, watcher.out);
      assert.match(watcher.out, /Session completed/);
    } finally {
      for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    }
  });

  test('herald token mints what herald accepts', async () => {
    const mint = (...args) =>
      execFileSync(HERALD_BIN, ['token', ...args], {
        env: { PATH: process.env.PATH, JWT_SECRET: SECRET, JWT_AUDIENCE: AUD, JWT_ISSUER: ISS },
        encoding: 'utf8',
      }).trim();
    const minted = mint('--sessions', 'doc-90,tenant-7:*', '--ttl', '1h', '--sub', 'cli-user');
    const claims = jwt.verify(minted, SECRET, { audience: AUD, issuer: ISS });
    assert.deepEqual(claims.sessions, ['doc-90', 'tenant-7:*']);
    assert.equal(claims.exp - claims.iat, 3600);
    const socket = await connect(herald.url, { transports: ['websocket'], auth: { token: minted } });
    await subscribe(socket, 'tenant-7:a');
    assertForbiddenAck(await emitAck(socket, 'subscribe', 'doc-91'), 'doc-91');
  });

  test('a raw WebSocket may send its token as ?token= or Authorization: Bearer', async () => {
    const good = token(['*']);
    assert.match(await rawConnect(herald.url), /^44\{"message":"unauthorized: missing token/);
    assert.match(await rawConnect(herald.url, { query: `&token=${good}` }), /^40\{"sid":/);
    assert.match(await rawConnect(herald.url, { query: '&token=nope' }), /^44\{"message":"unauthorized: malformed token/);
    assert.match(await rawConnect(herald.url, { headers: { Authorization: `Bearer ${good}` } }), /^40\{"sid":/);
    assert.match(await rawConnect(herald.url, { headers: { Authorization: `bearer ${good}` } }), /^40\{"sid":/);
    assert.match(
      await rawConnect(herald.url, { headers: { Authorization: `Bearer ${token(['*'], { ttl: -1 })}` } }),
      /^44\{"message":"unauthorized: token expired"/,
    );
  });

  test('history reads take a covering token; without an API key nothing else', async () => {
    await herald.publishOk('doc-70:1', 'progress', sample('progress'));
    const read = (p, t) => herald.request('GET', p, { headers: t ? { authorization: `Bearer ${t}` } : {} });
    for (const p of ['/api/v1/sessions/doc-70:1', '/api/v1/sessions/doc-70:1/events']) {
      const ok = await read(p, token(['doc-70:*']));
      assert.equal(ok.status, 200, `${p}: ${ok.text}`);
      const forbidden = await read(p, token(['doc-71:*']));
      assert.equal(forbidden.status, 403, `${p}: ${forbidden.text}`);
      assert.match(forbidden.body.error, /^forbidden: .*doc-70:1/);
      const missing = await read(p);
      assert.equal(missing.status, 401, `${p}: ${missing.text}`);
      assert.match(missing.body.error, /^unauthorized: missing token/);
      const expired = await read(p, token(['doc-70:*'], { ttl: -1 }));
      assert.equal(expired.status, 401);
      assert.match(expired.body.error, /^unauthorized: token expired/);
    }
    const events = await read('/api/v1/sessions/doc-70:1/events', token(['doc-70:1']));
    assert.equal(events.body.events.length, 1, events.text);
  });
});

describe('tokens: history reads beside an API key', () => {
  const KEY = 'api-key-for-token-tests-0123456789';
  let herald;
  before(async () => {
    herald = await startHerald({ args: ['--jwt-secret', SECRET, '--api-key', KEY] });
  });
  after(async () => {
    closeAll();
    await herald?.kill();
  });

  test('the API key still reads; a covering token reads; others are refused', async () => {
    await herald.publishOk('doc-80:1', 'progress', sample('progress'), { apiKey: KEY });
    const p = '/api/v1/sessions/doc-80:1';
    const as = (authorization) => herald.request('GET', p, { headers: authorization ? { authorization } : {} });
    assert.equal((await as(`Bearer ${KEY}`)).status, 200);
    assert.equal((await as(`Bearer ${token(['doc-80:1'])}`)).status, 200);
    assert.equal((await as(`Bearer ${token(['doc-81:1'])}`)).status, 403);
    assert.equal((await as('Bearer not-the-key')).status, 401);
    assert.equal((await as()).status, 401);
    // A token is for reading: publishing still takes the key.
    const publish = await herald.request('POST', '/api/v1/sessions/doc-80:1/events', {
      json: { event: 'completed', data: sample('completed') },
      headers: { authorization: `Bearer ${token(['*'])}` },
    });
    assert.equal(publish.status, 401, publish.text);
  });
});

describe('tokens: public keys (RS256, ES256, EdDSA from the key type)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-keys-'));
  const heralds = [];
  after(async () => {
    closeAll();
    for (const h of heralds) await h.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const kinds = [
    ['rsa', { modulusLength: 2048 }, 'RS256'],
    ['ec', { namedCurve: 'P-256' }, 'ES256'],
    ['ed25519', {}, 'EdDSA'],
  ];
  for (const [type, options, alg] of kinds) {
    test(`${type}: ${alg} tokens connect, HS256 signed with the public key does not`, async () => {
      const { publicKey, privateKey } = crypto.generateKeyPairSync(type, options);
      const pem = publicKey.export({ type: 'spki', format: 'pem' });
      const file = path.join(dir, `${type}.pem`);
      fs.writeFileSync(file, pem);
      const herald = await startHerald({ args: ['--jwt-public-key-file', file] });
      heralds.push(herald);

      const claims = { sessions: ['doc-1'], exp: inAMinute() };
      const good =
        alg === 'EdDSA'
          ? rawToken({ alg, typ: 'JWT' }, claims, (m) => crypto.sign(null, Buffer.from(m), privateKey).toString('base64url'))
          : jwt.sign(claims, privateKey, { algorithm: alg });
      const socket = await connect(herald.url, { transports: ['websocket'], auth: { token: good } });
      await subscribe(socket, 'doc-1');
      assertForbiddenAck(await emitAck(socket, 'subscribe', 'doc-2'), 'doc-2');

      // The classic confusion: the public key used as an HMAC secret.
      const confused = jwt.sign(claims, pem, { algorithm: 'HS256' });
      assert.match(await refusal(herald.url, { token: confused }), /^unauthorized: wrong algorithm: the token is signed with HS256/);
      assert.match(await refusal(herald.url, { token: token(['*']) }), /^unauthorized: wrong algorithm/);
    });
  }
});

describe('tokens: keys rotate without a restart (key files, SIGHUP)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-rotate-'));
  const heralds = [];
  after(async () => {
    closeAll();
    for (const h of heralds) await h.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('JWT_SECRET_FILE: any secret of the file connects; after SIGHUP a removed one is refused, and connected sockets keep receiving', async () => {
    const [older, current, newer] = ['older', 'current', 'newer'].map((n) => `${n}-secret-0123456789abcdef0123456789`);
    const file = path.join(dir, 'secrets');
    fs.writeFileSync(file, `# newest first\n${current}\n${older}\n`);
    const herald = await startHerald({
      args: ['--jwt-secret-file', file, '--jwt-audience', AUD, '--jwt-issuer', ISS],
      logLevel: 'info',
    });
    heralds.push(herald);
    assert.match(herald.logs(), /tokens required: .*2 token keys \(HS256\) from /);

    const session = 'doc-rotate';
    const onOlder = await connect(herald.url, { transports: ['websocket'], auth: { token: token([session], { key: older }) } });
    await subscribe(onOlder, session);
    const onCurrent = await connect(herald.url, { transports: ['websocket'], auth: { token: token([session], { key: current }) } });
    await subscribe(onCurrent, session);
    assert.match(await refusal(herald.url, { token: token([session], { key: newer }) }), /^unauthorized: bad signature/);

    // The backend starts signing with `newer`; `older` is retired.
    fs.writeFileSync(file, `${newer}\n${current}\n`);
    herald.child.kill('SIGHUP');
    await until(() => /SIGHUP: 2 token keys \(HS256\)/.test(herald.logs()), { what: 'the reload in the log' });
    assert.match(await refusal(herald.url, { token: token([session], { key: older }) }), /^unauthorized: bad signature/);
    const onNewer = await connect(herald.url, { transports: ['websocket'], auth: { token: token([session], { key: newer }) } });
    await subscribe(onNewer, session);

    // A socket admitted under a retired key keeps what its token granted
    // until the token expires: a rotation disconnects no one.
    const arrivals = [onOlder, onCurrent, onNewer].map((socket) => waitFor(socket, 'progress'));
    await herald.publishOk(session, 'progress', sample('progress'));
    for (const event of await Promise.all(arrivals)) assert.equal(event.sessionId, session);

    // A file that cannot be read keeps the keys in force.
    fs.rmSync(file);
    herald.child.kill('SIGHUP');
    await until(() => /keeping the keys in force/.test(herald.logs()), { what: 'the failed reload in the log' });
    await connect(herald.url, { transports: ['websocket'], auth: { token: token([session], { key: newer }) } });
    for (const secret of [older, current, newer]) assert.ok(!herald.logs().includes(secret), 'a secret was logged');
  });

  test('JWT_PUBLIC_KEY_FILE with an RSA and an EC key: tokens of either connect; SIGHUP drops the one removed', async () => {
    const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pem = (pair) => pair.publicKey.export({ type: 'spki', format: 'pem' });
    const file = path.join(dir, 'keys.pem');
    fs.writeFileSync(file, pem(rsa) + pem(ec));
    const herald = await startHerald({ args: ['--jwt-public-key-file', file], logLevel: 'info' });
    heralds.push(herald);
    const signed = (pair, algorithm) => jwt.sign({ sessions: ['doc-pk'], exp: inAMinute() }, pair.privateKey, { algorithm });

    for (const [pair, alg] of [[rsa, 'RS256'], [ec, 'ES256']]) {
      const socket = await connect(herald.url, { transports: ['websocket'], auth: { token: signed(pair, alg) } });
      await subscribe(socket, 'doc-pk');
    }
    assert.match(
      await refusal(herald.url, { token: token(['*']) }),
      /^unauthorized: wrong algorithm: the token is signed with HS256, herald expects RS256 or ES256/,
    );

    fs.writeFileSync(file, pem(ec));
    herald.child.kill('SIGHUP');
    await until(() => /SIGHUP: 1 token key \(ES256\)/.test(herald.logs()), { what: 'the reload in the log' });
    assert.match(await refusal(herald.url, { token: signed(rsa, 'RS256') }), /^unauthorized: wrong algorithm: the token is signed with RS256, herald expects ES256/);
    await connect(herald.url, { transports: ['websocket'], auth: { token: signed(ec, 'ES256') } });
  });
});

describe('tokens: none configured', () => {
  let herald;
  before(async () => {
    herald = await startHerald();
  });
  after(async () => {
    closeAll();
    await herald?.kill();
  });

  test('sockets are anonymous, and herald said so at start', async () => {
    const socket = await connect(herald.url, { transports: ['websocket'] });
    await subscribe(socket, 'doc-42:7');
    assert.match(herald.logs(), /sockets are anonymous/);
  });
});
