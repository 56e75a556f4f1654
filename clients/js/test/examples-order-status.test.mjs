// The order-status example (/examples/order-status/) in headless Chromium
// against a real `herald serve --examples`: the README's quick-start publish
// shows on two pages watching orders/123 (name, data, the "shipped" step), an
// unnamed publish shows too, a reload keeps the timeline (since: 'earliest'),
// and another order is a topic of its own.

import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { Herald, closeAll, launchBrowser, sleep } from './harness.mjs';

const EXAMPLES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../examples/web');
const WAIT = { timeout: 15_000 };
// Exactly the body of the README's quick start.
const README_BODY = '{"topic": "orders/123", "event": "order-update", "data": {"status": "shipped"}}';

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await closeAll(browser);
});

async function openOrder(context, url, errors) {
  const page = await context.newPage();
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.waitForSelector('#status[data-state="open"]', WAIT);
  return page;
}

/** What the page shows: the timeline (name, data) and the steps' states. */
function shown(page) {
  return page.evaluate(() => ({
    timeline: [...document.querySelectorAll('#timeline li')].map((li) => ({
      name: li.querySelector('.name').textContent,
      data: li.querySelector('.data').textContent,
    })),
    steps: Object.fromEntries(
      [...document.querySelectorAll('#steps li')].map((li) => [
        li.dataset.step,
        li.classList.contains('active') ? 'active' : li.classList.contains('done') ? 'done' : 'todo',
      ]),
    ),
    topic: document.getElementById('topic').textContent,
    error: document.getElementById('error').textContent,
  }));
}

/** Waits until the timeline has `n` entries, then a moment more (no duplicate follows). */
async function waitTimeline(page, n) {
  await page
    .waitForFunction((n) => document.querySelectorAll('#timeline li').length >= n, n, { ...WAIT, polling: 50 })
    .catch(async (err) => {
      throw new Error(`${err.message}\npage: ${JSON.stringify(await shown(page))}`);
    });
  await sleep(300);
  return shown(page);
}

async function publish(server, body) {
  const res = await fetch(`${server.url}/v1/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body,
  });
  assert.equal(res.status, 200, await res.text());
}

const SHIPPED = { placed: 'done', paid: 'done', shipped: 'active', delivered: 'todo' };
const NONE = { placed: 'todo', paid: 'todo', shipped: 'todo', delivered: 'todo' };

test("the README's publish shows on two pages, unnamed too, and survives a reload", async () => {
  const server = await Herald.start({ args: ['--examples', '--examples-dir', EXAMPLES] });
  const ctx1 = await browser.newContext();
  const ctx2 = await browser.newContext();
  const errors = [];
  try {
    const p1 = await openOrder(ctx1, `${server.url}/examples/order-status/`, errors);
    const p2 = await openOrder(ctx2, `${server.url}/examples/order-status/?order=123`, errors);
    for (const p of [p1, p2]) {
      assert.deepEqual(await shown(p), { timeline: [], steps: NONE, topic: 'orders/123', error: '' });
      assert.equal(
        await p.textContent('#curl'),
        `curl -X POST ${server.url}/v1/publish \\\n` +
          "  -H 'content-type: application/json' \\\n" +
          `  -d '${README_BODY}'`,
        "the README's command, for this server",
      );
    }

    await publish(server, README_BODY);
    const shipped = [{ name: 'order-update', data: '{"status":"shipped"}' }];
    for (const p of [p1, p2]) {
      assert.deepEqual(await waitTimeline(p, 1), { timeline: shipped, steps: SHIPPED, topic: 'orders/123', error: '' });
    }

    await publish(server, '{"topic": "orders/123", "data": {"note": "left the warehouse"}}');
    const both = [...shipped, { name: '(unnamed)', data: '{"note":"left the warehouse"}' }];
    for (const p of [p1, p2]) {
      const s = await waitTimeline(p, 2);
      assert.deepEqual(s.timeline, both);
      assert.deepEqual(s.steps, SHIPPED, 'an event without a status leaves the step');
    }

    // A reload replays the whole timeline (since: 'earliest').
    await p1.reload();
    await p1.waitForSelector('#status[data-state="open"]', WAIT);
    assert.deepEqual(await waitTimeline(p1, 2), { timeline: both, steps: SHIPPED, topic: 'orders/123', error: '' });

    // Another order is another topic: p2 switches to 456 and sees only its events.
    await p2.fill('#order', '456');
    await p2.click('#order-form button[type="submit"]');
    await p2.waitForFunction(() => document.getElementById('topic').textContent === 'orders/456', null, WAIT);
    assert.equal(new URL(p2.url()).searchParams.get('order'), '456');
    assert.match(await p2.textContent('#curl'), /"topic": "orders\/456"/);
    await p2.selectOption('#next', 'delivered');
    assert.match(await p2.textContent('#curl'), /\{"status": "delivered"\}/);
    await publish(server, '{"topic": "orders/456", "event": "order-update", "data": {"status": "delivered"}}');
    const s2 = await waitTimeline(p2, 1);
    assert.deepEqual(s2.timeline, [{ name: 'order-update', data: '{"status":"delivered"}' }]);
    assert.deepEqual(s2.steps, { placed: 'done', paid: 'done', shipped: 'done', delivered: 'active' });
    assert.deepEqual((await shown(p1)).timeline, both, 'orders/123 did not get it');
    assert.deepEqual(errors, []);
  } finally {
    await closeAll(ctx1, ctx2, server);
  }
});
