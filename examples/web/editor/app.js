// The collaborative editor: a Yjs document bound to a <textarea>, synced
// through two Herald topics over one WebSocket.
//
//   examples/editor/<doc>          the document's updates (stored: history)
//     event `update`   {from, u}   a Yjs update, base64
//     event `snapshot` {u}         the whole document (Y.encodeStateAsUpdate)
//   examples/editor/<doc>/carets   where everyone's caret is (ephemeral, presence)
//     event `caret`    {from, name, color, anchor}   anchor: a Yjs relative position, base64
//
// Yjs updates commute and are idempotent: applying them in any order, or
// twice (our own echoes), gives the same text. So the page needs no
// server-side logic: it replays what the topic holds, then follows it live.

import { connect } from '/client/herald.js';
import * as Y from '/examples/vendor/yjs.mjs';
import { colorOf, token, userName, showProblem } from '/examples/common.js';

const BATCH_MS = 50; // coalesce typing: stay well under the topic's publish_rate (100/s)
const SNAPSHOT_EVERY = 100; // updates between snapshots
const CARET_MS = 50; // at most 20 caret messages a second
const RETRY_MS = 1000;

const params = new URLSearchParams(location.search);
const docName = (params.get('doc') || 'welcome').replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 64);
const DOC_TOPIC = `examples/editor/${docName}`;
const CARETS_TOPIC = `${DOC_TOPIC}/carets`;

const me = { name: userName() };
me.color = colorOf(me.name);

const $ = (id) => document.getElementById(id);
const ta = $('editor');
const mirror = $('mirror');
$('doc-name').value = docName;
$('doc-topic').textContent = DOC_TOPIC;
$('me').textContent = me.name;
$('me').style.color = me.color;

const doc = new Y.Doc();
const ytext = doc.getText('text');
const stats = { applied: 0, published: 0, snapshots: 0, gaps: 0 };

const h = connect(location.origin, {
  transport: 'ws',
  token: token(),
  onStatus: showStatus,
  onError: showProblem,
});
// Every id this page has had (h.clientId changes when the WebSocket reconnects).
const myIds = new Set();
const isMe = (client) => {
  if (h.clientId) myIds.add(h.clientId);
  return myIds.has(client);
};

// ---- the document: Herald → Yjs ----

// Updates on the topic since the last snapshot, whoever published them.
let sinceSnapshot = 0;

const offDoc = h.subscribe(DOC_TOPIC, { since: 'earliest', all: true }, (e) => {
  if (e.event === 'update' || e.event === 'snapshot') {
    if (e.event === 'snapshot') sinceSnapshot = 0;
    else sinceSnapshot++;
    const bytes = e.data && typeof e.data.u === 'string' ? fromBase64(e.data.u) : null;
    if (bytes) applyRemote(bytes);
  } else if (e.event === 'herald.gap') {
    // The oldest updates were trimmed from history: nothing to do, a
    // snapshot stored later holds what they did.
    stats.gaps++;
    showStats();
  }
});
offDoc.ready.then(
  () => document.body.setAttribute('data-doc', 'live'),
  (err) => showStatus({ state: 'error', reason: err.message }),
);

function applyRemote(bytes) {
  const sel = saveSelection();
  try {
    Y.applyUpdate(doc, bytes, 'remote');
  } catch (err) {
    console.warn('editor: ignored an update that is not Yjs', err);
    return;
  }
  stats.applied++;
  const text = ytext.toString();
  if (text !== ta.value) {
    const top = ta.scrollTop;
    ta.value = text;
    restoreSelection(sel);
    ta.scrollTop = top;
  }
  scheduleCarets();
  showStats();
}

// The local selection as Yjs relative positions: tied to the characters on
// its left, not to indices, so remote inserts before it move it along.
function saveSelection() {
  return {
    start: Y.createRelativePositionFromTypeIndex(ytext, ta.selectionStart, -1),
    end: Y.createRelativePositionFromTypeIndex(ytext, ta.selectionEnd, -1),
    dir: ta.selectionDirection,
  };
}

function restoreSelection(sel) {
  const start = indexOf(sel.start) ?? 0;
  const end = indexOf(sel.end) ?? start;
  ta.setSelectionRange(start, Math.max(start, end), sel.dir);
}

function indexOf(relpos) {
  const abs = Y.createAbsolutePositionFromRelativePosition(relpos, doc);
  return abs && abs.type === ytext ? abs.index : null;
}

