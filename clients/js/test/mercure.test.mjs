// Herald as a Mercure hub, in headless Chromium against a real `herald
// serve` with Mercure keys and anonymous subscribers allowed. Pages use the
// browser's own EventSource as Mercure's documentation shows it; the test
// publishes as a Symfony backend does (a form POST with a Bearer token,
// HS256 tokens signed here with node:crypto):
// - a `topic=` URI template and a `matchURLPattern=` select the updates;
//   each arrives with `lastEventId` the publisher's id verbatim (quotes and
//   brackets too), named `type`s through addEventListener, other topics
//   never;
// - private updates never reach an anonymous page, and reach a page whose
//   `mercureAuthorization` cookie holds a subscriber token granting the
//   topic (only the topics it grants);
// - `?lastEventID=<id>` replays exactly the updates after that id, then
//   live; `earliest` replays them all; an unknown id starts live; the
//   answer's Last-Event-ID header says which;
// - a connection cut mid-stream: the EventSource's own reconnect (its
//   Last-Event-ID header, the publisher's id) gets every missed update once;
// - Herald's own client subscribed to T gets a Mercure publish to T, and a
//   Herald publish to T reaches a Mercure EventSource.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import {
  CutProxy,
  Herald,
  closeAll,
  connectPage,
  launchBrowser,
  openPage,
  sleep,
  waitInPage,
} from './harness.mjs';

// Two keys, one per role, as the Mercure hub recommends (32 bytes or more).
const PUBLISHER_KEY = 'mercure-test-publisher-key-0123456789abcdef';
const SUBSCRIBER_KEY = 'mercure-test-subscriber-key-0123456789abcdef';
const HUB = '/.well-known/mercure';

/** An HS256 JWT of `claims` (header `typ: JWT`, as Symfony mints them). */
function sign(secret, claims) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

const inFiveMinutes = () => Math.floor(Date.now() / 1000) + 300;
const PUBLISHER_TOKEN = sign(PUBLISHER_KEY, { mercure: { publish: ['*'] }, exp: inFiveMinutes() });

let browser;
let server;

before(async () => {
  browser = await launchBrowser();
  server = await Herald.start({
    args: [
      '--mercure-publisher-jwt-key',
      PUBLISHER_KEY,
      '--mercure-subscriber-jwt-key',
      SUBSCRIBER_KEY,
      '--mercure-anonymous',
    ],
  });
});

after(async () => {
  await closeAll(browser, server);
});

/**
 * Publishes one update as a backend does: `fields` of the form (`topic`
 * may be an array, `private: true` adds the field). Resolves to the id the
 * hub answers with.
 */
async function publish(fields) {
  const form = new URLSearchParams();
  for (const [k, v] of Object.entries(fields)) {
    if (k === 'private') {
      if (v) form.append('private', 'on');
    } else {
      for (const one of [v].flat()) form.append(k, one);
    }
  }
  const res = await fetch(`${server.url}${HUB}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${PUBLISHER_TOKEN}` },
    body: form,
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `publish answered ${res.status}: ${text}`);
  assert.match(res.headers.get('content-type'), /^text\/plain/);
  return text;
}

/** The subscription URL's query: `[name, value]` pairs, encoded. */
function query(pairs) {
  return pairs.map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join('&');
}

/**
 * Opens `new EventSource(HUB + '?' + q)` in the page as `streams[name]`,
 * recording every update (`onmessage`, and addEventListener for each of
 * `types`) as {type, id, data}. Resolves once the stream is open.
 */
async function openStream(page, name, q, types = []) {
  await page.evaluate(
    ({ name, url, types }) => {
      window.streams ??= {};
      const es = new EventSource(url);
      const s = { es, got: [], opens: 0, errors: 0 };
      streams[name] = s;
      const record = (e) => s.got.push({ type: e.type, id: e.lastEventId, data: e.data });
      es.onmessage = record;
      for (const t of types) es.addEventListener(t, record);
      es.onopen = () => s.opens++;
      es.onerror = () => s.errors++;
    },
    { name, url: `${HUB}?${q}`, types },
  );
  await waitInPage(page, (name) => streams[name].opens >= 1, name);
}

/** Waits until `streams[name]` has `n` updates, and returns them. */
async function received(page, name, n, timeout) {
  await waitInPage(page, ({ name, n }) => streams[name].got.length >= n, { name, n }, timeout);
  return page.evaluate((name) => streams[name].got, name);
}

