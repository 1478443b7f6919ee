// Helpers for the plain-WebSocket families (PROTOCOL.md sections 6 and 7):
// a `ws` client that records every frame it receives and can wait for one,
// the run events of ResearchFlow's seed 001 with payloads as its broadcaster
// examples write them, and WorkflowEvents as MeatyMusic's seed 003 shows them.
// Clients are tracked so `closeAllWs()` in `after` ends every one.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { before, after } from 'node:test';
import { WebSocket } from 'ws';
import { startHerald, closeAll } from './herald.mjs';

const open = new Set();

/**
 * One WebSocket client of herald at `path` (`/ws`, `/ws/workflows/...`).
 * `frames` holds every text frame parsed (a non-JSON frame as `{ raw }`),
 * `closed` resolves with `{ code, reason }` when the connection ends.
 */
export class WsClient {
  static async connect(baseUrl, path, { timeoutMs = 5000, autoPong = true } = {}) {
    const url = `${baseUrl.replace(/^http/, 'ws')}${path}`;
    const c = new WsClient(new WebSocket(url, { perMessageDeflate: false, autoPong }));
    c.ws.on('ping', () => (c.pings += 1));
    const opened = once(c.ws, 'open');
    const failed = once(c.ws, 'error').then(([e]) => {
      throw new Error(`cannot open ${url}: ${e.message}`);
    });
    const timer = new Promise((_, reject) =>
      setTimeout(() => reject(new Error(`${url} did not open within ${timeoutMs} ms`)), timeoutMs).unref(),
    );
    await Promise.race([opened, failed, timer]);
    return c;
  }

  constructor(ws) {
    this.ws = ws;
    this.frames = [];
    this.rawFrames = [];
    this.pings = 0;
    this.waiters = [];
    open.add(this);
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => {
      const raw = data.toString();
      this.rawFrames.push(raw);
      let frame;
      try {
        frame = JSON.parse(raw);
      } catch {
        frame = { raw, isBinary };
      }
      this.frames.push(frame);
      for (const w of [...this.waiters]) w.check();
    });
    this.closed = new Promise((resolve) =>
      ws.on('close', (code, reason) => {
        open.delete(this);
        for (const w of [...this.waiters]) w.check();
        resolve({ code, reason: reason.toString() });
      }),
    );
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  send(message) {
    this.ws.send(typeof message === 'string' || Buffer.isBuffer(message) ? message : JSON.stringify(message));
  }

  /**
   * The first frame at index >= `from` for which `pred(frame)` holds: waits
   * for it (and fails, listing what arrived, after `timeoutMs`). Returns the
   * frame; its index is `frame`'s position in `frames`.
   */
  next(pred, { from = 0, timeoutMs = 5000, what = 'a frame' } = {}) {
    return new Promise((resolve, reject) => {
      const waiter = {
        check: () => {
          const i = this.frames.findIndex((f, k) => k >= from && pred(f));
          if (i >= 0) {
            done();
            resolve(this.frames[i]);
          } else if (this.ws.readyState === WebSocket.CLOSED) {
            done();
            reject(new Error(`connection closed before ${what}; frames: ${this.dump()}`));
          }
        },
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no ${what} within ${timeoutMs} ms; frames: ${this.dump()}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== waiter);
      };
      this.waiters.push(waiter);
      waiter.check();
    });
  }

  /** Send `message` and wait for the first later frame of type `type`. */
  async request(message, type, opts = {}) {
    const from = this.frames.length;
    this.send(message);
    return this.next((f) => f.type === type, { from, what: `a ${type} frame`, ...opts });
  }

  /** The frames that are events of the run family (`seq` present), after `from`. */
  events(from = 0) {
    return this.frames.slice(from).filter((f) => typeof f.seq === 'number');
  }

  dump() {
    return JSON.stringify(this.frames.slice(-12));
  }

  close() {
    this.ws.close();
    return this.closed;
  }
}

/**
 * Open `/ws` and wait for `connection.established`; resolves with the client.
 * `autoPong: false` makes a client that never answers herald's pings.
 */
export async function connectWs(baseUrl, { auth, autoPong } = {}) {
  const c = await WsClient.connect(baseUrl, '/ws', { autoPong });
  c.established = await c.next((f) => f.type === 'connection.established', { what: 'connection.established' });
  if (auth) {
    const ok = await c.request({ type: 'auth', payload: auth }, 'auth.success');
    assert.deepEqual(ok.payload, auth, 'auth.success echoes what the client named');
  }
  return c;
}

export function closeAllWs() {
  for (const c of open) c.ws.terminate();
  open.clear();
}

/**
 * A herald for the enclosing `describe` (or file): started in `before`, and in
 * `after` stopped with every WebSocket and Socket.IO client left open. The
 * returned object stands for that herald once started (`herald.url`,
 * `herald.request(...)`), so tests use it as they would the Herald itself.
 */
export function heraldForSuite(opts) {
  let herald;
  before(async () => {
    herald = await startHerald(opts);
  });
  after(async () => {
    closeAll();
    closeAllWs();
    await herald?.kill();
  });
  return new Proxy(
    {},
    {
      get(_, key) {
        if (!herald) throw new Error('herald is not started yet (use it inside a test)');
        const value = herald[key];
        return typeof value === 'function' ? value.bind(herald) : value;
      },
    },
  );
}

