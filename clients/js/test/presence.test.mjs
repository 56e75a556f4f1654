// Presence over each transport, in headless Chromium against a real
// `herald serve` whose config gives `room/**` presence and join/leave:
// onJoin / onLeave with the user and info of the token, presence() with the
// transport of each client, joins that never move a cursor, a polling
// client's leave after the grace, and presence() refused where a topic has
// no presence.

import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  CutProxy,
  Herald,
  closeAll,
  launchBrowser,
  mintToken,
  openPage,
  sleep,
  tempDir,
  waitInPage,
} from './harness.mjs';

// Short delays so that reconnects happen within the test's time.
const FAST = { initialDelay: 100, maxDelay: 800, pollTimeout: 5 };
const SECRET = 'presence-test-secret-0123456789abcdef';
const BACKEND_KEY = 'presence-test-backend-key';
const GRACE_MS = 1000;
const ALICE = { name: 'Alice', color: '#c00' };
const BOB = { name: 'Bob' };

let browser;
let configDir;
let configFile;

before(async () => {
  browser = await launchBrowser();
  configDir = tempDir();
  configFile = path.join(configDir, 'herald.toml');
  writeFileSync(
    configFile,
    ['[[topics]]', 'pattern = "room/**"', 'presence = true', 'join_leave = true', ''].join('\n'),
  );
});

after(async () => {
  await closeAll(browser);
  if (configDir) rmSync(configDir, { recursive: true, force: true });
});

// The default keepalive (15 s): a page that closes its EventSource leaves
// at once, even when the stream was not the first request on its
// connection (the server watches the connection for its end).
function startServer() {
  return Herald.start({
    args: [
      '--config',
      configFile,
      '--poll-presence-grace',
      `${GRACE_MS / 1000}s`,
      '--jwt-secret',
      SECRET,
      '--publish-key',
      BACKEND_KEY,
    ],
  });
}

function tokenFor(sub, info) {
  return mintToken(SECRET, { sub, info, subscribe: ['room/**', 'chat/**'], ttl: '10m' });
}

/**
 * Connects `window.h` with `token` and subscribes to `topic`: its events in
 * `rec.events`, its onJoin / onLeave calls in `rec.joins` / `rec.leaves`
 * (with the time they came), and every event named herald.join as the
 * `on()` listener sees it in `rec.rawJoins`. Resolves once live.
 */
async function connectWithPresence(page, opts, topic) {
  await page.evaluate(
    ({ opts, topic }) => {
      Object.assign(rec, { joins: [], leaves: [], rawJoins: [] });
      window.h = herald.connect(location.origin, {
        ...opts,
        onStatus: (s) => rec.statuses.push(s),
        onError: (e) => rec.errors.push({ code: e.code, status: e.status, message: e.message }),
      });
      const off = h.subscribe(
        topic,
        {
          onJoin: (m) => rec.joins.push({ ...m, at: Date.now() }),
          onLeave: (m) => rec.leaves.push({ ...m, at: Date.now() }),
        },
        (e) => rec.events.push(e),
      );
      const raw = h.on(topic, 'herald.join', (e) => rec.rawJoins.push(e));
      return Promise.all([off.ready, raw.ready]);
    },
    { opts, topic },
  );
}

/** Waits until the page has the events `expected` (data), then a moment more, and checks them. */
async function expectData(page, expected) {
  await waitInPage(page, (n) => rec.events.length >= n, expected.length);
  await sleep(300);
  const events = await page.evaluate(() => rec.events);
  assert.deepEqual(
    events.map((e) => e.data),
    expected,
    'every event exactly once, in order',
  );
  return events;
}

/** The page's presence() of `topic`, as [user, transport] pairs sorted, and the whole answer. */
async function presenceOf(page, topic) {
  const answer = await page.evaluate((topic) => h.presence(topic), topic);
  const pairs = answer.clients.map((c) => `${c.user}/${c.transport}`).sort();
  return { answer, pairs };
}

