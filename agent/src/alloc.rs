//! The agent's allocator: glibc's, with a per-thread stack of 8 KB blocks on the check threads.
//!
//! An HTTP check on hyper allocates three blocks of 4-8 KB (its connection's read and write
//! buffers and the block of the channel that carries its request to the connection) and frees
//! them when it ends. glibc's per-thread cache (tcache) stops at 1 KB: larger requests go to its
//! bins, where each `malloc` first consolidates the small chunks freed since the last one and
//! each `free` merges the block with its neighbours, touching their headers in cold memory. At
//! saturation glibc's allocator took a quarter of the agent's user CPU per HTTP check, those
//! three blocks' trips through its bins a large part of it. Here a check thread
//! keeps the blocks its checks free, up to [`KEPT`], and hands them to the next checks: last
//! freed, first reused, so often still in the cache.
//!
//! Every block is glibc's: the stack only holds them. A request from 4 KB + 1 to 8 KB is served
//! with a whole 8 KB block, so that any kept block fits any such request; the block is always
//! allocated and freed with the same 8 KB layout. Only the threads that opt in
//! ([`keep_blocks_on_this_thread`]: the check threads, which live as long as the process) keep
//! blocks: a thread that ends leaves its stack behind, and the runtime's blocking threads
//! come and go. Each check thread gives back every 10 s, just before the agent's `malloc_trim`,
//! the blocks it kept but did not use ([`give_back_idle_blocks`]), so that glibc can return
//! their pages to the kernel in the same turn.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, UnsafeCell};

/// The size of every kept block.
const BLOCK: usize = 8192;
/// The smallest request served with a block; smaller ones waste less with glibc's own sizes.
const SMALLEST: usize = 4096 + 1;
/// Blocks a thread keeps at most: 8 MB. At HTTP saturation the checks in flight swing by
/// hundreds from one moment to the next: 64 blocks served 17% of the requests, 1,024 about
/// two thirds. The kept blocks are mostly memory glibc would hold free in its heap anyway.
const KEPT: usize = 1024;
/// The alignment of a block, glibc's own (`malloc` aligns to 16 on x86-64 and aarch64).
const ALIGN: usize = 16;

struct Kept {
    on: Cell<bool>,
    len: Cell<usize>,
    /// The fewest blocks kept since the last [`give_back_idle_blocks`]: that many, at the
    /// bottom of the stack, were not used since.
    low: Cell<usize>,
    blocks: UnsafeCell<[*mut u8; KEPT]>,
}

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates, which an
    // allocator's thread-local must not.
    static KEPT_BLOCKS: Kept = const {
        Kept {
            on: Cell::new(false),
            len: Cell::new(0),
            low: Cell::new(0),
            blocks: UnsafeCell::new([std::ptr::null_mut(); KEPT]),
        }
    };
}

/// This thread keeps the blocks it frees, until the process exits. For threads that live as
/// long as the process: the blocks of a thread that ends are never freed.
pub fn keep_blocks_on_this_thread() {
    KEPT_BLOCKS.with(|k| k.on.set(true));
}

/// Gives back to glibc the blocks this thread kept but did not use since the last call, the
/// oldest first, and returns how many. A burst of checks (a restart storm: every check at once)
/// leaves the stack full, and what it holds neither glibc's `malloc_trim` nor anything else can
/// return to the kernel; called every few seconds, the stack holds only what the checks use.
pub fn give_back_idle_blocks() -> usize {
    KEPT_BLOCKS
        .try_with(|k| {
            let len = k.len.get();
            let idle = k.low.get().min(len);
            if idle > 0 {
                // SAFETY: as in `take_block`; glibc's `free` does not come back here.
                let blocks = unsafe { &mut *k.blocks.get() };
                for &block in &blocks[..idle] {
                    unsafe { System.dealloc(block, block_layout()) };
                }
                blocks.copy_within(idle..len, 0);
                k.len.set(len - idle);
            }
            k.low.set(k.len.get());
            idle
        })
        .unwrap_or(0)
}

/// glibc's allocator with a stack of 8 KB blocks on the threads that opted in (see the module).
pub struct CheckThreadAllocator;

fn served_with_a_block(layout: Layout) -> bool {
    (SMALLEST..=BLOCK).contains(&layout.size()) && layout.align() <= ALIGN
}

fn block_layout() -> Layout {
    // SAFETY: BLOCK is non-zero and ALIGN a power of two.
    unsafe { Layout::from_size_align_unchecked(BLOCK, ALIGN) }
}

fn take_block() -> Option<*mut u8> {
    KEPT_BLOCKS
        .try_with(|k| {
            let len = k.len.get();
            if len == 0 {
                return None;
            }
            k.len.set(len - 1);
            k.low.set(k.low.get().min(len - 1));
            // SAFETY: only this thread reaches its own stack, and no reference to it outlives
            // this call.
            Some(unsafe { (*k.blocks.get())[len - 1] })
        })
        .ok()
        .flatten()
}

/// Keeps `block`, or gives it back when this thread does not keep blocks or has enough.
fn keep_block(block: *mut u8) -> bool {
    KEPT_BLOCKS
        .try_with(|k| {
            let len = k.len.get();
            if !k.on.get() || len == KEPT {
                return false;
            }
            // SAFETY: as in `take_block`.
            unsafe { (*k.blocks.get())[len] = block };
            k.len.set(len + 1);
            true
        })
        .unwrap_or(false)
}

