//! The only place for raw syscalls: splice and pipes, socket options, resource limits, and
//! io_uring.
//!
//! Most of it is reached through nix and socket2's safe wrappers; every raw `unsafe` call is in
//! this module with a `// SAFETY:` line (io_uring's submissions and buffer ring in [`uring`]).
pub mod limits;
pub mod mem;
pub mod pipe;
pub mod sock;
pub mod uring;
