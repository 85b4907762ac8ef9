//! The links table's own jemalloc arena, whose memory is mapped with `MADV_HUGEPAGE`.
//!
//! A redirect reads one link at random out of tens or hundreds of megabytes of them: on 4 KiB
//! pages that read misses the TLB as well as the cache (in `perf`, most of the handler's wait
//! after the slot array moved to huge pages). Collapsing the links onto huge pages after load
//! made requests wait for the copy (README), and huge pages for the whole heap raised p99.
//! So the parser threads allocate in one of two arenas of its own ([`Arena::scope`]): everything a table holds is
//! faulted in on 2 MiB pages by the thread that builds it, and nothing moves while it serves.
//!
//! The hooks map fresh 2 MiB-aligned memory, never unmap it (jemalloc keeps it for the next
//! table, as it does its own), and give freed memory back to the kernel when jemalloc
//! purges, so RSS falls after a reload as it did before.
//!
//! Only allocations through jemalloc land here: in the binary, all of them; under the test
//! harness's system allocator, none, and [`Arena::scope`] changes nothing.

use std::ffi::{c_uint, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tikv_jemalloc_sys::{extent_hooks_t, mallctl};

const HUGE: usize = 2 << 20;

static HOOKS: extent_hooks_t = extent_hooks_t {
    alloc: Some(alloc),
    // No dalloc: jemalloc then keeps the address range (as it does with its own, `retain`).
    dalloc: None,
    destroy: Some(destroy),
    commit: Some(always_committed),
    // No decommit: jemalloc falls back to `purge_forced`.
    decommit: None,
    purge_lazy: None,
    purge_forced: Some(purge),
    split: Some(split),
    merge: Some(merge),
};

/// One of the two arenas tables are built in. A new table goes in the one the serving table
/// is not in, so when that table is freed after the swap its arena holds nothing else: its
/// memory comes free in long runs, and goes back to the kernel in whole huge pages. (In one
/// shared arena, the next table's links filled the first one's holes and kept 15-45% of
/// its memory resident after the reload.)
#[derive(Debug, Clone, Copy)]
pub struct Arena(usize);

/// Tables alive in each arena.
static LIVE: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// A finished table's place in its arena, given up when the table drops.
#[derive(Debug, Default)]
pub struct Hold(Option<usize>);

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            if LIVE[i].fetch_sub(1, Ordering::Relaxed) == 1 {
                purge_arena(i);
            }
        }
    }
}

/// Gives an arena's free memory back to the kernel at once. jemalloc purges by decay only
/// when the arena is used, and nothing allocates in an arena whose last table is gone, so
/// without this its memory stayed resident until the next reload (seen: +17 MiB 30 s after a
/// reload under requests).
fn purge_arena(i: usize) -> bool {
    let Some(arena) = arenas()[i] else { return false };
    // This thread's cache holds what it just freed of the table's; back to the arena first.
    flush_thread_cache();
    std::ffi::CString::new(format!("arena.{arena}.purge")).is_ok_and(|name| control(&name))
}

impl Arena {
    /// The arena with fewer tables alive.
    pub fn for_new_table() -> Arena {
        Arena(usize::from(
            LIVE[1].load(Ordering::Relaxed) < LIVE[0].load(Ordering::Relaxed),
        ))
    }

    /// Counts a table as living here (from the start of its load) until the returned value
    /// drops; the last one to go purges the arena.
    pub fn hold(self) -> Hold {
        LIVE[self.0].fetch_add(1, Ordering::Relaxed);
        Hold(Some(self.0))
    }

    /// Runs `f` with this thread's allocations in this arena (where jemalloc made it).
    pub fn scope<R>(self, f: impl FnOnce() -> R) -> R {
        let Some(arena) = arenas()[self.0] else { return f() };
        let Some(before) = set_thread_arena(arena) else {
            return f();
        };
        // The thread's cache holds memory of its old arena; emptied so this one serves, and
        // again after, so the thread's later allocations don't come from here.
        flush_thread_cache();
        struct Restore(c_uint);
        impl Drop for Restore {
            fn drop(&mut self) {
                set_thread_arena(self.0);
                flush_thread_cache();
            }
        }
        let _restore = Restore(before);
        f()
    }
}

