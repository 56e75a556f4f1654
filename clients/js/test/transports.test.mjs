// The client over each transport, in headless Chromium against a real
// `herald serve`: receive, publish, named events, resume after a server
// restart and after a cut connection, and credentials (getToken, token).

import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
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
  pickEngine,
  sleep,
  tempDir,
  waitInPage,
} from './harness.mjs';

// Short delays so that reconnects happen within the test's time.
const FAST = { initialDelay: 100, maxDelay: 800, pollTimeout: 5 };
const SECRET = 'browser-test-secret-0123456789abcdef';
const BACKEND_KEY = 'browser-test-backend-key';

// The restart test runs on the memory engine, and on the durable one too
// when this build has it.
const ENGINES = (await pickEngine()) === 'embedded' ? ['memory', 'embedded'] : ['memory'];

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await closeAll(browser);
});

/** Data of the non-gap events the page got. */
const dataOf = (events) => events.filter((e) => e.event !== 'herald.gap').map((e) => e.data);
const gapsOf = (events) => events.filter((e) => e.event === 'herald.gap');

/** Waits until the page has `n` non-gap events, then a moment more to catch extras. */
async function expectData(page, expected) {
  await waitInPage(
    page,
    (n) => rec.events.filter((e) => e.event !== 'herald.gap').length >= n,
    expected.length,
  );
  await sleep(300);
  const events = await pageEvents(page);
  assert.deepEqual(dataOf(events), expected, 'every event exactly once, in order');
  return events;
}

