// The Node.js reference for ResearchFlow's `/ws` (seeds 000-002): the
// WebSocketManager of seed 001 as its README describes it, written the way
// that team wrote it: `ws` 8 on a `node:http` server, one client record per
// connection (id, subscribed event types, userId/projectId/runId from
// `auth`), and every broadcast filtered per client in JavaScript before
// sending. Beside it, the publish entry point herald has
// (`POST /api/v1/runs/{runId}/events`), standing in for the seed's
// broadcaster, so that bench/run drives both servers the same way.
//
//   node ws-server.mjs [--host 127.0.0.1] [--port 3000]
//
// It exists to be benchmarked against herald's `/ws`; it is not a product.
// One deliberate kindness to Node: an event is serialized once per
// broadcast, not once per receiving client.

import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { WebSocketServer, WebSocket } from 'ws';

const { values: opts } = parseArgs({
  options: {
    host: { type: 'string', default: process.env.HOST || '127.0.0.1' },
    port: { type: 'string', default: process.env.PORT || '3000' },
    'log-level': { type: 'string', default: process.env.LOG_LEVEL || 'info' },
    'heartbeat-interval-ms': { type: 'string', default: '30000' },
    'heartbeat-timeout-ms': { type: 'string', default: '60000' },
  },
  strict: true,
});

// ---------------------------------------------------------------------------
// events.ts: the event types and their categories
// ---------------------------------------------------------------------------

const EventCategories = {
  RUN_EVENTS: ['run.created', 'run.started', 'run.completed', 'run.failed'],
  STAGE_EVENTS: ['stage.started', 'stage.progress', 'stage.completed', 'stage.failed'],
  ARTIFACT_EVENTS: ['artifact.created'],
  GOVERNANCE_EVENTS: ['governance.required', 'approval.granted', 'approval.denied'],
};
EventCategories.ALL_EVENTS = Object.values(EventCategories).flat();
const EVENT_TYPES = new Set(EventCategories.ALL_EVENTS);

// ---------------------------------------------------------------------------
// manager.ts: WebSocketManager
// ---------------------------------------------------------------------------

class WebSocketManager {
  constructor() {
    this.clients = new Map();
    this.wss = null;
    this.heartbeat = null;
  }

  initialize(httpServer) {
    // noServer: a `ws` server given `server` + `path` answers 400 to every
    // other upgrade; here /ws is the only WebSocket path anyway.
    this.wss = new WebSocketServer({ noServer: true });
    httpServer.on('upgrade', (req, socket, head) => {
      if (new URL(req.url, 'http://x').pathname !== '/ws') {
        socket.destroy();
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.handleConnection(ws));
    });
    const interval = Number(opts['heartbeat-interval-ms']);
    const timeout = Number(opts['heartbeat-timeout-ms']);
    this.heartbeat = setInterval(() => {
      const now = Date.now();
      for (const client of this.clients.values()) {
        if (now - client.lastPong > timeout) {
          client.ws.terminate();
          continue;
        }
        client.ws.ping();
      }
    }, interval);
  }

  handleConnection(ws) {
    const clientId = randomUUID();
    const client = {
      id: clientId,
      ws,
      subscriptions: new Set(),
      userId: undefined,
      projectId: undefined,
      runId: undefined,
      lastPong: Date.now(),
      messageCount: 0,
    };
    this.clients.set(clientId, client);
    ws.on('pong', () => {
      client.lastPong = Date.now();
    });
    ws.on('message', (data, isBinary) => this.handleMessage(client, data, isBinary));
    ws.on('close', () => this.clients.delete(clientId));
    ws.on('error', () => this.clients.delete(clientId));
    this.reply(client, 'connection.established', { clientId, version: '1.0.0' });
  }

  handleMessage(client, data, isBinary) {
    client.lastPong = Date.now();
    let message;
    try {
      if (isBinary) throw new Error('binary frame');
      message = JSON.parse(data.toString());
    } catch (e) {
      this.error(client, 'Invalid message format', e.message);
      return;
    }
    const payload = message?.payload ?? {};
    switch (message?.type) {
      case 'ping':
        this.reply(client, 'pong', {});
        break;
      case 'auth':
        client.userId = payload.userId;
        client.projectId = payload.projectId;
        client.runId = payload.runId;
        this.reply(client, 'auth.success', { userId: client.userId, projectId: client.projectId, runId: client.runId });
        break;
      case 'subscribe':
      case 'unsubscribe':
        this.changeSubscription(client, message.type, payload);
        break;
      case 'get_status':
        this.reply(client, 'status', {
          clientId: client.id,
          subscriptions: [...client.subscriptions],
          messageCount: client.messageCount,
        });
        break;
      default:
        this.error(client, 'Unknown message type', String(message?.type));
    }
  }

