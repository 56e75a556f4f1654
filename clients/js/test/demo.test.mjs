// The demo page and the client's files as `herald serve` serves them.

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import { Herald, closeAll, launchBrowser } from './harness.mjs';
import { runDemo } from './demo-scenario.mjs';

let browser;
let server;
before(async () => {
  browser = await launchBrowser();
  server = await Herald.start();
});
after(async () => {
  await closeAll(server, browser);
});

test('the server serves the client it was built with', async () => {
  for (const [path, file, type] of [
    ['/client/herald.js', '../herald.js', 'text/javascript; charset=utf-8'],
    ['/client/herald.d.ts', '../herald.d.ts', 'application/typescript; charset=utf-8'],
  ]) {
    const res = await fetch(`${server.url}${path}`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), type);
    const source = await readFile(new URL(file, import.meta.url), 'utf8');
    assert.equal(await res.text(), source, `${path} is stale: rebuild the herald binary`);
  }
});

test('the demo page subscribes, shows events as they arrive and publishes', async () => {
  const { context, page } = await runDemo(browser, server);
  try {
    const items = page.getByRole('list', { name: 'Events' }).getByRole('listitem');
    assert.equal(await items.count(), 3);
    // Receiving only, the page used SSE; its first publish moved it to a WebSocket.
    assert.match(await items.nth(0).innerText(), /demo · via sse/);
    assert.match(await items.nth(2).innerText(), /demo · chat · via ws/);
    // Labels, the status region and the live list are there for assistive technology.
    for (const label of ['Topic', 'Transport', 'Event name', 'Data']) {
      assert.equal(await page.getByLabel(label).count(), 1, label);
    }
    assert.equal(await page.getByRole('list', { name: 'Events' }).getAttribute('aria-live'), 'polite');
  } finally {
    await context.close();
  }
});
