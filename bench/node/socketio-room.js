// Socket.IO 4 running the room broadcast of the rooms benchmarks (bench/run.sh
// --only g-), measured beside Herald by the same load generator
// (`herald-bench --mode rooms --protocol socketio`). Socket.IO's own Node
// server with its default settings (polling and WebSocket allowed, no
// compression, 25 s pings); nothing is tuned.
//
// A client names its room in the handshake's query (`?room=NAME`) and joins
// it on connecting; every `msg` event it emits goes to every member of the
// room with `io.to(room).emit('msg', data)`, the sender included: the same
// thing Herald's rooms do, where every member of a topic is subscribed to it
// and receives its own publishes too.
//
// Usage: node socketio-room.js [PORT]   (or PORT=...; 0: any free port; HOST
// defaults to 127.0.0.1). Prints one line once it listens, with the port.
const http = require('http');
const { Server } = require('socket.io');
const { version } = require('socket.io/package.json');

const port = Number(process.argv[2] || process.env.PORT || 9701);
const host = process.env.HOST || '127.0.0.1';

const httpServer = http.createServer();
const io = new Server(httpServer);

io.on('connection', (socket) => {
  const room = socket.handshake.query.room;
  if (typeof room !== 'string' || room === '') {
    socket.disconnect(true);
    return;
  }
  socket.join(room);
  socket.on('msg', (data) => {
    io.to(room).emit('msg', data);
  });
});

httpServer.listen(port, host, () => {
  // The port actually bound (PORT 0: one the system chose).
  const bound = httpServer.address().port;
  console.log(`socket.io ${version} room server listening on http://${host}:${bound}`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    io.close();
    process.exit(0);
  });
}
