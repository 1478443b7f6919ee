// Watch one herald session in the browser with the stock socket.io-client:
// the event handlers of the WebSocket real-time updates document, rendered on
// the page instead of logged to the console.
//
//   index.html?session=doc-42                          herald from config.js (serve.mjs: $HERALD_URL)
//   index.html?session=doc-42&herald=http://host:3000  any herald
//   ...&transports=polling                             transports to try, in order (default websocket,polling)
//
// Everything a backend sent is shown with textContent, never as HTML.
(function () {
  'use strict';

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

  let lastSeq = 0;
  /** Track seq per session: a gap means this page missed an event. */
  function noteSeq(data, event) {
    if (typeof data.seq !== 'number') return;
    if (lastSeq && data.seq !== lastSeq + 1) {
      log(`seq gap: expected ${lastSeq + 1}, got ${data.seq}`);
    }
    lastSeq = data.seq;
    log(`seq ${data.seq}  ${event}`);
  }

  function showTransport() {
    const engine = socket.io.engine;
    setConnection('connected', `Connected as ${socket.id} over ${engine.transport.name}`);
  }

  // Handle connection; subscribe here so that a reconnect subscribes again
  socket.on('connect', () => {
    showTransport();
    socket.io.engine.once('upgrade', showTransport);
    socket.emit('subscribe', sessionId);
  });

  socket.on('connect_error', (error) => {
    setConnection('error', `Connection error: ${error.message} (retrying)`);
  });

  // Listen for subscription confirmation
  socket.on('subscribed', (data) => {
    log(`subscribed to ${data.sessionId}`);
  });

  socket.on('unsubscribed', (data) => {
    log(`unsubscribed from ${data.sessionId}`);
  });

  // Listen for progress updates
  socket.on('progress', (data) => {
    noteSeq(data, `progress ${formatPercent(data.progress)} ${data.status}`);
    $('progress').value = Number(data.progress);
    $('progress-percent').textContent = formatPercent(data.progress);
    const p = data.prompts || {};
    $('progress-status').textContent =
      `Status: ${data.status} · prompts ${p.completed}/${p.total} completed, ` +
      `${p.processing} processing, ${p.pending} pending, ${p.failed} failed` +
      (data.hasClarifications ? ` · ${data.clarificationCount} clarification(s)` : '');
  });

  // Listen for model results (multi-model execution)
  socket.on('model_result', (data) => {
    noteSeq(data, `model_result ${data.modelName} ${data.status}`);
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
  });

  // Listen for clarification requests
  socket.on('clarification', (data) => {
    noteSeq(data, `clarification ${data.clarificationId}`);
    const item = el('li');
    item.dataset.testid = 'clarification';
    const question = el('div', 'question', data.question);
    question.appendChild(el('span', `badge ${data.status}`, data.status));
    item.appendChild(question);
    item.appendChild(el('div', 'muted', `id ${data.clarificationId}`));
    // A real app would let the user answer here (the backend's own API).
    $('clarifications').appendChild(item);
    $('clarifications-empty').hidden = true;
  });

  // Listen for session completion
  socket.on('completed', (data) => {
    noteSeq(data, 'completed');
    $('completed').hidden = false;
    $('completed-result').textContent = JSON.stringify(data.result, null, 2);
    // Unsubscribe when done, then disconnect when finished
    socket.timeout(5000).emit('unsubscribe', sessionId, () => {
      socket.disconnect();
    });
  });

  // Listen for errors: a published session error carries seq; a refused
  // request (say, an invalid session id) carries a code instead.
  socket.on('error', (data) => {
    const text = data.code ? `Bad request: ${data.error}` : `Session error: ${data.error}`;
    if (!data.code) {
      noteSeq(data, 'error');
      $('failed').hidden = false;
      $('failed').textContent = `Failed: ${data.error}`;
    }
    const item = el('li', '', text);
    item.dataset.testid = 'error';
    $('errors').appendChild(item);
    $('errors-section').hidden = false;
  });

  // Disconnect when finished
  socket.on('disconnect', (reason) => {
    if (socket.active) {
      setConnection('disconnected', `Disconnected (${reason}), reconnecting…`);
    } else {
      setConnection('idle', `Disconnected (${reason})`);
    }
  });
})();
