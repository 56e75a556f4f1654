// deploy/nginx.conf, run for real: nginx (Debian's package, started as an
// ordinary process in a temporary folder) in front of `herald serve`, with
// the documented snippet as it is, only its listen port and the two upstream
// node addresses replaced.
//
// (a) One node (memory engine): SSE, WebSocket and long polling through nginx
//     each get every event within 500 ms of its publish (no buffering), the
//     stream is not compressed, and X-Forwarded-For reaches Herald's
//     per-address limit with --trusted-proxy.
// (b) A rolling restart: two nodes on the redis engine behind the upstream;
//     pages using the browser client (served through nginx) over SSE,
//     WebSocket and long polling, a publisher every 50 ms for 6 s, and each
//     node stopped (SIGTERM) and started again on its port in turn. Every
//     page gets every event exactly once, in order, without herald.gap.

import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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
const SNIPPET = path.join(root, 'deploy', 'nginx.conf');

/** An executable by name on PATH, else the first of `fallbacks` that exists. */
function findBinary(name, fallbacks) {
  try {
    return execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim() || null;
  } catch {
    return fallbacks.find((p) => existsSync(p)) ?? null;
  }
}

const NGINX = process.env.NGINX || findBinary('nginx', ['/usr/sbin/nginx', '/usr/local/sbin/nginx']);
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

/**
 * deploy/nginx.conf with its listen port and its two upstream nodes replaced,
 * and nothing else changed; wrapped in the main and `http {}` context a
 * system's nginx.conf would give it, with this folder for temporary files
 * an access log that names the node each request went to, and gzip on.
 */
function nginxConfig(dir, port, nodes) {
  let snippet = readFileSync(SNIPPET, 'utf8');
  const listens = snippet.match(/^\s*listen 80;$/gm) ?? [];
  assert.equal(listens.length, 1, 'deploy/nginx.conf has one `listen 80;`');
  snippet = snippet.replace(/^(\s*)listen 80;$/m, `$1listen 127.0.0.1:${port};`);
  const servers = snippet.match(/^\s*server 10\.0\.0\.1[12]:8080 /gm) ?? [];
  assert.equal(servers.length, 2, 'deploy/nginx.conf names two upstream nodes');
  let i = 0;
  snippet = snippet.replace(/^(\s*)server 10\.0\.0\.1[12]:8080 /gm, (_, indent) => {
    const node = nodes[Math.min(i++, nodes.length - 1)];
    return `${indent}server 127.0.0.1:${node} `;
  });
  const tmp = (name) => path.join(dir, 'tmp', name);
  return `worker_processes 1;
events { worker_connections 1024; }
http {
    log_format herald '$msec $request_method $uri $status upstream=$upstream_addr $request_time';
    access_log ${path.join(dir, 'access.log')} herald;
    # An http {} block that compresses everything it may: the snippet's own
    # \`gzip off\` must keep event streams uncompressed all the same.
    gzip on;
    gzip_proxied any;
    gzip_min_length 1;
    gzip_types text/event-stream application/json;
    client_body_temp_path ${tmp('body')};
    proxy_temp_path ${tmp('proxy')};
    fastcgi_temp_path ${tmp('fastcgi')};
    uwsgi_temp_path ${tmp('uwsgi')};
    scgi_temp_path ${tmp('scgi')};

# ---- deploy/nginx.conf ----
${snippet}
}
`;
}

/** nginx running deploy/nginx.conf in front of `nodes` (ports). */
class Nginx {
  static async start(nodes) {
    const n = new Nginx();
    n.dir = tempDir();
    n.port = await freePort();
    n.url = `http://127.0.0.1:${n.port}`;
    mkdirSync(path.join(n.dir, 'tmp'));
    writeFileSync(path.join(n.dir, 'nginx.conf'), nginxConfig(n.dir, n.port, nodes));
    // Not as root: when the tests run as root, nginx runs as nobody (its
    // folder open to it), as an unprivileged user's nginx would.
    const asRoot = process.getuid && process.getuid() === 0;
    if (asRoot) {
      chmodSync(n.dir, 0o777);
      chmodSync(path.join(n.dir, 'tmp'), 0o777);
    }
    const argv = [
      '-e', 'stderr',
      '-p', n.dir,
      '-c', path.join(n.dir, 'nginx.conf'),
      '-g', `daemon off; pid ${path.join(n.dir, 'nginx.pid')}; error_log stderr;`,
    ];
    n.child = spawn(NGINX, argv, {
      stdio: ['ignore', 'ignore', 'pipe'],
      ...(asRoot ? { uid: 65534, gid: 65534 } : {}),
    });
    n.stderr = '';
    n.child.stderr.on('data', (d) => {
      n.stderr = (n.stderr + d).slice(-8000);
    });
    try {
      await waitForPort(n.port, 10_000, n.child);
    } catch (err) {
      await n.stop();
      throw new Error(`nginx did not start (${err.message}):\n${n.stderr}`);
    }
    return n;
  }

