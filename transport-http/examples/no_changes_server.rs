//! A router over the in-memory or the SQLite store, for measuring the "no
//! changes" pull (PERFORMANCE.md: ≥ 20k req/s with authentication on 2
//! cores).
//!
//! ```sh
//! cargo run --release -p transport-http --example no_changes_server -- 127.0.0.1:8088 /tmp/pull.lua [memory|sqlite]
//! wrk -t2 -c64 -d10s -s /tmp/pull.lua http://127.0.0.1:8088
//! ```
//!
//! With `sqlite` the org is staged in a SQLite store under a temporary
//! directory, as the embedded server keeps it.
//!
//! It stages one org with 1,000 accounts, pulls them once as `alice`, writes
//! a wrk script that repeats the up-to-date pull with her bearer token (HS256
//! is verified on every request), and serves until Ctrl-C.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use serde_json::json;
use sync_core::memory::{MemoryConnector, MemoryQueue, MemorySource, MemoryStagingStore};
use sync_core::protocol::PullRequest;
use sync_core::*;
use transport_http::{DevToken, HttpConfig, JwtAuthenticator, router, serve};

const SECRET: &[u8] = b"no-changes benchmark: a secret of 32+ bytes";

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8088".into());
    let script = args.next().unwrap_or_else(|| "pull.lua".into());
    let backend = args.next().unwrap_or_else(|| "memory".into());

    let col = |s: &str| ColumnName::new(s).unwrap();
    let account = EntityMetadata::new(
        EntityName::new("account").unwrap(),
        col("accountid"),
        vec![
            Attribute::new(col("accountid"), AttributeType::String),
            Attribute::new(col("name"), AttributeType::String),
            Attribute::new(col("owner"), AttributeType::String),
            Attribute::new(col("revenue"), AttributeType::Integer),
        ],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StagingStore> = match backend.as_str() {
        "memory" => Arc::new(MemoryStagingStore::new()),
        "sqlite" => Arc::new(storage_sqlite::SqliteStagingStore::open(dir.path()).await.unwrap()),
        other => panic!("unknown backend {other:?}: memory or sqlite"),
    };
    let connector = Arc::new(MemoryConnector::new());
    connector.register("crm", Arc::new(MemorySource::with_entities([account.clone()]).unwrap()));
    let org = OrgId::new("contoso").unwrap();
    store.create_org(&OrgConfig::new(org.clone(), MemoryConnector::config("crm"))).await.unwrap();
    let staging = store.org(&org).await.unwrap();
    staging.apply_schema(&account).await.unwrap();
    let mut item = ProfileItem::new(account.name.clone(), "owner eq @user.id");
    item.allow_upload = true;
    staging
        .put_profile(&Profile {
            name: ProfileName::new("sales").unwrap(),
            roles: ["rep".into()].into(),
            items: vec![item],
        })
        .await
        .unwrap();
    let rows = (0..1000)
        .map(|i| {
            Row::new(
                RowId::new(format!("acc{i:05}")).unwrap(),
                [
                    (col("accountid"), Value::from(format!("acc{i:05}").as_str())),
                    (col("name"), Value::from(format!("Account {i}").as_str())),
                    (col("owner"), Value::from(if i % 2 == 0 { "alice" } else { "bob" })),
                    (col("revenue"), Value::Integer(i)),
                ],
            )
        })
        .collect();
    staging
        .apply_changes(&account.name, ChangePage { upserts: rows, ..ChangePage::default() })
        .await
        .unwrap();

    let service =
        SyncService::builder(store, Arc::new(MemoryQueue::new()), connector, b"cursor secret").build();
    let principal = Principal::new("alice", org.clone()).with_role("rep");
    let mut request = PullRequest::default();
    let cursor = loop {
        let page = service.pull(&principal, &org, &request).await.unwrap();
        if !page.has_more {
            break page.cursor;
        }
        request.cursor = Some(page.cursor);
    };
    let token = DevToken::new("alice", &org)
        .with_role("rep")
        .with_ttl(std::time::Duration::from_secs(24 * 3600))
        .sign_hs256(SECRET)
        .unwrap();
    let body = json!({"cursor": cursor}).to_string();
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.path = \"/v1/orgs/contoso/sync/pull\"\nwrk.body = {body:?}\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"
        ),
    )
    .unwrap();

    let auth = Arc::new(JwtAuthenticator::hs256(SECRET.to_vec()).unwrap());
    let listener = serve::bind(&addr).await.unwrap();
    eprintln!(
        "serving on http://{} ({backend} store); wrk script in {script}",
        listener.local_addr().unwrap()
    );
    serve::serve(listener, router(service, auth, HttpConfig::default()), serve::shutdown_signal())
        .await
        .unwrap();
}
