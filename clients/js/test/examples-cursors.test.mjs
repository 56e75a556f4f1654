// The live cursors example (/examples/cursors/), in headless Chromium
// against a real `herald serve --examples`: three visitors in separate
// browser contexts; one's pointer shows on another's page at the same
// place with its name, at most 30 publishes a second; a visitor who closes
// the page loses its cursor through herald.leave (well before the 10 s
// fallback); a reload shows only who is here now (the topic is ephemeral).

import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { Herald, closeAll, launchBrowser, sleep } from './harness.mjs';

const EXAMPLES_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../examples/web');
const VIEWPORT = { width: 1000, height: 700 };
// How close (a fraction of the area) a drawn cursor must be to where the pointer is.
const TOLERANCE = 0.03;

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await closeAll(browser);
});

/**
 * Opens the cursors page as a visitor of its own (a browser context each),
 * counting the publishes its WebSocket sends.
 */
async function openCursors(server, name) {
  const context = await browser.newContext({ viewport: VIEWPORT });
  const page = await context.newPage();
  const log = [];
  const sent = []; // times of publish frames
  page.on('console', (m) => log.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
  page.on('websocket', (ws) =>
    ws.on('framesent', (f) => {
      if (typeof f.payload === 'string' && f.payload.includes('"type":"publish"')) sent.push(Date.now());
    }),
  );
  await page.goto(`${server.url}/examples/cursors/?name=${name}`);
  await waitReady(page);
  return { context, page, log, sent, name };
}

async function waitReady(page) {
  await page.waitForSelector('#status[data-state="open"]', { timeout: 15_000 });
}

async function waitCount(page, n, timeout = 10_000) {
  await page.waitForFunction((n) => document.querySelector('#count').dataset.count === String(n), n, {
    timeout,
    polling: 50,
  });
}

/** Moves the visitor's mouse, in steps, to (fx, fy): fractions of the cursor area. */
async function moveTo(v, fx, fy, steps = 8) {
  const box = await v.page.locator('#area').boundingBox();
  await v.page.mouse.move(box.x + fx * box.width, box.y + fy * box.height, { steps });
}

/**
 * Waits until `page` draws `name`'s cursor within TOLERANCE of (fx, fy),
 * measured from what is on screen: the cursor's top-left (its arrow's tip)
 * within the area.
 */
async function waitCursorAt(page, name, fx, fy, timeout = 10_000) {
  await page.waitForFunction(
    ({ name, fx, fy, tol }) => {
      const el = document.querySelector(`#area .cursor[data-name="${name}"]`);
      if (!el) return false;
      const area = document.querySelector('#area').getBoundingClientRect();
      const r = el.getBoundingClientRect();
      const x = (r.left - area.left) / area.width;
      const y = (r.top - area.top) / area.height;
      return Math.abs(x - fx) <= tol && Math.abs(y - fy) <= tol;
    },
    { name, fx, fy, tol: TOLERANCE },
    { timeout, polling: 50 },
  );
}

function cursorNames(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('#area .cursor')].map((el) => el.querySelector('.label').textContent).sort(),
  );
}

