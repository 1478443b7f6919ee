#!/usr/bin/env node
// Drives one ResearchFlow run through herald's HTTP API, as the seed's
// backend would through its broadcaster (broadcastRunCreated, ...): created,
// started, three stages with progress, an artifact, a PHI-scan approval
// asked for and granted, completed. Each event is
// `POST /api/v1/runs/{runId}/events { type, payload }`.
//
//   node publish-run.mjs --run run-123 [--herald http://127.0.0.1:3000]
//       [--project proj-456] [--delay 400] [--api-key KEY]
//
// Every payload holds ids, names, counts, codes and statuses only (PHI-safe:
// herald refuses a field outside the event's schema with 422).
// Imported, it exports `runSteps(runId, projectId)`: the same events, for
// the browser test to publish one at a time.

import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

export const STAGES = [
  { stageId: 'stage-1', stageName: 'Data Ingestion' },
  { stageId: 'stage-2', stageName: 'Cohort Analysis' },
  { stageId: 'stage-3', stageName: 'Report Generation' },
];

/** The run's events, in order: `[type, payload]`. */
export function runSteps(runId, projectId = 'proj-456') {
  const steps = [
    ['run.created', { runId, projectId, runName: 'Readmission study', stageCount: STAGES.length, createdBy: 'user-789' }],
    ['run.started', { runId, projectId }],
  ];
  STAGES.forEach((stage, i) => {
    const stageNumber = i + 1;
    steps.push(['stage.started', { runId, ...stage, stageNumber, totalStages: STAGES.length }]);
    for (const progress of [25, 50, 75]) {
      steps.push(['stage.progress', { runId, ...stage, progress, itemsProcessed: progress * 10, itemsTotal: 1000 }]);
    }
    steps.push(['stage.completed', { runId, ...stage, stageNumber, durationMs: 1200 * stageNumber }]);
    if (stageNumber === 2) {
      steps.push(['artifact.created', { runId, artifactId: 'art-cohort-table', artifactType: 'dataset' }]);
      steps.push(['artifact.created', { runId, artifactId: 'art-survival-plot', artifactType: 'figure' }]);
    }
  });
  steps.push([
    'governance.required',
    { runId, governanceId: 'gov-1', governanceType: 'PHI_SCAN', priority: 'HIGH', assignedTo: ['admin@example.com'] },
  ]);
  steps.push([
    'approval.granted',
    { runId, approvalId: 'app-1', governanceId: 'gov-1', governanceType: 'PHI_SCAN', grantedBy: 'admin@example.com' },
  ]);
  steps.push(['artifact.created', { runId, artifactId: 'art-report', artifactType: 'report' }]);
  steps.push(['run.completed', { runId, projectId, durationMs: 3600 * 2, stagesCompleted: STAGES.length }]);
  return steps;
}

/** POST one event; resolves with herald's answer `{ seq, ... }`, throws on anything but 202. */
export async function publishRunEvent(herald, runId, type, payload, { apiKey } = {}) {
  const res = await fetch(`${herald.replace(/\/$/, '')}/api/v1/runs/${encodeURIComponent(runId)}/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) },
    body: JSON.stringify({ type, payload }),
    signal: AbortSignal.timeout(10000),
  });
  const text = await res.text();
  if (res.status !== 202) throw new Error(`${type}: herald answered ${res.status} ${text}`);
  return JSON.parse(text);
}

async function main() {
  const { values } = parseArgs({
    options: {
      run: { type: 'string', default: 'run-123' },
      project: { type: 'string', default: 'proj-456' },
      herald: { type: 'string', default: process.env.HERALD_URL || 'http://127.0.0.1:3000' },
      delay: { type: 'string', default: '400' },
      'api-key': { type: 'string', default: process.env.HERALD_API_KEY },
    },
  });
  for (const [type, payload] of runSteps(values.run, values.project)) {
    const { seq } = await publishRunEvent(values.herald, values.run, type, payload, { apiKey: values['api-key'] });
    console.log(`seq ${seq}  ${type}`);
    await sleep(Number(values.delay));
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e) => {
    console.error(`publish-run: ${e.message}`);
    process.exit(1);
  });
}
