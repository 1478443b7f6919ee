// herald's /dashboard in headless Chromium, against two heralds sharing a
// real redis-server, with traffic: Socket.IO subscribers on both instances
// and publishes through both.
//
//   tests/interop/browser/install     # chromium and playwright-core
//   cd tests/interop/browser && node --test dashboard.test.mjs
//
// It checks what an operator relies on: the page asks for the token and
// refuses a wrong one (401, its message shown), lists both instances, shows
// the counts /api/v1/stats gives, draws its charts, and tails a session
// (history first, then a new event within a second, its payload viewable).
// It takes a screenshot: into the temporary directory, or with
// HERALD_UPDATE_SCREENSHOT=1 over docs/dashboard.png, which README.md shows
// (so that a test run leaves the checkout as it found it). Whether
// the dashboard is off beyond loopback without ADMIN_TOKEN is checked in
// Rust (tests/dashboard.rs): these heralds listen on 127.0.0.1 only.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CHROMIUM_BIN, launchChromium } from './chromium.mjs';
import { REPO_ROOT } from '../../fixtures/fixtures.mjs';
import { startHerald, connect, subscribe, emitAck, closeAll, sample, HERALD_BIN } from '../node/lib/herald.mjs';
import { startRedis } from '../node/lib/redis.mjs';

const TOKEN = 'dashboard-test-token';
const BUSY = `dash-busy-${process.pid}`;
const QUIET = `dash-quiet-${process.pid}`;
const SCREENSHOT = process.env.HERALD_UPDATE_SCREENSHOT
  ? path.join(REPO_ROOT, 'docs/dashboard.png')
  : path.join(os.tmpdir(), `herald-dashboard-${process.pid}.png`);
const STEP_TIMEOUT_MS = 8000;

let redis;
let heralds = [];
let browser;

/** Poll until `check()` holds; fail naming `what` and the last state seen. */
async function until(what, check, timeoutMs = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await check();
    if (last && last.ok !== false) return last;
    if (Date.now() > deadline) assert.fail(`${what} within ${timeoutMs} ms; last: ${JSON.stringify(last)}`);
    await sleep(50);
  }
}

const progress = (n) => sample('progress', { progress: n });

before(async () => {
  for (const needed of [HERALD_BIN, CHROMIUM_BIN]) {
    if (!existsSync(needed)) throw new Error(`missing ${needed}: cargo build, tests/interop/browser/install`);
  }
  redis = await startRedis();
  const args = ['--redis-url', redis.url, '--redis-prefix', `dash-${process.pid}`];
  heralds = [
    await startHerald({ args, env: { ADMIN_TOKEN: TOKEN } }),
    await startHerald({ args, env: { ADMIN_TOKEN: TOKEN } }),
  ];
  browser = await launchChromium();
});

after(async () => {
  closeAll();
  await browser?.close();
  for (const h of heralds) await h.stop();
  await redis?.kill();
});