test('cursors: shown where the pointer is, with its name; gone on leave; a reload shows who is here now', async (t) => {
  const server = await Herald.start({ args: ['--examples', '--examples-dir', EXAMPLES_DIR] });
  let amy;
  let bob;
  let cat;
  try {
    amy = await openCursors(server, 'amy');
    bob = await openCursors(server, 'bob');
    cat = await openCursors(server, 'cat');
    await waitCount(bob.page, 3);
    await waitCount(amy.page, 3);
    assert.equal(await bob.page.textContent('#me'), 'bob');

    // Amy's pointer shows on Bob's page, at the same place of the area, named.
    await moveTo(amy, 0.1, 0.1);
    await moveTo(amy, 0.25, 0.4);
    await waitCursorAt(bob.page, 'amy', 0.25, 0.4);
    await moveTo(amy, 0.8, 0.3);
    await waitCursorAt(bob.page, 'amy', 0.8, 0.3);
    const label = bob.page.locator('#area .cursor[data-name="amy"] .label');
    assert.equal(await label.textContent(), 'amy');
    // Cat sees it too; nobody draws their own.
    await waitCursorAt(cat.page, 'amy', 0.8, 0.3);
    assert.deepEqual(await cursorNames(amy.page), []);

    await moveTo(cat, 0.6, 0.7);
    await waitCursorAt(bob.page, 'cat', 0.6, 0.7);
    assert.deepEqual(await cursorNames(bob.page), ['amy', 'cat']);

    // Throttled: pointermove events far faster than 30 a second (the page's
    // own listener gets them as from a mouse; the test's mouse is too slow
    // on a busy machine) make at most 30 publishes a second.
    const before = amy.sent.length;
    const burst = await amy.page.evaluate(async () => {
      const area = document.querySelector('#area');
      const r = area.getBoundingClientRect();
      const started = performance.now();
      let moves = 0;
      while (performance.now() - started < 1000 && moves < 2000) {
        const clientX = r.left + (0.2 + (moves % 50) * 0.01) * r.width;
        const clientY = r.top + 0.5 * r.height;
        area.dispatchEvent(new PointerEvent('pointermove', { bubbles: true, clientX, clientY }));
        moves++;
        if (moves % 4 === 0) await new Promise((resolve) => setTimeout(resolve, 1));
      }
      return { moves, seconds: (performance.now() - started) / 1000 };
    });
    await sleep(300); // the last, trailing publish
    const published = amy.sent.length - before;
    t.diagnostic(`burst: ${burst.moves} pointermoves in ${burst.seconds.toFixed(2)} s, ${published} publishes`);
    assert.ok(burst.moves / burst.seconds > 60, `the burst was fast enough to test (${burst.moves} moves)`);
    assert.ok(published >= 10, `the burst was published (${published} publishes)`);
    const most = Math.ceil(30 * burst.seconds) + 2; // one at the start, one trailing
    assert.ok(published <= most, `${published} publishes in ${burst.seconds.toFixed(2)} s (at most ${most})`);
    await moveTo(amy, 0.5, 0.5);
    await waitCursorAt(bob.page, 'amy', 0.5, 0.5);

    // (Cat moves again: a cursor idle for 10 s goes, and a busy machine may have taken that long.)
    await moveTo(cat, 0.65, 0.75);
    await waitCursorAt(bob.page, 'cat', 0.65, 0.75);

    // Amy closes her page: her cursor goes from Bob's page through her leave,
    // not the 10 s fallback.
    const closedAt = Date.now();
    await amy.context.close();
    amy = null;
    await bob.page.waitForFunction(() => !document.querySelector('#area .cursor[data-name="amy"]'), null, {
      timeout: 5_000,
      polling: 50,
    });
    const took = Date.now() - closedAt;
    t.diagnostic(`amy's cursor removed ${took} ms after her page closed`);
    assert.ok(took < 5_000, `removed in ${took} ms`);
    await waitCount(bob.page, 2);
    assert.deepEqual(await cursorNames(bob.page), ['cat'], "cat's cursor stays");

    // Bob reloads: nothing was stored, so no cursor until someone moves;
    // Amy, gone, never comes back; Cat, still here, shows again once she moves.
    await bob.page.reload();
    await waitReady(bob.page);
    await waitCount(bob.page, 2);
    await sleep(500);
    assert.deepEqual(await cursorNames(bob.page), [], 'an ephemeral topic replays nothing');
    await moveTo(cat, 0.3, 0.2);
    await waitCursorAt(bob.page, 'cat', 0.3, 0.2);
    assert.deepEqual(await cursorNames(bob.page), ['cat']);

    for (const v of [bob, cat]) {
      assert.deepEqual(
        v.log.filter((l) => l.startsWith('pageerror') || l.startsWith('error')),
        [],
        `no error in ${v.name}'s page`,
      );
    }
  } finally {
    await closeAll(amy?.context, bob?.context, cat?.context, server);
  }
});
