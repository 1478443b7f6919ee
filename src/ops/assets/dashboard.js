// herald's dashboard. Reads /dashboard/api/ (Server-Sent Events read with
// fetch, so that the admin token travels in a header, never in a URL), draws
// its own charts on canvases, and keeps the token in this tab's
// sessionStorage only. Everything a client sent (session ids, reasons) is
// put in the page as text, never as HTML.
"use strict";

const TOKEN_KEY = "herald.adminToken";
const COLORS = ["#2f6fdb", "#c2352b", "#1f8a4c", "#b7791f", "#7b4bc4", "#0f8b8d", "#d5487f", "#555"];
const TAIL_SHOWN = 300;

const $ = (id) => document.getElementById(id);
const el = (tag, text, cls) => {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
};

let samples = [];
let feedAbort = null;
let tailAbort = null;

function headers() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** A refusal from herald: its status and its JSON message. */
class Refused extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function refusal(res) {
  const body = await res.json().catch(() => ({}));
  return new Refused(res.status, body.error || `${res.status} ${res.statusText}`);
}

/** Reads an event stream at `url`, calling onEvent(name, data) per event. */
async function readEvents(url, signal, onEvent) {
  const res = await fetch(url, { headers: headers(), signal });
  if (!res.ok) throw await refusal(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const block = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

function showLogin(message) {
  $("board").hidden = true;
  $("login").hidden = false;
  $("login-message").textContent = message;
  $("live").textContent = "locked";
  $("live").className = "badge off";
}

async function connectFeed() {
  feedAbort?.abort();
  feedAbort = new AbortController();
  try {
    await readEvents("/dashboard/api/feed", feedAbort.signal, (name, data) => {
      $("login").hidden = true;
      $("board").hidden = false;
      $("live").textContent = "live";
      $("live").className = "badge on";
      if (name === "history") {
        samples = JSON.parse(data);
        drawCharts();
      } else if (name === "snapshot") {
        const snapshot = JSON.parse(data);
        if (snapshot.sample) render(snapshot);
      }
    });
  } catch (e) {
    if (e.name === "AbortError") return;
    if (e instanceof Refused && (e.status === 401 || e.status === 403)) {
      showLogin(e.message);
      return;
    }
  }
  $("live").textContent = "reconnecting…";
  $("live").className = "badge off";
  setTimeout(connectFeed, 2000);
}

function render(snapshot) {
  // The first snapshot repeats the history's last sample.
  if (!samples.length || snapshot.sample.t > samples[samples.length - 1].t) samples.push(snapshot.sample);
  if (samples.length > 600) samples.shift();
  const scopes = {
    cluster: "cluster through Redis",
    instance: "single instance",
    unreachable: "this instance only: Redis cannot give the cluster's reports now",
  };
  $("scope").textContent = `${scopes[snapshot.scope] ?? snapshot.scope} · served by ${snapshot.instance}`;
  const sum = (field) => snapshot.instances.reduce((n, i) => n + (i[field] || 0), 0);
  $("total-connections").textContent = sum("connections");
  $("total-subscriptions").textContent = sum("subscriptions");
  $("total-published").textContent = sum("published");
  $("total-delivered").textContent = sum("delivered");
  $("total-instances").textContent = snapshot.instances.length;
  renderInstances(snapshot);
  renderSessions($("most-watched"), snapshot.mostWatched);
  renderSessions($("most-active"), snapshot.mostActive);
  renderRefusals(snapshot.refusals);
  drawCharts();
}

function renderInstances(snapshot) {
  const body = $("instances").tBodies[0];
  body.replaceChildren(...snapshot.instances.map((i) => {
    const tr = el("tr");
    tr.dataset.instance = i.id;
    const ready = i.notReady ? el("td", `no: ${i.notReady}`, "not-ready") : el("td", "ready", "ready");
    const id = el("td", i.id);
    if (i.id === snapshot.instance) id.append(el("span", " (this one)", "muted"));
    tr.append(
      id, el("td", i.version), ready, el("td", i.connections), el("td", i.streams),
      el("td", i.subscriptions), el("td", i.publishedPerSec), el("td", i.deliveredPerSec), el("td", i.receivedPerSec),
      el("td", i.dropped), el("td", i.saturated ? "yes" : "no"), el("td", `${i.writeLingerMs.toFixed(1)} ms`),
    );
    return tr;
  }));
}

function renderSessions(list, sessions) {
  list.replaceChildren(...sessions.map(([id, n]) => {
    const li = el("li", `${id} (${n})`);
    li.dataset.session = id;
    li.addEventListener("click", () => openSession(id));
    return li;
  }));
  if (!sessions.length) list.append(el("li", "none", "muted"));
}

function renderRefusals(refusals) {
  $("refusals").tBodies[0].replaceChildren(...refusals.map((r) => {
    const tr = el("tr");
    tr.append(
      el("td", new Date(r.at).toLocaleTimeString()), el("td", r.kind), el("td", r.code),
      el("td", r.reason, "reason"), el("td", r.client),
    );
    return tr;
  }));
}

/** A line chart of `series` ({ name, values: [number|null] }) on `canvas`. */
function drawChart(canvas, series) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const pad = { left: 44, right: 8, top: 8, bottom: 16 };
  ctx.clearRect(0, 0, width, height);
  const all = series.flatMap((s) => s.values).filter((v) => v !== null);
  const max = Math.max(1, ...all);
  const n = Math.max(2, samples.length);
  const x = (i) => pad.left + (i * (width - pad.left - pad.right)) / (n - 1);
  const y = (v) => height - pad.bottom - (v * (height - pad.top - pad.bottom)) / max;
  ctx.strokeStyle = "#dfe3ea";
  ctx.fillStyle = "#6b7383";
  ctx.font = "10px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (const v of [0, max / 2, max]) {
    ctx.beginPath();
    ctx.moveTo(pad.left, y(v));
    ctx.lineTo(width - pad.right, y(v));
    ctx.stroke();
    ctx.fillText(v >= 100 ? Math.round(v) : +v.toFixed(2), 4, y(v) + 3);
  }
  ctx.fillText(`last ${Math.round(samples.length / 60 * 10) / 10} min`, pad.left, height - 3);
  let points = 0;
  series.forEach((s, k) => {
    ctx.strokeStyle = s.color || COLORS[k % COLORS.length];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let drawing = false;
    s.values.forEach((v, i) => {
      if (v === null) {
        drawing = false;
        return;
      }
      points++;
      if (drawing) ctx.lineTo(x(i), y(v));
      else ctx.moveTo(x(i), y(v));
      drawing = true;
    });
    ctx.stroke();
  });
  // What was drawn, for whoever checks the page (the browser test).
  canvas.dataset.points = points;
}

