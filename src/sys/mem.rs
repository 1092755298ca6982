//! Giving memory back to the kernel after a burst.

/// Returns free heap memory at the top of glibc's arenas (and whole free pages inside them) to
/// the kernel. A no-op on other C libraries.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own allocator structures under its own locks; it
    // takes no pointer from us and frees nothing that is still allocated.
    unsafe {
        libc::malloc_trim(0);
    }
}
