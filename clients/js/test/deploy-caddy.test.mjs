// deploy/Caddyfile, run for real: Caddy (Debian's package, started as an
// ordinary process with a temporary HOME) in front of `herald serve`, with
// `caddy run --config deploy/Caddyfile --adapter caddyfile` on the file as it
// is. Only the environment placeholders the file documents are set: the site
// address (http://127.0.0.1:PORT: plain HTTP, no certificate), the listen
// address (127.0.0.1), the admin endpoint (a free port) and the two nodes.
//
// (a) Two nodes (redis engine): SSE, WebSocket and long polling through Caddy
//     each get every event within 500 ms of its publish (no buffering), the
//     event stream is not compressed though the client asks for gzip (the
//     client script is).
// (b) One node: X-Forwarded-For, as Caddy writes it, reaches Herald's
//     per-address limit with --trusted-proxy; a client's own header is not
//     believed.
// (c) A rolling restart: pages using the browser client (served through
//     Caddy) over SSE, WebSocket and long polling, a publisher every 50 ms,
//     and each node in turn stopped (SIGTERM), Caddy's active health check
//     seen failing it, started again on its port, and Caddy seen sending it
//     requests again before the other node goes. Every page gets every event
//     exactly once, in order, without herald.gap.

import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import {
  Herald,
  closeAll,
  connectPage,
  launchBrowser,
  openPage,
  pageEvents,
  sleep,
  tempDir,
  waitInPage,
} from './harness.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const SNIPPET = path.join(root, 'deploy', 'Caddyfile');

/** An executable by name on PATH, else the first of `fallbacks` that exists. */
function findBinary(name, fallbacks) {
  try {
    return execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim() || null;
  } catch {
    return fallbacks.find((p) => existsSync(p)) ?? null;
  }
}

const CADDY = process.env.CADDY || findBinary('caddy', ['/usr/bin/caddy', '/usr/local/bin/caddy']);
const REDIS = findBinary('redis-server', ['/usr/bin/redis-server', '/usr/sbin/redis-server']);

/** A free loopback port (released at once; the caller binds it right after). */
async function freePort() {
  const s = net.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address();
  s.close();
  await once(s, 'close');
  return port;
}

