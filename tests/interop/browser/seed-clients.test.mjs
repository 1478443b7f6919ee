// The seeds' own frontend hooks in headless Chromium against a real herald:
// client-examples/research-flow (ResearchFlow's useRunEvents on /ws) and
// client-examples/workflow (MeatyMusic's useWorkflowWebSocket on
// /ws/workflows), each built with Vite and served by `vite preview`. The
// test publishes over herald's HTTP API, one event at a time from the
// examples' own publisher scripts (their exported steps), and reads what the
// page shows after each; then runs each publisher script as a user would and
// checks the end state.
//
//   scripts/install-test-deps         # or tests/interop/browser/install, with
//                                     # tests/interop/node's npm packages (its lib is reused)
//   cd tests/interop/browser && node --test seed-clients.test.mjs
//
// HERALD_BIN picks the herald binary, CHROMIUM_BIN the browser,
// HERALD_TEST_LOGS=1 echoes herald's logs. Screenshots go to a temp directory.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CHROMIUM_BIN, launchChromium } from './chromium.mjs';
import { REPO_ROOT } from '../../fixtures/fixtures.mjs';
import { startHerald, spawnTracked, freePort, HERALD_BIN, HOST } from '../node/lib/herald.mjs';
import { fastApiFrame } from '../node/lib/ws.mjs';
import { runSteps, STAGES, publishRunEvent } from '../../../client-examples/research-flow/publish-run.mjs';
import { workflowSteps, publishWorkflowEvent, NODES } from '../../../client-examples/workflow/publish-workflow.mjs';

const EXAMPLES = {
  researchFlow: path.join(REPO_ROOT, 'client-examples/research-flow'),
  workflow: path.join(REPO_ROOT, 'client-examples/workflow'),
};
const STEP_TIMEOUT_MS = 5000;
const screenshotDir = mkdtempSync(path.join(os.tmpdir(), 'herald-seed-clients-'));

let herald;
let browser;
const previews = {};
const urls = {};
let counter = 0;
const newRunId = (label) => `browser-${label}-${process.pid}-${++counter}`;

/** `vite preview` of an example's build on a free port; resolves with its URL. */
async function startPreview(dir) {
  const port = await freePort();
  let output = '';
  const proc = spawnTracked(
    process.execPath,
    ['node_modules/vite/bin/vite.js', 'preview', '--host', HOST, '--port', String(port), '--strictPort'],
    { cwd: dir, env: process.env, onLog: (t) => (output += t) },
  );
  const url = `http://${HOST}:${port}/`;
  const deadline = Date.now() + 15000;
  for (;;) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return { url, proc };
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`vite preview in ${dir} did not answer on ${url}\n${output}`);
    await sleep(50);
  }
}

/** A page that records problems and the WebSocket frames it receives (parsed). */
async function openPage(url) {
  const context = await browser.newContext({ viewport: { width: 900, height: 1200 } });
  const page = await context.newPage();
  page.problems = [];
  page.framesIn = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') page.problems.push(`console error: ${msg.text()}`);
  });
  page.on('pageerror', (e) => page.problems.push(`page error: ${e.message}`));
  page.on('websocket', (ws) => {
    ws.on('framereceived', (f) => {
      try {
        page.framesIn.push(JSON.parse(String(f.payload)));
      } catch {
        page.framesIn.push({ raw: String(f.payload) });
      }
    });
  });
  const res = await page.goto(url, { waitUntil: 'load', timeout: 10000 });
  assert.equal(res.status(), 200, `GET ${url}`);
  return page;
}

/** Poll until `check()` holds; fail with `describe()` of the last state. */
async function until(what, check, describeState, timeoutMs = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) assert.fail(`${what} within ${timeoutMs} ms; ${await describeState()}`);
    await sleep(40);
  }
}

/** Poll the page until `check(view)` is true; resolves with the view. */
async function expectPage(page, read, what, check, timeoutMs = STEP_TIMEOUT_MS) {
  let view;
  await until(
    `the page did not show ${what}`,
    async () => check((view = await page.evaluate(read))),
    () => `page state: ${JSON.stringify({ ...view, body: undefined }, null, 1)}\n--- last frames ---\n` +
      JSON.stringify(page.framesIn.slice(-6)),
    timeoutMs,
  );
  return view;
}

