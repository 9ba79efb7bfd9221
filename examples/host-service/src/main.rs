//! The host-service example: a helpdesk axum app with offline sync mounted
//! under `/sync`. Run it with `cargo run -p host-service`; it prints an API
//! key for each demo agent and the command to sync with it.
//!
//! Settings (environment): `HOST_SERVICE_DATA` (default `./data/host-service`),
//! `HOST_SERVICE_LISTEN` (default `127.0.0.1:3000`), `RUST_LOG`.

use std::process::ExitCode;

use host_service::run::{self, HostConfig, HostError};
use tracing_subscriber::EnvFilter;

async fn serve() -> Result<(), String> {
    let data_dir = std::env::var("HOST_SERVICE_DATA").unwrap_or_else(|_| "./data/host-service".into());
    let mut config = HostConfig::new(data_dir);
    if let Ok(listen) = std::env::var("HOST_SERVICE_LISTEN") {
        config.listen = listen.parse().map_err(|e| format!("HOST_SERVICE_LISTEN={listen:?}: {e}"))?;
    }
    let grants = run::demo_grants();
    let host = run::start(config, &grants).await.map_err(|e: HostError| e.to_string())?;
    let base = format!("http://{}", host.addr());
    println!("helpdesk listening on {base} (offline sync under {base}/sync)");
    for grant in &grants {
        println!("  API key of {}: {}", grant.user_id, grant.key);
        println!("    curl -H 'authorization: Bearer {}' {base}/api/hello", grant.key);
        println!(
            "    cargo run -p sync-client --features cli -- --server {base}/sync --org helpdesk --token {} --db {}.sqlite sync",
            grant.key, grant.user_id
        );
    }
    transport_http::serve::shutdown_signal().await;
    tracing::info!("shutting down");
    host.shutdown().await.map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("host-service: {e}");
            ExitCode::FAILURE
        }
    }
}
