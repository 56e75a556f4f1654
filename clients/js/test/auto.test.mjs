// transport: 'auto' in headless Chromium against a real `herald serve`: SSE
// while the page only receives, WebSocket once it publishes or has many
// topics, long polling when a proxy buffers the event stream.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  BufferingProxy,
  Herald,
  closeAll,
  connectPage,
  launchBrowser,
  openPage,
  pageEvents,
  sleep,
  waitInPage,
} from './harness.mjs';

const FAST = { initialDelay: 100, maxDelay: 800, pollTimeout: 5 };

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await closeAll(browser);
});

test('auto receives over SSE and moves to a WebSocket when the page publishes', async () => {
  const server = await Herald.start();
  const { context, page, requests } = await openPage(browser, server.url);
  try {
    await connectPage(page, { transport: 'auto', ...FAST }, ['room']);
    assert.equal(await page.evaluate(() => h.transport), 'sse');
    await server.publish('room', 'e1');
    await waitInPage(page, () => rec.events.length >= 1);

    await page.evaluate(() => h.publish('room', 'e2'));
    assert.equal(await page.evaluate(() => h.transport), 'ws');
    await server.publish('room', 'e3');
    await waitInPage(page, () => rec.events.length >= 3);
    await sleep(300);
    assert.deepEqual((await pageEvents(page)).map((e) => e.data), ['e1', 'e2', 'e3']);
    assert.ok(requests.some((r) => r.url.includes('/v1/sse?')));
    assert.ok(requests.some((r) => r.method === 'WEBSOCKET'));
    assert.ok(!requests.some((r) => r.url.endsWith('/v1/publish')), 'published over the WebSocket');
  } finally {
    await closeAll(context, server);
  }
});

test('auto uses one WebSocket rather than an EventSource per topic beyond maxSseTopics', async () => {
  const server = await Herald.start();
  const { context, page, requests } = await openPage(browser, server.url);
  try {
    await connectPage(page, { transport: 'auto', maxSseTopics: 2, ...FAST }, ['t/1', 't/2', 't/3']);
    assert.equal(await page.evaluate(() => h.transport), 'ws');
    for (const t of ['t/1', 't/2', 't/3']) await server.publish(t, t);
    await waitInPage(page, () => rec.events.length >= 3);
    assert.deepEqual((await pageEvents(page)).map((e) => e.topic), ['t/1', 't/2', 't/3']);
    assert.ok(!requests.some((r) => r.url.includes('/v1/sse?')));
  } finally {
    await closeAll(context, server);
  }
});

test('auto falls back to long polling when a proxy buffers the event stream', async () => {
  const server = await Herald.start();
  const proxy = await BufferingProxy.start(server.port);
  const { context, page, requests } = await openPage(browser, proxy.url);
  try {
    const started = Date.now();
    await connectPage(page, { transport: 'auto', fallbackTimeout: 1500, ...FAST }, ['feed']);
    assert.equal(await page.evaluate(() => h.transport), 'poll');
    assert.ok(Date.now() - started >= 1400, 'it waited for the stream first');
    assert.ok(proxy.sseRequests >= 1, 'an event stream was tried');
    const statuses = await page.evaluate(() => rec.statuses);
    assert.ok(statuses.some((s) => s.transport === 'poll' && s.reason === 'stream buffered'));

    // For comparison, a client that insists on SSE behind this proxy gets nothing.
    await page.evaluate(() => {
      window.sseOnly = [];
      window.h2 = herald.connect(location.origin, { transport: 'sse' });
      return h2.subscribe('feed', (e) => sseOnly.push(e)).ready;
    });

    await server.publish('feed', 'e1');
    await page.evaluate(() => h.publish('feed', 'e2'));
    await waitInPage(page, () => rec.events.length >= 2);
    await sleep(500);
    assert.deepEqual((await pageEvents(page)).map((e) => e.data), ['e1', 'e2']);
    assert.equal(await page.evaluate(() => sseOnly.length), 0, 'the proxy really holds the stream');
    assert.ok(requests.some((r) => r.method === 'POST' && r.url.endsWith('/v1/publish')));
    await page.evaluate(() => h2.close());
  } finally {
    await closeAll(context, proxy, server);
  }
});
