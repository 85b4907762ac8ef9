//! What requests read: an immutable [`Snapshot`] behind `ArcSwap`, replaced whole.
//!
//! One writer at a time (reloads are serialised by a mutex that requests never touch); a
//! request does one `load()` and sees one consistent table from start to finish. A reload
//! builds the new snapshot aside, validates all of it, and only then stores it; on any error
//! the old snapshot keeps serving, `cartlink_config_reload_failures_total` counts it, and the
//! log says why.

use crate::audience::client_ip::ClientIp;
use crate::audience::geo::GeoDb;
use crate::audience::unique::UniqueFilter;
use crate::clicks::Recorder;
use crate::commerce::inventory::Inventory;
use crate::commerce::ledger::Ledger;
use crate::commerce::payout::Payouts;
use crate::commerce::webhooks::Webhooks;
use crate::config::{Config, CookieSettings, Env, Settings};
use crate::links::config::TargetConfig;
use crate::links::destination::{render, LinkParams};
use crate::links::signature::KeyRing;
use crate::links::{self, Destination, LinkTable};
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Everything a request needs, frozen.
pub struct Snapshot {
    pub generation: u64,
    pub links: LinkTable,
    pub keys: Arc<KeyRing>,
    pub edge: Arc<str>,
    pub view: Arc<View>,
}

/// The reloadable request settings that come from the config file, not the links file.
pub struct View {
    pub cookie: CookieSettings,
    pub brand_fallback: Option<Destination>,
    pub client_ip: ClientIp,
    pub country_header: Option<http::HeaderName>,
    pub geo: Option<GeoDb>,
}

impl View {
    pub fn from_settings(settings: &Settings) -> Result<View, String> {
        let brand_fallback = match &settings.fallback {
            Some(url) => {
                let target = TargetConfig::url(url.clone());
                let params = LinkParams {
                    link_id: "",
                    creator: "",
                    discount: None,
                    utm: &[],
                };
                Some(render(&target, &params, false).map_err(|e| format!("fallback: {e}"))?)
            }
            None => None,
        };
        let geo = settings.geoip.as_deref().map(GeoDb::open).transpose()?;
        Ok(View {
            cookie: settings.cookie.clone(),
            brand_fallback,
            client_ip: settings.client_ip.clone(),
            country_header: settings.country_header.clone(),
            geo,
        })
    }
}

/// Shared by every connection.
pub struct App {
    pub state: ArcSwap<Snapshot>,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub unique: UniqueFilter,
    /// Stock levels; outlives every table (links bind to it when installed).
    pub inventory: Inventory,
    pub webhooks: Arc<Webhooks>,
    /// The payout outbox and sender, when `payout.url` is set.
    pub payouts: Option<Payouts>,
    pub draining: AtomicBool,
    pub admin_token: Option<String>,
    reload: Mutex<ReloadSource>,
    /// The links file being served, readable without waiting for a reload in progress.
    links_file: ArcSwap<PathBuf>,
    /// The links file as `PUT /admin/links` last wrote it (its [`file_stamp`]), so the file
    /// watcher does not load again what that request already installed.
    written: Mutex<Option<FileStamp>>,
}

/// What the file watcher compares: modification time and length.
pub type FileStamp = (std::time::SystemTime, u64);

pub fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH), m.len()))
}

