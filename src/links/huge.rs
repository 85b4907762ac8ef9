//! Moves a loaded table's links onto 2 MiB pages. A redirect reads one random link and its URL
//! out of hundreds of megabytes; on 4 KiB pages each of those reads missed the TLB as well as
//! the cache (the longest waits in the handler, by `perf`). The links are allocated among
//! other memory by the allocator, so they cannot be mapped apart like the index's slots;
//! instead, once loaded, each 2 MiB region that holds a link or its URL is collapsed in place
//! (`MADV_COLLAPSE`, Linux 6.1+). That costs a few milliseconds per region (1.9 s for 1M
//! links), so it runs on an idle-priority thread after the table serves (`state`). Where the
//! kernel refuses (older kernels, THP off, no free huge page) the table stays on small pages.

const HUGE: usize = 2 << 20;

/// Collapses every 2 MiB region holding one of `addrs`; returns how many were collapsed.
pub fn collapse(addrs: impl Iterator<Item = usize>) -> usize {
    let mut regions: Vec<usize> = addrs.map(|a| a & !(HUGE - 1)).collect();
    regions.sort_unstable();
    regions.dedup();
    regions
        .into_iter()
        // SAFETY: advice only; the contents of the region stay as they are.
        .filter(|&r| unsafe { libc::madvise(r as *mut libc::c_void, HUGE, libc::MADV_COLLAPSE) } == 0)
        .count()
}

#[cfg(test)]
pub(crate) use tests::huge_kb_at;

#[cfg(test)]
mod tests {
    /// `AnonHugePages` of the mapping that holds `addr`, in kB, from `/proc/self/smaps`.
    pub(crate) fn huge_kb_at(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-')) {
                let (a, b) = range.split_once('-')?;
                let (a, b) = (usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?);
                inside = (a..b).contains(&addr);
            } else if let Some(kb) = line.strip_prefix("AnonHugePages:").filter(|_| inside) {
                return kb.trim().trim_end_matches("kB").trim().parse().ok();
            }
        }
        None
    }

    #[test]
    fn memory_on_small_pages_is_collapsed_in_place() {
        // Not advised for huge pages, so under THP `madvise` it starts on 4 KiB pages.
        let mut buf = vec![0u8; 8 << 20];
        for (i, b) in buf.iter_mut().enumerate().step_by(4096) {
            *b = i as u8;
        }
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        let start = buf.as_ptr() as usize;
        let collapsed = super::collapse((start..start + buf.len()).step_by(4096));
        if thp.contains("[never]") || thp.is_empty() {
            eprintln!("transparent huge pages off here: not checked");
        } else {
            assert!(collapsed >= 2, "{collapsed} regions collapsed");
            let huge = huge_kb_at(start + (4 << 20));
            assert!(huge.is_some_and(|kb| kb >= 4096), "AnonHugePages {huge:?} kB");
        }
        // The contents are the same after the move.
        assert!(buf.iter().enumerate().step_by(4096).all(|(i, b)| *b == i as u8));
    }
}
