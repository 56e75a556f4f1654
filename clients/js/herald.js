// Herald's browser client: one API over Server-Sent Events, WebSocket and long
// polling, with reconnection and exact resume. No dependencies; types in
// herald.d.ts; the guide in README.md next to this file.
//
// Layout
//   connect(), Client   topics and their handlers, cursors, status, publish, and
//                       the choice of transport ('auto' switches between them)
//   SseTransport        one EventSource per topic: an event of a multi-topic SSE
//                       stream does not say its topic, and EventSource cannot see it
//   WsTransport         one WebSocket for every topic; publishes go over it
//   PollTransport       one long poll for every topic
//
// Resume: for every topic the client keeps the cursor of the last event it handed
// to the page (or where the subscription started), and each (re)connect of each
// transport starts from there, so a reconnect or a change of transport loses
// nothing and repeats nothing. Cursors are opaque, with one exception the client
// relies on: several single-topic cursors joined with '.' are one cursor for all
// of those topics (later entries win), which is how a long poll resumes topics
// that were subscribed from different points.
//
// Credentials over time: a connection's credential has a deadline (a JWT's
// `exp`), where the server ends it (SSE `herald.disconnect` `token_expired`,
// WebSocket close 4001 `token_expired`). With `getToken`, the client fetches a
// fresh token ahead of the deadline (refreshDelay): in-band `auth` on the
// WebSocket, a new EventSource from the same cursor over SSE, the next request
// of a long poll. A connection that the server ends at its deadline anyway is
// resumed at once, by cursor, with a fresh token.
//
// Presence: on a topic whose policy has join_leave, the server sends
// `herald.join` and `herald.leave`. They are not stored and carry no cursor
// (no SSE `id:`, no JSON `id`), so they never move a topic's cursor; they go
// only to join/leave listeners, never to a subscribe handler.

const GAP = 'herald.gap';
const DISCONNECT = 'herald.disconnect';
const JOIN = 'herald.join';
const LEAVE = 'herald.leave';
// Herald's events without a cursor of their own.
const SIGNALS = [JOIN, LEAVE];
// The listener name of `subscribe(topic, {all: true})`: every event of the
// topic, whatever its name. Over SSE it needs a stream read with fetch
// (FetchEventStream): an EventSource delivers only the names it was told.
const ALL = '*';
const TRANSPORTS = ['auto', 'sse', 'ws', 'poll'];

// herald.disconnect reasons after which a stream comes back later: the
// server refused it for now (its `retry:` says when) or is going away.
const TEMPORARY = ['rate_limited', 'server_full', 'engine_unavailable', 'shutdown'];
const TOKEN_EXPIRED = 'token_expired';
// The server API closed every connection of the user (POST /v1/disconnect):
// the client stops, with no reconnect, and tells the page.
const DISCONNECTED = 'disconnected';
const CLOSE_DISCONNECTED = 4009;
// The WebSocket close code of a refused or expired credential.
const CLOSE_UNAUTHORIZED = 4001;
// A credential is refreshed, or a connection resumed at once after its
// credential ran out, at most this often; faster than that, the usual
// backoff applies (a getToken that keeps returning stale tokens).
const REFRESH_MIN_MS = 2000;
// The least delay after a temporary refusal whose `retry:` the client cannot
// read (EventSource keeps it to itself): the server's default. Like every
// reconnect delay, capped by the maxDelay option.
const TEMPORARY_MIN_MS = 2000;

const DEFAULTS = {
  transport: 'auto',
  token: undefined,
  getToken: undefined,
  withCredentials: false,
  initialDelay: 500,
  maxDelay: 30000,
  fallbackTimeout: 8000,
  connectTimeout: 10000,
  pollTimeout: 25,
  publishTimeout: 30000,
  maxSseTopics: 4,
  onStatus: undefined,
  onError: undefined,
};

/** An error the server or the client reports: a stable `code`, a readable `message`. */
export class HeraldError extends Error {
  constructor(code, message, { status, topic, retryAfter } = {}) {
    super(message);
    this.name = 'HeraldError';
    this.code = code;
    if (status !== undefined) this.status = status;
    if (topic !== undefined) this.topic = topic;
    if (retryAfter !== undefined) this.retryAfter = retryAfter;
  }
}

/** Connects to the Herald server at `url` (the prefix where its routes are mounted). */
export function connect(url, options = {}) {
  return new Client(url, options);
}

export default { connect, HeraldError };

class Client {
  constructor(url, options) {
    const opts = { ...DEFAULTS };
    for (const [k, v] of Object.entries(options || {})) if (v !== undefined) opts[k] = v;
    if (!TRANSPORTS.includes(opts.transport)) {
      throw new TypeError(`transport must be one of ${TRANSPORTS.join(', ')}`);
    }
    if (opts.getToken !== undefined && typeof opts.getToken !== 'function') {
      throw new TypeError('getToken must be a function returning a token (or a promise of one)');
    }
    this._opts = opts;
    this._base = baseUrl(url);
    this._credentials = opts.withCredentials ? 'include' : 'same-origin';
    this._topics = new Map();
    this._statusListeners = new Set();
    if (opts.onStatus) this._statusListeners.add(opts.onStatus);
    this._auto = opts.transport === 'auto';
    this._mode = this._auto ? 'sse' : opts.transport;
    this._transport = null;
    this._status = { state: 'idle', transport: this._mode };
    this._closed = false;
    this._wantsPublish = false;
    this._streamChecked = false;
    // This client's id on every long poll (`client=`): with it the server
    // keeps one presence entry per client across polls, so two pages of one
    // user are two entries.
    this._id = randomId();
    // This connection's id in presence lists, from the WebSocket's
    // `subscribed` answers (null over SSE and long polling).
    this._clientId = null;
    // Start once the page has made its first subscriptions, in one go.
    queueMicrotask(() => this._start());
  }

  /** The transport in use: 'sse', 'ws' or 'poll'. */
  get transport() {
    return this._mode;
  }

  /** The last status reported (see onStatus). */
  get status() {
    return { ...this._status };
  }

  /**
   * This client's id as presence lists and herald.join / herald.leave name
   * it (`client`): known once the WebSocket confirmed a subscription to a
   * topic that tracks presence; null before that, and over SSE and long
   * polling. A new WebSocket (a reconnect) gets a new id.
   */
  get clientId() {
    return this._clientId;
  }