  /** The access log: one line per finished request, with the node it went to. */
  accessLog() {
    try {
      return readFileSync(path.join(this.dir, 'access.log'), 'utf8').trim().split('\n').filter(Boolean);
    } catch {
      return [];
    }
  }

  async stop() {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit');
      child.kill('SIGTERM'); // nginx's fast shutdown
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
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

/**
 * POST /v1/publish through `base`, with an idempotency id: a publish that
 * meets a node going away (a 502 from nginx, a cut connection) is sent again
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

const skipReason = !NGINX ? 'nginx is not installed (scripts/test.sh installs it)' : false;
let browser;

before(async () => {
  if (!skipReason) browser = await launchBrowser();
});

after(async () => {
  await closeAll(browser);
});

describe('deploy/nginx.conf in front of one node', { skip: skipReason }, () => {
  test('SSE, WebSocket and long polling get each event within 500 ms, uncompressed', { timeout: 30_000 }, async (t) => {
    const server = await Herald.start();
    const nginx = await Nginx.start([server.port, server.port]);
    const ctl = new AbortController();
    let context;
    try {
      const got = { sse: [], poll: [] };

      // SSE, read with fetch; asks for gzip, which must not be applied.
      const sse = await fetch(`${nginx.url}/v1/sse?topic=live`, {
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
          const res = await fetch(`${nginx.url}/v1/poll?${q}`, { signal: ctl.signal });
          const body = await res.json();
          const at = Date.now();
          for (const e of body.events) got.poll.push({ data: e.data, at });
          cursor = body.cursor;
        }
      })().catch(() => {});

      // WebSocket, the browser's own, through nginx's upgrade handling.
      const opened = await openPage(browser, nginx.url);
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
        await publishVia(nginx.url, { topic: 'live', data: { warmup: i } });
        await sleep(100);
        const wsCount = await page.evaluate(() => window.wsGot.length);
        warm = got.sse.length > 0 && got.poll.length > 0 && wsCount > 0;
      }
      assert.ok(warm, 'every transport receives through nginx');

      const sent = [];
      for (let n = 1; n <= 6; n++) {
        const at = Date.now();
        await publishVia(nginx.url, { topic: 'live', data: { n } });
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
          assert.ok(ms < 500, `${name}: event ${i + 1} arrived ${ms} ms after its publish (nginx buffered it?)`);
        }
      }
      t.diagnostic(`publish-to-arrival through nginx, ms: ${JSON.stringify(latencies)}`);
      await page.evaluate(() => window.ws.close());
      ctl.abort();
      await Promise.all([sseDone, pollDone]);
    } finally {
      ctl.abort();
      await closeAll(context, nginx, server);
    }
  });

  test('X-Forwarded-For reaches the per-address limit with --trusted-proxy', { timeout: 30_000 }, async () => {
    // One streaming connection per client address; nginx (127.0.0.1) is the
    // trusted proxy. The test itself stands for a front load balancer that
    // already wrote X-Forwarded-For: nginx appends its peer to it.
    const server = await Herald.start({ args: ['--trusted-proxy', '127.0.0.1', '--max-connections-per-ip', '1'] });
    const nginx = await Nginx.start([server.port, server.port]);
    const ctl = new AbortController();
    try {
      /** The first 1.5 s (or all) of an SSE stream opened as `client`. */
      const open = async (client) => {
        const res = await fetch(`${nginx.url}/v1/sse?topic=limits`, {
          headers: { 'x-forwarded-for': client },
          signal: ctl.signal,
        });
        assert.equal(res.status, 200);
        let text = '';
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        const deadline = Date.now() + 1_500;
        for (;;) {
          const left = deadline - Date.now();
          if (left <= 0) break;
          const r = await Promise.race([reader.read(), sleep(left).then(() => null)]);
          if (!r || r.done) break;
          text += decoder.decode(r.value, { stream: true });
          if (text.includes('herald.disconnect')) break;
        }
        return text;
      };
      const first = await open('203.0.113.1');
      const second = await open('203.0.113.2');
      const third = await open('203.0.113.1');
      assert.ok(!first.includes('herald.disconnect'), `first client's stream is open:\n${first}`);
      assert.ok(!second.includes('herald.disconnect'), `another client address has its own count:\n${second}`);
      assert.match(third, /event: herald\.disconnect\ndata: \{"reason":"rate_limited"/, 'the same address again is over its limit');
    } finally {
      ctl.abort();
      await closeAll(nginx, server);
    }
  });
});

