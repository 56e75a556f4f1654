// LLM chat through Herald's relay, received over Server-Sent Events.
//
// A question is a `POST /v1/llm/chat`; the relay publishes the answer on its
// own topic (`llm/<id>`) as `token` events, then `done` or `error`. The page
// keeps the conversation in sessionStorage with, for each answer, its topic
// and the id of the last event shown: after a reload it shows what it had and
// subscribes from that id, so the answer goes on with nothing missing or
// doubled. The conversation link carries the questions and each answer's
// topic and first cursor, so another page can replay the same conversation.

import { connect } from '/client/herald.js';
import { token, showProblem } from '/examples/common.js';

const STORE = 'herald-examples-llm-chat';

const turnsEl = document.getElementById('turns');
const form = document.getElementById('ask');
const question = document.getElementById('question');
const sendBtn = document.getElementById('send');
const stopBtn = document.getElementById('stop');
const errorEl = document.getElementById('error');
const statusEl = document.getElementById('status');
const shareLink = document.getElementById('share-link');

const credential = token();
const h = connect(location.origin, {
  transport: 'sse',
  token: credential ?? undefined,
  onStatus: (s) => {
    statusEl.dataset.state = s.state;
    statusEl.textContent = s.state === 'reconnecting' ? 'reconnecting…' : `${s.state} (${s.transport})`;
  },
  onError: (e) => {
    showError(`${e.code}: ${e.message}`);
    showProblem(e);
  },
});

// ---- the conversation: {id, turns: [{q, gen, topic, cursor, last, text, done, note}]} ----
// `cursor` is where the answer starts, `last` the id of the last event shown
// (null before the first), `done` the finish reason once it ended.

function newConversation() {
  return { id: crypto.randomUUID(), turns: [] };
}

function save() {
  sessionStorage.setItem(STORE, JSON.stringify(conv));
}

function loadStored() {
  try {
    const c = JSON.parse(sessionStorage.getItem(STORE));
    return c && typeof c.id === 'string' && Array.isArray(c.turns) ? c : null;
  } catch {
    return null;
  }
}

// The link: `?chat=` base64url(JSON {id, turns: [{q, topic, cursor}]}).
function encodeLink(c) {
  const json = JSON.stringify({ id: c.id, turns: c.turns.map(({ q, topic, cursor }) => ({ q, topic, cursor })) });
  const bin = String.fromCharCode(...new TextEncoder().encode(json));
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function decodeLink(s) {
  try {
    const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/'));
    const c = JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (ch) => ch.charCodeAt(0))));
    if (typeof c.id !== 'string' || !Array.isArray(c.turns)) return null;
    const turns = c.turns.filter((t) => typeof t.q === 'string' && typeof t.topic === 'string' && typeof t.cursor === 'string');
    return { id: c.id, turns };
  } catch {
    return null;
  }
}

function updateLink() {
  const url = new URL(location.href);
  url.hash = '';
  if (conv.turns.length) url.searchParams.set('chat', encodeLink(conv));
  else url.searchParams.delete('chat');
  history.replaceState(null, '', url.pathname + url.search);
  shareLink.href = url.href;
  document.getElementById('share').hidden = !conv.turns.length;
}

// This tab's stored conversation, unless the link names another one: then the
// link's, whose answers are replayed from their first cursor.
function initial() {
  const param = new URLSearchParams(location.search).get('chat');
  const linked = param && decodeLink(param);
  const stored = loadStored();
  if (!linked) return stored || newConversation();
  const base = stored && stored.id === linked.id ? stored : { id: linked.id, turns: [] };
  for (const [i, t] of linked.turns.entries()) {
    if (base.turns[i]?.topic === t.topic) continue;
    base.turns[i] = { q: t.q, gen: null, topic: t.topic, cursor: t.cursor, last: null, text: '', done: null, note: '' };
  }
  return base;
}

let conv = initial();
save();
updateLink();

// ---- rendering ----

function turnEl(i) {
  let el = turnsEl.querySelector(`.turn[data-index="${i}"]`);
  if (!el) {
    el = document.createElement('div');
    el.className = 'turn';
    el.dataset.index = String(i);
    el.innerHTML = '<div class="q"></div><div class="a"><span class="answer"></span></div><div class="note"></div>';
    turnsEl.append(el);
  }
  return el;
}

