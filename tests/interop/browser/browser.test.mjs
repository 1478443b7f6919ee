// The browser client examples, run as users run them: a real herald, each
// example served as its README says (client-examples/browser/serve.mjs, and
// `vite preview` of client-examples/react's build), opened in headless
// Chromium, while this test publishes a document-processing session over
// herald's HTTP API and reads, after every step, what the page shows.
//
//   tests/interop/browser/install            # chromium, npm packages, the React build
//   cd tests/interop/browser && node --test browser.test.mjs
//
// Then that nothing is lost or shown twice when the page is reloaded midway
// or its connection drops (through a TCP proxy the test cuts), nor when
// herald restarts and the session starts anew (a new epoch).
//
// HERALD_BIN picks the herald binary (default target/debug/herald),
// CHROMIUM_BIN the browser (default /usr/bin/chromium), HERALD_TEST_LOGS=1
// echoes herald's logs. Each page ends with a screenshot in a temp directory
// (its path is printed) for a person to look at. The session played and the
// invalid id come from tests/fixtures/events.json, which every suite shares.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { once } from 'node:events';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';
import { REPO_ROOT, HERALD_ENV_VARS, startLinePort, cases, sample } from '../../fixtures/fixtures.mjs';
import { startProxy } from '../tcp-proxy.mjs';
const HERALD_BIN = process.env.HERALD_BIN || path.join(REPO_ROOT, 'target/debug/herald');
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const BROWSER_EXAMPLE = path.join(REPO_ROOT, 'client-examples/browser');
const REACT_EXAMPLE = path.join(REPO_ROOT, 'client-examples/react');
const HOST = '127.0.0.1';
const STEP_TIMEOUT_MS = 5000;

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