test('EventSource with a topic= URI template and matchURLPattern=: the publisher ids verbatim, named types', async () => {
  const { context, page } = await openPage(browser, server.url);
  try {
    await openStream(
      page,
      'books',
      query([
        ['topic', 'https://example.com/books/{id}'],
        ['matchURLPattern', 'https://example.com/authors/:id'],
      ]),
      ['author-updated'],
    );
    const bookId = 'urn:example:"book"[1]{x}';
    const authorId = '["author",7]';
    assert.equal(
      await publish({ topic: 'https://example.com/books/1', id: bookId, data: '{"status":"sold"}' }),
      bookId,
      'the hub answers with the id as given',
    );
    await publish({
      topic: 'https://example.com/authors/7',
      id: authorId,
      type: 'author-updated',
      data: '{"name":"Ada"}',
    });
    // Selected by neither matcher; published before the next one, so it
    // would arrive before it (one log, one order) if it arrived at all.
    await publish({ topic: 'https://example.com/magazines/1', id: 'not-selected', data: 'x' });
    const generated = await publish({ topic: 'https://example.com/books/2', data: 'first line\nsecond line' });
    assert.match(generated, /^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);

    await received(page, 'books', 3);
    await sleep(300);
    const got = await page.evaluate(() => streams.books.got);
    assert.deepEqual(got, [
      { type: 'message', id: bookId, data: '{"status":"sold"}' },
      { type: 'author-updated', id: authorId, data: '{"name":"Ada"}' },
      { type: 'message', id: generated, data: 'first line\nsecond line' },
    ]);
    assert.equal(await page.evaluate(() => streams.books.errors), 0);
  } finally {
    await closeAll(context);
  }
});

test('private updates: never to an anonymous page; to a mercureAuthorization cookie granting the topic', async () => {
  const anonymous = await openPage(browser, server.url);
  const member = await openPage(browser, server.url);
  try {
    // Same origin as the hub: the EventSource sends the cookie without
    // withCredentials. The token grants one inbox of the template.
    const token = sign(SUBSCRIBER_KEY, {
      sub: 'https://example.com/users/1',
      mercure: { subscribe: ['https://example.com/users/1/inbox'] },
      exp: inFiveMinutes(),
    });
    await member.context.addCookies([
      { name: 'mercureAuthorization', value: token, url: server.url, httpOnly: true, sameSite: 'Strict' },
    ]);
    const inboxes = query([['topic', 'https://example.com/users/{id}/inbox']]);
    await openStream(anonymous.page, 'inbox', inboxes);
    await openStream(member.page, 'inbox', inboxes);

    await publish({ topic: 'https://example.com/users/2/inbox', id: 'private-2', data: 'for user 2', private: true });
    await publish({ topic: 'https://example.com/users/1/inbox', id: 'private-[1]', data: 'for user 1', private: true });
    // Public, and last: once a page has it, it had every earlier update it
    // was going to get.
    await publish({ topic: 'https://example.com/users/2/inbox', id: 'public-2', data: 'for everyone' });

    const ids = async (p) => {
      await received(p, 'inbox', 1);
      await waitInPage(p, () => streams.inbox.got.some((u) => u.id === 'public-2'));
      await sleep(300);
      return p.evaluate(() => streams.inbox.got.map((u) => u.id));
    };
    assert.deepEqual(await ids(anonymous.page), ['public-2'], 'an anonymous subscriber gets public updates only');
    assert.deepEqual(
      await ids(member.page),
      ['private-[1]', 'public-2'],
      'the token reads the private update of the topic it grants, not the other',
    );

    // Private updates stay out of Herald's own topics; the public one is there.
    const history = async (topic) => {
      const res = await fetch(`${server.url}/v1/history?topic=${encodeURIComponent(topic)}`, {
        signal: AbortSignal.timeout(10_000),
      });
      assert.equal(res.status, 200);
      return (await res.json()).events.map((e) => e.data);
    };
    assert.deepEqual(await history('https://example.com/users/1/inbox'), []);
    assert.deepEqual(await history('https://example.com/users/2/inbox'), ['for everyone']);
  } finally {
    await closeAll(anonymous.context, member.context);
  }
});

