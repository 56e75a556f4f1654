// The collaborative editor example (/examples/editor/), in headless Chromium
// against `herald serve --examples`: text typed in one page shows in the
// other, words typed at the same place at the same time in two pages merge
// into the same text in both, a reload and a newcomer get the text from the
// topic's history, and another person's caret shows (with their name) where
// they put it and goes away when they leave. And compaction: once history
// holds only the newest edits, the snapshot among them rebuilds the text.

import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { Herald, closeAll, launchBrowser, sleep, tempDir, waitInPage } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const EXAMPLES_DIR = path.resolve(here, '../../../examples/web');

// A document whose topic keeps only its last 50 events (a rule of the
// user's config comes before the examples' own rules).
const SHORT_DOC = 'short-history';
const SHORT_HISTORY = 50;

let server;
let browser;
let configDir;

before(async () => {
  configDir = tempDir();
  const config = path.join(configDir, 'herald.toml');
  writeFileSync(
    config,
    [
      '[[topics]]',
      `pattern = "examples/editor/${SHORT_DOC}"`,
      `history = ${SHORT_HISTORY}`,
      'client_publish = true',
      'publish_rate = 100',
      '',
    ].join('\n'),
  );
  server = await Herald.start({ args: ['--config', config, '--examples', '--examples-dir', EXAMPLES_DIR] });
  browser = await launchBrowser();
});

after(async () => {
  await closeAll(browser, server);
  if (configDir) rmSync(configDir, { recursive: true, force: true });
});