function render(i) {
  const t = conv.turns[i];
  const el = turnEl(i);
  el.dataset.state = t.done === null ? 'streaming' : t.done === 'stop' ? 'done' : t.done;
  el.dataset.topic = t.topic;
  el.querySelector('.q').textContent = t.q;
  el.querySelector('.answer').textContent = t.text;
  el.querySelector('.note').textContent = t.note || (t.done && t.done !== 'stop' ? `(${t.done})` : '');
}

function busy(on) {
  sendBtn.disabled = on;
  stopBtn.hidden = !on || !conv.turns.at(-1)?.gen;
}

function showError(msg) {
  errorEl.textContent = msg;
}

// ---- following an answer ----

/**
 * Shows turn `i`'s answer from its last shown event (or its start) until it
 * ends; resolves then. One SSE stream, closed at the end.
 */
function follow(i) {
  const t = conv.turns[i];
  return new Promise((resolve) => {
    const offs = [];
    const finish = (reason, note = '') => {
      t.done = reason;
      t.note = note;
      save();
      render(i);
      for (const off of offs) off();
      resolve();
    };
    // The subscription starts right after the last event this page showed.
    offs.push(
      h.subscribe(t.topic, { since: t.last || t.cursor }, (e) => {
        if (e.event === 'herald.gap') finish('gap', 'part of this answer is no longer kept by the server');
      }),
    );
    offs.push(
      h.on(t.topic, 'token', (e) => {
        t.text += e.data?.content ?? '';
        t.last = e.id;
        save(); // the text and the id together: a reload resumes exactly here
        render(i);
      }),
    );
    offs.push(
      h.on(t.topic, 'done', (e) => {
        t.last = e.id;
        const reason = e.data?.finish_reason || 'stop';
        finish(reason === 'stop' || reason === 'length' ? 'stop' : reason, reason === 'length' ? '(cut at the length limit)' : '');
      }),
    );
    offs.push(
      h.on(t.topic, 'error', (e) => {
        t.last = e.id;
        finish('error', `the model failed: ${e.data?.message ?? 'unknown error'}`);
      }),
    );
  });
}

/** Every unfinished answer, in order (a replayed conversation, or one streaming at the reload). */
async function followAll() {
  busy(true);
  for (const i of conv.turns.keys()) {
    if (conv.turns[i].done === null) await follow(i);
  }
  busy(false);
}

// ---- asking ----

function headers() {
  const hd = { 'content-type': 'application/json' };
  if (credential) hd.authorization = `Bearer ${credential}`;
  return hd;
}

form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const q = question.value.trim();
  if (!q || sendBtn.disabled) return;
  showError('');
  busy(true);
  // The whole conversation goes to the model; the offline one reads the last question.
  const messages = [];
  for (const t of conv.turns) {
    messages.push({ role: 'user', content: t.q });
    if (t.text) messages.push({ role: 'assistant', content: t.text });
  }
  messages.push({ role: 'user', content: q });
  let started;
  try {
    const res = await fetch('/v1/llm/chat', {
      method: 'POST',
      headers: headers(),
      body: JSON.stringify({ messages, share: 'everyone' }),
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${res.status}`);
    started = body;
  } catch (err) {
    showError(`could not start the answer: ${err.message}`);
    busy(false);
    return;
  }
  question.value = '';
  conv.turns.push({ q, gen: started.id, topic: started.topic, cursor: started.cursor, last: null, text: '', done: null, note: '' });
  save();
  updateLink();
  render(conv.turns.length - 1);
  await followAll();
});

question.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey) {
    ev.preventDefault();
    form.requestSubmit();
  }
});

stopBtn.addEventListener('click', async () => {
  const t = conv.turns.at(-1);
  if (!t?.gen) return;
  const res = await fetch(`/v1/llm/chat/${encodeURIComponent(t.gen)}/cancel`, { method: 'POST', headers: headers() });
  if (!res.ok) showError(`could not stop it: HTTP ${res.status}`);
  // The relay ends the topic with `done` {finish_reason: "cancelled"}.
});

document.getElementById('new').addEventListener('click', () => {
  if (sendBtn.disabled) return;
  conv = newConversation();
  save();
  updateLink();
  turnsEl.replaceChildren();
});

conv.turns.forEach((_, i) => render(i));
followAll();