async function screenshot(page, name) {
  const file = path.join(screenshotDir, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot: ${file}`);
}

function runPublisher(script, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${script} exited ${code}\n${out}`))));
  });
}

before(async () => {
  const missing = [];
  if (!existsSync(HERALD_BIN)) missing.push(`herald binary ${HERALD_BIN}`);
  if (!existsSync(CHROMIUM_BIN)) missing.push(CHROMIUM_BIN);
  for (const dir of Object.values(EXAMPLES)) {
    if (!existsSync(path.join(dir, 'dist/index.html'))) missing.push(`${dir}/dist (vite build)`);
    if (!existsSync(path.join(dir, 'node_modules/vite/bin/vite.js'))) missing.push(`${dir}/node_modules`);
  }
  if (missing.length) throw new Error(`missing: ${missing.join('; ')}\nrun tests/interop/browser/install first`);

  herald = await startHerald();
  for (const [name, dir] of Object.entries(EXAMPLES)) {
    previews[name] = await startPreview(dir);
    urls[name] = previews[name].url;
  }
  browser = await launchChromium();
});

after(async () => {
  await browser?.close().catch(() => {});
  for (const p of Object.values(previews)) p.proc.child.kill('SIGTERM');
  await herald?.kill();
  console.log(`screenshots in ${screenshotDir}`);
});

// ---------------------------------------------------------------------------
// ResearchFlow: useRunEvents
// ---------------------------------------------------------------------------

/** The run monitor as a person sees it. */
function readMonitor() {
  const q = (s) => document.querySelector(s);
  const all = (s, root = document) => [...root.querySelectorAll(s)];
  return {
    connection: q('#connection')?.innerText.trim() ?? null,
    status: q('#run-status')?.innerText.trim() ?? null,
    failed: q('#run-failed')?.innerText.trim() ?? null,
    stages: all('[data-testid=stage]').map((li) => ({
      name: li.querySelector('.stage-name').innerText.trim(),
      state: li.dataset.state,
      value: li.querySelector('progress').value,
      percent: li.querySelector('.stage-percent').innerText.trim(),
    })),
    artifacts: all('[data-testid=artifact] .artifact-id').map((e) => e.innerText.trim()),
    governance: all('[data-testid=governance]').map((li) => ({ decision: li.dataset.decision, text: li.innerText.trim() })),
    events: Number(q('#event-count')?.innerText ?? NaN),
    hookError: q('#hook-error')?.innerText ?? null,
  };
}

/** What the monitor must show after `steps` (the run's events so far). */
function expectedMonitor(steps) {
  const status = { 'run.created': 'CREATED', 'run.started': 'RUNNING', 'run.completed': 'COMPLETED', 'run.failed': 'FAILED' };
  let badge = 'IDLE';
  const stages = new Map();
  const artifacts = [];
  const governance = new Map();
  for (const [type, p] of steps) {
    if (status[type]) badge = status[type];
    if (type === 'stage.started') stages.set(p.stageId, { name: p.stageName, state: 'running', value: 0 });
    if (type === 'stage.progress') stages.get(p.stageId).value = p.progress;
    if (type === 'stage.completed') Object.assign(stages.get(p.stageId), { state: 'completed', value: 100 });
    if (type === 'artifact.created') artifacts.push(p.artifactId);
    if (type === 'governance.required') governance.set(p.governanceId, { decision: 'pending', must: `${p.governanceType} approval required` });
    if (type === 'approval.granted') governance.set(p.governanceId, { decision: 'granted', must: `${p.governanceType} approval granted by ${p.grantedBy}` });
  }
  return {
    status: badge,
    stages: [...stages.values()].map((s) => ({ ...s, percent: `${s.value}%` })),
    artifacts,
    governance: [...governance.values()],
    events: steps.length,
  };
}

function monitorShows(want) {
  return (v) =>
    v.status === want.status &&
    v.events === want.events &&
    JSON.stringify(v.stages) === JSON.stringify(want.stages) &&
    JSON.stringify(v.artifacts) === JSON.stringify(want.artifacts) &&
    v.governance.length === want.governance.length &&
    v.governance.every((g, i) => g.decision === want.governance[i].decision && g.text.includes(want.governance[i].must));
}

