// Types for herald.js, Herald's browser client.

/** Which transport carries events. `auto` picks one (see ConnectOptions.transport). */
export type Transport = 'sse' | 'ws' | 'poll';

/** An event as every transport delivers it. */
export interface HeraldEvent<T = unknown> {
  /** The topic it was published to. */
  topic: string;
  /**
   * Its cursor: hand it back as `since` to resume right after this event.
   * `null` for `herald.join` / `herald.leave`, which have none.
   */
  id: string | null;
  /**
   * Its name; `null` for unnamed events. `herald.gap` when events were
   * missed; `herald.join` / `herald.leave` on a topic with join_leave.
   */
  event: string | null;
  /**
   * The data as it was published (any JSON value). Over SSE, which carries
   * text, data that parses as JSON is parsed: a string published as `"42"`
   * arrives as the number 42 there.
   */
  data: T;
  /** The data as text: strings as they are, other values as compact JSON. */
  text: string;
  /** Milliseconds since the Unix epoch; `null` over SSE, which does not carry it. */
  publishedAt: number | null;
}

/** The data of a `herald.gap` event. */
export interface GapData {
  topic: string;
  reason: 'history_truncated' | 'epoch_changed' | 'unknown_position' | string;
}

export type Handler<T = unknown> = (event: HeraldEvent<T>) => void;

/**
 * A client that receives a topic: one connection (an SSE stream, a
 * WebSocket) or one long-polling client (one `connect()` in one page).
 */
export interface PresenceMember<Info = unknown> {
  /**
   * Its id, unique among the topic's members; a long-polling client keeps
   * its id across polls.
   */
  client: string;
  /** The credential's `sub`; empty for a connection without one. */
  user: string;
  /** The credential's `info` claim (e.g. `{"name":"Ada"}`), or `null`. */
  info: Info | null;
  /** How it receives the topic. */
  transport: Transport;
}

/** The answer of `presence(topic)`. */
export interface Presence<Info = unknown> {
  topic: string;
  /** Every client receiving the topic now, on every node; ordered by `client`. */
  clients: PresenceMember<Info>[];
}

/** The data of a `herald.join` or `herald.leave` event: who, on which topic. */
export interface PresenceChange<Info = unknown> {
  topic: string;
  /** The member's `client` (as in `presence()`). */
  client: string;
  /** The credential's `sub`; empty for a connection without one. */
  user: string;
  /** The credential's `info` claim, or `null`. */
  info: Info | null;
}

/**
 * Called when a client starts (`onJoin`) or stops (`onLeave`) receiving a
 * topic whose policy has `join_leave = true`.
 */
export type PresenceHandler<Info = unknown> = (change: PresenceChange<Info>) => void;

export interface Status {
  state: 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';
  transport: Transport;
  /** reconnecting: milliseconds until the next attempt. */
  delay?: number;
  /** reconnecting: how many attempts in a row have failed. */
  attempt?: number;
  /**
   * Why the connection dropped, or why the transport changed, e.g.
   * `server ended the stream: token_expired` (resumed at once, `delay` 0) or
   * `server ended the stream: rate_limited` (a temporary refusal).
   */
  reason?: string;
  /** SSE (one stream per topic): the topic whose stream is reconnecting. */
  topic?: string;
}

