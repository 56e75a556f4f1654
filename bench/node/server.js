// The Node.js baseline a tutorial would write: an Express SSE endpoint with a
// keepalive comment, a `ws` WebSocketServer on the same port, and an
// in-memory bus (an EventEmitter per topic name). Nothing is tuned.
//
//   GET  /sse?topic=A&topic=B   Server-Sent Events
//   GET  /ws?topic=A            WebSocket (messages are the published text)
//   POST /publish?topic=A       body = the message text
//   GET  /grip/sse?topic=A      GRIP hold for Pushpin (the origin behind it)
//
// Usage: node server.js PORT
const http = require('http');
const { EventEmitter } = require('events');
const express = require('express');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 9300);
const bus = new EventEmitter();
bus.setMaxListeners(0);

const app = express();

function topicsOf(query) {
  const t = query.topic;
  return Array.isArray(t) ? t : t ? [t] : [];
}

app.get('/sse', (req, res) => {
  const topics = topicsOf(req.query);
  res.set({
    'Content-Type': 'text/event-stream',
    'Cache-Control': 'no-cache',
    Connection: 'keep-alive',
  });
  res.flushHeaders();
  const send = (msg) => res.write(`data: ${msg}\n\n`);
  topics.forEach((t) => bus.on(t, send));
  const keepalive = setInterval(() => res.write(': keepalive\n\n'), 15000);
  req.on('close', () => {
    clearInterval(keepalive);
    topics.forEach((t) => bus.off(t, send));
  });
});

app.post('/publish', express.text({ type: '*/*', limit: '1mb' }), (req, res) => {
  const topic = req.query.topic;
  bus.emit(topic, req.body);
  res.json({ ok: true });
});

app.get('/grip/sse', (req, res) => {
  res.set({
    'Content-Type': 'text/event-stream',
    'Grip-Hold': 'stream',
    'Grip-Channel': topicsOf(req.query).join(','),
  });
  res.send(':ok\n\n');
});

const server = http.createServer(app);
const wss = new WebSocketServer({ server, path: '/ws' });
wss.on('connection', (ws, req) => {
  const url = new URL(req.url, 'http://localhost');
  const topics = url.searchParams.getAll('topic');
  const send = (msg) => ws.send(msg);
  topics.forEach((t) => bus.on(t, send));
  ws.on('close', () => topics.forEach((t) => bus.off(t, send)));
});

server.listen(port, '127.0.0.1', () => {
  console.log(`node baseline listening on http://127.0.0.1:${port}`);
});