/** The hook has authenticated and subscribed: herald has answered every request it sent. */
async function monitorReady(page) {
  const view = await expectPage(page, readMonitor, '"Connected"', (v) => v.connection === 'Connected');
  await until(
    'herald did not answer the hook\'s auth and its five category subscriptions',
    () =>
      page.framesIn.some((f) => f.type === 'auth.success') &&
      page.framesIn.filter((f) => f.type === 'subscription.added').length >= 5,
    () => `frames: ${JSON.stringify(page.framesIn)}`,
  );
  return view;
}

describe('client-examples/research-flow (useRunEvents over /ws)', () => {
  test('the monitor shows a whole run, event by event: badge, stage bars, artifacts, governance prompt', async () => {
    const runId = newRunId('rf');
    const page = await openPage(`${urls.researchFlow}?run=${runId}&herald=${encodeURIComponent(herald.url)}`);
    try {
      const first = await monitorReady(page);
      assert.equal(first.status, 'IDLE');
      assert.deepEqual(first.stages, []);
      const steps = runSteps(runId);
      let sawPendingPrompt = false;
      for (let i = 0; i < steps.length; i++) {
        const [type, payload] = steps[i];
        const { seq } = await publishRunEvent(herald.url, runId, type, payload);
        assert.equal(seq, i + 1, `seq of ${type}`);
        const want = expectedMonitor(steps.slice(0, i + 1));
        const view = await expectPage(page, readMonitor, `after ${type} (#${i + 1}): ${JSON.stringify(want)}`, monitorShows(want));
        if (type === 'governance.required') {
          sawPendingPrompt = true;
          assert.match(view.governance[0].text, /assigned to admin@example\.com/);
          await screenshot(page, 'research-flow-governance-pending');
        }
      }
      assert.ok(sawPendingPrompt);
      const done = await page.evaluate(readMonitor);
      assert.equal(done.status, 'COMPLETED');
      assert.deepEqual(done.stages.map((s) => s.name), STAGES.map((s) => s.stageName));
      assert.ok(done.stages.every((s) => s.state === 'completed' && s.percent === '100%'));
      assert.equal(done.hookError, null);
      await screenshot(page, 'research-flow-completed');
      assert.deepEqual(page.problems, []);
    } finally {
      await page.context().close();
    }
  });

  test('publish-run.mjs drives a run to the end; a page watching another run shows none of it', async () => {
    const runId = newRunId('rf-cli');
    const otherRun = newRunId('rf-other');
    const page = await openPage(`${urls.researchFlow}?run=${runId}&herald=${encodeURIComponent(herald.url)}`);
    const other = await openPage(`${urls.researchFlow}?run=${otherRun}&herald=${encodeURIComponent(herald.url)}`);
    try {
      await monitorReady(page);
      await monitorReady(other);
      const out = await runPublisher(path.join(EXAMPLES.researchFlow, 'publish-run.mjs'), [
        '--run', runId, '--herald', herald.url, '--delay', '0',
      ]);
      const steps = runSteps(runId);
      assert.equal(out.trim().split('\n').length, steps.length, `the publisher printed one line per event:\n${out}`);
      await expectPage(page, readMonitor, 'the completed run', monitorShows(expectedMonitor(steps)));
      const quiet = await other.evaluate(readMonitor);
      assert.equal(quiet.status, 'IDLE');
      assert.equal(quiet.events, 0, 'nothing of another run');
      assert.deepEqual([...page.problems, ...other.problems], []);
    } finally {
      await page.context().close();
      await other.context().close();
    }
  });
});

// ---------------------------------------------------------------------------
// MeatyMusic: useWorkflowWebSocket
// ---------------------------------------------------------------------------

function readTimeline() {
  const q = (s) => document.querySelector(s);
  return {
    connection: q('#connection')?.innerText.trim() ?? null,
    status: q('#run-status')?.innerText.trim() ?? null,
    currentNode: q('#current-node')?.innerText.trim() ?? null,
    nodes: [...document.querySelectorAll('[data-testid=node]')].map((li) => ({
      name: li.querySelector('.node-name').innerText.trim(),
      status: li.dataset.status,
      duration: li.querySelector('.node-duration')?.innerText.trim() ?? null,
      error: li.querySelector('.model-error')?.innerText.trim() ?? null,
    })),
    events: Number(q('#event-count')?.innerText ?? NaN),
  };
}