/** The editor on `doc` as `name`, in a browser context of its own; resolves once it is live. */
async function openEditor(doc, name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const log = [];
  page.on('console', (m) => log.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
  const editor = { context, page, log, name, close: () => context.close() };
  editor.goto = async () => {
    await page.goto(`${server.url}/examples/editor/?doc=${doc}&name=${name}`, { timeout: 10_000 });
    await waitLive(page);
  };
  await editor.goto();
  return editor;
}

/** Waits until the page's WebSocket is open and the document's topic is subscribed. */
async function waitLive(page) {
  await waitInPage(
    page,
    () => document.body.dataset.doc === 'live' && document.getElementById('status').dataset.state === 'open',
    null,
    10_000,
  );
}

const text = (e) => e.page.$eval('#editor', (ta) => ta.value);

async function waitText(e, expected, timeout = 10_000) {
  try {
    await waitInPage(e.page, (t) => document.getElementById('editor').value === t, expected, timeout);
  } catch (err) {
    throw new Error(`${e.name}'s textarea: ${JSON.stringify(await text(e))}, expected ${JSON.stringify(expected)}\n${e.log.join('\n')}`, {
      cause: err,
    });
  }
}

/** The other person's caret marker named `name` in `e`'s page, or null. */
function marker(e, name) {
  return e.page.evaluate((name) => {
    const m = document.querySelector(`#mirror .caret[data-name="${name}"]`);
    if (!m) return null;
    const box = m.getBoundingClientRect();
    const area = document.getElementById('editor').getBoundingClientRect();
    return {
      index: Number(m.dataset.index),
      label: m.textContent,
      inside: box.left >= area.left && box.right <= area.right && box.top >= area.top && box.bottom <= area.bottom,
    };
  }, name);
}

test('editor: typing syncs, concurrent edits converge, history restores, carets come and go', { timeout: 90_000 }, async () => {
  const doc = `t-${Math.random().toString(36).slice(2, 10)}`;
  const a = await openEditor(doc, 'Ada');
  const b = await openEditor(doc, 'Bea');
  let c;
  try {
    // A types; B sees it.
    await a.page.click('#editor');
    await a.page.keyboard.type('hello');
    await waitText(b, 'hello');
    await waitText(a, 'hello');

    // Both type a different word at the same place at the same time.
    await b.page.click('#editor');
    for (const e of [a, b]) await e.page.keyboard.press('Control+End');
    await Promise.all([a.page.keyboard.type(' apple'), b.page.keyboard.type(' berry')]);
    await waitInPage(
      a.page,
      () => document.getElementById('editor').value.length === 'hello apple berry'.length,
      null,
      10_000,
    );
    const merged = await text(a);
    await waitText(b, merged);
    // Settled: nothing changes any more, and both pages hold the same text.
    await sleep(500);
    assert.equal(await text(a), merged);
    assert.equal(await text(b), merged);
    assert.ok(merged.startsWith('hello'), merged);
    assert.ok(merged.includes(' apple'), `A's word is whole: ${merged}`);
    assert.ok(merged.includes(' berry'), `B's word is whole: ${merged}`);
    assert.ok(['hello apple berry', 'hello berry apple'].includes(merged), merged);

    // A reload keeps the text: it comes back from the topic's history.
    await a.page.reload({ timeout: 10_000 });
    await waitLive(a.page);
    await waitText(a, merged);

    // So does a newcomer's page.
    c = await openEditor(doc, 'Cy');
    await waitText(c, merged);

    // B puts its caret at the start, then at the end: A shows B's marker
    // there, with B's name, and lists B.
    await b.page.click('#editor');
    await b.page.keyboard.press('Control+Home');
    await waitInPage(
      a.page,
      () => document.querySelector('#mirror .caret[data-name="Bea"]')?.dataset.index === '0',
      null,
      5_000,
    );
    await b.page.keyboard.press('Control+End');
    await waitInPage(
      a.page,
      (n) => document.querySelector('#mirror .caret[data-name="Bea"]')?.dataset.index === String(n),
      merged.length,
      5_000,
    );
    const m = await marker(a, 'Bea');
    assert.equal(m.index, merged.length);
    assert.equal(m.label, 'Bea');
    assert.ok(m.inside, 'the marker is drawn over the textarea');
    const people = await a.page.$$eval('#people li', (lis) => lis.map((li) => li.dataset.name));
    assert.ok(people.includes('Bea') && people.includes('Cy') && people.includes('Ada'), people.join(', '));
    // B's own page shows no marker for B, and shows A's.
    assert.equal(await marker(b, 'Bea'), null);
    await waitInPage(b.page, () => document.querySelector('#mirror .caret[data-name="Ada"]'), null, 5_000);

    // B leaves: its marker goes away in A within 5 s; C's stays.
    await b.close();
    await waitInPage(a.page, () => !document.querySelector('#mirror .caret[data-name="Bea"]'), null, 5_000);
    const left = await a.page.$$eval('#people li', (lis) => lis.map((li) => li.dataset.name));
    assert.ok(!left.includes('Bea') && left.includes('Cy'), left.join(', '));
    assert.notEqual(await marker(a, 'Cy'), null, "C's marker stays");

    for (const e of [a, b, c]) {
      assert.deepEqual(e.log.filter((l) => l.startsWith('pageerror')), [], `${e.name}: no page error`);
    }
  } finally {
    await closeAll(a, b, c);
  }
});

test('editor: a snapshot every 100 updates rebuilds the text once history is trimmed', { timeout: 90_000 }, async () => {
  const a = await openEditor(SHORT_DOC, 'Ada');
  let b;
  try {
    // Keystrokes further apart than the page's 50 ms batching, each its own
    // update, until the page has published a snapshot (after 100 updates;
    // a few more keystrokes when some were batched together).
    const snapshotPublished = () =>
      a.page.$eval('#stats', (el) => /snapshots? published/.test(el.textContent));
    const letters = 'abcdefghijklmnopqrstuvwxyz';
    let typed = letters.repeat(4);
    await a.page.click('#editor');
    await a.page.keyboard.type(typed, { delay: 65 });
    for (let i = 0; i < 40 && !(await snapshotPublished()); i++) {
      const ch = letters[i % letters.length];
      await a.page.keyboard.type(ch);
      typed += ch;
      await sleep(100);
    }
    await waitText(a, typed);
    await waitInPage(a.page, () => /snapshots? published/.test(document.getElementById('stats').textContent), null, 5_000);

    // The topic holds only the newest 50 events, one of them a snapshot:
    // the first edits are gone from history.
    const res = await fetch(`${server.url}/v1/history?topic=examples/editor/${SHORT_DOC}&limit=1000`);
    const { events } = await res.json();
    assert.equal(events.length, SHORT_HISTORY);
    const names = events.map((e) => e.event);
    assert.ok(names.includes('snapshot'), names.join(' '));
    assert.ok(names.filter((n) => n === 'update').length < typed.length, 'history no longer holds every update');

    // A newcomer still gets the whole text.
    b = await openEditor(SHORT_DOC, 'Bea');
    await waitText(b, typed);
  } finally {
    await closeAll(a, b);
  }
});
