// The chat example (/examples/chat/), in headless Chromium against a real
// `herald serve --examples`: two visitors in separate browser contexts see
// each other's messages with their names, each other in the presence list,
// a leave line when one goes, the room's history after a reload; and, with
// a publish hook, a refused message shows its reason to its sender and
// reaches nobody while an accepted one goes through.

import assert from 'node:assert/strict';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { Herald, closeAll, launchBrowser, mintToken, sleep } from './harness.mjs';

const EXAMPLES_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../examples/web');
const HOOK_SECRET = 'examples-chat-hook-secret-0123456789';

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await closeAll(browser);
});

function startServer(extra = []) {
  return Herald.start({ args: ['--examples', '--examples-dir', EXAMPLES_DIR, ...extra] });
}

/**
 * Opens the chat page in a browser context of its own (a visitor of its
 * own) and waits until it is connected and lists itself as present.
 */
async function openChat(server, query, { session } = {}) {
  const context = await browser.newContext();
  // A session cookie, as an application's login would set it: the connect
  // hook reads who the visitor is from it.
  if (session) await context.addCookies([{ name: 'session', value: session, url: server.url }]);
  const page = await context.newPage();
  const log = [];
  page.on('console', (m) => log.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
  await page.goto(`${server.url}/examples/chat/?${query}`);
  try {
    await waitReady(page);
  } catch (err) {
    const state = await page.evaluate(() => document.body.innerText).catch(() => '');
    throw new Error(`${err.message}\npage: ${state}\nlog: ${log.join('\n')}`);
  }
  return { context, page, log };
}

async function waitReady(page) {
  await page.waitForSelector('#status[data-state="open"]', { timeout: 15_000 });
  await page.waitForFunction(
    () => [...document.querySelectorAll('#members li')].some((li) => li.textContent.endsWith('(you)')),
    null,
    { timeout: 15_000, polling: 50 },
  );
}

/** The names in the page's presence list, sorted. */
function memberNames(page) {
  return page.evaluate(() => [...document.querySelectorAll('#members li')].map((li) => li.dataset.name).sort());
}

/** Waits until the presence list names exactly `names` (sorted). */
async function waitMembers(page, names, timeout = 10_000) {
  await page.waitForFunction(
    (want) =>
      JSON.stringify([...document.querySelectorAll('#members li')].map((li) => li.dataset.name).sort()) ===
      JSON.stringify(want),
    [...names].sort(),
    { timeout, polling: 50 },
  );
}

/** The message lines of the page: [{name, text}], in order. */
function messages(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('#messages li.msg')].map((li) => ({
      name: li.querySelector('.who').textContent,
      text: li.querySelector('.text').textContent,
    })),
  );
}

/** Waits until the page shows a message `text` by `name`. */
async function waitMessage(page, name, text, timeout = 10_000) {
  await page.waitForFunction(
    ({ name, text }) =>
      [...document.querySelectorAll('#messages li.msg')].some(
        (li) => li.querySelector('.who').textContent === name && li.querySelector('.text').textContent === text,
      ),
    { name, text },
    { timeout, polling: 50 },
  );
}

