use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// jemalloc rather than glibc's malloc: loading 10M links took 40 s with glibc (its per-thread
// arenas hand freed memory back to the kernel and fault it in again while the parser threads
// allocate) and 29 s with jemalloc, at the same memory (loadtest/links_scale). Its background
// thread (the `background_threads` feature) hands the old table's memory back after a reload.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// cartlink: signed creator links to prefilled carts, with attribution and a click pipeline.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGTERM.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the public signed URL of a link (or `id<TAB>url` for every link with --all).
    Mint {
        #[arg(long)]
        config: Option<PathBuf>,
        link_id: Option<String>,
        /// Which post or video the link is for.
        #[arg(long)]
        sub: Option<String>,
        #[arg(long, conflicts_with = "link_id")]
        all: bool,
    },
    /// Validate config, links file and geo database.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn config_path(c: Option<PathBuf>) -> (PathBuf, bool) {
    match c {
        Some(p) => (p, true),
        None => (PathBuf::from(cartlink::config::DEFAULT_CONFIG), false),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => {
            let (p, explicit) = config_path(config);
            cartlink::cli::serve(&p, explicit).map(|()| String::new())
        }
        Command::Mint {
            config,
            link_id,
            sub,
            all,
        } => {
            let (p, explicit) = config_path(config);
            cartlink::cli::mint(&p, explicit, link_id.as_deref(), sub.as_deref(), all)
        }
        Command::Check { config } => {
            let (p, explicit) = config_path(config);
            cartlink::cli::check(&p, explicit)
        }
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cartlink: {e:#}");
            ExitCode::FAILURE
        }
    }
}