/** Wait `ms` with nothing arriving for `client` that `pred` matches (from `from`). */
export async function nothingMore(client, from, pred = () => true, ms = 300) {
  await new Promise((r) => setTimeout(r, ms));
  const extra = client.frames.slice(from).filter(pred);
  assert.deepEqual(extra, [], 'frames that should not have arrived');
}

// ---------------------------------------------------------------------------
// ResearchFlow run events (seed 001)
// ---------------------------------------------------------------------------

export const CATEGORIES = {
  RUN_EVENTS: ['run.created', 'run.started', 'run.completed', 'run.failed'],
  STAGE_EVENTS: ['stage.started', 'stage.progress', 'stage.completed', 'stage.failed'],
  ARTIFACT_EVENTS: ['artifact.created'],
  GOVERNANCE_EVENTS: ['governance.required', 'approval.granted', 'approval.denied'],
};
export const RUN_TYPES = Object.values(CATEGORIES).flat();

/** A valid payload of each run event type, as seed 001's broadcaster examples write them. */
export function runPayload(type, runId, projectId = 'proj-456', extra = {}) {
  const stage = { stageId: 'stage-1', stageName: 'Data Ingestion' };
  const payloads = {
    'run.created': { runId, projectId, runName: 'My Analysis', stageCount: 3, createdBy: 'user-789' },
    'run.started': { runId, projectId },
    'run.completed': { runId, projectId, durationMs: 300000, stagesCompleted: 3 },
    'run.failed': { runId, projectId, errorCode: 'STAGE_TIMEOUT' },
    'stage.started': { runId, ...stage, stageNumber: 1, totalStages: 3 },
    'stage.progress': { runId, ...stage, progress: 45, itemsProcessed: 450, itemsTotal: 1000 },
    'stage.completed': { runId, ...stage, stageNumber: 1, durationMs: 120000 },
    'stage.failed': { runId, ...stage, stageNumber: 1, errorCode: 'PARSE_ERROR', retriesRemaining: 2 },
    'artifact.created': { runId, artifactId: 'art-1', artifactType: 'dataset' },
    'governance.required': { runId, governanceId: 'gov-789', governanceType: 'PHI_SCAN', priority: 'HIGH', assignedTo: ['admin@example.com'] },
    'approval.granted': { runId, approvalId: 'app-999', governanceId: 'gov-789', governanceType: 'PHI_SCAN', grantedBy: 'admin@example.com' },
    'approval.denied': { runId, approvalId: 'app-999', governanceId: 'gov-789', governanceType: 'PHI_SCAN', deniedBy: 'admin@example.com', canRetry: true },
  };
  return { ...payloads[type], ...extra };
}

/** POST /api/v1/runs/{runId}/events; resolves with herald's answer. */
export function publishRun(herald, runId, type, payload, extra = {}) {
  return herald.request('POST', `/api/v1/runs/${encodeURIComponent(runId)}/events`, {
    json: { type, payload, ...extra },
  });
}

/** publishRun, asserting a 202. */
export async function publishRunOk(herald, runId, type, payload = runPayload(type, runId), extra = {}) {
  const res = await publishRun(herald, runId, type, payload, extra);
  assert.equal(res.status, 202, `publishing ${type} to run ${runId}: ${res.status} ${res.text}`);
  return res.body;
}

// ---------------------------------------------------------------------------
// MeatyMusic workflow events (seed 003)
// ---------------------------------------------------------------------------

/** The WorkflowEvents of one small workflow run, node by node, as seed 003 shows them. */
export function workflowRun(runId, nodes = ['PLAN', 'STYLE', 'LYRICS', 'VALIDATE']) {
  const at = (s) => new Date(Date.UTC(2025, 10, 13, 10, 0, s)).toISOString();
  const events = [{ ts: at(0), run_id: runId, phase: 'start', data: { song_id: 'song-456', global_seed: 12345 }, request_id: `req-${runId}` }];
  nodes.forEach((node_name, i) => {
    events.push({ ts: at(1 + 2 * i), run_id: runId, node_name, phase: 'start', data: { node_index: i }, request_id: `req-${runId}` });
    events.push({ ts: at(2 + 2 * i), run_id: runId, node_name, phase: 'end', duration_ms: 1000, data: { scores: { completeness: 0.95 } }, request_id: `req-${runId}` });
  });
  events.push({ ts: at(60), run_id: runId, phase: 'end', duration_ms: 60000, data: { status: 'completed' }, request_id: `req-${runId}` });
  return events;
}

/**
 * The frame a WorkflowEvent becomes, byte for byte what MeatyMusic's FastAPI
 * backend sends (`send_json` of the pydantic model): every field in
 * declaration order, an absent optional one as null, compact separators.
 * `ts` must be set (herald fills it when absent; compare the rest then).
 */
export function fastApiFrame(event) {
  const { ts, run_id, node_name = null, phase, duration_ms = null, data = null, request_id } = event;
  return JSON.stringify({ ts, run_id, node_name, phase, duration_ms, data, request_id });
}

export function publishWorkflow(herald, runId, event) {
  return herald.request('POST', `/api/v1/workflows/${encodeURIComponent(runId)}/events`, { json: event });
}

export async function publishWorkflowOk(herald, runId, event) {
  const res = await publishWorkflow(herald, runId, event);
  assert.equal(res.status, 202, `publishing a workflow event to ${runId}: ${res.status} ${res.text}`);
  return res.body;
}
