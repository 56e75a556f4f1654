// Notifications over SSE: one topic per user, an unread badge that survives
// a reload, and notifications published while the page was closed delivered
// on the next visit (resume from the last event id kept in localStorage).

import { connect } from '/client/herald.js';
import { claims, token, userName, showProblem } from '/examples/common.js';

const $ = (id) => document.getElementById(id);
const HISTORY = 20;
const MAX_UNREAD = 1000;

// Who we are: the token's subject when the page has a token (decoded here
// only to show it: the server checks the signature), else a display name.
const jwt = token();
const user = (jwt && claims(jwt)?.sub) || userName();
const topic = `examples/notifications/${user}`;
$('user').textContent = user;
$('topic').textContent = topic;

// What this browser remembers per user: the id of the last notification it
// received (`last`, where the next visit resumes) and the unread ones.
const storeKey = `herald-examples:notifications:${user}`;
const saved = load();
const shown = new Map(); // event id -> <li>

const h = connect(location.origin, {
  token: jwt,
  transport: 'sse',
  onStatus: (s) => {
    $('status').dataset.state = s.state;
    $('status').textContent = s.state === 'reconnecting' ? `reconnecting (${s.reason || 'connection lost'})` : s.state;
  },
  onError: (err) => {
    showError(err);
    showProblem(err);
  },
});

async function start() {
  // The list: the newest notifications the server keeps, so it survives a reload.
  let page = { events: [], cursor: null };
  try {
    page = await h.history(topic, { limit: HISTORY });
  } catch (err) {
    showError(err);
  }
  for (const e of page.events) {
    if (e.id && e.event !== 'herald.gap') add(e, false);
  }
  // Where to resume: after the last notification this browser received. On
  // a first visit, after what is in the list now (those count as read).
  if (!saved.last) {
    const newest = page.events.filter((e) => e.id).at(-1);
    saved.last = newest ? newest.id : page.cursor;
    save();
  }
  const sub = h.subscribe(topic, { all: true, since: saved.last || 'earliest' }, receive);
  sub.ready.catch(() => {}); // a refusal is reported through onError
}

// Every event after `saved.last`: new to this browser, so unread (once: the
// id is remembered, and the list is matched by id with the history).
function receive(e) {
  if (e.event === 'herald.gap') {
    note(`Some notifications sent while you were away may be missing (${e.data?.reason ?? 'gap'}): the server no longer keeps them.`);
    // Unread ones the server no longer has cannot be shown: stop counting them.
    saved.unread = saved.unread.filter((id) => shown.has(id));
    save();
    renderBadge();
  } else if (e.id && (e.event === null || e.event === 'notification')) {
    if (!saved.unread.includes(e.id)) saved.unread.push(e.id);
    saved.unread = saved.unread.slice(-MAX_UNREAD);
    add(e, true);
  }
  if (e.id) {
    saved.last = e.id;
    save();
    renderBadge();
  }
}

function add(e, fresh) {
  let li = shown.get(e.id);
  if (!li) {
    li = document.createElement('li');
    li.dataset.id = e.id;
    const d = e.data && typeof e.data === 'object' ? e.data : { text: e.text };
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = String(d.text ?? e.text);
    const meta = document.createElement('span');
    meta.className = 'meta';
    const at = e.publishedAt ?? (Number.isFinite(d.at) ? d.at : Date.now());
    meta.textContent = ` — from ${d.from ?? 'someone'}, ${new Date(at).toLocaleTimeString()}`;
    li.append(text, meta);
    shown.set(e.id, li);
    $('list').prepend(li); // newest on top
    while ($('list').children.length > 100) {
      const last = $('list').lastElementChild;
      shown.delete(last.dataset.id);
      last.remove();
    }
  }
  li.classList.toggle('unread', fresh || saved.unread.includes(e.id));
  $('empty').hidden = true;
}

function note(text) {
  const li = document.createElement('li');
  li.className = 'gap';
  li.textContent = text;
  $('list').prepend(li);
}

function renderBadge() {
  const n = saved.unread.length;
  $('badge').textContent = String(n);
  $('badge').dataset.count = String(n);
  document.title = n ? `(${n}) Notifications · Herald examples` : 'Notifications · Herald examples';
}

$('mark-read').addEventListener('click', () => {
  saved.unread = [];
  save();
  for (const li of $('list').querySelectorAll('li.unread')) li.classList.remove('unread');
  renderBadge();
});

// Sending: an HTTP publish to the other user's topic (client_publish is on
// for examples/notifications/** when the server runs with --examples).
$('send').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const to = $('to').value.trim();
  const text = $('text').value.trim();
  if (!to || !text) return;
  $('sent').textContent = 'sending…';
  try {
    const id = await h.publish(`examples/notifications/${to}`, { from: user, text, at: Date.now() }, { event: 'notification' });
    $('sent').textContent = `sent to ${to}`;
    $('sent').dataset.id = id;
    $('text').value = '';
    renderCurl();
  } catch (err) {
    $('sent').textContent = `not sent: ${err.code || 'error'}: ${err.message}`;
  }
});

// The backend's way of doing the same.
function renderCurl() {
  const q = JSON.stringify;
  const to = $('to').value.trim() || 'bob';
  const text = $('text').value.trim() || 'Your export is ready';
  const body = `{"topic": ${q(`examples/notifications/${to}`)}, "event": "notification", "data": {"from": "backend", "text": ${q(text)}}}`;
  $('curl').textContent =
    `curl -X POST ${location.origin}/v1/publish \\\n` +
    // A server with credentials (this page has a token) wants the backend's
    // publisher key; an open one takes the publish as it is.
    (token() ? `  -H "authorization: Bearer $HERALD_PUBLISH_KEY" \\\n` : '') +
    `  -H 'content-type: application/json' \\\n` +
    `  -d '${body.replaceAll("'", "'\\''")}'`;
}
$('to').addEventListener('input', renderCurl);
$('text').addEventListener('input', renderCurl);
renderCurl();
renderBadge();
start();

function showError(err) {
  $('error').dataset.code = err.code || 'error';
  $('error').textContent = `${err.code || 'error'}${err.status ? ` (${err.status})` : ''}: ${err.message}`;
}

function load() {
  try {
    const s = JSON.parse(localStorage.getItem(storeKey));
    if (s && Array.isArray(s.unread)) return { last: s.last || null, unread: s.unread };
  } catch {
    // start afresh
  }
  return { last: null, unread: [] };
}

function save() {
  localStorage.setItem(storeKey, JSON.stringify(saved));
}
