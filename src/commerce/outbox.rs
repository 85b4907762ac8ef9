//! The payout outbox: commission records waiting for the payout system, on disk under
//! `<data_dir>/payout/`, so that a commission Shopify was told about is never lost and never
//! paid twice on purpose, across restarts too. [`super::payout`] reads it and posts.
//!
//! # Files
//!
//! `journal`: append-only, one event per line:
//!
//! ```text
//! q <record>\n           queued: the exact JSON body to POST (the commission record, as in the stream)
//! d <commission_id>\n    delivered: the payout system answered 2xx
//! x <commission_id>\n    dead-lettered: refused for good; the record is in dead-letter.jsonl
//! ```
//!
//! `dead-letter.jsonl`: one `{"ts":…,"error":…,"record":<record>}` per refused record, for an
//! operator to look at (and, once the cause is fixed, to post again by hand).
//!
//! # Invariants
//!
//! 1. Durable before answered: [`Outbox::enqueue`] appends the `q` lines and `fdatasync`s
//!    before it returns, and the webhook is answered 200 only after that.
//! 2. Once per commission id: every id in the journal (queued, delivered or dead-lettered) is
//!    *known*, and a known id is never queued again, after a restart too. Ids are kept for
//!    good (about 40 bytes each, in memory and on disk).
//! 3. Pending = the `q` lines whose id has no `d` or `x` line, in journal order; the sender
//!    posts them oldest first, one at a time, after a restart too.
//! 4. A `d` or `x` line is written (and synced) after the answer: a crash in between re-sends
//!    that record once after the restart, with the same `Idempotency-Key`. At least once;
//!    a duplicate only around a crash.
//! 5. Torn tail: bytes after the last `\n` (a crash mid-append) are cut off at open. They were
//!    never synced, so their webhook was never answered 200 and Shopify delivers it again. A
//!    failed append is cut back to the last whole line the same way.
//! 6. Compaction at open: when resolved records are still there in full, the journal is
//!    rewritten as `d`/`x` lines for resolved ids and `q` lines for pending records, written
//!    to `journal.tmp`, synced and renamed over `journal` (then the directory is synced).

use super::journal::{self, Journal};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

const JOURNAL: &str = "journal";
const DEAD_LETTER: &str = "dead-letter.jsonl";

/// A record waiting for the payout system.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: Arc<str>,
    pub body: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    Delivered,
    Dead,
}

/// What [`Outbox::open`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    pub pending: usize,
    pub known: usize,
    /// Bytes of a torn tail cut off.
    pub torn_bytes: u64,
    /// Lines that were not events (never written by cartlink); skipped.
    pub bad_lines: usize,
    pub compacted: bool,
}

/// What one [`Outbox::enqueue`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// The ids queued now, in order.
    pub queued: Vec<Arc<str>>,
    /// Ids already known (queued, delivered or dead-lettered before): not queued again.
    pub duplicates: usize,
}

pub struct Outbox {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    journal: Journal,
    known: HashMap<Arc<str>, State>,
    pending: VecDeque<Pending>,
}