/// The two arenas' indices, created on first use; `None` where jemalloc refused.
fn arenas() -> [Option<c_uint>; 2] {
    static ARENAS: OnceLock<[Option<c_uint>; 2]> = OnceLock::new();
    *ARENAS.get_or_init(|| [create(), create()])
}

fn create() -> Option<c_uint> {
    // SAFETY: "arenas.create" reads an `extent_hooks_t *` and writes an `unsigned`; the hooks
    // are a static, so they outlive the arena as jemalloc requires.
    unsafe { read_write(c"arenas.create", (&raw const HOOKS).cast_mut()) }
}

/// Sets this thread's arena; returns the one it had.
fn set_thread_arena(arena: c_uint) -> Option<c_uint> {
    // SAFETY: "thread.arena" reads and writes an `unsigned`.
    unsafe { read_write(c"thread.arena", arena) }
}

/// Runs mallctl `name`, writing `new` and reading back its answer; `None` if jemalloc refused.
///
/// # Safety
/// `name` must be one that reads a `U` and writes a `T`.
unsafe fn read_write<T: Default, U>(name: &CStr, mut new: U) -> Option<T> {
    let mut out = T::default();
    let mut len = std::mem::size_of::<T>();
    // SAFETY: both pointers are valid for their sizes; the caller vouches for the types.
    let rc = unsafe {
        mallctl(
            name.as_ptr(),
            (&raw mut out).cast(),
            &mut len,
            (&raw mut new).cast(),
            std::mem::size_of::<U>(),
        )
    };
    (rc == 0).then_some(out)
}

fn flush_thread_cache() {
    control(c"thread.tcache.flush");
}

/// Runs a mallctl that takes and gives nothing; false if jemalloc refused it.
fn control(name: &CStr) -> bool {
    // SAFETY: no arguments are read or written.
    unsafe {
        mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        ) == 0
    }
}

unsafe extern "C" fn alloc(
    _: *mut extent_hooks_t,
    new_addr: *mut c_void,
    size: usize,
    alignment: usize,
    zero: *mut bool,
    commit: *mut bool,
    _: c_uint,
) -> *mut c_void {
    // Growing in place at a given address: not offered (jemalloc then allocates elsewhere).
    if !new_addr.is_null() || size == 0 {
        return std::ptr::null_mut();
    }
    let align = alignment.max(HUGE);
    let Some(span) = size.checked_add(align) else {
        return std::ptr::null_mut();
    };
    use rustix::mm::{madvise, mmap_anonymous, munmap, Advice, MapFlags, ProtFlags};
    // SAFETY: a fresh private mapping; the parts outside the aligned range are unmapped here,
    // the rest belongs to jemalloc from now on.
    unsafe {
        let Ok(base) = mmap_anonymous(
            std::ptr::null_mut(),
            span,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        ) else {
            return std::ptr::null_mut();
        };
        let start = (base as usize).next_multiple_of(align);
        let lead = start - base as usize;
        if lead > 0 {
            let _ = munmap(base, lead);
        }
        let tail = span - lead - size;
        if tail > 0 {
            let _ = munmap((start + size) as *mut c_void, tail);
        }
        // Refused where transparent huge pages are off: the memory then works on small pages.
        let _ = madvise(start as *mut c_void, size, Advice::LinuxHugepage);
        *zero = true;
        *commit = true;
        start as *mut c_void
    }
}

unsafe extern "C" fn destroy(_: *mut extent_hooks_t, addr: *mut c_void, size: usize, _: bool, _: c_uint) {
    // SAFETY: jemalloc hands back a range it got from `alloc` and no longer uses.
    let _ = unsafe { rustix::mm::munmap(addr, size) };
}

