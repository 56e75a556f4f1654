// Every event of a topic with its name (`subscribe(topic, {all: true})`),
// over each transport, SSE included (read with fetch: an EventSource only
// delivers the names it is told); the demo page showing the README's named
// quick-start publish; and `h.clientId`, a WebSocket's own presence id.

import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Herald, closeAll, launchBrowser, openPage, sleep, tempDir, waitInPage } from './harness.mjs';

let browser;
let server;
let configDir;

before(async () => {
  browser = await launchBrowser();
  configDir = tempDir();
  const config = path.join(configDir, 'herald.toml');
  writeFileSync(
    config,
    ['[[topics]]', 'pattern = "room/**"', 'presence = true', 'join_leave = true', ''].join('\n'),
  );
  server = await Herald.start({ args: ['--config', config] });
});

after(async () => {
  await closeAll(server, browser);
  rmSync(configDir, { recursive: true, force: true });
});

const FAST = { initialDelay: 100, maxDelay: 800, pollTimeout: 5 };

async function publish(topic, data, event) {
  const body = { topic, data };
  if (event) body.event = event;
  const res = await fetch(`${server.url}/v1/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  return JSON.parse(text).id;
}

describe('subscribe(topic, {all: true})', () => {
  for (const transport of ['sse', 'ws', 'poll']) {
    test(`${transport}: every event with its name, joins and leaves included`, async () => {
      const topic = `room/all-${transport}`;
      const a = await openPage(browser, server.url);
      const b = await openPage(browser, server.url);
      try {
        await a.page.evaluate(
          ({ topic, transport, FAST }) => {
            window.h = herald.connect(location.origin, { ...FAST, transport });
            return h.subscribe(topic, { all: true }, (e) => rec.events.push(e)).ready;
          },
          { topic, transport, FAST },
        );
        // Its own join first (presence topic), then what a backend publishes.
        await waitInPage(a.page, () => rec.events.some((e) => e.event === 'herald.join'));
        await publish(topic, { n: 1 });
        await publish(topic, { n: 2 }, 'order-update');
        await publish(topic, 'three', 'chat');
        await waitInPage(a.page, () => rec.events.filter((e) => e.id).length >= 3);
        // Another client comes and goes.
        await b.page.evaluate(
          ({ topic, FAST }) => {
            window.h = herald.connect(location.origin, { ...FAST, transport: 'ws' });
            return h.subscribe(topic, () => {}).ready;
          },
          { topic, FAST },
        );
        // A long-polling client sees the joins and leaves that happen while
        // one of its polls is held, not those between two polls (they are
        // not stored): over poll the test waits instead of expecting them.
        const polling = transport === 'poll';
        if (polling) await sleep(1000);
        else await waitInPage(a.page, () => rec.events.filter((e) => e.event === 'herald.join').length >= 2);
        await b.page.evaluate(() => h.close());
        if (polling) await sleep(1000);
        else await waitInPage(a.page, () => rec.events.some((e) => e.event === 'herald.leave'), undefined, 15_000);
        await publish(topic, { n: 4 });
        await waitInPage(a.page, () => rec.events.filter((e) => e.id).length >= 4);
        await sleep(300);
        const events = await a.page.evaluate(() => rec.events);
        const stored = events.filter((e) => e.id);
        assert.deepEqual(
          stored.map((e) => [e.event, e.text]),
          [
            [null, '{"n":1}'],
            ['order-update', '{"n":2}'],
            ['chat', 'three'],
            [null, '{"n":4}'],
          ],
          transport,
        );
        assert.equal(new Set(stored.map((e) => e.id)).size, 4, 'no duplicate');
        const signals = events.filter((e) => !e.id).map((e) => e.event);
        const expected = ['herald.join', 'herald.join', 'herald.leave'];
        if (polling) {
          // Its own join (seen above), then the others in order, some perhaps missed.
          assert.equal(signals[0], 'herald.join', `${signals}`);
          let i = 0;
          for (const sig of signals) {
            while (i < expected.length && expected[i] !== sig) i++;
            assert.ok(i < expected.length, `signals in order, none extra: ${signals}`);
            i++;
          }
        } else {
          assert.deepEqual(signals, expected, transport);
        }
        assert.equal(await a.page.evaluate(() => h.transport), transport);
      } finally {
        await closeAll(a.context, b.context);
      }
    });
  }

  test('sse: adding {all: true} to a topic already streamed loses and repeats nothing', async () => {
    const topic = 'plain/upgrade';
    const a = await openPage(browser, server.url);
    try {
      await a.page.evaluate(
        ({ topic, FAST }) => {
          window.h = herald.connect(location.origin, { ...FAST, transport: 'sse' });
          window.plain = [];
          window.every = [];
          return h.subscribe(topic, (e) => plain.push(e)).ready;
        },
        { topic, FAST },
      );
      await publish(topic, 'before');
      await waitInPage(a.page, () => plain.length === 1);
      // The stream moves to a fetch-read one from its cursor (asynchronously);
      // these are published while it does.
      await a.page.evaluate((topic) => {
        window.offAll = h.subscribe(topic, { all: true }, (e) => every.push(e));
      }, topic);
      await publish(topic, 'during', 'x');
      await publish(topic, 'during-2');
      await publish(topic, 'after', 'y');
      await waitInPage(a.page, () => every.some((e) => e.text === 'after'));
      await sleep(300);
      const { plain, every } = await a.page.evaluate(() => ({ plain: window.plain, every: window.every }));
      assert.deepEqual(
        every.map((e) => [e.event, e.text]),
        [
          ['x', 'during'],
          [null, 'during-2'],
          ['y', 'after'],
        ],
      );
      // The plain handler still gets unnamed events only, once each.
      assert.deepEqual(
        plain.map((e) => e.text),
        ['before', 'during-2'],
      );
    } finally {
      await closeAll(a.context);
    }
  });
});

for (const transport of ['sse', 'ws', 'poll']) {
  test(`${transport}: events named error or open are events, not the stream's own`, async () => {
    const topic = `plain/names-${transport}`;
    const a = await openPage(browser, server.url);
    try {
      await a.page.evaluate(
        ({ topic, transport, FAST }) => {
          window.h = herald.connect(location.origin, {
            ...FAST,
            transport,
            onStatus: (s) => rec.statuses.push(s.state),
          });
          window.named = [];
          h.on(topic, 'error', (e) => named.push(e));
          return h.subscribe(topic, (e) => rec.events.push(e)).ready;
        },
        { topic, transport, FAST },
      );
      await publish(topic, { n: 1 }, 'error');
      await publish(topic, { n: 2 }, 'open');
      await publish(topic, 'after');
      await waitInPage(a.page, () => rec.events.some((e) => e.text === 'after'));
      await sleep(500);
      const seen = await a.page.evaluate(() => ({
        named: named.map((e) => [e.event, e.text]),
        plain: rec.events.map((e) => e.text),
        statuses: rec.statuses,
      }));
      assert.deepEqual(seen.named, [['error', '{"n":1}']]);
      assert.deepEqual(seen.plain, ['after']);
      assert.ok(!seen.statuses.includes('reconnecting'), `no reconnect: ${seen.statuses}`);
    } finally {
      await closeAll(a.context);
    }
  });
}

