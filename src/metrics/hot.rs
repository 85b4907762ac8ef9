//! The metrics the redirect path moves on every request, kept and rendered by cartlink itself:
//! one relaxed atomic add each.
//!
//! The exporter's handles do two atomic read-modify-writes per update (the value and a
//! generation count, for idle expiry cartlink does not use) behind a virtual call, and its
//! histograms queue every sample under an epoch pin until the next upkeep folds them. Per
//! request that came to five counters, a gauge and a histogram sample. Each family here is
//! rendered whole, with its HELP and TYPE lines, after the exporter's text.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A monotonic count.
#[derive(Clone, Default)]
pub struct Count(Arc<AtomicU64>);

impl Count {
    pub fn increment(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A level that moves by whole steps (records buffered).
#[derive(Clone, Default)]
pub struct Level(Arc<AtomicI64>);

impl Level {
    pub fn increment(&self, n: u64) {
        self.0.fetch_add(n as i64, Ordering::Relaxed);
    }

    pub fn decrement(&self, n: u64) {
        self.0.fetch_sub(n as i64, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram over fixed bounds in seconds: per sample, one add to its bucket and one
/// to the sum (in nanoseconds).
pub struct Latency {
    bounds_ns: Box<[u64]>,
    bounds_text: Box<[String]>,
    /// One per bound, then `+Inf`; not cumulative (summed when rendered).
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Latency {
    pub fn new(bounds_s: &[f64]) -> Latency {
        Latency {
            bounds_ns: bounds_s.iter().map(|b| (b * 1e9).round() as u64).collect(),
            bounds_text: bounds_s.iter().map(f64::to_string).collect(),
            buckets: (0..=bounds_s.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // The first bound at or above the sample (Prometheus buckets are `le`).
        let i = self.bounds_ns.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut total = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            total += bucket.load(Ordering::Relaxed);
            let le = self.bounds_text.get(i).map_or("+Inf", String::as_str);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {total}");
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

/// Renders one counter family: `name{label="value"} n` for each member (no braces when the
/// label is empty).
pub fn render_counters(out: &mut String, name: &str, help: &str, label: &str, members: &[(&str, &Count)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, count) in members {
        if label.is_empty() {
            let _ = writeln!(out, "{name} {}", count.get());
        } else {
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {}", count.get());
        }
    }
}

pub fn render_level(out: &mut String, name: &str, help: &str, level: &Level) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", level.get());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_first_bucket_at_or_above_them() {
        let h = Latency::new(&[0.001, 0.01]);
        for us in [1, 1000, 1001, 10_000, 10_001, 5_000_000] {
            h.record(Duration::from_micros(us));
        }
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "# HELP x_seconds help",
                "# TYPE x_seconds histogram",
                "x_seconds_bucket{le=\"0.001\"} 2",
                "x_seconds_bucket{le=\"0.01\"} 4",
                "x_seconds_bucket{le=\"+Inf\"} 6",
                "x_seconds_sum 5.022003",
                "x_seconds_count 6",
            ]
        );
    }

    #[test]
    fn levels_go_both_ways_and_counters_render_with_and_without_labels() {
        let l = Level::default();
        l.increment(5);
        l.decrement(7);
        assert_eq!(l.get(), -2);
        let (a, b) = (Count::default(), Count::default());
        a.increment(3);
        let mut out = String::new();
        render_counters(&mut out, "c_total", "h", "kind", &[("a", &a), ("b", &b)]);
        render_counters(&mut out, "d_total", "h", "", &[("", &a)]);
        assert!(out.contains("c_total{kind=\"a\"} 3\nc_total{kind=\"b\"} 0\n"), "{out}");
        assert!(out.contains("# TYPE d_total counter\nd_total 3\n"), "{out}");
    }
}
