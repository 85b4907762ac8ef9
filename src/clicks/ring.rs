//! Per-thread byte rings between the redirect path and the pipeline thread.
//!
//! Each thread that records gets, at its first record, a ring of its own (one writer, one
//! reader). It encodes the record into a reused scratch buffer, copies it into the ring as a
//! frame and publishes it with one release store. The pipeline thread reads every ring on its
//! beat and copies the records into its batch. A click thus costs the redirect path no
//! allocation, no read-modify-write on a line another core writes, and no wake-up, and the
//! pipeline frees nothing a worker allocated.
//!
//! A full ring is not a drop: [`super::Recorder`] falls back to the bounded queue, which keeps
//! `queue_capacity` as the buffer against a stalled pipeline thread. The ring is sized to stay in
//! the core's cache, not to ride out stalls.
//!
//! A frame is a little-endian `u32` length, the record, and padding to 4 bytes. A frame never
//! wraps: when it does not fit before the end, the writer puts [`SKIP`] there and starts at 0.
//!
//! Shutdown ([`Hub::close`]) is exact: a writer marks its ring busy, then checks `closed`; the
//! closer sets `closed`, then waits until no ring is busy (both sequentially consistent). So
//! either the writer sees `closed` and refuses, or the closer sees the push and the final drain
//! gets it.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes per ring: about 1,200 click records, 10 ms of one worker at full speed (the batcher
/// drains every 5 ms by default).
pub const RING_BYTES: usize = 512 << 10;

const SKIP: u32 = u32::MAX;

/// What [`Hub::push`] did with a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// In this thread's ring.
    Ring,
    /// No room (or too big for a ring): the encoded record, for the queue.
    Full(Vec<u8>),
    /// The pipeline is shutting down.
    Closed,
}

/// The rings of one pipeline.
pub struct Hub {
    id: u64,
    ring_bytes: usize,
    closed: AtomicBool,
    rings: Mutex<Vec<Arc<Ring>>>,
    /// Where the next drain starts, so one busy ring cannot starve the others.
    next: AtomicUsize,
}

#[repr(align(128))]
struct Padded<T>(T);

struct Ring {
    buf: *mut u8,
    cap: usize,
    /// Written by the writer: bytes published, records published, a push in progress.
    w: Padded<(AtomicUsize, AtomicU64, AtomicBool)>,
    /// Written by the reader: bytes consumed, records consumed, closed.
    r: Padded<(AtomicUsize, AtomicU64, AtomicBool)>,
}

// The writer writes only bytes past `head`, the reader reads only bytes before it, and `head` /
// `tail` are published with release and read with acquire.
unsafe impl Send for Ring {}
unsafe impl Sync for Ring {}

impl Ring {
    fn new(cap: usize, closed: bool) -> Ring {
        assert!(cap.is_power_of_two() && cap >= 64);
        let buf = Box::into_raw(vec![0u8; cap].into_boxed_slice()) as *mut u8;
        let ring = Ring {
            buf,
            cap,
            w: Padded(Default::default()),
            r: Padded(Default::default()),
        };
        ring.r.0 .2.store(closed, Ordering::SeqCst);
        ring
    }

    fn head(&self) -> &AtomicUsize {
        &self.w.0 .0
    }
    fn tail(&self) -> &AtomicUsize {
        &self.r.0 .0
    }
    fn busy(&self) -> &AtomicBool {
        &self.w.0 .2
    }
    fn closed(&self) -> &AtomicBool {
        &self.r.0 .2
    }

    fn depth(&self) -> u64 {
        let out = self.r.0 .1.load(Ordering::Relaxed);
        self.w.0 .1.load(Ordering::Relaxed).saturating_sub(out)
    }

    /// # Safety
    /// `pos + 4 <= cap`, and the bytes are the caller's side of the ring.
    unsafe fn write_u32(&self, pos: usize, v: u32) {
        std::ptr::write_unaligned(self.buf.add(pos) as *mut u32, v.to_le());
    }

    /// # Safety
    /// As [`Ring::write_u32`].
    unsafe fn read_u32(&self, pos: usize) -> u32 {
        u32::from_le(std::ptr::read_unaligned(self.buf.add(pos) as *const u32))
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `buf` came from `Box::into_raw` of a `cap`-byte boxed slice.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.buf, self.cap)) });
    }
}

