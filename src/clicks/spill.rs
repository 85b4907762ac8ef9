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
//! 5. A frame that is truncated, has a bad length or a bad CRC is damage: a torn tail (a crash
//!    mid-write) or bytes the disk spoiled. Each damaged stretch is counted
//!    (`cartlink_spill_corrupt_total`) and skipped, and reading goes on at the next whole frame
//!    (one whose length fits, whose payload passes its CRC, and which reads as a JSON line), so
//!    the records after a spoiled one are replayed too (after a spoiled magic as well). Frames
//!    whose lengths were whole and only their payloads spoiled are one record lost each,
//!    counted as dropped (`spill_error`); how many records a stretch with a spoiled length, or
//!    a torn tail, held cannot be told.
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
    /// Bytes up to the end of its last whole frame.
    len: u64,
    records: u64,
    /// Damaged stretches found in it when it was opened (counted then).
    damaged: u64,
}

/// Damage found in segments: stretches skipped, and the records known to be in them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub stretches: u64,
    pub records: u64,
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
    /// Damaged stretches found now that were not there (or not counted) when it was opened.
    pub damaged: u64,
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
    /// spill and the damage found while counting records.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        fsync_every: Duration,
    ) -> std::io::Result<(Spill, Damage)> {
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
        let mut damage = Damage::default();
        for (seq, path) in found {
            let data = std::fs::read(&path)?;
            let p = parse(&data);
            damage.stretches += p.damaged;
            damage.records += p.lost;
            if p.records.is_empty() {
                // Nothing to replay (empty, or torn before its first record).
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let seg = Segment {
                seq,
                path,
                len: p.end as u64,
                records: p.records.len() as u64,
                // Replay reads up to `end`: the damage it will meet again, not a torn tail.
                damaged: if p.damaged > 0 {
                    parse(&data[..p.end]).damaged
                } else {
                    0
                },
            };
            spill.bytes += seg.len;
            spill.records += seg.records;
            spill.sealed.push_back(seg);
        }
        Ok((spill, damage))
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
        let p = parse(&data);
        // New damage since it was written or opened: more stretches, or fewer records.
        let fewer = (p.records.len() as u64) < seg.records;
        let damaged = p.damaged.saturating_sub(seg.damaged).max(u64::from(fewer));
        Ok(Some(SegmentRead {
            seq: seg.seq,
            records: p.records.into_iter().map(<[u8]>::to_vec).collect(),
            damaged,
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
                damaged: 0,
            },
            synced: Instant::now(),
            dirty: true,
        });
        Ok(())
    }
}

/// What a segment's bytes hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub records: Vec<&'a [u8]>,
    /// The end of the last whole frame.
    pub end: usize,
    /// Damaged stretches skipped.
    pub damaged: u64,
    /// Frames among them whose length was whole (one record each, its payload spoiled).
    pub lost: u64,
}

/// Parses a segment: its whole frames, skipping damaged stretches (see the module's top, 5).
pub fn parse(data: &[u8]) -> Parsed<'_> {
    let mut out = Parsed::default();
    if data.is_empty() {
        return out;
    }
    let mut at = MAGIC.len();
    out.end = at.min(data.len());
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        // A spoiled magic: the frames after it may still be whole.
        out.damaged += 1;
        match resync(data, MAGIC.len()) {
            Some(p) => at = p,
            None => return out,
        }
    }
    while at < data.len() {
        if let Some(payload) = frame(data, at) {
            out.records.push(payload);
            at += FRAME_HEADER + payload.len();
            out.end = at;
            continue;
        }
        out.damaged += 1;
        // Only payloads spoiled: their lengths lead to the next whole frame (or the end).
        if let Some((next, spoiled)) = chain(data, at) {
            out.lost += spoiled;
            at = next;
            continue;
        }
        match resync(data, at + 1) {
            Some(p) => at = p,
            None => break,
        }
    }
    out
}

/// From a frame that failed its CRC: the frames whose lengths fit, one after another (at most
/// 16), up to a whole frame or the end of the data; where that is, and how many were skipped.
fn chain(data: &[u8], mut at: usize) -> Option<(usize, u64)> {
    for skipped in 1..=16 {
        at += FRAME_HEADER + length(data, at)?;
        if at == data.len() || frame(data, at).is_some() {
            return Some((at, skipped));
        }
    }
    None
}