function drawCharts() {
  const of = (field) => samples.map((s) => (s[field] === undefined ? null : s[field]));
  drawChart($("chart-connections"), [{ values: of("connections") }]);
  drawChart($("chart-publishes"), [{ values: of("publishes") }]);
  drawChart($("chart-deliveries"), [{ values: of("deliveries") }, { values: of("dropped"), color: COLORS[1] }]);
  drawChart($("chart-latency"), [{ values: of("latencyMs") }]);
  const reasons = [...new Set(samples.flatMap((s) => Object.keys(s.refusals || {})))].sort();
  const series = reasons.map((r, k) => ({
    name: r,
    color: COLORS[k % COLORS.length],
    values: samples.map((s) => (s.refusals || {})[r] || 0),
  }));
  drawChart($("chart-refusals"), series.length ? series : [{ values: samples.map(() => 0) }]);
  $("refusal-legend").replaceChildren(...series.map((s) => {
    const span = el("span", `■ ${s.name}`);
    span.style.color = s.color;
    return span;
  }));
}

async function openSession(id) {
  tailAbort?.abort();
  tailAbort = new AbortController();
  const signal = tailAbort.signal;
  $("session").hidden = false;
  $("session-id").textContent = id;
  $("session-query").value = id;
  $("tail").replaceChildren();
  const path = `/dashboard/api/sessions/${encodeURIComponent(id)}`;
  refreshState(path, signal);
  const timer = setInterval(() => (signal.aborted ? clearInterval(timer) : refreshState(path, signal)), 2000);
  let since = 0;
  while (!signal.aborted) {
    try {
      await readEvents(`${path}/tail?since=${since}`, signal, (name, data) => {
        if (name === "event") {
          const e = JSON.parse(data);
          since = Math.max(since, e.seq);
          addTail(e);
        } else if (name === "gap" || name === "problem") {
          const li = el("li", data, "gap");
          $("tail").append(li);
        }
      });
    } catch (e) {
      if (e.name === "AbortError") return;
      $("session-state").replaceChildren(el("dt", "error"), el("dd", e.message));
      if (e instanceof Refused && e.status < 500) return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function refreshState(path, signal) {
  try {
    const res = await fetch(path, { headers: headers(), signal });
    if (!res.ok) throw await refusal(res);
    const s = await res.json();
    const rows = [
      ["seq", s.seq], ["epoch", s.epoch ?? "none yet"],
      ["state", s.failed ? "failed" : s.completed ? "completed" : s.progress ? "in progress" : "no progress yet"],
      ["progress", s.progress ? JSON.stringify(s.progress) : "–"],
    ];
    $("session-state").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", k), el("dd", String(v))]));
    const subs = Object.entries(s.subscribers);
    $("session-subscribers").replaceChildren(...(subs.length
      ? subs.map(([instance, n]) => el("li", `${instance}: ${n}`))
      : [el("li", "nobody watches it", "muted")]));
  } catch (e) {
    if (e.name !== "AbortError") {
      $("session-state").replaceChildren(el("dt", "error"), el("dd", e.message));
    }
  }
}

function addTail(e) {
  const tail = $("tail");
  const li = el("li", `${e.event}`);
  li.value = e.seq;
  li.dataset.seq = e.seq;
  li.dataset.event = e.event;
  li.addEventListener("click", () => {
    const open = li.querySelector("pre");
    if (open) open.remove();
    else li.append(el("pre", JSON.stringify(e.payload, null, 2)));
  });
  tail.append(li);
  while (tail.children.length > TAIL_SHOWN) tail.firstChild.remove();
  tail.scrollTop = tail.scrollHeight;
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  $("token").value = "";
  connectFeed();
});

$("search").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const id = $("session-query").value.trim();
  if (id) openSession(id);
});

connectFeed();