async function send(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

test('two visitors: messages with names, presence, a leave line, history after a reload', async () => {
  const server = await startServer();
  let ann;
  let ben;
  try {
    ann = await openChat(server, 'room=t1&name=ann');
    assert.equal(await ann.page.textContent('#me'), 'ann');
    assert.deepEqual(await memberNames(ann.page), ['ann']);

    ben = await openChat(server, 'room=t1&name=ben');
    // Each learns the other's name from its hello: presence alone has only client ids.
    await waitMembers(ann.page, ['ann', 'ben']);
    await waitMembers(ben.page, ['ann', 'ben']);
    assert.equal(await ann.page.textContent('#member-count'), '2');
    // Ann saw Ben arrive, by name.
    await ann.page.waitForFunction(
      () => [...document.querySelectorAll('#messages li[data-join]')].some((li) => li.textContent === 'ben joined'),
      null,
      { timeout: 10_000, polling: 50 },
    );

    await send(ann.page, 'hello from ann');
    await waitMessage(ben.page, 'ann', 'hello from ann');
    await send(ben.page, 'hi ann, ben here');
    await waitMessage(ann.page, 'ben', 'hi ann, ben here');
    // Each message once, in order, on both pages (the sender's own comes back from the room).
    const expected = [
      { name: 'ann', text: 'hello from ann' },
      { name: 'ben', text: 'hi ann, ben here' },
    ];
    await waitMessage(ben.page, 'ben', 'hi ann, ben here');
    assert.deepEqual(await messages(ann.page), expected);
    assert.deepEqual(await messages(ben.page), expected);

    // Ben closes his page: he leaves Ann's list, with a line saying so.
    await ben.context.close();
    ben = null;
    await waitMembers(ann.page, ['ann']);
    await ann.page.waitForFunction(
      () => [...document.querySelectorAll('#messages li[data-leave]')].some((li) => li.textContent === 'ben left'),
      null,
      { timeout: 10_000, polling: 50 },
    );
    assert.equal(await ann.page.textContent('#member-count'), '1');

    // A reload brings the room's earlier messages back from its history.
    await ann.page.reload();
    await waitReady(ann.page);
    await waitMessage(ann.page, 'ben', 'hi ann, ben here');
    await sleep(300);
    assert.deepEqual(await messages(ann.page), expected, 'history: every earlier message once, in order');
    assert.deepEqual(await memberNames(ann.page), ['ann']);
    assert.deepEqual(
      ann.log.filter((l) => l.startsWith('pageerror') || l.startsWith('error')),
      [],
      'no error in the page',
    );
  } finally {
    await closeAll(ben?.context, ann?.context, server);
  }
});

/**
 * The application's hook endpoint: checks each request's signature
 * (DESIGN.md, "Hooks": `x-herald-signature: t=<unix s>,v1=<hex HMAC-SHA256 of "<t>.<body>">`),
 * identifies connections (the connect hook is on with --hook-url) and
 * refuses publishes whose text contains "spam".
 */
async function startHook(secret) {
  const seen = { connects: 0, publishes: [], badSignatures: 0 };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const reply = (status, json) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(json));
      };
      if (req.method !== 'POST' || req.url !== '/hook' || !signed(secret, req.headers['x-herald-signature'], body)) {
        seen.badSignatures++;
        reply(401, { reason: 'bad signature' });
        return;
      }
      const msg = JSON.parse(body);
      if (msg.type === 'connect') {
        seen.connects++;
        const cookie = /(?:^|;\s*)session=([a-z]+)/.exec(msg.headers?.cookie ?? '');
        if (!cookie) {
          reply(401, { reason: 'no session' });
          return;
        }
        reply(200, {
          user: cookie[1],
          grants: { subscribe: ['examples/**'], publish: ['examples/**'] },
        });
      } else if (msg.type === 'publish') {
        seen.publishes.push(msg);
        const text = msg.data && typeof msg.data.text === 'string' ? msg.data.text : '';
        if (text.includes('spam')) reply(403, { reason: 'no spam' });
        else reply(200, {});
      } else {
        reply(200, {});
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    server,
    seen,
    url: `http://127.0.0.1:${server.address().port}/hook`,
    close: () => {
      server.close();
      server.closeAllConnections();
    },
  };
}

function signed(secret, header, body) {
  if (typeof header !== 'string') return false;
  let t = null;
  const v1 = [];
  for (const part of header.split(',')) {
    const [k, v] = part.split('=', 2);
    if (k === 't' && /^\d+$/.test(v)) t = v;
    else if (k === 'v1' && /^[0-9a-f]{64}$/.test(v)) v1.push(Buffer.from(v, 'hex'));
  }
  if (t === null || Math.abs(Date.now() / 1000 - Number(t)) > 300) return false;
  const want = createHmac('sha256', secret).update(`${t}.`).update(body).digest();
  return v1.some((got) => timingSafeEqual(got, want));
}

