//! cartlink: the smart-link edge server for creator commerce.
//!
//! - `config`: TOML + environment → validated `Settings` (secrets from the environment only).
//! - `links`: the links file → an immutable table with every destination pre-rendered;
//!   `links::signature` signs and verifies link ids.
//! - `state`: the table and request settings as a `Snapshot` behind `ArcSwap`; reloads.
//! - `redirect`: the public hot path, top to bottom; `redirect::cookie` the attribution cookie.
//! - `audience`: device, bots, anonymised addresses.
//! - `clicks`: click records, the never-waiting recorder, the batching pipeline and sinks.
//! - `server`: listeners, HTTP/1.1 + HTTP/2, shutdown phases; `admin`: the private listener.
//! - `metrics`: every metric name in one place.
//! - `prefetch`: cache hints for the hot path.
//! - `cli`: what `cartlink serve | mint | check` do.

pub mod admin;
pub mod audience;
pub mod cli;
pub mod clicks;
pub mod commerce;
pub mod config;
pub mod huge_slice;
pub mod links;
pub mod metrics;
pub mod prefetch;
pub mod redirect;
pub mod server;
pub mod state;

/// A fresh path under the system temp directory for one unit test (not created; removed if
/// left over), unique per process and call.
#[cfg(test)]
pub(crate) fn scratch_dir(prefix: &str, name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cartlink-{prefix}-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