// ---- the document: textarea → Yjs → Herald ----

ta.addEventListener('input', () => {
  const before = ytext.toString();
  const after = ta.value;
  if (before === after) return;
  // One edit: the common prefix and suffix stay, the middle is replaced.
  const max = Math.min(before.length, after.length);
  let start = 0;
  while (start < max && before.charCodeAt(start) === after.charCodeAt(start)) start++;
  let end = 0;
  while (end < max - start && before.charCodeAt(before.length - 1 - end) === after.charCodeAt(after.length - 1 - end)) end++;
  // Never cut a character made of two UTF-16 units (emoji) in half.
  if (start > 0 && isHighSurrogate(before.charCodeAt(start - 1))) start--;
  if (end > 0 && isLowSurrogate(before.charCodeAt(before.length - end))) end--;
  doc.transact(() => {
    const removed = before.length - start - end;
    if (removed > 0) ytext.delete(start, removed);
    const inserted = after.slice(start, after.length - end);
    if (inserted) ytext.insert(start, inserted);
  }, 'local');
  scheduleCarets();
  sendCaret();
});

const isHighSurrogate = (c) => c >= 0xd800 && c <= 0xdbff;
const isLowSurrogate = (c) => c >= 0xdc00 && c <= 0xdfff;

let pending = [];
let flushTimer = null;

doc.on('update', (update, origin) => {
  if (origin === 'remote') return;
  pending.push(update);
  if (!flushTimer) flushTimer = setTimeout(flush, BATCH_MS);
});

function flush() {
  flushTimer = null;
  if (pending.length === 0) return;
  const update = pending.length === 1 ? pending[0] : Y.mergeUpdates(pending);
  pending = [];
  h.publish(DOC_TOPIC, { from: h.clientId, u: toBase64(update) }, { event: 'update' }).then(
    () => {
      stats.published++;
      showStats();
      if (sinceSnapshot >= SNAPSHOT_EVERY) publishSnapshot();
    },
    (err) => {
      if (err.code === 'forbidden' || err.code === 'unauthorized') {
        showStatus({ state: 'error', reason: `cannot publish: ${err.message}` });
        return;
      }
      // Not stored: send it again (with whatever was typed since). Applying
      // an update twice changes nothing, so a duplicate would be harmless.
      pending.unshift(update);
      if (!flushTimer) flushTimer = setTimeout(flush, RETRY_MS);
    },
  );
}

function publishSnapshot() {
  sinceSnapshot = 0;
  const u = toBase64(Y.encodeStateAsUpdate(doc));
  h.publish(DOC_TOPIC, { u }, { event: 'snapshot' }).then(
    () => {
      stats.snapshots++;
      showStats();
    },
    (err) => console.warn('editor: snapshot not stored', err),
  );
}

// ---- carets: who is here and where ----

const carets = new Map(); // client id → {name, color, anchor (relative position)}

let caretTimer = null;
let caretForce = false;
let lastCaretSent = 0;
let lastAnchor = null;

const offCarets = h.subscribe(CARETS_TOPIC, { all: true }, (e) => {
  if (e.event === 'caret') {
    const d = e.data || {};
    if (typeof d.from !== 'string' || isMe(d.from) || typeof d.anchor !== 'string') return;
    let anchor;
    try {
      anchor = Y.decodeRelativePosition(fromBase64(d.anchor));
    } catch {
      return;
    }
    carets.set(d.from, { name: String(d.name || 'someone').slice(0, 40), color: safeColor(d.color), anchor });
    showPeople();
    scheduleCarets();
  } else if (e.event === 'herald.join') {
    // Someone arrived (or we did): carets are not stored, so tell them ours.
    sendCaret(true);
  } else if (e.event === 'herald.leave') {
    if (carets.delete(e.data && e.data.client)) {
      showPeople();
      scheduleCarets();
    }
  }
});
offCarets.ready.then(() => sendCaret(true));

// Sends our caret, at most every CARET_MS (the last position always goes).
function sendCaret(force = false) {
  caretForce = caretForce || force;
  if (caretTimer) return;
  const wait = Math.max(0, lastCaretSent + CARET_MS - Date.now());
  caretTimer = setTimeout(() => {
    caretTimer = null;
    const force = caretForce;
    caretForce = false;
    if (!h.clientId) {
      caretForce = force; // not subscribed yet: sent once it is
      return;
    }
    const head = ta.selectionDirection === 'backward' ? ta.selectionStart : ta.selectionEnd;
    const anchor = toBase64(Y.encodeRelativePosition(Y.createRelativePositionFromTypeIndex(ytext, head, -1)));
    if (anchor === lastAnchor && !force) return;
    lastAnchor = anchor;
    lastCaretSent = Date.now();
    h.publish(CARETS_TOPIC, { from: h.clientId, name: me.name, color: me.color, anchor }, { event: 'caret' }).catch(
      () => {
        lastAnchor = null; // try again with the next move
      },
    );
  }, wait);
}

