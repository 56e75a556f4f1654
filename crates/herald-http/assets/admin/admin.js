// Herald's admin page. Static: it holds no secret. The operator enters the
// publisher key or a token with the admin claim; it stays in this tab's
// sessionStorage and travels only in the Authorization header: to the long
// polls of Herald's own browser client, which reads the stats topic (every
// node publishes a snapshot of itself there once a second), and to the
// server API (GET /v1/topics, GET /v1/connections, POST /v1/disconnect).
//
// Long polling because it is the one transport that sends the credential in
// a header: a publisher key is never exchanged for a one-time token, and a
// WebSocket takes it in no message.
//
// Everything the server sends is put in the page as text (textContent),
// never as markup: topic and user names are anyone's input.

import herald from '../client/herald.js';

const TOPIC = 'herald/admin/stats';
const EVENT = 'stats';
const STORE_KEY = 'herald-admin-credential';
// A node whose snapshot is older than this is dropped from the page.
const SILENT_MS = 5000;
// The charts' window, one point a second.
const WINDOW_S = 60;
const TOP_TOPICS = 10;
// Where Herald's routes are mounted: the admin page is at <base>/admin/.
const BASE = new URL('../', location.href).href.replace(/\/+$/, '');

const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat('en-US');

let client = null;
let credential = '';
// node id → {snap, seen (ms, this page's clock)}
const nodes = new Map();
// Each snapshot received, for the sums of the last minute: {seen, published, delivered}.
let received = [];
let pubSeries = [];
let delSeries = [];
// Errors shown, by source ('stats', 'api').
const errors = new Map();

// ---- small helpers ----

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function setStatus(state, text) {
  const s = $('status');
  s.dataset.state = state;
  s.textContent = text;
}

function setError(source, message) {
  if (message) errors.set(source, message);
  else errors.delete(source);
  const box = $('error');
  box.textContent = [...errors.values()].join('\n');
  box.hidden = errors.size === 0;
}

function count(n) {
  return Number.isFinite(n) ? fmt.format(n) : '–';
}

function rate(r) {
  if (!Number.isFinite(r)) return '–';
  return r >= 10 ? fmt.format(Math.round(r)) : r.toFixed(1);
}

function sum(list, f) {
  return list.reduce((a, x) => a + (Number(f(x)) || 0), 0);
}

/** A server API call with the credential; rejects with the server's message. */
async function api(method, path, body) {
  const headers = {};
  if (credential) headers.authorization = `Bearer ${credential}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${BASE}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
  });
  let json = null;
  try {
    json = await res.json();
  } catch {
    // not JSON
  }
  if (!res.ok) {
    const err = new Error((json && json.error && json.error.message) || `the server answered ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return json;
}

// ---- the stats ----

function connect() {
  stop();
  credential = $('credential').value.trim();
  if (credential) sessionStorage.setItem(STORE_KEY, credential);
  else sessionStorage.removeItem(STORE_KEY);
  setError('stats', null);
  setError('api', null);
  setStatus('connecting', 'Connecting…');
  client = herald.connect(BASE, {
    transport: 'poll',
    token: credential || undefined,
    initialDelay: 500,
    maxDelay: 5000,
    onStatus: onStatus,
    onError: onError,
  });
  const off = client.on(TOPIC, EVENT, onSnapshot);
  off.ready.catch(() => {
    // reported through onError
  });
  // The server API takes the same credential: say now if it does not.
  api('GET', '/v1/topics?limit=1').then(
    () => setError('api', null),
    (e) => setError('api', `The server API refused this credential: ${e.message}`),
  );
}

function stop() {
  if (client) client.close();
  client = null;
  nodes.clear();
  received = [];
  pubSeries = [];
  delSeries = [];
  render();
}

function onStatus(s) {
  if (!client) return;
  if (s.state === 'open') setStatus('open', `Live: reading ${TOPIC}`);
  else if (s.state === 'reconnecting') {
    setStatus('connecting', `Reconnecting${s.reason ? ` (${s.reason})` : ''}…`);
  } else if (s.state === 'connecting') setStatus('connecting', 'Connecting…');
}

function onError(e) {
  const refused = e.status === 401 || e.status === 403 || e.code === 'forbidden' || e.code === 'unauthorized';
  setError('stats', `Cannot read the stats: ${e.message}${e.status ? ` (${e.status})` : ''}`);
  if (refused) {
    // Retrying the same credential would be refused again.
    if (client) client.close();
    client = null;
    setStatus('error', 'Refused: enter the publisher key or a token with the admin claim');
  }
}

function onSnapshot(e) {
  const snap = e.data;
  if (!snap || typeof snap !== 'object' || typeof snap.node !== 'string') return;
  const seen = Date.now();
  nodes.set(snap.node, { snap, seen });
  received.push({ seen, published: Number(snap.published) || 0, delivered: Number(snap.delivered) || 0 });
  setError('stats', null);
  render();
}

