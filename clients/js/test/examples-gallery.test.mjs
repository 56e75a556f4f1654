// The examples gallery as `herald serve --examples` serves it: the index
// links the eight pages, each page loads in Chromium without an error and
// says which transport it uses; what is not a page is not served; without
// the flag the paths answer 404; a folder without the npm libraries or
// without a gallery is reported clearly.

import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawn } from 'node:child_process';
import { after, before, test } from 'node:test';
import { HERALD_BIN, Herald, closeAll, launchBrowser } from './harness.mjs';

const EXAMPLES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../examples/web');
const SSE = 'Server-Sent Events|SSE';
const WS = 'WebSocket';
const PAGES = {
  notifications: SSE,
  dashboard: SSE,
  'llm-chat': SSE,
  'order-status': SSE,
  chat: WS,
  editor: WS,
  game: WS,
  cursors: WS,
};

let browser;
let server;
before(async () => {
  browser = await launchBrowser();
  server = await Herald.start({ args: ['--examples', '--examples-dir', EXAMPLES] });
});
after(async () => {
  await closeAll(server, browser);
});

test('the gallery links every page, and each loads and names its transport', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(`${page.url()}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/^Failed to load resource/.test(m.text())) {
      errors.push(`${page.url()}: ${m.text()}`);
    }
  });
  // Every request a page makes succeeds (the browser's own favicon probe aside).
  page.on('response', (r) => {
    if (r.status() >= 400 && !r.url().endsWith('/favicon.ico')) errors.push(`${r.status()} ${r.url()}`);
  });
  try {
    await page.goto(`${server.url}/examples/`);
    const links = await page.locator('#examples a').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
    assert.deepEqual(links, Object.keys(PAGES).map((p) => `/examples/${p}/`));
    for (const [name, transport] of Object.entries(PAGES)) {
      await page.goto(`${server.url}/examples/${name}/`);
      const why = await page.locator('.why').first().innerText({ timeout: 5_000 });
      assert.match(why, new RegExp(transport), `${name} says it uses ${transport}`);
      // Give its scripts a moment to connect and fail if they would.
      await page.waitForTimeout(500);
    }
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});

test('only the pages are served', async () => {
  const res = await fetch(`${server.url}/examples`, { redirect: 'manual' });
  assert.equal(res.status, 308);
  assert.equal(res.headers.get('location'), '/examples/');
  const page = await fetch(`${server.url}/examples/chat?room=help`, { redirect: 'manual' });
  assert.equal(page.status, 308);
  assert.equal(page.headers.get('location'), '/examples/chat/?room=help', 'the query is kept');
  for (const p of [
    '/examples/package.json',
    '/examples/package-lock.json',
    '/examples/build.mjs',
    '/examples/.gitignore',
    '/examples/node_modules/yjs/package.json',
    '/examples/../Cargo.toml',
    '/examples/%2e%2e/Cargo.toml',
    '/examples/nothing-here/',
    '/examples/nothing-here',
    // Percent-encoded, what the file system sees is judged.
    '/examples/%70ackage.json',
    '/examples/%62uild.mjs',
    '/examples/node%5fmodules/yjs/package.json',
    '/examples/vendor%2f..%2f..%2fCargo.toml',
    '/examples/%2egitignore',
    `/examples/${'a'.repeat(300)}.js`,
  ]) {
    const r = await fetch(`${server.url}${p}`, { redirect: 'manual' });
    assert.equal(r.status, 404, p);
    // Herald's JSON 404, as on every other path.
    assert.equal((await r.json()).error.code, 'not_found', p);
  }
  const lib = await fetch(`${server.url}/examples/vendor/yjs.mjs`);
  assert.equal(lib.status, 200);
  assert.match(lib.headers.get('content-type'), /javascript/);
  assert.equal(lib.headers.get('x-content-type-options'), 'nosniff');
});

test('without --examples the gallery answers 404', async () => {
  const plain = await Herald.start();
  try {
    for (const p of ['/examples/', '/examples/chat/', '/examples/common.js']) {
      assert.equal((await fetch(`${plain.url}${p}`)).status, 404, p);
    }
  } finally {
    await plain.stop();
  }
});

test('a gallery without its npm libraries says which command installs them', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'herald-gallery-'));
  try {
    cpSync(EXAMPLES, dir, {
      recursive: true,
      filter: (src) => !/node_modules|vendor/.test(path.relative(EXAMPLES, src)),
    });
    const s = await Herald.start({ args: ['--examples', '--examples-dir', dir] });
    try {
      await new Promise((r) => setTimeout(r, 300));
      assert.match(s.stderr, /npm ci --prefix/);
      assert.equal((await fetch(`${s.url}/examples/chat/`)).status, 200);
      // The pages that need a library say so, in the page.
      const context = await browser.newContext();
      try {
        const page = await context.newPage();
        for (const name of ['editor', 'dashboard']) {
          await page.goto(`${s.url}/examples/${name}/`);
          await page.getByRole('alert').getByText(/npm ci --prefix examples\/web/).waitFor({ timeout: 5_000 });
        }
      } finally {
        await context.close();
      }
    } finally {
      await s.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('on a server that needs credentials, a page without one says what to do', async () => {
  const s = await Herald.start({
    args: ['--examples', '--examples-dir', EXAMPLES, '--jwt-secret', 'gallery-test-secret-0123456789abcdef'],
  });
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    for (const name of Object.keys(PAGES)) {
      await page.goto(`${s.url}/examples/${name}/`);
      if (name === 'llm-chat' || name === 'notifications') continue; // they ask on the first action
      await page.locator('#problem').getByText(/#token=/).waitFor({ timeout: 10_000 });
    }
  } finally {
    await context.close();
    await s.stop();
  }
});

test('a link inside the gallery to a file outside it is not followed', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'herald-gallery-'));
  const outside = mkdtempSync(path.join(os.tmpdir(), 'herald-outside-'));
  try {
    cpSync(path.join(EXAMPLES, 'index.html'), path.join(dir, 'index.html'));
    writeFileSync(path.join(outside, 'secret.txt'), 'not for the web');
    writeFileSync(path.join(dir, 'inside.txt'), 'for the web');
    symlinkSync(path.join(outside, 'secret.txt'), path.join(dir, 'secret.txt'));
    symlinkSync(outside, path.join(dir, 'elsewhere'));
    const s = await Herald.start({ args: ['--examples', '--examples-dir', dir] });
    try {
      assert.equal(await (await fetch(`${s.url}/examples/inside.txt`)).text(), 'for the web');
      for (const p of ['/examples/secret.txt', '/examples/elsewhere/secret.txt', '/examples/elsewhere/']) {
        assert.equal((await fetch(`${s.url}${p}`, { redirect: 'manual' })).status, 404, p);
      }
    } finally {
      await s.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(outside, { recursive: true, force: true });
  }
});

test('a folder without a gallery is refused at start, naming it', async () => {
  const child = spawn(HERALD_BIN, ['serve', '--listen', '127.0.0.1:0', '--engine', 'memory', '--examples', '--examples-dir', '/nonexistent/gallery'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const code = await new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve('timeout');
    }, 10_000);
    child.on('exit', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  assert.notEqual(code, 0);
  assert.notEqual(code, 'timeout');
  assert.match(stderr, /\/nonexistent\/gallery/);
  assert.match(stderr, /--examples-dir/);
});
