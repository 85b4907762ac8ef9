//! The file sink: rotating JSON Lines files in one directory.
//!
//! Files are named `clicks-<UTC start>-<pid>-<seq>.jsonl` so names sort by time and two
//! processes never share a file. Each batch is appended with one write of its body (the
//! records already lie in one buffer, copied there from the workers' rings); a file is
//! rotated past `max_bytes` or `max_age`. Durability: data is `fdatasync`ed every
//! `fsync_every` (on a helper thread, [`super::syncer`], so a slow disk never stalls the
//! pipeline) and on rotation and shutdown, so a power loss of the machine loses at most that
//! window (plus the time the disk takes to sync); a `kill -9` of the process alone loses nothing that was
//! written. A reader should ignore a last line without its newline (a torn write).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::syncer::{whole_pages, Syncer, DROP_STEP};

pub struct FileSink {
    dir: PathBuf,
    max_bytes: u64,
    max_age: Duration,
    fsync_every: Duration,
    current: Option<Current>,
    seq: u64,
    syncer: Syncer,
}

struct Current {
    file: File,
    path: PathBuf,
    bytes: u64,
    /// With drop_cache: bytes below this were written back and dropped, or are being.
    dropped: u64,
    opened: Instant,
    synced: Instant,
    dirty: bool,
}

impl FileSink {
    /// `drop_cache`: the files' pages leave the page cache once synced, and every [`DROP_STEP`]
    /// bytes between syncs ([`Syncer`]).
    pub fn new(
        dir: &Path,
        max_bytes: u64,
        max_age: Duration,
        fsync_every: Duration,
        drop_cache: bool,
    ) -> std::io::Result<FileSink> {
        std::fs::create_dir_all(dir)?;
        Ok(FileSink {
            dir: dir.to_path_buf(),
            max_bytes,
            max_age,
            fsync_every,
            current: None,
            seq: 0,
            syncer: Syncer::new("file-sink", drop_cache),
        })
    }

    /// The file being written, if any.
    pub fn current_path(&self) -> Option<&Path> {
        self.current.as_ref().map(|c| c.path.as_path())
    }

