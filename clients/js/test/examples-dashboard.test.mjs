// The live dashboard example (/examples/dashboard/) in a real browser: two
// viewers each show the server's metrics within 3 s, the first value coming
// from `since=latest` (measured before the page subscribed, not a later
// tick), both SSE connections counted, and the chart gaining a point a second.

import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { Herald, closeAll, launchBrowser, sleep } from './harness.mjs';

const EXAMPLES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../examples/web');
const TOPIC = 'examples/dashboard/metrics';

let browser;
let server;
before(async () => {
  browser = await launchBrowser();
  server = await Herald.start({ args: ['--examples', '--examples-dir', EXAMPLES] });
});
after(async () => {
  await closeAll(server, browser);
});

/** Waits for the server's next metrics tick (a long poll from now); its data. */
async function nextTick() {
  const res = await fetch(`${server.url}/v1/poll?topic=${encodeURIComponent(TOPIC)}&timeout=5`);
  assert.equal(res.status, 200);
  const { events } = await res.json();
  const e = events.find((x) => x.event === 'metrics');
  assert.ok(e, `a metrics event within 5 s: ${JSON.stringify(events)}`);
  return e.data;
}

/**
 * Opens the dashboard in a context of its own. The page's first request for
 * the topic is let through right after a tick of the server's generator: the
 * next tick is a second away, so the value the page shows at once can only be
 * the stored newest event (since=latest), measured before the page
 * subscribed. (A loaded machine may take longer than the tick period to load
 * a page, so the test does not rely on the page loading in time.) Resolves
 * once the tiles show numbers, 3 s at most after the page subscribed.
 */
async function openDashboard() {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
  const sub = {};
  await page.route(
    // The client asks for the starting point on its first request for the
    // topic (over SSE, a quick poll with since=latest, then the stream from
    // the cursor it got): that request is the one held.
    (url) => url.pathname === '/v1/sse' || url.pathname === '/v1/poll',
    async (route) => {
      if (!sub.url) {
        sub.url = route.request().url();
        try {
          sub.before = await nextTick();
        } catch (err) {
          sub.error = err;
        }
        sub.openedAt = Date.now();
      }
      await route.continue().catch(() => {});
    },
  );
  const t0 = Date.now();
  await page.goto(`${server.url}/examples/dashboard/`);
  try {
    await page.waitForFunction(
      () => [...document.querySelectorAll('#dashboard [data-metric]')].every((el) => /^\d+(\.\d+)?$/.test(el.textContent)),
      null,
      { timeout: 5000, polling: 50 },
    );
  } catch (err) {
    throw new Error(`tiles without numbers: ${err.message}\n${problems.join('\n')}`);
  }
  const shownAt = Date.now();
  assert.ok(sub.openedAt, 'the page subscribed');
  if (sub.error) throw sub.error;
  assert.ok(
    shownAt - sub.openedAt < 3000,
    `numbers shown ${shownAt - sub.openedAt} ms after the page subscribed (page opened ${shownAt - t0} ms before)`,
  );
  return { context, page, problems, sub };
}

/** What a viewer sees: the tiles' numbers, the measured time, the chart's point count, the first value's `at`. */
function seen(page) {
  return page.evaluate(() => {
    const root = document.getElementById('dashboard');
    const tiles = {};
    for (const el of root.querySelectorAll('[data-metric]')) tiles[el.dataset.metric] = Number(el.textContent);
    return {
      tiles,
      firstAt: Number(root.dataset.firstAt),
      lastAt: Number(root.dataset.lastAt),
      points: Number(root.dataset.points),
      measured: document.getElementById('measured').textContent,
      measuredIso: document.getElementById('measured').dateTime,
      canvas: (() => {
        const c = document.querySelector('#chart canvas');
        return c ? { width: c.width, height: c.height } : null;
      })(),
    };
  });
}

test('two viewers see the current metrics at once, then live, with both SSE connections counted', { timeout: 45_000 }, async () => {
  let a;
  let b;
  try {
    a = await openDashboard();
    b = await openDashboard();
    for (const [name, v] of [['first page', a], ['second page', b]]) {
      const s = await seen(v.page);
      for (const key of ['sse', 'ws', 'poll', 'published_per_s', 'delivered_per_s', 'topics']) {
        assert.ok(Number.isFinite(s.tiles[key]) && s.tiles[key] >= 0, `${name}: tile ${key} is a number: ${JSON.stringify(s.tiles)}`);
      }
      assert.ok(s.tiles.topics >= 1, `${name}: at least the metrics topic is active`);
      // The first value shown is the stored newest event, measured before the
      // page subscribed (since=latest), not a tick that came later.
      assert.equal(new URL(v.sub.url).searchParams.get('since'), 'latest', `${name}: the page asks for the latest value`);
      assert.ok(s.firstAt > 0, `${name}: the first value's time is exposed`);
      assert.equal(s.firstAt, v.sub.before.at, `${name}: the first value is the tick before the page subscribed`);
      assert.ok(
        s.firstAt < v.sub.openedAt,
        `${name}: first value measured at ${s.firstAt}, before the page subscribed at ${v.sub.openedAt}`,
      );
      assert.equal(new Date(s.measuredIso).getTime(), s.lastAt, `${name}: the measured time shown is the value's`);
      assert.notEqual(s.measured, '–');
      assert.ok(s.canvas && s.canvas.width > 0 && s.canvas.height > 0, `${name}: the chart is drawn`);
    }

    // Both pages are SSE subscribers: the count shown reaches 2 on each.
    for (const v of [a, b]) {
      await v.page.waitForFunction(
        () => Number(document.querySelector('#dashboard [data-metric="sse"]').textContent) >= 2,
        null,
        { timeout: 5000, polling: 100 },
      );
    }

    // The chart gains about a point a second, and the tiles follow the newest value.
    const p0 = await seen(a.page);
    await sleep(3200);
    const p1 = await seen(a.page);
    assert.ok(p1.points >= p0.points + 2, `chart points ${p0.points} -> ${p1.points} over 3 s`);
    assert.ok(p1.points <= 120, 'the chart keeps 120 points at most');
    assert.ok(p1.lastAt >= p0.lastAt + 2000, `values measured later: ${p0.lastAt} -> ${p1.lastAt}`);
    assert.ok(p1.tiles.sse >= 2, `the SSE count stays at least 2: ${JSON.stringify(p1.tiles)}`);
    assert.equal(p1.firstAt, p0.firstAt, 'the first value is the same one');

    // A value from the far future (anyone may publish on an open server)
    // does not freeze the page: the next real tick shows again.
    const bogus = Date.now() + 10 * 365 * 86_400_000;
    const res = await fetch(`${server.url}/v1/publish`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ topic: 'examples/dashboard/metrics', event: 'metrics', data: { at: bogus, connections: {} } }),
    });
    assert.equal(res.status, 200);
    await a.page.waitForFunction(
      (bogus) => {
        const at = Number(document.getElementById('dashboard').dataset.lastAt);
        return at > 0 && at < bogus;
      },
      bogus,
      { timeout: 5000, polling: 100 },
    );

    assert.deepEqual([...a.problems, ...b.problems], [], 'no script errors');
  } finally {
    await closeAll(a?.context, b?.context);
  }
});
