//! `sync-client`: a command-line device for offline-sync.
//!
//! ```text
//! sync-client --server http://127.0.0.1:8080 --org contoso --token "$TOKEN" --db device.db sync
//! sync-client status
//! sync-client query "SELECT name FROM account ORDER BY name LIMIT 10"
//! sync-client update account 5f0c… name='"Contoso Ltd"' revenue=1200
//! ```
//!
//! Every option can come from the environment: `SYNC_SERVER`, `SYNC_ORG`,
//! `SYNC_TOKEN`, `SYNC_DB`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sync_client::{CancelToken, ClientConfig, LiveOptions, SyncClient, SyncEvent};
use sync_core::{ColumnName, EntityName, OrgId, RowId, SyncTransport, Value};
use transport_http::{HttpSyncTransport, HttpTransportConfig};

#[derive(Parser, Debug)]
#[command(name = "sync-client", version, about = "An offline-sync device: a local SQLite copy kept in sync")]
struct Cli {
    /// The sync server's base URL.
    #[arg(long, env = "SYNC_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    server: String,
    /// The org to sync.
    #[arg(long, env = "SYNC_ORG", global = true)]
    org: Option<String>,
    /// The bearer token.
    #[arg(long, env = "SYNC_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The local database file.
    #[arg(long, env = "SYNC_DB", default_value = "sync-client.db", global = true)]
    db: std::path::PathBuf,
    /// Rows per pull page (default: the server's maximum).
    #[arg(long, global = true)]
    page_limit: Option<u32>,
    /// SQLite page cache of the local database, in MiB.
    #[arg(long, default_value_t = 64, global = true)]
    cache_mib: u32,
    /// Most rows applied per local transaction while pulling (commit size
    /// sets the download rate; smaller commits hold the database for less).
    #[arg(long, default_value_t = 200_000, global = true)]
    commit_rows: u64,
    /// Most edits per upload request.
    #[arg(long, default_value_t = 500, global = true)]
    push_batch: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Push pending edits, then pull until up to date (a progress bar shows
    /// a long initial sync).
    Sync {
        /// Keep syncing: hold a pull open on the server and apply changes as
        /// they come, until Ctrl-C.
        #[arg(long)]
        live: bool,
        /// How long each live pull waits on the server, in seconds.
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
        /// Print one JSON report instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the local copy: rows, partitions, pending edits, conflicts.
    Status {
        /// Also check the local copy against itself (marks damaged partitions
        /// for repair by the next sync).
        #[arg(long)]
        verify: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a read-only SQL statement over the local database.
    Query {
        /// The statement.
        sql: String,
        /// Print JSON rows instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Insert a row: `column=value` pairs, the key among them. A value is
    /// read as JSON when it parses (`12`, `true`, `null`, `"text"`), as text
    /// otherwise.
    Insert {
        /// The entity.
        entity: String,
        /// `column=value` pairs.
        #[arg(required = true)]
        values: Vec<String>,
    },
    /// Change columns of a row.
    Update {
        /// The entity.
        entity: String,
        /// The row's key.
        row_id: String,
        /// `column=value` pairs.
        #[arg(required = true)]
        values: Vec<String>,
    },
    /// Delete a row.
    Delete {
        /// The entity.
        entity: String,
        /// The row's key.
        row_id: String,
    },
    /// List edits not yet acknowledged by the server.
    Pending,
    /// List uploads the server refused; `--dismiss ID` removes one.
    Conflicts {
        /// A mutation id to dismiss.
        #[arg(long)]
        dismiss: Option<uuid::Uuid>,
    },
}

fn parse_values(pairs: &[String]) -> Result<BTreeMap<ColumnName, Value>, String> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| format!("{p:?} is not column=value"))?;
        let col = ColumnName::new(k.trim()).map_err(|e| e.to_string())?;
        let value = match serde_json::from_str::<serde_json::Value>(v) {
            Ok(j) => Value::from_json(j),
            Err(_) => Value::String(v.to_owned()),
        };
        out.insert(col, value);
    }
    Ok(out)
}

fn open(cli: &Cli, need_server: bool) -> Result<SyncClient, String> {
    let transport: Arc<dyn SyncTransport> = match (&cli.org, &cli.token) {
        (Some(org), Some(token)) => {
            let org = OrgId::new(org.as_str()).map_err(|e| format!("--org: {e}"))?;
            let config = HttpTransportConfig::new(cli.server.clone(), org);
            Arc::new(HttpSyncTransport::with_token(config, token.clone()).map_err(|e| e.to_string())?)
        }
        _ if need_server => {
            return Err("--org and --token (or SYNC_ORG and SYNC_TOKEN) are needed to sync".into());
        }
        _ => Arc::new(Offline),
    };
    let mut config = ClientConfig {
        page_limit: cli.page_limit,
        max_rows_per_commit: cli.commit_rows.max(1),
        push_batch: cli.push_batch.max(1),
        ..ClientConfig::default()
    };
    config.store.cache_kib = cli.cache_mib.saturating_mul(1024);
    SyncClient::builder(&cli.db, transport).config(config).open().map_err(|e| e.to_string())
}

/// The transport of commands that never reach the server.
struct Offline;

#[async_trait::async_trait]
impl SyncTransport for Offline {
    async fn profile(&self) -> sync_core::Result<sync_core::protocol::ProfileResponse> {
        Err(sync_core::Error::unavailable("no server configured"))
    }
    async fn pull(
        &self,
        _: &sync_core::protocol::PullRequest,
    ) -> sync_core::Result<sync_core::protocol::PullResponse> {
        Err(sync_core::Error::unavailable("no server configured"))
    }
    async fn push(
        &self,
        _: &sync_core::protocol::PushRequest,
    ) -> sync_core::Result<sync_core::protocol::PushResponse> {
        Err(sync_core::Error::unavailable("no server configured"))
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

fn show(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "NULL".into(),
        other => other.to_string(),
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match &cli.command {
        Command::Sync { live, wait_secs, json } => {
            let client = open(&cli, true)?;
            let bar = if *json { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}] {pos} rows ({per_sec})")
                    .map_err(|e| e.to_string())?,
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar.set_message("syncing");
            let mut events = client.subscribe();
            let progress_bar = bar.clone();
            let watcher = tokio::spawn(async move {
                while let Ok(e) = events.recv().await {
                    match e {
                        SyncEvent::Progress(p) => {
                            progress_bar.set_position(p.rows);
                            progress_bar.set_message(match p.stream {
                                sync_client::StreamKind::Main => "pulling",
                                sync_client::StreamKind::Repair => "repairing",
                            });
                        }
                        SyncEvent::Refused(r) => {
                            progress_bar.println(format!(
                                "{:?} {} {} {}: {}",
                                r.kind,
                                r.op_name(),
                                r.entity,
                                r.row_id,
                                r.reason
                            ));
                        }
                        SyncEvent::ResyncStarted { reason } => {
                            progress_bar.println(format!("resync: {reason}"));
                        }
                        SyncEvent::Retrying { error, delay } => {
                            progress_bar.set_message(format!("retrying in {delay:.1?}: {error}"));
                        }
                        SyncEvent::Completed(r) if r.pushed + r.rows + r.removes > 0 => {
                            progress_bar.println(format!(
                                "pushed {} (applied {}, conflicts {}, rejected {}), pulled {} rows, {} removes",
                                r.pushed, r.applied, r.conflicts, r.rejected, r.rows, r.removes
                            ));
                        }
                        _ => {}
                    }
                }
            });
            let result = if *live {
                let cancel = CancelToken::new();
                let c2 = cancel.clone();
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    c2.cancel();
                });
                client.run(LiveOptions { wait: Duration::from_secs(*wait_secs) }, cancel).await.map(|()| None)
            } else {
                client.sync().await.map(Some)
            };
            bar.finish_and_clear();
            watcher.abort();
            let report = result.map_err(|e| e.to_string())?;
            if let Some(r) = report {
                if *json {
                    print_json(&serde_json::json!({ "report": r, "peak_rss_kib": peak_rss_kib() }))?;
                } else {
                    println!(
                        "synced: pushed {} (applied {}, conflicts {}, rejected {}), pulled {} rows in {} pages, \
                         {} removes{}{}",
                        r.pushed,
                        r.applied,
                        r.conflicts,
                        r.rejected,
                        r.rows,
                        r.pages,
                        r.removes,
                        if r.resyncs > 0 { ", resynced" } else { "" },
                        if r.repairs > 0 { ", repaired partitions" } else { "" },
                    );
                }
            }
            Ok(())
        }
        Command::Status { verify, json } => {
            let client = open(&cli, false)?;
            let repaired =
                if *verify { client.verify().await.map_err(|e| e.to_string())? } else { Vec::new() };
            let status = client.status().await.map_err(|e| e.to_string())?;
            if *json {
                return print_json(&serde_json::json!({ "status": status, "failed_verification": repaired }));
            }
            println!("database:    {}", cli.db.display());
            println!("synced:      {}", status.last_sync.as_deref().unwrap_or("never"));
            println!("pending:     {}", status.pending);
            println!("conflicts:   {}", status.conflicts);
            println!("resyncs:     {}   repairs: {}", status.resyncs, status.repairs);
            for e in &status.entities {
                println!("table {:<24} {:>10} rows", e.entity.as_str(), e.rows);
            }
            for p in &status.partitions {
                println!(
                    "partition {} ({}): {} rows{}",
                    p.key,
                    p.entity,
                    p.checksum.count,
                    if p.repair == "none" { String::new() } else { format!(", repair {}", p.repair) }
                );
            }
            if *verify {
                if repaired.is_empty() {
                    println!("verification: ok");
                } else {
                    println!(
                        "verification: {} partition(s) will be repaired by the next sync",
                        repaired.len()
                    );
                }
            }
            Ok(())
        }
        Command::Query { sql, json } => {
            let client = open(&cli, false)?;
            let result = client.query(sql, Vec::new()).await.map_err(|e| e.to_string())?;
            if *json {
                return print_json(&result);
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", result.columns.join("\t"));
            for row in &result.rows {
                let _ = writeln!(out, "{}", row.iter().map(show).collect::<Vec<_>>().join("\t"));
            }
            let _ = writeln!(out, "({} rows)", result.rows.len());
            Ok(())
        }
        Command::Insert { entity, values } => {
            let client = open(&cli, false)?;
            let entity = EntityName::new(entity.as_str()).map_err(|e| e.to_string())?;
            let w = client.insert(&entity, parse_values(values)?).await.map_err(|e| e.to_string())?;
            println!(
                "inserted {} (pending upload {})",
                w.row_id,
                w.mutation.map(|m| m.to_string()).unwrap_or_default()
            );
            Ok(())
        }
        Command::Update { entity, row_id, values } => {
            let client = open(&cli, false)?;
            let entity = EntityName::new(entity.as_str()).map_err(|e| e.to_string())?;
            let row_id = RowId::new(row_id.as_str()).map_err(|e| e.to_string())?;
            let w =
                client.update(&entity, &row_id, parse_values(values)?).await.map_err(|e| e.to_string())?;
            println!(
                "updated {} (pending upload {})",
                w.row_id,
                w.mutation.map(|m| m.to_string()).unwrap_or_default()
            );
            Ok(())
        }
        Command::Delete { entity, row_id } => {
            let client = open(&cli, false)?;
            let entity = EntityName::new(entity.as_str()).map_err(|e| e.to_string())?;
            let row_id = RowId::new(row_id.as_str()).map_err(|e| e.to_string())?;
            let w = client.delete(&entity, &row_id).await.map_err(|e| e.to_string())?;
            match w.mutation {
                Some(m) => println!("deleted {} (pending upload {m})", w.row_id),
                None => println!("deleted {} (it was never uploaded: nothing left to send)", w.row_id),
            }
            Ok(())
        }
        Command::Pending => {
            let client = open(&cli, false)?;
            for p in client.pending().await.map_err(|e| e.to_string())? {
                println!(
                    "{} {:?} {} {} base={} attempts={} {}",
                    p.id,
                    p.op,
                    p.entity,
                    p.row_id,
                    p.base_version.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                    p.attempts,
                    serde_json::to_string(&p.values).unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Conflicts { dismiss } => {
            let client = open(&cli, false)?;
            if let Some(id) = dismiss {
                let found =
                    client.dismiss_conflict(sync_core::MutationId(*id)).await.map_err(|e| e.to_string())?;
                println!("{}", if found { "dismissed" } else { "no such conflict" });
                return Ok(());
            }
            for c in client.conflicts().await.map_err(|e| e.to_string())? {
                println!(
                    "{} {:?} {} {} {}: {} (local {}, server {})",
                    c.mutation_id,
                    c.kind,
                    c.op_name(),
                    c.entity,
                    c.row_id,
                    c.reason,
                    serde_json::to_string(&c.local_values).unwrap_or_default(),
                    c.server_row
                        .as_ref()
                        .map(|r| serde_json::to_string(&r.values).unwrap_or_default())
                        .unwrap_or_else(|| "-".into())
                );
            }
            Ok(())
        }
    }
}

/// This process's peak resident set size, where the OS tells it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sync-client: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sync-client: {e}");
            ExitCode::FAILURE
        }
    }
}