export interface ConnectOptions {
  /**
   * `sse`, `ws`, `poll`, or `auto` (the default): Server-Sent Events while the
   * page only receives (up to `maxSseTopics` topics), WebSocket once it
   * publishes or subscribes to more, long polling when a stream turns out to be
   * buffered (no byte within `fallbackTimeout`) or WebSockets cannot get through.
   */
  transport?: 'auto' | Transport;
  /**
   * A credential of any lifetime. It is sent in the Authorization header or
   * the WebSocket `auth` message, and exchanged at `POST /v1/tokens` for a
   * one-time token where a URL must carry one (EventSource): never put in a URL.
   */
  token?: string;
  /**
   * Called before every request that needs a credential: each EventSource and
   * WebSocket (re)connect, each long poll, each HTTP publish. Its token may go
   * into an EventSource URL, so return a short-lived one (for instance from
   * `POST /v1/tokens`); cache it yourself while it is valid if you like.
   *
   * Also called ahead of a credential's deadline: when the token is a JWT
   * with `exp`, the client refreshes at 80 % of its remaining lifetime or 30 s
   * before `exp`, whichever is earlier (at most every 2 s): in-band over the
   * WebSocket (`{"type":"auth"}`, same `sub`), with a new EventSource from the
   * last cursor over SSE, on the next request of a long poll. A connection the
   * server ends at its deadline (`token_expired`) resumes at once, by cursor,
   * with a fresh token.
   */
  getToken?: () => string | null | Promise<string | null>;
  /** Send cookies to another origin (EventSource withCredentials, fetch credentials: 'include'). */
  withCredentials?: boolean;
  /** First reconnect delay in ms (default 500); doubles up to maxDelay, with jitter. */
  initialDelay?: number;
  /** Longest reconnect delay in ms (default 30000). */
  maxDelay?: number;
  /** auto: ms to wait for a stream's first bytes before falling back to long polling (default 8000). */
  fallbackTimeout?: number;
  /** ms for a WebSocket to open (default 10000). */
  connectTimeout?: number;
  /** Seconds the server holds a long poll (default 25). */
  pollTimeout?: number;
  /** ms to wait for a WebSocket publish's acknowledgement, or presence answer (default 30000). */
  publishTimeout?: number;
  /** auto: most topics served by SSE before switching to one WebSocket (default 4). */
  maxSseTopics?: number;
  /** Status changes: connecting, open, reconnecting (with the delay), closed. */
  onStatus?: (status: Status) => void;
  /** Errors that are not a publish's: refused topics, refused credentials. */
  onError?: (error: HeraldError) => void;
}

export interface SubscribeOptions {
  /**
   * Resume right after this cursor (an event's `id`) instead of from now;
   * or a starting point: `'earliest'` (every retained event, then live) or
   * `'latest'` (the newest event, then live). A cursor wins over `history`.
   */
  since?: 'earliest' | 'latest' | (string & {});
  /** Start with the newest `history` retained events (0 to 1000), then live. */
  history?: number;
  /**
   * The handler gets every event of the topic, named or not, with its name
   * in `event` (`null` when unnamed): `herald.gap`, `herald.join` and
   * `herald.leave` included. Over SSE the stream is then read with `fetch`
   * (an `EventSource` only delivers the names it is told in advance).
   */
  all?: boolean;
  /** `herald.join` of the topic (see `Herald.onJoin`); removed by the same unsubscribe. */
  onJoin?: PresenceHandler;
  /** `herald.leave` of the topic (see `Herald.onLeave`); removed by the same unsubscribe. */
  onLeave?: PresenceHandler;
}

export interface HistoryOptions {
  /** Events per page: 1 to 1000, default 100. */
  limit?: number;
  /** The newest events before this cursor (the `cursor` of an earlier page, or an event's `id`). */
  before?: string;
  /** The oldest events after this cursor; `'earliest'` for the oldest retained. */
  after?: 'earliest' | (string & {});
}

/** A page of history. */
export interface HistoryPage<T = unknown> {
  /** Oldest first; a `herald.gap` event first when the cursor could not be honoured. */
  events: HeraldEvent<T>[];
  /**
   * Where the next page starts: pass it as `after` after an `after` page,
   * as `before` otherwise. It is also a cursor to resume from (`since`).
   */
  cursor: string;
}

/** Stops listening. When a topic has no listener left, it is unsubscribed. */
export interface Unsubscribe {
  (): void;
  /** Resolves once the subscription is live: from then on nothing published to it is missed. */
  readonly ready: Promise<void>;
}

