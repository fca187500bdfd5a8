//! The agent's allocator: glibc's, with per-thread free lists on the check threads.
//!
//! An HTTP check on hyper makes 15 allocations and frees them when it ends: three blocks of
//! 4-8 KB (its connection's read and write buffers and the block of the channel that carries
//! its request to the connection), two tokio tasks aligned to 128 bytes, and ten small ones
//! (24 to 888 bytes). glibc's per-thread cache (tcache) keeps 7 chunks of each size up to 1 KB,
//! none above and none aligned. At saturation, 10,000 checks in flight swing by thousands from
//! one moment to the next, so most frees overflow it into glibc's bins, where each `malloc` of a
//! large size first consolidates the small chunks freed since the last one, each `free` merges
//! the chunk with its neighbours, touching their headers in cold memory, and each aligned
//! `malloc` splits a larger chunk and frees its ends. glibc's allocator took a quarter of the
//! agent's user CPU per HTTP check there. Here a check thread keeps the chunks its checks free,
//! in one list per size class, up to [`kept_at_most`] each and [`KEPT_BYTES`] in all, and hands
//! them to the next checks: last freed, first reused, so often still in the cache.
//!
//! Every chunk is glibc's: the lists only hold them, linked through their first word as glibc's
//! own tcache links them. Each request with a class is allocated with its class's size, so that
//! any kept chunk fits any request of its class:
//! - up to 1 KB, the size glibc gives it anyway (24, 40, 56... bytes: its chunks are multiples
//!   of 16, one word of which is its own);
//! - up to 1 KB aligned to more than 16 bytes (tokio's tasks), the next 128 bytes, aligned to
//!   128;
//! - from 4 KB + 1 to 8 KB, a whole 8 KB block.
//!
//! The rounding is done on every thread, whether it keeps chunks or not: a chunk allocated on
//! one thread and freed on a check thread must be as large as its class. Only the threads that
//! opt in ([`keep_freed_chunks_on_this_thread`]: the check threads, which live as long as the
//! process) keep chunks: a thread that ends leaves its lists behind, and the runtime's blocking
//! threads come and go. Each check thread gives back every 10 s, just before the agent's
//! `malloc_trim`, the chunks it kept but did not use ([`give_back_idle_chunks`]), so that glibc
//! can return their pages to the kernel in the same turn.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The step between the small classes' sizes: glibc's chunk sizes on x86-64 and aarch64.
const STEP: usize = 16;
/// The smallest class's size: what glibc's smallest chunk (32 bytes) holds.
const SMALLEST: usize = 24;
/// The largest small class's size: glibc's tcache's largest.
const SMALL_LARGEST: usize = 1032;
/// The alignment glibc's `malloc` gives.
const ALIGN: usize = 16;
/// The alignment of tokio's tasks (a cache line pair on x86-64), which glibc serves through
/// `posix_memalign`: without a cache, and splitting and freeing the chunk's ends at each one.
const TASK_ALIGN: usize = 128;
/// The largest request of an aligned class: tokio's tasks are 256 and 512 bytes.
const ALIGNED_LARGEST: usize = 1024;
/// The size of every block.
const BLOCK: usize = 8192;
/// The smallest request served with a block; smaller ones waste less with glibc's own sizes.
const SMALLEST_BLOCK_REQUEST: usize = 4096 + 1;

/// The classes: one per step up to [`SMALL_LARGEST`], one per [`TASK_ALIGN`] bytes up to
/// [`ALIGNED_LARGEST`] for alignments up to [`TASK_ALIGN`], and the 8 KB blocks.
const SMALL_CLASSES: usize = (SMALL_LARGEST - SMALLEST) / STEP + 1;
const FIRST_ALIGNED_CLASS: usize = SMALL_CLASSES;
const BLOCK_CLASS: usize = FIRST_ALIGNED_CLASS + ALIGNED_LARGEST / TASK_ALIGN;
const CLASSES: usize = BLOCK_CLASS + 1;

