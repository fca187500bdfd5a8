//! The heap's freed pages go back to the kernel: [`resmon::memory::give_back_freed_memory`],
//! which `resmon run` calls every ten seconds. A process of its own (this file), so that no
//! other test allocates while its resident memory is read.

/// Resident memory, from /proc/self/status.
fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[cfg(target_env = "gnu")]
#[test]
fn pages_freed_between_live_allocations_go_back_to_the_kernel() {
    // 64 MB of 16 KB buffers, as a burst of checks leaves them, each followed by a small
    // allocation that stays: freed, the buffers sit between live chunks, where glibc keeps them.
    const BUFFERS: usize = 4096;
    const MB: usize = 1 << 20;
    let mut burst = Vec::with_capacity(BUFFERS);
    let mut kept = Vec::with_capacity(BUFFERS);
    for i in 0..BUFFERS {
        burst.push(std::hint::black_box(vec![i as u8 | 1; 16 * 1024]));
        kept.push(std::hint::black_box(Box::new([i as u8; 64])));
    }
    drop(burst);
    let held = resident_bytes();
    resmon::memory::give_back_freed_memory();
    let after = resident_bytes();
    // Each buffer spans at least three whole pages: 48 MB of the 64 can go back.
    assert!(
        held.saturating_sub(after) > 32 * MB,
        "resident {} MB with the burst freed, {} MB after giving it back",
        held / MB,
        after / MB
    );
    assert_eq!(std::hint::black_box(kept).len(), BUFFERS);
}
