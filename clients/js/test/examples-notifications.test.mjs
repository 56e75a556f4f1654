// The notifications example (/examples/notifications/) in headless Chromium
// against a real `herald serve --examples`: one user notifies another, the
// unread badge counts and clears, notifications sent while the page was
// closed arrive on the next visit as unread without duplicating the history;
// on a server with JWTs a backend's publish reaches the user of the token,
// whose token cannot read another user's topic.

import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { Herald, closeAll, launchBrowser, mintToken, sleep } from './harness.mjs';

const EXAMPLES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../examples/web');
const SECRET = 'examples-notifications-secret-0123456789';
const BACKEND_KEY = 'examples-notifications-backend-key';
const WAIT = { timeout: 15_000 };

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await closeAll(browser);
});

/** Opens the page in `context`; page errors are collected in `errors`. */
async function openNotifications(context, url, errors) {
  const page = await context.newPage();
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.waitForSelector('#status[data-state="open"]', WAIT);
  return page;
}

/** What the page shows: the badge, and the list (newest first) with each item's id and unread mark. */
function inbox(page) {
  return page.evaluate(() => ({
    badge: document.getElementById('badge').textContent,
    items: [...document.querySelectorAll('#list li[data-id]')].map((li) => ({
      id: li.dataset.id,
      text: li.querySelector('.text').textContent,
      unread: li.classList.contains('unread'),
    })),
    error: document.getElementById('error').textContent,
  }));
}

/** Waits until the page's inbox satisfies `check` (badge, texts), then a moment more. */
async function waitInbox(page, badge, texts) {
  await page.waitForFunction(
    ({ badge, texts }) => {
      const shown = [...document.querySelectorAll('#list li[data-id] .text')].map((t) => t.textContent);
      return (
        document.getElementById('badge').textContent === badge &&
        JSON.stringify(shown) === JSON.stringify(texts)
      );
    },
    { badge, texts },
    { ...WAIT, polling: 50 },
  ).catch(async (err) => {
    throw new Error(`${err.message}\ninbox: ${JSON.stringify(await inbox(page))}`);
  });
  // Nothing more (no late duplicate) arrives.
  await sleep(400);
  return inbox(page);
}

async function send(page, to, text) {
  await page.fill('#to', to);
  await page.fill('#text', text);
  await page.click('#send button[type="submit"]');
  await page.waitForFunction(
    (to) => document.getElementById('sent').textContent === `sent to ${to}` && document.getElementById('text').value === '',
    to,
    { ...WAIT, polling: 50 },
  );
}

test('alice notifies bob: badge, mark read, and what arrives while bob is away', async () => {
  const server = await Herald.start({ args: ['--examples', '--examples-dir', EXAMPLES] });
  const aliceCtx = await browser.newContext();
  const bobCtx = await browser.newContext();
  const errors = [];
  try {
    const base = `${server.url}/examples/notifications/`;
    const alice = await openNotifications(aliceCtx, `${base}?name=alice`, errors);
    let bob = await openNotifications(bobCtx, `${base}?name=bob`, errors);
    assert.equal(await bob.textContent('#user'), 'bob');
    assert.equal(await bob.textContent('#topic'), 'examples/notifications/bob');
    assert.equal(await bob.textContent('#badge'), '0');

    // The backend command on the page follows the form.
    await alice.fill('#to', 'bob');
    await alice.fill('#text', "it's here");
    assert.equal(
      await alice.textContent('#curl'),
      // An open server: no key to send.
      `curl -X POST ${server.url}/v1/publish \\\n` +
        "  -H 'content-type: application/json' \\\n" +
        `  -d '{"topic": "examples/notifications/bob", "event": "notification", "data": {"from": "backend", "text": "it'\\''s here"}}'`,
    );

    await send(alice, 'bob', 'hello bob');
    let seen = await waitInbox(bob, '1', ['hello bob']);
    assert.equal(seen.items[0].unread, true);
    assert.match(await bob.textContent('#list li[data-id] .meta'), /from alice/);

    await bob.click('#mark-read');
    seen = await waitInbox(bob, '0', ['hello bob']);
    assert.equal(seen.items[0].unread, false);
    const firstId = seen.items[0].id;

    // Bob closes the page; alice sends two more; bob comes back.
    await bob.close();
    await send(alice, 'bob', 'second');
    await send(alice, 'bob', 'third');
    bob = await openNotifications(bobCtx, `${base}?name=bob`, errors);
    seen = await waitInbox(bob, '2', ['third', 'second', 'hello bob']);
    assert.deepEqual(
      seen.items.map((i) => i.unread),
      [true, true, false],
      'the two sent while away are unread, the one read before is not',
    );
    assert.equal(new Set(seen.items.map((i) => i.id)).size, 3, 'no duplicate');
    assert.equal(seen.items[2].id, firstId);

    // A reload now shows the same, the badge included.
    await bob.reload();
    await bob.waitForSelector('#status[data-state="open"]', WAIT);
    seen = await waitInbox(bob, '2', ['third', 'second', 'hello bob']);

    // Alice received nothing of this.
    assert.deepEqual(await inbox(alice), { badge: '0', items: [], error: '' });
    assert.equal(seen.error, '');
    assert.deepEqual(errors, []);
  } finally {
    await closeAll(aliceCtx, bobCtx, server);
  }
});

