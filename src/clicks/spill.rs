//! The disk spill: where click records wait while the sink is down or slow, or while the queue
//! is past its watermark. It lives in `<data_dir>/spill/` and survives restarts.
//!
//! # Format
//!
//! A spill is a sequence of *segments*, files named `seg-<seq>.spill` with `<seq>` a 20-digit,
//! zero-padded, strictly increasing number, so the lexical order of names is the order of
//! writing. A segment is:
//!
//! ```text
//! magic   8 bytes  b"CLSPILL1"
//! record*
//!   len   u32 little-endian   length of payload, 1..=16 MiB
//!   crc   u32 little-endian   CRC-32 (IEEE, as crc32fast) of payload
//!   payload len bytes          one click record, JSON, ending in '\n'
//! ```
//!
//! # Invariants
//!
//! 1. Append-only: bytes of a segment are never rewritten; new records go to the end of the
//!    *head* (the one segment open for writing). A batch is appended with one `write_all`; if
//!    it fails (ENOSPC, EIO) the file is truncated back to its last good length, the head is
//!    sealed at that length and the batch is reported as not spilled (the caller counts it as
//!    dropped, reason `spill_error`): a record is never both dropped and replayed.
//! 2. A segment is *sealed* when it reaches `segment_bytes`, when the replayer needs it, or at
//!    shutdown; sealed segments are never appended to again (a new head gets the next `seq`).
//! 3. Replay is in `seq` order, oldest first, and reads only sealed segments.
//! 4. A segment is deleted only after **every** record in it was acknowledged by the sink (or
//!    rejected by it with a non-retriable status, which is a counted drop). A crash in the middle
//!    of a segment's replay replays the whole segment at the next start: duplicates, never loss;
//!    they carry the same `click_id`.
//! 5. Reading stops at the first frame that is truncated, has a bad length or a bad CRC: that is
//!    a torn tail (a crash mid-write). It is counted (`cartlink_spill_corrupt_total`) and skipped;
//!    records before it are replayed.
//! 6. Size cap: the total bytes of all segments never exceed `max_bytes`. A batch that does not
//!    fit is refused whole (policy *drop newest*: what is already on disk is older and is kept),
//!    and its records are counted as `cartlink_clicks_dropped_total{reason="spill_full"}`.
//!    Nothing waits for space; the redirect path is never involved.
//! 7. Durability: the head is `fdatasync`ed `fsync_every` after a write and when sealed, on a
//!    helper thread ([`super::syncer`]) so a slow disk never stalls the pipeline; in the
//!    foreground at shutdown. A `kill -9` of the process loses nothing written; a power loss loses
//!    at most the last `fsync_every` of spilled records (plus the time the disk takes to sync).

use super::batch::Batch;
use super::syncer::Syncer;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const MAGIC: &[u8; 8] = b"CLSPILL1";
const FRAME_HEADER: usize = 8;
const MAX_RECORD: usize = 16 << 20;

/// Why a batch was not spilled.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("spill is at its size cap")]
    Full,
    #[error("spill write failed: {0}")]
    Io(#[from] std::io::Error),
}

impl SpillError {
    /// `enospc` or `io`, for `cartlink_spill_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            SpillError::Full => "full",
            SpillError::Io(e) if e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull => {
                "enospc"
            }
            SpillError::Io(_) => "io",
        }
    }
}

#[derive(Debug, Clone)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Bytes known good (header + whole frames).
    len: u64,
    records: u64,
}

struct Head {
    file: File,
    seg: Segment,
    synced: Instant,
    dirty: bool,
}

/// A sealed segment read back for replay.
pub struct SegmentRead {
    pub seq: u64,
    pub records: Vec<Vec<u8>>,
    /// A torn or corrupt tail was found and skipped.
    pub torn: bool,
}

pub struct Spill {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    fsync_every: Duration,
    sealed: VecDeque<Segment>,
    head: Option<Head>,
    next_seq: u64,
    bytes: u64,
    records: u64,
    syncer: Syncer,
}

