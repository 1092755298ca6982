// A socket.io server for tests/realtime.rs: `node socketio_server.js NAME`; listens on an
// ephemeral 127.0.0.1 port and prints `listening PORT`. The "echo" event is acknowledged with
// the message, this server's name and the transport the socket is on.
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const name = process.argv[2] || "server";
const srv = http.createServer();
const io = new Server(srv, { cors: { origin: true, credentials: true } });
io.on("connection", (socket) => {
  socket.on("echo", (msg, ack) => {
    ack({ msg, server: name, transport: socket.conn.transport.name });
  });
});
srv.listen(0, "127.0.0.1", () => {
  console.log(`listening ${srv.address().port}`);
});