/// The next place from `from` where a whole frame starts that reads as a JSON line, so the
/// bytes of a record (ASCII: a length of 500 MB and more) are never taken for one. The
/// payload's first and last bytes are looked at before its CRC is computed.
fn resync(data: &[u8], from: usize) -> Option<usize> {
    (from..data.len()).find(|&p| {
        length(data, p).is_some_and(|len| {
            let payload = &data[p + FRAME_HEADER..p + FRAME_HEADER + len];
            json_line(payload) && frame(data, p).is_some()
        })
    })
}

/// The length in the frame header at `at`, if it is one a frame can have and fits in `data`.
fn length(data: &[u8], at: usize) -> Option<usize> {
    let h = data.get(at..at + FRAME_HEADER)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    (len > 0 && len <= MAX_RECORD && at + FRAME_HEADER + len <= data.len()).then_some(len)
}

/// The payload of a whole frame at `at`: its length fits and its CRC matches.
fn frame(data: &[u8], at: usize) -> Option<&[u8]> {
    let len = length(data, at)?;
    let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
    let payload = &data[at + FRAME_HEADER..at + FRAME_HEADER + len];
    (crc32fast::hash(payload) == crc).then_some(payload)
}

fn json_line(payload: &[u8]) -> bool {
    payload.first() == Some(&b'{') && payload.last() == Some(&b'\n')
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
        let (mut s, damage) = Spill::open(&d, 1 << 20, 64, Duration::ZERO).unwrap();
        assert_eq!(damage, Damage::default());
        for i in 0..10 {
            s.append(&batch(i * 3, 3)).unwrap();
        }
        assert_eq!(s.records(), 30);
        assert!(s.segments() > 1, "64-byte segments rotate");
        s.seal();
        drop(s);
        let (mut s, damage) = Spill::open(&d, 1 << 20, 64, Duration::ZERO).unwrap();
        assert_eq!((s.records(), damage.stretches), (30, 0));
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
        let (mut s, damage) = Spill::open(&d, 1 << 20, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!((s.records(), damage.stretches, damage.records), (4, 1, 0));
        let seg = s.oldest().unwrap().unwrap();
        assert_eq!((seg.records.len(), seg.damaged), (4, 0), "counted once, at the open");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A segment of `n` records (`{"n":i}`), as written.
    fn segment(n: u32) -> Vec<u8> {
        let mut data = MAGIC.to_vec();
        for i in 0..n {
            let payload = format!("{{\"n\":{i}}}\n");
            data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            data.extend_from_slice(&crc32fast::hash(payload.as_bytes()).to_le_bytes());
            data.extend_from_slice(payload.as_bytes());
        }
        data
    }

    fn numbers(p: &Parsed) -> Vec<u32> {
        p.records
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(r).unwrap()["n"]
                    .as_u64()
                    .unwrap() as u32
            })
            .collect()
    }

    #[test]
    fn a_spoiled_record_costs_that_record_and_a_spoiled_length_only_its_stretch() {
        let clean = segment(10);
        let frame = |i: usize| MAGIC.len() + i * (FRAME_HEADER + 8); // `{"n":i}\n` is 8 bytes
                                                                     // A payload byte flipped: that one record is lost, counted; the rest are read.
        let mut d = clean.clone();
        d[frame(3) + FRAME_HEADER + 2] ^= 0x20;
        let p = parse(&d);
        assert_eq!(numbers(&p), [0, 1, 2, 4, 5, 6, 7, 8, 9]);
        assert_eq!((p.damaged, p.lost, p.end), (1, 1, d.len()));
        // A length spoiled: the stretch up to the next whole frame is skipped; no count of
        // the records in it can be told.
        let mut d = clean.clone();
        d[frame(5) + 2] = 0x7f;
        let p = parse(&d);
        assert_eq!(numbers(&p), [0, 1, 2, 3, 4, 6, 7, 8, 9]);
        assert_eq!((p.damaged, p.lost), (1, 0));
        // A payload and a CRC spoiled (a record each, known), and a torn tail (not known).
        let mut d = clean.clone();
        d[frame(1) + FRAME_HEADER] ^= 1;
        d[frame(6) + 5] ^= 0xff;
        d.truncate(d.len() - 3);
        let p = parse(&d);
        assert_eq!(numbers(&p), [0, 2, 3, 4, 5, 7, 8]);
        assert_eq!((p.damaged, p.lost), (3, 2));
        assert_eq!(p.end, frame(9), "up to the last whole frame");
        // Zeros (a crash after the size grew) and garbage: skipped, nothing taken for a frame.
        let mut d = clean.clone();
        d.extend_from_slice(&[0u8; 4096]);
        d.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
        let p = parse(&d);
        assert_eq!(numbers(&p), (0..10).collect::<Vec<_>>());
        assert_eq!((p.damaged, p.lost, p.end), (1, 0, clean.len()));
        assert_eq!(
            parse(&clean),
            Parsed {
                records: parse(&clean).records,
                end: clean.len(),
                damaged: 0,
                lost: 0
            }
        );
    }

    #[test]
    fn spoiled_payloads_in_a_row_and_a_spoiled_magic_cost_only_their_records() {
        let clean = segment(10);
        let frame = |i: usize| MAGIC.len() + i * (FRAME_HEADER + 8);
        let mut d = clean.clone();
        for i in [3, 4, 5] {
            d[frame(i) + FRAME_HEADER + 1] ^= 0x02;
        }
        let p = parse(&d);
        assert_eq!(numbers(&p), [0, 1, 2, 6, 7, 8, 9]);
        assert_eq!((p.damaged, p.lost), (1, 3), "three records, each counted");
        let mut d = clean.clone();
        d[2] ^= 0xff;
        let p = parse(&d);
        assert_eq!(
            numbers(&p),
            (0..10).collect::<Vec<_>>(),
            "a spoiled magic costs nothing else"
        );
        assert_eq!((p.damaged, p.lost, p.end), (1, 0, d.len()));
    }

    #[test]
    fn damage_after_the_open_is_found_on_replay_even_past_a_torn_tail() {
        let d = dir("late-damage");
        let (mut s, _) = Spill::open(&d, 1 << 20, 1 << 20, Duration::ZERO).unwrap();
        s.append(&batch(0, 5)).unwrap();
        s.seal();
        drop(s);
        let path = std::fs::read_dir(&d).unwrap().next().unwrap().unwrap().path();
        let mut data = std::fs::read(&path).unwrap();
        data.truncate(data.len() - 3);
        std::fs::write(&path, &data).unwrap();
        let (mut s, damage) = Spill::open(&d, 1 << 20, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!((s.records(), damage.stretches), (4, 1), "the torn tail, at the open");
        // Then the disk spoils a record the open counted.
        data[MAGIC.len() + FRAME_HEADER + 2] ^= 0x01;
        std::fs::write(&path, &data).unwrap();
        let seg = s.oldest().unwrap().unwrap();
        assert_eq!(
            (seg.records.len(), seg.damaged),
            (3, 1),
            "found, not hidden by the tail"
        );
        assert_eq!(s.forget_records(seg.seq, 3), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u8),
        Replay,
        Restart,
    }

    proptest! {
        /// Whatever bytes of a segment are spoiled, cut or added, what is read back is a
        /// subsequence of what was written: no record invented, none twice, order kept.
        #[test]
        fn damage_yields_a_subsequence_of_the_records(
            n in 1u32..40,
            edits in proptest::collection::vec((0usize..2000, any::<u8>(), 0u8..3), 1..8),
            cut in proptest::option::of(0usize..2000),
        ) {
            let mut d = segment(n);
            for (at, byte, how) in edits {
                let at = at % d.len();
                match how {
                    0 => d[at] ^= byte | 1,
                    1 => d.insert(at, byte),
                    _ => { d.remove(at); }
                }
                if d.is_empty() {
                    d.push(byte);
                }
            }
            if let Some(c) = cut {
                d.truncate(c % (d.len() + 1));
            }
            let got = numbers(&parse(&d));
            let mut want = 0..n;
            for g in &got {
                prop_assert!(want.any(|w| w == *g), "{:?} is not a subsequence of 0..{}", got, n);
            }
        }
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