fn frame_len(record: usize) -> usize {
    (4 + record + 3) & !3
}

/// A thread's side of one ring: its own copies of what only it writes.
struct Writer {
    hub: u64,
    ring: Arc<Ring>,
    head: usize,
    records: u64,
    /// The reader's tail as last read; re-read only when the ring looks full.
    tail_seen: usize,
}

impl Writer {
    fn append(&mut self, record: &[u8]) -> bool {
        let cap = self.ring.cap;
        let frame = frame_len(record.len());
        if frame > cap / 2 || record.len() >= SKIP as usize {
            return false;
        }
        let mut pos = self.head & (cap - 1);
        let to_end = cap - pos;
        let need = if frame <= to_end { frame } else { to_end + frame };
        if self.head + need - self.tail_seen > cap {
            self.tail_seen = self.ring.tail().load(Ordering::Acquire);
            if self.head + need - self.tail_seen > cap {
                return false;
            }
        }
        // SAFETY: `need` bytes from `head` are free (checked against the tail above) and only
        // this thread writes there; frames are 4-aligned, so `to_end >= 4`.
        unsafe {
            if frame > to_end {
                self.ring.write_u32(pos, SKIP);
                self.head += to_end;
                pos = 0;
            }
            self.ring.write_u32(pos, record.len() as u32);
            std::ptr::copy_nonoverlapping(record.as_ptr(), self.ring.buf.add(pos + 4), record.len());
        }
        self.head += frame;
        self.records += 1;
        self.ring.w.0 .1.store(self.records, Ordering::Relaxed);
        self.ring.head().store(self.head, Ordering::Release);
        self.prefetch_next();
        true
    }

    /// Asks for the lines the next record will be written to. A ring bigger than the core's
    /// cache has them cold, and the first atomic after the copy would wait for every store to
    /// reach its line; asked for one request ahead, they are there in time.
    fn prefetch_next(&self) {
        let cap = self.ring.cap;
        let pos = self.head & (cap - 1);
        let ahead = NEXT_BYTES.min(cap - pos);
        // SAFETY: `pos + ahead <= cap`: inside the buffer.
        crate::prefetch::write(unsafe { self.ring.buf.add(pos) }, ahead);
        if ahead < NEXT_BYTES {
            crate::prefetch::write(self.ring.buf, NEXT_BYTES - ahead);
        }
    }
}

/// How much of the ring to prefetch for the next record: most records are 300–450 bytes.
const NEXT_BYTES: usize = 512;

struct Local {
    writers: Vec<Writer>,
    scratch: Vec<u8>,
}

thread_local! {
    static LOCAL: RefCell<Local> = const { RefCell::new(Local { writers: Vec::new(), scratch: Vec::new() }) };
}

static HUB_IDS: AtomicU64 = AtomicU64::new(1);

impl Hub {
    pub fn new(ring_bytes: usize) -> Arc<Hub> {
        Arc::new(Hub {
            id: HUB_IDS.fetch_add(1, Ordering::Relaxed),
            ring_bytes,
            closed: AtomicBool::new(false),
            rings: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
        })
    }

    /// Encodes one record (with its newline) and puts it in this thread's ring.
    pub fn push(&self, encode: impl FnOnce(&mut Vec<u8>)) -> Pushed {
        let mut encode = Some(encode);
        let pushed = LOCAL.try_with(|local| {
            let Ok(mut local) = local.try_borrow_mut() else {
                return None;
            };
            let Local { writers, scratch } = &mut *local;
            scratch.clear();
            (encode.take().expect("called once"))(scratch);
            let i = match writers.iter().position(|w| w.hub == self.id) {
                Some(i) => i,
                None => {
                    // Rings of pipelines that have shut down are let go here.
                    writers.retain(|w| !w.ring.closed().load(Ordering::Relaxed));
                    writers.push(self.register());
                    writers.len() - 1
                }
            };
            let w = &mut writers[i];
            w.ring.busy().store(true, Ordering::SeqCst);
            if w.ring.closed().load(Ordering::SeqCst) {
                w.ring.busy().store(false, Ordering::Release);
                writers.swap_remove(i);
                return Some(Pushed::Closed);
            }
            let done = w.append(scratch);
            w.ring.busy().store(false, Ordering::Release);
            Some(if done {
                Pushed::Ring
            } else {
                Pushed::Full(scratch.clone())
            })
        });
        match pushed {
            Ok(Some(p)) => p,
            // The thread is exiting (its locals are gone) or re-entered: the queue takes it.
            _ => {
                if self.closed.load(Ordering::SeqCst) {
                    return Pushed::Closed;
                }
                let mut line = Vec::new();
                if let Some(encode) = encode.take() {
                    encode(&mut line);
                }
                Pushed::Full(line)
            }
        }
    }