// SAFETY: every pointer handed out is glibc's, and is given back to glibc with the layout it
// was allocated with: a block's is always `block_layout()`, whatever the request's was.
unsafe impl GlobalAlloc for CheckThreadAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if served_with_a_block(layout) {
            return take_block().unwrap_or_else(|| System.alloc(block_layout()));
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if served_with_a_block(layout) {
            let block = self.alloc(layout);
            if !block.is_null() {
                block.write_bytes(0, layout.size());
            }
            return block;
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if served_with_a_block(layout) {
            if !keep_block(ptr) {
                System.dealloc(ptr, block_layout());
            }
            return;
        }
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        match (served_with_a_block(layout), served_with_a_block(new_layout)) {
            // The block it has holds the new size too.
            (true, true) => ptr,
            (false, false) => System.realloc(ptr, layout, new_size),
            // Into or out of a block: the layouts differ, so glibc's realloc cannot be used.
            _ => {
                let moved = self.alloc(new_layout);
                if !moved.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 1).unwrap()
    }

    /// Runs `test` on a thread of its own: its stack of kept blocks starts empty.
    fn on_a_fresh_thread(test: impl FnOnce() + Send + 'static) {
        std::thread::spawn(test).join().unwrap();
    }

    fn kept() -> usize {
        KEPT_BLOCKS.with(|k| k.len.get())
    }

    /// Allocates `n` blocks, then frees them all, in order.
    unsafe fn allocate_then_free(a: &CheckThreadAllocator, n: usize) -> Vec<*mut u8> {
        let blocks: Vec<*mut u8> = (0..n).map(|_| a.alloc(layout(8192))).collect();
        for &b in &blocks {
            a.dealloc(b, layout(8192));
        }
        blocks
    }

    #[test]
    fn a_thread_that_keeps_blocks_hands_the_last_freed_to_the_next_request() {
        on_a_fresh_thread(|| {
            let a = CheckThreadAllocator;
            keep_blocks_on_this_thread();
            unsafe {
                let first = a.alloc(layout(8192));
                a.dealloc(first, layout(8192));
                // Another size in the blocks' range gets the same block.
                let second = a.alloc(layout(7968));
                assert_eq!(first, second);
                // Written to its whole block: the block is 8 KB, whatever was asked.
                second.write_bytes(0xa5, BLOCK);
                a.dealloc(second, layout(7968));
                // Smaller and larger requests are glibc's alone.
                let small = a.alloc(layout(4096));
                assert_ne!(small, first);
                a.dealloc(small, layout(4096));
                let zeroed = a.alloc_zeroed(layout(5000));
                assert_eq!(zeroed, first);
                assert!(std::slice::from_raw_parts(zeroed, 5000)
                    .iter()
                    .all(|&b| b == 0));
                a.dealloc(zeroed, layout(5000));
            }
        });
    }

    #[test]
    fn a_thread_keeps_at_most_kept_blocks_and_others_keep_none() {
        on_a_fresh_thread(|| {
            let a = CheckThreadAllocator;
            unsafe {
                // Not opted in: nothing kept.
                let block = a.alloc(layout(8192));
                a.dealloc(block, layout(8192));
                assert_eq!(kept(), 0);
                keep_blocks_on_this_thread();
                let blocks = allocate_then_free(&a, KEPT + 10);
                assert_eq!(kept(), KEPT);
                // Last freed, first reused.
                assert_eq!(a.alloc(layout(8192)), blocks[KEPT - 1]);
            }
        });
    }

    #[test]
    fn blocks_unused_since_the_last_give_back_go_back_to_glibc() {
        on_a_fresh_thread(|| {
            let a = CheckThreadAllocator;
            keep_blocks_on_this_thread();
            unsafe {
                allocate_then_free(&a, 10);
                // The ten were just freed: none has sat unused for a whole period yet.
                assert_eq!(give_back_idle_blocks(), 0);
                // Three taken, two given back: the bottom seven were not used.
                let taken: Vec<*mut u8> = (0..3).map(|_| a.alloc(layout(8192))).collect();
                a.dealloc(taken[0], layout(8192));
                a.dealloc(taken[1], layout(8192));
                assert_eq!(give_back_idle_blocks(), 7);
                assert_eq!(kept(), 2);
                // The two left were last used before this period: idle now.
                assert_eq!(give_back_idle_blocks(), 2);
                assert_eq!(kept(), 0);
                a.dealloc(taken[2], layout(8192));
            }
        });
    }

    #[test]
    fn growing_into_and_out_of_a_block_keeps_the_contents() {
        on_a_fresh_thread(|| {
            let a = CheckThreadAllocator;
            keep_blocks_on_this_thread();
            unsafe {
                let p = a.alloc(layout(100));
                for i in 0..100 {
                    *p.add(i) = i as u8;
                }
                let p = a.realloc(p, layout(100), 6000);
                let q = a.realloc(p, layout(6000), 8192);
                // Within the block: not moved.
                assert_eq!(p, q);
                let r = a.realloc(q, layout(8192), 20_000);
                for i in 0..100 {
                    assert_eq!(*r.add(i), i as u8);
                }
                // The block it left is kept.
                assert_eq!(kept(), 1);
                a.dealloc(r, layout(20_000));
            }
        });
    }
}
