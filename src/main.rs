#![deny(unsafe_code)]

fn main() -> std::process::ExitCode {
    allocator::return_freed_memory();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(issuelock::cli::run(issuelock::cli::Cli::parse_args()))
}

/// The memory allocator's settings, made before any thread starts.
mod allocator {
    /// Keeps glibc's malloc giving freed memory back. By default glibc raises its mmap
    /// threshold (and with it its trim threshold, up to 64 MiB) each time a large block
    /// is freed: later large blocks, such as the pages of a controller's initial lists,
    /// then come from the heap, and the memory they free stays with the process. Fixing
    /// the threshold at glibc's own default of 128 KiB turns that adjustment off (mallopt(3)).
    /// Measured with `make bench-scale` at 50,000 locks, a restarted controller's RSS:
    /// 168 MiB with glibc's adjustment, 146 MiB without (BENCHMARKS.md). Other C libraries
    /// (musl) keep no such threshold: nothing to do there.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    pub fn return_freed_memory() {
        const THRESHOLD: libc::c_int = 128 * 1024;
        // SAFETY: mallopt only sets malloc's parameters; it is called before any other
        // thread exists, so no allocation runs concurrently with it.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
        }
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    pub fn return_freed_memory() {}
}