test('h.clientId is the id a WebSocket has in presence, null over SSE', async () => {
  const topic = 'room/client-id';
  const ws = await openPage(browser, server.url);
  const sse = await openPage(browser, server.url);
  try {
    const id = await ws.page.evaluate(
      async ({ topic, FAST }) => {
        window.h = herald.connect(location.origin, { ...FAST, transport: 'ws' });
        const before = h.clientId;
        await h.subscribe(topic, { onJoin: (c) => rec.events.push(c) }, () => {}).ready;
        return { before, after: h.clientId };
      },
      { topic, FAST },
    );
    assert.equal(id.before, null);
    assert.equal(typeof id.after, 'string');
    await waitInPage(ws.page, () => rec.events.length >= 1);
    const [own] = await ws.page.evaluate(() => rec.events);
    assert.equal(own.client, id.after, 'its own join names it');
    const list = await ws.page.evaluate((topic) => h.presence(topic), topic);
    assert.deepEqual(
      list.clients.map((c) => c.client),
      [id.after],
    );
    const sseId = await sse.page.evaluate(
      async ({ topic, FAST }) => {
        window.h = herald.connect(location.origin, { ...FAST, transport: 'sse' });
        await h.subscribe(topic, () => {}).ready;
        return h.clientId;
      },
      { topic, FAST },
    );
    assert.equal(sseId, null);
  } finally {
    await closeAll(ws.context, sse.context);
  }
});

describe('the demo page', () => {
  for (const transport of ['sse', 'ws', 'poll']) {
    test(`${transport}: shows the README's named quick-start publish`, async () => {
      const context = await browser.newContext();
      const page = await context.newPage();
      try {
        await page.goto(`${server.url}/?topic=orders/123&transport=${transport}`);
        await page.getByRole('status').getByText(/^Status: open/).waitFor({ timeout: 15_000 });
        // The README's curl, as it is written there.
        const res = await fetch(`${server.url}/v1/publish`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: '{"topic": "orders/123", "event": "order-update", "data": {"status": "shipped"}}',
        });
        assert.equal(res.status, 200);
        const events = page.getByRole('list', { name: 'Events' });
        await events.getByText('{"status":"shipped"}').waitFor({ timeout: 10_000 });
        assert.match(await events.getByRole('listitem').last().innerText(), /orders\/123 · order-update · via /);
      } finally {
        await context.close();
      }
    });
  }
});