    fn register(&self) -> Writer {
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let ring = Arc::new(Ring::new(self.ring_bytes, self.closed.load(Ordering::SeqCst)));
        rings.push(ring.clone());
        Writer {
            hub: self.id,
            ring,
            head: 0,
            records: 0,
            tail_seen: 0,
        }
    }

    /// Hands each record in the rings (with its newline) to `take`, oldest first within a ring,
    /// at most `max` of them; returns how many. The pipeline thread is the only caller.
    pub fn drain(&self, max: usize, mut take: impl FnMut(&[u8])) -> usize {
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        // A ring whose thread has exited and that is empty has nothing more to give.
        rings.retain(|r| Arc::strong_count(r) > 1 || r.depth() > 0);
        let n = rings.len();
        if n == 0 {
            return 0;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut taken = 0;
        for ring in rings[start..].iter().chain(&rings[..start]) {
            let cap = ring.cap;
            let head = ring.head().load(Ordering::Acquire);
            let mut tail = ring.tail().load(Ordering::Relaxed);
            let mut records = 0;
            while tail != head && taken < max {
                let pos = tail & (cap - 1);
                // SAFETY: bytes between tail and head were published by the writer (acquire
                // above), which does not touch them until the tail passes them.
                let len = unsafe { ring.read_u32(pos) };
                if len == SKIP {
                    tail += cap - pos;
                    continue;
                }
                let len = len as usize;
                // SAFETY: as above; a frame never wraps.
                take(unsafe { std::slice::from_raw_parts(ring.buf.add(pos + 4), len) });
                tail += frame_len(len);
                records += 1;
                taken += 1;
            }
            ring.r.0 .1.fetch_add(records, Ordering::Relaxed);
            ring.tail().store(tail, Ordering::Release);
            if taken >= max {
                break;
            }
        }
        taken
    }

    /// Records in the rings, not yet drained.
    pub fn depth(&self) -> u64 {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings.iter().map(|r| r.depth()).sum()
    }

    /// Refuses every push from now on and waits out the ones in progress; after this,
    /// [`Hub::drain`] sees every record there will ever be.
    pub fn close(&self) {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, Ordering::SeqCst);
        for ring in rings.iter() {
            ring.closed().store(true, Ordering::SeqCst);
        }
        for ring in rings.iter() {
            while ring.busy().load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: usize, len: usize) -> Vec<u8> {
        let mut v = format!("{{\"n\":{i},\"pad\":\"").into_bytes();
        v.resize(len.max(v.len() + 3) - 3, b'x');
        v.extend_from_slice(b"\"}\n");
        v
    }

    fn drain_all(hub: &Hub) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        hub.drain(usize::MAX, |r| out.push(r.to_vec()));
        out
    }

