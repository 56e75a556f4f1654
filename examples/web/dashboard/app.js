// Live dashboard: Herald's own metrics, published by the server every second
// to `examples/dashboard/metrics`, received over Server-Sent Events.
// `since: 'latest'` makes the newest event arrive first, so the tiles show
// the current values as soon as the page connects.

import { connect } from '/client/herald.js';
import uPlot from '/examples/vendor/uplot.mjs';
import { token, showProblem } from '/examples/common.js';

const TOPIC = 'examples/dashboard/metrics';
const KEEP = 120; // points on the chart

const root = document.getElementById('dashboard');
const statusEl = document.getElementById('status');
const measuredEl = document.getElementById('measured');
const ageEl = document.getElementById('age');
const tiles = Object.fromEntries(
  [...root.querySelectorAll('[data-metric]')].map((el) => [el.dataset.metric, el]),
);

// The chart: x in seconds (uPlot's time axis), rates on the left, connections on the right.
const series = { at: [], published: [], delivered: [], connections: [] };
const chart = new uPlot(
  {
    width: chartWidth(),
    height: 300,
    scales: { x: { time: true }, rate: { auto: true }, count: { auto: true } },
    series: [
      {},
      { label: 'published/s', stroke: '#3a6ff7', width: 2, scale: 'rate', value: (u, v) => fmt(v) },
      { label: 'delivered/s', stroke: '#e8590c', width: 2, scale: 'rate', value: (u, v) => fmt(v) },
      { label: 'connections', stroke: '#2b8a3e', width: 2, scale: 'count', dash: [6, 4] },
    ],
    axes: [
      {},
      { scale: 'rate', label: 'events / s' },
      { scale: 'count', side: 1, label: 'connections', grid: { show: false } },
    ],
  },
  [[], [], [], []],
  document.getElementById('chart'),
);
addEventListener('resize', () => chart.setSize({ width: chartWidth(), height: 300 }));

function chartWidth() {
  return Math.max(300, document.getElementById('chart').clientWidth || 900);
}

function fmt(v) {
  if (v == null || !Number.isFinite(v)) return '–';
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

let lastAt = 0;

function render(m) {
  if (!m || typeof m.at !== 'number') return;
  // Events come in the topic's order, so a value measured before the last
  // one shown means that one was wrong (a publisher's far-future `at`, a
  // node's clock set back): start the chart again rather than stay stuck.
  if (m.at <= lastAt) for (const s of Object.values(series)) s.length = 0;
  lastAt = m.at;
  const c = m.connections || {};
  for (const [key, value] of [
    ['sse', c.sse],
    ['ws', c.ws],
    ['poll', c.poll],
    ['published_per_s', m.published_per_s],
    ['delivered_per_s', m.delivered_per_s],
    ['topics', m.topics],
  ]) {
    tiles[key].textContent = fmt(value);
  }
  // For anyone checking where a value came from: the first one shown, and the newest.
  if (!root.dataset.firstAt) {
    root.dataset.firstAt = String(m.at);
    root.dataset.firstShownAt = String(Date.now());
  }
  root.dataset.lastAt = String(m.at);
  const when = new Date(m.at);
  measuredEl.dateTime = when.toISOString();
  measuredEl.textContent = when.toLocaleTimeString();
  showAge();

  series.at.push(m.at / 1000);
  series.published.push(m.published_per_s ?? null);
  series.delivered.push(m.delivered_per_s ?? null);
  series.connections.push((c.sse || 0) + (c.ws || 0) + (c.poll || 0));
  for (const s of Object.values(series)) if (s.length > KEEP) s.splice(0, s.length - KEEP);
  chart.setData([series.at, series.published, series.delivered, series.connections]);
  root.dataset.points = String(series.at.length);
}

function showAge() {
  if (!lastAt) return;
  const s = Math.max(0, (Date.now() - lastAt) / 1000);
  ageEl.textContent = `(${s < 10 ? s.toFixed(1) : Math.round(s)} s ago)`;
}
setInterval(showAge, 500);

const h = connect(location.origin, {
  transport: 'sse',
  token: token() ?? undefined,
  onStatus: (s) => {
    statusEl.dataset.state = s.state;
    statusEl.textContent =
      s.state === 'reconnecting' ? `reconnecting in ${Math.round((s.delay || 0) / 100) / 10} s…` : `${s.state} (${s.transport})`;
  },
  onError: (e) => {
    showProblem(e);
    statusEl.dataset.state = 'error';
    statusEl.textContent = `error: ${e.code} ${e.message}`;
    statusEl.classList.add('error');
  },
});
// The subscription with its starting point, then the listener for the named event.
h.subscribe(TOPIC, { since: 'latest' });
h.on(TOPIC, 'metrics', (e) => render(e.data));
