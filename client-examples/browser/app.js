// Watch one herald session in the browser with the stock socket.io-client and
// watchSession (../resume/herald-resume.js): the event handlers of the
// WebSocket real-time updates document, rendered on the page, with nothing
// lost or shown twice when the connection drops or the page is reloaded.
//
//   index.html?session=doc-42                          herald from config.js (serve.mjs: $HERALD_URL)
//   index.html?session=doc-42&herald=http://host:3000  any herald
//   ...&transports=polling                             transports to try, in order (default websocket,polling)
//
// A reload resumes where the page was: the events shown are kept in this
// tab's sessionStorage, and watchSession keeps the session's seq and epoch
// there too (so herald replays only what came meanwhile). The "Delivery"
// section counts what arrived and what was missed.
//
// Everything a backend sent is shown with textContent, never as HTML.
import { watchSession } from '../resume/herald-resume.js';

const params = new URLSearchParams(window.location.search);
const heraldUrl =
  params.get('herald') || (window.HERALD_CONFIG && window.HERALD_CONFIG.heraldUrl) || 'http://localhost:3000';
const sessionId = params.get('session');
const transports = (params.get('transports') || 'websocket,polling')
  .split(',')
  .map((t) => t.trim())
  .filter(Boolean);

const $ = (id) => document.getElementById(id);

/** Create an element with optional class and text. */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setConnection(state, text) {
  const node = $('connection');
  node.dataset.state = state;
  node.textContent = text;
}

function formatPercent(value) {
  return `${Math.round(Number(value) * 10) / 10}%`;
}

function log(text) {
  const list = $('log');
  const item = el('li', '', `${new Date().toLocaleTimeString()}  ${text}`);
  item.dataset.testid = 'log-entry';
  list.appendChild(item);
  while (list.children.length > 100) list.removeChild(list.firstChild);
  list.scrollTop = list.scrollHeight;
}

// ---------------------------------------------------------------------------
// Showing the session's events (the same code for live ones and for the ones
// restored after a reload)
// ---------------------------------------------------------------------------

const show = {
  progress(data) {
    $('progress').value = Number(data.progress);
    $('progress-percent').textContent = formatPercent(data.progress);
    const p = data.prompts || {};
    $('progress-status').textContent =
      `Status: ${data.status} · prompts ${p.completed}/${p.total} completed, ` +
      `${p.processing} processing, ${p.pending} pending, ${p.failed} failed` +
      (data.hasClarifications ? ` · ${data.clarificationCount} clarification(s)` : '');
    return `progress ${formatPercent(data.progress)} ${data.status}`;
  },

  // Model results (multi-model execution)
  model_result(data) {
    const item = el('li');
    item.dataset.testid = 'model-result';
    item.dataset.status = data.status;
    const head = el('div');
    head.appendChild(el('strong', 'model-name', data.modelName));
    head.appendChild(el('span', `badge ${data.status}`, data.status));
    const meta = [data.provider, `${data.duration} ms`].filter(Boolean).join(' · ');
    head.appendChild(el('span', 'muted', `  ${meta}`));
    item.appendChild(head);
    if (data.status === 'completed') {
      item.appendChild(el('div', 'model-output', data.result));
    } else if (data.error) {
      item.appendChild(el('div', 'model-error', `Error: ${data.error}`));
    }
    $('model-results').appendChild(item);
    $('model-results-empty').hidden = true;
    return `model_result ${data.modelName} ${data.status}`;
  },

  clarification(data) {
    const item = el('li');
    item.dataset.testid = 'clarification';
    const question = el('div', 'question', data.question);
    question.appendChild(el('span', `badge ${data.status}`, data.status));
    item.appendChild(question);
    item.appendChild(el('div', 'muted', `id ${data.clarificationId}`));
    // A real app would let the user answer here (the backend's own API).
    $('clarifications').appendChild(item);
    $('clarifications-empty').hidden = true;
    return `clarification ${data.clarificationId}`;
  },

  completed(data) {
    $('completed').hidden = false;
    $('completed-result').textContent = JSON.stringify(data.result, null, 2);
    return 'completed';
  },

  // A published session error (a refused request is shown by showRefusal).
  error(data) {
    $('failed').hidden = false;
    $('failed').textContent = `Failed: ${data.error}`;
    showError(`Session error: ${data.error}`);
    return 'error';
  },
};

function showError(text) {
  const item = el('li', '', text);
  item.dataset.testid = 'error';
  $('errors').appendChild(item);
  $('errors-section').hidden = false;
}

