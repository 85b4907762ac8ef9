//! The three commands: `serve`, `mint`, `check`.

use crate::config::{process_env, Config, Settings};
use crate::links::{self, LinkTable};
use crate::metrics::Metrics;
use crate::state::App;
use crate::{clicks, server};
use anyhow::{bail, Context};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub fn settings(config: &Path, explicit: bool) -> anyhow::Result<Settings> {
    let cfg = Config::load(config, explicit, &process_env)?;
    // `vars_os`: `vars` panics on a variable that is not UTF-8, anyone's, not only ours.
    let names = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
    for name in crate::config::unknown_env_names(names) {
        // On stderr for every command (the log is not set up for mint and check).
        eprintln!("warning: {name} is not a cartlink setting and is ignored (misspelt?)");
    }
    Ok(cfg.validate(&process_env)?)
}

/// `cartlink check`: config, links file and geo database; the first problem and where.
pub fn check(config: &Path, explicit: bool) -> anyhow::Result<String> {
    let s = settings(config, explicit)?;
    let table = links::load(&s.links, &s.secrets.keys)?;
    let view = crate::state::View::from_settings(&s).map_err(anyhow::Error::msg)?;
    let geo = match (&view.geo, &s.geoip) {
        (Some(db), Some(path)) => format!(", geo database {} ({})", path.display(), db.database_type()),
        _ => String::new(),
    };
    let payout = match &s.payout {
        Some(p) => format!(", payouts to {}", crate::config::redact_url(&p.url.to_string())),
        None => ", payouts off".into(),
    };
    let keys = if s.secrets.demo_key {
        "; signing with the PUBLIC DEMO KEY (CARTLINK_SIGNING_KEYS is not set): anyone can mint these links"
    } else {
        ""
    };
    Ok(format!(
        "ok: {} links in {}{geo}, sink {}{payout}{keys}\n",
        table.len(),
        s.links.display(),
        s.sink
    ))
}

/// `cartlink mint`: public signed URLs.
pub fn mint(config: &Path, explicit: bool, id: Option<&str>, sub: Option<&str>, all: bool) -> anyhow::Result<String> {
    let s = settings(config, explicit)?;
    let table = links::load(&s.links, &s.secrets.keys)?;
    if s.secrets.demo_key {
        // On stderr: stdout stays the list a script reads.
        eprintln!("warning: CARTLINK_SIGNING_KEYS is not set: these links are signed with the PUBLIC DEMO KEY and anyone can mint them");
    }
    // The server keeps `sub` cleaned and capped; the URL carries it as it will be recorded.
    let sub = match sub.map(|v| (v, crate::redirect::clean_sub(v))) {
        Some((_, clean)) if clean.is_empty() => {
            bail!("--sub has none of the characters a sub keeps ([A-Za-z0-9._~:-])")
        }
        Some((given, clean)) => {
            if clean != given {
                eprintln!("warning: --sub `{given}` is recorded as `{clean}` ([A-Za-z0-9._~:-], at most 64 characters); the link carries that");
            }
            Some(clean)
        }
        None => None,
    };
    let url_for = |id: &str| -> String {
        let mut u = s.public_base_url.clone();
        let token = format!("{id}.{}", s.secrets.keys.sign(id));
        u.set_path(&token);
        if let Some(sub) = &sub {
            u.query_pairs_mut().append_pair("sub", sub);
        }
        u.into()
    };
    if all {
        return Ok(table
            .sorted_ids()
            .into_iter()
            .map(|id| format!("{id}\t{}\n", url_for(id)))
            .collect());
    }
    let Some(id) = id else {
        bail!("give a LINK_ID, or --all")
    };
    if table.get(id.as_bytes()).is_none() {
        bail!("no link `{id}` in {}", s.links.display());
    }
    Ok(format!("{}\n", url_for(id)))
}

