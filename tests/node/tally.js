// The outcome the client scripts print for tests/realtime.rs, shared by socketio_clients.js
// and sockjs_clients.js: `tally(count)` returns `done(err, server)`, to be called once per
// client; after the `count`th call it prints one JSON line
// {"ok":N,"failed":N,"errors":{reason:count},"servers":{name:count}} and exits 0. With
// `deadlineMs`, the clients still pending then are counted as failed ("timeout") and the line
// is printed at that time.
"use strict";

function tally(count, deadlineMs) {
  const result = { ok: 0, failed: 0, errors: {}, servers: {} };
  let pending = count;
  if (deadlineMs !== undefined) {
    setTimeout(() => {
      result.failed += pending;
      result.errors.timeout = pending;
      console.log(JSON.stringify(result));
      process.exit(0);
    }, deadlineMs).unref();
  }
  return function done(err, server) {
    if (err) {
      result.failed++;
      result.errors[err] = (result.errors[err] || 0) + 1;
    } else {
      result.ok++;
      result.servers[server] = (result.servers[server] || 0) + 1;
    }
    if (--pending === 0) {
      console.log(JSON.stringify(result));
      process.exit(0);
    }
  };
}

module.exports = { tally };