const children = new Set();
process.on('exit', () => {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/**
 * A port that was free a moment ago. Only for `vite preview`, which is told
 * its port (--strictPort) and cannot be asked for port 0 and read back;
 * herald and serve.mjs start on port 0 and say where they listen.
 */
async function freePort() {
  const server = net.createServer().listen(0, HOST);
  await once(server, 'listening');
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Spawn a long-running process (`env`: its whole environment); collects its output. */
function startProcess(name, command, args, { cwd, env } = {}) {
  // (cwd defaults to this directory; herald gets a temp one, without a .env.)
  const child = spawn(command, args, { cwd, env: env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const proc = { name, child, output: '' };
  const echo = name === 'herald' && process.env.HERALD_TEST_LOGS;
  const onData = (chunk) => {
    proc.output += chunk;
    if (echo) process.stderr.write(`[${name}] ${chunk}`);
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  proc.exited = new Promise((resolve) =>
    child.on('close', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    }),
  );
  child.on('error', (e) => {
    proc.output += `\ncannot spawn ${command}: ${e.message}\n`;
  });
  proc.running = () => child.exitCode === null && child.signalCode === null && children.has(child);
  proc.tail = (n = 25) => proc.output.split('\n').slice(-n).join('\n');
  /** SIGTERM, then SIGKILL after 3 s; never throws. */
  proc.stop = async () => {
    if (!proc.running()) return;
    child.kill('SIGTERM');
    const timer = sleep(3000, 'timeout', { ref: false });
    if ((await Promise.race([proc.exited, timer])) === 'timeout') {
      child.kill('SIGKILL');
      await proc.exited;
    }
  };
  return proc;
}

/** Wait until `proc` printed a line from which `parse(output)` reads a port; resolves with it. */
async function waitForPort(proc, parse, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const port = parse(proc.output);
    if (port !== undefined) return port;
    if (!proc.running()) throw new Error(`${proc.name} exited before saying where it listens\n${proc.tail()}`);
    if (Date.now() > deadline) throw new Error(`${proc.name} did not say where it listens within ${timeoutMs} ms\n${proc.tail()}`);
    await sleep(10);
  }
}

/** Poll `url` until it answers 200, or fail with the process's output. */
async function waitForHttp(proc, url, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!proc.running()) {
      throw new Error(`${proc.name} exited before answering ${url}\n${proc.tail()}`);
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      throw new Error(`${proc.name}: ${url} did not answer 200 within ${timeoutMs} ms\n${proc.tail()}`);
    }
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------
// herald's HTTP API
// ---------------------------------------------------------------------------

let heraldUrl;

async function api(method, pathname, json) {
  const res = await fetch(`${heraldUrl}${pathname}`, {
    method,
    headers: json === undefined ? {} : { 'content-type': 'application/json' },
    body: json === undefined ? undefined : JSON.stringify(json),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null, text };
}

async function publish(sessionId, event, data, base = heraldUrl) {
  const res = await fetch(`${base}/api/v1/sessions/${encodeURIComponent(sessionId)}/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ event, data }),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  assert.equal(res.status, 202, `publishing ${event} to ${sessionId}: herald answered ${res.status} ${text}`);
  return JSON.parse(text).seq;
}

async function subscribers(sessionId) {
  const res = await api('GET', `/api/v1/sessions/${encodeURIComponent(sessionId)}`);
  assert.equal(res.status, 200, `GET session ${sessionId}: ${res.status} ${res.text}`);
  return res.body.subscribers;
}

/** Wait until herald counts `n` subscribers of `sessionId`. */
async function waitForSubscribers(sessionId, n, why, timeoutMs = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await subscribers(sessionId);
    if (last === n) return;
    if (Date.now() > deadline) {
      assert.fail(`${why}: herald counts ${last} subscriber(s) of ${sessionId} after ${timeoutMs} ms, expected ${n}${framesNote()}`);
    }
    await sleep(50);
  }
}

/** Wait until herald counts `n` Socket.IO connections (GET /api/v1/stats). */
async function waitForConnections(n, why, timeoutMs = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const stats = await api('GET', '/api/v1/stats');
    if (stats.body?.connections === n) return;
    if (Date.now() > deadline) assert.fail(`${why}: herald's stats after ${timeoutMs} ms: ${stats.text}, expected ${n} connections`);
    await sleep(50);
  }
}

// The last WebSocket frames any page sent (>) or received (<), for failure
// messages: whether the page asked, and what herald answered.
const recentFrames = [];
function noteFrame(way, payload) {
  recentFrames.push(`${new Date().toISOString().slice(11, 23)} ${way} ${String(payload).slice(0, 140)}`);
  if (recentFrames.length > 30) recentFrames.shift();
}
const framesNote = () => `\n--- the pages' last WebSocket frames ---\n${recentFrames.join('\n')}`;

let sessionCounter = 0;
const newSessionId = (label) => `browser-${label}-${process.pid}-${++sessionCounter}`;

// ---------------------------------------------------------------------------
// What a page shows
// ---------------------------------------------------------------------------

/**
 * The page's state as a person sees it, read from the DOM. Both examples use
 * the same ids: #connection, #progress (<progress>), #progress-percent,
 * #progress-status, [data-testid=model-result], [data-testid=clarification],
 * #completed (the banner), #failed, and what watchSession reports:
 * #received, #missed, #resume (how the last (re)subscription went), #lost;
 * the plain page also lists refused requests as [data-testid=error] and
 * counts #duplicates.
 */
function readPage() {
  const q = (s) => document.querySelector(s);
  const shown = (el) => !!el && el.checkVisibility();
  const texts = (s) => [...document.querySelectorAll(s)].filter(shown).map((e) => e.innerText.trim());
  const bar = q('#progress');
  return {
    connection: q('#connection')?.innerText.trim() ?? null,
    progressValue: shown(bar) ? bar.value : null,
    percent: shown(q('#progress-percent')) ? q('#progress-percent').innerText.trim() : null,
    status: q('#progress-status')?.innerText.trim() ?? null,
    modelResults: texts('[data-testid=model-result]'),
    clarifications: texts('[data-testid=clarification]'),
    completed: shown(q('#completed')) ? q('#completed').innerText.trim() : null,
    failed: shown(q('#failed')) ? q('#failed').innerText.trim() : null,
    errors: texts('[data-testid=error]'),
    modelNames: texts('[data-testid=model-result] .model-name'),
    received: q('#received') ? Number(q('#received').innerText) : null,
    missed: q('#missed') ? Number(q('#missed').innerText) : null,
    duplicates: q('#duplicates') ? Number(q('#duplicates').innerText) : null,
    resume: q('#resume')?.innerText.trim() ?? null,
    lost: shown(q('#lost')) ? q('#lost').innerText.trim() : null,
    body: document.body.innerText,
  };
}

/** Poll the page until `check(view)` is true; fail with what the page shows. */
async function expectPage(page, what, check, timeoutMs = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let view;
  for (;;) {
    view = await page.evaluate(readPage);
    if (check(view)) return view;
    if (Date.now() > deadline) {
      const { body, ...rest } = view;
      assert.fail(
        `the page did not show ${what} within ${timeoutMs} ms\n` +
          `page state: ${JSON.stringify(rest, null, 2)}\n--- page text ---\n${body}${framesNote()}`,
      );
    }
    await sleep(40);
  }
}

// ---------------------------------------------------------------------------
// The simulated session, and what the page must show after each step
// ---------------------------------------------------------------------------

const progressShown = (value, status) => (v) =>
  v.progressValue === value && v.percent === `${value}%` && v.status?.includes(`Status: ${status}`);

/**
 * The shared document session (tests/fixtures/events.json), each step with
 * what the page must show once it is published: the progress bar and status;
 * one more model result with its model, status, duration, and its output (or,
 * failed, its error: a backend string is text, never markup, so it must show
 * as typed); one more clarification with its question and status; the banner
 * only after `completed`.
 */
const STEPS = cases('documentSession').map(({ event, data }, i, all) => {
  const before = all.slice(0, i + 1);
  const count = (name) => before.filter((s) => s.event === name).length;
  const done = before.some((s) => s.event === 'completed');
  switch (event) {
    case 'progress':
      return {
        event,
        data,
        shows: `progress ${data.progress}% ${data.status}${done ? '' : ', no banner before the completed event'}`,
        check: (v) => progressShown(data.progress, data.status)(v) && (done || v.completed === null),
      };
    case 'model_result': {
      const n = count('model_result');
      const text = [data.modelName, data.status, `${data.duration} ms`];
      if (data.status === 'completed') text.push(data.result);
      else if (data.error) text.push(`Error: ${data.error}`);
      return {
        event,
        data,
        shows: `${n} model result(s), the last ${text.join(' / ')}`,
        check: (v) => v.modelResults.length === n && text.every((t) => v.modelResults[n - 1].includes(t)),
      };
    }
    case 'clarification': {
      const n = count('clarification');
      return {
        event,
        data,
        shows: `${n} clarification(s), the last "${data.question}" ${data.status}`,
        check: (v) =>
          v.clarifications.length === n &&
          v.clarifications[n - 1].includes(data.question) &&
          v.clarifications[n - 1].includes(data.status),
      };
    }
    case 'completed':
      return {
        event,
        data,
        shows: 'the Completed banner',
        check: (v) => v.completed !== null && v.completed.startsWith('Completed'),
      };
    default:
      throw new Error(`documentSession: no check for ${event}`);
  }
});
const stepCount = (name) => STEPS.filter((s) => s.event === name).length;
const COMPLETED_RESULT = STEPS.find((s) => s.event === 'completed').data.result;

// A session id the page must refuse (a string: it comes in the page's URL).
const INVALID_ID = cases('sessionIds.invalid').find((c) => c.label === 'punctuation').args[0];

/** Publish the session step by step; after each, the page must show it. */
async function playSession(page, sessionId) {
  let view;
  for (const step of STEPS) {
    // After `completed` the plain page unsubscribes and disconnects; over
    // polling a request still under way may then be answered 400.
    if (step.event === 'completed') page.closing = true;
    await publish(sessionId, step.event, step.data);
    view = await expectPage(page, `${step.shows} (after publishing ${step.event} to ${sessionId})`, step.check);
  }
  // Nothing shown twice, nothing reported as failed.
  assert.ok(stepCount('model_result') >= 2 && stepCount('completed') === 1, 'the session has model results and ends');
  assert.equal(view.modelResults.length, stepCount('model_result'), 'every model result, once, in the end');
  assert.equal(view.clarifications.length, stepCount('clarification'), 'every clarification, once, in the end');
  assert.equal(view.failed, null, 'no failure banner');
  assert.deepEqual(view.errors, [], 'no errors listed');
  assert.equal(view.received, STEPS.length, 'the page counts every event it received');
  assert.equal(view.missed, 0, 'and none missed');
  return view;
}

// ---------------------------------------------------------------------------
// Browser
// ---------------------------------------------------------------------------

let browser;
let herald;
let staticServer;
let preview;
let browserExampleUrl;
let reactExampleUrl;
const screenshotDir = mkdtempSync(path.join(os.tmpdir(), 'herald-browser-'));

/** A fresh page that records console errors, page errors and failed requests. */
async function openPage(url) {
  const context = await browser.newContext({ viewport: { width: 900, height: 1000 } });
  const page = await context.newPage();
  page.problems = [];
  page.sentFrames = [];
  page.on('console', (msg) => {
    // Once the page disconnects on purpose, a request the client still makes
    // for the closed session (its close packet racing the server's close)
    // may be answered 400: expected, like the cut-short requests below.
    if (msg.type() !== 'error') return;
    if (page.closing && msg.text().startsWith('Failed to load resource')) return;
    // While the test cuts the connection, the client's failed attempts to
    // reconnect are expected.
    if (page.outage && /^(WebSocket connection to|Failed to load resource)/.test(msg.text())) return;
    page.problems.push(`console error: ${msg.text()} (${msg.location().url})`);
  });
  page.on('pageerror', (e) => page.problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (req) => {
    // A socket.io request cut short by an intended disconnect or page change is not a problem.
    if (page.closing || (page.outage && req.url().includes('/socket.io/'))) return;
    page.problems.push(`request failed: ${req.method()} ${req.url()}: ${req.failure()?.errorText}`);
  });
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => {
      page.sentFrames.push(String(f.payload));
      noteFrame('>', f.payload);
    });
    ws.on('framereceived', (f) => noteFrame('<', f.payload));
  });
  const res = await page.goto(url, { waitUntil: 'load', timeout: 10000 });
  assert.equal(res.status(), 200, `GET ${url}`);
  return page;
}

async function closePage(page) {
  page.closing = true;
  await page.context().close();
}

function assertNoProblems(page, what) {
  assert.deepEqual(page.problems, [], `${what}: the browser reported problems`);
}

/** Whether `frames` (WebSocket frames the page sent) hold `unsubscribe` for the session, with or without an ack id. */
function sentUnsubscribe(frames, sessionId) {
  return frames.some((f) => /^42\d*\[/.test(f) && f.endsWith(`["unsubscribe","${sessionId}"]`));
}

async function screenshot(page, name) {
  const file = path.join(screenshotDir, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot: ${file}`);
}

before(async () => {
  const missing = [];
  if (!existsSync(HERALD_BIN)) missing.push(`herald binary ${HERALD_BIN} (cargo build, or set HERALD_BIN)`);
  if (!existsSync(CHROMIUM_BIN)) missing.push(`${CHROMIUM_BIN} (set CHROMIUM_BIN)`);
  if (!existsSync(path.join(BROWSER_EXAMPLE, 'node_modules/socket.io-client/dist/socket.io.min.js'))) {
    missing.push('client-examples/browser/node_modules');
  }
  if (!existsSync(path.join(REACT_EXAMPLE, 'dist/index.html'))) missing.push('client-examples/react/dist (vite build)');
  if (!existsSync(path.join(REACT_EXAMPLE, 'node_modules/vite/bin/vite.js'))) missing.push('client-examples/react/node_modules');
  if (missing.length) {
    throw new Error(`missing: ${missing.join('; ')}\nrun tests/interop/browser/install first`);
  }

  // herald with its defaults: none of the caller's herald settings (an API_KEY
  // would refuse the publishes, a CORS_ORIGINS the polling page). On port 0,
  // the port read from its start line; at info, as the tests read its log.
  const env = { ...process.env, NO_COLOR: '1' };
  for (const name of HERALD_ENV_VARS) delete env[name];
  herald = startProcess('herald', HERALD_BIN, ['--host', HOST, '--port', '0', '--log-level', 'info'], {
    env,
    cwd: os.tmpdir(),
  });
  heraldUrl = `http://${HOST}:${await waitForPort(herald, startLinePort)}`;
  await waitForHttp(herald, `${heraldUrl}/health`);

  // The plain page, served by its own serve.mjs (on port 0: it prints where
  // it listens), which passes HERALD_URL to the page.
  staticServer = startProcess('serve.mjs', process.execPath, ['serve.mjs'], {
    cwd: BROWSER_EXAMPLE,
    env: { ...process.env, HOST, PORT: '0', HERALD_URL: heraldUrl },
  });
  const staticPort = await waitForPort(staticServer, (out) => {
    const m = /serving the browser example on http:\/\/[^\s/]+:(\d+)\//.exec(out);
    return m ? Number(m[1]) : undefined;
  });
  browserExampleUrl = `http://${HOST}:${staticPort}/`;
  await waitForHttp(staticServer, browserExampleUrl);

  // The React build, served by `vite preview`.
  const previewPort = await freePort();
  preview = startProcess(
    'vite preview',
    process.execPath,
    ['node_modules/vite/bin/vite.js', 'preview', '--host', HOST, '--port', String(previewPort), '--strictPort'],
    { cwd: REACT_EXAMPLE },
  );
  reactExampleUrl = `http://${HOST}:${previewPort}/`;
  await waitForHttp(preview, reactExampleUrl);

  browser = await launchChromium();
});

async function launchChromium() {
  try {
    return await chromium.launch({
      executablePath: CHROMIUM_BIN,
      headless: true,
      timeout: 20000,
      // Playwright gives the browser a fresh --user-data-dir of its own.
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  } catch (e) {
    throw new Error(`cannot start ${CHROMIUM_BIN} (run tests/interop/browser/install): ${e.message}`);
  }
}

after(async () => {
  await browser?.close().catch(() => {});
  await Promise.all([preview?.stop(), staticServer?.stop(), herald?.stop()]);
  console.log(`screenshots in ${screenshotDir}`);
});

// ---------------------------------------------------------------------------
// client-examples/browser
// ---------------------------------------------------------------------------

describe('client-examples/browser (plain page, socket.io.min.js)', () => {
  test('shows a whole session over websocket, herald URL from serve.mjs', async () => {
    const sessionId = newSessionId('plain');
    // No ?herald=: the URL comes from serve.mjs's HERALD_URL via config.js.
    const page = await openPage(`${browserExampleUrl}?session=${sessionId}`);
    try {
      const first = await expectPage(page, 'the session id and "Connected ... over websocket"', (v) =>
        /^Connected as \S+ over websocket$/.test(v.connection),
      );
      assert.ok(first.body.includes(`herald session ${sessionId}`), 'the page names the session');
      assert.ok(first.body.includes(heraldUrl), 'the page names the herald URL it uses');
      assert.equal(first.progressValue, 0);
      assert.equal(first.percent, '0%');
      await waitForSubscribers(sessionId, 1, 'the page subscribes on connect');

      const done = await playSession(page, sessionId);
      for (const [key, value] of Object.entries(COMPLETED_RESULT)) {
        if (value !== null && typeof value === 'object') continue; // shown over several lines
        assert.ok(done.completed.includes(`"${key}": ${JSON.stringify(value)}`), `the banner shows the result's ${key}: ${done.completed}`);
      }

      // Like the seed's client: unsubscribe when done, then disconnect.
      await waitForSubscribers(sessionId, 0, 'after completed the page unsubscribes');
      await expectPage(page, '"Disconnected (io client disconnect)"', (v) => v.connection === 'Disconnected (io client disconnect)');
      assert.ok(sentUnsubscribe(page.sentFrames, sessionId), `frames sent: ${page.sentFrames.join(' | ')}`);
      assertNoProblems(page, 'plain page over websocket');
      await screenshot(page, 'browser-example');
    } finally {
      await closePage(page);
    }
  });

  test('shows a whole session over HTTP long-polling only (cross-origin XHR, CORS)', async () => {
    const sessionId = newSessionId('polling');
    const page = await openPage(
      `${browserExampleUrl}?session=${sessionId}&herald=${encodeURIComponent(heraldUrl)}&transports=polling`,
    );
    try {
      await expectPage(page, '"Connected ... over polling"', (v) => /^Connected as \S+ over polling$/.test(v.connection));
      assert.deepEqual(page.sentFrames, [], 'polling only: no WebSocket');
      await waitForSubscribers(sessionId, 1, 'the page subscribes on connect');
      await playSession(page, sessionId);
      await waitForSubscribers(sessionId, 0, 'after completed the page unsubscribes');
      page.closing = true;
      // Then disconnects. Wait for herald to see it: the page disconnects
      // with a POST, and closing the page before it is sent would leave the
      // socket to the heartbeat (45 s), counted in the next tests' stats.
      await waitForConnections(0, 'after completed the page disconnects');
      assertNoProblems(page, 'plain page over polling');
    } finally {
      await closePage(page);
    }
  });

  test('upgrades from polling to websocket (socket.io-client default order) and shows the session', async () => {
    const sessionId = newSessionId('upgrade');
    const page = await openPage(
      `${browserExampleUrl}?session=${sessionId}&herald=${encodeURIComponent(heraldUrl)}&transports=polling,websocket`,
    );
    try {
      await expectPage(page, '"Connected ... over websocket" after the upgrade', (v) =>
        /^Connected as \S+ over websocket$/.test(v.connection),
      );
      await waitForSubscribers(sessionId, 1, 'the page subscribes on connect');
      await playSession(page, sessionId);
      assertNoProblems(page, 'plain page, polling upgraded to websocket');
    } finally {
      await closePage(page);
    }
  });

  test('without ?session= the page asks for one, then watches it', async () => {
    const sessionId = newSessionId('form');
    const page = await openPage(browserExampleUrl);
    try {
      const view = await expectPage(page, 'the session form', (v) => /watch a session/i.test(v.body));
      assert.equal(view.connection, 'Not connected');
      await page.fill('input[name=session]', sessionId);
      await Promise.all([page.waitForURL(`**/?session=${sessionId}`, { timeout: STEP_TIMEOUT_MS }), page.click('button[type=submit]')]);
      await expectPage(page, `the watch view of ${sessionId}`, (v) =>
        v.body.includes(`herald session ${sessionId}`) && /^Connected as /.test(v.connection),
      );
      await waitForSubscribers(sessionId, 1, 'the page subscribes to the session typed in');
      await publish(sessionId, 'progress', STEPS[0].data);
      await expectPage(page, STEPS[0].shows, STEPS[0].check);
      assertNoProblems(page, 'plain page, session form');
    } finally {
      await closePage(page);
    }
  });

  test('an invalid session id is shown as a refused request', async () => {
    const page = await openPage(`${browserExampleUrl}?session=${encodeURIComponent(INVALID_ID)}`);
    try {
      const view = await expectPage(page, 'a "Bad request" error', (v) => v.errors.length === 1);
      assert.match(view.errors[0], /^Bad request: /);
      assert.equal(view.failed, null, 'a refused request is not a failed session');
      assert.match(view.connection, /^Connected as /, 'the socket stays connected');
      assertNoProblems(page, 'plain page, invalid session id');
    } finally {
      await closePage(page);
    }
  });
});

// ---------------------------------------------------------------------------
// client-examples/react
// ---------------------------------------------------------------------------

describe('client-examples/react (useSessionEvents, vite build + vite preview)', () => {
  const sessionA = newSessionId('react-a');
  const sessionB = newSessionId('react-b');
  let page;

  before(async () => {
    page = await openPage(`${reactExampleUrl}?session=${sessionA}&herald=${encodeURIComponent(heraldUrl)}`);
  });
  after(async () => {
    if (page) await closePage(page);
  });

  test('shows a whole session', async () => {
    const first = await expectPage(page, '"Connected as ..."', (v) => /^Connected as \S+$/.test(v.connection));
    assert.ok(first.body.includes(`herald session ${sessionA}`), 'the page names the session');
    assert.equal(first.progressValue, 0);
    assert.equal(first.status, 'Waiting for the first progress event…');
    await waitForSubscribers(sessionA, 1, 'the hook subscribes on connect');
    await playSession(page, sessionA);
    assertNoProblems(page, 'React page');
    await screenshot(page, 'react-example');
    // The hook, like the seed's, keeps watching after completion.
    assert.equal(await subscribers(sessionA), 1);
  });

  test('watching another session: cleanup unsubscribes the old one, state starts afresh', async () => {
    const framesBefore = page.sentFrames.length;
    await page.fill('input[name=session]', sessionB);
    await page.click('#watch');
    await waitForSubscribers(sessionA, 0, 'the effect cleanup for the previous session');
    await waitForSubscribers(sessionB, 1, 'the hook subscribes to the new session');
    const sent = page.sentFrames.slice(framesBefore);
    assert.ok(sentUnsubscribe(sent, sessionA), `cleanup sends unsubscribe; frames sent: ${sent.join(' | ')}`);
    assert.match(herald.output, new RegExp(`unsubscribed.*session=${sessionA}\\s`), 'herald logged the unsubscribe');

    await expectPage(page, 'an empty view for the new session', (v) =>
      v.body.includes(`herald session ${sessionB}`) &&
      v.modelResults.length === 0 && v.clarifications.length === 0 && v.completed === null && v.progressValue === 0,
    );
    const progress = sample('progress');
    await publish(sessionB, 'progress', progress);
    await expectPage(
      page,
      `progress ${progress.progress}% of the new session`,
      progressShown(progress.progress, progress.status),
    );
    assertNoProblems(page, 'React page, session switch');
  });

  test('unmounting (Stop watching) sends unsubscribe and disconnects', async () => {
    const framesBefore = page.sentFrames.length;
    await page.click('#stop');
    await waitForSubscribers(sessionB, 0, 'unmounting the component using the hook');
    const view = await expectPage(page, '"Not watching any session"', (v) => v.body.includes('Not watching any session'));
    assert.equal(view.connection, null, 'the session view is gone');
    const sent = page.sentFrames.slice(framesBefore);
    assert.ok(sentUnsubscribe(sent, sessionB), `cleanup sends unsubscribe; frames sent: ${sent.join(' | ')}`);
    assert.match(herald.output, new RegExp(`unsubscribed.*session=${sessionB}\\s`), 'herald logged the unsubscribe');
    await waitForConnections(0, 'the hook disconnects on cleanup');
    assertNoProblems(page, 'React page, unmount');
  });

  test('navigating away drops the subscription too (the browser closes the socket)', async () => {
    await page.click('#watch');
    await waitForSubscribers(sessionB, 1, 'watching again');
    page.closing = true; // requests cut short by leaving the page are expected
    await page.goto('about:blank');
    await waitForSubscribers(sessionB, 0, 'leaving the page');
  });
});

// ---------------------------------------------------------------------------
// Nothing lost: a reload, a dropped connection, a new epoch
// ---------------------------------------------------------------------------


/** Event `i` of a long session: model results named model-<i> and progress, then completed. */
function streamEvent(i, total) {
  if (i === total) return ['completed', sample('completed')];
  if (i % 2) return ['model_result', sample('model_result', { modelName: `model-${i}`, status: 'completed' })];
  return ['progress', sample('progress', { progress: Math.round((100 * i) / total) })];
}
const modelNames = (from, to) => {
  const names = [];
  for (let i = from; i <= to; i++) if (i % 2) names.push(`model-${i}`);
  return names;
};

/**
 * Publish `from..total`: the last is `completed`, after which the plain page
 * disconnects (over polling, a request still under way may be answered 400).
 */
async function finishStream(page, sessionId, from, total) {
  await publishStream(sessionId, from, total - 1, total);
  await expectPage(page, `${total - 1} events`, received(total - 1));
  page.closing = true;
  await publishStream(sessionId, total, total, total);
  return expectPage(page, 'the whole session', (v) => received(total)(v) && v.completed !== null);
}

async function publishStream(sessionId, from, to, total, base) {
  for (let i = from; i <= to; i++) {
    const seq = await publish(sessionId, ...streamEvent(i, total), base);
    assert.equal(seq, i, 'seq of the published event');
  }
}

const received = (n) => (v) => v.received === n;
// Subscribed (not just connected): an event published before herald answers
// the first subscribe is only in the snapshot if it is the latest progress.
const subscribedFresh = (v) => /^Connected as /.test(v.connection) && v.resume === 'snapshot at seq 0';

/** The end of a session: every event shown once, in order, none missed. */
function assertWhole(view, total, what) {
  assert.equal(view.received, total, `${what}: events received`);
  assert.equal(view.missed, 0, `${what}: missed`);
  assert.deepEqual(view.modelNames, modelNames(1, total - 1), `${what}: every model result once, in order`);
  assert.match(view.completed ?? '', /^Completed/, `${what}: the banner`);
  assert.equal(view.lost, null, `${what}: nothing reported lost`);
}

/** Cut the page's connection, publish `from..to` meanwhile, and let it reconnect. */
async function cutWhilePublishing(page, proxy, sessionId, from, to, total) {
  page.outage = true;
  proxy.down();
  // (The plain page says Disconnected / Connection error, the React one Connecting.)
  await expectPage(page, 'that the connection dropped', (v) => /^(Disconnected|Connection error|Connecting)/.test(v.connection));
  await publishStream(sessionId, from, to, total);
  await sleep(300);
  proxy.up();
  // socket.io-client retries with a backoff of up to 5 s.
  await expectPage(page, 'the replay after reconnecting', received(to), 15000);
  page.outage = false;
}

describe('client-examples/browser: a reload or a dropped connection loses nothing', () => {
  let proxy;
  before(async () => {
    proxy = await startProxy(Number(new URL(heraldUrl).port));
  });
  after(async () => {
    await proxy?.close();
  });

  test('reloading the page midway: it redraws what it had and resumes after the last seq', async () => {
    const sessionId = newSessionId('reload');
    const total = 101;
    const page = await openPage(`${browserExampleUrl}?session=${sessionId}`);
    try {
      await expectPage(page, 'the snapshot subscription', subscribedFresh);
      await publishStream(sessionId, 1, 40, total);
      await expectPage(page, '40 events received', received(40));

      // Reload, and hold the new page's app.js until 20 more events are out,
      // so herald has something to replay.
      let release;
      const held = new Promise((resolve) => (release = resolve));
      await page.route('**/app.js', async (route) => {
        await held;
        await route.continue();
      });
      const reloaded = page.reload({ waitUntil: 'load' });
      await waitForSubscribers(sessionId, 0, 'the old page is gone');
      await publishStream(sessionId, 41, 60, total);
      release();
      await reloaded;
      await page.unroute('**/app.js');

      const back = await expectPage(page, 'all 60 events after the reload', received(60));
      assert.deepEqual(back.modelNames, modelNames(1, 60), 'redrawn from storage, then the replay');
      assert.equal(back.resume, 'resumed after seq 40: 20 replayed, nothing lost');
      assert.match(back.body, /40 event\(s\) restored from this tab's storage/);

      const done = await finishStream(page, sessionId, 61, total);
      assertWhole(done, total, 'after a reload');
      assert.equal(done.duplicates, 0);
      await screenshot(page, 'browser-resume-after-reload');

      // Reloaded once more after the end: shown from storage, no connection.
      page.closing = false;
      await page.reload({ waitUntil: 'load' });
      const after = await expectPage(page, 'the finished session from storage', (v) => v.completed !== null);
      assertWhole(after, total, 'reloaded after the end');
      assert.equal(after.connection, 'Not connected: the session is over');
      assertNoProblems(page, 'plain page, reload');
    } finally {
      await closePage(page);
    }
  });

  for (const transports of ['websocket', 'polling']) {
    test(`a dropped connection (${transports}): the page reconnects and gets what it missed, once`, async () => {
      const sessionId = newSessionId(`drop-${transports}`);
      const total = 121;
      const page = await openPage(
        `${browserExampleUrl}?session=${sessionId}&herald=${encodeURIComponent(proxy.url)}&transports=${transports}`,
      );
      try {
        await expectPage(page, `"Connected ... over ${transports}", subscribed`, (v) =>
          v.connection?.endsWith(`over ${transports}`) && subscribedFresh(v),
        );
        await publishStream(sessionId, 1, 30, total);
        await expectPage(page, '30 events received', received(30));
        await cutWhilePublishing(page, proxy, sessionId, 31, 90, total);
        const back = await expectPage(page, 'the resume line', (v) => v.resume?.startsWith('resumed'));
        assert.equal(back.resume, 'resumed after seq 30: 60 replayed, nothing lost');
        const done = await finishStream(page, sessionId, 91, total);
        assertWhole(done, total, `after a dropped connection (${transports})`);
        assert.equal(done.duplicates, 0);
        if (transports === 'websocket') await screenshot(page, 'browser-resume-after-drop');
        assertNoProblems(page, `plain page, dropped connection (${transports})`);
      } finally {
        await closePage(page);
      }
    });
  }

  test('herald restarted without its state (a new epoch): the page says so and shows the session anew', async () => {
    const sessionId = newSessionId('epoch');
    const page = await openPage(`${browserExampleUrl}?session=${sessionId}&herald=${encodeURIComponent(proxy.url)}`);
    let second;
    try {
      await expectPage(page, 'the snapshot subscription', subscribedFresh);
      await publishStream(sessionId, 1, 6, 20);
      await expectPage(page, '6 events', received(6));

      // Another herald (in memory, so nothing of the session) where the first was.
      page.outage = true;
      proxy.down();
      const env = { ...process.env, NO_COLOR: '1' };
      for (const name of HERALD_ENV_VARS) delete env[name];
      second = startProcess('herald (second)', HERALD_BIN, ['--host', HOST, '--port', '0'], { env, cwd: os.tmpdir() });
      const secondUrl = `http://${HOST}:${await waitForPort(second, startLinePort)}`;
      await waitForHttp(second, `${secondUrl}/health`);
      proxy.up(Number(new URL(secondUrl).port));

      const told = await expectPage(page, 'that herald lost the session', (v) => v.lost !== null, 15000);
      page.outage = false;
      assert.match(told.lost, /epoch_changed/);
      assert.equal(told.resume, 'resumed after seq 6: 0 replayed, lost: epoch_changed');
      assert.deepEqual(told.modelNames, [], 'what the old epoch showed is gone');
      assert.equal(told.progressValue, 0);

      // The session anew: seq 1, 2, 3 again, shown (not dropped as duplicates).
      await publishStream(sessionId, 1, 3, 20, secondUrl);
      const anew = await expectPage(page, 'the new events', (v) => v.modelNames.length === 2);
      assert.deepEqual(anew.modelNames, ['model-1', 'model-3']);
      assert.equal(anew.duplicates, 0);
      assertNoProblems(page, 'plain page, new epoch');
    } finally {
      await closePage(page);
      await second?.stop();
      proxy.up(Number(new URL(heraldUrl).port));
    }
  });
});

describe('client-examples/react: a dropped connection loses nothing (useSessionEvents)', () => {
  let proxy;
  before(async () => {
    proxy = await startProxy(Number(new URL(heraldUrl).port));
  });
  after(async () => {
    await proxy?.close();
  });

  test('the hook reconnects and gets what it missed, once', async () => {
    const sessionId = newSessionId('react-drop');
    const total = 81;
    const page = await openPage(`${reactExampleUrl}?session=${sessionId}&herald=${encodeURIComponent(proxy.url)}`);
    try {
      await expectPage(page, 'the first subscription', (v) => /^Connected as \S+$/.test(v.connection) && v.resume !== null);
      await publishStream(sessionId, 1, 20, total);
      await expectPage(page, '20 events received', received(20));
      await cutWhilePublishing(page, proxy, sessionId, 21, 60, total);
      const back = await expectPage(page, 'the resume line', (v) => v.resume?.includes('resumed'));
      assert.equal(back.resume, 'resumed after seq 20: 40 replayed, nothing lost');
      const done = await finishStream(page, sessionId, 61, total);
      assertWhole(done, total, 'React, after a dropped connection');
      await screenshot(page, 'react-resume-after-drop');
      assertNoProblems(page, 'React page, dropped connection');
    } finally {
      await closePage(page);
    }
  });
});