/// Where reloads read from.
pub struct ReloadSource {
    pub config_path: PathBuf,
    pub explicit: bool,
    pub links_path: PathBuf,
    pub keys: Arc<KeyRing>,
    /// The running process's settings that only a restart changes ([`Settings::restart_only`]).
    pub restart_only: Vec<(&'static str, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Links(#[from] links::LoadError),
    #[error("{0}")]
    Other(String),
}

/// Days since the Unix epoch, for the unique filter's generations.
pub fn today() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

impl App {
    pub fn new(
        settings: &Settings,
        table: LinkTable,
        recorder: Recorder,
        metrics: Metrics,
        config_path: &Path,
        explicit: bool,
    ) -> Result<App, String> {
        // Signing keys come from the environment at start-up and stay for the process's life.
        let keys = settings.secrets.keys.clone();
        let stock_file = settings.data_dir.join("commerce").join("inventory.json");
        let inventory = Inventory::open(stock_file.clone()).map_err(|e| {
            format!(
                "stock levels {}: {e} (delete the file to start with stock unknown)",
                stock_file.display()
            )
        })?;
        table.bind_stock(&inventory);
        let snapshot = Snapshot {
            generation: 1,
            links: table,
            keys: keys.clone(),
            edge: settings.edge.as_str().into(),
            view: Arc::new(View::from_settings(settings)?),
        };
        metrics.config_generation.set(1.0);
        metrics.links_loaded.set(snapshot.links.len() as f64);
        // Only with webhooks on: the ledger is theirs, and a server without them writes nothing.
        let ledger = if settings.secrets.shopify_webhook_secrets.is_empty() {
            Ledger::in_memory()
        } else {
            let dir = settings.data_dir.join("commerce");
            Ledger::open(&dir).map_err(|e| format!("commission ledger {}: {e}", dir.display()))?
        };
        let payouts = match &settings.payout {
            Some(p) => Some(Payouts::start(p, &settings.data_dir, metrics.payout.clone())?),
            None => None,
        };
        if let Some(p) = &payouts {
            let made_again = p
                .mend(&ledger, &settings.edge)
                .map_err(|e| format!("payout outbox: {e}"))?;
            for body in made_again {
                recorder.emit(&body);
            }
        }
        Ok(App {
            state: ArcSwap::from_pointee(snapshot),
            recorder,
            metrics,
            unique: UniqueFilter::new(
                settings.unique.expected_per_day,
                settings.unique.false_positive_rate,
                today(),
            ),
            inventory,
            webhooks: Arc::new(Webhooks::new(&settings.secrets.shopify_webhook_secrets, ledger)),
            payouts,
            draining: AtomicBool::new(false),
            admin_token: settings.secrets.admin_token.clone(),
            reload: Mutex::new(ReloadSource {
                config_path: config_path.to_path_buf(),
                explicit,
                links_path: settings.links.clone(),
                keys,
                restart_only: settings.restart_only(),
            }),
            links_file: ArcSwap::from_pointee(settings.links.clone()),
            written: Mutex::new(None),
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn links_path(&self) -> PathBuf {
        self.links_file.load().to_path_buf()
    }

    /// Re-reads the config file, the links file and the geo database; swaps only if all are valid.
    pub fn reload(&self, env: Env) -> Result<u64, ReloadError> {
        let mut src = self.reload.lock().expect("reload lock");
        let result = (|| {
            let settings = Config::load(&src.config_path, src.explicit, env)?.validate(env)?;
            let table = in_background(|| links::load(&settings.links, &src.keys).map(|t| self.inherit(t)))?;
            let view = View::from_settings(&settings).map_err(ReloadError::Other)?;
            Ok::<_, ReloadError>((settings, table, view))
        })();
        let (settings, table, view) = self.counted(result)?;
        // Changed in the file or the environment, but not applied by a reload: said by name.
        let changed: Vec<&str> = settings
            .restart_only()
            .into_iter()
            .zip(&src.restart_only)
            .filter(|(new, running)| new.1 != running.1)
            .map(|(new, _)| new.0)
            .collect();
        self.metrics
            .restart_pending
            .set(if changed.is_empty() { 0.0 } else { 1.0 });
        if !changed.is_empty() {
            tracing::warn!(
                settings = %changed.join(", "),
                "reload: these settings changed but apply only at the next restart; the running values stay"
            );
        }
        src.links_path = settings.links.clone();
        self.links_file.store(Arc::new(settings.links.clone()));
        Ok(self.install(&src, table, Some(Arc::new(view))))
    }

    /// Replaces the table from JSON Lines text (the admin API), writing it to the links file
    /// first so a later reload or restart serves the same table.
    pub fn replace_links(&self, text: &str) -> Result<u64, ReloadError> {
        let src = self.reload.lock().expect("reload lock");
        let table = in_background(|| links::parse(text, "request body", &src.keys).map(|t| self.inherit(t)));
        let table = table.map_err(ReloadError::from);
        let table = self.counted(table)?;
        // Synced before it is answered: after a power loss the file is this table or the old one.
        let write = crate::commerce::journal::write_whole(&src.links_path, text.as_bytes());
        self.counted(write.map_err(|e| ReloadError::Other(format!("{}: {e}", src.links_path.display()))))?;
        *self.written.lock().expect("written lock") = file_stamp(&src.links_path);
        Ok(self.install(&src, table, None))
    }

    /// True when the links file is as `PUT /admin/links` last wrote it, whose table serves.
    pub fn links_file_is_as_written(&self, stamp: Option<FileStamp>) -> bool {
        stamp.is_some() && *self.written.lock().expect("written lock") == stamp
    }

    fn counted<T>(&self, r: Result<T, ReloadError>) -> Result<T, ReloadError> {
        if let Err(e) = &r {
            // Logged before counted: whoever sees the count (a test, an alert) finds the reason.
            tracing::error!(error = %e, "reload rejected; the previous table keeps serving");
            self.metrics.reload_failures.increment(1);
        }
        r
    }

    /// The running table's `max_clicks` counters, carried over (lock-free, so it can run at
    /// idle priority with the parse).
    fn inherit(&self, table: LinkTable) -> LinkTable {
        table.inherit_counters(&self.state.load().links);
        table
    }

    fn install(&self, src: &ReloadSource, table: LinkTable, view: Option<Arc<View>>) -> u64 {
        // At normal priority: binding takes the inventory's shard locks, which webhooks and
        // stock updates also take; an idle-priority thread must not sit on them.
        table.bind_stock(&self.inventory);
        let old = self.state.load();
        let generation = old.generation + 1;
        let links = table.len();
        let new = Arc::new(Snapshot {
            generation,
            links: table,
            keys: src.keys.clone(),
            edge: old.edge.clone(),
            view: view.unwrap_or_else(|| old.view.clone()),
        });
        drop(old);
        let old = self.state.swap(new);
        // Free the old table on a thread of its own, not on a serving thread: a request still
        // holding it would otherwise drop the last reference and free a million links between
        // two answers. Not waited for: the reload is done once the new table serves.
        let _ = std::thread::Builder::new()
            .name("free-old-table".into())
            .spawn(move || {
                idle_priority();
                let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while Arc::strong_count(&old) > 1 && std::time::Instant::now() < until {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                drop(old);
            });
        self.metrics.config_generation.set(generation as f64);
        self.metrics.links_loaded.set(links as f64);
        self.metrics.reloads.increment(1);
        tracing::info!(generation, links, "links table swapped");
        generation
    }
}

/// Runs a reload's parsing on its own thread under `SCHED_IDLE` (the parser's threads inherit
/// it): it gets a core only when no thread answering requests wants it, and gives it back the
/// moment one wakes. Nice 10, tried first, still let the parse hold a shared core for
/// milliseconds at a time (p99 2.6x steady during a 1M-link swap on one core). The price: on
/// cores saturated by requests, a reload waits until the load eases.
fn in_background<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            idle_priority();
            work()
        })
        .join()
        .expect("reload thread panicked")
    })
}

/// `SCHED_IDLE` for the calling thread; where that is refused, the lowest nice value.
fn idle_priority() {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    let me = thread_priority::thread_native_id();
    if thread_priority::set_thread_priority_and_policy(me, ThreadPriority::Min, idle).is_err() {
        let _ = rustix::process::setpriority_process(None, 19);
    }
}