/// Blocks a thread keeps at most. At HTTP saturation the checks in flight swing by thousands
/// from one moment to the next: 64 blocks served 17% of the block requests, 1,024 about two
/// thirds.
const KEPT_BLOCKS: usize = 1024;
/// Chunks a thread keeps at most in one small or aligned class. Chunks also flow between
/// threads (a command from the agent's runtime, freed by the check; an event the other way), so
/// a list can fill with chunks that another thread's arena then allocates again: its cap is
/// what the agent may hold that way, at most 512 * 1 KB per class.
const KEPT_SMALL: usize = 512;
/// Bytes a thread keeps at most in all classes.
const KEPT_BYTES: usize = 12 << 20;

/// The most chunks `class` keeps.
fn kept_at_most(class: usize) -> usize {
    if class == BLOCK_CLASS {
        KEPT_BLOCKS
    } else {
        KEPT_SMALL
    }
}

/// One size class's freed chunks, the last freed at the head.
struct FreeList {
    head: Cell<*mut u8>,
    len: Cell<usize>,
    /// The shortest the list has been since the last [`give_back_idle_chunks`]: that many
    /// chunks, at its tail, were not used since.
    low: Cell<usize>,
}

impl FreeList {
    const fn empty() -> FreeList {
        FreeList {
            head: Cell::new(std::ptr::null_mut()),
            len: Cell::new(0),
            low: Cell::new(0),
        }
    }
}

struct Kept {
    on: Cell<bool>,
    bytes: Cell<usize>,
    lists: [FreeList; CLASSES],
}

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates, which an
    // allocator's thread-local must not.
    static KEPT_CHUNKS: Kept = const {
        Kept {
            on: Cell::new(false),
            bytes: Cell::new(0),
            lists: [const { FreeList::empty() }; CLASSES],
        }
    };
}

/// This thread keeps the chunks it frees, until the process exits. For threads that live as
/// long as the process: the chunks of a thread that ends are never freed.
pub fn keep_freed_chunks_on_this_thread() {
    KEPT_CHUNKS.with(|k| k.on.set(true));
}

/// The class that serves `layout`, if one does.
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if layout.align() <= ALIGN {
        if size <= SMALL_LARGEST {
            Some(size.saturating_sub(SMALLEST).div_ceil(STEP))
        } else if (SMALLEST_BLOCK_REQUEST..=BLOCK).contains(&size) {
            Some(BLOCK_CLASS)
        } else {
            None
        }
    } else if layout.align() <= TASK_ALIGN && size <= ALIGNED_LARGEST {
        Some(FIRST_ALIGNED_CLASS + size.max(1).div_ceil(TASK_ALIGN) - 1)
    } else {
        None
    }
}

/// The layout every chunk of `class` is allocated with.
fn class_layout(class: usize) -> Layout {
    let (size, align) = if class == BLOCK_CLASS {
        (BLOCK, ALIGN)
    } else if class >= FIRST_ALIGNED_CLASS {
        ((class - FIRST_ALIGNED_CLASS + 1) * TASK_ALIGN, TASK_ALIGN)
    } else {
        (SMALLEST + class * STEP, ALIGN)
    };
    // SAFETY: a class's size is non-zero and its alignment a power of two.
    unsafe { Layout::from_size_align_unchecked(size, align) }
}

fn class_size(class: usize) -> usize {
    class_layout(class).size()
}

/// The link to the next chunk, in a kept chunk's first word.
///
/// # Safety
/// `chunk` is a kept chunk: glibc's, at least 24 bytes, and owned by this thread's list.
unsafe fn next_of(chunk: *mut u8) -> *mut *mut u8 {
    chunk.cast::<*mut u8>()
}

/// Gives back to glibc the chunks this thread kept but did not use since the last call, the
/// oldest first, and returns how many. A burst of checks (a restart storm: every check at once)
/// fills the lists, and what they hold neither glibc's `malloc_trim` nor anything else can
/// return to the kernel; called every few seconds, the lists hold only what the checks use.
pub fn give_back_idle_chunks() -> usize {
    KEPT_CHUNKS
        .try_with(|k| {
            let mut given_back = 0;
            for (class, list) in k.lists.iter().enumerate() {
                let len = list.len.get();
                let idle = list.low.get().min(len);
                if idle > 0 {
                    let used = len - idle;
                    // SAFETY: every chunk in the list is kept, and glibc's `free` does not
                    // come back here.
                    unsafe {
                        let mut link: *mut *mut u8 = list.head.as_ptr();
                        for _ in 0..used {
                            link = next_of(*link);
                        }
                        let mut chunk = *link;
                        *link = std::ptr::null_mut();
                        while !chunk.is_null() {
                            let next = *next_of(chunk);
                            System.dealloc(chunk, class_layout(class));
                            chunk = next;
                        }
                    }
                    list.len.set(used);
                    k.bytes.set(k.bytes.get() - idle * class_size(class));
                    given_back += idle;
                }
                list.low.set(list.len.get());
            }
            given_back
        })
        .unwrap_or(0)
}