  /**
   * Subscribes to `topic`. `handler` gets the topic's unnamed events and
   * `herald.gap`; named events go to `on(topic, name, fn)` listeners, and
   * `herald.join` / `herald.leave` to the `onJoin` / `onLeave` options.
   * With `{all: true}`, `handler` gets every event of the topic, its name
   * in `event` (null when unnamed), `herald.*` events included.
   * Returns a function that unsubscribes (all three); its `ready` promise
   * resolves once the subscription is live.
   */
  subscribe(topic, options, handler) {
    if (typeof options === 'function') {
      handler = options;
      options = {};
    }
    options = options || {};
    const entries = [{ name: options.all ? ALL : null, fn: handler }];
    if (options.onJoin != null) entries.push({ name: JOIN, fn: memberHandler(options.onJoin) });
    if (options.onLeave != null) entries.push({ name: LEAVE, fn: memberHandler(options.onLeave) });
    return this._listen(topic, entries, startOf(options));
  }

  /** Listens to the events named `event` of `topic` (subscribing to it if needed). */
  on(topic, event, handler) {
    if (typeof event !== 'string' || event === '') {
      throw new TypeError('name the event to listen to');
    }
    if (typeof handler !== 'function') throw new TypeError('handler must be a function');
    return this._listen(topic, [{ name: event === 'message' ? null : event, fn: handler }], undefined);
  }

  /**
   * Calls `handler` with `{topic, client, user, info}` when a client starts
   * receiving `topic` (`herald.join`, on a topic whose policy has
   * join_leave), subscribing to it if needed.
   */
  onJoin(topic, handler) {
    return this._listen(topic, [{ name: JOIN, fn: memberHandler(handler) }], undefined);
  }

  /** Like onJoin, when a client stops receiving `topic` (`herald.leave`). */
  onLeave(topic, handler) {
    return this._listen(topic, [{ name: LEAVE, fn: memberHandler(handler) }], undefined);
  }

  /** Adds a status listener; returns a function that removes it. */
  onStatus(fn) {
    this._statusListeners.add(fn);
    return () => this._statusListeners.delete(fn);
  }

  /**
   * Publishes `data` (any JSON value) to `topic`. Over the WebSocket when that is
   * the transport, else `POST /v1/publish`. Resolves to the event's id. Every
   * publish carries an idempotency id, so a retry after a reconnect happens once.
   */
  async publish(topic, data, options = {}) {
    if (this._closed) throw closedError();
    checkTopic(topic);
    if (data === undefined) throw new TypeError('data is required (any JSON value)');
    const msg = { topic, data, id: options.id ?? randomId() };
    if (options.event != null) msg.event = options.event;
    if (this._auto && !this._wantsPublish) {
      this._wantsPublish = true;
      this._maybeUpgrade('publish');
    }
    if (this._mode === 'ws') {
      if (!this._transport) this._start();
      return this._transport.publish(msg);
    }
    return this._httpPublish(msg);
  }

  /**
   * A page of `topic`'s retained events (`GET /v1/history`), oldest first:
   * `{events, cursor}`. Without `before`/`after`, the newest `limit`
   * (default 100, at most 1000); pass `cursor` back as `before` for older
   * events, or page forward with `after` (`'earliest'` for the oldest).
   */
  async history(topic, options = {}) {
    if (this._closed) throw closedError();
    checkTopic(topic);
    const q = new URLSearchParams({ topic });
    for (const k of ['limit', 'before', 'after']) {
      if (options[k] != null) q.set(k, String(options[k]));
    }
    const { headers } = await this._authed();
    const res = await fetch(`${this._base}/v1/history?${q}`, {
      headers,
      cache: 'no-store',
      credentials: this._credentials,
    });
    if (!res.ok) throw await httpError(res);
    const body = await res.json();
    if (!body || !Array.isArray(body.events) || typeof body.cursor !== 'string') {
      throw new HeraldError('bad_response', 'unexpected history answer');
    }
    return { events: body.events.map(jsonEvent), cursor: body.cursor };
  }

  /**
   * Who receives `topic`, a topic whose policy tracks presence:
   * `{topic, clients: [{client, user, info, transport}]}`. Over the WebSocket
   * when that is the transport and it is open, else `GET /v1/presence`.
   * Rejects with a HeraldError: `presence_disabled`, `forbidden`, ...
   */
  async presence(topic) {
    if (this._closed) throw closedError();
    checkTopic(topic);
    if (this._mode === 'ws' && this._transport && this._transport.connected()) {
      return this._transport.presence(topic);
    }
    return this._httpPresence(topic);
  }

  /** Closes every connection; no reconnect follows. */
  close() {
    if (this._closed) return;
    if (this._transport) this._transport.stop();
    this._transport = null;
    this._setStatus('closed');
    this._closed = true;
  }

  // ---- internals shared by the transports ----

  // Adds listeners ({name, fn}; name null: the subscribe handler) to
  // `topic`, subscribing to it if needed; the function returned removes them.
  _listen(topic, listeners, start) {
    if (this._closed) throw closedError();
    checkTopic(topic);
    for (const { fn } of listeners) {
      if (fn != null && typeof fn !== 'function') throw new TypeError('handler must be a function');
    }
    let state = this._topics.get(topic);
    const isNew = !state;
    if (isNew) {
      state = new TopicState(topic, start);
      this._topics.set(topic, state);
    }
    const entries = listeners.map(({ name, fn }) => ({ name, fn: fn || null }));
    for (const entry of entries) state.listeners.add(entry);
    if (isNew) {
      if (this._transport) this._transport.addTopic(state);
      this._maybeUpgrade('topics');
    } else if (this._transport && this._transport.addName) {
      const added = new Set(entries.map((e) => e.name).filter(Boolean));
      for (const name of added) this._transport.addName(state, name);
    }
    let done = false;
    const off = () => {
      if (done) return;
      done = true;
      for (const entry of entries) state.listeners.delete(entry);
      if (state.listeners.size === 0 && this._topics.get(topic) === state) {
        this._topics.delete(topic);
        if (this._transport) this._transport.removeTopic(state);
      }
    };
    off.ready = state.ready;
    return off;
  }

  _start() {
    if (this._closed || this._transport) return;
    if (this._auto && this._needsWs()) this._mode = 'ws';
    this._setStatus('connecting');
    this._transport = makeTransport(this._mode, this);
    this._transport.start();
  }

  _needsWs() {
    return this._wantsPublish || this._topics.size > this._opts.maxSseTopics;
  }

  // auto: SSE while the page only receives a few topics; WebSocket once it
  // publishes or subscribes to more topics than HTTP/1.1's six connections allow.
  _maybeUpgrade(reason) {
    if (!this._auto || this._mode !== 'sse' || !this._needsWs()) return;
    if (this._transport) this._switch('ws', reason);
    else this._mode = 'ws';
  }