for (const transport of ['sse', 'ws', 'poll']) {
  describe(`transport ${transport}`, () => {
    test('receives, publishes, and dispatches named events', async () => {
      const server = await Herald.start();
      const { context, page, requests, consoleLines } = await openPage(browser, server.url);
      try {
        await connectPage(page, { transport, ...FAST }, ['chat'], { names: ['order-update'] });
        assert.equal(await page.evaluate(() => h.transport), transport);
        assert.equal(await page.evaluate(() => h.status.state), 'open');

        await server.publish('chat', { n: 1 });
        const pageId = await page.evaluate(() => h.publish('chat', { n: 2 }));
        await server.publish('chat', { status: 'shipped' }, { event: 'order-update' });
        await page.evaluate(() => h.publish('chat', 'line one\nline two ✓', { event: 'order-update' }));
        await server.publish('chat', 'plain text');
        const events = await expectData(page, [
          { n: 1 },
          { n: 2 },
          { status: 'shipped' },
          'line one\nline two ✓',
          'plain text',
        ]);
        assert.deepEqual(
          events.map((e) => e.event),
          [null, null, 'order-update', 'order-update', null],
          'unnamed events to the handler, named ones to their listener',
        );
        for (const e of events) {
          assert.equal(e.topic, 'chat');
          assert.match(e.id, /^[0-9a-f.-]+$/);
        }
        assert.equal(events[1].id, pageId, 'publish resolves to the event id');
        assert.equal(events[2].text, '{"status":"shipped"}');

        const posts = requests.filter((r) => r.method === 'POST' && r.url.endsWith('/v1/publish'));
        const wire = { sse: '/v1/sse?', ws: '/v1/ws', poll: '/v1/poll?' }[transport];
        assert.ok(requests.some((r) => r.url.includes(wire)), `the page used ${wire}`);
        assert.equal(posts.length, transport === 'ws' ? 0 : 2, 'publish over the WebSocket, else POST');

        // Unsubscribing stops delivery.
        await page.evaluate(() => offs.forEach((off) => off()));
        await server.publish('chat', 'after unsubscribe');
        await sleep(500);
        assert.equal(dataOf(await pageEvents(page)).length, 5);
        assert.deepEqual(consoleLines.filter((l) => l.startsWith('pageerror')), []);
      } finally {
        await closeAll(context, server);
      }
    });

    test('starts at a starting point (history, latest), then live, and reads history pages', async () => {
      const server = await Herald.start();
      const { context, page } = await openPage(browser, server.url);
      try {
        for (let n = 1; n <= 4; n++) await server.publish('feed', { n });
        await server.publish('price', { p: 1 });
        await server.publish('price', { p: 2 });
        await page.evaluate(async (opts) => {
          window.h = herald.connect(location.origin, {
            ...opts,
            onError: (e) => rec.errors.push({ code: e.code, message: e.message }),
          });
          const a = h.subscribe('feed', { history: 2 }, (e) => rec.events.push(e));
          const b = h.subscribe('price', { since: 'latest' }, (e) => rec.events.push(e));
          await Promise.all([a.ready, b.ready]);
        }, { transport, ...FAST });
        await server.publish('feed', { n: 5 });
        await waitInPage(page, () => rec.events.length >= 4);
        await sleep(300);
        const events = await pageEvents(page);
        const of = (topic) => dataOf(events.filter((e) => e.topic === topic));
        assert.deepEqual(of('feed'), [{ n: 3 }, { n: 4 }, { n: 5 }], 'history: 2, then live');
        assert.deepEqual(of('price'), [{ p: 2 }], 'since: latest');
        assert.equal(gapsOf(events).length, 0);
        const pages = await page.evaluate(async () => {
          const newest = await h.history('feed', { limit: 2 });
          const older = await h.history('feed', { limit: 2, before: newest.cursor });
          return [newest.events.map((e) => e.data.n), older.events.map((e) => e.data.n)];
        });
        assert.deepEqual(pages, [[4, 5], [2, 3]]);
        assert.deepEqual(await page.evaluate(() => rec.errors), []);
      } finally {
        await closeAll(context, server);
      }
    });

    for (const engine of ENGINES) {
      test(`resumes after the server restarts (${engine} engine): every event published meanwhile, once`, async () => {
        // The page is kept from reconnecting (by a proxy) until the restarted
        // server has the events, then resumes with its old cursor. With the
        // memory engine the restart lost the history (a new epoch): the page
        // gets a herald.gap (epoch_changed), then every event published since
        // the restart. With the durable engine the cursor stays valid: no gap.
        const dataDir = engine === 'embedded' ? tempDir() : undefined;
        const server = await Herald.start({ engine, dataDir });
        const proxy = await CutProxy.start(server.port);
        const { context, page } = await openPage(browser, proxy.url);
        try {
          await connectPage(page, { transport, ...FAST }, ['orders/1']);
          await server.publish('orders/1', 'e1');
          await server.publish('orders/1', 'e2');
          await waitInPage(page, () => rec.events.length >= 2);

          proxy.block(); // open connections stay; new ones are refused
          await server.restart(); // graceful: SSE herald.disconnect, WebSocket 1000, polls answered
          await waitInPage(page, () => rec.statuses.some((s) => s.state === 'reconnecting'));
          await server.publish('orders/1', 'e3');
          await server.publish('orders/1', 'e4');
          await server.publish('orders/1', 'e5');
          proxy.restore();
          await waitInPage(page, () => rec.events.filter((e) => e.event !== 'herald.gap').length >= 5);
          await server.publish('orders/1', 'e6');
          const events = await expectData(page, ['e1', 'e2', 'e3', 'e4', 'e5', 'e6']);

          const gaps = gapsOf(events);
          if (engine === 'memory') {
            assert.equal(gaps.length, 1, 'one herald.gap for the lost history');
            assert.deepEqual(gaps[0].data, { topic: 'orders/1', reason: 'epoch_changed' });
          } else {
            assert.equal(gaps.length, 0);
          }
          const statuses = await page.evaluate(() => rec.statuses);
          const reconnecting = statuses.filter((s) => s.state === 'reconnecting');
          assert.ok(reconnecting.every((s) => s.delay > 0 && s.delay <= FAST.maxDelay));
          assert.equal(statuses.at(-1).state, 'open');
        } finally {
          await closeAll(context, proxy, server);
          if (dataDir) rmSync(dataDir, { recursive: true, force: true });
        }
      });
    }

    test('resumes after the network connection is cut', async () => {
      const server = await Herald.start();
      const proxy = await CutProxy.start(server.port);
      const { context, page } = await openPage(browser, proxy.url);
      try {
        await connectPage(page, { transport, ...FAST }, ['feed']);
        await server.publish('feed', 'e1');
        await waitInPage(page, () => rec.events.length >= 1);
        proxy.cut();
        await waitInPage(page, () => rec.statuses.some((s) => s.state === 'reconnecting'));
        await server.publish('feed', 'e2');
        await server.publish('feed', 'e3');
        await sleep(300);
        assert.equal((await pageEvents(page)).length, 1, 'nothing arrives while cut off');
        proxy.restore();
        await waitInPage(page, () => rec.events.length >= 3);
        await server.publish('feed', 'e4');
        const events = await expectData(page, ['e1', 'e2', 'e3', 'e4']);
        assert.equal(gapsOf(events).length, 0);
      } finally {
        await closeAll(context, proxy, server);
      }
    });

    test('calls getToken before every (re)connect', async () => {
      const server = await Herald.start({
        args: ['--jwt-secret', SECRET, '--publish-key', BACKEND_KEY],
      });
      const proxy = await CutProxy.start(server.port);
      const calls = [];
      const getTestToken = async () => {
        calls.push(Date.now());
        return mintToken(SECRET, { subscribe: ['secure/**'], publish: ['secure/**'], ttl: '1m' });
      };
      const { context, page, requests } = await openPage(browser, proxy.url, {
        exposed: { getTestToken },
      });
      try {
        await connectPage(page, { transport, ...FAST }, ['secure/a'], { getToken: 'getTestToken' });
        await server.publish('secure/a', 'e1', { key: BACKEND_KEY });
        await page.evaluate(() => h.publish('secure/a', 'e2'));
        await waitInPage(page, () => rec.events.length >= 2);

        const cutAt = Date.now();
        proxy.cut();
        await waitInPage(page, () => rec.statuses.some((s) => s.state === 'reconnecting'));
        await server.publish('secure/a', 'e3', { key: BACKEND_KEY });
        proxy.restore();
        await waitInPage(page, () => rec.events.length >= 3);
        await server.publish('secure/a', 'e4', { key: BACKEND_KEY });
        await expectData(page, ['e1', 'e2', 'e3', 'e4']);
        assert.ok(calls.filter((t) => t > cutAt).length >= 1, 'a fresh token for the reconnect');
        assert.deepEqual(await page.evaluate(() => rec.errors), []);
        if (transport === 'ws') {
          assert.ok(
            requests.filter((r) => r.method === 'WEBSOCKET').every((r) => !r.url.includes('token')),
            'the WebSocket sends its token in a message, not the URL',
          );
        }

        // Without a credential the same topic is refused, and the page is told.
        await page.evaluate(
          (transport) => {
            window.rec2 = { errors: [] };
            window.h2 = herald.connect(location.origin, {
              transport,
              initialDelay: 1000,
              onError: (e) => rec2.errors.push({ code: e.code, status: e.status }),
            });
            h2.subscribe('secure/a', () => {});
          },
          transport,
        );
        await waitInPage(page, () => rec2.errors.length >= 1);
        const [refused] = await page.evaluate(() => rec2.errors);
        assert.equal(refused.status, 401);
        await page.evaluate(() => h2.close());
      } finally {
        await closeAll(context, proxy, server);
      }
    });

    test('never puts a long-lived token in a URL', async () => {
      const server = await Herald.start({
        args: ['--jwt-secret', SECRET, '--publish-key', BACKEND_KEY],
      });
      const longLived = await mintToken(SECRET, {
        subscribe: ['secure/**'],
        publish: ['secure/**'],
        ttl: '1h',
      });
      const { context, page, requests } = await openPage(browser, server.url);
      try {
        await connectPage(page, { transport, token: longLived, ...FAST }, ['secure/b']);
        await server.publish('secure/b', 'e1', { key: BACKEND_KEY });
        await page.evaluate(() => h.publish('secure/b', 'e2'));
        await expectData(page, ['e1', 'e2']);
        assert.deepEqual(
          requests.filter((r) => r.url.includes(longLived)),
          [],
          'the long-lived token went in headers or messages only',
        );
        if (transport === 'sse') {
          assert.ok(
            requests.some((r) => r.method === 'POST' && r.url.endsWith('/v1/tokens')),
            'EventSource got a one-time token instead',
          );
        }
      } finally {
        await closeAll(context, server);
      }
    });
  });
}