impl Outbox {
    /// Opens (creating) `dir`, cuts a torn tail, compacts, and indexes what is pending.
    pub fn open(dir: &Path) -> io::Result<(Outbox, Opened)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(JOURNAL);
        let (text, torn_bytes) = journal::read(&path)?;
        let mut opened = Opened {
            torn_bytes,
            ..Opened::default()
        };
        let mut known: HashMap<Arc<str>, State> = HashMap::new();
        let mut queued: Vec<Pending> = Vec::new();
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match parse_line(line) {
                Some((b'q', id, body)) => {
                    let id: Arc<str> = id.into();
                    if !known.contains_key(&id) {
                        known.insert(id.clone(), State::Queued);
                        queued.push(Pending {
                            id,
                            body: Bytes::copy_from_slice(body),
                        });
                    }
                }
                Some((op, id, _)) => {
                    let state = if op == b'd' { State::Delivered } else { State::Dead };
                    known.insert(id.into(), state);
                }
                None => opened.bad_lines += 1,
            }
        }
        let resolved_in_full = queued.len() - queued.iter().filter(|p| known[&p.id] == State::Queued).count();
        let pending: VecDeque<Pending> = queued.into_iter().filter(|p| known[&p.id] == State::Queued).collect();
        let len = if resolved_in_full > 0 || opened.bad_lines > 0 {
            match compact(dir, &known, &pending) {
                Ok(len) => {
                    opened.compacted = true;
                    len
                }
                // Compacting only saves space: a full disk must not keep the server down.
                Err(e) => {
                    tracing::warn!(error = %e, "payout outbox: journal not compacted; it stays as it is");
                    let tmp = dir.join("journal.tmp");
                    if tmp.exists() {
                        let _ = std::fs::remove_file(&tmp);
                        text.len() as u64
                    } else {
                        // Renamed over before the failure: the compacted file is the journal.
                        std::fs::metadata(&path)?.len()
                    }
                }
            }
        } else {
            text.len() as u64
        };
        let journal = Journal::open(&path, len)?;
        opened.pending = pending.len();
        opened.known = known.len();
        let inner = Inner {
            journal,
            known,
            pending,
        };
        Ok((
            Outbox {
                dir: dir.to_path_buf(),
                inner: Mutex::new(inner),
            },
            opened,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the journal as consistent as a crash would.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues every `(commission_id, body)` whose id is not known yet, durably (synced)
    /// before it returns. On an error nothing of this call is queued.
    pub fn enqueue(&self, records: &[(Arc<str>, Bytes)]) -> io::Result<Enqueued> {
        let mut inner = self.lock();
        let mut out = Enqueued::default();
        let mut lines = Vec::new();
        let mut fresh: Vec<&(Arc<str>, Bytes)> = Vec::new();
        for r in records {
            let (id, body) = r;
            if inner.known.contains_key(id) || fresh.iter().any(|(f, _)| f == id) {
                out.duplicates += 1;
                continue;
            }
            let start = lines.len();
            lines.extend_from_slice(b"q ");
            lines.extend_from_slice(body);
            // Written only if it reads back as this record: one line, JSON, this id.
            let reads_back =
                !body.contains(&b'\n') && parse_line(&lines[start..]).is_some_and(|(_, read, _)| read == **id);
            if !reads_back {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a payout record must be one line of JSON whose commission_id is its printable id",
                ));
            }
            lines.push(b'\n');
            fresh.push(r);
        }
        if !fresh.is_empty() {
            inner.journal.append(&lines)?;
        }
        for (id, body) in fresh {
            inner.known.insert(id.clone(), State::Queued);
            inner.pending.push_back(Pending {
                id: id.clone(),
                body: body.clone(),
            });
            out.queued.push(id.clone());
        }
        Ok(out)
    }

    /// Whether `id` was ever queued (pending, delivered or dead-lettered).
    pub fn knows(&self, id: &str) -> bool {
        self.lock().known.contains_key(id)
    }

    /// The oldest pending record.
    pub fn front(&self) -> Option<Pending> {
        self.lock().pending.front().cloned()
    }

    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// The payout system took `id`. It leaves the pending list even if the line cannot be
    /// written (then a restart sends it once more).
    pub fn delivered(&self, id: &str) -> io::Result<()> {
        let mut inner = self.lock();
        inner.resolve(id, State::Delivered);
        inner.journal.append(format!("d {id}\n").as_bytes())
    }

    /// The payout system refused `p` for good: it goes to `dead-letter.jsonl` with `error`,
    /// then leaves the pending list. If the dead letter cannot be written, the journal keeps
    /// the record pending, so a restart tries it again.
    pub fn dead_letter(&self, p: &Pending, error: &str, ts: &str) -> io::Result<()> {
        let mut inner = self.lock();
        inner.resolve(&p.id, State::Dead);
        let mut line = Vec::with_capacity(p.body.len() + 96);
        line.extend_from_slice(b"{\"ts\":");
        serde_json::to_writer(&mut line, ts)?;
        line.extend_from_slice(b",\"error\":");
        serde_json::to_writer(&mut line, error)?;
        line.extend_from_slice(b",\"record\":");
        line.extend_from_slice(&p.body);
        line.extend_from_slice(b"}\n");
        let mut dead = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(DEAD_LETTER))?;
        let before = dead.metadata()?.len();
        if let Err(e) = dead.write_all(&line).and_then(|()| dead.sync_data()) {
            // Cut back, so the next dead letter does not join a torn line.
            let _ = dead.set_len(before);
            return Err(e);
        }
        inner.journal.append(format!("x {}\n", p.id).as_bytes())
    }
}

impl Inner {
    fn resolve(&mut self, id: &str, state: State) {
        if let Some(i) = self.pending.iter().position(|p| &*p.id == id) {
            let p = self.pending.remove(i).expect("position is in range");
            self.known.insert(p.id, state);
        }
    }
}

