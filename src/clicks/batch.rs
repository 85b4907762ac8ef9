//! A batch: encoded click records (JSON Lines, each ending in `\n`), each kept in the buffer
//! the redirect path encoded it into. Nothing copies them into one body on the way: the file
//! sink hands them to the kernel as one vectored write, NATS publishes each, the spill frames
//! each; only the HTTP sink joins them (into its gzip stream or request body).

use super::Record;
use std::io::IoSlice;

#[derive(Debug, Default, Clone)]
pub struct Batch {
    records: Vec<Record>,
    bytes: usize,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// An empty batch with room for as many records as `like`.
    pub fn sized_like(like: &Batch) -> Batch {
        Batch {
            records: Vec::with_capacity(like.records.len()),
            bytes: 0,
        }
    }

    /// Adds one encoded record (with its newline), without copying it.
    pub fn push(&mut self, record: Record) {
        self.bytes += record.len();
        self.records.push(record);
    }

    /// Adds a copy of one encoded record (with its newline).
    pub fn push_raw(&mut self, record: &[u8]) {
        self.push(record.to_vec());
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Each record with its trailing newline.
    pub fn records(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.records.iter().map(Vec::as_slice)
    }

    /// The records as the slices of one vectored write (the JSON Lines body, in order).
    pub fn io_slices(&self) -> Vec<IoSlice<'_>> {
        self.records().map(IoSlice::new).collect()
    }

    /// The JSON Lines body in one buffer.
    pub fn concat(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.bytes);
        self.records().for_each(|r| body.extend_from_slice(r));
        body
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
        assert_eq!(b.concat(), b.records().collect::<Vec<_>>().concat());
        assert_eq!(b.io_slices().iter().map(|s| s.len()).sum::<usize>(), b.bytes());
    }
}
