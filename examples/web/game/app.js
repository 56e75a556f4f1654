// The multiplayer game: every player is a disc on a shared arena. Each page
// moves its own disc (physics stepped here), sends its state 25 times a
// second on an ephemeral topic, and draws the others 100 ms in the past,
// between the two updates around that moment. Coins appear where every page
// computes them (room name + clock); the first claim to arrive wins.

import { connect } from '/client/herald.js';
import { colorOf, param, token, userName, showProblem } from '/examples/common.js';

const W = 800; // the arena in world units (the canvas's own pixels)
const H = 500;
const R = 18; // a player's radius
const COIN_R = 10;
const SEND_MS = 40; // 25 state updates a second, whatever the frame rate
const DELAY_MS = 100; // others are drawn this far in the past
const STALE_MS = 3000; // a player silent this long is dropped (if no herald.leave came)
const SLOT_MS = 2000; // a new coin every 2 s...
const COIN_SLOTS = 3; // ...that stays 3 slots unless someone takes it
const STEP_MS = 1000 / 120; // physics step
const ACCEL = 1400; // units/s² while a key is held
const DRAG = 3; // velocity decay per second
const MAX_SPEED = 320; // units/s

const room = /^[A-Za-z0-9_-]{1,40}$/.test(param('room', '')) ? param('room') : 'arena';
const topic = `examples/game/${room}`;
const name = userName();

const $ = (id) => document.getElementById(id);
const canvas = $('arena');
const ctx = canvas.getContext('2d');
$('me').textContent = name;
$('me').style.color = colorOf(name);
$('room').textContent = room;
$('again').href = `?room=${room}&name=guest-${Math.floor(1000 + Math.random() * 9000)}`;

// ---- this player: input and physics, all local ----

const me = { x: 60 + Math.random() * 300, y: 60 + Math.random() * (H - 120), vx: 0, vy: 0, score: 0, seq: 0 };
const keys = new Set();
const KEYS = { ArrowLeft: 'l', KeyA: 'l', ArrowRight: 'r', KeyD: 'r', ArrowUp: 'u', KeyW: 'u', ArrowDown: 'd', KeyS: 'd' };
let target = null; // where a held pointer (mouse, finger) pulls the disc

addEventListener('keydown', (e) => {
  if (!KEYS[e.code] || e.target.closest('input, textarea, select')) return;
  keys.add(KEYS[e.code]);
  e.preventDefault(); // no page scrolling while playing
});
addEventListener('keyup', (e) => keys.delete(KEYS[e.code]));
addEventListener('blur', () => keys.clear());

function toWorld(e) {
  const r = canvas.getBoundingClientRect();
  return { x: ((e.clientX - r.left) * W) / r.width, y: ((e.clientY - r.top) * H) / r.height };
}
canvas.addEventListener('pointerdown', (e) => {
  canvas.setPointerCapture(e.pointerId);
  canvas.focus();
  target = toWorld(e);
});
canvas.addEventListener('pointermove', (e) => {
  if (target) target = toWorld(e);
});
for (const type of ['pointerup', 'pointercancel']) canvas.addEventListener(type, () => (target = null));

function step(dt) {
  let ax;
  let ay;
  if (target) {
    // Steer towards the pointer, slowing down on arrival.
    const dx = target.x - me.x;
    const dy = target.y - me.y;
    const k = Math.min(1, MAX_SPEED / (4 * Math.hypot(dx, dy) || 1));
    ax = (4 * dx * k - me.vx) * 6;
    ay = (4 * dy * k - me.vy) * 6;
  } else {
    ax = (Number(keys.has('r')) - Number(keys.has('l'))) * ACCEL;
    ay = (Number(keys.has('d')) - Number(keys.has('u'))) * ACCEL;
  }
  const decay = Math.exp(-DRAG * dt);
  me.vx = (me.vx + ax * dt) * decay;
  me.vy = (me.vy + ay * dt) * decay;
  const speed = Math.hypot(me.vx, me.vy);
  if (speed > MAX_SPEED) {
    me.vx *= MAX_SPEED / speed;
    me.vy *= MAX_SPEED / speed;
  }
  me.x += me.vx * dt;
  me.y += me.vy * dt;
  // Bounce off the walls, losing half the speed.
  if (me.x < R || me.x > W - R) {
    me.x = Math.min(W - R, Math.max(R, me.x));
    me.vx *= -0.5;
  }
  if (me.y < R || me.y > H - R) {
    me.y = Math.min(H - R, Math.max(R, me.y));
    me.vy *= -0.5;
  }
}

let simAt = performance.now();
/** Steps the physics up to `now` in fixed steps (frames and timers both call it). */
function advance(now) {
  if (now - simAt > 250) simAt = now - 250; // back from a pause: do not replay it
  while (now - simAt >= STEP_MS) {
    step(STEP_MS / 1000);
    simAt += STEP_MS;
  }
}