test('publish hook: a refused message shows its reason to its sender and reaches nobody', async (t) => {
  const hook = await startHook(HOOK_SECRET);
  const server = await startServer(['--hook-url', hook.url, '--hook-secret', HOOK_SECRET]);
  let ann;
  let ben;
  try {
    ann = await openChat(server, 'room=hooked&name=ann', { session: 'ann' });
    ben = await openChat(server, 'room=hooked&name=ben', { session: 'ben' });
    await waitMembers(ann.page, ['ann', 'ben']);

    await send(ann.page, 'buy cheap spam now');
    await ann.page.waitForFunction(
      () => [...document.querySelectorAll('#messages li.error')].some((li) => li.textContent.includes('no spam')),
      null,
      { timeout: 10_000, polling: 50 },
    );
    const error = await ann.page.textContent('#messages li.error');
    t.diagnostic(`the sender sees: ${error}`);
    assert.match(error, /buy cheap spam now/, 'the error names the message');
    assert.match(error, /no spam/, "the error gives the hook's reason");

    await send(ann.page, 'a fair message');
    await waitMessage(ben.page, 'ann', 'a fair message');
    await waitMessage(ann.page, 'ann', 'a fair message');
    await sleep(300);
    // The refused one reached nobody, not even its sender's list.
    assert.deepEqual(await messages(ben.page), [{ name: 'ann', text: 'a fair message' }]);
    assert.deepEqual(await messages(ann.page), [{ name: 'ann', text: 'a fair message' }]);
    assert.equal(await ben.page.locator('#messages li.error').count(), 0);

    // The hook was asked about both, signed, with what the page sent.
    const asked = hook.seen.publishes.filter((p) => p.event === 'message');
    assert.deepEqual(
      asked.map((p) => [p.topic, p.data.name, p.data.text]),
      [
        ['examples/chat/hooked', 'ann', 'buy cheap spam now'],
        ['examples/chat/hooked', 'ann', 'a fair message'],
      ],
    );
    assert.equal(asked[0].user, 'ann', "the connect hook's user, from the session cookie");
    assert.ok(hook.seen.connects >= 2, 'each page was identified by the connect hook');
    assert.equal(hook.seen.badSignatures, 0, 'every hook request was signed with the secret');
  } finally {
    await closeAll(ben?.context, ann?.context, server, hook);
  }
});

test("a name a credential gives is not overridden by another client's hello", async () => {
  const secret = 'chat-test-secret-0123456789abcdef';
  const server = await startServer(['--jwt-secret', secret]);
  let alice;
  let bob;
  try {
    const grants = { subscribe: ['examples/chat/**'], publish: ['examples/chat/**'] };
    const aliceToken = await mintToken(secret, { sub: 'alice', ...grants, info: { name: 'Alice' }, ttl: '5m' });
    const bobToken = await mintToken(secret, { sub: 'bob', ...grants, info: { name: 'Bob' }, ttl: '5m' });
    alice = await openChat(server, `room=verified#token=${aliceToken}`);
    bob = await openChat(server, `room=verified#token=${bobToken}`);
    await waitMembers(bob.page, ['Alice', 'Bob']);
    const aliceId = await bob.page.evaluate(
      () => [...document.querySelectorAll('#members li')].find((li) => li.dataset.name === 'Alice').dataset.client,
    );
    // Someone allowed to publish claims Alice's client id under another name.
    const mallory = await mintToken(secret, { sub: 'mallory', publish: ['examples/chat/**'] });
    const res = await fetch(`${server.url}/v1/publish`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${mallory}` },
      body: JSON.stringify({
        topic: 'examples/chat/verified',
        event: 'hello',
        data: { from: aliceId, name: 'Mallory (admin)' },
      }),
    });
    assert.equal(res.status, 200);
    await sleep(800);
    assert.deepEqual(await memberNames(bob.page), ['Alice', 'Bob']);
  } finally {
    await closeAll(bob?.context, alice?.context, server);
  }
});