/** Once a second: forget silent nodes, add a point to the charts. */
function tick() {
  const now = Date.now();
  for (const [id, n] of nodes) if (now - n.seen > SILENT_MS) nodes.delete(id);
  received = received.filter((r) => now - r.seen <= WINDOW_S * 1000);
  if (client) {
    const live = [...nodes.values()].map((n) => n.snap);
    pubSeries.push(live.length ? sum(live, (s) => s.publishes_per_s) : 0);
    delSeries.push(live.length ? sum(live, (s) => s.deliveries_per_s) : 0);
    pubSeries = pubSeries.slice(-WINDOW_S);
    delSeries = delSeries.slice(-WINDOW_S);
  }
  render();
}

// ---- rendering ----

function render() {
  const now = Date.now();
  const list = [...nodes.values()].sort((a, b) => a.snap.node.localeCompare(b.snap.node));
  const snaps = list.map((n) => n.snap);
  const any = snaps.length > 0;
  const total = (f) => (any ? count(sum(snaps, f)) : '–');
  $('conn-sse').textContent = total((s) => s.connections && s.connections.sse);
  $('conn-ws').textContent = total((s) => s.connections && s.connections.ws);
  $('conn-poll').textContent = total((s) => s.connections && s.connections.poll);
  $('conn-total').textContent = total(
    (s) => s.connections && s.connections.sse + s.connections.ws + s.connections.poll,
  );
  $('published-total').textContent = total((s) => s.published_total);
  $('slow-total').textContent = total((s) => s.slow_consumer_disconnects);
  $('viewers').textContent = total((s) => s.admin_viewers);
  $('published-60s').textContent = client ? count(sum(received, (r) => r.published)) : '–';
  $('delivered-60s').textContent = client ? count(sum(received, (r) => r.delivered)) : '–';
  $('pub-rate').textContent = any ? rate(sum(snaps, (s) => s.publishes_per_s)) : '–';
  $('del-rate').textContent = any ? rate(sum(snaps, (s) => s.deliveries_per_s)) : '–';
  const unready = snaps.filter((s) => !s.ready).length;
  $('nodes-count').textContent = any
    ? `(${snaps.length} node${snaps.length === 1 ? '' : 's'}${unready ? `, ${unready} not ready` : ''})`
    : '';

  const rows = list.map(({ snap: s, seen }) =>
    el(
      'tr',
      { 'data-node': s.node },
      el('td', {}, el('code', {}, s.node)),
      el('td', {}, s.engine || ''),
      s.ready
        ? el('td', { class: 'ok' }, 'ready')
        : el('td', { class: 'bad', title: s.engine_error || '' }, `not ready${s.engine_error ? `: ${s.engine_error}` : ''}`),
      el('td', { class: 'num' }, count(s.connections && s.connections.sse)),
      el('td', { class: 'num' }, count(s.connections && s.connections.ws)),
      el('td', { class: 'num' }, count(s.connections && s.connections.poll)),
      el('td', { class: 'num' }, rate(s.publishes_per_s)),
      el('td', { class: 'num' }, rate(s.deliveries_per_s)),
      el('td', { class: 'num' }, count(s.slow_consumer_disconnects)),
      el('td', {}, `${Math.max(0, Math.round((now - seen) / 1000))} s ago`),
    ),
  );
  $('nodes').replaceChildren(
    ...(rows.length ? rows : [el('tr', { class: 'empty' }, el('td', { colspan: 10 }, client ? 'No snapshot yet' : 'Not connected'))]),
  );

  const topics = new Map();
  for (const s of snaps) {
    for (const t of Array.isArray(s.topics) ? s.topics : []) {
      const cur = topics.get(t.topic) || { subscribers: 0, nodes: 0 };
      cur.subscribers += Number(t.subscribers) || 0;
      cur.nodes += 1;
      topics.set(t.topic, cur);
    }
  }
  const busiest = [...topics.entries()]
    .sort((a, b) => b[1].subscribers - a[1].subscribers || a[0].localeCompare(b[0]))
    .slice(0, TOP_TOPICS);
  $('topics').replaceChildren(
    ...(busiest.length
      ? busiest.map(([topic, t]) =>
          el(
            'tr',
            { 'data-topic': topic },
            el('td', {}, el('code', {}, topic)),
            el('td', { class: 'num' }, count(t.subscribers)),
            el('td', { class: 'num' }, count(t.nodes)),
          ),
        )
      : [el('tr', { class: 'empty' }, el('td', { colspan: 3 }, 'No topic has subscribers'))]),
  );
  $('topics-total').textContent = any ? count(sum(snaps, (s) => s.topics_total)) : '0';

  drawChart($('pub-chart'), pubSeries, '--accent');
  drawChart($('del-chart'), delSeries, '--accent2');
}

