//! Background `fdatasync`: a helper thread that syncs duplicated file handles, so a slow disk
//! (a sync of tens of MB can take hundreds of milliseconds) never stalls the pipeline thread,
//! which would let the in-memory queue fill and drop clicks. Writers call
//! [`Syncer::request`] when their fsync interval has passed; durability is then "synced within
//! the interval plus however long the disk takes", and shutdown paths sync in the foreground.
//!
//! With `drop_cache`, a synced file's clean pages are then dropped from the page cache
//! (`POSIX_FADV_DONTNEED` over the whole file). A click file is written once and read later, if
//! at all, by another program; kept cached it grows the page cache by the click rate (50 MB/s
//! at 140k clicks/s), and on a VM, where first touches of guest memory fault in the host, the
//! pipeline thread's copy into new pages grew from 3 % of a core to a third of it after a
//! minute. Dropped, the same few pages are reused.
//!
//! Writers with `drop_cache` also ask for [`Syncer::drop_range`] every [`DROP_STEP`] bytes: that
//! range is written back and dropped at once, so each sync leaves little to do. One sync and
//! drop of a whole second (50–90 MB) kept this thread on the CPU for 2 ms at a stretch, and on a
//! core shared with a redirect worker every request in flight waited that long.

use std::fs::File;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

/// How much a writer with `drop_cache` writes between two [`Syncer::drop_range`] requests.
pub const DROP_STEP: u64 = 1 << 20;

/// `offset` rounded down to a page boundary. Drops stop there: the kernel drops a partial last
/// page when the range reaches the end of the file, and the next append to that page then
/// reads it back from disk first (a synchronous read on the pipeline thread for every drop, ~45
/// a second at 140k clicks/s).
pub fn whole_pages(offset: u64) -> u64 {
    offset & !(rustix::param::page_size() as u64 - 1)
}

pub struct Syncer {
    tx: mpsc::Sender<Job>,
    pending: Arc<AtomicUsize>,
    drop_cache: bool,
}

enum Job {
    Sync(File),
    /// Write back bytes `start..end` and drop their pages from the page cache.
    Drop(File, u64, u64),
}

impl Syncer {
    pub fn new(what: &'static str, drop_cache: bool) -> Syncer {
        let (tx, rx) = mpsc::channel::<Job>();
        let pending = Arc::new(AtomicUsize::new(0));
        let p = pending.clone();
        // If the thread cannot start, requests fall back to syncing in the caller (below).
        let _ = std::thread::Builder::new()
            .name(format!("cartlink-sync-{what}"))
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Sync(f) => match f.sync_data() {
                            Ok(()) if drop_cache => {
                                // Pages written after the sync are dirty and stay; the next
                                // sync drops them.
                                if let Some(len) = f.metadata().ok().and_then(|m| NonZeroU64::new(whole_pages(m.len())))
                                {
                                    let _ = rustix::fs::fadvise(&f, 0, Some(len), rustix::fs::Advice::DontNeed);
                                }
                            }
                            Ok(()) => {}
                            Err(e) => tracing::warn!(file = what, error = %e, "fdatasync failed"),
                        },
                        Job::Drop(f, start, end) => write_back_and_drop(&f, start, end),
                    }
                    p.fetch_sub(1, Ordering::Relaxed);
                }
            });
        Syncer {
            tx,
            pending,
            drop_cache,
        }
    }

    /// Whether this syncer drops synced pages (and takes [`Syncer::drop_range`] requests).
    pub fn drops_cache(&self) -> bool {
        self.drop_cache
    }

    /// Syncs requested but not finished yet.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Queues an `fdatasync` of `file` (syncing in the caller if the helper is gone).
    pub fn request(&self, file: &File) {
        let Ok(dup) = file.try_clone() else {
            let _ = file.sync_data();
            return;
        };
        if let Err(mpsc::SendError(job)) = self.send(Job::Sync(dup)) {
            let (Job::Sync(dup) | Job::Drop(dup, ..)) = job;
            let _ = dup.sync_data();
        }
    }

    /// Queues the write-back and drop of bytes `start..end` of `file`. Not durability: the
    /// periodic [`Syncer::request`] still syncs the data and the file's size. Without the
    /// helper thread, nothing is done; the next sync drops the pages.
    pub fn drop_range(&self, file: &File, start: u64, end: u64) {
        if let Ok(dup) = file.try_clone() {
            let _ = self.send(Job::Drop(dup, start, end));
        }
    }

    fn send(&self, job: Job) -> Result<(), mpsc::SendError<Job>> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.send(job);
        if sent.is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }
}

fn write_back_and_drop(f: &File, start: u64, end: u64) {
    use std::os::fd::AsRawFd;
    let bytes = end.saturating_sub(start);
    let (Ok(off), Ok(len), Some(n)) = (i64::try_from(start), i64::try_from(bytes), NonZeroU64::new(bytes)) else {
        return;
    };
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a plain syscall on a descriptor this thread owns; no memory is passed.
    if unsafe { libc::sync_file_range(f.as_raw_fd(), off, len, flags) } == 0 {
        let _ = rustix::fs::fadvise(f, start, Some(n), rustix::fs::Advice::DontNeed);
    }
}