// ---- coins: the same on every page, no server deciding ----

/** A random generator seeded by a string (FNV-1a, then mulberry32). */
function seeded(seed) {
  let a = 2166136261;
  for (const ch of seed) a = Math.imul(a ^ ch.codePointAt(0), 16777619);
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const currentSlot = () => Math.floor(Date.now() / SLOT_MS);
const claims = new Map(); // slot -> the client whose claim arrived first
const claiming = new Set(); // slots this page has claimed

/** The coins on the board now: one per recent time slot, unless taken. */
function coins() {
  const out = [];
  for (let slot = currentSlot() - COIN_SLOTS + 1; slot <= currentSlot(); slot++) {
    if (claims.has(slot)) continue;
    const r = seeded(`${room}:${slot}`);
    out.push({ slot, x: 40 + r() * (W - 80), y: 40 + r() * (H - 80) });
  }
  return out;
}

// ---- the network: one WebSocket, both ways ----

const h = connect(location.origin, {
  transport: 'ws',
  token: token(),
  onStatus: showStatus,
  onError: showProblem,
});
const myIds = new Set(); // this page's client ids (a reconnect brings a new one)
const players = new Map(); // client id -> {from, name, score, seq, states, arrivals}
const gone = new Set(); // client ids that left: a late update does not bring them back
const online = new Set(); // client ids receiving the topic (presence)
const myArrivals = []; // when this page's own updates came back

h.subscribe(
  topic,
  {
    onJoin: (c) => {
      online.add(c.client);
      showOnline();
    },
    onLeave: (c) => {
      online.delete(c.client);
      showOnline();
      drop(c.client, 'leave');
    },
  },
  () => {},
);

h.on(topic, 'state', ({ data: s }) => {
  if (!s || typeof s.from !== 'string' || !Number.isFinite(s.x) || !Number.isFinite(s.y)) return;
  const now = performance.now();
  if (myIds.has(s.from)) {
    myArrivals.push(now);
    return;
  }
  if (gone.has(s.from)) return;
  let p = players.get(s.from);
  if (!p) {
    p = { from: s.from, name: String(s.name ?? '?').slice(0, 40), score: 0, seq: -Infinity, states: [], arrivals: [] };
    players.set(s.from, p);
    log(`${p.name} is playing`, p.name);
  }
  if (!(Number(s.seq) > p.seq)) return; // late or repeated
  p.seq = Number(s.seq);
  p.score = Number(s.score) || 0;
  p.states.push({ at: now, x: s.x, y: s.y });
  if (p.states.length > 10) p.states.shift();
  p.arrivals.push(now);
});

h.on(topic, 'coin', ({ data }) => {
  const { from, slot } = data || {};
  if (typeof from !== 'string' || !Number.isInteger(slot) || claims.has(slot)) return;
  if (Math.abs(slot - currentSlot()) > COIN_SLOTS) return; // not a coin of now
  claims.set(slot, from); // the first claim in the topic's order: the same on every page
  if (myIds.has(from)) {
    me.score += 1;
    $('score').textContent = me.score;
    log('you took a coin', name);
  } else {
    const who = players.get(from)?.name ?? 'someone';
    log(`${who} took a coin`, who);
  }
});

/** Who receives the topic now; joins and leaves keep it up to date after. */
async function refreshPresence() {
  try {
    const answer = await h.presence(topic);
    online.clear();
    for (const c of answer.clients) online.add(c.client);
    showOnline();
  } catch (err) {
    log(`presence: ${err.code || err.message}`);
  }
}

// Every 40 ms: the latest state, and a claim for a coin being touched. The
// timer aims at fixed times (a late tick makes the next one sooner), so a
// busy page still sends 25 a second; after a longer stall it skips ahead.
let due = performance.now();
function tick() {
  send();
  const now = performance.now();
  due = Math.max(due + SEND_MS, now - SEND_MS / 2);
  setTimeout(tick, Math.max(5, due - now));
}
tick();

function send() {
  advance(performance.now());
  const from = h.clientId;
  if (!from || h.status.state !== 'open') return; // nothing to send into while disconnected
  myIds.add(from);
  const state = {
    from,
    name,
    x: Math.round(me.x * 10) / 10,
    y: Math.round(me.y * 10) / 10,
    vx: Math.round(me.vx),
    vy: Math.round(me.vy),
    score: me.score,
    seq: ++me.seq,
  };
  h.publish(topic, state, { event: 'state' }).catch(refused);
  for (const c of coins()) {
    if (claiming.has(c.slot) || Math.hypot(c.x - me.x, c.y - me.y) > R + COIN_R) continue;
    claiming.add(c.slot);
    h.publish(topic, { from, slot: c.slot }, { event: 'coin' }).catch(refused);
  }
}

const refusals = new Set();
function refused(err) {
  if (err.code === 'closed' || refusals.has(err.code)) return;
  refusals.add(err.code); // say it once
  log(`publish refused: ${err.code} (${err.message})`);
  if (err.code === 'forbidden' || err.code === 'unauthorized') showProblem(err);
}

// ---- what a person sees ----

/** Removes a player: `leave` (herald.leave) or `timeout` (silent for 3 s). */
function drop(client, by) {
  if (by === 'leave') gone.add(client);
  const p = players.get(client);
  if (!p) return;
  players.delete(client);
  log(by === 'leave' ? `${p.name} left (herald.leave)` : `${p.name} timed out (no update for 3 s)`, p.name, by);
}

function log(text, who, leftBy) {
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (who) li.dataset.name = who;
  if (leftBy) li.dataset.leftBy = leftBy;
  $('log').prepend(li);
  while ($('log').children.length > 12) $('log').lastChild.remove();
}

function showStatus(s) {
  const text = {
    connecting: 'connecting…',
    open: 'connected over a WebSocket',
    reconnecting: `reconnecting in ${((s.delay ?? 0) / 1000).toFixed(1)} s…`,
    closed: 'closed',
  }[s.state];
  $('status').textContent = text ?? s.state;
  if (s.state === 'open') refreshPresence();
}

function showOnline() {
  $('online').textContent = online.size;
}

/** Where `p` was at time `t`: between the two updates around it. */
function positionAt(p, t) {
  const s = p.states;
  let i = s.length - 1;
  while (i > 0 && s[i].at > t) i--;
  const a = s[i];
  const b = s[i + 1];
  if (!b || t <= a.at) return a;
  if (b.at === a.at) return b; // two updates in one millisecond
  const k = (t - a.at) / (b.at - a.at);
  return { x: a.x + (b.x - a.x) * k, y: a.y + (b.y - a.y) * k };
}

/** Updates per second over the last 2 s (trims `arrivals`). */
function rate(arrivals, now) {
  while (arrivals.length && arrivals[0] < now - 2000) arrivals.shift();
  return arrivals.length / 2;
}

// The players table, 5 times a second: also where silent players are dropped.
setInterval(() => {
  const now = performance.now();
  for (const p of [...players.values()]) {
    if (now - p.states.at(-1).at > STALE_MS) drop(p.from, 'timeout');
  }
  for (const slot of [...claims.keys(), ...claiming]) {
    if (slot >= currentSlot() - COIN_SLOTS) continue; // forget coins long gone
    claims.delete(slot);
    claiming.delete(slot);
  }
  const row = (who, client, score, perSecond, x, y, self) => {
    const tr = document.createElement('tr');
    Object.assign(tr.dataset, { name: who, client: client ?? '', score, rate: perSecond, x: Math.round(x), y: Math.round(y) });
    if (self) tr.dataset.self = 'true';
    const cells = [`${who}${self ? ' (you)' : ''}`, score, perSecond.toFixed(1)];
    cells.forEach((text, i) => {
      const td = document.createElement('td');
      td.textContent = text;
      if (i > 0) td.className = 'n';
      if (i === 0) {
        const dot = document.createElement('span');
        dot.className = 'dot';
        dot.style.setProperty('--dot', colorOf(who));
        dot.textContent = '●';
        td.prepend(dot);
      }
      tr.append(td);
    });
    return tr;
  };
  const rows = [row(name, h.clientId, me.score, rate(myArrivals, now), me.x, me.y, true)];
  for (const p of players.values()) {
    const last = p.states.at(-1);
    rows.push(row(p.name, p.from, p.score, rate(p.arrivals, now), last.x, last.y, false));
  }
  $('players').tBodies[0].replaceChildren(...rows);
}, 200);

const ink = getComputedStyle(document.body).color;
ctx.font = '13px system-ui, sans-serif';
ctx.textAlign = 'center';

function disc(x, y, who, self) {
  ctx.beginPath();
  ctx.arc(x, y, R, 0, 2 * Math.PI);
  ctx.fillStyle = colorOf(who);
  ctx.fill();
  if (self) {
    ctx.lineWidth = 3;
    ctx.strokeStyle = ink;
    ctx.stroke();
  }
  ctx.fillStyle = ink;
  ctx.fillText(self ? `${who} (you)` : who, x, y - R - 6);
}

function frame(now) {
  advance(now);
  ctx.clearRect(0, 0, W, H);
  for (const c of coins()) {
    ctx.beginPath();
    ctx.arc(c.x, c.y, COIN_R, 0, 2 * Math.PI);
    ctx.fillStyle = '#e8b000';
    ctx.fill();
  }
  for (const p of players.values()) {
    const { x, y } = positionAt(p, now - DELAY_MS);
    disc(x, y, p.name, false);
  }
  disc(me.x, me.y, name, true);
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);
