// socket.io clients for tests/realtime.rs:
// `node socketio_clients.js URL COUNT [affinity|plain] [TIMEOUT_MS]` (each wait: 10 s default).
// Every client starts on HTTP long-polling (as behind a proxy that blocks WebSocket), echoes
// once, upgrades to WebSocket, echoes again, and must have stayed on one server throughout.
// With `affinity`, each client adds `?affinity=cN` to every request (for hash balancing by
// query parameter). Cookies are kept per client (`withCredentials`), as a browser would.
// Prints one JSON line (tally.js): {"ok":N,"failed":N,"errors":{reason:count},"servers":{name:count}}.
"use strict";
const { io } = require("socket.io-client");
const { tally } = require("./tally");

const [url, countArg, mode, timeoutArg] = process.argv.slice(2);
const count = Number(countArg || 1);
const wait = Number(timeoutArg || 10000);
const done = tally(count, 60000);

function client(i) {
  let finished = false;
  const finish = (err, server) => {
    if (finished) return;
    finished = true;
    s.close();
    done(err, server);
  };
  const s = io(url, {
    transports: ["polling", "websocket"],
    upgrade: true,
    withCredentials: true,
    reconnection: false,
    timeout: wait,
    query: mode === "affinity" ? { affinity: `c${i}` } : {},
  });
  s.on("connect_error", (e) => finish(`connect_error: ${e.message}`));
  s.on("disconnect", (reason) => finish(`disconnect: ${reason}`));
  s.on("connect", async () => {
    try {
      const first = await s.timeout(wait).emitWithAck("echo", `p${i}`);
      if (s.io.engine.transport.name !== "websocket") {
        await new Promise((resolve, reject) => {
          const t = setTimeout(() => reject(new Error("no upgrade")), wait);
          s.io.engine.once("upgrade", () => {
            clearTimeout(t);
            resolve();
          });
        });
      }
      const second = await s.timeout(wait).emitWithAck("echo", `w${i}`);
      if (first.msg !== `p${i}` || second.msg !== `w${i}`) {
        finish("wrong echo");
      } else if (second.transport !== "websocket") {
        finish(`not upgraded: ${second.transport}`);
      } else if (first.server !== second.server) {
        finish("changed server");
      } else {
        finish(null, second.server);
      }
    } catch (e) {
      finish(`echo: ${e.message}`);
    }
  });
}

for (let i = 0; i < count; i++) client(i);
