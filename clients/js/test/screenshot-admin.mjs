// Makes docs/admin.png: the admin page of a server with some traffic (SSE
// streams and WebSockets on a few topics, publishes at a changing rate for
// twenty seconds). Run from clients/js: `npm run screenshot` (the herald
// binary must be built).

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Herald, closeAll, launchBrowser, mintToken, openPage, sleep } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.resolve(here, '../../../docs/admin.png');
const SECRET = 'admin-screenshot-secret-0123456789abcdef';
const KEY = 'admin-screenshot-publisher-key-0123';
const TOPICS = ['rooms/lobby', 'rooms/support', 'orders/1042', 'users/ada/notifications'];

const browser = await launchBrowser();
const server = await Herald.start({ args: ['--admin', '--jwt-secret', SECRET, '--publish-key', KEY] });
const streams = [];
let admin;
let clients;
try {
  // Subscribers: SSE from Node, WebSockets from a page.
  for (const [i, user] of ['ada', 'bob', 'cyd', 'dan', 'eve', 'fay'].entries()) {
    const token = await mintToken(SECRET, { sub: user, subscribe: ['**'], ttl: '10m' });
    for (const topic of TOPICS.slice(0, 1 + (i % TOPICS.length))) {
      const ctrl = new AbortController();
      const res = await fetch(`${server.url}/v1/sse?topic=${encodeURIComponent(topic)}`, {
        headers: { authorization: `Bearer ${token}` },
        signal: ctrl.signal,
      });
      res.body.pipeTo(new WritableStream()).catch(() => {});
      streams.push(ctrl);
    }
  }
  clients = await openPage(browser, server.url);
  const wsToken = await mintToken(SECRET, { sub: 'gus', subscribe: ['**'], ttl: '10m' });
  await clients.page.evaluate(
    async ({ token, topics }) => {
      const hs = [0, 1, 2].map(() => herald.connect(location.origin, { transport: 'ws', token }));
      await Promise.all(hs.flatMap((h, i) => topics.slice(0, i + 1).map((t) => h.subscribe(t, () => {}).ready)));
    },
    { token: wsToken, topics: TOPICS },
  );

  const context = await browser.newContext({ viewport: { width: 1100, height: 1180 }, colorScheme: 'light' });
  admin = context;
  const page = await context.newPage();
  await page.goto(`${server.url}/admin/`);
  await page.fill('#credential', KEY);
  await page.click('#connect');
  await page.waitForSelector('#status[data-state="open"]', { timeout: 15_000 });

  // Twenty seconds of publishes at a rate that rises and falls; the
  // picture is taken in the last of them.
  await page.fill('#user', 'ada');
  await page.click('#show-connections');
  await page.waitForSelector('#connections-table:not([hidden])', { timeout: 15_000 });
  const started = Date.now();
  for (let s = 0; s < 20; s++) {
    const n = Math.round(6 + 5 * Math.sin(s / 3));
    for (let i = 0; i < n; i++) {
      await server.publish(TOPICS[i % TOPICS.length], { n: i, at: Date.now() }, { key: KEY });
    }
    if (s === 19) await page.screenshot({ path: out, fullPage: true });
    const next = started + (s + 1) * 1000;
    await sleep(Math.max(0, next - Date.now()));
  }
  console.log(`wrote ${out}`);
} finally {
  for (const c of streams) c.abort();
  await closeAll(admin, clients && clients.context, server, browser);
}