  _switch(mode, reason) {
    if (this._closed || this._mode === mode) return;
    const old = this._transport;
    this._mode = mode;
    this._transport = makeTransport(mode, this);
    if (old) old.stop({ handOver: true });
    this._setStatus('connecting', { reason });
    this._transport.start();
  }

  _setStatus(state, extra = {}) {
    if (this._closed) return;
    const prev = this._status;
    if (state !== 'reconnecting' && prev.state === state && prev.transport === this._mode) return;
    const s = { state, transport: this._mode, ...extra };
    this._status = s;
    for (const fn of [...this._statusListeners]) safeCall(fn, s);
  }

  // The server closed every connection of this user on purpose: stop for
  // good (a reconnect would only be let in again until the credential is
  // revoked) and tell the page.
  _disconnected() {
    this._error(
      new HeraldError(DISCONNECTED, 'the server closed every connection of this user'),
    );
    this.close();
  }

  _error(err) {
    if (this._opts.onError) safeCall(this._opts.onError, err);
    else if (typeof console !== 'undefined') console.warn('herald:', err);
  }

  // A topic the server refuses (forbidden, invalid): drop it and tell the page.
  _topicFailed(state, err) {
    err.topic = state.topic;
    state.fail(err);
    if (this._topics.get(state.topic) === state) {
      this._topics.delete(state.topic);
      if (this._transport) this._transport.removeTopic(state);
    }
    this._error(err);
  }

  _dispatch(state, ev) {
    // herald.join / herald.leave have no cursor: the topic's stays.
    if (ev.id && !SIGNALS.includes(ev.event)) state.cursor = ev.id;
    if (this._closed || this._topics.get(state.topic) !== state) return;
    const name = ev.event && ev.event !== 'message' ? ev.event : null;
    for (const entry of [...state.listeners]) {
      if (!entry.fn) continue;
      const match =
        entry.name === ALL || entry.name === name || (entry.name === null && name === GAP);
      if (match) safeCall(entry.fn, ev);
    }
  }

  // An event as WebSocket and long polling carry it.
  _dispatchJson(state, m) {
    if (m && m.event === DISCONNECT) {
      // A long poll ended by the server API (POST /v1/disconnect).
      const { reason } = disconnectData(typeof m.data === 'string' ? m.data : JSON.stringify(m.data));
      if (reason === DISCONNECTED) this._disconnected();
      return;
    }
    this._dispatch(state, jsonEvent(m));
  }

  // For the Authorization header and the WebSocket auth message.
  async _headerToken() {
    const { getToken, token } = this._opts;
    if (getToken) {
      const t = await getToken();
      if (t != null && typeof t !== 'string') throw new TypeError('getToken must return a string');
      return t || null;
    }
    return token || null;
  }

  // For an EventSource URL, which cannot carry headers: getToken's token (it
  // must be short-lived), or a one-time token exchanged for the long-lived
  // `token`, which never goes into a URL itself. With the credential's
  // deadline (ms since the epoch) when it is known: a JWT's `exp`, or the
  // `expires_at` of the exchange (a one-time token carries the deadline of
  // the credential it was issued for).
  async _urlToken() {
    if (this._opts.getToken) {
      const token = await this._headerToken();
      return { token, deadline: tokenDeadline(token) };
    }
    if (this._opts.token) {
      const res = await fetch(`${this._base}/v1/tokens`, {
        method: 'POST',
        headers: { authorization: `Bearer ${this._opts.token}` },
        credentials: this._credentials,
        cache: 'no-store',
      });
      if (!res.ok) throw await httpError(res);
      const body = await res.json();
      const deadline =
        typeof body.expires_at === 'number' ? body.expires_at * 1000 : tokenDeadline(this._opts.token);
      return { token: body.token, deadline };
    }
    return { token: null, deadline: null };
  }

  async _authHeaders() {
    return (await this._authed()).headers;
  }

  // The Authorization header, with the deadline of its credential if known.
  async _authed() {
    const t = await this._headerToken();
    return {
      headers: t ? { authorization: `Bearer ${t}` } : {},
      deadline: tokenDeadline(t),
    };
  }

  async _poll(topics, cursor, timeoutSecs, signal, start) {
    const q = new URLSearchParams();
    for (const t of topics) q.append('topic', t);
    if (cursor) q.set('cursor', cursor);
    // A starting point applies only where the cursor names no position.
    else if (start) for (const [k, v] of Object.entries(start)) q.set(k, String(v));
    const { headers, deadline } = await this._authed();
    // A held poll does not outlive its credential: the next one carries a
    // fresh token.
    if (timeoutSecs > 0 && deadline != null) {
      const left = Math.floor((deadline - Date.now()) / 1000);
      if (left > 0) timeoutSecs = Math.max(1, Math.min(timeoutSecs, left));
    }
    q.set('timeout', String(timeoutSecs));
    q.set('client', this._id);
    const res = await fetch(`${this._base}/v1/poll?${q}`, {
      headers,
      signal,
      cache: 'no-store',
      credentials: this._credentials,
    });
    if (!res.ok) throw await httpError(res);
    const body = await res.json();
    if (!body || !Array.isArray(body.events) || typeof body.cursor !== 'string') {
      throw new HeraldError('bad_response', 'unexpected long-poll answer');
    }
    return body;
  }

  async _httpPresence(topic) {
    const { headers } = await this._authed();
    const res = await fetch(`${this._base}/v1/presence?${new URLSearchParams({ topic })}`, {
      headers,
      cache: 'no-store',
      credentials: this._credentials,
    });
    if (!res.ok) throw await httpError(res);
    return presenceAnswer(await res.json());
  }

