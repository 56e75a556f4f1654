// Test harness: a real `herald serve`, proxies that can cut or buffer the
// connection, and headless Chromium (Debian's, driven by playwright-core).
// Everything listens on 127.0.0.1; every wait is bounded.

import { spawn, execFile } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const HERALD_BIN =
  process.env.HERALD_BIN ||
  path.join(process.env.CARGO_TARGET_DIR || path.join(root, 'target'), 'debug', 'herald');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// ---- the server ----

/** A running `herald serve`. */
export class Herald {
  /** Starts one; resolves once it printed its address. */
  static async start({ port = 0, engine = 'memory', dataDir, args = [] } = {}) {
    const h = new Herald();
    h.port = port;
    h.engine = engine;
    h.dataDir = dataDir;
    h.args = args;
    await h.spawn();
    return h;
  }

  async spawn() {
    const argv = ['serve', '--listen', `127.0.0.1:${this.port}`, '--engine', this.engine];
    if (this.dataDir) argv.push('--data-dir', this.dataDir);
    argv.push(...this.args);
    const child = spawn(HERALD_BIN, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.stderr = '';
    child.stderr.on('data', (d) => {
      this.stderr = (this.stderr + d).slice(-8000);
    });
    const line = await new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`herald did not start in 10 s:\n${this.stderr}`)), 10_000);
      child.stdout.on('data', (d) => {
        out += d;
        const nl = out.indexOf('\n');
        if (nl >= 0) {
          clearTimeout(timer);
          resolve(out.slice(0, nl));
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`herald exited with ${code}:\n${this.stderr}`));
      });
    });
    const m = /^herald listening on (http:\/\/127\.0\.0\.1:(\d+))$/.exec(line.trim());
    if (!m) throw new Error(`unexpected first line: ${line}`);
    this.url = m[1];
    this.port = Number(m[2]);
    child.stdout.resume();
  }

  /** SIGTERM (a graceful stop), then waits for the exit (SIGKILL after 10 s). */
  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }

  /** Stops and starts again on the same port (and the same data directory). */
  async restart() {
    await this.stop();
    // The port was just released; allow a moment if the OS is slow to free it.
    for (let i = 0; ; i++) {
      try {
        await this.spawn();
        return;
      } catch (err) {
        if (i >= 20) throw err;
        await sleep(100);
      }
    }
  }

  /** Publishes as the backend does, straight to the server. */
  async publish(topic, data, { event, key } = {}) {
    const body = { topic, data };
    if (event) body.event = event;
    const headers = { 'content-type': 'application/json' };
    if (key) headers.authorization = `Bearer ${key}`;
    const res = await fetch(`${this.url}/v1/publish`, {
      method: 'POST',
      headers,
      body: JSON.stringify(body),
    });
    if (!res.ok) throw new Error(`publish answered ${res.status}: ${await res.text()}`);
    return (await res.json()).id;
  }
}

/** `herald token ...`: a JWT signed with `secret` (`info`: its info claim, any JSON value). */
export function mintToken(secret, { sub = 'alice', subscribe = [], publish = [], ttl = '1m', info } = {}) {
  const args = ['token', '--jwt-secret', secret, '--sub', sub, '--ttl', ttl];
  for (const p of subscribe) args.push('--subscribe', p);
  for (const p of publish) args.push('--publish', p);
  if (info !== undefined) args.push('--info', JSON.stringify(info));
  return new Promise((resolve, reject) => {
    execFile(HERALD_BIN, args, { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`herald token failed: ${stderr || err.message}`));
      else resolve(stdout.trim());
    });
  });
}

/**
 * The durable engine, if this build has it (`--engine embedded`); else memory.
 * Restart tests use it when they can: with it a restart keeps the history.
 */
