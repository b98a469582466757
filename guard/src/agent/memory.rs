//! The agent's allocator: set up so that start-up's large, short-lived blocks do not stay
//! resident for its life (BENCHMARKS.md, Memory and footprint, says what each part costs).

/// Start-up parses the kernel's BTF (for the loader's relocations, for the tp_btf socket
/// hook), MiBs that are freed before the agent runs; glibc keeps freed memory for reuse, so
/// hand it back to the kernel once instead of carrying it for the agent's life.
pub(super) fn release_startup_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), and
/// its trim threshold with it: after start-up's BTF parse, blocks of several MiB landed in a
/// thread's heap and ~16 MiB of it stayed resident, free, for the agent's life. A fixed
/// threshold keeps large blocks in their own mappings, returned when freed; two arenas are
/// enough for the agent's few threads.
pub(super) fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
