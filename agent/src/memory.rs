//! Freed heap pages handed back to the kernel: glibc keeps them otherwise (see
//! [`give_back_freed_memory`]).

/// How often [`give_back_freed_memory`] runs while the agent does.
const GIVE_BACK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Returns to the kernel the pages of the heap that hold no live allocation.
///
/// glibc gives back only the top of its heap by itself; the freed pages that sit between live
/// allocations it keeps for as long as the process runs, and bursts leave many of them.
/// Parsing 10,000 resources takes 20 MB for a moment (about 3 MB stayed). A restart storm after
/// a stall, every check timed out at once, took an HTTP agent at saturation from 125 MB to
/// 200-218 MB, and it stayed there. Walking the heap takes 1-5 ms at that size, on the calling
/// thread. Without glibc, nothing.
#[allow(unsafe_code)] // malloc_trim: glibc's, no safe wrapper.
pub fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and releases glibc's own free lists; it has no
    // preconditions and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`give_back_freed_memory`] now (reading the config left its 20 MB) and every
/// [`GIVE_BACK_EVERY`], on a blocking thread: not the runtime's, which it would hold for
/// milliseconds. While it walks an allocator arena, a thread that allocates from that arena
/// waits, so a check may take up to that long more once in ten seconds.
pub async fn give_back_freed_memory_periodically() {
    let mut every = tokio::time::interval(GIVE_BACK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let _ = tokio::task::spawn_blocking(give_back_freed_memory).await;
    }
}