    #[test]
    fn frames_wrap_with_a_skip_and_a_full_ring_hands_the_record_back() {
        let hub = Hub::new(1024);
        // 100-byte records in 104-byte frames: 9 fit, the 10th does not.
        let recs: Vec<_> = (0..10).map(|i| line(i, 100)).collect();
        for r in &recs[..9] {
            assert_eq!(hub.push(|b| b.extend_from_slice(r)), Pushed::Ring);
        }
        assert_eq!(
            hub.push(|b| b.extend_from_slice(&recs[9])),
            Pushed::Full(recs[9].clone())
        );
        assert_eq!(hub.depth(), 9);
        assert_eq!(drain_all(&hub), recs[..9]);
        assert_eq!(hub.depth(), 0);
        // 936 bytes used: the next frame does not fit before the end, so it wraps to 0.
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(hub.push(|b| b.extend_from_slice(r)), Pushed::Ring, "record {i}");
            if i % 3 == 2 {
                assert_eq!(drain_all(&hub), recs[i - 2..=i]);
            }
        }
        assert_eq!(drain_all(&hub), recs[9..]);
        // Too big for a ring at all: handed back.
        let big = line(0, 600);
        assert_eq!(hub.push(|b| b.extend_from_slice(&big)), Pushed::Full(big.clone()));
    }

    #[test]
    fn drain_takes_at_most_max_and_keeps_the_rest() {
        let hub = Hub::new(4096);
        for i in 0..20 {
            hub.push(|b| b.extend_from_slice(&line(i, 50)));
        }
        let mut got = Vec::new();
        assert_eq!(hub.drain(7, |r| got.push(r.to_vec())), 7);
        assert_eq!(hub.depth(), 13);
        assert_eq!(hub.drain(100, |r| got.push(r.to_vec())), 13);
        assert_eq!(got, (0..20).map(|i| line(i, 50)).collect::<Vec<_>>());
    }

    #[test]
    fn every_record_from_every_thread_arrives_once_and_in_order_until_close() {
        let hub = Hub::new(2048);
        let threads = 4;
        let per = 20_000;
        let stop = Arc::new(AtomicBool::new(false));
        let pushes = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..threads)
            .map(|t| {
                let hub = hub.clone();
                let pushes = pushes.clone();
                std::thread::spawn(move || {
                    let (mut ring, mut full, mut closed) = (Vec::new(), 0, 0);
                    // Every writer is still pushing when the reader closes the hub.
                    let mut i = 0;
                    while i < per || closed == 0 {
                        pushes.fetch_add(1, Ordering::Relaxed);
                        let rec = format!("{{\"t\":{t},\"i\":{i}}}\n");
                        match hub.push(|b| b.extend_from_slice(rec.as_bytes())) {
                            Pushed::Ring => ring.push(i),
                            Pushed::Full(r) => {
                                assert_eq!(r, rec.as_bytes());
                                full += 1
                            }
                            Pushed::Closed => closed += 1,
                        }
                        i += 1;
                    }
                    (ring, full, closed, i)
                })
            })
            .collect();
        let reader = {
            let hub = hub.clone();
            let stop = stop.clone();
            let pushes = pushes.clone();
            std::thread::spawn(move || {
                let mut seen: Vec<Vec<usize>> = vec![Vec::new(); threads];
                let mut take = |r: &[u8]| {
                    let v: serde_json::Value = serde_json::from_slice(r).unwrap();
                    seen[v["t"].as_u64().unwrap() as usize].push(v["i"].as_u64().unwrap() as usize);
                };
                let mut closed = false;
                while !stop.load(Ordering::Relaxed) {
                    hub.drain(64, &mut take);
                    if !closed && pushes.load(Ordering::Relaxed) >= threads * per / 2 {
                        hub.close();
                        closed = true;
                    }
                }
                hub.drain(usize::MAX, &mut take);
                assert_eq!(hub.depth(), 0);
                seen
            })
        };
        let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        let seen = reader.join().unwrap();
        let mut through_rings = 0;
        for (t, (ring, full, closed, pushed)) in results.into_iter().enumerate() {
            assert_eq!(
                seen[t], ring,
                "thread {t}: what went into the ring comes out, once, in order"
            );
            assert_eq!(ring.len() + full + closed, pushed);
            assert!(closed > 0);
            through_rings += ring.len();
        }
        assert!(through_rings > 0);
        assert_eq!(hub.push(|b| b.push(b'\n')), Pushed::Closed);
    }

    #[test]
    fn an_exited_threads_ring_is_drained_then_let_go() {
        let hub = Hub::new(1024);
        let h = hub.clone();
        std::thread::spawn(move || assert_eq!(h.push(|b| b.extend_from_slice(b"{}\n")), Pushed::Ring))
            .join()
            .unwrap();
        assert_eq!(hub.rings.lock().unwrap().len(), 1);
        assert_eq!(drain_all(&hub), [b"{}\n".to_vec()]);
        drain_all(&hub);
        assert_eq!(hub.rings.lock().unwrap().len(), 0);
    }
}