test('lastEventID: the updates after that id, then live; earliest; an unknown id starts live', async () => {
  const feed = 'https://example.com/feeds/resume';
  const ids = ['feed-1', 'feed "2"', '[feed-3]'];
  for (const [i, id] of ids.entries()) await publish({ topic: feed, id, data: `update ${i + 1}` });

  // The answer names the place it resumed from: the id when found, else `earliest`.
  const answered = async (lastEventID) => {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), 10_000);
    try {
      const res = await fetch(`${server.url}${HUB}?${query([['topic', feed], ['lastEventID', lastEventID]])}`, {
        signal: ctrl.signal,
      });
      assert.equal(res.status, 200);
      return res.headers.get('last-event-id');
    } finally {
      clearTimeout(timer);
      ctrl.abort();
    }
  };
  assert.equal(await answered('feed-1'), 'feed-1');
  assert.equal(await answered('earliest'), 'earliest');
  assert.equal(await answered('no-such-update'), 'earliest');

  const { context, page } = await openPage(browser, server.url);
  try {
    await openStream(page, 'after', query([['topic', feed], ['lastEventID', 'feed-1']]));
    await openStream(page, 'earliest', query([['topic', feed], ['lastEventID', 'earliest']]));
    await openStream(page, 'unknown', query([['topic', feed], ['lastEventID', 'no-such-update']]));
    await received(page, 'after', 2);
    await received(page, 'earliest', 3);
    await publish({ topic: feed, id: 'feed-4', data: 'update 4' });
    await received(page, 'after', 3);
    await received(page, 'earliest', 4);
    await received(page, 'unknown', 1);
    await sleep(300);
    const got = await page.evaluate(() =>
      Object.fromEntries(Object.entries(streams).map(([k, s]) => [k, s.got.map((u) => `${u.id}=${u.data}`)])),
    );
    assert.deepEqual(got, {
      after: ['feed "2"=update 2', '[feed-3]=update 3', 'feed-4=update 4'],
      earliest: ['feed-1=update 1', 'feed "2"=update 2', '[feed-3]=update 3', 'feed-4=update 4'],
      unknown: ['feed-4=update 4'],
    });
  } finally {
    await closeAll(context);
  }
});

test('a cut connection: the EventSource reconnects with Last-Event-ID and misses nothing', async () => {
  const feed = 'https://example.com/feeds/cut';
  const proxy = await CutProxy.start(server.port);
  const { context, page } = await openPage(browser, proxy.url);
  try {
    await openStream(page, 'cut', query([['topic', feed]]));
    await publish({ topic: feed, id: 'cut-1', data: '1' });
    await publish({ topic: feed, id: 'cut "2" [x]', data: '2' });
    await received(page, 'cut', 2);

    // The network goes; two updates are published meanwhile.
    proxy.cut();
    await waitInPage(page, () => streams.cut.errors >= 1);
    await publish({ topic: feed, id: 'cut-3', data: '3' });
    await publish({ topic: feed, id: 'cut-4', data: '4' });
    proxy.restore();

    // The browser reconnects by itself (after the stream's `retry:`).
    await waitInPage(page, () => streams.cut.opens >= 2, undefined, 20_000);
    await received(page, 'cut', 4);
    await publish({ topic: feed, id: 'cut-5', data: '5' });
    await received(page, 'cut', 5);
    await sleep(300);
    const got = await page.evaluate(() => streams.cut.got.map((u) => u.id));
    assert.deepEqual(got, ['cut-1', 'cut "2" [x]', 'cut-3', 'cut-4', 'cut-5'], 'every update once, in order');
  } finally {
    await closeAll(context, proxy);
  }
});

describe("bridged with Herald's own API", () => {
  for (const transport of ['sse', 'ws']) {
    test(`Herald's browser client (${transport}) subscribed to T gets a Mercure publish to T`, async () => {
      const topic = `https://example.com/orders/${transport}`;
      const { context, page } = await openPage(browser, server.url);
      try {
        await connectPage(page, { transport }, [topic], { names: ['order-updated'] });
        await publish({ topic, id: `order-${transport}-1`, type: 'order-updated', data: '{"status":"shipped"}' });
        await publish({ topic, data: 'plain text' });
        await waitInPage(page, () => rec.events.length >= 2);
        await sleep(300);
        const events = await page.evaluate(() =>
          rec.events.map((e) => ({ topic: e.topic, event: e.event, data: e.data })),
        );
        // A Mercure update's data is text on Herald's side: over SSE the
        // client parses what is JSON (an object here), over WebSocket it
        // hands the string as published.
        const status = (d) => (typeof d === 'string' ? JSON.parse(d) : d).status;
        assert.equal(events.length, 2, JSON.stringify(events));
        assert.equal(events[0].topic, topic);
        assert.equal(events[0].event, 'order-updated');
        assert.equal(status(events[0].data), 'shipped');
        assert.deepEqual(events[1], { topic, event: null, data: 'plain text' });
      } finally {
        await closeAll(context);
      }
    });
  }

  test('a Herald publish to T reaches a Mercure EventSource of T', async () => {
    const topic = 'https://example.com/orders/from-herald';
    const { context, page } = await openPage(browser, server.url);
    try {
      await openStream(page, 'orders', query([['topic', topic]]), ['order-updated']);
      const heraldId = await server.publish(topic, { status: 'packed' }, { event: 'order-updated' });
      const [u] = await received(page, 'orders', 1);
      assert.equal(u.type, 'order-updated');
      assert.deepEqual(JSON.parse(u.data), { status: 'packed' });
      // The Mercure log gives it an id of its own, not Herald's cursor.
      assert.match(u.id, /^urn:uuid:/);
      assert.notEqual(u.id, heraldId);
    } finally {
      await closeAll(context);
    }
  });
});