impl Spill {
    /// Opens (creating) the spill directory and indexes the segments already there. Returns the
    /// spill and the number of corrupt tails found while counting records.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        fsync_every: Duration,
    ) -> std::io::Result<(Spill, u64)> {
        std::fs::create_dir_all(dir)?;
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let seq = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("seg-"))
                .and_then(|n| n.strip_suffix(".spill"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(seq) = seq {
                found.push((seq, path));
            }
        }
        found.sort();
        let mut spill = Spill {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: segment_bytes.max(MAGIC.len() as u64 + 1),
            fsync_every,
            sealed: VecDeque::new(),
            head: None,
            next_seq: found.last().map_or(1, |(s, _)| s + 1),
            bytes: 0,
            records: 0,
            syncer: Syncer::new("spill", false),
        };
        let mut torn = 0;
        for (seq, path) in found {
            let data = std::fs::read(&path)?;
            let (recs, good, bad) = parse(&data);
            torn += u64::from(bad);
            if recs.is_empty() {
                // Nothing to replay (empty, or torn before its first record).
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let seg = Segment {
                seq,
                path,
                len: good as u64,
                records: recs.len() as u64,
            };
            spill.bytes += seg.len;
            spill.records += seg.records;
            spill.sealed.push_back(seg);
        }
        Ok((spill, torn))
    }

    /// Records waiting in the spill (sealed, head, and the segment being replayed).
    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn segments(&self) -> usize {
        self.sealed.len() + usize::from(self.head.is_some())
    }

    /// Appends every record of `batch`, or none of them.
    pub fn append(&mut self, batch: &Batch) -> Result<(), SpillError> {
        if batch.is_empty() {
            return Ok(());
        }
        let frames = batch.bytes() as u64 + (FRAME_HEADER * batch.len()) as u64;
        let header_cost = if self.head.is_none() { MAGIC.len() as u64 } else { 0 };
        if self.bytes + frames + header_cost > self.max_bytes {
            return Err(SpillError::Full);
        }
        if self.head.is_none() {
            self.open_head()?;
        }
        let mut buf = Vec::with_capacity(frames as usize);
        for r in batch.records() {
            buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(r).to_le_bytes());
            buf.extend_from_slice(r);
        }
        let head = self.head.as_mut().expect("opened above");
        if let Err(e) = head.file.write_all(&buf) {
            // Invariant 1: back to the last good length, seal there, refuse the batch.
            let _ = head.file.set_len(head.seg.len);
            self.seal();
            return Err(SpillError::Io(e));
        }
        head.seg.len += frames;
        head.seg.records += batch.len() as u64;
        head.dirty = true;
        self.bytes += frames;
        self.records += batch.len() as u64;
        self.maybe_sync();
        if self.head.as_ref().is_some_and(|h| h.seg.len >= self.segment_bytes) {
            self.seal();
        }
        Ok(())
    }

    /// `fdatasync`s the head in the foreground if it has unsynced writes (shutdown).
    pub fn sync_now(&mut self) {
        if let Some(h) = self.head.as_mut() {
            if h.dirty {
                if let Err(e) = h.file.sync_data() {
                    tracing::warn!(error = %e, "spill: fdatasync failed");
                }
                h.dirty = false;
                h.synced = Instant::now();
            }
        }
    }

    /// Asks for a background sync if the head has been dirty for `fsync_every` (and the last
    /// one has finished, so a slow disk does not pile requests up).
    pub fn maybe_sync(&mut self) {
        let due = self.syncer.pending() == 0;
        if let Some(h) = self.head.as_mut() {
            if due && h.dirty && h.synced.elapsed() >= self.fsync_every {
                self.syncer.request(&h.file);
                h.dirty = false;
                h.synced = Instant::now();
            }
        }
    }

    /// Syncs in the foreground and seals: for shutdown.
    pub fn close(&mut self) {
        self.sync_now();
        self.seal();
    }

    /// Seals the head, if any (invariant 2); its last writes are synced in the background.
    pub fn seal(&mut self) {
        if let Some(h) = self.head.as_mut().filter(|h| h.dirty) {
            self.syncer.request(&h.file);
            h.dirty = false;
        }
        if let Some(h) = self.head.take() {
            if h.seg.records == 0 {
                self.bytes -= h.seg.len;
                let _ = std::fs::remove_file(&h.seg.path);
            } else {
                self.sealed.push_back(h.seg);
            }
        }
    }

    /// The oldest sealed segment, read back (sealing the head first if nothing else is sealed).
    /// It stays on disk and counted until [`Spill::ack`].
    pub fn oldest(&mut self) -> std::io::Result<Option<SegmentRead>> {
        if self.sealed.is_empty() {
            self.seal();
        }
        let Some(seg) = self.sealed.front() else {
            return Ok(None);
        };
        let mut data = Vec::with_capacity(seg.len as usize);
        File::open(&seg.path)?.take(seg.len).read_to_end(&mut data)?;
        let (recs, _, torn) = parse(&data);
        Ok(Some(SegmentRead {
            seq: seg.seq,
            records: recs.into_iter().map(<[u8]>::to_vec).collect(),
            torn,
        }))
    }

    /// Every record of segment `seq` is acknowledged (or counted as dropped): delete it.
    /// Returns how many records were in it.
    pub fn ack(&mut self, seq: u64) -> u64 {
        let Some(i) = self.sealed.iter().position(|s| s.seq == seq) else {
            return 0;
        };
        let seg = self.sealed.remove(i).expect("index from position");
        if let Err(e) = std::fs::remove_file(&seg.path) {
            tracing::warn!(error = %e, path = %seg.path.display(), "spill: cannot delete replayed segment");
        }
        self.bytes -= seg.len;
        self.records -= seg.records;
        seg.records
    }

    /// Gives up on the oldest sealed segment (it vanished or cannot be read): removes it from the
    /// index and returns how many records it held, for the caller to count as dropped.
    pub fn discard_oldest(&mut self) -> u64 {
        let Some(seg) = self.sealed.pop_front() else {
            return 0;
        };
        let _ = std::fs::remove_file(&seg.path);
        self.bytes -= seg.len;
        self.records -= seg.records;
        seg.records
    }

    /// A sealed segment whose records did not match what was counted when it was written
    /// (a torn tail found on replay): fixes the count so the gauges stay true.
    pub fn forget_records(&mut self, seq: u64, replayable: u64) -> u64 {
        match self.sealed.iter_mut().find(|s| s.seq == seq) {
            Some(s) if s.records > replayable => {
                let lost = s.records - replayable;
                s.records = replayable;
                self.records -= lost;
                lost
            }
            _ => 0,
        }
    }

    fn open_head(&mut self) -> std::io::Result<()> {
        let seq = self.next_seq;
        let path = self.dir.join(format!("seg-{seq:020}.spill"));
        let mut file = OpenOptions::new().create_new(true).append(true).open(&path)?;
        if let Err(e) = file.write_all(MAGIC) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.next_seq += 1;
        self.bytes += MAGIC.len() as u64;
        self.head = Some(Head {
            file,
            seg: Segment {
                seq,
                path,
                len: MAGIC.len() as u64,
                records: 0,
            },
            synced: Instant::now(),
            dirty: true,
        });
        Ok(())
    }
}

