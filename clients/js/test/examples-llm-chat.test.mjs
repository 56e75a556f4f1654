// The LLM chat example (/examples/llm-chat/) in a real browser: a question
// answered by the built-in offline model (slowed by its `[slow:MS]`
// directive), a reload in the middle of the answer, which resumes from the
// stored cursor and ends with the whole answer exactly once; a reload after
// the end keeps it; a second browser context opened on the conversation link
// shows the same answer.

import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { Herald, closeAll, launchBrowser } from './harness.mjs';

const EXAMPLES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../examples/web');
// 100 tokens, 50 ms apart: about 5 s of answer, time to reload in the middle.
const QUESTION = 'Explain resumable streams [tokens:100] [slow:50]';

let browser;
let server;
before(async () => {
  browser = await launchBrowser();
  server = await Herald.start({ args: ['--examples', '--examples-dir', EXAMPLES] });
});
after(async () => {
  await closeAll(server, browser);
});

/** The complete answer to `question`, asked once more, directly over HTTP (the offline model is deterministic). */
async function expectedAnswer(question) {
  const res = await fetch(`${server.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: question }] }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const body = await res.json();
  return body.choices[0].message.content;
}

/** Every event of an answer's topic after `cursor`, as the server keeps them. */
async function topicEvents(topic, cursor) {
  const res = await fetch(`${server.url}/v1/poll?topic=${encodeURIComponent(topic)}&cursor=${cursor}&timeout=0`);
  assert.equal(res.status, 200);
  return (await res.json()).events;
}

async function openPage(url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  const requests = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
  page.on('request', (r) => requests.push(r.url()));
  await page.goto(url);
  return { context, page, problems, requests };
}

/** The first turn as a person sees it, and what the tab stored. */
function firstTurn(page) {
  return page.evaluate(() => {
    const el = document.querySelector('#turns .turn[data-index="0"]');
    const stored = JSON.parse(sessionStorage.getItem('herald-examples-llm-chat') || 'null');
    return {
      state: el?.dataset.state ?? null,
      question: el?.querySelector('.q').textContent ?? null,
      answer: el?.querySelector('.answer').textContent ?? null,
      stored: stored?.turns?.[0] ?? null,
      link: document.getElementById('share-link').href,
    };
  });
}

const sseRequestsOf = (requests, topic) =>
  requests
    .map((u) => new URL(u))
    .filter((u) => u.pathname === '/v1/sse' && u.searchParams.getAll('topic').includes(topic));

test('an answer streams, survives a reload mid-answer, and the conversation link shows it', { timeout: 60_000 }, async () => {
  let a;
  let b;
  try {
    a = await openPage(`${server.url}/examples/llm-chat/`);
    await a.page.fill('#question', QUESTION);
    await a.page.click('#send');
    // The same question once more, straight over HTTP: the whole answer to compare with.
    const expected = expectedAnswer(QUESTION);

    // Part of the answer is on screen, and more is coming.
    await a.page.waitForFunction(
      () => {
        const el = document.querySelector('#turns .turn[data-index="0"]');
        return el?.dataset.state === 'streaming' && el.querySelector('.answer').textContent.length > 40;
      },
      null,
      { timeout: 15_000, polling: 20 },
    );
    const mid = await firstTurn(a.page);
    assert.equal(mid.question, QUESTION);
    assert.match(mid.stored.topic, /^llm\//);
    assert.ok(mid.stored.last, 'the id of the last event shown is stored');
    const { topic, cursor } = mid.stored;

    a.requests.length = 0;
    await a.page.reload();
    // At once the page shows what it had (from sessionStorage), then goes on.
    await a.page.waitForFunction(
      (before) => (document.querySelector('#turns .turn[data-index="0"] .answer')?.textContent || '').startsWith(before),
      mid.answer,
      { timeout: 5000, polling: 20 },
    );
    await a.page.waitForFunction(
      () => document.querySelector('#turns .turn[data-index="0"]')?.dataset.state === 'done',
      null,
      { timeout: 20_000, polling: 50 },
    );
    const end = await firstTurn(a.page);
    const full = await expected;
    assert.ok(full.length > 200, 'a long answer');
    assert.equal(end.answer, full, 'the whole answer, once: nothing missing, nothing doubled');
    assert.equal(end.stored.text, full);
    assert.equal(end.stored.done, 'stop');

    // After the reload it resumed from its stored cursor, not from the start:
    // its stream asked for what came after a token it had already shown.
    const events = await topicEvents(topic, cursor);
    const tokenIds = events.filter((e) => e.event === 'token').map((e) => e.id);
    const resumed = sseRequestsOf(a.requests, topic);
    assert.equal(resumed.length, 1, `one stream after the reload: ${resumed.map(String)}`);
    const from = resumed[0].searchParams.get('last_event_id');
    const at = tokenIds.indexOf(from);
    assert.ok(at >= 0 && at < tokenIds.length - 1, `resumed mid-answer, after token ${at + 1} of ${tokenIds.length}`);
    const shownBefore = events
      .slice(0, events.findIndex((e) => e.id === from) + 1)
      .filter((e) => e.event === 'token')
      .map((e) => e.data.content)
      .join('');
    assert.ok(shownBefore.startsWith(mid.answer), 'the resume point is at or after what was on screen before the reload');

    // A finished answer survives a reload: shown from storage, no stream opened for it.
    a.requests.length = 0;
    await a.page.reload();
    await a.page.waitForFunction(
      () => document.querySelector('#turns .turn[data-index="0"]')?.dataset.state === 'done',
      null,
      { timeout: 5000, polling: 20 },
    );
    assert.equal((await firstTurn(a.page)).answer, full);
    assert.equal(sseRequestsOf(a.requests, topic).length, 0, 'a finished answer needs no stream');

    // Another browser (no shared storage) opened on the conversation link replays the same answer.
    assert.match(end.link, /[?&]chat=/);
    b = await openPage(end.link);
    await b.page.waitForFunction(
      () => document.querySelector('#turns .turn[data-index="0"]')?.dataset.state === 'done',
      null,
      { timeout: 15_000, polling: 50 },
    );
    const other = await firstTurn(b.page);
    assert.equal(other.question, QUESTION);
    assert.equal(other.answer, full, 'the same answer on the second page');

    assert.deepEqual([...a.problems, ...b.problems], [], 'no script errors');
  } finally {
    await closeAll(a?.context, b?.context);
  }
});
