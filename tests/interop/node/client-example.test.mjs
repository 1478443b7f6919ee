// The programs in client-examples/node/, run as users would run them against a
// real herald: watch-session.mjs (the seed document's client) follows a
// session that simulate-session.mjs plays over the HTTP API.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { REPO_ROOT, startHerald, sessionId, until } from './lib/herald.mjs';

const EXAMPLES = path.join(REPO_ROOT, 'client-examples/node');
const KEY = 'example-key-123';

/** Run `node <script> ...args`; collects output; `done` resolves with {code, signal}. */
function run(script, args, env) {
  const child = spawn(process.execPath, [path.join(EXAMPLES, script), ...args], {
    cwd: EXAMPLES,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const proc = { child, stdout: '', stderr: '' };
  child.stdout.on('data', (c) => (proc.stdout += c));
  child.stderr.on('data', (c) => (proc.stderr += c));
  proc.done = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  proc.kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  return proc;
}

async function finish(proc, timeoutMs, what) {
  const timer = new Promise((resolve) => setTimeout(resolve, timeoutMs, 'timeout').unref());
  const result = await Promise.race([proc.done, timer]);
  if (result === 'timeout') {
    proc.kill();
    throw new Error(`${what} did not exit within ${timeoutMs} ms\nstdout:\n${proc.stdout}\nstderr:\n${proc.stderr}`);
  }
  return result;
}

/** Assert that `expected` lines appear in `text` in this order (each line starts with the entry). */
function assertInOrder(text, expected, what) {
  const lines = text.split('\n');
  let at = 0;
  for (const want of expected) {
    const idx = lines.findIndex((line, i) => i >= at && (want instanceof RegExp ? want.test(line) : line.startsWith(want)));
    assert.ok(idx >= 0, `${what}: ${JSON.stringify(String(want))} not found after line ${at}\n--- output ---\n${text}`);
    at = idx + 1;
  }
}

function expectedWatcherSteps(session) {
  return [
    /^Connected to WebSocket: \S+$/,
    `Subscribed to session: ${session}`,
    'Progress: 0%',
    'Prompts:',
    'Status: ACTIVE',
    'Progress: 10%',
    'Prompts:',
    'Status: PROCESSING',
    'Model: llama3.1:8b',
    'Provider: ollama',
    'Duration: 1834ms',
    'Status: completed',
    'Result: Invoice total: 1,250.00 EUR, due 2024-07-01.',
    'Model: gpt-4o-mini',
    'Provider: openai',
    'Duration: 2410ms',
    'Status: completed',
    'Result: Total 1250 EUR; payment due July 1st 2024.',
    'Model: mistral:7b',
    'Provider: ollama',
    'Duration: 30000ms',
    'Status: failed',
    'Clarification needed:',
    'Question: Two models disagree on the currency format; which should be used?',
    'Clarification ID: 3c8a1f4e-2b9d-4e7a-9f10-6d5b2a7c8e91',
    'Progress: 75%',
    'Status: PROCESSING',
    'Progress: 100%',
    'Status: COMPLETED',
    'Session completed!',
    'Result: {',
    '  total: 1250,',
    "  currency: 'EUR',",
    "  dueDate: '2024-07-01',",
    'Disconnected from WebSocket',
  ];
}

describe('client-examples/node', () => {
  let herald;
  const procs = [];
  before(async () => {
    assert.ok(
      existsSync(path.join(EXAMPLES, 'node_modules/socket.io-client')),
      `run npm install in ${EXAMPLES} first`,
    );
    herald = await startHerald({ args: ['--api-key', KEY] });
  });
  after(async () => {
    for (const p of procs) p.kill();
    await herald?.kill();
  });

  for (const how of ['argv', 'env']) {
    test(`watch-session.mjs follows a session played by simulate-session.mjs (session id from ${how})`, async () => {
      const session = sessionId(`example-${how}`);
      const watcher = run(
        'watch-session.mjs',
        how === 'argv' ? [session] : [],
        how === 'argv' ? { HERALD_URL: herald.url } : { HERALD_URL: herald.url, SESSION_ID: session },
      );
      procs.push(watcher);
      await until(() => watcher.stdout.includes(`Subscribed to session: ${session}`) || watcher.child.exitCode !== null, {
        timeoutMs: 10000,
        what: `the watcher to subscribe\nstdout:\n${watcher.stdout}\nstderr:\n${watcher.stderr}`,
      });
      assert.equal(watcher.child.exitCode, null, `watcher exited early:\n${watcher.stdout}\n${watcher.stderr}`);

      const sim = run('simulate-session.mjs', how === 'argv' ? [session] : [], {
        HERALD_URL: herald.url,
        SESSION_ID: session,
        API_KEY: KEY,
        STEP_DELAY_MS: '50',
      });
      procs.push(sim);
      const simResult = await finish(sim, 20000, 'simulate-session.mjs');
      assert.equal(simResult.code, 0, `simulator failed:\n${sim.stdout}\n${sim.stderr}`);
      assertInOrder(
        sim.stdout,
        [
          'published progress seq=1',
          'published progress seq=2',
          'published model_result seq=3',
          'published model_result seq=4',
          'published model_result seq=5',
          'published clarification seq=6',
          'published progress seq=7',
          'published progress seq=8',
          'published completed seq=9',
        ],
        'simulator stdout',
      );

      const watched = await finish(watcher, 15000, 'watch-session.mjs');
      assert.equal(watched.signal, null);
      assert.equal(watched.code, 0, `watcher exit code\nstdout:\n${watcher.stdout}\nstderr:\n${watcher.stderr}`);
      assertInOrder(watcher.stdout, expectedWatcherSteps(session), 'watcher stdout');
      // Each step shows once: no duplicate deliveries.
      assert.equal(watcher.stdout.split('\n').filter((l) => l.startsWith('Model: ')).length, 3);
      assert.equal(watcher.stdout.split('\n').filter((l) => l.startsWith('Progress: ')).length, 4);
      assert.equal(watcher.stdout.split('\n').filter((l) => l === 'Session completed!').length, 1);
      // The failed model's error goes to stderr, as in the seed.
      assert.match(watcher.stderr, /Error: model timed out after 30000ms/);
      assert.doesNotMatch(watcher.stderr, /Session error|Connection error/);

      // It unsubscribed and disconnected.
      const state = await herald.session(session, { apiKey: KEY });
      assert.equal(state.seq, 9);
      assert.equal(state.completed, true);
      await until(async () => (await herald.session(session, { apiKey: KEY })).subscribers === 0, {
        timeoutMs: 5000,
        what: 'the watcher to leave the session',
      });
    });
  }

  test('simulate-session.mjs without the API key fails with a non-zero exit and publishes nothing', async () => {
    const session = sessionId('example-nokey');
    // An empty API_KEY counts as unset (run() merges process.env underneath).
    const sim = run('simulate-session.mjs', [session], { HERALD_URL: herald.url, STEP_DELAY_MS: '0', API_KEY: '' });
    procs.push(sim);
    const result = await finish(sim, 10000, 'simulate-session.mjs');
    assert.equal(result.code, 1, `stdout:\n${sim.stdout}\nstderr:\n${sim.stderr}`);
    assert.match(sim.stderr, /401/);
    assert.equal((await herald.session(session, { apiKey: KEY })).seq, 0);
  });

  test('the watcher without a session id prints usage and exits 2', async () => {
    const env = { HERALD_URL: herald.url, SESSION_ID: '' };
    const watcher = run('watch-session.mjs', [], env);
    procs.push(watcher);
    const result = await finish(watcher, 10000, 'watch-session.mjs');
    assert.equal(result.code, 2);
    assert.match(watcher.stderr, /usage/);
  });
});
