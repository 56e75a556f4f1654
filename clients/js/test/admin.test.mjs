// The admin page (`herald serve --admin`) in headless Chromium against the
// real binary: the numbers it shows match what the test did (SSE streams
// opened from Node, WebSockets opened from another page, events published),
// its "disconnect user" form ends that user's connections on every
// transport and the counts drop; without --admin /admin/ is 404 and no
// snapshot is published; a token without the admin claim (or a wrong key)
// is refused and the page says so; on Redis the page lists every node and
// drops one that stops. Every wait is bounded.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, rmSync } from 'node:fs';
import net from 'node:net';
import { after, before, test } from 'node:test';
import {
  HERALD_BIN,
  Herald,
  closeAll,
  launchBrowser,
  mintToken,
  openPage,
  sleep,
  tempDir,
  waitInPage,
} from './harness.mjs';

const SECRET = 'admin-page-test-secret-0123456789abcdef';
const KEY = 'admin-page-test-publisher-key-0123';
const STATS = 'herald/admin/stats';
const ROOM = 'rooms/lobby';
const N_SSE = 3; // ada 2, bob 1
const M_WS = 2; // ada 1, bob 1
const P = 7;

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await closeAll(browser);
});

function serverArgs(extra = []) {
  return ['--jwt-secret', SECRET, '--publish-key', KEY, ...extra];
}

/** `herald token --admin`: a JWT with the admin claim. */
function adminToken(sub = 'root') {
  return new Promise((resolve, reject) => {
    execFile(
      HERALD_BIN,
      ['token', '--jwt-secret', SECRET, '--sub', sub, '--admin', '--ttl', '10m'],
      { timeout: 10_000 },
      (err, stdout, stderr) => (err ? reject(new Error(stderr || err.message)) : resolve(stdout.trim())),
    );
  });
}

function userToken(sub) {
  return mintToken(SECRET, { sub, subscribe: ['rooms/**'], ttl: '10m' });
}

/** Waits, at most `timeout` ms, until `fn()` is truthy in Node. */
async function until(fn, what, timeout = 15_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** An SSE stream read from Node with `fetch`: its text so far and whether it ended. */
async function openSse(base, token, topic) {
  const ctrl = new AbortController();
  const res = await fetch(`${base}/v1/sse?topic=${encodeURIComponent(topic)}`, {
    headers: { authorization: `Bearer ${token}` },
    signal: ctrl.signal,
  });
  assert.equal(res.status, 200);
  const s = { text: '', ended: false, close: () => ctrl.abort() };
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        s.text += dec.decode(value, { stream: true });
      }
    } catch {
      // aborted
    }
    s.ended = true;
  })();
  return s;
}

/** The admin page of `server`, connected with `credential`. */
async function openAdmin(server, credential) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  const res = await page.goto(`${server.url}/admin/`);
  assert.equal(res.status(), 200);
  await waitInPage(page, () => document.body.dataset.ready === 'true');
  await page.fill('#credential', credential);
  await page.click('#connect');
  return { context, page, logs };
}

/** Waits until the element `id` of the page shows `text`. */
async function shows(page, id, text, timeout = 15_000) {
  try {
    await waitInPage(page, ([id, text]) => document.getElementById(id).textContent === text, [id, text], timeout);
  } catch (err) {
    const got = await page.evaluate((id) => document.getElementById(id).textContent, id);
    throw new Error(`#${id} shows ${JSON.stringify(got)}, not ${JSON.stringify(text)}: ${err.message}`);
  }
}