/** The smallest of 1, 2, 5 × 10^n at least `v`. */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** A line over the last WINDOW_S values, newest at the right, on a 0..max scale. */
function drawChart(canvas, values, colorVar) {
  const css = getComputedStyle(document.documentElement);
  const color = css.getPropertyValue(colorVar).trim() || '#0b5fff';
  const muted = css.getPropertyValue('--muted').trim() || '#888';
  const grid = css.getPropertyValue('--line').trim() || '#ccc';
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width;
  const h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pad = { l: 34, r: 6, t: 8, b: 16 };
  const peak = values.length ? Math.max(...values) : 0;
  const max = niceMax(peak);
  canvas.dataset.peak = String(peak);
  canvas.dataset.points = String(values.length);
  const x = (i) => pad.l + ((i + WINDOW_S - values.length) * (w - pad.l - pad.r)) / (WINDOW_S - 1);
  const y = (v) => pad.t + (1 - v / max) * (h - pad.t - pad.b);

  ctx.font = '11px system-ui, sans-serif';
  ctx.lineWidth = 1;
  ctx.fillStyle = muted;
  ctx.strokeStyle = grid;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (const v of [0, max / 2, max]) {
    ctx.beginPath();
    ctx.moveTo(pad.l, Math.round(y(v)) + 0.5);
    ctx.lineTo(w - pad.r, Math.round(y(v)) + 0.5);
    ctx.stroke();
    ctx.fillText(Number.isInteger(v) ? fmt.format(v) : v.toFixed(1), pad.l - 4, y(v));
  }
  ctx.textBaseline = 'bottom';
  ctx.textAlign = 'left';
  ctx.fillText(`-${WINDOW_S} s`, pad.l, h);
  ctx.textAlign = 'right';
  ctx.fillText('now', w - pad.r, h);
  if (values.length === 0) return;

  ctx.beginPath();
  values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
  ctx.lineTo(x(values.length - 1), y(0));
  ctx.lineTo(x(0), y(0));
  ctx.closePath();
  ctx.globalAlpha = 0.15;
  ctx.fillStyle = color;
  ctx.fill();
  ctx.globalAlpha = 1;
  ctx.beginPath();
  values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.stroke();
}

// ---- the server API ----

function result(state, text) {
  const r = $('disconnect-result');
  r.dataset.state = state;
  r.textContent = text;
}

async function showConnections() {
  const user = $('user').value;
  if (!user) return;
  try {
    const r = await api('GET', `/v1/connections?user=${encodeURIComponent(user)}`);
    const list = Array.isArray(r.connections) ? r.connections : [];
    $('connections-caption').textContent =
      `${list.length} connection${list.length === 1 ? '' : 's'} of ${r.user} on the node serving this page`;
    $('connections').replaceChildren(
      ...list.map((c) =>
        el(
          'tr',
          { 'data-client': c.client },
          el('td', {}, el('code', {}, c.client)),
          el('td', {}, c.transport),
          el('td', {}, new Date(c.connected_at).toLocaleTimeString()),
          el('td', {}, (c.topics || []).join(', ')),
        ),
      ),
    );
    $('connections-table').hidden = false;
    setError('api', null);
  } catch (e) {
    setError('api', `Could not list the connections of ${user}: ${e.message}`);
  }
}

async function disconnectUser() {
  const input = $('user');
  if (!input.reportValidity()) return;
  const user = input.value;
  const button = $('disconnect');
  button.disabled = true;
  result('pending', `Disconnecting ${user}…`);
  try {
    const r = await api('POST', '/v1/disconnect', { user });
    result('ok', `Disconnected every connection of ${r.user} on every node.`);
    // The connections are closing now; list them once they are gone.
    if (!$('connections-table').hidden) setTimeout(showConnections, 1000);
  } catch (e) {
    result('error', `Could not disconnect ${user}: ${e.message}`);
  } finally {
    button.disabled = false;
  }
}

async function listTopics() {
  try {
    const r = await api('GET', '/v1/topics?limit=100');
    const list = (Array.isArray(r.topics) ? r.topics : []).filter((t) => t.topic !== TOPIC);
    $('api-topics').replaceChildren(
      ...list.map((t) =>
        el('tr', {}, el('td', {}, el('code', {}, t.topic)), el('td', { class: 'num' }, count(t.subscribers))),
      ),
    );
    $('api-topics-table').hidden = false;
    setError('api', null);
  } catch (e) {
    setError('api', `Could not list the topics: ${e.message}`);
  }
}

// ---- wiring ----

$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  connect();
});
$('forget').addEventListener('click', () => {
  sessionStorage.removeItem(STORE_KEY);
  $('credential').value = '';
  credential = '';
  stop();
  setError('stats', null);
  setError('api', null);
  setStatus('idle', 'Not connected');
});
$('user-form').addEventListener('submit', (e) => {
  e.preventDefault();
  showConnections();
});
$('disconnect').addEventListener('click', disconnectUser);
$('list-topics').addEventListener('click', listTopics);
setInterval(tick, 1000);

const saved = sessionStorage.getItem(STORE_KEY);
if (saved) {
  $('credential').value = saved;
  connect();
} else {
  render();
}
document.body.dataset.ready = 'true';
