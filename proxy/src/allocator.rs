//! The gateway binary's global allocator. It lives with the binary, not the library, which
//! forbids `unsafe`: implementing `GlobalAlloc` is unsafe by definition.

/// mimalloc, entered through its plain `malloc` for the alignments every block has anyway.
///
/// The `mimalloc` crate's allocator passes every request to `mi_malloc_aligned`, and mimalloc
/// 3 serves an aligned request above 1 KiB whose size class is not a power of two (a TLS
/// record's 1.4 KB buffer, a 1.5 KB head) by over-allocating and aligning by hand: ~300
/// instructions instead of ~30, about 900 per request on HTTP/1.1 (`cargo xtask bench-cost`).
/// Every mimalloc block is at least word-aligned (size classes are whole words, pages start
/// 16-aligned, huge blocks page-aligned), so a request for at most 8 needs nothing more.
pub struct Mimalloc;

/// What every block `mi_malloc` returns is aligned to.
const WORD_ALIGNED: usize = std::mem::size_of::<usize>();

// SAFETY: each method forwards to the mimalloc function for the same operation, with the
// layout's alignment honoured either by every block (at most a word) or by the aligned entry
// point; `mi_free` frees blocks from both.
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_malloc, mi_malloc_aligned};
        // SAFETY: mimalloc takes any size; the alignment is a power of two (Layout's rule).
        unsafe {
            if layout.align() <= WORD_ALIGNED {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};
        // SAFETY: as for `alloc`.
        unsafe {
            if layout.align() <= WORD_ALIGNED {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract), so from mimalloc.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys::{mi_realloc, mi_realloc_aligned};
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract).
        unsafe {
            if layout.align() <= WORD_ALIGNED {
                mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::Mimalloc;

    /// Every size up to a few pages, at every alignment a Rust type asks for: the block is
    /// aligned, holds what was written, and keeps it through growing and shrinking.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let sizes = (1..=2048)
            .chain((2049..70_000).step_by(997))
            .chain([1 << 20, 3 << 20]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let layout = Layout::from_size_align(size, align).expect("valid layout");
                // SAFETY: a non-zero size; the block is used within its size and freed once.
                unsafe {
                    let p = if size % 2 == 0 {
                        Mimalloc.alloc(layout)
                    } else {
                        Mimalloc.alloc_zeroed(layout)
                    };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    if size % 2 == 1 {
                        assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                    }
                    let tail = size.min(64);
                    for i in 0..tail {
                        p.add(i).write(i as u8);
                    }
                    let grown = size * 2 + 100;
                    let q = Mimalloc.realloc(p, layout, grown);
                    assert_eq!(q as usize % align, 0, "grown: size {size} align {align}");
                    for i in 0..tail {
                        assert_eq!(q.add(i).read(), i as u8);
                    }
                    let shrunk = size.div_ceil(2);
                    let grown_layout = Layout::from_size_align(grown, align).expect("valid");
                    let r = Mimalloc.realloc(q, grown_layout, shrunk);
                    assert_eq!(r as usize % align, 0, "shrunk: size {size} align {align}");
                    for i in 0..tail.min(shrunk) {
                        assert_eq!(r.add(i).read(), i as u8);
                    }
                    Mimalloc.dealloc(r, Layout::from_size_align(shrunk, align).expect("valid"));
                }
            }
        }
    }
}
