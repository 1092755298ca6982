// A SockJS echo server for tests/realtime.rs: `node sockjs_server.js NAME`; serves the prefix
// /echo on an ephemeral 127.0.0.1 port and prints `listening PORT`. Each message comes back as
// JSON with this server's name.
"use strict";
const http = require("http");
const sockjs = require("sockjs");

const name = process.argv[2] || "server";
const echo = sockjs.createServer({ log: () => {}, disconnect_delay: 5000 });
echo.on("connection", (conn) => {
  conn.on("data", (msg) => conn.write(JSON.stringify({ msg, server: name })));
});
const srv = http.createServer();
echo.installHandlers(srv, { prefix: "/echo" });
srv.listen(0, "127.0.0.1", () => {
  console.log(`listening ${srv.address().port}`);
});
