//! A counting allocator, so targets can assert that what a decoder holds at once stays
//! proportional to its input: a length prefix or count read from hostile bytes must not
//! make it reserve memory the input cannot fill.
//!
//! The fuzz targets and the corpus test install [`Counting`] as their global allocator;
//! without it [`bounded`] only runs the closure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Bytes any decoder may hold at once beyond [`PER_INPUT_BYTE`] per input byte (its
/// fixed structures, error texts).
pub const SLACK: usize = 64 * 1024;
/// Bytes a decoder may hold at once per byte of input (JSON values, vectors that grew
/// by doubling, a copy or two of the input).
pub const PER_INPUT_BYTE: usize = 64;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting live bytes and their peak.
pub struct Counting;

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is System's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new
    }
}

/// The default bound for a decoder given `input` bytes.
pub fn limit(input: usize) -> usize {
    input.saturating_mul(PER_INPUT_BYTE).saturating_add(SLACK)
}

/// Runs `f` and, when [`Counting`] is the global allocator, asserts that the bytes it
/// held at once (above what was live before) stayed within `limit`.
pub fn bounded<T>(what: &str, limit: usize, f: impl FnOnce() -> T) -> T {
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let out = f();
    let held = PEAK.load(Ordering::Relaxed).saturating_sub(start);
    if INSTALLED.load(Ordering::Relaxed) {
        assert!(
            held <= limit,
            "{what} held {held} bytes at once, over its bound of {limit}"
        );
    }
    out
}