test('with JWTs: a backend notifies bob; bob cannot read alice\'s topic', async () => {
  const server = await Herald.start({
    args: ['--examples', '--examples-dir', EXAMPLES, '--jwt-secret', SECRET, '--publish-key', BACKEND_KEY],
  });
  const bobCtx = await browser.newContext();
  const aliceCtx = await browser.newContext();
  const guestCtx = await browser.newContext();
  const errors = [];
  try {
    const tokenOf = (sub) =>
      mintToken(SECRET, {
        sub,
        subscribe: ['examples/notifications/{sub}'],
        publish: ['examples/notifications/*'],
        ttl: '10m',
      });
    const [bobToken, aliceToken] = await Promise.all([tokenOf('bob'), tokenOf('alice')]);
    const base = `${server.url}/examples/notifications/`;
    // ?name= does not override the token's subject.
    const bob = await openNotifications(bobCtx, `${base}?name=mallory#token=${bobToken}`, errors);
    assert.equal(await bob.textContent('#user'), 'bob');
    assert.equal(await bob.textContent('#topic'), 'examples/notifications/bob');
    assert.equal(new URL(bob.url()).hash, '', 'the token left the address bar');

    // The backend publishes with its key, as the page's curl command does.
    const res = await fetch(`${server.url}/v1/publish`, {
      method: 'POST',
      headers: { authorization: `Bearer ${BACKEND_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        topic: 'examples/notifications/bob',
        event: 'notification',
        data: { from: 'backend', text: 'Your export is ready' },
      }),
    });
    assert.equal(res.status, 200, await res.text());
    const seen = await waitInbox(bob, '1', ['Your export is ready']);
    assert.equal(seen.error, '');
    assert.match(await bob.textContent('#list li[data-id] .meta'), /from backend/);

    // Bob's token reads bob's topic and nothing else.
    const auth = { authorization: `Bearer ${bobToken}` };
    const own = await fetch(`${server.url}/v1/history?topic=examples/notifications/bob`, { headers: auth });
    assert.equal(own.status, 200);
    assert.deepEqual((await own.json()).events.map((e) => e.data.text), ['Your export is ready']);
    const history = await fetch(`${server.url}/v1/history?topic=examples/notifications/alice`, { headers: auth });
    assert.equal(history.status, 403, await history.text());
    const sse = await fetch(`${server.url}/v1/sse?topic=examples/notifications/alice`, {
      headers: auth,
      signal: AbortSignal.timeout(5000),
    });
    assert.equal(sse.status, 403, await sse.text());

    // Bob's page sends alice a notification with bob's token; alice's page gets it.
    const alice = await openNotifications(aliceCtx, `${base}#token=${aliceToken}`, errors);
    assert.equal(await alice.textContent('#user'), 'alice');
    await send(bob, 'alice', 'lunch?');
    await waitInbox(alice, '1', ['lunch?']);
    assert.match(await alice.textContent('#list li[data-id] .meta'), /from bob/);

    // Without a token the page shows the refusal.
    const guest = await guestCtx.newPage();
    guest.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
    await guest.goto(`${base}?name=alice`);
    await guest.waitForSelector('#error[data-code="unauthorized"]', WAIT);
    assert.match(await guest.textContent('#error'), /unauthorized \(401\)/);
    assert.deepEqual((await inbox(guest)).items, []);
    assert.deepEqual(errors, []);
  } finally {
    await closeAll(bobCtx, aliceCtx, guestCtx, server);
  }
});
