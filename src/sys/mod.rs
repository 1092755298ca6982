//! The only place for raw syscalls: splice and pipes, socket options, resource limits.
//!
//! Everything here is reached through nix and socket2's safe wrappers; should a raw `unsafe`
//! call be needed, it goes in this module with a `// SAFETY:` line.
pub mod limits;
pub mod mem;
pub mod pipe;
pub mod sock;