for (const type of ['select', 'keyup', 'mouseup', 'focus']) ta.addEventListener(type, () => sendCaret());
ta.addEventListener('selectionchange', () => sendCaret());
document.addEventListener('selectionchange', () => {
  if (document.activeElement === ta) sendCaret();
});

// Draws the others' carets into the mirror: the same text, laid out like
// the textarea, with a zero-width marker where each caret is.
let caretFrame = 0;
function scheduleCarets() {
  if (!caretFrame) caretFrame = requestAnimationFrame(drawCarets);
}

function drawCarets() {
  caretFrame = 0;
  const text = ta.value;
  const marks = [];
  for (const [client, c] of carets) {
    const index = indexOf(c.anchor); // null until the text it points into has arrived
    if (index !== null && index <= text.length) marks.push({ client, index, ...c });
  }
  marks.sort((a, b) => a.index - b.index);
  const nodes = [];
  let at = 0;
  for (const m of marks) {
    nodes.push(text.slice(at, m.index));
    at = m.index;
    const caret = document.createElement('span');
    caret.className = 'caret';
    caret.dataset.client = m.client;
    caret.dataset.name = m.name;
    caret.dataset.index = String(m.index);
    caret.style.setProperty('--c', m.color);
    const label = document.createElement('span');
    label.className = 'caret-name';
    label.textContent = m.name;
    caret.append(label);
    nodes.push(caret);
  }
  // A zero-width space keeps a trailing newline's empty line, as the textarea shows it.
  nodes.push(text.slice(at) + '\u200b');
  mirror.replaceChildren(...nodes);
  fitMirror();
}

function fitMirror() {
  // The textarea's box without its scrollbar, scrolled like it.
  const style = getComputedStyle(ta);
  const borders = parseFloat(style.borderLeftWidth) + parseFloat(style.borderRightWidth);
  const scrollbar = ta.offsetWidth - ta.clientWidth - borders;
  mirror.style.width = `${ta.offsetWidth - scrollbar}px`;
  mirror.style.height = `${ta.offsetHeight}px`;
  mirror.scrollTop = ta.scrollTop;
}

ta.addEventListener('scroll', () => {
  mirror.scrollTop = ta.scrollTop;
});
new ResizeObserver(() => scheduleCarets()).observe(ta);

function showPeople() {
  const items = [person(me.name + ' (you)', me.color, me.name)];
  for (const [client, c] of carets) {
    const li = person(c.name, c.color, c.name);
    li.dataset.client = client;
    items.push(li);
  }
  $('people').replaceChildren(...items);
}

function person(label, color, name) {
  const li = document.createElement('li');
  li.textContent = label;
  li.dataset.name = name;
  li.style.setProperty('--c', color);
  return li;
}

function safeColor(c) {
  return typeof c === 'string' && /^(#[0-9a-f]{3,8}|hsl\([\d.,%\s]+\)|rgb\([\d.,%\s]+\))$/i.test(c) ? c : '#888';
}

// ---- status ----

function showStatus(s) {
  const el = $('status');
  el.dataset.state = s.state;
  const text = {
    connecting: 'connecting…',
    open: 'connected over WebSocket',
    reconnecting: `reconnecting${s.delay != null ? ` in ${Math.round(s.delay / 100) / 10} s` : ''}…`,
    closed: 'closed',
    error: s.reason,
  };
  el.textContent = text[s.state] || s.state;
}

function showStats() {
  let t = `${stats.applied} updates applied, ${stats.published} published`;
  if (stats.snapshots) t += `, ${stats.snapshots} snapshot${stats.snapshots === 1 ? '' : 's'} published`;
  if (stats.gaps) t += ' · the oldest updates were trimmed from history; a snapshot covers them';
  $('stats').textContent = t;
}

showPeople();
showStats();

// ---- base64 of bytes ----

function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function fromBase64(b64) {
  try {
    const s = atob(b64);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  } catch {
    return null;
  }
}