function showEvent(name, data) {
  log(`seq ${data.seq}  ${show[name](data)}`);
}

function showDelivery(stats) {
  $('received').textContent = stats.received;
  $('missed').textContent = stats.missed;
  $('duplicates').textContent = stats.duplicates;
}

/** How a (re)subscription went, in words. */
function describeSubscription(info) {
  if (info.since === undefined) return `snapshot at seq ${info.seq}`;
  const how = info.recovered ? 'nothing lost' : `lost: ${info.reason}`;
  return `resumed after seq ${info.since}: ${info.replayed} replayed, ${how}`;
}

// ---------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------

function main() {
  $('herald-url').textContent = heraldUrl;

  if (!sessionId) {
    // No session yet: ask for one and reload with ?session=.
    $('choose-session').hidden = false;
    $('session-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const next = new URLSearchParams(window.location.search);
      next.set('session', new FormData(event.target).get('session').trim());
      window.location.search = next.toString();
    });
    return;
  }

  $('session-id').textContent = sessionId;
  document.title = `herald: ${sessionId}`;
  $('watch').hidden = false;

  // What this tab has shown of the session: watchSession's position and
  // counts under `herald:...`, the events themselves under `herald-page:...`.
  const positionKey = `herald:${heraldUrl}:${sessionId}`;
  const pageKey = `herald-page:${heraldUrl}:${sessionId}`;
  const blankView = $('view').cloneNode(true);
  const shown = JSON.parse(sessionStorage.getItem(pageKey) || '[]');
  for (const { event, data } of shown) showEvent(event, data);
  if (shown.length) log(`${shown.length} event(s) restored from this tab's storage`);
  const saved = JSON.parse(sessionStorage.getItem(positionKey) || 'null');
  if (saved) showDelivery(saved.stats);
  $('forget').addEventListener('click', () => {
    sessionStorage.removeItem(positionKey);
    sessionStorage.removeItem(pageKey);
    window.location.reload();
  });

  if (shown.some(({ event }) => event === 'completed')) {
    setConnection('idle', 'Not connected: the session is over');
    return;
  }
  if (typeof window.io !== 'function') {
    setConnection('error', 'socket.io client not loaded: run `npm ci` in client-examples/browser');
    return;
  }

  // Connect to herald
  setConnection('connecting', `Connecting (${transports.join(', ')})…`);
  const socket = window.io(heraldUrl, {
    path: '/socket.io/',
    transports,
  });
  // For poking at from the devtools console (and the test suite).
  window.heraldSocket = socket;

  function showTransport() {
    setConnection('connected', `Connected as ${socket.id} over ${socket.io.engine.transport.name}`);
  }
  socket.on('connect', () => {
    showTransport();
    socket.io.engine.once('upgrade', showTransport);
  });
  socket.on('connect_error', (error) => {
    setConnection('error', `Connection error: ${error.message} (retrying)`);
  });

  // Subscribe on every connect, resuming after the last seq; each session
  // event once, in seq order.
  const stop = watchSession(
    socket,
    sessionId,
    {
      event(name, data) {
        shown.push({ event: name, data });
        sessionStorage.setItem(pageKey, JSON.stringify(shown));
        showEvent(name, data);
        showDelivery(stop.stats);
        if (name === 'completed') {
          // Unsubscribe when done, then disconnect when finished
          stop().then(() => socket.disconnect());
        }
      },
      subscribed(info) {
        $('resume').textContent = describeSubscription(info);
        log(`subscribed to ${info.sessionId}: ${describeSubscription(info)}`);
      },
      lost(info) {
        // Some events are gone for good. A real app would reload its state
        // here (say from its backend); this page says so.
        $('lost').hidden = false;
        $('lost').textContent =
          `Some events are no longer available (${info.reason}): what is shown may be incomplete.`;
        if (info.reason === 'epoch_changed') {
          // herald lost the session and replays it from its new start: show
          // only that.
          log('herald lost the session: showing it anew from seq 1');
          $('view').replaceWith(blankView.cloneNode(true));
          shown.length = 0;
          sessionStorage.setItem(pageKey, '[]');
        }
      },
      refused(reply) {
        showError(`Bad request: ${reply.error}`);
      },
    },
    { storage: sessionStorage, storageKey: positionKey },
  );

  socket.on('disconnect', (reason) => {
    if (socket.active) {
      setConnection('disconnected', `Disconnected (${reason}), reconnecting…`);
    } else {
      setConnection('idle', `Disconnected (${reason})`);
    }
  });
}

main();