test('the page shows the connections and publishes the test made, and disconnects a user', async () => {
  const server = await Herald.start({ args: serverArgs(['--admin']) });
  const streams = [];
  let admin;
  let ws;
  try {
    admin = await openAdmin(server, KEY);
    const { page } = admin;
    await waitInPage(page, () => document.getElementById('status').dataset.state === 'open');
    // One node, nothing connected but the page's own long poll.
    await waitInPage(page, () => document.querySelectorAll('#nodes tr[data-node]').length === 1);
    await shows(page, 'conn-sse', '0');
    await shows(page, 'conn-ws', '0');
    await shows(page, 'published-total', '0');
    const node = await page.evaluate(() => document.querySelector('#nodes tr[data-node]').dataset.node);
    assert.match(node, /^[0-9a-f]{8}$/);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('herald-admin-credential')), KEY);

    // N SSE streams from Node, M WebSockets from another page.
    const ada = await userToken('ada');
    const bob = await userToken('bob');
    for (const t of [ada, ada, bob]) streams.push(await openSse(server.url, t, ROOM));
    ws = await openPage(browser, server.url);
    await ws.page.evaluate(
      async ({ tokens, room }) => {
        window.clients = tokens.map((token) =>
          herald.connect(location.origin, {
            transport: 'ws',
            token,
            onError: (e) => rec.errors.push({ code: e.code, token }),
          }),
        );
        await Promise.all(clients.map((c) => c.subscribe(room, (e) => rec.events.push(e)).ready));
      },
      { tokens: [ada, bob], room: ROOM },
    );
    await shows(page, 'conn-sse', String(N_SSE));
    await shows(page, 'conn-ws', String(M_WS));
    // The busiest topic, with every subscriber; the stats topic is not listed.
    await waitInPage(
      page,
      ([room, n]) => {
        const row = document.querySelector('#topics tr[data-topic]');
        return row && row.dataset.topic === room && row.children[1].textContent === String(n);
      },
      [ROOM, N_SSE + M_WS],
    );
    assert.equal(await page.evaluate((t) => !!document.querySelector(`#topics tr[data-topic="${t}"]`), STATS), false);

    // P publishes: the totals, the last minute and the rate chart say so.
    for (let i = 0; i < P; i++) await server.publish(ROOM, { n: i }, { key: KEY });
    await shows(page, 'published-total', String(P));
    await shows(page, 'published-60s', String(P));
    await waitInPage(page, () => Number(document.getElementById('pub-chart').dataset.peak) > 0);
    // Every subscriber got every event, and only those deliveries count
    // (the page's own stats are left out).
    await until(() => streams.every((s) => (s.text.match(/^data: /gm) || []).length === P), 'the SSE events');
    await waitInPage(ws.page, (p) => rec.events.length === 2 * p, P);
    await shows(page, 'delivered-60s', String(P * (N_SSE + M_WS)));

    // The user's connections, then "disconnect user".
    await page.fill('#user', 'ada');
    await page.click('#show-connections');
    await waitInPage(page, () => document.querySelectorAll('#connections tr').length === 3);
    const transports = await page.evaluate(() =>
      [...document.querySelectorAll('#connections tr')].map((r) => r.children[1].textContent).sort(),
    );
    assert.deepEqual(transports, ['sse', 'sse', 'ws']);
    await page.click('#disconnect');
    await shows(page, 'disconnect-result', 'Disconnected every connection of ada on every node.');
    // Ada's streams end with herald.disconnect, her WebSocket with 4009
    // (the client reports 'disconnected'); Bob's stay.
    await until(() => streams[0].ended && streams[1].ended, "ada's SSE streams to end", 10_000);
    for (const s of streams.slice(0, 2)) {
      assert.match(s.text, /event: herald\.disconnect\ndata: \{"reason":"disconnected"\}/);
    }
    assert.equal(streams[2].ended, false);
    await waitInPage(ws.page, (ada) => rec.errors.some((e) => e.code === 'disconnected' && e.token === ada), ada);
    await shows(page, 'conn-sse', String(N_SSE - 2));
    await shows(page, 'conn-ws', String(M_WS - 1));
    // The list is read again a moment after the disconnect; ask again until
    // the closing connections are gone from it.
    await until(async () => {
      if ((await page.locator('#connections tr').count()) === 0) return true;
      await page.click('#show-connections');
      await sleep(200);
      return false;
    }, "ada's connections to leave the list");
    assert.deepEqual(
      admin.logs.filter((l) => l.startsWith('pageerror')),
      [],
    );
  } finally {
    for (const s of streams) s.close();
    await closeAll(admin && admin.context, ws && ws.context, server);
  }
});

test('without --admin the page is 404 and no stats are published', async () => {
  const server = await Herald.start({ args: serverArgs() });
  try {
    for (const path of ['/admin/', '/admin', '/admin/admin.js', '/admin/admin.css']) {
      const res = await fetch(`${server.url}${path}`, { redirect: 'manual' });
      assert.equal(res.status, 404, path);
      await res.arrayBuffer();
    }
    const res = await fetch(`${server.url}/v1/poll?topic=${encodeURIComponent(STATS)}&timeout=2`, {
      headers: { authorization: `Bearer ${KEY}` },
      signal: AbortSignal.timeout(10_000),
    });
    assert.equal(res.status, 200);
    assert.deepEqual((await res.json()).events, []);
  } finally {
    await closeAll(server);
  }
});

