// HTTP/2 in a real browser: ten EventSources of one page over HTTPS share one
// TCP connection (the server's metrics say so); the same page over HTTP/1.1
// hits the browser's six-connections-per-host limit.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { HERALD_BIN, launchBrowser, sleep } from './harness.mjs';

/** `herald serve` with extra flags; resolves with its URL. */
async function serve(args) {
  const child = spawn(HERALD_BIN, ['serve', '--listen', '127.0.0.1:0', '--engine', 'memory', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const url = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`herald did not start:\n${stderr}`)), 10_000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = /herald listening on (\S+)\n/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.once('exit', (code) => reject(new Error(`herald exited ${code}:\n${stderr}`)));
  });
  return {
    url,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    },
  };
}

function browser() {
  // The server's certificate is self-signed.
  return launchBrowser({ extraArgs: ['--ignore-certificate-errors'] });
}

/** In the page: opens `n` EventSources on topics h2/0..n-1, recording opens and messages. */
function openStreams(n) {
  window.opened = 0;
  window.got = {};
  window.sources = [];
  for (let i = 0; i < n; i++) {
    const es = new EventSource(`/v1/sse?topic=h2/${i}`);
    es.onopen = () => window.opened++;
    es.onmessage = (e) => (window.got[i] = e.data);
    window.sources.push(es);
  }
}

function metric(text, name) {
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  return line ? Number(line.split(' ')[1]) : NaN;
}

test('ten EventSources over HTTPS share one HTTP/2 connection', { timeout: 60_000 }, async () => {
  const server = await serve(['--tls-self-signed']);
  const b = await browser();
  try {
    assert.match(server.url, /^https:\/\//);
    const page = await (await b.newContext({ ignoreHTTPSErrors: true })).newPage();
    const response = await page.goto(`${server.url}/healthz`);
    assert.equal(response.status(), 200);
    await page.evaluate(openStreams, 10);
    await page.waitForFunction(() => window.opened === 10, null, { timeout: 15_000 });
    // Publish from the page itself: the POSTs ride the same connection.
    await page.evaluate(async () => {
      for (let i = 0; i < 10; i++) {
        const r = await fetch('/v1/publish', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ topic: `h2/${i}`, data: `hello ${i}` }),
        });
        if (!r.ok) throw new Error(`publish ${r.status}`);
      }
    });
    await page.waitForFunction(() => Object.keys(window.got).length === 10, null, { timeout: 15_000 });
    const got = await page.evaluate(() => window.got);
    for (let i = 0; i < 10; i++) assert.equal(got[i], `hello ${i}`);
    const metrics = await page.evaluate(async () => (await fetch('/metrics')).text());
    assert.equal(metric(metrics, 'herald_connections{transport="sse"}'), 10);
    const tcp = metric(metrics, 'herald_tcp_connections_total');
    console.log(`HTTP/2: 10 EventSources, ${tcp} TCP connection(s) accepted by the server`);
    assert.equal(tcp, 1, 'every stream of the page shared one TCP connection');
  } finally {
    await b.close();
    await server.stop();
  }
});

test('the same page over HTTP/1.1 stalls after six connections', { timeout: 60_000 }, async () => {
  const server = await serve([]);
  const b = await browser();
  try {
    const page = await (await b.newContext()).newPage();
    await page.goto(`${server.url}/healthz`);
    await page.evaluate(openStreams, 10);
    await page.waitForFunction(() => window.opened >= 6, null, { timeout: 15_000 });
    await sleep(1500); // would the others open, given time?
    assert.equal(await page.evaluate(() => window.opened), 6, 'HTTP/1.1: six connections per host');
    // Publish from Node (the page's own fetches would queue behind the six streams).
    for (let i = 0; i < 10; i++) {
      const r = await fetch(`${server.url}/v1/publish`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ topic: `h2/${i}`, data: `hello ${i}` }),
      });
      assert.equal(r.status, 200);
    }
    await page.waitForFunction(() => Object.keys(window.got).length >= 6, null, { timeout: 15_000 });
    await sleep(500);
    assert.equal(Object.keys(await page.evaluate(() => window.got)).length, 6, 'the seventh stream and later got nothing');
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.equal(metric(metrics, 'herald_connections{transport="sse"}'), 6);
    console.log(`HTTP/1.1: 10 EventSources, 6 open, ${metric(metrics, 'herald_tcp_connections_total')} TCP connections`);
  } finally {
    await b.close();
    await server.stop();
  }
});