/// `cartlink serve`: runs until SIGTERM/SIGINT, then drains and exits.
pub fn serve(config: &Path, explicit: bool) -> anyhow::Result<()> {
    let s = settings(config, explicit)?;
    if s.secrets.demo_key {
        tracing::warn!("CARTLINK_SIGNING_KEYS is not set: signing with the PUBLIC DEMO KEY. Anyone can mint links. Never run this in production.");
    }
    let started = Instant::now();
    let table: LinkTable = links::load(&s.links, &s.secrets.keys)?;
    tracing::info!(links = table.len(), ms = started.elapsed().as_millis() as u64, file = %s.links.display(), "links loaded");

    let metrics = Metrics::new();
    let (recorder, pipeline) = clicks::start(&s.sink, &s.pipeline, &s.data_dir, metrics.clone(), &s.edge)?;
    let app = Arc::new(App::new(&s, table, recorder, metrics, config, explicit).map_err(anyhow::Error::msg)?);

    let workers = if s.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        s.workers
    };
    // One worker needs no work stealing: the current-thread scheduler does the same job with
    // less cross-thread bookkeeping per task wake-up.
    let rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    let grace = s.drain_grace;
    let deadline = rt.block_on(async {
        let public = tokio::net::TcpListener::bind(s.listen)
            .await
            .with_context(|| format!("listen {}", s.listen))?;
        let admin = tokio::net::TcpListener::bind(s.admin_listen)
            .await
            .with_context(|| format!("admin_listen {}", s.admin_listen))?;
        let tls = match &s.tls {
            Some(t) => {
                let acceptor = Arc::new(server::tls::Tls::try_new(t).context("tls")?);
                let tcp = tokio::net::TcpListener::bind(t.listen)
                    .await
                    .with_context(|| format!("tls.listen {}", t.listen))?;
                Some(server::TlsListener { tcp, tls: acceptor })
            }
            None => None,
        };
        let tls_addr = match &tls {
            Some(t) => format!(" tls={}", t.tcp.local_addr()?),
            None => String::new(),
        };
        // Before the line below: scripts may send SIGHUP as soon as they read it, and the
        // default action of SIGHUP is to exit.
        spawn_reload_on_hup(app.clone(), tls.as_ref().map(|t| t.tls.clone()));
        if let Some(every) = s.watch_links {
            tokio::spawn(watch_links(app.clone(), every));
        }
        let shutdown = terminate();
        // One line on stdout that scripts and tests read to find the ports (either may be :0).
        println!(
            "cartlink listening public={} admin={}{tls_addr}",
            public.local_addr()?,
            admin.local_addr()?
        );
        tracing::info!(public = %public.local_addr()?, admin = %admin.local_addr()?, workers, "serving");

        tokio::spawn({
            let app = app.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let app = app.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || app.inventory.save()).await {
                        tracing::error!(error = %e, "stock levels not saved; retrying in a second");
                    }
                }
            }
        });
        tokio::spawn({
            let app = app.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    app.metrics.upkeep();
                    app.unique.rotate_to(crate::state::today());
                    app.metrics.unique_fill_ratio.set(app.unique.fill_ratio());
                }
            }
        });
        let deadline = server::run(
            app.clone(),
            public,
            admin,
            tls,
            s.http.clone(),
            s.drain_delay,
            grace,
            shutdown,
        )
        .await;
        anyhow::Ok(deadline)
    })?;
    if let Some(p) = &app.payouts {
        // Whatever is not delivered yet stays in the outbox for the next start.
        p.shutdown();
    }
    if let Err(e) = app.inventory.save() {
        tracing::error!(error = %e, "stock levels not saved at shutdown");
    }
    // Within what is left of the grace period; past it, what is left goes to the spill.
    tracing::info!("flushing queued clicks");
    pipeline.shutdown(deadline);
    drop(rt);
    tracing::info!("stopped");
    Ok(())
}

/// Registers the SIGTERM/SIGINT handlers now (before the ports are announced, so a signal
/// sent right after start-up is never the default "terminate"), and waits in the future.
fn terminate() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    }
}

/// SIGHUP: config and links, then the TLS certificate (a failure counts as a reload failure
/// and keeps the old certificate).
fn spawn_reload_on_hup(app: Arc<App>, tls: Option<Arc<server::tls::Tls>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let app = app.clone();
            let tls = tls.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok(g) = app.reload(&process_env) {
                    tracing::info!(generation = g, "SIGHUP reload done");
                }
                if let Some(tls) = tls {
                    match tls.reload_tls() {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                        Err(e) => {
                            tracing::error!(error = %e, "SIGHUP: TLS certificate kept; new one rejected");
                            app.metrics.reload_failures.increment(1);
                        }
                    }
                }
            })
            .await;
        }
    });
}

/// Polls the links file; reloads once a change has been stable for one interval, so a file
/// being written is not read half-way.
/// The file's state is taken now, before the caller announces it is listening, so a change
/// made right after start-up is not missed.
fn watch_links(app: Arc<App>, every: Duration) -> impl std::future::Future<Output = ()> {
    let loaded = crate::state::file_stamp(&app.links_path());
    watch_links_from(app, every, loaded, crate::state::file_stamp)
}

async fn watch_links_from(
    app: Arc<App>,
    every: Duration,
    mut loaded: Option<(SystemTime, u64)>,
    stamp: impl Fn(&Path) -> Option<(SystemTime, u64)>,
) {
    let mut pending = None;
    loop {
        tokio::time::sleep(every).await;
        let path = app.links_path();
        let now = stamp(&path);
        if now == loaded {
            pending = None;
            continue;
        }
        if pending != Some(now) {
            pending = Some(now);
            continue;
        }
        loaded = now;
        pending = None;
        if app.links_file_is_as_written(now) {
            // `PUT /admin/links` wrote it and already serves its table.
            continue;
        }
        let app = app.clone();
        let _ = tokio::task::spawn_blocking(move || app.reload(&process_env)).await;
    }
}
