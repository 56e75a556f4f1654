// Live cursors: one WebSocket per page, an ephemeral topic per room
// (`examples/cursors/<room>`, history 0: nothing stored).
//
// Each page publishes its pointer as an event named `move` with
// {from, name, x, y} (x and y from 0 to 1 across the area, so screens of
// any size agree), at most 30 times a second, and draws everyone else's.
// A cursor goes when its visitor's herald.leave arrives (`from` is the
// client id presence uses), or after 10 s without a move.

import { connect } from '/client/herald.js';
import { colorOf, token, userName, showProblem } from '/examples/common.js';

const $ = (id) => document.getElementById(id);

const wanted = new URLSearchParams(location.search).get('room');
const room = /^[A-Za-z0-9_-]{1,40}$/.test(wanted || '') ? wanted : 'lobby';
const topic = `examples/cursors/${room}`;
const me = userName();
const area = $('area');

const SEND_EVERY_MS = 1000 / 30; // at most 30 publishes a second
const IDLE_MS = 10_000; // a cursor that has not moved for this long goes

const cursors = new Map(); // client id -> {el, seen}
const here = new Set(); // client ids receiving the topic now
let wasOpen = false;

$('me').textContent = me;

const h = connect(location.origin, {
  transport: 'ws',
  token: token(),
  onStatus: showStatus,
  onError: (err) => {
    showProblem(err);
    $('status').textContent = `error: ${err.message}`;
    $('status').classList.add('error');
  },
});

const sub = h.subscribe(topic, { all: true }, (e) => {
  const d = e.data;
  if (e.event === 'move') moved(d);
  else if (e.event === 'herald.join') {
    here.add(d.client);
    showCount();
  } else if (e.event === 'herald.leave') {
    here.delete(d.client);
    removeCursor(d.client);
    showCount();
  }
});
sub.ready.then(countPresence, () => {}); // a refusal is shown by onError

// ---- sending our pointer, throttled ----

let pending = null; // the newest position not sent yet
let lastSent = -Infinity;
let timer = null;

area.addEventListener('pointermove', (ev) => {
  const r = area.getBoundingClientRect();
  pending = { x: unit((ev.clientX - r.left) / r.width), y: unit((ev.clientY - r.top) / r.height) };
  const wait = lastSent + SEND_EVERY_MS - performance.now();
  if (wait <= 0) send();
  else timer ??= setTimeout(send, wait);
});

function send() {
  clearTimeout(timer);
  timer = null;
  // Our client id (what herald.leave will name) is known once subscribed.
  if (!pending || !h.clientId || h.status.state !== 'open') return;
  lastSent = performance.now();
  const { x, y } = pending;
  pending = null;
  h.publish(topic, { from: h.clientId, name: me, x, y }, { event: 'move' }).catch((err) => {
    // Dropped (rate limit, reconnecting): the next move says where we are.
    // Refused for good (no right to publish here): say so.
    if (err.code === 'forbidden' || err.code === 'unauthorized') showProblem(err);
  });
}

// ---- drawing everyone else's ----

function moved(d) {
  if (!d || typeof d.from !== 'string' || d.from === h.clientId) return;
  if (typeof d.x !== 'number' || typeof d.y !== 'number') return;
  const name = String(d.name || d.from).slice(0, 40);
  let c = cursors.get(d.from);
  if (!c) {
    c = { el: cursorElement(d.from, name), seen: 0 };
    cursors.set(d.from, c);
    area.append(c.el);
  }
  c.seen = Date.now();
  const x = unit(d.x);
  const y = unit(d.y);
  c.el.dataset.x = String(x);
  c.el.dataset.y = String(y);
  c.el.style.left = `${x * 100}%`;
  c.el.style.top = `${y * 100}%`;
}

function cursorElement(client, name) {
  const el = document.createElement('div');
  el.className = 'cursor';
  el.dataset.client = client;
  el.dataset.name = name;
  el.style.setProperty('--c', colorOf(name));
  el.innerHTML =
    '<svg viewBox="0 0 18 18" aria-hidden="true"><path d="M1 1 L1 15 L5 11 L8 17 L10 16 L7 10 L13 10 Z" ' +
    'fill="var(--c)" stroke="#fff" stroke-width="1"/></svg><span class="label"></span>';
  el.querySelector('.label').textContent = name;
  return el;
}

function removeCursor(client) {
  const c = cursors.get(client);
  if (!c) return;
  c.el.remove();
  cursors.delete(client);
}

// The fallback for a leave we did not see (e.g. while reconnecting).
setInterval(() => {
  const now = Date.now();
  for (const [client, c] of cursors) if (now - c.seen > IDLE_MS) removeCursor(client);
}, 1000);

// ---- who is here ----

async function countPresence() {
  try {
    const p = await h.presence(topic);
    here.clear();
    for (const m of p.clients) here.add(m.client);
    showCount();
  } catch {
    // Shown again at the next join or leave.
  }
}

function showCount() {
  $('count').textContent = String(here.size);
  $('count').dataset.count = String(here.size);
}

function showStatus(s) {
  $('status').dataset.state = s.state;
  $('status').classList.remove('error');
  $('status').textContent = s.state === 'open' ? `connected over WebSocket to #${room}` : s.state;
  // Back after a drop: we may have missed joins and leaves.
  if (s.state === 'open' && wasOpen) countPresence();
  if (s.state === 'open') wasOpen = true;
}

function unit(v) {
  return Math.round(Math.min(1, Math.max(0, v)) * 10_000) / 10_000;
}
