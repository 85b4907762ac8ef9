//! The file sink: rotating JSON Lines files in one directory.
//!
//! Files are named `clicks-<UTC start>-<pid>-<seq>.jsonl` so names sort by time and two
//! processes never share a file. Each batch (one contiguous body) is appended in pieces of
//! [`PIECE`] bytes, with a `sched_yield` between them, and a file is
//! rotated past `max_bytes` or `max_age`. Durability: data is `fdatasync`ed every
//! `fsync_every` (on a helper thread, [`super::syncer`], so a slow disk never stalls the
//! pipeline) and on rotation and shutdown, so a power loss of the machine loses at most that
//! window (plus the time the disk takes to sync); a `kill -9` of the process alone loses nothing that was
//! written. A reader should ignore a last line without its newline (a torn write).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::syncer::Syncer;

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
    opened: Instant,
    synced: Instant,
    dirty: bool,
}

impl FileSink {
    pub fn new(dir: &Path, max_bytes: u64, max_age: Duration, fsync_every: Duration) -> std::io::Result<FileSink> {
        std::fs::create_dir_all(dir)?;
        Ok(FileSink {
            dir: dir.to_path_buf(),
            max_bytes,
            max_age,
            fsync_every,
            current: None,
            seq: 0,
            syncer: Syncer::new("file-sink"),
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
        let len = data.len();
        if let Err(e) = write_in_pieces(&mut cur.file, data) {
            // A partial write leaves a torn tail; start the next attempt in a fresh file so
            // the torn record is alone at the end of this one.
            self.current = None;
            return Err(e);
        }
        cur.bytes += len as u64;
        cur.dirty = true;
        if cur.synced.elapsed() >= self.fsync_every && self.syncer.pending() == 0 {
            self.syncer.request(&cur.file);
            cur.synced = Instant::now();
            cur.dirty = false;
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
            opened: now,
            synced: now,
            dirty: false,
        });
        Ok(())
    }
}

/// How much of a batch goes to the kernel at once. A 1,000-record batch is about 350 KiB, and
/// copying it into the page cache takes about 0.3 ms of the core; on a core shared with a
/// redirect worker (one core for the server, as in loadtest/) that is 0.3 ms added to every
/// request in flight. In 32 KiB pieces with a yield between them, a runnable worker gets the
/// core back every 25 µs or so; an idle one costs the yield nothing.
pub const PIECE: usize = 32 << 10;

fn write_in_pieces(w: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let mut pieces = data.chunks(PIECE).peekable();
    while let Some(piece) = pieces.next() {
        w.write_all(piece)?;
        if pieces.peek().is_some() {
            std::thread::yield_now();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_every_byte() {
        let dir = std::env::temp_dir().join(format!("cartlink-fs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sink = FileSink::new(&dir, 100, Duration::from_secs(3600), Duration::ZERO).unwrap();
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

    /// Takes at most 7 bytes per call, like a kernel that writes part of a buffer, and keeps
    /// where each call began and how much it was offered.
    #[derive(Default)]
    struct Trickle {
        out: Vec<u8>,
        calls: Vec<(usize, usize)>,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.calls.push((self.out.len(), buf.len()));
            let n = buf.len().min(7);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_batch_goes_out_whole_in_pieces_after_partial_writes() {
        let whole: String = (0..30_000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        assert!(whole.len() > 4 * PIECE);
        let mut t = Trickle::default();
        write_in_pieces(&mut t, whole.as_bytes()).unwrap();
        assert_eq!(t.out, whole.as_bytes());
        // No call is offered bytes of two pieces.
        for &(at, offered) in &t.calls {
            assert_eq!(
                at / PIECE,
                (at + offered - 1) / PIECE,
                "a write at {at} of {offered} bytes"
            );
        }

        // A real file.
        let dir = std::env::temp_dir().join(format!("cartlink-fs-v-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sink = FileSink::new(&dir, 1 << 30, Duration::from_secs(3600), Duration::ZERO).unwrap();
        sink.write(whole.as_bytes()).unwrap();
        let path = sink.current_path().unwrap().to_owned();
        sink.close().unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), whole);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
