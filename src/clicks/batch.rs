//! A batch: encoded click records (JSON Lines, each ending in `\n`) in one contiguous body, in
//! order, with where each ends. The pipeline copies each record in once, out of a redirect
//! worker's ring (or the overflow queue); after that nothing copies the body: the file sink
//! hands it to the kernel as one write, the HTTP sink gzips or sends it, NATS publishes each
//! record, the spill frames each.

#[derive(Debug, Default, Clone)]
pub struct Batch {
    body: Vec<u8>,
    /// The end offset of each record in `body`.
    ends: Vec<usize>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// An empty batch with the room `like` had, which grew to the largest batch so far: a batch
    /// flushed early by age would otherwise leave the next one to grow (a reallocation and a copy).
    pub fn sized_like(like: &Batch) -> Batch {
        Batch {
            body: Vec::with_capacity(like.body.capacity()),
            ends: Vec::with_capacity(like.ends.capacity()),
        }
    }

    /// Adds the record `write` appends to the body, if it says it wrote one.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>) -> bool) -> bool {
        let ok = write(&mut self.body);
        if ok {
            self.ends.push(self.body.len());
        }
        ok
    }

    /// Adds a copy of one encoded record (with its newline).
    pub fn push_raw(&mut self, record: &[u8]) {
        self.body.extend_from_slice(record);
        self.ends.push(self.body.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.body.len()
    }

    /// Each record with its trailing newline.
    pub fn records(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.ends.len()).map(|i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.body[start..self.ends[i]]
        })
    }

    /// The JSON Lines body, every record in order.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// The `click_id` of an encoded click (the 36 characters after `"click_id":"`).
pub fn click_id_of(record: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"click_id\":\"";
    let at = memchr::memmem::find(record, KEY)? + KEY.len();
    std::str::from_utf8(record.get(at..at + 36)?).ok()
}

/// A record's own id: the value of `"<type>_id"` (`click_id` for clicks, `conversion_id`,
/// `commission_id`…), whatever the field order.
pub fn record_id_of(record: &[u8]) -> Option<&str> {
    const TYPE: &[u8] = b"\"type\":\"";
    let t = memchr::memmem::find(record, TYPE)? + TYPE.len();
    let t_end = t + memchr::memchr(b'"', &record[t..])?;
    let mut key = Vec::with_capacity(t_end - t + 8);
    key.push(b'"');
    key.extend_from_slice(&record[t..t_end]);
    key.extend_from_slice(b"_id\":\"");
    let at = memchr::memmem::find(record, &key)? + key.len();
    let end = at + memchr::memchr(b'"', &record[at..])?;
    std::str::from_utf8(&record[at..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_records_and_finds_ids() {
        let mut b = Batch::new();
        b.push_raw(b"{\"v\":1,\"click_id\":\"0190c4f2-0000-7000-8000-000000000001\"}\n");
        b.push_raw(b"{\"click_id\":\"0190c4f2-0000-7000-8000-000000000002\",\"x\":1}\n");
        let ids: Vec<_> = b.records().map(|r| click_id_of(r).unwrap()).collect();
        let conv = br#"{"amount":1,"click_id":"0190c4f2-0000-7000-8000-000000000001","conversion_id":"shopify:42","type":"conversion"}"#;
        assert_eq!(record_id_of(conv), Some("shopify:42"));
        assert_eq!(
            record_id_of(b"{\"v\":1,\"type\":\"click\",\"click_id\":\"abc\"}"),
            Some("abc")
        );
        assert_eq!(
            ids,
            [
                "0190c4f2-0000-7000-8000-000000000001",
                "0190c4f2-0000-7000-8000-000000000002"
            ]
        );
        assert_eq!(b.records().map(<[u8]>::len).sum::<usize>(), b.bytes());
        assert_eq!(b.body(), b.records().collect::<Vec<_>>().concat());
        let again = Batch::sized_like(&b);
        assert!(again.is_empty() && again.body.capacity() >= b.bytes());
    }
}