  async _httpPublish(msg) {
    const backoff = new Backoff(this._opts);
    for (let attempt = 1; ; attempt++) {
      try {
        const res = await fetch(`${this._base}/v1/publish`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...(await this._authHeaders()) },
          body: JSON.stringify(msg),
          credentials: this._credentials,
          cache: 'no-store',
        });
        if (res.ok) return (await res.json()).id;
        const err = await httpError(res);
        if (![502, 503, 504].includes(res.status) || attempt >= 3) throw err;
      } catch (err) {
        // fetch rejects with a TypeError on network errors; retry those too,
        // with the same idempotency id.
        if (err instanceof HeraldError && ![502, 503, 504].includes(err.status)) throw err;
        if (attempt >= 3 || this._closed) throw err;
      }
      await sleep(backoff.next());
    }
  }

  // auto: does a stream reach the page as it is written? A buffering proxy
  // holds the body (sometimes the headers too), and EventSource cannot tell:
  // the first bytes (`retry:` and the starting cursor) dispatch no event.
  // So read them once with fetch. Network errors are thrown (the server is
  // down: retry); only silence means "buffered".
  async _probeStream(state) {
    const headers = await this._authHeaders();
    const q = new URLSearchParams({ topic: state.topic });
    if (state.cursor) q.set('last_event_id', state.cursor);
    const ctrl = new AbortController();
    let silent = false;
    const timer = setTimeout(() => {
      silent = true;
      ctrl.abort();
    }, this._opts.fallbackTimeout);
    try {
      const res = await fetch(`${this._base}/v1/sse?${q}`, {
        headers,
        signal: ctrl.signal,
        cache: 'no-store',
        credentials: this._credentials,
      });
      if (!res.ok || !res.body) return true; // a refusal, not buffering: the stream reports it
      await res.body.getReader().read();
      return true;
    } catch (err) {
      if (silent) return false;
      throw err;
    } finally {
      clearTimeout(timer);
      ctrl.abort();
    }
  }

  // auto: is the server reachable over plain HTTP although a WebSocket is not?
  async _reachable() {
    try {
      const res = await fetch(`${this._base}/healthz`, { cache: 'no-store' });
      return res.ok;
    } catch {
      return false;
    }
  }
}

class TopicState {
  constructor(topic, start) {
    this.topic = topic;
    this.cursor = (start && start.cursor) || null;
    // `{since: 'earliest'|'latest'}` or `{history: n}`: used until the
    // topic has a cursor.
    this.start = (start && start.point) || null;
    this.listeners = new Set();
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.ready.catch(() => {});
  }

  names() {
    const out = new Set();
    for (const l of this.listeners) if (l.name) out.add(l.name);
    return out;
  }

  markLive() {
    this._resolve();
  }

  fail(err) {
    this._reject(err);
  }
}

function makeTransport(mode, client) {
  if (mode === 'sse') return new SseTransport(client);
  if (mode === 'ws') return new WsTransport(client);
  return new PollTransport(client);
}

// ---- Server-Sent Events ----

class SseTransport {
  constructor(client) {
    this.c = client;
    this.streams = new Map();
    this.stopped = false;
  }

  start() {
    for (const state of this.c._topics.values()) this.addTopic(state);
    this._check();
  }

  addTopic(state) {
    const stream = new TopicStream(this, state);
    this.streams.set(state.topic, stream);
    stream.connect();
  }

  removeTopic(state) {
    const stream = this.streams.get(state.topic);
    if (stream && stream.state === state) {
      stream.stop();
      this.streams.delete(state.topic);
    }
    this._check();
  }

  addName(state, name) {
    const stream = this.streams.get(state.topic);
    if (stream) stream.listen(name);
  }

  stop() {
    this.stopped = true;
    for (const s of this.streams.values()) s.stop();
    this.streams.clear();
  }

  _check() {
    if (this.stopped) return;
    for (const s of this.streams.values()) if (!s.open) return;
    this.c._setStatus('open');
  }
}

class TopicStream {
  constructor(transport, state) {
    this.t = transport;
    this.c = transport.c;
    this.state = state;
    this.es = null;
    this.open = false;
    this.stopped = false;
    this.failedBeforeOpen = false;
    this.timer = 0;
    this.refreshTimer = 0;
    this.resetTimer = 0;
    this.lastResume = 0;
    this.gen = 0;
    this.backoff = new Backoff(this.c._opts);
    this.onEvent = (e) => {
      // `data` tells a published event from the stream's own `error`.
      if (e.target === this.es && typeof e.data === 'string') this.deliver(e);
    };
  }

  async connect() {
    if (this.stopped) return;
    const { c, state } = this;
    const gen = ++this.gen;
    try {
      if (!state.cursor || this.failedBeforeOpen) {
        // A zero-timeout poll: it says where "now" is, so that even a topic
        // with no event yet resumes exactly after a reconnect (EventSource
        // keeps the stream's starting cursor to itself), and it shows the
        // real status of a refused request (EventSource only says "error").
        const body = await c._poll([state.topic], state.cursor, 0, undefined, state.start);
        if (this.stale(gen)) return;
        for (const m of body.events) c._dispatchJson(state, m);
        state.cursor = body.cursor;
      }
      if (c._auto && !c._streamChecked) {
        const flowing = await c._probeStream(state);
        if (this.stale(gen)) return;
        if (!flowing) {
          c._switch('poll', 'stream buffered');
          return;
        }
        c._streamChecked = true;
      }
      const credential = await c._urlToken();
      if (this.stale(gen)) return;
      this.openStream(gen, credential);
    } catch (err) {
      if (this.stale(gen)) return;
      if (isRefusal(err)) {
        c._topicFailed(state, err);
        return;
      }
      if (err && err.status === 401) c._error(err);
      this.retry(err && err.message, { atLeast: err && err.retryAfter });
    }
  }

  // Opens the EventSource from the topic's cursor with `credential`
  // ({token, deadline}); with getToken, a refresh is planned ahead of the
  // deadline.
  openStream(gen, { token, deadline }) {
    const { c, state } = this;
    const q = new URLSearchParams({ topic: state.topic });
    if (state.cursor) q.set('last_event_id', state.cursor);
    if (token) q.set('token', token);
    const url = `${c._base}/v1/sse?${q}`;
    const init = { withCredentials: c._opts.withCredentials };
    // Every name (`all`) needs the stream read by hand.
    const es = state.names().has(ALL) ? new FetchEventStream(url, init) : new EventSource(url, init);
    this.es = es;
    // A published event named `open` or `error` also reaches these
    // handlers (EventSource dispatches by name): only the stream's own
    // events, which carry no data, count.
    es.onopen = (e) => {
      if (this.es !== es || isPublished(e)) return;
      this.open = true;
      this.failedBeforeOpen = false;
      // A temporary refusal also opens (200) before it ends: only a stream
      // that stays up resets the backoff.
      clearTimeout(this.resetTimer);
      this.resetTimer = setTimeout(() => this.backoff.reset(), 1000);
      state.markLive();
      this.t._check();
      this.planRefresh(gen, deadline);
    };
    // EventSource would reconnect by itself, but with the same URL (a used
    // token) and only while the server answers 200: reconnect here instead.
    es.onerror = (e) => {
      if (this.es === es && !isPublished(e)) this.retry('stream failed or refused');
    };
    es.addEventListener('message', this.onEvent);
    es.addEventListener(GAP, this.onEvent);
    for (const name of state.names()) this.listen(name);
    es.addEventListener(DISCONNECT, (e) => {
      if (this.es !== es) return;
      const { reason, retry } = disconnectData(e.data);
      const why = `server ended the stream: ${reason}`;
      if (reason === DISCONNECTED) this.c._disconnected();
      else if (reason === TOKEN_EXPIRED) this.retry(why, { now: true });
      else if (TEMPORARY.includes(reason)) this.retry(why, { atLeast: retry ?? TEMPORARY_MIN_MS });
      else this.retry(why);
    });
  }

