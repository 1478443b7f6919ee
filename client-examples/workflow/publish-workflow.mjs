#!/usr/bin/env node
// Drives one MeatyMusic workflow run through herald's HTTP API, as the
// seed's FastAPI backend emits it: the run starts, each node (PLAN, STYLE,
// LYRICS, PRODUCER, COMPOSE, VALIDATE) starts and ends with its duration and
// scores, the run ends. Each WorkflowEvent is
// `POST /api/v1/workflows/{runId}/events` with the event as the body.
//
//   node publish-workflow.mjs --run run-123 [--herald http://127.0.0.1:3000]
//       [--delay 300] [--fail-at VALIDATE] [--api-key KEY]
//
// --fail-at ends the run with that node failing (phase "fail") instead.
// Imported, it exports `workflowSteps(runId, opts)`: the same events, for the
// browser test to publish one at a time.

import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

export const NODES = ['PLAN', 'STYLE', 'LYRICS', 'PRODUCER', 'COMPOSE', 'VALIDATE'];

/** The run's WorkflowEvents, in order. */
export function workflowSteps(runId, { failAt } = {}) {
  const request_id = `req-${runId}`;
  const ts = (s) => new Date(Date.UTC(2025, 10, 13, 10, 0, s)).toISOString();
  const events = [{ ts: ts(0), run_id: runId, phase: 'start', data: { song_id: 'song-456', global_seed: 12345 }, request_id }];
  for (const [i, node_name] of NODES.entries()) {
    events.push({ ts: ts(1 + 3 * i), run_id: runId, node_name, phase: 'start', data: { node_index: i }, request_id });
    if (node_name === failAt) {
      const error_message = `${node_name} failed: score below threshold`;
      events.push({ ts: ts(2 + 3 * i), run_id: runId, node_name, phase: 'fail', data: { error_message }, request_id });
      events.push({ ts: ts(3 + 3 * i), run_id: runId, phase: 'fail', data: { error_message: 'Workflow failed' }, request_id });
      return events;
    }
    events.push({
      ts: ts(3 + 3 * i),
      run_id: runId,
      node_name,
      phase: 'end',
      duration_ms: 2000 + 100 * i,
      data: { scores: { completeness: 0.9 + i / 100 } },
      request_id,
    });
  }
  events.push({ ts: ts(30), run_id: runId, phase: 'end', duration_ms: 30000, data: { status: 'completed' }, request_id });
  return events;
}

/** POST one WorkflowEvent; throws on anything but 202. */
export async function publishWorkflowEvent(herald, runId, event, { apiKey } = {}) {
  const res = await fetch(`${herald.replace(/\/$/, '')}/api/v1/workflows/${encodeURIComponent(runId)}/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) },
    body: JSON.stringify(event),
    signal: AbortSignal.timeout(10000),
  });
  const text = await res.text();
  if (res.status !== 202) throw new Error(`${event.node_name ?? 'workflow'} ${event.phase}: herald answered ${res.status} ${text}`);
  return text ? JSON.parse(text) : {};
}

async function main() {
  const { values } = parseArgs({
    options: {
      run: { type: 'string', default: 'run-123' },
      herald: { type: 'string', default: process.env.HERALD_URL || 'http://127.0.0.1:3000' },
      delay: { type: 'string', default: '300' },
      'fail-at': { type: 'string' },
      'api-key': { type: 'string', default: process.env.HERALD_API_KEY },
    },
  });
  for (const event of workflowSteps(values.run, { failAt: values['fail-at'] })) {
    await publishWorkflowEvent(values.herald, values.run, event, { apiKey: values['api-key'] });
    console.log(`${event.node_name ?? 'workflow'} ${event.phase}`);
    await sleep(Number(values.delay));
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e) => {
    console.error(`publish-workflow: ${e.message}`);
    process.exit(1);
  });
}
