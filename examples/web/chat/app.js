// Chat: one WebSocket per page, a topic per room (`examples/chat/<room>`).
//
// Messages are events named `message` with {from, name, text}; the last 50
// events of the room come from its history on load, then live ones follow.
// Who is here comes from presence (h.presence once subscribed, then
// herald.join / herald.leave). A visitor without a token has no `info` in
// presence, so every page says `hello` ({from, name}) once subscribed and
// whenever someone joins: that is how the list maps client ids to names.

import { connect } from '/client/herald.js';
import { colorOf, token, userName, showProblem } from '/examples/common.js';

const $ = (id) => document.getElementById(id);

const wanted = new URLSearchParams(location.search).get('room');
const room = /^[A-Za-z0-9_-]{1,40}$/.test(wanted || '') ? wanted : 'lobby';
const topic = `examples/chat/${room}`;
const me = userName();

const names = new Map(); // client id -> display name, learned from `hello` and messages
const members = new Map(); // client id -> presence entry {client, user, info}: who is here now
let announcedAs = null; // the client id our last `hello` was sent as
let wasOpen = false;

$('room').value = room;
$('me').textContent = me;
document.title = `#${room} · Chat · Herald examples`;

const h = connect(location.origin, {
  transport: 'ws',
  token: token(),
  onStatus: showStatus,
  onError: (err) => {
    line(`Error: ${err.message}`, 'error');
    showProblem(err);
  },
});

// Every event of the room, with its name: messages, hellos, joins, leaves.
const sub = h.subscribe(topic, { all: true, history: 50 }, (e) => {
  const d = e.data;
  switch (e.event) {
    case 'herald.join':
      return joined(d);
    case 'herald.leave':
      return left(d);
    case 'hello':
      if (d && typeof d.from === 'string' && typeof d.name === 'string') learn(d.from, d.name);
      return;
    case 'herald.gap':
      return line('Some earlier messages are no longer kept.', 'note');
    case 'message':
    case null:
      if (d && typeof d.text === 'string') showMessage(d);
      return;
    default:
  }
});
sub.ready.then(resync, () => {}); // a refusal is shown by onError

// ---- presence: who is here, by name ----

/**
 * The name to show for a client id: its credential's (`info.name` or `sub`,
 * checked by the server), else the name its hello claims (anyone may claim
 * any name on a server without credentials), else the id.
 */
function nameOf(client) {
  if (client && client === h.clientId) return me;
  const verified = verifiedName(client);
  if (verified) return verified;
  if (names.has(client)) return names.get(client);
  return String(client || 'someone');
}

/** The name a client's credential gives it, if it has one. */
function verifiedName(client) {
  const m = client ? members.get(client) : null;
  const name = m?.info?.name || m?.user;
  return name ? String(name).slice(0, 40) : '';
}

/** A name as a coloured element that follows what we learn about `client`. */
function who(client, name = nameOf(client)) {
  const el = document.createElement('span');
  el.className = 'who';
  if (client) el.dataset.client = client;
  el.textContent = name;
  el.style.color = colorOf(name);
  return el;
}

/** Remembers `client`'s name and shows it wherever that client appears. */
function learn(client, name) {
  name = String(name).slice(0, 40);
  if (!client || names.get(client) === name) return;
  names.set(client, name);
  for (const el of document.querySelectorAll(`.who[data-client="${CSS.escape(client)}"]`)) {
    el.textContent = name;
    el.style.color = colorOf(name);
  }
  renderMembers();
}

/** Says our name to the room (once per client id, or again for a newcomer). */
function announce({ again = false } = {}) {
  const id = h.clientId;
  if (!id || (!again && announcedAs === id)) return;
  announcedAs = id;
  learn(id, me);
  h.publish(topic, { from: id, name: me }, { event: 'hello' }).catch(() => {});
}

/** Who is here, from presence; then our hello. After a reconnect too (our id changed). */
async function resync() {
  try {
    const p = await h.presence(topic);
    members.clear();
    for (const m of p.clients) members.set(m.client, m);
    renderMembers();
  } catch (err) {
    line(`Presence unavailable: ${err.message}`, 'error');
  }
  announce();
}

function joined(m) {
  members.set(m.client, m);
  renderMembers();
  const li = line(' joined', 'note');
  li.dataset.join = m.client;
  li.prepend(who(m.client));
  // A newcomer learns our name from our hello; our own join: say hello if not yet.
  if (m.client === h.clientId) announce();
  else announce({ again: true });
}

function left(m) {
  const name = nameOf(m.client);
  members.delete(m.client);
  renderMembers();
  const li = line(' left', 'note');
  li.dataset.leave = m.client;
  li.prepend(who(m.client, name));
}

function renderMembers() {
  const list = [...members.values()]
    .map((m) => ({ client: m.client, name: nameOf(m.client) }))
    .sort((a, b) => a.name.localeCompare(b.name));
  $('members').replaceChildren(
    ...list.map(({ client, name }) => {
      const li = document.createElement('li');
      li.dataset.client = client;
      li.dataset.name = name;
      li.style.setProperty('--dot', colorOf(name));
      li.textContent = client === h.clientId ? `${name} (you)` : name;
      return li;
    }),
  );
  $('member-count').textContent = String(list.length);
}

// ---- messages ----

/** Appends a line to the message list, keeping the newest 300; returns it. */
function line(text, className) {
  const list = $('messages');
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 40;
  const li = document.createElement('li');
  if (className) li.className = className;
  li.textContent = text;
  list.append(li);
  while (list.children.length > 300) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
  return li;
}

function showMessage({ from, name, text }) {
  name = verifiedName(from) || (typeof name === 'string' && name ? name : nameOf(from));
  if (typeof from === 'string' && from) learn(from, name);
  const li = line('', 'msg');
  const nameEl = who(null, name.slice(0, 40));
  const textEl = document.createElement('span');
  textEl.className = 'text';
  textEl.textContent = text;
  li.append(nameEl, textEl);
}

$('send').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('text');
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  try {
    // Shown when it comes back from the room, like everyone else's.
    await h.publish(topic, { from: h.clientId, name: me, text }, { event: 'message' });
  } catch (err) {
    // Refused: by the publish hook (its reason), the rate limit, a lost connection...
    const li = line(`Not sent: “${text}” — ${err.message}`, 'error');
    li.dataset.error = err.code || 'error';
  }
});

$('room-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const params = new URLSearchParams(location.search);
  params.set('room', $('room').value.trim());
  location.search = params.toString();
});

function showStatus(s) {
  const el = $('status');
  el.dataset.state = s.state;
  el.textContent =
    s.state === 'open'
      ? `connected over WebSocket to #${room}`
      : s.state === 'reconnecting'
        ? `reconnecting in ${Math.round((s.delay || 0) / 1000)} s…`
        : s.state;
  // Back after a drop: a new client id, and we missed joins and leaves.
  if (s.state === 'open' && wasOpen) resync();
  if (s.state === 'open') wasOpen = true;
}