function expectedTimeline(events) {
  const phase = { start: 'running', end: 'completed', fail: 'failed' };
  let status = 'PENDING';
  let current = 'none';
  const nodes = new Map();
  for (const e of events) {
    if (!e.node_name) {
      status = phase[e.phase].toUpperCase();
      continue;
    }
    nodes.set(e.node_name, {
      name: e.node_name,
      status: phase[e.phase],
      duration: e.duration_ms === undefined ? null : `${e.duration_ms} ms`,
      error: e.data?.error_message ?? null,
    });
    if (e.phase === 'start') current = e.node_name;
    else if (current === e.node_name) current = 'none';
  }
  return { status, currentNode: current, nodes: [...nodes.values()], events: events.length };
}

const timelineShows = (want) => (v) =>
  v.status === want.status && v.currentNode === want.currentNode && v.events === want.events &&
  JSON.stringify(v.nodes) === JSON.stringify(want.nodes);

/**
 * The page is connected and herald streams to it: a WorkflowEvent of a
 * probe run (which the page does not show) reaches its socket.
 */
async function timelineReady(page) {
  await expectPage(page, readTimeline, '"Live"', (v) => v.connection === 'Live');
  const probe = newRunId('probe');
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  while (!page.framesIn.some((f) => f.run_id === probe)) {
    if (Date.now() > deadline) assert.fail(`no probe event reached the page; frames: ${JSON.stringify(page.framesIn)}`);
    await publishWorkflowEvent(herald.url, probe, { run_id: probe, phase: 'start', request_id: 'probe' });
    await sleep(150);
  }
}

describe('client-examples/workflow (useWorkflowWebSocket over /ws/workflows)', () => {
  test('the timeline shows every node in order as the workflow runs', async () => {
    const runId = newRunId('wf');
    const page = await openPage(`${urls.workflow}?run=${runId}&herald=${encodeURIComponent(herald.url)}`);
    try {
      await timelineReady(page);
      const first = await page.evaluate(readTimeline);
      assert.equal(first.status, 'PENDING');
      assert.deepEqual(first.nodes, []);
      const events = workflowSteps(runId);
      for (let i = 0; i < events.length; i++) {
        await publishWorkflowEvent(herald.url, runId, events[i]);
        const want = expectedTimeline(events.slice(0, i + 1));
        await expectPage(page, readTimeline, `after event ${i + 1}: ${JSON.stringify(want)}`, timelineShows(want));
      }
      const done = await page.evaluate(readTimeline);
      assert.equal(done.status, 'COMPLETED');
      assert.deepEqual(done.nodes.map((n) => n.name), NODES, 'every node, in the order it ran');
      const received = page.framesIn.filter((f) => f.run_id === runId).map((f) => JSON.stringify(f));
      assert.deepEqual(received, events.map(fastApiFrame), 'each frame is the WorkflowEvent published, in order');
      await screenshot(page, 'workflow-completed');
      assert.deepEqual(page.problems, []);
    } finally {
      await page.context().close();
    }
  });

  test('publish-workflow.mjs --fail-at VALIDATE: the timeline ends with the failed node and a failed run', async () => {
    const runId = newRunId('wf-fail');
    const page = await openPage(`${urls.workflow}?run=${runId}&herald=${encodeURIComponent(herald.url)}`);
    try {
      await timelineReady(page);
      await runPublisher(path.join(EXAMPLES.workflow, 'publish-workflow.mjs'), [
        '--run', runId, '--herald', herald.url, '--delay', '0', '--fail-at', 'VALIDATE',
      ]);
      const want = expectedTimeline(workflowSteps(runId, { failAt: 'VALIDATE' }));
      const view = await expectPage(page, readTimeline, 'the failed run', timelineShows(want));
      assert.equal(view.status, 'FAILED');
      assert.equal(view.nodes.at(-1).name, 'VALIDATE');
      assert.match(view.nodes.at(-1).error, /VALIDATE failed/);
      await screenshot(page, 'workflow-failed');
      assert.deepEqual(page.problems, []);
    } finally {
      await page.context().close();
    }
  });
});