    /// Appends `data`, all of it or an error.
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let rotate = self
            .current
            .as_ref()
            .is_some_and(|c| c.bytes >= self.max_bytes || c.opened.elapsed() >= self.max_age);
        if rotate {
            // The finished file's last writes are synced in the background.
            if let Some(cur) = self.current.take().filter(|c| c.dirty) {
                self.syncer.request(&cur.file);
            }
        }
        if self.current.is_none() {
            self.open()?;
        }
        let cur = self.current.as_mut().expect("opened above");
        if let Err(e) = cur.file.write_all(data) {
            // A partial write leaves a torn tail; start the next attempt in a fresh file so
            // the torn record is alone at the end of this one.
            self.current = None;
            return Err(e);
        }
        cur.bytes += data.len() as u64;
        cur.dirty = true;
        if self.syncer.pending() > 0 {
            // The disk is behind; the next request covers what this one would have.
        } else if cur.synced.elapsed() >= self.fsync_every {
            self.syncer.request(&cur.file);
            cur.synced = Instant::now();
            cur.dirty = false;
            cur.dropped = whole_pages(cur.bytes);
        } else if self.syncer.drops_cache() && cur.bytes - cur.dropped >= DROP_STEP {
            let end = whole_pages(cur.bytes);
            self.syncer.drop_range(&cur.file, cur.dropped, end);
            cur.dropped = end;
        }
        Ok(())
    }

    /// Syncs and closes the current file.
    pub fn close(&mut self) -> std::io::Result<()> {
        if let Some(cur) = self.current.take() {
            if cur.dirty {
                cur.file.sync_data()?;
            }
        }
        Ok(())
    }

    fn open(&mut self) -> std::io::Result<()> {
        self.seq += 1;
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_default();
        let path = self
            .dir
            .join(format!("clicks-{stamp}-{}-{:04}.jsonl", std::process::id(), self.seq));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let now = Instant::now();
        self.current = Some(Current {
            file,
            path,
            bytes: 0,
            dropped: 0,
            opened: now,
            synced: now,
            dirty: false,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_every_byte() {
        let dir = std::env::temp_dir().join(format!("cartlink-fs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sink = FileSink::new(&dir, 100, Duration::from_secs(3600), Duration::ZERO, true).unwrap();
        for i in 0..10 {
            sink.write(format!("{{\"n\":{i:043}}}\n").as_bytes()).unwrap();
        }
        sink.close().unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert_eq!(files.len(), 5, "two 50-byte lines fill a 100-byte file");
        let all: String = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
        assert_eq!(all.lines().count(), 10);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Pages of `path` in the page cache, and all its pages.
    fn resident(path: &Path) -> (usize, usize) {
        let pages = resident_pages(path);
        (pages.iter().filter(|p| **p).count(), pages.len())
    }

    /// Whether each page of `path` is in the page cache (`mincore` over a shared mapping).
    fn resident_pages(path: &Path) -> Vec<bool> {
        use std::os::fd::AsRawFd;
        let f = File::open(path).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        // SAFETY: a read-only mapping of a file this test alone writes, unmapped before return.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let mut v = vec![0u8; len.div_ceil(page)];
            assert_eq!(libc::mincore(p, len, v.as_mut_ptr()), 0);
            libc::munmap(p, len);
            v.iter().map(|b| b & 1 == 1).collect()
        }
    }

    fn wait_for_sync(sink: &FileSink) {
        for _ in 0..1000 {
            if sink.syncer.pending() == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the background sync did not finish in 10 s");
    }

    /// A directory for page-cache tests: under target/, not the temp dir, because a tmpfs
    /// keeps its pages whatever the advice.
    fn cache_test_dir(name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/cartlink-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn written_pages_leave_the_page_cache_step_by_step_between_syncs() {
        for drop_cache in [true, false] {
            let dir = cache_test_dir(&format!("fs-steps-{drop_cache}"));
            // No periodic sync in this test: only the steps can drop pages.
            let mut sink = FileSink::new(
                &dir,
                1 << 30,
                Duration::from_secs(3600),
                Duration::from_secs(3600),
                drop_cache,
            )
            .unwrap();
            let mut piece = vec![b'y'; 64 << 10];
            piece[(64 << 10) - 1] = b'\n';
            for _ in 0..128 {
                sink.write(&piece).unwrap();
                wait_for_sync(&sink);
            }
            let (cached, pages) = resident(sink.current_path().unwrap());
            assert_eq!(pages, (8 << 20) / 4096);
            if drop_cache {
                // At most the bytes since the last step, and the step's own rounding.
                assert!(
                    cached <= (DROP_STEP as usize) / 4096 + 16,
                    "{cached} of {pages} pages still cached"
                );
            } else {
                assert!(
                    cached * 2 > pages,
                    "only {cached} of {pages} pages cached without drop_cache"
                );
            }
            sink.close().unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// The kernel drops a partial last page too when a range reaches the end of the file; the
    /// next append would then read it back from disk. Neither the steps nor the periodic sync
    /// may leave the file's last page out of the cache.
    #[test]
    fn the_last_partial_page_stays_cached_for_the_next_append() {
        for (name, fsync_every) in [("step", Duration::from_secs(3600)), ("sync", Duration::ZERO)] {
            let dir = cache_test_dir(&format!("fs-tail-{name}"));
            let mut sink = FileSink::new(&dir, 1 << 30, Duration::from_secs(3600), fsync_every, true).unwrap();
            // 100,003 bytes a piece: the file never ends on a page boundary, and the eleventh
            // piece passes a drop step.
            let mut piece = vec![b'z'; 100_003];
            piece[100_002] = b'\n';
            for _ in 0..11 {
                sink.write(&piece).unwrap();
                wait_for_sync(&sink);
            }
            let pages = resident_pages(sink.current_path().unwrap());
            let page = rustix::param::page_size();
            assert_ne!(11 * 100_003 % page, 0);
            assert_eq!(pages.len(), (11 * 100_003usize).div_ceil(page));
            assert!(
                pages[..pages.len() - 1].iter().any(|p| !p),
                "{name}: nothing was dropped"
            );
            assert!(pages[pages.len() - 1], "{name}: the partial last page was dropped");
            sink.close().unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn synced_pages_leave_the_page_cache_only_with_drop_cache() {
        for drop_cache in [true, false] {
            let dir = cache_test_dir(&format!("fs-cache-{drop_cache}"));
            let mut sink = FileSink::new(&dir, 1 << 30, Duration::from_secs(3600), Duration::ZERO, drop_cache).unwrap();
            let mut chunk = vec![b'x'; 1 << 20];
            chunk[(1 << 20) - 1] = b'\n';
            for _ in 0..8 {
                sink.write(&chunk).unwrap();
            }
            // The last write may have found a sync still running: one more, synced, covers all.
            wait_for_sync(&sink);
            sink.write(b"{}\n").unwrap();
            wait_for_sync(&sink);
            let path = sink.current_path().unwrap().to_owned();
            let (cached, pages) = resident(&path);
            if drop_cache {
                assert!(cached * 10 < pages, "{cached} of {pages} pages still cached");
            } else {
                assert!(
                    cached * 2 > pages,
                    "only {cached} of {pages} pages cached without drop_cache"
                );
            }
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 * (1 << 20) + 3);
            sink.close().unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
