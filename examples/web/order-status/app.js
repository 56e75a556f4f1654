// Order status over SSE: every event of orders/<id>, the retained ones
// first (since: 'earliest'), shown as a timeline and a step indicator.

import { connect } from '/client/herald.js';
import { token, showProblem } from '/examples/common.js';

const $ = (id) => document.getElementById(id);
const STEPS = ['placed', 'paid', 'shipped', 'delivered'];

const h = connect(location.origin, {
  token: token(),
  transport: 'sse',
  onStatus: (s) => {
    $('status').dataset.state = s.state;
    $('status').textContent = s.state === 'reconnecting' ? `reconnecting (${s.reason || 'connection lost'})` : s.state;
  },
  onError: (err) => {
    showProblem(err);
    $('error').dataset.code = err.code || 'error';
    $('error').textContent = `${err.code || 'error'}${err.status ? ` (${err.status})` : ''}: ${err.message}`;
  },
});

let off = null;

function watch(order) {
  const topic = `orders/${order}`;
  if (off) off();
  $('timeline').replaceChildren();
  $('empty').hidden = false;
  $('error').textContent = '';
  $('topic').textContent = topic;
  setStep(null);
  renderCurl();
  try {
    off = h.subscribe(topic, { all: true, since: 'earliest' }, show);
    off.ready.catch(() => {}); // a refusal is reported through onError
  } catch (err) {
    off = null;
    $('error').textContent = `${err.message}`;
  }
}

function show(e) {
  const li = document.createElement('li');
  if (e.id) li.dataset.id = e.id;
  const name = document.createElement('span');
  name.className = 'name';
  if (e.event === null) {
    name.classList.add('unnamed');
    name.textContent = '(unnamed)';
  } else {
    name.textContent = e.event;
  }
  if (e.event === 'herald.gap') li.className = 'gap';
  li.dataset.event = e.event ?? '';
  const data = document.createElement('code');
  data.className = 'data';
  data.textContent = e.text;
  const time = document.createElement('span');
  time.className = 'time';
  time.textContent = new Date(e.publishedAt ?? Date.now()).toLocaleTimeString();
  li.append(name, ' ', data, ' ', time);
  $('timeline').append(li);
  $('empty').hidden = true;
  const status = e.data && typeof e.data === 'object' ? e.data.status : undefined;
  if (STEPS.includes(status)) setStep(status);
}

// Steps before the current one are done, the current one is active.
function setStep(status) {
  const at = STEPS.indexOf(status);
  for (const li of $('steps').children) {
    const i = STEPS.indexOf(li.dataset.step);
    li.classList.toggle('done', at >= 0 && i < at);
    li.classList.toggle('active', i === at);
    if (i === at) li.setAttribute('aria-current', 'step');
    else li.removeAttribute('aria-current');
  }
}

function renderCurl() {
  const body = `{"topic": "orders/${currentOrder()}", "event": "order-update", "data": {"status": "${$('next').value}"}}`;
  $('curl').textContent =
    `curl -X POST ${location.origin}/v1/publish \\\n` +
    `  -H 'content-type: application/json' \\\n` +
    `  -d '${body}'`;
}

function currentOrder() {
  return $('order').value.trim() || '123';
}

$('order-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const order = currentOrder();
  const url = new URL(location.href);
  url.searchParams.set('order', order);
  history.replaceState(null, '', url);
  watch(order);
});
$('next').addEventListener('change', renderCurl);

const initial = new URLSearchParams(location.search).get('order');
if (initial) $('order').value = initial;
watch(currentOrder());
