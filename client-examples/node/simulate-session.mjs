// Play a document-processing session against herald's HTTP publish API, the
// way a backend would: progress, three model results, a clarification, more
// progress, completed.
//
//   HERALD_URL=http://localhost:3000 node simulate-session.mjs <session-id>
//   SESSION_ID=<session-id> API_KEY=<key> STEP_DELAY_MS=500 node simulate-session.mjs
//
// API_KEY is sent as `Authorization: Bearer <key>` when set. Exits non-zero if
// herald refuses an event.

const url = (process.env.HERALD_URL || 'http://localhost:3000').replace(/\/+$/, '');
const sessionId = process.argv[2] || process.env.SESSION_ID;
const apiKey = process.env.API_KEY;
const stepDelayMs = Number(process.env.STEP_DELAY_MS ?? 300);

if (!sessionId) {
  console.error('usage: node simulate-session.mjs <session-id>   (or set SESSION_ID)');
  process.exit(2);
}

const prompts = (completed, processing, failed = 0, total = 3) => ({
  total,
  completed,
  processing,
  pending: total - completed - processing - failed,
  failed,
});

const steps = [
  ['progress', { status: 'ACTIVE', progress: 0, prompts: prompts(0, 0), hasClarifications: false, clarificationCount: 0 }],
  ['progress', { status: 'PROCESSING', progress: 10, prompts: prompts(0, 3), hasClarifications: false, clarificationCount: 0 }],
  ['model_result', { modelName: 'llama3.1:8b', provider: 'ollama', duration: 1834, result: 'Invoice total: 1,250.00 EUR, due 2024-07-01.', status: 'completed' }],
  ['model_result', { modelName: 'gpt-4o-mini', provider: 'openai', duration: 2410, result: 'Total 1250 EUR; payment due July 1st 2024.', status: 'completed' }],
  ['model_result', { modelName: 'mistral:7b', provider: 'ollama', duration: 30000, result: '', status: 'failed', error: 'model timed out after 30000ms' }],
  ['clarification', { clarificationId: '3c8a1f4e-2b9d-4e7a-9f10-6d5b2a7c8e91', question: 'Two models disagree on the currency format; which should be used?', status: 'pending' }],
  ['progress', { status: 'PROCESSING', progress: 75, prompts: prompts(2, 0, 1), hasClarifications: true, clarificationCount: 1 }],
  ['progress', { status: 'COMPLETED', progress: 100, prompts: prompts(2, 0, 1), hasClarifications: true, clarificationCount: 1, hasResult: true, result: { total: 1250, currency: 'EUR' } }],
  ['completed', { result: { total: 1250, currency: 'EUR', dueDate: '2024-07-01', models: 3, failedModels: 1 } }],
];

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function publish(event, data) {
  const headers = { 'content-type': 'application/json' };
  if (apiKey) headers.authorization = `Bearer ${apiKey}`;
  const res = await fetch(`${url}/api/v1/sessions/${encodeURIComponent(sessionId)}/events`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ event, data }),
    signal: AbortSignal.timeout(10000),
  });
  const text = await res.text();
  if (res.status !== 202) {
    throw new Error(`${event}: herald answered ${res.status} ${text}`);
  }
  return JSON.parse(text);
}

try {
  for (const [i, [event, data]] of steps.entries()) {
    if (i > 0 && stepDelayMs > 0) await sleep(stepDelayMs);
    const { seq } = await publish(event, data);
    console.log(`published ${event} seq=${seq}`);
  }
} catch (e) {
  console.error(`simulate-session: ${e.message}`);
  process.exit(1);
}