  // With getToken and a known deadline: ahead of it, fetch a fresh token and
  // move to a new EventSource from the last cursor (the old one is closed
  // first, so nothing arrives twice; the new one resumes right after the
  // last event handed to the page, so nothing is missed).
  planRefresh(gen, deadline) {
    clearTimeout(this.refreshTimer);
    const delay = this.c._opts.getToken ? refreshDelay(deadline) : null;
    if (delay == null) return;
    this.refreshTimer = setTimeout(async () => {
      if (this.stale(gen)) return;
      let credential;
      try {
        credential = await this.c._urlToken();
      } catch (err) {
        // Keep the stream: the server ends it at the deadline, and the
        // reconnect then tries again.
        if (!this.stale(gen)) this.c._error(err);
        return;
      }
      if (this.stale(gen) || !this.es) return;
      const next = ++this.gen;
      this.es.close();
      this.es = null;
      this.openStream(next, credential);
    }, delay);
  }

  listen(name) {
    if (!this.es || name === GAP || name === DISCONNECT) return;
    if (name === ALL && !(this.es instanceof FetchEventStream)) {
      // An EventSource cannot deliver names it was not told: move to a
      // stream read by hand, from the last cursor (the old one is closed
      // first: nothing twice, nothing missed).
      const gen = ++this.gen;
      this.es.close();
      this.es = null;
      this.c
        ._urlToken()
        .then((credential) => {
          if (!this.stale(gen)) this.openStream(gen, credential);
        })
        .catch((err) => {
          if (!this.stale(gen)) this.retry(err && err.message);
        });
      return;
    }
    this.es.addEventListener(name, this.onEvent);
  }

  deliver(e) {
    this.c._dispatch(this.state, {
      topic: this.state.topic,
      // An EventSource keeps the last id across events without one (join,
      // leave): theirs is none.
      id: SIGNALS.includes(e.type) ? null : e.lastEventId || null,
      event: e.type === 'message' ? null : e.type,
      data: parseData(e.data),
      text: e.data,
      publishedAt: null,
    });
  }

  stale(gen) {
    return this.stopped || gen !== this.gen;
  }

  // Reconnects after the backoff; `now`: at once (the credential ran out:
  // a fresh token resumes the stream), unless that happened moments ago;
  // `atLeast`: not before that many ms (a temporary refusal).
  retry(reason, { now = false, atLeast = 0 } = {}) {
    if (this.stopped) return;
    this.gen++;
    if (this.es) {
      this.es.close();
      this.es = null;
    }
    if (!this.open) this.failedBeforeOpen = true;
    this.open = false;
    clearTimeout(this.timer);
    clearTimeout(this.refreshTimer);
    clearTimeout(this.resetTimer);
    let delay;
    if (now && Date.now() - this.lastResume >= REFRESH_MIN_MS) {
      this.lastResume = Date.now();
      delay = 0;
    } else {
      delay = Math.min(Math.max(this.backoff.next(), atLeast || 0), this.c._opts.maxDelay);
    }
    this.c._setStatus('reconnecting', {
      delay,
      attempt: this.backoff.attempt,
      reason,
      topic: this.state.topic,
    });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.refreshTimer);
    clearTimeout(this.resetTimer);
    if (this.es) this.es.close();
    this.es = null;
  }
}

// ---- WebSocket ----

class WsTransport {
  constructor(client) {
    this.c = client;
    this.ws = null;
    this.stopped = false;
    this.open = false;
    this.everOpened = false;
    this.backoff = new Backoff(client._opts);
    this.refs = 0;
    this.subs = new Map(); // ref -> TopicState, subscribes not yet answered
    this.publishes = new Map(); // ref -> {msg, resolve, reject, timer}
    this.queries = new Map(); // ref -> {topic, resolve, reject, timer}, presence requests
    this.timer = 0;
    this.refreshTimer = 0;
    this.authRef = 0; // the ref of the last auth message sent
    this.lastResume = 0;
    this.gen = 0;
  }

  start() {
    this.connect();
  }

  async connect() {
    if (this.stopped) return;
    const gen = ++this.gen;
    let token;
    try {
      // Sent as the first message, never in the URL.
      token = await this.c._headerToken();
    } catch (err) {
      if (this.stopped || gen !== this.gen) return;
      this.c._error(err);
      this.retry(err && err.message);
      return;
    }
    if (this.stopped || gen !== this.gen) return;
    const ws = new WebSocket(wsUrl(this.c._base));
    this.ws = ws;
    const connectTimer = setTimeout(() => {
      if (this.ws === ws && ws.readyState !== WebSocket.OPEN) ws.close();
    }, this.c._opts.connectTimeout);
    ws.onopen = () => {
      clearTimeout(connectTimer);
      if (this.ws !== ws) return;
      if (token) {
        this.authRef = ++this.refs;
        this.send({ type: 'auth', token, ref: this.authRef });
        // Planned again from the server's answer (`expires_at`).
        this.planRefresh(gen, tokenDeadline(token));
      }
      for (const state of this.c._topics.values()) this.subscribe(state);
      // Publishes not answered before a reconnect go again, with the same
      // idempotency id: the server stores each once.
      for (const p of this.publishes.values()) this.send(p.msg);
      if (this.subs.size === 0) this.markOpen();
    };
    ws.onmessage = (m) => {
      if (this.ws === ws) this.onMessage(m.data);
    };
    ws.onclose = (e) => {
      clearTimeout(connectTimer);
      if (this.ws === ws) this.onClose(e.code, e.reason);
    };
  }

  send(msg) {
    if (this.connected()) this.ws.send(JSON.stringify(msg));
  }

  connected() {
    return Boolean(this.ws && this.ws.readyState === WebSocket.OPEN);
  }

  subscribe(state) {
    const ref = ++this.refs;
    const msg = { type: 'subscribe', topic: state.topic, ref };
    if (state.cursor) msg.since = state.cursor;
    else if (state.start) Object.assign(msg, state.start);
    this.subs.set(ref, state);
    this.send(msg);
  }