export async function pickEngine() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'herald-probe-'));
  try {
    const h = await Herald.start({ engine: 'embedded', dataDir: dir });
    await h.stop();
    return 'embedded';
  } catch {
    return 'memory';
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function tempDir() {
  return mkdtempSync(path.join(os.tmpdir(), 'herald-browser-'));
}

// ---- proxies ----

/**
 * A TCP proxy in front of the server: the page's only way to it. `cut()`
 * severs every connection and refuses new ones until `restore()`, as a lost
 * network does; `block()` only refuses new ones. HTTP, SSE and WebSocket all
 * pass through it unchanged.
 */
export class CutProxy {
  static async start(upstreamPort) {
    const p = new CutProxy();
    p.upstreamPort = upstreamPort;
    p.down = false;
    p.sockets = new Set();
    p.server = net.createServer((client) => p.accept(client));
    p.server.listen(0, '127.0.0.1');
    await once(p.server, 'listening');
    p.port = p.server.address().port;
    p.url = `http://127.0.0.1:${p.port}`;
    return p;
  }

  accept(client) {
    if (this.down) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(this.upstreamPort, '127.0.0.1');
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Refuses new connections; open ones carry on. */
  block() {
    this.down = true;
  }

  cut() {
    this.down = true;
    for (const s of this.sockets) s.resetAndDestroy();
    this.sockets.clear();
  }

  restore() {
    this.down = false;
  }

  async close() {
    this.cut();
    this.server.close();
  }
}

/**
 * An HTTP proxy that buffers event streams, as a proxy with response
 * buffering on does: it passes the head of a `/v1/sse` response at once but
 * holds its body (until 64 KiB or the end). Other requests and WebSocket
 * upgrades pass through.
 */
export class BufferingProxy {
  static async start(upstreamPort) {
    const p = new BufferingProxy();
    p.upstreamPort = upstreamPort;
    p.sseRequests = 0;
    p.sockets = new Set();
    p.server = http.createServer((req, res) => p.forward(req, res));
    p.server.on('upgrade', (req, socket, head) => p.tunnel(req, socket, head));
    p.server.on('connection', (s) => {
      p.sockets.add(s);
      s.on('close', () => p.sockets.delete(s));
    });
    p.server.listen(0, '127.0.0.1');
    await once(p.server, 'listening');
    p.port = p.server.address().port;
    p.url = `http://127.0.0.1:${p.port}`;
    return p;
  }

  forward(req, res) {
    const buffered = req.url.startsWith('/v1/sse');
    if (buffered) this.sseRequests++;
    const up = http.request(
      { host: '127.0.0.1', port: this.upstreamPort, method: req.method, path: req.url, headers: req.headers },
      (upRes) => {
        res.writeHead(upRes.statusCode, upRes.headers);
        if (!buffered) {
          upRes.pipe(res);
          return;
        }
        res.flushHeaders();
        let held = [];
        let size = 0;
        upRes.on('data', (chunk) => {
          held.push(chunk);
          size += chunk.length;
          if (size >= 64 * 1024) {
            res.write(Buffer.concat(held));
            held = [];
            size = 0;
          }
        });
        upRes.on('end', () => res.end(Buffer.concat(held)));
      },
    );
    up.on('error', () => res.destroy());
    res.on('close', () => up.destroy());
    req.pipe(up);
  }

  tunnel(req, socket, head) {
    const up = net.connect(this.upstreamPort, '127.0.0.1', () => {
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(`${raw}\r\n`);
      if (head.length) up.write(head);
      socket.pipe(up);
      up.pipe(socket);
    });
    up.on('error', () => socket.destroy());
    socket.on('error', () => up.destroy());
  }

  async close() {
    for (const s of this.sockets) s.destroy();
    this.server.close();
  }
}

// ---- the browser ----

export async function launchBrowser({ extraArgs = [] } = {}) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-quic',
      '--no-first-run',
      ...extraArgs,
    ],
  });
}

/**
 * A page on `origin` with the client loaded as `window.herald` and a recorder
 * `window.rec` ({events, statuses, errors, requests}). `exposed` are Node
 * functions the page may call (e.g. to mint tokens).
 */
export async function openPage(browser, origin, { exposed = {} } = {}) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const requests = [];
  page.on('request', (r) => requests.push({ method: r.method(), url: r.url() }));
  page.on('websocket', (ws) => requests.push({ method: 'WEBSOCKET', url: ws.url() }));
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  for (const [name, fn] of Object.entries(exposed)) await page.exposeFunction(name, fn);
  // Any page of the origin will do; /healthz is small and has no script of its own.
  await page.goto(`${origin}/healthz`);
  await page.evaluate(async () => {
    window.herald = await import('/client/herald.js');
    window.rec = { events: [], statuses: [], errors: [] };
  });
  return { context, page, requests, consoleLines };
}

/** Waits, at most `timeout` ms, until `fn(arg)` is truthy in the page. */
export async function waitInPage(page, fn, arg, timeout = 15_000) {
  await page.waitForFunction(fn, arg, { timeout, polling: 50 });
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Closes what a test opened, whatever happened. */
export async function closeAll(...things) {
  for (const t of things) {
    if (!t) continue;
    try {
      if (t.stop) await t.stop();
      else if (t.close) await t.close();
    } catch {
      // already gone
    }
  }
}

/**
 * Connects `window.h` in the page with `opts` and subscribes to `topics`
 * (handler and, for each of `names`, a named listener), recording every event
 * in `rec.events`. With `getToken`, the page's getToken calls the exposed
 * Node function of that name. Resolves once every subscription is live.
 */
export async function connectPage(page, opts, topics, { names = [], getToken } = {}) {
  await page.evaluate(
    ({ opts, topics, names, getToken }) => {
      const o = {
        ...opts,
        onStatus: (s) => rec.statuses.push(s),
        onError: (e) => rec.errors.push({ code: e.code, status: e.status, topic: e.topic, message: e.message }),
      };
      if (getToken) o.getToken = () => window[getToken]();
      window.h = herald.connect(location.origin, o);
      window.offs = [];
      for (const t of topics) {
        offs.push(h.subscribe(t, (e) => rec.events.push(e)));
        for (const n of names) offs.push(h.on(t, n, (e) => rec.events.push(e)));
      }
      return Promise.all(offs.map((off) => off.ready));
    },
    { opts, topics, names, getToken },
  );
}

/** The page's recorded events, in the order the page got them. */
export function pageEvents(page) {
  return page.evaluate(() => rec.events);
}
