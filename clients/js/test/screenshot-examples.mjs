// Makes docs/examples-gallery.png, docs/examples-chat.png and
// docs/examples-editor.png: the gallery, and two of its pages with two
// visitors each. Run from clients/js: `npm run screenshot` (the herald
// binary must be built and `npm ci --prefix ../../examples/web` run).

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Herald, closeAll, launchBrowser, sleep } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const docs = path.resolve(here, '../../../docs');
const examples = path.resolve(here, '../../../examples/web');
const viewport = { width: 1000, height: 760 };

const browser = await launchBrowser();
const server = await Herald.start({ args: ['--examples', '--examples-dir', examples] });
const contexts = [];

async function open(url) {
  const context = await browser.newContext({ viewport, colorScheme: 'light' });
  contexts.push(context);
  const page = await context.newPage();
  await page.goto(`${server.url}${url}`);
  return page;
}

try {
  const gallery = await open('/examples/');
  await gallery.screenshot({ path: path.join(docs, 'examples-gallery.png'), fullPage: true });

  // Chat: two visitors in one room.
  const ann = await open('/examples/chat/?room=lobby&name=ann');
  await ann.waitForSelector('#status[data-state="open"]', { timeout: 15_000 });
  const ben = await open('/examples/chat/?room=lobby&name=ben');
  await ben.waitForSelector('#status[data-state="open"]', { timeout: 15_000 });
  for (const [page, text] of [
    [ann, 'Hi Ben! The order for table 4 is ready.'],
    [ben, 'On my way. Did the kitchen get the allergy note?'],
    [ann, 'Yes, no nuts. Herald keeps this history, by the way: reload and it is still here.'],
  ]) {
    await page.fill('#text', text);
    await page.press('#text', 'Enter');
    await sleep(300);
  }
  await sleep(500);
  await ann.screenshot({ path: path.join(docs, 'examples-chat.png') });

  // Editor: two visitors typing in one document, each caret shown to the other.
  const doc = `shot-${Date.now()}`;
  const ada = await open(`/examples/editor/?doc=${doc}&name=ada`);
  const bob = await open(`/examples/editor/?doc=${doc}&name=bob`);
  for (const p of [ada, bob]) {
    await p.waitForFunction(() => document.body.dataset.doc === 'live', null, { timeout: 15_000 });
  }
  await ada.click('#editor');
  await ada.keyboard.type('Release notes\n\n- Presence in every transport\n- ', { delay: 10 });
  await sleep(500);
  await bob.click('#editor');
  await bob.keyboard.press('Control+End');
  await bob.keyboard.type('Typed by Bob at the same time, merged by Yjs.', { delay: 10 });
  await ada.keyboard.type('Examples gallery', { delay: 10 });
  await sleep(1000);
  await ada.screenshot({ path: path.join(docs, 'examples-editor.png') });
  console.log(`wrote ${['examples-gallery.png', 'examples-chat.png', 'examples-editor.png'].map((f) => path.join(docs, f)).join(', ')}`);
} finally {
  for (const c of contexts) await c.close().catch(() => {});
  await closeAll(server, browser);
}