  onMessage(text) {
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    const c = this.c;
    switch (m.type) {
      case 'event': {
        const state = c._topics.get(m.topic);
        if (state) c._dispatchJson(state, m);
        break;
      }
      case 'subscribed': {
        const state = this.subs.get(m.ref);
        this.subs.delete(m.ref);
        // This connection's presence id (topics that track presence).
        if (typeof m.client === 'string') c._clientId = m.client;
        // The topic's starting point; its events follow this answer.
        if (state && c._topics.get(state.topic) === state) {
          state.cursor = m.cursor;
          state.markLive();
        }
        if (this.subs.size === 0) this.markOpen();
        break;
      }
      case 'presence': {
        const q = this.queries.get(m.ref);
        if (q) {
          this.queries.delete(m.ref);
          clearTimeout(q.timer);
          try {
            q.resolve(presenceAnswer(m));
          } catch (err) {
            q.reject(err);
          }
        }
        break;
      }
      case 'published': {
        const p = this.publishes.get(m.ref);
        if (p) {
          this.publishes.delete(m.ref);
          clearTimeout(p.timer);
          p.resolve(m.id);
        }
        break;
      }
      case 'authenticated': {
        if (m.ref === this.authRef && typeof m.expires_at === 'number') {
          this.planRefresh(this.gen, m.expires_at * 1000);
        }
        break;
      }
      case 'error': {
        const err = new HeraldError(m.code || 'error', m.message || 'error');
        const p = this.publishes.get(m.ref) || this.queries.get(m.ref);
        const state = this.subs.get(m.ref);
        if (p) {
          this.publishes.delete(m.ref);
          this.queries.delete(m.ref);
          clearTimeout(p.timer);
          if (p.topic) err.topic = p.topic;
          p.reject(err);
        } else if (state) {
          this.subs.delete(m.ref);
          c._topicFailed(state, err);
          if (this.subs.size === 0) this.markOpen();
        } else {
          c._error(err);
        }
        break;
      }
      default:
        break; // unsubscribed
    }
  }

  // With getToken and a known deadline: ahead of it, send a fresh token
  // in-band (`auth`), which moves the connection's deadline; the server's
  // `authenticated` answer plans the next refresh.
  planRefresh(gen, deadline) {
    clearTimeout(this.refreshTimer);
    const delay = this.c._opts.getToken ? refreshDelay(deadline) : null;
    if (delay == null) return;
    this.refreshTimer = setTimeout(async () => {
      if (this.stopped || gen !== this.gen) return;
      let token;
      try {
        token = await this.c._headerToken();
      } catch (err) {
        // The server closes at the deadline; the reconnect tries again.
        if (!this.stopped && gen === this.gen) this.c._error(err);
        return;
      }
      if (this.stopped || gen !== this.gen || !token) return;
      this.authRef = ++this.refs;
      this.send({ type: 'auth', token, ref: this.authRef });
    }, delay);
  }

  markOpen() {
    if (this.open) return;
    this.open = true;
    this.everOpened = true;
    this.backoff.reset();
    this.c._setStatus('open');
  }

  async onClose(code, reason) {
    this.ws = null;
    this.open = false;
    this.c._clientId = null;
    clearTimeout(this.refreshTimer);
    if (this.stopped) return;
    this.settleQueries(true);
    const unanswered = [...this.subs.values()];
    this.subs.clear();
    if (code === CLOSE_DISCONNECTED) {
      this.c._disconnected();
      return;
    }
    if (code === CLOSE_UNAUTHORIZED && reason === TOKEN_EXPIRED) {
      // The credential ran out: resume at once with a fresh one.
      this.retry(`closed (${code} ${reason})`, { now: true });
      return;
    }
    if (code === 4003 && unanswered.length) {
      // A forbidden topic closes the socket. The server answers messages in
      // order, so the first subscribe left unanswered is the one refused.
      this.c._topicFailed(
        unanswered[0],
        new HeraldError('forbidden', reason || 'forbidden topic', { status: 403 }),
      );
    } else if (code === CLOSE_UNAUTHORIZED) {
      this.c._error(
        new HeraldError('unauthorized', reason || 'missing or invalid credential', { status: 401 }),
      );
    }
    // auto: a server that answers HTTP but never completes a WebSocket sits
    // behind something that blocks upgrades: long polling gets through.
    if (this.c._auto && !this.everOpened && code !== 4001 && code !== 4003) {
      const gen = this.gen;
      if (await this.c._reachable()) {
        if (!this.stopped && gen === this.gen) this.c._switch('poll', 'websocket unavailable');
        return;
      }
      if (this.stopped || gen !== this.gen) return;
    }
    this.retry(`closed (${code}${reason ? ` ${reason}` : ''})`);
  }

  // Reconnects after the backoff; `now`: at once, unless that happened
  // moments ago.
  retry(reason, { now = false } = {}) {
    if (this.stopped) return;
    clearTimeout(this.timer);
    let delay;
    if (now && Date.now() - this.lastResume >= REFRESH_MIN_MS) {
      this.lastResume = Date.now();
      delay = 0;
    } else {
      delay = this.backoff.next();
    }
    this.c._setStatus('reconnecting', { delay, attempt: this.backoff.attempt, reason });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  addTopic(state) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.subscribe(state);
  }

  removeTopic(state) {
    for (const [ref, s] of this.subs) if (s === state) this.subs.delete(ref);
    this.send({ type: 'unsubscribe', topic: state.topic });
    if (this.ws && this.subs.size === 0 && this.ws.readyState === WebSocket.OPEN) this.markOpen();
  }

  // `presence` over the socket, answered by its ref: `presence` or `error`.
  presence(topic) {
    return new Promise((resolve, reject) => {
      const ref = ++this.refs;
      const timer = setTimeout(() => {
        if (this.queries.delete(ref)) {
          reject(new HeraldError('timeout', 'the presence request was not answered in time', { topic }));
        }
      }, this.c._opts.publishTimeout);
      this.queries.set(ref, { topic, resolve, reject, timer });
      this.send({ type: 'presence', topic, ref });
    });
  }

  // Presence requests the socket will not answer: over HTTP instead
  // (`viaHttp`), or rejected.
  settleQueries(viaHttp) {
    for (const q of this.queries.values()) {
      clearTimeout(q.timer);
      if (viaHttp) this.c._httpPresence(q.topic).then(q.resolve, q.reject);
      else q.reject(closedError());
    }
    this.queries.clear();
  }

  publish(msg) {
    return new Promise((resolve, reject) => {
      const ref = ++this.refs;
      const wire = { type: 'publish', ...msg, ref };
      const timer = setTimeout(() => {
        if (this.publishes.delete(ref)) {
          reject(new HeraldError('timeout', 'the publish was not acknowledged in time'));
        }
      }, this.c._opts.publishTimeout);
      this.publishes.set(ref, { msg: wire, resolve, reject, timer });
      this.send(wire);
    });
  }