/// Parses a segment: the records before the first bad frame, the length of the good prefix,
/// and whether a bad frame (torn tail, bad CRC) was found.
pub fn parse(data: &[u8]) -> (Vec<&[u8]>, usize, bool) {
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        return (Vec::new(), 0, !data.is_empty());
    }
    let mut at = MAGIC.len();
    let mut out = Vec::new();
    while at < data.len() {
        let Some(h) = data.get(at..at + FRAME_HEADER) else {
            return (out, at, true);
        };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len == 0 || len > MAX_RECORD {
            return (out, at, true);
        }
        let Some(payload) = data.get(at + FRAME_HEADER..at + FRAME_HEADER + len) else {
            return (out, at, true);
        };
        if crc32fast::hash(payload) != crc {
            return (out, at, true);
        }
        out.push(payload);
        at += FRAME_HEADER + len;
    }
    (out, at, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dir(name: &str) -> PathBuf {
        crate::scratch_dir("spill", name)
    }

    fn batch(from: u32, n: u32) -> Batch {
        let mut b = Batch::new();
        for i in from..from + n {
            b.push_raw(format!("{{\"n\":{i}}}\n").as_bytes());
        }
        b
    }

    fn drain(s: &mut Spill) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(seg) = s.oldest().unwrap() {
            out.extend(seg.records.iter().map(|r| String::from_utf8(r.clone()).unwrap()));
            s.ack(seg.seq);
        }
        out
    }

    #[test]
    fn replays_in_order_across_restarts_and_deletes_acked_segments() {
        let d = dir("order");
        let (mut s, torn) = Spill::open(&d, 1 << 20, 64, Duration::ZERO).unwrap();
        assert_eq!(torn, 0);
        for i in 0..10 {
            s.append(&batch(i * 3, 3)).unwrap();
        }
        assert_eq!(s.records(), 30);
        assert!(s.segments() > 1, "64-byte segments rotate");
        s.seal();
        drop(s);
        let (mut s, torn) = Spill::open(&d, 1 << 20, 64, Duration::ZERO).unwrap();
        assert_eq!((s.records(), torn), (30, 0));
        let got = drain(&mut s);
        let want: Vec<String> = (0..30).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        assert_eq!(got, want);
        assert_eq!((s.records(), s.bytes(), s.segments()), (0, 0, 0));
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn cap_refuses_whole_batches() {
        let d = dir("cap");
        let (mut s, _) = Spill::open(&d, 100, 1 << 20, Duration::ZERO).unwrap();
        s.append(&batch(0, 3)).unwrap(); // 8 + 3 * (8 + 8) = 56 bytes
        assert!(matches!(s.append(&batch(3, 3)), Err(SpillError::Full)));
        s.append(&batch(3, 1)).unwrap();
        assert_eq!(s.records(), 4);
        assert!(s.bytes() <= 100);
        assert_eq!(drain(&mut s).len(), 4);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn torn_tail_is_skipped_and_counted() {
        let d = dir("torn");
        let (mut s, _) = Spill::open(&d, 1 << 20, 1 << 20, Duration::ZERO).unwrap();
        s.append(&batch(0, 5)).unwrap();
        s.seal();
        let path = std::fs::read_dir(&d).unwrap().next().unwrap().unwrap().path();
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        drop((f, s));
        let (mut s, torn) = Spill::open(&d, 1 << 20, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!((s.records(), torn), (4, 1));
        assert_eq!(drain(&mut s).len(), 4);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u8),
        Replay,
        Restart,
    }

    proptest! {
        /// The spill against a model (a FIFO of records): whatever the interleaving of appends,
        /// replays and restarts, records come out once each, in order, and nothing else does.
        #[test]
        fn behaves_like_a_fifo(ops in proptest::collection::vec(prop_oneof![
            (1u8..20).prop_map(Op::Append), Just(Op::Replay), Just(Op::Restart)], 1..40), seg in 40u64..400) {
            let d = dir("model");
            let (mut s, _) = Spill::open(&d, 1 << 20, seg, Duration::from_secs(60)).unwrap();
            let mut model: VecDeque<String> = VecDeque::new();
            let mut n = 0u32;
            for op in ops {
                match op {
                    Op::Append(k) => {
                        s.append(&batch(n, u32::from(k))).unwrap();
                        model.extend((n..n + u32::from(k)).map(|i| format!("{{\"n\":{i}}}\n")));
                        n += u32::from(k);
                    }
                    Op::Replay => {
                        if let Some(segr) = s.oldest().unwrap() {
                            for r in &segr.records {
                                prop_assert_eq!(Some(String::from_utf8(r.clone()).unwrap()), model.pop_front());
                            }
                            s.ack(segr.seq);
                        }
                    }
                    Op::Restart => {
                        s.seal();
                        drop(s);
                        s = Spill::open(&d, 1 << 20, seg, Duration::from_secs(60)).unwrap().0;
                    }
                }
                prop_assert_eq!(s.records(), model.len() as u64);
            }
            let rest = drain(&mut s);
            prop_assert_eq!(rest, Vec::from(model));
            std::fs::remove_dir_all(&d).unwrap();
        }
    }
}