for (const transport of ['sse', 'ws', 'poll']) {
  describe(`presence over ${transport}`, () => {
    test('onJoin, presence(), onLeave; a join moves no cursor', async (t) => {
      const server = await startServer();
      // Page A reaches the server through a proxy, to cut its connection.
      const proxy = await CutProxy.start(server.port);
      const a = await openPage(browser, proxy.url);
      const b = await openPage(browser, server.url);
      try {
        const [alice, bob] = await Promise.all([tokenFor('alice', ALICE), tokenFor('bob', BOB)]);
        await connectWithPresence(a.page, { transport, token: alice, ...FAST }, 'room/1');
        await server.publish('room/1', 'e1', { key: BACKEND_KEY });
        await waitInPage(a.page, () => rec.events.length >= 1);
        const cursorBefore = await a.page.evaluate(() => h._topics.get('room/1').cursor);
        assert.equal(cursorBefore, (await a.page.evaluate(() => rec.events[0].id)), 'the cursor is e1');

        // B arrives: A sees its join, with the user and info of B's token.
        await connectWithPresence(b.page, { transport, token: bob, ...FAST }, 'room/1');
        await waitInPage(a.page, () => rec.joins.some((j) => j.user === 'bob'));
        const join = (await a.page.evaluate(() => rec.joins)).find((j) => j.user === 'bob');
        assert.deepEqual(join.info, BOB);
        assert.equal(join.topic, 'room/1');
        assert.match(join.client, /.+/);
        const raw = (await a.page.evaluate(() => rec.rawJoins)).find((e) => e.data.user === 'bob');
        assert.equal(raw.event, 'herald.join');
        assert.equal(raw.id, null, 'a join has no cursor');
        assert.equal(
          await a.page.evaluate(() => h._topics.get('room/1').cursor),
          cursorBefore,
          'the join left the cursor where it was',
        );

        // presence() lists both, each with its transport, from either page
        // (from A over the WebSocket when that is its transport). Over SSE
        // the transient entries of the clients' first zero-timeout polls
        // leave after the grace: wait for the list to settle.
        const expected = [`alice/${transport}`, `bob/${transport}`];
        const seen = [];
        let settled;
        for (const deadline = Date.now() + 10_000; Date.now() < deadline; await sleep(200)) {
          settled = await presenceOf(a.page, 'room/1');
          seen.push(settled.pairs.join(','));
          if (JSON.stringify(settled.pairs) === JSON.stringify(expected)) break;
        }
        t.diagnostic(`presence lists seen: ${[...new Set(seen)].join(' | ')}`);
        assert.deepEqual(settled.pairs, expected);
        assert.equal(settled.answer.topic, 'room/1');
        const aliceEntry = settled.answer.clients.find((c) => c.user === 'alice');
        const bobEntry = settled.answer.clients.find((c) => c.user === 'bob');
        assert.deepEqual(aliceEntry.info, ALICE);
        assert.deepEqual(bobEntry.info, BOB);
        assert.deepEqual((await presenceOf(b.page, 'room/1')).pairs, expected, 'B sees the same');
        const presenceRequests = a.requests.filter((r) => r.url.includes('/v1/presence'));
        if (transport === 'ws') assert.deepEqual(presenceRequests, [], 'presence over the socket');
        else assert.ok(presenceRequests.length >= 1, 'presence over GET /v1/presence');
        if (transport === 'poll') {
          const polls = a.requests.filter((r) => r.url.includes('/v1/poll?'));
          const ids = new Set(polls.map((r) => new URL(r.url).searchParams.get('client')));
          assert.equal(ids.size, 1, 'one client id on every poll');
          assert.match([...ids][0], /^[0-9a-f]{32}$/);
        }

        // A loses its connection after the join and resumes by its cursor:
        // nothing replayed, nothing skipped.
        proxy.cut();
        await waitInPage(a.page, () => rec.statuses.some((s) => s.state === 'reconnecting'));
        await server.publish('room/1', 'e2', { key: BACKEND_KEY });
        proxy.restore();
        await waitInPage(a.page, () => rec.events.length >= 2);
        await server.publish('room/1', 'e3', { key: BACKEND_KEY });
        const events = await expectData(a.page, ['e1', 'e2', 'e3']);
        assert.ok(
          events.every((e) => e.event === null),
          'joins and leaves never reach the subscribe handler',
        );

        // B goes: A sees B's leave (a polling client's after the grace).
        const leavesBefore = await a.page.evaluate(() => rec.leaves.length);
        const closedAt = Date.now();
        await b.page.evaluate(() => h.close());
        await waitInPage(
          a.page,
          (client) => rec.leaves.some((l) => l.client === client),
          bobEntry.client,
        );
        const leave = (await a.page.evaluate(() => rec.leaves)).find((l) => l.client === bobEntry.client);
        assert.equal(leave.user, 'bob');
        assert.deepEqual(leave.info, BOB);
        assert.equal(leave.topic, 'room/1');
        if (transport === 'poll') {
          assert.ok(leave.at - closedAt >= GRACE_MS - 100, `left after the grace (${leave.at - closedAt} ms)`);
        }
        t.diagnostic(`leaves after B closed: ${(await a.page.evaluate(() => rec.leaves.length)) - leavesBefore}`);
        assert.deepEqual(await a.page.evaluate(() => rec.errors), []);
        assert.deepEqual(await b.page.evaluate(() => rec.errors), []);
        assert.deepEqual(a.consoleLines.filter((l) => l.startsWith('pageerror')), []);
      } finally {
        await closeAll(a.context, b.context, proxy, server);
      }
    });
  });
}

