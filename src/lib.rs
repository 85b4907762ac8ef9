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
pub mod links;
pub mod metrics;
pub mod prefetch;
pub mod redirect;
pub mod server;
pub mod state;
