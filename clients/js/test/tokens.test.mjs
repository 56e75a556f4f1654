// Credentials over time and temporary refusals, in headless Chromium against
// a real `herald serve`:
// - a plain browser EventSource (no Herald client) refused for now (the
//   per-address connection limit) comes back by itself once a slot frees;
// - the client's SSE stream, whose reconnect is refused for now, comes back
//   once a slot frees and resumes by cursor;
// - a client session with tokens of a few seconds outlives three expiries on
//   SSE, WebSocket and long polling while a backend publishes numbered
//   events: every event arrives once, in order. Once with the browser's clock
//   right (the client refreshes ahead of `exp`), once with it a minute behind
//   (the client cannot see the deadline coming: the server ends the
//   connection at `exp` and the client resumes at once).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  CutProxy,
  Herald,
  closeAll,
  connectPage,
  launchBrowser,
  mintToken,
  openPage,
  pageEvents,
  sleep,
  waitInPage,
} from './harness.mjs';

const SECRET = 'tokens-test-secret-0123456789abcdef';
const BACKEND_KEY = 'tokens-test-backend-key';
// Token lifetime: short enough that three run out within the test.
const TTL_S = 6;
// Reconnect delays short enough for the test's time.
const FAST = { initialDelay: 100, maxDelay: 800, pollTimeout: 5 };

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await closeAll(browser);
});

test('a plain EventSource refused for now (connection limit) recovers on its own', async () => {
  const server = await Herald.start({ args: ['--max-connections-per-ip', '1', '--keepalive', '1s'] });
  // Another connection from the same address holds the only slot.
  const holder = new AbortController();
  const held = await fetch(`${server.url}/v1/sse?topic=hold`, { signal: holder.signal });
  assert.equal(held.status, 200);
  const reader = held.body.getReader();
  const first = new TextDecoder().decode((await reader.read()).value);
  assert.ok(!first.includes('herald.disconnect'), `the holder got a real stream: ${first}`);
  const { context, page } = await openPage(browser, server.url);
  try {
    await page.evaluate(() => {
      window.es = new EventSource('/v1/sse?topic=news');
      window.seen = { opens: 0, disconnects: [], messages: [], closedForGood: false };
      es.onopen = () => seen.opens++;
      es.onerror = () => {
        if (es.readyState === EventSource.CLOSED) seen.closedForGood = true;
      };
      es.addEventListener('herald.disconnect', (e) => seen.disconnects.push(JSON.parse(e.data)));
      es.onmessage = (e) => seen.messages.push(e.data);
    });
    // Refused twice: the second refusal is the browser's own reconnect.
    await waitInPage(page, () => seen.disconnects.length >= 2, undefined, 20_000);
    const refused = await page.evaluate(() => seen);
    assert.deepEqual(
      [...new Set(refused.disconnects.map((d) => d.reason))],
      ['rate_limited'],
      'a temporary refusal says why',
    );
    assert.equal(refused.messages.length, 0);
    assert.equal(refused.closedForGood, false, 'the EventSource did not give up');

    // The slot frees; the EventSource comes back by itself and gets events.
    holder.abort();
    let n = 0;
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      await server.publish('news', ++n);
      if ((await page.evaluate(() => seen.messages.length)) > 0) break;
      await sleep(250);
    }
    const got = await page.evaluate(() => seen);
    assert.ok(got.messages.length > 0, `no event after the slot freed: ${JSON.stringify(got)}`);
    assert.equal(await page.evaluate(() => es.readyState), 1, 'the stream is open');
    assert.equal(got.closedForGood, false);
    // Events after the reconnect arrive in order, none twice.
    const numbers = got.messages.map(Number);
    assert.deepEqual(numbers, [...numbers].sort((a, b) => a - b));
    assert.equal(new Set(numbers).size, numbers.length);
  } finally {
    holder.abort();
    await closeAll(context, server);
  }
});

/** Opens an SSE stream straight to `server` and keeps it; null if refused. */
async function holdSlot(server) {
  const ctrl = new AbortController();
  const res = await fetch(`${server.url}/v1/sse?topic=hold`, { signal: ctrl.signal });
  const first = new TextDecoder().decode((await res.body.getReader().read()).value);
  if (res.status === 200 && !first.includes('herald.disconnect')) return ctrl;
  ctrl.abort();
  return null;
}