test('two long-polling clients of one user are two presence entries', async () => {
  const server = await startServer();
  const { context, page } = await openPage(browser, server.url);
  try {
    const alice = await tokenFor('alice', ALICE);
    await page.evaluate(
      async ({ opts }) => {
        window.h = herald.connect(location.origin, opts);
        window.h2 = herald.connect(location.origin, opts);
        await Promise.all([h.subscribe('room/2', () => {}).ready, h2.subscribe('room/2', () => {}).ready]);
      },
      { opts: { transport: 'poll', token: alice, ...FAST } },
    );
    // A long-polling client is present once its held poll reaches the
    // server, which can come a moment after `ready` (its first, zero-timeout
    // poll): ask again for up to 5 s.
    let { answer } = await presenceOf(page, 'room/2');
    for (let i = 0; i < 50 && answer.clients.length < 2; i++) {
      await new Promise((r) => setTimeout(r, 100));
      ({ answer } = await presenceOf(page, 'room/2'));
    }
    assert.equal(answer.clients.length, 2, JSON.stringify(answer));
    assert.ok(answer.clients.every((c) => c.user === 'alice' && c.transport === 'poll'));
    assert.notEqual(answer.clients[0].client, answer.clients[1].client);
  } finally {
    await closeAll(context, server);
  }
});

test('presence() refuses a topic without presence (presence_disabled) and a forbidden one', async () => {
  const server = await startServer();
  const { context, page, requests } = await openPage(browser, server.url);
  try {
    const alice = await tokenFor('alice', ALICE);
    const outcomes = await page.evaluate(
      async ({ alice, fast }) => {
        const out = {};
        const codeOf = (p) =>
          p.then(
            (v) => ({ resolved: v }),
            (e) => ({ name: e.name, code: e.code, status: e.status ?? null, isError: e instanceof Error }),
          );
        for (const transport of ['ws', 'poll']) {
          const c = herald.connect(location.origin, { transport, token: alice, ...fast });
          await c.subscribe('room/3', () => {}).ready;
          out[transport] = {
            disabled: await codeOf(c.presence('chat/1')),
            forbidden: await codeOf(c.presence('secret/1')),
          };
          c.close();
        }
        return out;
      },
      { alice, fast: FAST },
    );
    for (const transport of ['ws', 'poll']) {
      const { disabled, forbidden } = outcomes[transport];
      assert.equal(disabled.isError, true, `${transport}: ${JSON.stringify(disabled)}`);
      assert.equal(disabled.name, 'HeraldError');
      assert.equal(disabled.code, 'presence_disabled');
      assert.equal(forbidden.code, 'forbidden', `${transport}: ${JSON.stringify(forbidden)}`);
    }
    // Over HTTP the status comes along; the WebSocket asked over the socket.
    assert.equal(outcomes.poll.disabled.status, 400);
    assert.equal(outcomes.poll.forbidden.status, 403);
    assert.equal(requests.filter((r) => r.url.includes('/v1/presence')).length, 2);
  } finally {
    await closeAll(context, server);
  }
});