  stop({ handOver = false } = {}) {
    this.stopped = true;
    this.gen++;
    this.c._clientId = null;
    clearTimeout(this.timer);
    clearTimeout(this.refreshTimer);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
    for (const p of this.publishes.values()) {
      clearTimeout(p.timer);
      if (handOver) {
        const { type, ref, ...msg } = p.msg;
        this.c._httpPublish(msg).then(p.resolve, p.reject);
      } else {
        p.reject(closedError());
      }
    }
    this.publishes.clear();
    this.settleQueries(handOver);
  }
}

// ---- long polling ----

class PollTransport {
  constructor(client) {
    this.c = client;
    this.stopped = false;
    this.open = false;
    this.quick = true; // the next poll answers at once (a topic was added)
    this.changed = false;
    this.ctrl = null;
    this.wake = null;
    this.backoff = new Backoff(client._opts);
    this.lastResume = 0;
    // Carry on from what another transport delivered.
    this.cursor = joinCursors([...client._topics.values()].map((s) => s.cursor));
  }

  start() {
    this.loop();
  }

  async loop() {
    const c = this.c;
    while (!this.stopped) {
      const states = [...c._topics.values()];
      if (states.length === 0) {
        this.markOpen(states);
        await this.pause(24 * 3600 * 1000);
        continue;
      }
      this.changed = false;
      // A new topic with a starting point and no cursor yet: one zero-timeout
      // poll of it alone, so the starting point applies to it only.
      const fresh = states.find((s) => !s.cursor && s.start);
      if (fresh) {
        try {
          const body = await c._poll([fresh.topic], null, 0, undefined, fresh.start);
          if (this.stopped) return;
          for (const m of body.events) c._dispatchJson(fresh, m);
          fresh.cursor = body.cursor;
          this.cursor = joinCursors([this.cursor, body.cursor]);
        } catch (err) {
          if (this.stopped) return;
          if (isRefusal(err)) {
            c._topicFailed(fresh, err);
            continue;
          }
          await this.pause(this.backoff.next());
          continue;
        }
      }
      const hold = this.quick ? 0 : c._opts.pollTimeout;
      const ctrl = new AbortController();
      this.ctrl = ctrl;
      // A poll that outlives its hold by far sits on a dead connection.
      const timer = setTimeout(() => ctrl.abort(), (hold + 15) * 1000);
      try {
        const body = await c._poll(
          states.map((s) => s.topic),
          this.cursor,
          hold,
          ctrl.signal,
        );
        if (this.stopped) return;
        for (const m of body.events) {
          const state = c._topics.get(m.topic);
          if (state) c._dispatchJson(state, m);
          if (this.stopped) return;
        }
        this.cursor = body.cursor;
        this.quick = false;
        this.markOpen(states);
      } catch (err) {
        if (this.stopped) return;
        if (this.changed) continue;
        if (isRefusal(err)) {
          await this.dropRefused(states, err);
          continue;
        }
        if (
          err &&
          err.status === 401 &&
          this.open &&
          c._opts.getToken &&
          Date.now() - this.lastResume >= REFRESH_MIN_MS
        ) {
          // The credential ran out between two polls: the next one asks
          // getToken for a fresh token, at once.
          this.lastResume = Date.now();
          continue;
        }
        if (err && err.status === 401) c._error(err);
        this.open = false;
        this.quick = true;
        const delay = Math.min(
          Math.max(this.backoff.next(), (err && err.retryAfter) || 0),
          c._opts.maxDelay,
        );
        c._setStatus('reconnecting', {
          delay,
          attempt: this.backoff.attempt,
          reason: err && err.message,
        });
        await this.pause(delay);
      } finally {
        clearTimeout(timer);
      }
    }
  }

  markOpen(states) {
    for (const s of states) s.markLive();
    if (this.open) return;
    this.open = true;
    this.backoff.reset();
    this.c._setStatus('open');
  }

  // One poll names every topic, so a refusal does not say which topic was
  // refused: ask for each alone and drop the ones refused.
  async dropRefused(states, err) {
    let found = false;
    for (const s of states) {
      try {
        await this.c._poll([s.topic], null, 0);
      } catch (e) {
        if (isRefusal(e)) {
          found = true;
          this.c._topicFailed(s, e);
        }
      }
      if (this.stopped) return;
    }
    if (!found) {
      this.c._error(err);
      await this.pause(this.backoff.next());
    }
  }

  pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }

  interrupt() {
    this.changed = true;
    this.quick = true;
    if (this.ctrl) this.ctrl.abort();
    if (this.wake) this.wake();
  }

  addTopic(state) {
    if (state.cursor) this.cursor = joinCursors([this.cursor, state.cursor]);
    this.interrupt();
  }

  removeTopic() {
    this.interrupt();
  }

  stop() {
    this.stopped = true;
    if (this.ctrl) this.ctrl.abort();
    if (this.wake) this.wake();
  }
}

// ---- an event stream read with fetch ----

// The part of EventSource that TopicStream uses (addEventListener, onopen,
// onerror, close), reading the stream with fetch so that events of every
// name reach the page: listeners of type `*` get the events of types no
// one listens to. Parsing as the WHATWG HTML standard's "Server-sent
// events" section, 9.2.6 "Interpreting an event stream", says; the
// reconnection is TopicStream's, as for an EventSource.
class FetchEventStream {
  constructor(url, { withCredentials = false } = {}) {
    this.listeners = new Map();
    this.onopen = null;
    this.onerror = null;
    this.lastEventId = '';
    this.closed = false;
    this.ctrl = new AbortController();
    this.run(url, withCredentials);
  }

  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
  }

  close() {
    this.closed = true;
    this.ctrl.abort();
  }

  async run(url, withCredentials) {
    try {
      const res = await fetch(url, {
        headers: { accept: 'text/event-stream' },
        credentials: withCredentials ? 'include' : 'same-origin',
        cache: 'no-store',
        signal: this.ctrl.signal,
      });
      const type = res.headers.get('content-type') || '';
      if (!res.ok || !type.startsWith('text/event-stream') || !res.body) {
        if (res.body) res.body.cancel().catch(() => {});
        return this.fail();
      }
      if (this.closed) return;
      if (this.onopen) this.onopen();
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      let data = [];
      let name = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.closed) break;
        buffer += value;
        for (;;) {
          const end = buffer.search(/[\r\n]/);
          // A CR at the end may be the first half of a CRLF.
          if (end < 0 || (buffer[end] === '\r' && end === buffer.length - 1)) break;
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + (buffer.startsWith('\r\n', end) ? 2 : 1));
          if (line === '') {
            if (data.length) this.dispatch(name || 'message', data.join('\n'));
            data = [];
            name = '';
            continue;
          }
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let v = colon < 0 ? '' : line.slice(colon + 1);
          if (v.startsWith(' ')) v = v.slice(1);
          if (field === 'data') data.push(v);
          else if (field === 'event') name = v;
          else if (field === 'id' && !v.includes('\0')) this.lastEventId = v;
        }
      }
    } catch {
      // aborted, or the connection failed: both end the stream
    }
    this.fail();
  }

  dispatch(type, data) {
    if (this.closed) return;
    const fns = this.listeners.get(type) || this.listeners.get(ALL);
    if (!fns) return;
    const e = { type, data, lastEventId: this.lastEventId, target: this };
    for (const fn of [...fns]) fn(e);
  }

  fail() {
    if (this.closed) return;
    this.closed = true;
    if (this.onerror) this.onerror();
  }
}

