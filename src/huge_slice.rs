//! A fixed-length slice in a mapping of its own, on 2 MiB pages where the kernel allows
//! (`madvise(MADV_HUGEPAGE)`), for the arrays the redirect path reads at random: a read that
//! lands anywhere in megabytes costs a cache miss, and on 4 KiB pages a TLB miss as well (a
//! two-level page walk in a VM). Only such arrays: huge pages for the whole heap raised p99
//! (README).

use std::ptr::NonNull;

pub struct HugeSlice<T> {
    ptr: NonNull<T>,
    len: usize,
}

// Owned like a `Box<[T]>`.
unsafe impl<T: Send> Send for HugeSlice<T> {}
unsafe impl<T: Sync> Sync for HugeSlice<T> {}

impl<T: Default> HugeSlice<T> {
    /// `len` default values. Writing them faults every page in now, not on a request.
    pub fn new(len: usize) -> HugeSlice<T> {
        let bytes = len * std::mem::size_of::<T>();
        if bytes == 0 {
            return HugeSlice::default();
        }
        assert!(std::mem::align_of::<T>() <= 4096, "a mapping is page-aligned");
        let addr = map_aligned(bytes);
        let ptr = NonNull::new(addr.cast::<T>()).expect("mmap returned a mapping");
        for i in 0..len {
            // SAFETY: in bounds of the mapping, which is page-aligned and so aligned for `T`.
            unsafe { ptr.as_ptr().add(i).write(T::default()) };
        }
        HugeSlice { ptr, len }
    }
}

const HUGE: usize = 2 << 20;

/// Arrays this big are mapped in whole 2 MiB pages, on a 2 MiB boundary: the kernel backs
/// only the aligned 2 MiB blocks of a mapping with huge pages. Smaller ones stay as they are.
fn mapped_len(bytes: usize) -> usize {
    if bytes >= HUGE {
        bytes.next_multiple_of(HUGE)
    } else {
        bytes
    }
}

/// A fresh private mapping of [`mapped_len`]`(bytes)`, advised onto huge pages.
fn map_aligned(bytes: usize) -> *mut std::ffi::c_void {
    use rustix::mm::{madvise, mmap_anonymous, munmap, Advice, MapFlags, ProtFlags};
    let len = mapped_len(bytes);
    let slack = if len >= HUGE { HUGE } else { 0 };
    // SAFETY: a fresh private mapping; what is not kept is unmapped here, the rest is owned by
    // the caller and unmapped by its drop.
    unsafe {
        let addr = mmap_anonymous(
            std::ptr::null_mut(),
            len + slack,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
        .unwrap_or_else(|e| panic!("mapping {bytes} bytes: {e}"));
        let start = (addr as usize).next_multiple_of(slack.max(1));
        let head = start - addr as usize;
        if head > 0 {
            let _ = munmap(addr, head);
        }
        if slack - head > 0 {
            let _ = munmap((start + len) as *mut _, slack - head);
        }
        // Refused where transparent huge pages are off: the array then works on small pages.
        let _ = madvise(start as *mut _, len, Advice::LinuxHugepage);
        start as *mut _
    }
}

impl<T> Default for HugeSlice<T> {
    fn default() -> HugeSlice<T> {
        HugeSlice {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }
}

impl<T> std::ops::Deref for HugeSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` initialised values from `ptr` (dangling and empty when `len` is 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> std::ops::DerefMut for HugeSlice<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for HugeSlice<T> {
    fn drop(&mut self) {
        let bytes = self.len * std::mem::size_of::<T>();
        if bytes == 0 {
            return;
        }
        // SAFETY: the values are initialised and dropped once, then their mapping is unmapped.
        unsafe {
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len));
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), mapped_len(bytes));
        }
    }
}

impl<T> std::fmt::Debug for HugeSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HugeSlice").field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static LIVE: AtomicUsize = AtomicUsize::new(0);

    struct Counted(u64);
    impl Default for Counted {
        fn default() -> Counted {
            LIVE.fetch_add(1, Ordering::Relaxed);
            Counted(7)
        }
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn holds_defaults_and_drops_each_once() {
        let mut s = HugeSlice::<Counted>::new(300_000);
        assert_eq!(s.len(), 300_000);
        assert!(s.iter().all(|c| c.0 == 7));
        s[299_999].0 = 9;
        assert_eq!(s.iter().map(|c| c.0).sum::<u64>(), 7 * 299_999 + 9);
        assert_eq!(LIVE.load(Ordering::Relaxed), 300_000);
        drop(s);
        assert_eq!(LIVE.load(Ordering::Relaxed), 0);
        assert!(HugeSlice::<Counted>::new(0).is_empty());
        assert!(HugeSlice::<Counted>::default().is_empty());
    }

    #[test]
    fn big_arrays_start_on_a_huge_page_boundary() {
        for len in [1, 100, (HUGE - 1) / 8, HUGE / 8, 3 * HUGE / 8 + 5] {
            let s = HugeSlice::<u64>::new(len);
            assert_eq!(s.len(), len);
            assert!(s.iter().all(|&v| v == 0));
            let aligned = s.as_ptr() as usize % HUGE == 0;
            assert!(aligned || len * 8 < HUGE, "{len}");
        }
    }
}