fn take_chunk(class: usize) -> Option<*mut u8> {
    KEPT_CHUNKS
        .try_with(|k| {
            let list = &k.lists[class];
            let len = list.len.get();
            if len == 0 {
                return None;
            }
            let chunk = list.head.get();
            // SAFETY: the head of a non-empty list is a kept chunk.
            list.head.set(unsafe { *next_of(chunk) });
            list.len.set(len - 1);
            list.low.set(list.low.get().min(len - 1));
            k.bytes.set(k.bytes.get() - class_size(class));
            Some(chunk)
        })
        .ok()
        .flatten()
}

/// Keeps `chunk`, or says no when this thread does not keep chunks or has enough.
fn keep_chunk(chunk: *mut u8, class: usize) -> bool {
    KEPT_CHUNKS
        .try_with(|k| {
            let list = &k.lists[class];
            let bytes = k.bytes.get() + class_size(class);
            if !k.on.get() || list.len.get() == kept_at_most(class) || bytes > KEPT_BYTES {
                return false;
            }
            // SAFETY: `chunk` was allocated for this class, so it holds a link; it is freed,
            // so this list owns it now.
            unsafe { *next_of(chunk) = list.head.get() };
            list.head.set(chunk);
            list.len.set(list.len.get() + 1);
            k.bytes.set(bytes);
            true
        })
        .unwrap_or(false)
}

/// glibc's allocator with per-class lists of freed chunks on the threads that opted in (see
/// the module).
pub struct CheckThreadAllocator;

