//! The links table's index: open addressing with linear probing over one flat array of
//! `{hash, link}` slots, at most two thirds full.
//!
//! Where a lookup starts is computed from the hash alone, so the redirect path can ask for
//! that cache line before it checks the signature, read it after, and ask for the link's own
//! memory then ([`Index::home`], [`Index::candidate`]): two cache misses, each overlapped with
//! other work, where a SIMD-group table (control bytes, then the entry) had two in a row.
//!
//! Keys come only from the links file, never from visitors, so the probe lengths are set by the
//! file's ids; a visitor's made-up id only reads a few slots.
//!
//! The slots live in a [`HugeSlice`](crate::huge_slice::HugeSlice), on 2 MiB pages: a
//! lookup's first read lands anywhere in an array of megabytes, and on 4 KiB pages it missed
//! the TLB as well as the cache (in `perf`, the redirect's longest stall).

use super::Link;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Slot {
    hash: u64,
    link: Option<Arc<Link>>,
}

#[derive(Debug, Default)]
pub struct Index {
    slots: Slots,
    len: usize,
}

impl Index {
    /// Room for `n` links without growing.
    pub fn with_capacity(n: usize) -> Index {
        Index {
            slots: Slots::new(slots_for(n)),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Adds `link` under `hash`, or hands it back if a link with its id is there.
    pub fn insert(&mut self, hash: u64, link: Arc<Link>) -> Result<(), Arc<Link>> {
        if (self.len + 1) * 3 > self.slots.len() * 2 {
            self.grow();
        }
        let mut i = self.start(hash);
        loop {
            let slot = &mut self.slots[i];
            match &slot.link {
                None => {
                    *slot = Slot { hash, link: Some(link) };
                    self.len += 1;
                    return Ok(());
                }
                Some(l) if slot.hash == hash && l.id == link.id => return Err(link),
                Some(_) => i = self.next(i),
            }
        }
    }

    pub fn find(&self, hash: u64, id: &[u8]) -> Option<&Arc<Link>> {
        self.probe(hash)
            .find(|s| s.hash == hash && s.link.as_ref().is_some_and(|l| l.id.as_bytes() == id))?
            .link
            .as_ref()
    }

    /// The first link stored under `hash`, without comparing ids: almost always the answer,
    /// and it can be read before the link's own memory arrives.
    pub fn candidate(&self, hash: u64) -> Option<&Arc<Link>> {
        self.probe(hash).find(|s| s.hash == hash)?.link.as_ref()
    }

    /// Where a lookup of `hash` starts, to prefetch.
    pub fn home(&self, hash: u64) -> *const Slot {
        if self.slots.is_empty() {
            return std::ptr::null();
        }
        self.slots.as_ptr().wrapping_add(self.start(hash))
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Arc<Link>)> {
        self.slots.iter().filter_map(|s| Some((s.hash, s.link.as_ref()?)))
    }

    /// The occupied slots from where `hash` starts, up to the first empty one.
    fn probe(&self, hash: u64) -> impl Iterator<Item = &Slot> {
        let start = if self.slots.is_empty() { 0 } else { self.start(hash) };
        let (tail, head) = self.slots.split_at(start);
        head.iter().chain(tail).take_while(|s| s.link.is_some())
    }

    /// Fibonacci hashing: the product's top bits, which every bit of the hash reaches.
    fn start(&self, hash: u64) -> usize {
        let bits = self.slots.len().trailing_zeros();
        (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
    }

    fn next(&self, i: usize) -> usize {
        (i + 1) & (self.slots.len() - 1)
    }

    fn grow(&mut self) {
        let bigger = Slots::new(slots_for(self.len + 1).max(self.slots.len() * 2));
        let mut old = std::mem::replace(&mut self.slots, bigger);
        for slot in old.iter_mut().map(std::mem::take) {
            if slot.link.is_some() {
                let mut i = self.start(slot.hash);
                while self.slots[i].link.is_some() {
                    i = self.next(i);
                }
                self.slots[i] = slot;
            }
        }
    }
}

/// A power of two at least 1.5 times `n` (at least 8), so a full table is two thirds full.
fn slots_for(n: usize) -> usize {
    (n + n / 2).max(8).next_power_of_two()
}

/// The slot array, on huge pages (see the module comment).
type Slots = crate::huge_slice::HugeSlice<Slot>;

#[cfg(test)]
mod tests {
    use super::*;

    fn link(id: &str) -> Arc<Link> {
        let line = format!(
            r#"{{"id":"{id}","creator":"c","campaign":"k","target":{{"type":"url","url":"https://a.example/"}}}}"#
        );
        super::super::parse(&line, "t", &super::super::signature::demo())
            .unwrap()
            .get(id.as_bytes())
            .unwrap()
            .clone()
    }

    #[test]
    fn finds_every_link_through_growth_and_refuses_duplicates() {
        let mut index = Index::default();
        let ids: Vec<String> = (0..2000).map(|i| format!("l{i}")).collect();
        for id in &ids {
            assert!(index.insert(super::super::hash_id(id.as_bytes()), link(id)).is_ok());
        }
        assert!(
            index.insert(super::super::hash_id(b"l7"), link("l7")).is_err(),
            "duplicate"
        );
        assert_eq!(index.len(), 2000);
        assert!(index.len() * 3 <= index.slots.len() * 2, "at most two thirds full");
        for id in &ids {
            let found = index.find(super::super::hash_id(id.as_bytes()), id.as_bytes());
            assert_eq!(found.map(|l| &*l.id), Some(id.as_str()));
        }
        assert!(index.find(super::super::hash_id(b"l2000"), b"l2000").is_none());
        assert_eq!(index.iter().count(), 2000);
    }

    #[test]
    fn probes_wrap_around_the_end_and_skip_other_ids_under_the_same_hash() {
        let mut index = Index::with_capacity(4);
        let n = index.slots.len();
        // A hash whose probe starts at the last slot: four links under it fill that slot and
        // wrap to the front.
        let hash = (0..u64::MAX).find(|h| index.start(*h) == n - 1).unwrap();
        for id in ["a", "b", "c", "d"] {
            assert!(index.insert(hash, link(id)).is_ok());
        }
        for id in ["a", "b", "c", "d"] {
            assert_eq!(index.find(hash, id.as_bytes()).map(|l| &*l.id), Some(id));
        }
        assert_eq!(
            index.candidate(hash).map(|l| &*l.id),
            Some("a"),
            "the first under the hash"
        );
        assert!(index.find(hash, b"e").is_none());
        assert!(index.candidate(hash ^ 1).is_none());
    }

    #[test]
    fn a_large_slot_array_is_on_huge_pages_and_frees_its_links() {
        let kept = link("kept");
        let mut index = Index::with_capacity(200_000);
        assert!(index.slots.len() * std::mem::size_of::<Slot>() >= 4 << 20);
        assert!(index.insert(7, kept.clone()).is_ok());
        assert_eq!(Arc::strong_count(&kept), 2);
        let huge = super::super::smaps::kb_at(index.slots.as_ptr() as usize, "AnonHugePages:");
        if super::super::smaps::thp_on() {
            assert!(huge.is_some_and(|kb| kb >= 2048), "AnonHugePages {huge:?} kB");
        } else {
            eprintln!("transparent huge pages off here: not checked");
        }
        drop(index);
        assert_eq!(Arc::strong_count(&kept), 1, "the index's reference is dropped with it");
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let index = Index::default();
        assert!(index.find(1, b"a").is_none() && index.candidate(1).is_none() && index.home(1).is_null());
    }
}
