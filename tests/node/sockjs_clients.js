// SockJS clients for tests/realtime.rs: `node sockjs_clients.js URL COUNT TRANSPORT`, where
// TRANSPORT is xhr-streaming or xhr-polling. Each client opens a session on that transport
// only (with `?affinity=cN` on every request, for hash balancing by query parameter), sends
// three messages, and must get each echoed by one and the same server.
// Prints one JSON line (tally.js): {"ok":N,"failed":N,"errors":{reason:count},"servers":{name:count}}.
"use strict";
const SockJS = require("sockjs-client");
const { tally } = require("./tally");

const [url, countArg, transport] = process.argv.slice(2);
const count = Number(countArg || 1);
const done = tally(count);
const MESSAGES = 3;

function client(i) {
  let finished = false;
  let got = 0;
  let server = null;
  const sock = new SockJS(`${url}?affinity=c${i}`, null, { transports: [transport] });
  const finish = (err) => {
    if (finished) return;
    finished = true;
    sock.close();
    done(err, server);
  };
  const timer = setTimeout(() => finish(`timeout after ${got} echoes`), 20000);
  sock.onopen = () => {
    if (sock.transport !== transport) return finish(`transport ${sock.transport}`);
    sock.send(`m${i}-0`);
  };
  sock.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.msg !== `m${i}-${got}`) return finish("wrong echo");
    if (server && m.server !== server) return finish("changed server");
    server = m.server;
    got++;
    if (got === MESSAGES) {
      clearTimeout(timer);
      finish(null);
    } else {
      sock.send(`m${i}-${got}`);
    }
  };
  sock.onclose = (e) => finish(`closed ${e.code} ${e.reason}`);
}

for (let i = 0; i < count; i++) client(i);
