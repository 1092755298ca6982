//! The one support module of the integration tests: every test file declares `mod support;`.
//!
//! ```text
//!   test client ──TCP──▶ wsplice child process ──TCP──▶ backend in the test process
//!   (raw bytes or         (proxy.rs: Proxy, its          (backend.rs: EchoBackend, RawBackend,
//!    tungstenite)          config from ProxyBuilder)      RecordingBackend, RefusedPort, Blackhole)
//!
//!   proxy.rs    the proxy under test: config builder, launcher, `e2e!` (one test per relay
//!               mode), signals, stdout lines, /metrics, its exit, RSS and descriptors
//!   head.rs     HTTP heads: the upgrade request and the 101, header lookup, head readers,
//!               the check of the proxy's own refusals
//!   io.rs       sockets: connect, read until closed, silence, pumps, raw tunnels
//!   ws.rs       WebSocket: the tungstenite client and hand-made frames
//!   backend.rs  the backends the proxy talks to
//!   tunnels.rs  long-lived named tunnels with checked traffic (reload, drain, worker processes)
//!   browser.rs  headless Chromium: a page dumped once, or kept open and read over DevTools
//! ```
//!
//! The async helpers (tokio) are at the root: `use support::*`. Their blocking twins, for tests
//! on std threads, carry the same names in [`blocking`]: `use support::blocking::*`. The one
//! launcher serves both: [`ProxyBuilder::start`] and [`ProxyBuilder::blocking_start`].
//!
//! Everything binds to 127.0.0.1 only. Every wait has a deadline, so a hung proxy fails a test
//! instead of hanging the suite; the proxy's stderr is printed when a test fails.
#![allow(dead_code, unused_imports)]

use std::time::Duration;

#[macro_use]
mod proxy;
mod backend;
pub mod browser;
mod head;
mod io;
pub mod tls;
mod tunnels;
mod ws;

pub use backend::*;
pub use head::*;
pub use io::*;
pub use proxy::*;
pub use tunnels::*;
pub use ws::*;

/// The blocking twins of the async helpers, with the same names.
pub mod blocking {
    pub use super::backend::blocking::*;
    pub use super::head::blocking::*;
    pub use super::io::blocking::*;
}

/// Fails the test with every failure of a table run, one a line, when there is any.
pub fn assert_rows_passed(failures: &[String], rows: usize) {
    assert!(
        failures.is_empty(),
        "{} of {rows} rows failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// How long any single network step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(5);
/// Whole-test deadline applied by [`run`].
pub const TEST_DEADLINE: Duration = Duration::from_secs(30);

/// `worker_models!(body)`: module `body` with the tests `threads` and `processes`, each calling
/// the function `body(model)` with that worker model.
#[allow(unused_macros)]
macro_rules! worker_models {
    ($body:ident) => {
        mod $body {
            #[test]
            fn threads() {
                super::$body("threads");
            }

            #[test]
            fn processes() {
                super::$body("processes");
            }
        }
    };
}
