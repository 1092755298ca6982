//! The only place for raw syscalls: splice and pipes, socket options, resource limits, shared
//! memory and descriptor passing between the supervisor and its worker processes, and io_uring.
//!
//! Everything here is reached through nix and socket2's safe wrappers where they exist; each
//! `unsafe` block that remains (mapping shared memory, adopting a received descriptor, io_uring's
//! submissions and buffer ring in [`uring`]) carries a `// SAFETY:` line.
pub mod cpus;
pub mod ipc;
pub mod limits;
pub mod mem;
pub mod pipe;
pub mod shm;
pub mod sock;
#[cfg(feature = "uring")]
pub mod uring;