export interface PublishOptions {
  /** The event's name (listeners: `on(topic, name, fn)`). */
  event?: string;
  /** An idempotency id; one is generated when absent, so retries publish once. */
  id?: string;
}

export interface Herald {
  /** The transport in use now. */
  readonly transport: Transport;
  /** The last status reported. */
  readonly status: Status;
  /**
   * This client's id as presence lists and `herald.join` / `herald.leave`
   * name it (`PresenceMember.client`), known once the WebSocket confirmed a
   * subscription to a topic that tracks presence; `null` before, and over
   * SSE and long polling. A reconnected WebSocket gets a new id. Pages put
   * it in what they publish (`{from: h.clientId, ...}`) to match a leave to
   * the sender's messages.
   */
  readonly clientId: string | null;
  /**
   * The topic's unnamed events, and `herald.gap` when events were missed;
   * never `herald.join` / `herald.leave` (options `onJoin` / `onLeave`).
   * With `{all: true}`: every event of the topic with its name.
   */
  subscribe<T = unknown>(topic: string, handler?: Handler<T>): Unsubscribe;
  subscribe<T = unknown>(topic: string, options: SubscribeOptions, handler?: Handler<T>): Unsubscribe;
  /** The topic's events named `event` (subscribing to the topic if needed). */
  on<T = unknown>(topic: string, event: string, handler: Handler<T>): Unsubscribe;
  /**
   * A client started receiving the topic (`herald.join`, sent on topics
   * whose policy has `join_leave = true`; this client's own join too).
   * Subscribes to the topic if needed. Joins and leaves are live only: not
   * stored, not replayed on resume, and they never move the topic's cursor.
   */
  onJoin<Info = unknown>(topic: string, handler: PresenceHandler<Info>): Unsubscribe;
  /**
   * A client stopped receiving the topic (`herald.leave`): its connection
   * ended or unsubscribed; a long-polling client after the server's
   * `--poll-presence-grace` without a poll.
   */
  onLeave<Info = unknown>(topic: string, handler: PresenceHandler<Info>): Unsubscribe;
  /** Adds a status listener; returns a function that removes it. */
  onStatus(listener: (status: Status) => void): () => void;
  /** Publishes; resolves to the event's id once the server has stored it. */
  publish(topic: string, data: unknown, options?: PublishOptions): Promise<string>;
  /** A page of the topic's retained events (`GET /v1/history`), oldest first. */
  history<T = unknown>(topic: string, options?: HistoryOptions): Promise<HistoryPage<T>>;
  /**
   * Who receives the topic now, on a topic whose policy has
   * `presence = true`: over the WebSocket when that is the transport and it
   * is open, else `GET /v1/presence`. Needs subscribe rights on the topic.
   * Rejects with a HeraldError: `presence_disabled` (the topic's policy does
   * not track presence), `forbidden`, `unauthorized`, `invalid_topic`.
   */
  presence<Info = unknown>(topic: string): Promise<Presence<Info>>;
  /** Closes every connection; no reconnect follows. */
  close(): void;
}

export class HeraldError extends Error {
  constructor(
    code: string,
    message: string,
    extra?: { status?: number; topic?: string; retryAfter?: number },
  );
  /**
   * Herald's error code, e.g. `forbidden`, `unauthorized`, `invalid_topic`,
   * `presence_disabled`, `closed`, `disconnected` (the server API closed
   * every connection of the user; the client has stopped for good).
   */
  readonly code: string;
  /** The HTTP status, when the server answered with one. */
  readonly status?: number;
  /** The topic concerned, for a refused subscription (or WebSocket presence request). */
  readonly topic?: string;
  /** A temporary refusal (429, 503): ms to wait, from its `Retry-After`. */
  readonly retryAfter?: number;
}

/** Connects to the Herald server at `url`: where its routes are mounted, e.g. `https://push.example.com`. */
export function connect(url: string | URL, options?: ConnectOptions): Herald;

declare const herald: {
  connect: typeof connect;
  HeraldError: typeof HeraldError;
};
export default herald;