test('the client resumes by cursor after its reconnect is refused for now', async () => {
  const server = await Herald.start({ args: ['--max-connections-per-ip', '2', '--keepalive', '1s'] });
  const proxy = await CutProxy.start(server.port);
  const { context, page } = await openPage(browser, proxy.url);
  const holders = [];
  try {
    await connectPage(page, { transport: 'sse', ...FAST }, ['news']);
    await server.publish('news', 1);
    await server.publish('news', 2);
    await waitInPage(page, () => rec.events.length >= 2);

    // The page loses its connection; meanwhile two other connections from
    // the same address take both slots.
    proxy.cut();
    await waitInPage(page, () => rec.statuses.some((s) => s.state === 'reconnecting'));
    const deadline = Date.now() + 15_000;
    while (holders.length < 2 && Date.now() < deadline) {
      const h = await holdSlot(server);
      if (h) holders.push(h);
      else await sleep(200);
    }
    assert.equal(holders.length, 2, 'the page\'s old stream freed its slot');
    await server.publish('news', 3);
    await server.publish('news', 4);
    // The reconnect now reaches the server, which refuses it for now (429 or
    // a `rate_limited` stream): the client keeps trying.
    const before = await page.evaluate(() => rec.statuses.length);
    proxy.restore();
    await waitInPage(
      page,
      (n) => rec.statuses.filter((s, i) => i >= n && s.state === 'reconnecting').length >= 2,
      before + 1,
      15_000,
    );
    await server.publish('news', 5);

    // A slot frees: the client comes back by itself, from its cursor.
    holders.pop().abort();
    await waitInPage(page, () => rec.events.length >= 5, undefined, 15_000);
    await server.publish('news', 6);
    await waitInPage(page, () => rec.events.length >= 6);
    await sleep(300);
    const events = await pageEvents(page);
    assert.deepEqual(events.map((e) => e.data), [1, 2, 3, 4, 5, 6], 'every event exactly once, in order');
    assert.deepEqual(await page.evaluate(() => rec.errors), []);
    assert.equal(await page.evaluate(() => h.status.state), 'open');
  } finally {
    for (const h of holders) h.abort();
    await closeAll(context, proxy, server);
  }
});

/**
 * One client session on `transport` that lasts more than three token
 * lifetimes while the backend publishes numbered events, with the page's
 * clock `skewMs` behind. Returns what the page saw.
 */
async function session(server, transport, skewMs) {
  const topic = `feed/${transport}`;
  const tokens = [];
  const { context, page } = await openPage(browser, server.url, {
    exposed: {
      freshToken: async () => {
        const t = await mintToken(SECRET, { sub: 'alice', subscribe: ['feed/**'], ttl: `${TTL_S}s` });
        tokens.push(Date.now());
        return t;
      },
    },
  });
  const frames = [];
  page.on('websocket', (ws) => ws.on('framesent', (f) => frames.push(String(f.payload))));
  try {
    if (skewMs) {
      await page.evaluate((skew) => {
        const now = Date.now.bind(Date);
        Date.now = () => now() - skew;
      }, skewMs);
    }
    await connectPage(page, { transport, ...FAST }, [topic], { getToken: 'freshToken' });
    const started = Date.now();
    const firstToken = tokens[0];
    // Publish until three tokens have run out since the first one, and a
    // little more.
    let n = 0;
    while (Date.now() - firstToken < (3 * TTL_S + 2) * 1000) {
      await server.publish(topic, ++n, { key: BACKEND_KEY });
      await sleep(150);
    }
    await waitInPage(page, (want) => rec.events.filter((e) => e.event !== 'herald.gap').length >= want, n, 20_000);
    await sleep(500);
    const events = await pageEvents(page);
    const statuses = await page.evaluate(() => rec.statuses);
    const errors = await page.evaluate(() => rec.errors);
    return { n, events, statuses, errors, tokens, started, frames, context };
  } catch (err) {
    await closeAll(context);
    throw err;
  }
}

for (const [variant, skewMs] of [
  ['refreshed ahead of exp', 0],
  ['resumed after the server ends it at exp (browser clock a minute behind)', 60_000],
]) {
  describe(`a session outlives three token expiries: ${variant}`, { concurrency: true }, () => {
    let server;
    before(async () => {
      server = await Herald.start({
        args: ['--jwt-secret', SECRET, '--publish-key', BACKEND_KEY],
      });
    });
    after(async () => {
      await closeAll(server);
    });

    for (const transport of ['sse', 'ws', 'poll']) {
      test(transport, async () => {
        const s = await session(server, transport, skewMs);
        try {
          const data = s.events.map((e) => e.data);
          assert.deepEqual(
            data,
            Array.from({ length: s.n }, (_, i) => i + 1),
            'every event exactly once, in order',
          );
          assert.equal(s.events.filter((e) => e.event === 'herald.gap').length, 0, 'no gap');
          assert.deepEqual(s.errors, [], 'no error reported to the page');
          const spanned = (s.tokens[s.tokens.length - 1] - s.tokens[0]) / 1000;
          assert.ok(spanned >= 3 * TTL_S - 2, `fresh tokens over ${spanned} s: ${s.tokens.length} tokens`);
          const expiries = s.statuses.filter((st) => /token_expired/.test(st.reason || ''));
          if (!skewMs) {
            // Refreshed ahead: the server never had to end a connection.
            assert.deepEqual(expiries, [], 'no connection ran out of its credential');
            if (transport === 'ws') {
              const auths = s.frames.filter((f) => f.includes('"type":"auth"'));
              assert.ok(auths.length >= 4, `in-band refreshes: ${auths.length} auth messages`);
            }
          } else if (transport !== 'poll') {
            // Streams ran into their deadline and came back at once.
            assert.ok(expiries.length >= 3, `resumed after expiry: ${JSON.stringify(expiries)}`);
            for (const st of expiries) assert.equal(st.delay, 0, 'resumed with no backoff');
          }
        } finally {
          await closeAll(s.context);
        }
      });
    }
  });
}