/** Resolves once something accepts TCP connections on `port` (at most `timeout` ms). */
async function waitForPort(port, timeout = 10_000, child) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (child && (child.exitCode !== null || child.signalCode !== null)) throw new Error('the process exited');
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port} after ${timeout} ms`);
    await sleep(50);
  }
}

/** A duration of the Caddyfile (`health_interval 2s`), in ms. */
function snippetDuration(name) {
  const m = new RegExp(`^\\s*${name} (\\d+)(ms|s)\\s*$`, 'm').exec(readFileSync(SNIPPET, 'utf8'));
  assert.ok(m, `deploy/Caddyfile sets ${name}`);
  return Number(m[1]) * (m[2] === 's' ? 1000 : 1);
}

/**
 * Caddy running deploy/Caddyfile, as it is, in front of `nodes` (two ports,
 * the same one twice for a single node). Its JSON log (stderr) is kept.
 */
class Caddy {
  static async start(nodes) {
    const text = readFileSync(SNIPPET, 'utf8');
    for (const name of ['HERALD_SITE', 'HERALD_CADDY_BIND', 'HERALD_CADDY_ADMIN', 'HERALD_NODE_1', 'HERALD_NODE_2']) {
      assert.ok(text.includes(`{$${name}:`), `deploy/Caddyfile reads ${name} (with a default)`);
    }
    const c = new Caddy();
    c.dir = tempDir();
    c.port = await freePort();
    c.adminPort = await freePort();
    c.url = `http://127.0.0.1:${c.port}`;
    c.adminUrl = `http://127.0.0.1:${c.adminPort}`;
    c.entries = [];
    c.stderr = '';
    const env = {
      ...process.env,
      // Caddy's data (certificates, locks) and its autosaved config go here.
      HOME: c.dir,
      XDG_DATA_HOME: path.join(c.dir, 'data'),
      XDG_CONFIG_HOME: path.join(c.dir, 'config'),
      HERALD_SITE: c.url,
      HERALD_CADDY_BIND: '127.0.0.1',
      HERALD_CADDY_ADMIN: `127.0.0.1:${c.adminPort}`,
      HERALD_NODE_1: `127.0.0.1:${nodes[0]}`,
      HERALD_NODE_2: `127.0.0.1:${nodes[1]}`,
    };
    c.child = spawn(CADDY, ['run', '--config', SNIPPET, '--adapter', 'caddyfile'], {
      cwd: c.dir,
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let partial = '';
    c.child.stderr.on('data', (d) => {
      c.stderr = (c.stderr + d).slice(-8000);
      partial += d;
      let nl;
      while ((nl = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        try {
          if (c.entries.length < 50_000) c.entries.push(JSON.parse(line));
        } catch {
          // not JSON (a panic, say): kept in c.stderr
        }
      }
    });
    try {
      await waitForPort(c.port, 10_000, c.child);
    } catch (err) {
      await c.stop();
      throw new Error(`caddy did not start (${err.message}):\n${c.stderr}`);
    }
    return c;
  }

  /** Waits, at most `timeout` ms, for a log entry from index `from` on that satisfies `pred`. */
  async waitForLog(pred, from, timeout) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const hit = this.entries.slice(from).find(pred);
      if (hit) return hit;
      if (Date.now() > deadline) throw new Error(`no such caddy log entry within ${timeout} ms`);
      await sleep(50);
    }
  }

  /** Requests Caddy failed itself (its `http.log.error` entries): [{method, uri, status, msg}]. */
  errors() {
    return this.entries
      .filter((e) => e.logger === 'http.log.error')
      .map((e) => ({ method: e.request?.method, uri: e.request?.uri, status: e.status, msg: e.msg }));
  }

  async stop() {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit');
      child.kill('SIGTERM'); // a graceful stop
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A log entry of Caddy's active health checker about `host` (2.6 logs each failed check). */
function activeHealthCheck(e, host) {
  return typeof e.logger === 'string' && e.logger.endsWith('health_checker.active') && e.host === host;
}

/** A throw-away redis-server on a free port, without persistence. */
class Redis {
  static async start() {
    const r = new Redis();
    r.dir = tempDir();
    r.port = await freePort();
    r.url = `redis://127.0.0.1:${r.port}`;
    const argv = ['--port', String(r.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', r.dir];
    r.child = spawn(REDIS, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    r.out = '';
    for (const s of [r.child.stdout, r.child.stderr]) s.on('data', (d) => (r.out = (r.out + d).slice(-4000)));
    try {
      await waitForPort(r.port, 10_000, r.child);
    } catch (err) {
      await r.stop();
      throw new Error(`redis-server did not start (${err.message}):\n${r.out}`);
    }
    return r;
  }

  async stop() {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Starts a stopped node again on its port (which the OS may be slow to free). */
async function startAgain(node) {
  for (let i = 0; ; i++) {
    try {
      await node.spawn();
      return;
    } catch (err) {
      if (i >= 20) throw err;
      await sleep(100);
    }
  }
}

/** A node's herald_connections_total (every SSE, WebSocket and poll it accepted), asked directly. */
async function connectionsTotal(node) {
  const res = await fetch(`${node.url}/metrics`, { signal: AbortSignal.timeout(2_000) });
  const m = /^herald_connections_total (\d+)$/m.exec(await res.text());
  return m ? Number(m[1]) : 0;
}

/**
 * POST /v1/publish through `base`, with an idempotency id: a publish that
 * meets a node going away (a 502 from Caddy, a cut connection) is sent again
 * with the same id, which Herald stores once. Returns how many tries it took.
 */
async function publishVia(base, body, { tries = 60 } = {}) {
  for (let i = 1; ; i++) {
    try {
      const res = await fetch(`${base}/v1/publish`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(5_000),
      });
      if (res.ok) {
        await res.json();
        return i;
      }
      await res.text();
      if (res.status < 500 || i >= tries) throw new Error(`publish answered ${res.status}`);
    } catch (err) {
      if (i >= tries || /answered 4/.test(err.message)) throw err;
    }
    await sleep(50);
  }
}

/** Reads an SSE response, calling `onEvent({event, id, data, at})` for every event with data. */
async function readSse(res, onEvent) {
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of res.body) {
    const at = Date.now();
    buf += decoder.decode(chunk, { stream: true });
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const frame = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const e = { event: null, id: null, data: [], at };
      for (const line of frame.split('\n')) {
        const colon = line.indexOf(':');
        if (colon === 0) continue; // a comment
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') e.event = value;
        else if (field === 'id') e.id = value;
        else if (field === 'data') e.data.push(value);
      }
      if (e.data.length) onEvent({ ...e, data: e.data.join('\n') });
    }
  }
}

const skipReason = !CADDY ? 'caddy is not installed (scripts/test.sh installs it)' : false;
const redisSkip = skipReason || (!REDIS && 'redis-server is not installed');
let browser;

before(async () => {
  if (!skipReason) browser = await launchBrowser();
});

after(async () => {
  await closeAll(browser);
});

describe('deploy/Caddyfile in front of two nodes', { skip: redisSkip }, () => {
  test('SSE, WebSocket and long polling get each event within 500 ms, uncompressed', { timeout: 30_000 }, async (t) => {
    const redis = await Redis.start();
    const nodeArgs = ['--redis-url', redis.url, '--trusted-proxy', '127.0.0.1'];
    const a = await Herald.start({ engine: 'redis', args: nodeArgs });
    const b = await Herald.start({ engine: 'redis', args: nodeArgs });
    let caddy;
    const ctl = new AbortController();
    let context;
    try {
      caddy = await Caddy.start([a.port, b.port]);
      const got = { sse: [], poll: [] };

      // What is not a stream is compressed: the snippet's `encode` is on.
      const script = await fetch(`${caddy.url}/client/herald.js`, { headers: { 'accept-encoding': 'gzip' } });
      assert.equal(script.status, 200);
      await script.arrayBuffer();
      assert.equal(script.headers.get('content-encoding'), 'gzip', 'the client script is compressed');

      // SSE, read with fetch; asks for gzip, which must not be applied.
      const sse = await fetch(`${caddy.url}/v1/sse?topic=live`, {
        headers: { 'accept-encoding': 'gzip, deflate, br' },
        signal: ctl.signal,
      });
      assert.equal(sse.status, 200);
      assert.match(sse.headers.get('content-type'), /^text\/event-stream/);
      assert.equal(sse.headers.get('content-encoding'), null, 'the event stream is not compressed');
      const sseDone = readSse(sse, (e) => got.sse.push({ data: JSON.parse(e.data), at: e.at })).catch(() => {});

      // Long polling: one poll after another, from the cursor of the last answer.
      const pollDone = (async () => {
        let cursor;
        for (let i = 0; i < 1000 && !ctl.signal.aborted; i++) {
          const q = new URLSearchParams({ topic: 'live', timeout: '20' });
          if (cursor) q.set('cursor', cursor);
          const res = await fetch(`${caddy.url}/v1/poll?${q}`, {
            headers: { 'accept-encoding': 'gzip' },
            signal: ctl.signal,
          });
          const body = await res.json();
          const at = Date.now();
          for (const e of body.events) got.poll.push({ data: e.data, at });
          cursor = body.cursor;
        }
      })().catch(() => {});

      // WebSocket, the browser's own, through Caddy's upgrade handling.
      const opened = await openPage(browser, caddy.url);
      context = opened.context;
      const { page } = opened;
      await page.evaluate(
        () =>
          new Promise((resolve, reject) => {
            window.wsGot = [];
            const ws = new WebSocket(`ws://${location.host}/v1/ws`);
            window.ws = ws;
            ws.onopen = () => ws.send(JSON.stringify({ type: 'subscribe', topic: 'live' }));
            ws.onerror = () => reject(new Error('WebSocket error'));
            ws.onmessage = (m) => {
              const msg = JSON.parse(m.data);
              if (msg.type === 'subscribed') resolve();
              if (msg.type === 'event') wsGot.push({ data: msg.data, at: Date.now() });
            };
          }),
      );

      // A first event until every transport is live (the poll may still be on its way).
      let warm = false;
      for (let i = 0; i < 50 && !warm; i++) {
        await publishVia(caddy.url, { topic: 'live', data: { warmup: i } });
        await sleep(100);
        const wsCount = await page.evaluate(() => window.wsGot.length);
        warm = got.sse.length > 0 && got.poll.length > 0 && wsCount > 0;
      }
      assert.ok(warm, 'every transport receives through Caddy');

      const sent = [];
      for (let n = 1; n <= 6; n++) {
        const at = Date.now();
        await publishVia(caddy.url, { topic: 'live', data: { n } });
        sent.push({ n, at });
        await sleep(250);
      }
      await sleep(300);
      const wsGot = await page.evaluate(() => window.wsGot);
      const latencies = {};
      for (const [name, list] of [['sse', got.sse], ['ws', wsGot], ['poll', got.poll]]) {
        const numbered = list.filter((e) => e.data && typeof e.data.n === 'number');
        assert.deepEqual(numbered.map((e) => e.data.n), [1, 2, 3, 4, 5, 6], `${name}: every event once, in order`);
        latencies[name] = numbered.map((e, i) => e.at - sent[i].at);
        for (const [i, ms] of latencies[name].entries()) {
          assert.ok(ms < 500, `${name}: event ${i + 1} arrived ${ms} ms after its publish (Caddy buffered it?)`);
        }
      }
      t.diagnostic(`publish-to-arrival through Caddy, ms: ${JSON.stringify(latencies)}`);
      await page.evaluate(() => window.ws.close());
      ctl.abort();
      await Promise.all([sseDone, pollDone]);
    } finally {
      ctl.abort();
      await closeAll(context, caddy, a, b, redis);
    }
  });
});

describe('deploy/Caddyfile in front of one node', { skip: skipReason }, () => {
  test('X-Forwarded-For reaches the per-address limit with --trusted-proxy', { timeout: 30_000 }, async () => {
    // One streaming connection per client address; Caddy (127.0.0.1) is the
    // trusted proxy. The clients connect to Caddy from their own loopback
    // addresses (127.0.0.2, 127.0.0.3), each with an X-Forwarded-For of its
    // own making, which Caddy does not believe: it is no trusted proxy.
    const server = await Herald.start({ args: ['--trusted-proxy', '127.0.0.1', '--max-connections-per-ip', '1'] });
    let caddy;
    const requests = new Set();
    try {
      caddy = await Caddy.start([server.port, server.port]);
      /** The first 1.5 s (or all) of an SSE stream opened from `from`, claiming to be `claims`. */
      const open = (from, claims) =>
        new Promise((resolve, reject) => {
          const req = http.get(
            {
              host: '127.0.0.1',
              port: caddy.port,
              localAddress: from,
              path: '/v1/sse?topic=limits',
              headers: { 'x-forwarded-for': claims },
            },
            (res) => {
              if (res.statusCode !== 200) {
                reject(new Error(`SSE answered ${res.statusCode}`));
                res.resume();
                return;
              }
              let text = '';
              const done = () => {
                clearTimeout(timer);
                resolve(text);
              };
              const timer = setTimeout(done, 1_500);
              res.setEncoding('utf8');
              res.on('data', (d) => {
                text += d;
                if (text.includes('herald.disconnect')) done();
              });
              res.on('end', done);
              res.on('error', done);
            },
          );
          requests.add(req);
          req.on('error', reject);
        });
      const first = await open('127.0.0.2', '203.0.113.9');
      const second = await open('127.0.0.3', '203.0.113.9');
      const third = await open('127.0.0.2', '198.51.100.7');
      assert.ok(!first.includes('herald.disconnect'), `first client's stream is open:\n${first}`);
      assert.ok(!second.includes('herald.disconnect'), `another client address has its own count:\n${second}`);
      assert.match(
        third,
        /event: herald\.disconnect\ndata: \{"reason":"rate_limited"/,
        'the same address again is over its limit, whatever X-Forwarded-For it sent',
      );
    } finally {
      for (const req of requests) req.destroy();
      await closeAll(caddy, server);
    }
  });
});

describe('deploy/Caddyfile in front of one node, clients going away', { skip: skipReason }, () => {
  test('a client that goes away is gone from the node at once (SSE, a held poll)', { timeout: 30_000 }, async () => {
    // The file has no `flush_interval -1`: with it, Caddy 2.6 keeps the
    // request to the node going after its client has gone, and the stream
    // stays open on the node until the node next writes (a keepalive, 15 s).
    const server = await Herald.start();
    let caddy;
    const ctl = new AbortController();
    try {
      caddy = await Caddy.start([server.port, server.port]);
      const gauges = async () => {
        const text = await (await fetch(`${server.url}/metrics`, { signal: AbortSignal.timeout(2_000) })).text();
        const get = (transport) => {
          const m = new RegExp(`^herald_connections\\{transport="${transport}"\\} (\\d+)$`, 'm').exec(text);
          return m ? Number(m[1]) : -1;
        };
        return { sse: get('sse'), poll: get('poll') };
      };
      const sse = await fetch(`${caddy.url}/v1/sse?topic=gone`, { signal: ctl.signal });
      assert.equal(sse.status, 200);
      sse.body.getReader().read().catch(() => {});
      const poll = fetch(`${caddy.url}/v1/poll?topic=gone&timeout=30`, { signal: ctl.signal }).catch(() => {});
      let open = { sse: 0, poll: 0 };
      for (let i = 0; i < 40 && !(open.sse === 1 && open.poll === 1); i++) {
        await sleep(50);
        open = await gauges();
      }
      assert.deepEqual(open, { sse: 1, poll: 1 }, 'the stream and the poll reached the node');
      ctl.abort();
      await poll;
      let left = open;
      for (let i = 0; i < 40 && !(left.sse === 0 && left.poll === 0); i++) {
        await sleep(50);
        left = await gauges();
      }
      assert.deepEqual(left, { sse: 0, poll: 0 }, 'the node closed both within 2 s of the client going away');
    } finally {
      ctl.abort();
      await closeAll(caddy, server);
    }
  });
});

describe('deploy/Caddyfile in front of two nodes, restarted in turn', { skip: redisSkip }, () => {
  test('a rolling restart: every event exactly once, in order, no herald.gap, on every transport', { timeout: 90_000 }, async (t) => {
    const redis = await Redis.start();
    const nodeArgs = ['--redis-url', redis.url, '--trusted-proxy', '127.0.0.1'];
    const a = await Herald.start({ engine: 'redis', args: nodeArgs });
    const b = await Herald.start({ engine: 'redis', args: nodeArgs });
    let caddy;
    const pages = {};
    try {
      caddy = await Caddy.start([a.port, b.port]);
      const healthInterval = snippetDuration('health_interval');
      const healthTimeout = snippetDuration('health_timeout');
      // Caddy's health checker runs every health_interval: it has seen a
      // change well within two intervals and a timeout.
      const healthBound = 2 * healthInterval + healthTimeout + 1_000;

      // Pages using the browser client, loaded from /client/herald.js through Caddy.
      const fast = { initialDelay: 100, maxDelay: 800, pollTimeout: 5 };
      for (const transport of ['sse', 'ws', 'poll']) {
        pages[transport] = await openPage(browser, caddy.url);
        await connectPage(pages[transport].page, { transport, ...fast }, ['roll']);
        assert.equal(await pages[transport].page.evaluate(() => h.transport), transport);
      }

      // The publisher: one event every 50 ms, through Caddy, each retried
      // with its id while a node goes away, until the restarts are over and
      // a second more.
      const started = Date.now();
      let sent = 0;
      let retries = 0;
      let stopAt = Infinity;
      const publisher = (async () => {
        for (let n = 1; n <= 1_000; n++) {
          const wait = started + n * 50 - Date.now();
          if (wait > 0) await sleep(wait);
          if (Date.now() >= stopAt) break;
          retries += (await publishVia(caddy.url, { topic: 'roll', data: { n }, id: `roll-${n}` })) - 1;
          sent = n;
        }
      })();

      // Each node in turn, as deploy/README.md says for rolling restarts:
      // SIGTERM (graceful: streams end within --shutdown-drain, held polls
      // are answered); Caddy's active health check fails it (its log says
      // so) and its clients reconnect to the other node; it is started again
      // on its port; and the next node goes only once Caddy sends requests to
      // this one again (a node's herald_connections_total grows as polls
      // sent through Caddy reach it).
      const restarts = [];
      await sleep(800);
      for (const [name, node] of [['a', a], ['b', b]]) {
        const t0 = Date.now();
        const from = caddy.entries.length;
        const host = `127.0.0.1:${node.port}`;
        await node.stop();
        const stopped = Date.now() - t0;
        await caddy.waitForLog((e) => activeHealthCheck(e, host) && e.msg !== 'host is up', from, healthBound);
        const failed = Date.now() - t0;
        const fromUp = caddy.entries.length;
        await startAgain(node);
        const t1 = Date.now();
        const before = await connectionsTotal(node);
        let back = false;
        while (!back && Date.now() - t1 < healthBound) {
          await fetch(`${caddy.url}/v1/poll?topic=probe&timeout=0`, { signal: AbortSignal.timeout(5_000) })
            .then((r) => r.arrayBuffer())
            .catch(() => {});
          back = (await connectionsTotal(node)) > before;
          if (!back) await sleep(100);
        }
        assert.ok(back, `node ${name}: Caddy sends it requests again within ${healthBound} ms of its start`);
        const routed = Date.now() - t0;
        // Caddy 2.6 logs the health checker's "host is up" as the node passes again.
        const up = caddy.entries.slice(fromUp).find((e) => activeHealthCheck(e, host) && e.msg === 'host is up');
        restarts.push(
          `${name}: stopped in ${stopped} ms, health check failed it at ${failed} ms, started at ${t1 - t0} ms, ` +
            `${up ? `"host is up" at ${Math.round(up.ts * 1000 - t0)} ms, ` : ''}routed to again at ${routed} ms`,
        );
      }
      stopAt = Date.now() + 1_000;
      await publisher;
      const publishedIn = Date.now() - started;
      assert.ok(sent >= 100, `the publisher ran through the restarts (${sent} events)`);

      const expected = Array.from({ length: sent }, (_, i) => i + 1);
      const summary = {};
      for (const [transport, { page }] of Object.entries(pages)) {
        await waitInPage(page, (n) => rec.events.filter((e) => e.event !== 'herald.gap').length >= n, sent, 15_000).catch(
          () => {},
        );
      }
      await sleep(500); // anything extra (a duplicate) would arrive by now
      for (const [transport, { page }] of Object.entries(pages)) {
        const events = await pageEvents(page);
        const statuses = await page.evaluate(() => rec.statuses);
        const errors = await page.evaluate(() => rec.errors);
        const gaps = events.filter((e) => e.event === 'herald.gap');
        const got = events.filter((e) => e.event !== 'herald.gap').map((e) => e.data && e.data.n);
        summary[transport] = {
          events: got.length,
          reconnects: statuses.filter((s) => s.state === 'reconnecting').length,
          errors: errors.map((e) => e.status ?? e.code),
        };
        assert.equal(gaps.length, 0, `${transport}: no herald.gap (${JSON.stringify(gaps)})`);
        assert.deepEqual(got, expected, `${transport}: every event exactly once, in order`);
        // A stream or WebSocket ends with its node and the client reconnects;
        // long polling opens a request per poll anyway, and Caddy sends the
        // next one to a live node, so the poll client need not notice.
        if (transport !== 'poll') {
          assert.ok(summary[transport].reconnects >= 1, `${transport}: the page did lose its node and reconnect`);
        }
        assert.equal(statuses.at(-1).state, 'open', `${transport}: connected at the end`);
      }
      const caddyErrors = caddy.errors();
      t.diagnostic(`restarts: ${restarts.join('; ')}`);
      t.diagnostic(`${sent} publishes in ${publishedIn} ms, ${retries} retried`);
      t.diagnostic(`pages: ${JSON.stringify(summary)}`);
      const failedCounts = {};
      for (const e of caddyErrors) {
        const key = `${e.method} ${e.uri} ${e.status}`;
        failedCounts[key] = (failedCounts[key] || 0) + 1;
      }
      t.diagnostic(`requests Caddy failed: ${JSON.stringify(failedCounts)}`);
      // Caddy moved every (re)connecting subscriber to a live node: it failed
      // no stream, WebSocket or poll request (no 502, no "no upstreams
      // available"). (A publish it sent to a stopped node, or to one closing
      // its connection, failed: Caddy 2.6 cannot send a request body a
      // second time. The publisher sent it again with its id.)
      const failedGets = caddyErrors.filter((e) => e.method === 'GET');
      assert.deepEqual(failedGets, [], 'subscribers were failed over');
    } finally {
      await closeAll(...Object.values(pages).map((p) => p.context), caddy, a, b, redis);
    }
  });
});