describe('deploy/nginx.conf in front of two nodes', { skip: skipReason || (!REDIS && 'redis-server is not installed') }, () => {
  test('a rolling restart: every event exactly once, in order, no herald.gap, on every transport', { timeout: 60_000 }, async (t) => {
    const redis = await Redis.start();
    const nodeArgs = ['--redis-url', redis.url];
    const a = await Herald.start({ engine: 'redis', args: nodeArgs });
    const b = await Herald.start({ engine: 'redis', args: nodeArgs });
    const nginx = await Nginx.start([a.port, b.port]);
    const pages = {};
    try {
      // Pages using the browser client, loaded from /client/herald.js through nginx.
      const fast = { initialDelay: 100, maxDelay: 800, pollTimeout: 5 };
      for (const transport of ['sse', 'ws', 'poll']) {
        pages[transport] = await openPage(browser, nginx.url);
        await connectPage(pages[transport].page, { transport, ...fast }, ['roll']);
        assert.equal(await pages[transport].page.evaluate(() => h.transport), transport);
      }

      // The publisher: one event every 50 ms for 6 s, through nginx, each
      // retried with its id while a node goes away.
      const TOTAL = 120;
      const started = Date.now();
      let retries = 0;
      const publisher = (async () => {
        for (let n = 1; n <= TOTAL; n++) {
          const wait = started + n * 50 - Date.now();
          if (wait > 0) await sleep(wait);
          retries += (await publishVia(nginx.url, { topic: 'roll', data: { n }, id: `roll-${n}` })) - 1;
        }
      })();

      // Each node in turn: SIGTERM (graceful: streams end within
      // --shutdown-drain, held polls are answered), then started again on
      // its port. As deploy/README.md says for rolling restarts, the second
      // node is stopped only once the first has been back for fail_timeout
      // and a second more (nginx skips a node that failed for that long after
      // its last failure, counted in whole seconds).
      const failTimeout = Number(/fail_timeout=(\d+)s/.exec(readFileSync(SNIPPET, 'utf8'))[1]) * 1000;
      const restarts = [];
      let next = started + 800;
      for (const [name, node] of [['a', a], ['b', b]]) {
        const wait = next - Date.now();
        if (wait > 0) await sleep(wait);
        const t0 = Date.now();
        await node.restart();
        restarts.push(`${name} at ${t0 - started} ms, back after ${Date.now() - t0} ms`);
        next = Date.now() + failTimeout + 1_500;
      }
      await publisher;
      const publishedIn = Date.now() - started;

      const expected = Array.from({ length: TOTAL }, (_, i) => i + 1);
      const summary = {};
      for (const [transport, { page }] of Object.entries(pages)) {
        await waitInPage(page, (n) => rec.events.filter((e) => e.event !== 'herald.gap').length >= n, TOTAL, 15_000).catch(
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
        // long polling opens a request per poll anyway, and nginx sends the
        // next one to a live node, so the poll client need not notice.
        if (transport !== 'poll') {
          assert.ok(summary[transport].reconnects >= 1, `${transport}: the page did lose its node and reconnect`);
        }
        assert.equal(statuses.at(-1).state, 'open', `${transport}: connected at the end`);
      }
      const log = nginx.accessLog();
      const upstreamStatus = {};
      const failedGets = [];
      for (const line of log) {
        const [, method, uri, status] = line.split(' ');
        if (!uri.startsWith('/v1/')) continue;
        const key = `${method} ${uri} ${status}`;
        upstreamStatus[key] = (upstreamStatus[key] || 0) + 1;
        if (method === 'GET' && status === '502') failedGets.push(line);
      }
      t.diagnostic(`restarts: ${restarts.join('; ')}; ${TOTAL} publishes in ${publishedIn} ms, ${retries} retried`);
      t.diagnostic(`pages: ${JSON.stringify(summary)}`);
      t.diagnostic(`nginx answers by path and status: ${JSON.stringify(upstreamStatus)}`);
      // nginx moved every (re)connecting subscriber to a live node: no
      // stream, WebSocket or poll was answered 502. (A publish that was
      // already sent to a node as it closed may get a 502: nginx does not
      // resend a POST; the publisher sent it again with its id.)
      assert.deepEqual(failedGets, [], `subscribers were failed over:\n${nginx.stderr}`);
    } finally {
      await closeAll(...Object.values(pages).map((p) => p.context), nginx, a, b, redis);
    }
  });
});