/// `(op, commission_id, body)` of one journal line; the body is empty for `d` and `x`.
fn parse_line(line: &[u8]) -> Option<(u8, String, &[u8])> {
    let (&op, rest) = line.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    let id = match op {
        b'q' => {
            let v: serde_json::Value = serde_json::from_slice(rest).ok()?;
            v.get("commission_id")?.as_str()?.to_string()
        }
        b'd' | b'x' => std::str::from_utf8(rest).ok()?.to_string(),
        _ => return None,
    };
    let body = if op == b'q' { rest } else { &[][..] };
    valid_id(&id).then_some((op, id, body))
}

/// Ids are ours (`shopify:ORDER:paid`…): printable ASCII without spaces, so they fit a line
/// and a header value.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Rewrites the journal with resolved ids as one short line each and pending records in full.
fn compact(dir: &Path, known: &HashMap<Arc<str>, State>, pending: &VecDeque<Pending>) -> io::Result<u64> {
    let mut text = Vec::new();
    for (id, state) in known {
        match state {
            State::Delivered => text.extend_from_slice(format!("d {id}\n").as_bytes()),
            State::Dead => text.extend_from_slice(format!("x {id}\n").as_bytes()),
            State::Queued => {}
        }
    }
    for p in pending {
        text.extend_from_slice(b"q ");
        text.extend_from_slice(&p.body);
        text.push(b'\n');
    }
    let tmp = dir.join("journal.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(JOURNAL))?;
    journal::sync_dir(dir)?;
    Ok(text.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scratch(name: &str) -> PathBuf {
        crate::scratch_dir("outbox", name)
    }

    fn record(n: u8) -> (Arc<str>, Bytes) {
        let id = format!("shopify:{n}:paid");
        let amount = -100 * i64::from(n);
        let body = format!(r#"{{"amount_minor":{amount},"commission_id":"{id}","note":"a \"q\" x"}}"#);
        (id.into(), Bytes::from(body))
    }

    fn ids(o: &Outbox) -> Vec<String> {
        o.lock().pending.iter().map(|p| p.id.to_string()).collect()
    }

    #[test]
    fn survives_reopen_cuts_a_torn_tail_and_keeps_dead_letters() {
        let dir = scratch("basic");
        let (o, opened) = Outbox::open(&dir).unwrap();
        assert_eq!(opened, Opened::default());
        let unreadable = (
            Arc::from("shopify:5:paid"),
            Bytes::from_static(br#"{"commission_id":"other"}"#),
        );
        assert!(
            o.enqueue(&[record(1), unreadable]).is_err(),
            "a line that would not read back"
        );
        assert_eq!(o.pending(), 0, "nothing of a refused call is queued");
        let r = o.enqueue(&[record(1), record(2), record(1)]).unwrap();
        assert_eq!(
            r,
            Enqueued {
                queued: vec!["shopify:1:paid".into(), "shopify:2:paid".into()],
                duplicates: 1
            }
        );
        o.delivered("shopify:1:paid").unwrap();
        let p2 = o.front().unwrap();
        assert_eq!(p2.body, record(2).1, "the exact bytes");
        o.dead_letter(&p2, "status_4xx (HTTP 400)", "2026-12-05T00:00:00.000Z")
            .unwrap();
        o.enqueue(&[record(3)]).unwrap();
        drop(o);
        // A crash mid-append: half a line at the end.
        let mut j = OpenOptions::new().append(true).open(dir.join(JOURNAL)).unwrap();
        j.write_all(b"q {\"commission_id\":\"shopify:4:pa").unwrap();
        drop(j);
        let (o, opened) = Outbox::open(&dir).unwrap();
        assert_eq!((opened.pending, opened.known, opened.compacted), (1, 3, true));
        assert!(opened.torn_bytes > 0);
        assert_eq!(ids(&o), ["shopify:3:paid"]);
        assert_eq!(
            o.enqueue(&[record(1), record(2), record(3), record(4)]).unwrap(),
            Enqueued {
                queued: vec!["shopify:4:paid".into()],
                duplicates: 3
            },
            "delivered, dead and queued ids are all known after a restart"
        );
        let dead = std::fs::read_to_string(dir.join(DEAD_LETTER)).unwrap();
        let v: serde_json::Value = serde_json::from_str(dead.trim_end()).unwrap();
        assert_eq!(v["record"]["amount_minor"], -200);
        assert_eq!(v["error"], "status_4xx (HTTP 400)");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Compacting at start only saves space: when it cannot write (a full disk; here the
    /// scratch name is taken by a directory), the outbox opens on the journal as it is.
    #[test]
    fn a_compaction_that_cannot_write_leaves_the_journal_and_opens() {
        let dir = scratch("compact-fails");
        let (o, _) = Outbox::open(&dir).unwrap();
        o.enqueue(&[record(1), record(2)]).unwrap();
        o.delivered("shopify:1:paid").unwrap();
        drop(o);
        std::fs::create_dir(dir.join("journal.tmp")).unwrap();
        let (o, opened) = Outbox::open(&dir).unwrap();
        assert_eq!((opened.pending, opened.known, opened.compacted), (1, 2, false));
        assert_eq!(ids(&o), ["shopify:2:paid"]);
        o.enqueue(&[record(3)]).unwrap();
        drop(o);
        std::fs::remove_dir(dir.join("journal.tmp")).unwrap();
        let (o, opened) = Outbox::open(&dir).unwrap();
        assert_eq!((opened.pending, opened.compacted), (2, true));
        assert_eq!(ids(&o), ["shopify:2:paid", "shopify:3:paid"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_append_queues_nothing_and_the_next_one_lands_whole() {
        let dir = scratch("full");
        let (o, _) = Outbox::open(&dir).unwrap();
        o.enqueue(&[record(1)]).unwrap();
        let journal = std::mem::replace(
            &mut o.lock().journal.file,
            OpenOptions::new().append(true).open("/dev/full").unwrap(),
        );
        assert!(o.enqueue(&[record(2)]).is_err(), "ENOSPC");
        assert_eq!(ids(&o), ["shopify:1:paid"], "nothing of the failed call is queued");
        o.lock().journal.file = journal;
        assert_eq!(
            o.enqueue(&[record(2)]).unwrap().queued.len(),
            1,
            "and it is not taken as known"
        );
        drop(o);
        let (o, opened) = Outbox::open(&dir).unwrap();
        assert_eq!(
            (ids(&o), opened.torn_bytes),
            (vec!["shopify:1:paid".to_string(), "shopify:2:paid".to_string()], 0)
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Enqueue(Vec<u8>),
        Deliver,
        Dead,
        Reopen,
        TearAndReopen(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => proptest::collection::vec(0u8..12, 1..4).prop_map(Op::Enqueue),
            2 => Just(Op::Deliver),
            1 => Just(Op::Dead),
            1 => Just(Op::Reopen),
            1 => (1usize..30).prop_map(Op::TearAndReopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Against a model: a known set and a FIFO of pending ids, whatever the sequence of
        /// enqueues, resolutions, restarts and torn tails.
        #[test]
        fn matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = scratch("model");
            let mut o = Outbox::open(&dir).unwrap().0;
            let mut known = std::collections::HashSet::new();
            let mut pending: VecDeque<String> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Enqueue(ns) => {
                        let recs: Vec<_> = ns.iter().map(|&n| record(n)).collect();
                        let mut want = Enqueued::default();
                        for (id, _) in &recs {
                            if known.insert(id.to_string()) {
                                pending.push_back(id.to_string());
                                want.queued.push(id.clone());
                            } else {
                                want.duplicates += 1;
                            }
                        }
                        prop_assert_eq!(o.enqueue(&recs).unwrap(), want);
                    }
                    Op::Deliver | Op::Dead => {
                        if let Some(p) = o.front() {
                            let want = pending.pop_front();
                            prop_assert_eq!(want.as_deref(), Some(&*p.id));
                            if matches!(op, Op::Deliver) {
                                o.delivered(&p.id).unwrap();
                            } else {
                                o.dead_letter(&p, "e", "t").unwrap();
                            }
                        }
                    }
                    Op::Reopen | Op::TearAndReopen(_) => {
                        drop(o);
                        if let Op::TearAndReopen(n) = op {
                            let mut j = OpenOptions::new().append(true).open(dir.join(JOURNAL)).unwrap();
                            j.write_all(&b"q {\"commission_id\":\"shopify:99:paid\",\"x\":1}"[..n]).unwrap();
                        }
                        o = Outbox::open(&dir).unwrap().0;
                    }
                }
                prop_assert_eq!(ids(&o), pending.iter().cloned().collect::<Vec<_>>());
                prop_assert_eq!(o.lock().known.len(), known.len());
            }
            drop(o);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
