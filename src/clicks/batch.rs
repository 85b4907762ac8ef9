//! A batch: encoded click records (JSON Lines, each ending in `\n`) back to back, with the end
//! offset of each record so sinks that publish per record (NATS) and the spill (which frames
//! each record) can split it without parsing.

use super::Click;

#[derive(Debug, Default, Clone)]
pub struct Batch {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn push_click(&mut self, click: &Click, edge: &str) {
        click.encode(edge, &mut self.data);
        self.ends.push(self.data.len());
    }

    /// Adds one already-encoded record (with its newline).
    pub fn push_raw(&mut self, record: &[u8]) {
        self.data.extend_from_slice(record);
        self.ends.push(self.data.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The JSON Lines body.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Each record with its trailing newline.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let r = &self.data[start..end];
            start = end;
            r
        })
    }
}

/// The `click_id` of an encoded record (the 36 characters after `"click_id":"`).
pub fn click_id_of(record: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"click_id\":\"";
    let at = memchr::memmem::find(record, KEY)? + KEY.len();
    std::str::from_utf8(record.get(at..at + 36)?).ok()
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
        assert_eq!(
            ids,
            [
                "0190c4f2-0000-7000-8000-000000000001",
                "0190c4f2-0000-7000-8000-000000000002"
            ]
        );
        assert_eq!(b.records().map(<[u8]>::len).sum::<usize>(), b.bytes());
    }
}