test('a token without the admin claim, or a wrong key, cannot read the stats; an admin token can', async () => {
  const server = await Herald.start({ args: serverArgs(['--admin', '--public', '**']) });
  const pages = [];
  try {
    // Not even with every topic public.
    const anon = await fetch(`${server.url}/v1/poll?topic=${encodeURIComponent(STATS)}&timeout=0`);
    assert.equal(anon.status, 401);
    await anon.arrayBuffer();

    const plain = await openAdmin(server, await mintToken(SECRET, { sub: 'eve', subscribe: ['**'], ttl: '10m' }));
    pages.push(plain);
    // Both refusals are shown, each when its answer arrives, in either order.
    await waitInPage(
      plain.page,
      () =>
        document.getElementById('status').dataset.state === 'error' &&
        document.getElementById('error').textContent.includes('The server API refused'),
    );
    const text = await plain.page.evaluate(() => document.getElementById('error').textContent);
    assert.match(text, /not allowed to subscribe to topic "herald\/admin\/stats"/);
    assert.match(text, /The server API refused this credential/);
    // Nothing was shown, and nothing comes later.
    await sleep(1500);
    assert.equal(await plain.page.evaluate(() => document.querySelectorAll('#nodes tr[data-node]').length), 0);

    const wrong = await openAdmin(server, 'not-the-publisher-key-0123456789');
    pages.push(wrong);
    await waitInPage(wrong.page, () => document.getElementById('status').dataset.state === 'error');
    assert.match(await wrong.page.evaluate(() => document.getElementById('error').textContent), /\(401\)/);

    const root = await openAdmin(server, await adminToken());
    pages.push(root);
    await waitInPage(root.page, () => document.querySelectorAll('#nodes tr[data-node]').length === 1);
    assert.equal(await root.page.evaluate(() => document.getElementById('error').hidden), true);
  } finally {
    await closeAll(...pages.map((p) => p.context), server);
  }
});

/** A free loopback port (released at once; the caller binds it right after). */
async function freePort() {
  const s = net.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address();
  s.close();
  await once(s, 'close');
  return port;
}

function canConnect(port) {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1');
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

const REDIS = ['/usr/bin/redis-server', '/usr/sbin/redis-server', '/usr/local/bin/redis-server'].find((p) =>
  existsSync(p),
);

test('on Redis the page lists every node and drops one that stops', { skip: !REDIS && 'no redis-server' }, async () => {
  const dir = tempDir();
  const port = await freePort();
  const redis = execFile(REDIS, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir]);
  const url = `redis://127.0.0.1:${port}`;
  let a;
  let b;
  let admin;
  const streams = [];
  try {
    await until(() => canConnect(port), 'redis-server to listen', 10_000);
    const start = () => Herald.start({ engine: 'redis', args: serverArgs(['--admin', '--redis-url', url]) });
    a = await start();
    b = await start();
    admin = await openAdmin(a, KEY);
    const { page } = admin;
    await waitInPage(page, () => document.querySelectorAll('#nodes tr[data-node]').length === 2);
    assert.match(await page.evaluate(() => document.getElementById('nodes-count').textContent), /2 nodes/);
    // Streams on the other node count too.
    const ada = await userToken('ada');
    streams.push(await openSse(b.url, ada, ROOM), await openSse(b.url, ada, ROOM));
    await shows(page, 'conn-sse', '2');
    // A publish on one node is counted once.
    await a.publish(ROOM, 'x', { key: KEY });
    await shows(page, 'published-total', '1');
    // Disconnecting from the page ends the streams on the other node.
    await page.fill('#user', 'ada');
    await page.click('#disconnect');
    await until(() => streams.every((s) => s.ended), "ada's streams on the other node to end", 10_000);
    await shows(page, 'conn-sse', '0');
    // A node that stops is dropped once silent for 5 s.
    await b.stop();
    await waitInPage(page, () => document.querySelectorAll('#nodes tr[data-node]').length === 1, undefined, 12_000);
  } finally {
    for (const s of streams) s.close();
    await closeAll(admin && admin.context, a, b);
    redis.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});
