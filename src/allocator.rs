//! The one allocator setting the memory bound relies on.
//!
//! glibc's malloc raises its mmap threshold to the size of each large block freed (up to
//! 32 MiB), so after the first giant record its successors come from the per-thread heaps,
//! where memory freed by one runtime thread is not reused by another: with four records of
//! 12-24 MiB arriving at once the resident heap reached 228 MiB where the same run with a
//! fixed threshold peaked at 122 MiB (`tests/giant_records.rs`), beyond what `check-config`
//! prints. A fixed threshold of 1 MiB sends every large buffer (a batch's bulk body, a giant
//! record, a connection's grown buffer) to its own mapping, returned to the system when freed.

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`]. Call first, before any thread starts.
pub fn bound_heap_growth() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; no thread allocates concurrently yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}

/// Blocks from this size on are mapped on their own.
pub const MMAP_THRESHOLD: usize = 1024 * 1024;