  changeSubscription(client, kind, payload) {
    const adding = kind === 'subscribe';
    let types;
    let named;
    if (payload.eventType) {
      if (!EVENT_TYPES.has(payload.eventType)) return this.error(client, 'Unknown event type', payload.eventType);
      types = [payload.eventType];
      named = { eventType: payload.eventType };
    } else if (payload.eventCategory) {
      types = EventCategories[payload.eventCategory];
      if (!types) return this.error(client, 'Unknown event category', payload.eventCategory);
      named = { eventCategory: payload.eventCategory };
    } else {
      return this.error(client, 'Missing eventType or eventCategory', kind);
    }
    for (const t of types) {
      if (adding) client.subscriptions.add(t);
      else client.subscriptions.delete(t);
    }
    this.reply(client, adding ? 'subscription.added' : 'subscription.removed', {
      ...named,
      subscriptions: [...client.subscriptions],
    });
  }

  reply(client, type, payload) {
    if (client.ws.readyState === WebSocket.OPEN) {
      client.ws.send(JSON.stringify({ type, timestamp: new Date().toISOString(), payload }));
    }
  }

  error(client, message, details) {
    this.reply(client, 'error', { message, details });
  }

  shouldReceive(client, type) {
    return client.subscriptions.size === 0 || client.subscriptions.has(type);
  }

  broadcast(event, addressed) {
    const text = JSON.stringify(event);
    let sent = 0;
    for (const client of this.clients.values()) {
      if (!addressed(client) || !this.shouldReceive(client, event.type)) continue;
      if (client.ws.readyState !== WebSocket.OPEN) continue;
      client.ws.send(text);
      client.messageCount++;
      sent++;
    }
    return sent;
  }

  broadcastToAll(event) {
    return this.broadcast(event, () => true);
  }

  broadcastToRun(runId, event) {
    return this.broadcast(event, (c) => c.runId === runId);
  }

  broadcastToProject(projectId, event) {
    return this.broadcast(event, (c) => c.projectId === projectId);
  }

  broadcastToUser(userId, event) {
    return this.broadcast(event, (c) => c.userId === userId);
  }

  getStats() {
    return { connections: this.clients.size };
  }

  shutdown() {
    clearInterval(this.heartbeat);
    for (const client of this.clients.values()) client.ws.terminate();
  }
}

const manager = new WebSocketManager();

// ---------------------------------------------------------------------------
// The publish entry point (herald's POST /api/v1/runs/{runId}/events)
// ---------------------------------------------------------------------------

const seqs = new Map();

function publish(runId, body) {
  const { type, payload = {}, to = 'run' } = body ?? {};
  if (!EVENT_TYPES.has(type)) return [422, { error: `unknown event type ${JSON.stringify(type)}`, field: 'type' }];
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
    return [422, { error: 'payload must be an object', field: 'payload' }];
  }
  const audiences = {
    run: (e) => manager.broadcastToRun(runId, e),
    project: (e) => manager.broadcastToProject(payload.projectId, e),
    user: (e) => manager.broadcastToUser(payload.userId, e),
    all: (e) => manager.broadcastToAll(e),
  };
  if (!Object.hasOwn(audiences, to)) return [422, { error: `unknown audience ${JSON.stringify(to)}`, field: 'to' }];
  const seq = (seqs.get(runId) ?? 0) + 1;
  seqs.set(runId, seq);
  audiences[to]({ type, timestamp: new Date().toISOString(), payload: { ...payload, runId }, seq });
  return [202, { runId, type, seq }];
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

const server = http.createServer((req, res) => {
  const { pathname } = new URL(req.url, 'http://x');
  if (req.method === 'GET' && (pathname === '/health' || pathname === '/ready')) return send(res, 200, { status: 'ok' });
  if (req.method === 'GET' && pathname === '/api/v1/stats') return send(res, 200, manager.getStats());
  const m = /^\/api\/v1\/runs\/([^/]+)\/events$/.exec(pathname);
  if (req.method !== 'POST' || !m) return send(res, 404, { error: `no route for ${req.method} ${pathname}` });
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString());
    } catch {
      return send(res, 400, { error: 'malformed JSON' });
    }
    send(res, ...publish(decodeURIComponent(m[1]), body));
  });
});

manager.initialize(server);
server.listen(Number(opts.port), opts.host, () => {
  const { port } = server.address();
  // The same start line as herald's, which bench/run and the test harnesses read.
  process.stderr.write(`node reference (ws, seed 001 manager at /ws) listening on http://${opts.host}:${port}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    manager.shutdown();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