unsafe extern "C" fn always_committed(
    _: *mut extent_hooks_t,
    _: *mut c_void,
    _: usize,
    _: usize,
    _: usize,
    _: c_uint,
) -> bool {
    false
}

/// Gives the range back to the kernel; it reads as zeros after. A range that covers part of
/// a huge page splits it, which the two arenas keep rare: a dead table's memory comes free
/// in long runs.
unsafe extern "C" fn purge(
    _: *mut extent_hooks_t,
    addr: *mut c_void,
    _: usize,
    offset: usize,
    length: usize,
    _: c_uint,
) -> bool {
    // SAFETY: jemalloc purges only memory it owns and has freed.
    let done = unsafe {
        rustix::mm::madvise(
            addr.cast::<u8>().add(offset).cast(),
            length,
            rustix::mm::Advice::LinuxDontNeed,
        )
    };
    done.is_err()
}

unsafe extern "C" fn split(
    _: *mut extent_hooks_t,
    _: *mut c_void,
    _: usize,
    _: usize,
    _: usize,
    _: bool,
    _: c_uint,
) -> bool {
    // Ranges are only address ranges here (nothing is unmapped per extent): any split works.
    false
}

unsafe extern "C" fn merge(
    _: *mut extent_hooks_t,
    _: *mut c_void,
    _: usize,
    _: *mut c_void,
    _: usize,
    _: bool,
    _: c_uint,
) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout};
    use tikv_jemallocator::Jemalloc;

    fn arena_of(p: *mut u8) -> c_uint {
        // SAFETY: "arenas.lookup" reads a pointer and writes an `unsigned`.
        unsafe { read_write(c"arenas.lookup", p.cast::<c_void>()) }.expect("a jemalloc pointer")
    }

    use super::super::smaps::{kb_at as smaps_kb, thp_on};

    // One test: the arena is the process's, and these figures read its mappings.
    #[test]
    fn allocations_in_scope_come_from_huge_pages_and_are_given_back_when_purged() {
        let place = Arena(1);
        let arena = arenas()[1].expect("jemalloc makes the arenas");
        assert_ne!(arenas()[0], Some(arena));
        let small = Layout::from_size_align(64, 8).unwrap();
        let big = Layout::from_size_align(48 << 20, 8).unwrap();
        // SAFETY: allocated with non-zero sizes and freed once with the same layouts.
        unsafe {
            let (inside, block) = place.scope(|| (Jemalloc.alloc(small), Jemalloc.alloc(big)));
            let outside = Jemalloc.alloc(small);
            assert!(!inside.is_null() && !block.is_null() && !outside.is_null());
            assert_eq!(arena_of(inside), arena);
            assert_eq!(arena_of(block), arena);
            assert_ne!(arena_of(outside), arena, "the thread's arena is back after the scope");

            block.write_bytes(1, big.size());
            let huge = smaps_kb(block as usize, "AnonHugePages:");
            if thp_on() {
                assert!(huge.is_some_and(|kb| kb >= 40 << 10), "AnonHugePages {huge:?} kB");
            }
            let resident = smaps_kb(block as usize, "Rss:").unwrap();
            assert!(resident >= 48 << 10, "Rss {resident} kB");

            Jemalloc.dealloc(block, big);
            assert!(purge_arena(1));
            let after = smaps_kb(block as usize, "Rss:").unwrap_or(0);
            assert!(
                after + (40 << 10) <= resident,
                "Rss {resident} kB before the purge, {after} after"
            );

            // Memory given back is handed out again, zeroed where jemalloc is asked for zeros.
            let again = place.scope(|| Jemalloc.alloc_zeroed(big));
            assert_eq!(arena_of(again), arena);
            assert!(std::slice::from_raw_parts(again, big.size()).iter().all(|&b| b == 0));
            Jemalloc.dealloc(again, big);
            Jemalloc.dealloc(inside, small);
            Jemalloc.dealloc(outside, small);
        }
    }
}
