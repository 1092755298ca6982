//! Raw syscalls.
