//! The embedded offline-sync server: the main job of this project.
//!
//! One process: a SQLite control database and one SQLite file per org under
//! a data directory, the SQLite work queue, the provisioning and
//! staging-sync workers, and the HTTP sync and admin endpoints — with a demo
//! CRM provisioned as org `demo` on first start. Run it with
//! `cargo run --release -p embedded-server`; `--help` explains every setting.

use std::process::ExitCode;

use clap::Parser;
use embedded_server::{config, setup};

/// mimalloc rather than the system allocator: a pull page is built on a
/// blocking reader thread and freed on the async worker that answers the
/// request, and glibc's malloc pays for every such cross-thread free (about
/// a tenth of a pull, measured with `storage-sqlite`'s `ingest_pull` bench).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = config::Cli::parse();
    let config = match config::Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("embedded-server: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        match toml::to_string_pretty(&config) {
            Ok(text) => {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("embedded-server: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match setup::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "embedded-server stopped with an error");
            eprintln!("embedded-server: {e}");
            ExitCode::FAILURE
        }
    }
}