// SAFETY: every pointer handed out is glibc's, allocated with at least its class's size when
// its layout has a class, and given back to glibc's `free`.
unsafe impl GlobalAlloc for CheckThreadAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => take_chunk(class).unwrap_or_else(|| System.alloc(class_layout(class))),
            None => System.alloc(layout),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => match take_chunk(class) {
                Some(chunk) => {
                    chunk.write_bytes(0, layout.size());
                    chunk
                }
                None => System.alloc_zeroed(class_layout(class)),
            },
            None => System.alloc_zeroed(layout),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(layout) {
            Some(class) => {
                if !keep_chunk(ptr, class) {
                    System.dealloc(ptr, class_layout(class));
                }
            }
            None => System.dealloc(ptr, layout),
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let new_class = class_of(new_layout);
        if new_class.is_some() && new_class == class_of(layout) {
            // The chunk it has holds the new size too.
            return ptr;
        }
        if layout.align() <= ALIGN {
            // glibc's realloc, to at least the new class's size: `System` calls `realloc` for
            // these alignments, and glibc's `free` takes its result whatever size was asked.
            return System.realloc(ptr, layout, new_class.map_or(new_size, class_size));
        }
        // An over-aligned chunk: `System` would move it with the request's alignment, which
        // may be less than its new class's.
        let moved = self.alloc(new_layout);
        if !moved.is_null() {
            std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 1).unwrap()
    }

    /// Runs `test` on a thread of its own: its lists start empty.
    fn on_a_fresh_thread(test: impl FnOnce() + Send + 'static) {
        std::thread::spawn(test).join().unwrap();
    }

    /// How many chunks this thread keeps for requests of `size`.
    fn kept(size: usize) -> usize {
        let class = class_of(layout(size)).unwrap();
        KEPT_CHUNKS.with(|k| k.lists[class].len.get())
    }

    /// Allocates `n` chunks of `size`, then frees them all, in order.
    unsafe fn allocate_then_free(a: &CheckThreadAllocator, size: usize, n: usize) -> Vec<*mut u8> {
        let chunks: Vec<*mut u8> = (0..n).map(|_| a.alloc(layout(size))).collect();
        for &c in &chunks {
            a.dealloc(c, layout(size));
        }
        chunks
    }

    #[test]
    fn the_classes_are_the_sizes_glibc_gives_and_the_blocks() {
        let sizes: Vec<Option<usize>> =
            [1, 24, 25, 40, 41, 208, 1032, 1033, 4096, 4097, 8192, 8193]
                .into_iter()
                .map(|size| class_of(layout(size)).map(class_size))
                .collect();
        let expected = [
            Some(24),
            Some(24),
            Some(40),
            Some(40),
            Some(56),
            Some(216),
            Some(1032),
            None,
            None,
            Some(8192),
            Some(8192),
            None,
        ];
        assert_eq!(sizes, expected);
        // Aligned requests up to 1 KB: 128-byte steps, aligned to 128; larger ones are glibc's.
        let aligned: Vec<Option<(usize, usize)>> = [
            (64, 64),
            (256, 128),
            (300, 128),
            (1024, 32),
            (1025, 128),
            (64, 256),
        ]
        .into_iter()
        .map(|(size, align)| {
            let class = class_of(Layout::from_size_align(size, align).unwrap());
            class.map(|c| (class_layout(c).size(), class_layout(c).align()))
        })
        .collect();
        let expected = [
            Some((128, 128)),
            Some((256, 128)),
            Some((384, 128)),
            Some((1024, 128)),
            None,
            None,
        ];
        assert_eq!(aligned, expected);
    }

    #[test]
    fn a_thread_that_keeps_chunks_hands_the_last_freed_to_the_next_request_of_its_class() {
        on_a_fresh_thread(|| {
            let a = CheckThreadAllocator;
            keep_freed_chunks_on_this_thread();
            unsafe {
                let first = a.alloc(layout(8192));
                a.dealloc(first, layout(8192));
                // Another size in the blocks' range gets the same block.
                let second = a.alloc(layout(7968));
                assert_eq!(first, second);
                // Written to its whole block: the block is 8 KB, whatever was asked.
                second.write_bytes(0xa5, BLOCK);
                a.dealloc(second, layout(7968));
                // Sizes outside every class are glibc's alone.
                let unclassed = a.alloc(layout(4096));
                assert_ne!(unclassed, first);
                a.dealloc(unclassed, layout(4096));
                let zeroed = a.alloc_zeroed(layout(5000));
                assert_eq!(zeroed, first);
                assert!(std::slice::from_raw_parts(zeroed, 5000)
                    .iter()
                    .all(|&b| b == 0));
                a.dealloc(zeroed, layout(5000));

                // A small class: 185 to 200 bytes.
                let small = a.alloc(layout(190));
                a.dealloc(small, layout(190));
                let larger = a.alloc(layout(201));
                assert_ne!(larger, small);
                let same = a.alloc(layout(200));
                assert_eq!(same, small);
                same.write_bytes(0x5a, 200);
                a.dealloc(same, layout(200));
                a.dealloc(larger, layout(201));
                assert_eq!(kept(200), 1);
                assert_eq!(kept(201), 1);

                // An aligned class: a task of 256 bytes, then one of 200 aligned to 64.
                let task = Layout::from_size_align(256, 128).unwrap();
                let first = a.alloc(task);
                assert_eq!(first as usize % 128, 0);
                a.dealloc(first, task);
                let smaller = Layout::from_size_align(200, 64).unwrap();
                assert_eq!(a.alloc(smaller), first);
                // Grown out of its class, it stays aligned to its new class's 128.
                let grown = a.realloc(first, smaller, 300);
                assert_eq!(grown as usize % 128, 0);
                a.dealloc(grown, Layout::from_size_align(300, 64).unwrap());
                let largest = Layout::from_size_align(384, 128).unwrap();
                assert_eq!(a.alloc(largest), grown);
                a.dealloc(grown, largest);
            }
        });
    }

    #[test]
    fn a_thread_keeps_at_most_its_caps_and_others_keep_none() {
        on_a_fresh_thread(|| {
            let a = CheckThreadAllocator;
            unsafe {
                // Not opted in: nothing kept.
                allocate_then_free(&a, 8192, 3);
                allocate_then_free(&a, 100, 3);
                assert_eq!((kept(8192), kept(100)), (0, 0));
                keep_freed_chunks_on_this_thread();
                let chunks = allocate_then_free(&a, 100, KEPT_SMALL + 10);
                assert_eq!(kept(100), KEPT_SMALL);
                // Last freed, first reused.
                assert_eq!(a.alloc(layout(100)), chunks[KEPT_SMALL - 1]);
                allocate_then_free(&a, 8192, KEPT_BLOCKS + 10);
                assert_eq!(kept(8192), KEPT_BLOCKS);
                // The largest small classes fill the bytes' cap before their own.
                let sizes: Vec<usize> = (0..10).map(|i| 1032 - 16 * i).collect();
                for &size in &sizes {
                    allocate_then_free(&a, size, KEPT_SMALL);
                }
                let bytes = KEPT_CHUNKS.with(|k| k.bytes.get());
                assert!(bytes <= KEPT_BYTES && bytes > KEPT_BYTES - 1032, "{bytes}");
                assert_eq!(kept(sizes[0]), KEPT_SMALL);
                assert!(kept(sizes[9]) < KEPT_SMALL);
            }
        });
    }

    #[test]
    fn chunks_unused_since_the_last_give_back_go_back_to_glibc() {
        on_a_fresh_thread(|| {
            let a = CheckThreadAllocator;
            keep_freed_chunks_on_this_thread();
            unsafe {
                for size in [8192, 48] {
                    allocate_then_free(&a, size, 10);
                }
                // The twenty were just freed: none has sat unused for a whole period yet.
                assert_eq!(give_back_idle_chunks(), 0);
                // Of each size, three taken, two given back: the oldest seven were not used.
                let mut taken = Vec::new();
                for size in [8192, 48] {
                    let three: Vec<*mut u8> = (0..3).map(|_| a.alloc(layout(size))).collect();
                    a.dealloc(three[0], layout(size));
                    a.dealloc(three[1], layout(size));
                    taken.push((size, three));
                }
                assert_eq!(give_back_idle_chunks(), 14);
                assert_eq!((kept(8192), kept(48)), (2, 2));
                let bytes = KEPT_CHUNKS.with(|k| k.bytes.get());
                assert_eq!(bytes, 2 * 8192 + 2 * 56);
                // The two kept are the two freed last.
                for (size, three) in &taken {
                    assert_eq!(a.alloc(layout(*size)), three[1]);
                    assert_eq!(a.alloc(layout(*size)), three[0]);
                    for &c in three {
                        a.dealloc(c, layout(*size));
                    }
                }
                // Used in this period, then freed: kept at the next give-back. Then idle.
                assert_eq!(give_back_idle_chunks(), 0);
                assert_eq!(give_back_idle_chunks(), 6);
                assert_eq!((kept(8192), kept(48)), (0, 0));
            }
        });
    }

    #[test]
    fn reallocation_keeps_the_contents_and_stays_within_its_class() {
        on_a_fresh_thread(|| {
            let a = CheckThreadAllocator;
            keep_freed_chunks_on_this_thread();
            unsafe {
                let p = a.alloc(layout(30));
                for i in 0..30 {
                    *p.add(i) = i as u8;
                }
                // 30 and 40 bytes are one class: not moved.
                assert_eq!(a.realloc(p, layout(30), 40), p);
                let p = a.realloc(p, layout(40), 100);
                let p = a.realloc(p, layout(100), 6000);
                let q = a.realloc(p, layout(6000), 8192);
                // Within the block: not moved.
                assert_eq!(p, q);
                let r = a.realloc(q, layout(8192), 20_000);
                for i in 0..30 {
                    assert_eq!(*r.add(i), i as u8);
                }
                let s = a.realloc(r, layout(20_000), 500);
                for i in 0..30 {
                    assert_eq!(*s.add(i), i as u8);
                }
                // A chunk that glibc's realloc made holds its class: kept, then reused.
                a.dealloc(s, layout(500));
                assert_eq!(kept(500), 1);
                assert_eq!(a.alloc(layout(504)), s);
                a.dealloc(s, layout(504));
            }
        });
    }
}
