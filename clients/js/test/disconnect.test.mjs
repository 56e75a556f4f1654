// The server API's disconnect, seen from a browser: `POST /v1/disconnect`
// for a user ends that user's page on every transport (SSE herald.disconnect
// `disconnected`, WebSocket close 4009, long polling), the client reports
// `disconnected` and stops for good, while another user's page stays live.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Herald, closeAll, launchBrowser, mintToken, openPage, sleep, waitInPage } from './harness.mjs';

const SECRET = 'disconnect-test-secret-0123456789abcdef';
const KEY = 'disconnect-test-backend-key-0123';
const FAST = { initialDelay: 100, maxDelay: 800, pollTimeout: 5 };

let browser;
let server;

before(async () => {
  browser = await launchBrowser();
  server = await Herald.start({ args: ['--jwt-secret', SECRET, '--publish-key', KEY] });
});

after(async () => {
  await closeAll(browser, server);
});

async function connect(page, opts, topic) {
  await page.evaluate(
    ({ opts, topic }) => {
      window.h = herald.connect(location.origin, {
        ...opts,
        onStatus: (s) => rec.statuses.push(s),
        onError: (e) => rec.errors.push({ code: e.code, message: e.message }),
      });
      return h.subscribe(topic, (e) => rec.events.push(e)).ready;
    },
    { opts, topic },
  );
}

async function disconnect(user) {
  const res = await fetch(`${server.url}/v1/disconnect`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ user }),
  });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { user });
}

for (const transport of ['sse', 'ws', 'poll']) {
  test(`disconnect over ${transport}: the page stops with 'disconnected', others stay`, async () => {
    const ada = await mintToken(SECRET, { sub: 'ada', subscribe: ['users/{sub}/**'], ttl: '10m' });
    const bob = await mintToken(SECRET, { sub: 'bob', subscribe: ['users/{sub}/**'], ttl: '10m' });
    const a = await openPage(browser, server.url);
    const b = await openPage(browser, server.url);
    try {
      await connect(a.page, { transport, token: ada, ...FAST }, 'users/ada/inbox');
      await connect(b.page, { transport, token: bob, ...FAST }, 'users/bob/inbox');
      // A long poll is between two requests now and then: disconnect until
      // the page has heard it (each call closes what is open at that moment).
      for (const deadline = Date.now() + 15_000; Date.now() < deadline; await sleep(300)) {
        await disconnect('ada');
        const done = await a.page.evaluate(() => rec.errors.some((e) => e.code === 'disconnected'));
        if (done) break;
        if (transport !== 'poll') break;
      }
      await waitInPage(a.page, () => rec.errors.some((e) => e.code === 'disconnected'));
      await waitInPage(a.page, () => h.status.state === 'closed');
      // Stopped for good: no reconnect follows.
      const requestsThen = a.requests.length;
      await sleep(1500);
      const later = a.requests.slice(requestsThen).filter((r) => !r.url.includes('/healthz'));
      assert.deepEqual(later, [], 'no request after the disconnect');
      // Bob's page still receives.
      await server.publish('users/bob/inbox', { n: 1 }, { key: KEY });
      await waitInPage(b.page, () => rec.events.length >= 1);
      assert.deepEqual(await b.page.evaluate(() => rec.errors), []);
    } finally {
      await closeAll(a.context, b.context);
    }
  });
}