test('the dashboard shows the cluster, its figures, charts and a live session tail', async () => {
  const [a, b] = heralds;
  // Traffic: three subscribers on a, two on b, events published through both.
  const watchers = [];
  for (const [h, session] of [[a, BUSY], [a, BUSY], [a, QUIET], [b, BUSY], [b, BUSY]]) {
    const socket = await connect(h.url, { transports: ['websocket'] });
    await subscribe(socket, session);
    watchers.push(socket);
  }
  for (let i = 1; i <= 6; i++) await (i % 2 ? a : b).publishOk(BUSY, 'progress', progress(i));
  await a.publishOk(QUIET, 'progress', progress(1));
  // A refusal, which the page lists (without the payload).
  const refused = await a.publish(BUSY, 'no_such_event', { secret: 'never-shown' });
  assert.equal(refused.status, 422);
  const badSubscribe = await emitAck(watchers[0], 'subscribe', 'not a session id!');
  assert.equal(badSubscribe.code, 'INVALID_SESSION_ID');

  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  const res = await page.goto(`${a.url}/dashboard`);
  assert.equal(res.status(), 200);

  // No token yet: the page asks for one, saying why.
  await until('the page asks for the token', () =>
    page.evaluate(() => !document.getElementById('login').hidden && document.getElementById('login-message').textContent));
  // A wrong token is refused, readably.
  await page.fill('#token', 'wrong-token');
  await page.click('#login button');
  const refusedMessage = await until('a wrong token refused', () =>
    page.evaluate(() => {
      const text = document.getElementById('login-message').textContent;
      return !document.getElementById('login').hidden && /wrong admin token/.test(text) && text;
    }));
  assert.match(refusedMessage, /ADMIN_TOKEN/);
  const direct = await fetch(`${a.url}/dashboard/api/feed`, { headers: { authorization: 'Bearer wrong-token' } });
  assert.equal(direct.status, 401);
  assert.match((await direct.json()).error, /wrong admin token/);
  assert.match(a.logs(), /dashboard refused: missing or wrong admin token client="127\.0\.0\.1:\d+"/);

  await page.fill('#token', TOKEN);
  await page.click('#login button');
  await until('the board shown with the right token', () =>
    page.evaluate(() => !document.getElementById('board').hidden));

  // Both instances, each by the id its /health gives.
  const ids = [];
  for (const h of heralds) ids.push((await (await fetch(`${h.url}/health`)).json()).instance);
  const listed = await until('both instances listed', () =>
    page.evaluate(() => [...document.querySelectorAll('#instances tbody tr')].map((tr) => tr.dataset.instance)).then(
      (shown) => ({ ok: shown.length === 2, shown }),
    ));
  assert.deepEqual([...listed.shown].sort(), [...ids].sort());

  // The counts are /api/v1/stats's (both read the instances' reports).
  const stats = await a.stats();
  assert.equal(stats.scope, 'cluster');
  const totals = await until('the totals of /api/v1/stats', async () => {
    const now = await a.stats();
    const shown = await page.evaluate(() => ({
      connections: Number(document.getElementById('total-connections').textContent),
      subscriptions: Number(document.getElementById('total-subscriptions').textContent),
      published: Number(document.getElementById('total-published').textContent),
      delivered: Number(document.getElementById('total-delivered').textContent),
    }));
    const want = {
      connections: now.connections,
      subscriptions: now.subscriptions,
      published: now.eventsPublished,
      delivered: now.eventsDelivered,
    };
    // Each instance reports once a second: wait for reports that have seen
    // every connection and publish, not just for the page to agree with them.
    const settled = want.connections === 5 && want.subscriptions === 5 && want.published === 7;
    return { ok: settled && JSON.stringify(shown) === JSON.stringify(want), shown, want };
  });
  assert.equal(totals.shown.connections, 5);
  assert.equal(totals.shown.subscriptions, 5);
  assert.equal(totals.shown.published, 8 - 1, 'seven published, the refused one not');

  // The charts draw: every sample is a point.
  const points = await until('the charts draw points', () =>
    page.evaluate(() => ({
      connections: Number(document.getElementById('chart-connections').dataset.points || 0),
      publishes: Number(document.getElementById('chart-publishes').dataset.points || 0),
    })).then((p) => ({ ok: p.connections >= 2 && p.publishes >= 2, ...p })));
  assert.ok(points.connections >= 2, JSON.stringify(points));

  // The refusal is listed, without what the client sent.
  await until('the refusals listed', () =>
    page.evaluate(() => document.querySelector('#refusals tbody').textContent).then((t) => ({
      ok: /422/.test(t) && /socketINVALID_SESSION_ID/.test(t),
      t,
    })));
  assert.doesNotMatch(await page.evaluate(() => document.body.textContent), /never-shown/);

  // The busiest session is listed; opening it shows its state and history.
  // Four subscribers over both instances (each instance lists its own once
  // it knows a dashboard is open: a second or two).
  const watched = await until('the most watched session listed', () =>
    page.evaluate(() => [...document.querySelectorAll('#most-watched li')].map((li) => li.textContent)).then(
      (list) => ({ ok: list[0] === `${BUSY} (4)`, list }),
    ));
  assert.equal(watched.list[1], `${QUIET} (1)`);
  await page.fill('#session-query', BUSY);
  await page.click('#search button');
  const history = await until('the session history tailed', () =>
    page.evaluate(() => [...document.querySelectorAll('#tail li')].map((li) => Number(li.dataset.seq))).then(
      (seqs) => ({ ok: seqs.length === 6, seqs }),
    ));
  assert.deepEqual(history.seqs, [1, 2, 3, 4, 5, 6]);
  const perInstance = await until('subscribers per instance', () =>
    page.evaluate(() => [...document.querySelectorAll('#session-subscribers li')].map((li) => li.textContent)).then(
      (list) => ({ ok: list.length === 2, list }),
    ));
  assert.deepEqual(perInstance.list.sort(), ids.map((id) => `${id}: 2`).sort());

  // A new event, published through the other instance, appears within a second.
  const marker = `just-now-${Date.now()}`;
  const published = Date.now();
  const receipt = await b.publishOk(BUSY, 'progress', progress(7));
  await b.publishOk(BUSY, 'clarification', sample('clarification', { question: marker }));
  await until('the new events tailed', () =>
    page.evaluate((seq) => !!document.querySelector(`#tail li[data-seq="${seq}"]`), receipt.seq + 1));
  const took = Date.now() - published;
  assert.ok(took < 1000, `the tail showed the new event ${took} ms after it was published`);
  console.log(`the tail showed the new event ${took} ms after its publish began`);
  await page.click(`#tail li[data-seq="${receipt.seq + 1}"]`);
  const payload = await page.evaluate((seq) => document.querySelector(`#tail li[data-seq="${seq}"] pre`)?.textContent, receipt.seq + 1);
  assert.match(payload, new RegExp(marker));

  await until('the session state', () =>
    page.evaluate(() => document.getElementById('session-state').textContent).then((t) => ({ ok: /seq8/.test(t), t })));
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  console.log(`screenshot: ${SCREENSHOT}`);

  // Redis gone: the page goes on, with this instance alone, not ready, and why.
  await redis.kill();
  const down = await until('the instance shown not ready, with the reason', () =>
    page.evaluate(() => ({
      scope: document.getElementById('scope').textContent,
      rows: [...document.querySelectorAll('#instances tbody tr')].map((tr) => tr.textContent),
    })).then((v) => ({ ok: v.rows.length === 1 && /no: .*Redis/.test(v.rows[0]), ...v })));
  assert.match(down.scope, /Redis cannot give the cluster's reports now/);
  await page.close();
  for (const socket of watchers) socket.disconnect();
});

test('without ADMIN_TOKEN, a herald on loopback opens its dashboard to this machine', async () => {
  const local = await startHerald();
  try {
    const res = await fetch(`${local.url}/dashboard/api/feed`, { signal: AbortSignal.timeout(5000) });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /text\/event-stream/);
    await res.body.cancel();
    assert.match(local.logs(), /dashboard at \/dashboard without a token: herald listens on loopback only/);
  } finally {
    await local.stop();
  }
});