// ---- helpers ----

// Whether an EventSource `open` / `error` event is a published event of
// that name (a MessageEvent with data) rather than the stream's own.
function isPublished(e) {
  return Boolean(e) && typeof e.data === 'string';
}

// Exponential backoff with jitter: each delay is drawn from [cap/2, cap], the
// cap doubling from initialDelay up to maxDelay.
class Backoff {
  constructor(opts) {
    this.initial = opts.initialDelay;
    this.max = opts.maxDelay;
    this.attempt = 0;
  }

  next() {
    const cap = Math.min(this.max, this.initial * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    return Math.round(cap / 2 + (Math.random() * cap) / 2);
  }

  reset() {
    this.attempt = 0;
  }
}

function baseUrl(url) {
  const u = new URL(url, typeof location !== 'undefined' ? location.href : undefined);
  return u.href.replace(/[?#].*$/, '').replace(/\/+$/, '');
}

function wsUrl(base) {
  return `${base.replace(/^http/, 'ws')}/v1/ws`;
}

// An event message of WebSocket, long polling and history as the page sees it.
function jsonEvent(m) {
  return {
    topic: m.topic,
    id: m.id ?? null,
    event: m.event ?? null,
    data: m.data,
    text: typeof m.data === 'string' ? m.data : JSON.stringify(m.data),
    publishedAt: m.published_at ?? null,
  };
}

// A presence entry: who (`user`, the credential's sub; `info`, its info
// claim), which connection (`client`) and how (`transport`).
function presenceMember(m) {
  return {
    client: String(m.client ?? ''),
    user: String(m.user ?? ''),
    info: m.info ?? null,
    transport: m.transport ?? null,
  };
}

// `GET /v1/presence`'s answer, or the WebSocket's `presence` message.
function presenceAnswer(body) {
  if (!body || typeof body.topic !== 'string' || !Array.isArray(body.clients)) {
    throw new HeraldError('bad_response', 'unexpected presence answer');
  }
  return { topic: body.topic, clients: body.clients.map(presenceMember) };
}

// A join/leave handler gets the event's data, `{topic, client, user, info}`.
function memberHandler(fn) {
  if (typeof fn !== 'function') throw new TypeError('handler must be a function');
  return (e) => {
    const d = e.data && typeof e.data === 'object' ? e.data : {};
    fn({
      topic: d.topic ?? e.topic,
      client: String(d.client ?? ''),
      user: String(d.user ?? ''),
      info: d.info ?? null,
    });
  };
}

// The subscribe options as a topic's start: a cursor (`since` that is not a
// named starting point) or a starting point (`since: 'earliest'|'latest'`,
// `history: n`). A cursor wins.
function startOf(options) {
  const { since, history } = options;
  if (since === 'earliest' || since === 'latest') return { point: { since } };
  if (since) return { cursor: since };
  if (history != null) {
    if (!Number.isInteger(history) || history < 0 || history > 1000) {
      throw new TypeError('history is a number of events from 0 to 1000');
    }
    return { point: { history } };
  }
  return null;
}

function joinCursors(cursors) {
  return cursors.filter(Boolean).join('.') || null;
}

function checkTopic(topic) {
  if (typeof topic !== 'string' || topic === '') {
    throw new TypeError('topic must be a non-empty string');
  }
}

// SSE carries text: JSON values arrive as their JSON text, strings as
// themselves. Parse what is JSON, keep the rest as text.
function parseData(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

// A herald.disconnect's data: its `reason`, and `retry` (ms) if it says.
function disconnectData(data) {
  try {
    const d = JSON.parse(data);
    return {
      reason: (d && d.reason) || 'unknown',
      retry: d && typeof d.retry === 'number' ? d.retry : undefined,
    };
  } catch {
    return { reason: 'unknown', retry: undefined };
  }
}

// When the credential `token` runs out, in ms since the epoch: a JWT's
// `exp`; null for other tokens (one-time tokens, opaque ones) and for a JWT
// without `exp`.
function tokenDeadline(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    return claims && typeof claims.exp === 'number' ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

// How long until a credential that runs out at `deadline` is refreshed: at
// 80 % of its remaining lifetime or 30 s before it, whichever is earlier,
// and never sooner than REFRESH_MIN_MS. null when the deadline is unknown or
// already past by the browser's clock (the server then ends the connection
// and the client resumes at once).
function refreshDelay(deadline, now = Date.now()) {
  if (deadline == null) return null;
  const left = deadline - now;
  if (!(left > 0)) return null;
  return Math.max(REFRESH_MIN_MS, Math.min(left * 0.8, left - 30_000));
}

// 400 (invalid topic), 403 (forbidden) and 404 (wrong URL) do not get better by retrying.
function isRefusal(err) {
  return err instanceof HeraldError && [400, 403, 404].includes(err.status);
}

async function httpError(res) {
  let code = `http_${res.status}`;
  let message = `the server answered ${res.status}`;
  // Seconds (RFC 9110 also allows a date; Herald sends seconds).
  const after = Number(res.headers.get('retry-after'));
  const retryAfter = after > 0 ? after * 1000 : undefined;
  try {
    const body = await res.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not JSON: keep the status
  }
  return new HeraldError(code, message, { status: res.status, retryAfter });
}

function closedError() {
  return new HeraldError('closed', 'the client is closed');
}

// An idempotency id (crypto.randomUUID needs a secure context; this does not).
function randomId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function safeCall(fn, arg) {
  try {
    fn(arg);
  } catch (err) {
    // A page's handler that throws must not stop delivery to the others.
    if (typeof reportError === 'function') {
      reportError(err);
    } else {
      setTimeout(() => {
        throw err;
      });
    }
  }
}
