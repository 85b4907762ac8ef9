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

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

pub struct Syncer {
    tx: mpsc::Sender<File>,
    pending: Arc<AtomicUsize>,
}

impl Syncer {
    pub fn new(what: &'static str, drop_cache: bool) -> Syncer {
        let (tx, rx) = mpsc::channel::<File>();
        let pending = Arc::new(AtomicUsize::new(0));
        let p = pending.clone();
        // If the thread cannot start, requests fall back to syncing in the caller (below).
        let _ = std::thread::Builder::new()
            .name(format!("cartlink-sync-{what}"))
            .spawn(move || {
                for f in rx {
                    match f.sync_data() {
                        Ok(()) if drop_cache => {
                            // Pages written after the sync are dirty and stay; the next sync
                            // drops them.
                            let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
                        }
                        Ok(()) => {}
                        Err(e) => tracing::warn!(file = what, error = %e, "fdatasync failed"),
                    }
                    p.fetch_sub(1, Ordering::Relaxed);
                }
            });
        Syncer { tx, pending }
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
        self.pending.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::SendError(dup)) = self.tx.send(dup) {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            let _ = dup.sync_data();
        }
    }
}
