// An LLM answer in a real browser: the page streams it, reloads mid-way,
// resumes from the cursor it saved, and ends with the whole answer shown once.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Herald, closeAll, launchBrowser } from './harness.mjs';

let browser;
let server;
before(async () => {
  browser = await launchBrowser();
  // The built-in offline model, slowed so a reload lands mid-answer.
  server = await Herald.start({ args: ['--llm-offline-delay', '40ms'] });
});
after(async () => {
  await closeAll(server, browser);
});

/** The page's code: resume the saved generation (or the given one) and render it. */
function resume(transport) {
  const g = JSON.parse(sessionStorage.getItem('gen'));
  let answer = document.getElementById('answer');
  if (!answer) {
    answer = document.createElement('pre');
    answer.id = 'answer';
    document.body.replaceChildren(answer);
  }
  answer.textContent = g.text;
  const h = window.herald.connect(location.origin, { transport });
  const save = () => sessionStorage.setItem('gen', JSON.stringify(g));
  h.subscribe(g.topic, { since: g.cursor }, () => {});
  h.on(g.topic, 'token', (e) => {
    g.text += e.data.content;
    g.cursor = e.id;
    answer.textContent = g.text;
    save();
  });
  h.on(g.topic, 'done', (e) => {
    g.cursor = e.id;
    g.done = e.data.finish_reason;
    save();
    window.finished = true;
  });
  window.h = h;
}

for (const transport of ['sse', 'ws', 'poll']) {
  test(`an answer survives a reload (${transport})`, { timeout: 60_000 }, async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    try {
      await page.goto(`${server.url}/healthz`);
      const started = await page.evaluate(async () => {
        const r = await fetch('/v1/llm/chat', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ messages: [{ role: 'user', content: 'Explain resumable streams [tokens:70]' }] }),
        });
        const s = await r.json();
        sessionStorage.setItem('gen', JSON.stringify({ topic: s.topic, cursor: s.cursor, text: '' }));
        return s;
      });
      const load = async () => {
        await page.evaluate(async () => {
          window.herald = await import('/client/herald.js');
        });
        await page.evaluate(resume, transport);
      };
      await load();
      // Reload once part of the answer is on screen.
      await page.waitForFunction(() => (document.getElementById('answer')?.textContent || '').length > 40, null, {
        timeout: 15_000,
      });
      const before = await page.evaluate(() => document.getElementById('answer').textContent);
      await page.reload();
      await load();
      await page.waitForFunction(() => window.finished === true, null, { timeout: 20_000 });
      const shown = await page.evaluate(() => document.getElementById('answer').textContent);
      const saved = await page.evaluate(() => JSON.parse(sessionStorage.getItem('gen')));
      assert.equal(saved.done, 'stop');
      assert.ok(shown.startsWith(before), 'the text before the reload is kept');
      assert.ok(shown.length > before.length, 'and the rest arrived after it');
      // The server's record of the whole answer, read from the first cursor.
      const res = await fetch(
        `${server.url}/v1/poll?topic=${encodeURIComponent(started.topic)}&cursor=${started.cursor}&timeout=0`,
      );
      const { events } = await res.json();
      const full = events.filter((e) => e.event === 'token').map((e) => e.data.content).join('');
      assert.equal(shown, full, 'the whole answer, once: nothing lost, nothing repeated');
    } finally {
      await context.close();
    }
  });
}
