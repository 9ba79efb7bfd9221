//! The embedded server as a newcomer meets it: the binary started as a child
//! process on a free port, a client syncing with a dev token it printed, and
//! a graceful SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedded_server::demo;
use sync_core::protocol::PullRequest;
use sync_core::{OrgId, SyncTransport, Value};
use transport_http::{HttpSyncTransport, HttpTransportConfig};

struct Server {
    child: Child,
    base: String,
    tokens: Vec<(String, String)>,
}

fn start(data: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_embedded-server"))
        .args(["--listen", "127.0.0.1:0", "--demo-accounts", "20", "--demo-change-every-ms", "0"])
        .arg("--data-dir")
        .arg(data)
        .args(["--demo-sync-interval-secs", "1", "--log", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start embedded-server");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut base = None;
    let mut tokens = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.strip_prefix("offline-sync server listening on ") {
            base = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("dev token for ") {
            let (name, token) = rest.split_once(": ").unwrap();
            tokens.push((name.to_owned(), token.trim().to_owned()));
        }
        if line.trim_start().starts_with("admin token:") {
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, base: base.expect("the server printed its address"), tokens }
}

async fn ready(base: &str) {
    let addr = base.trim_start_matches("http://").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let req = format!("GET /readyz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).await.is_ok() {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
                if buf.starts_with(b"HTTP/1.1 200") {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "the server never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn transport(base: &str, token: &str) -> Arc<HttpSyncTransport> {
    let config = HttpTransportConfig::new(base, OrgId::new("demo").unwrap());
    Arc::new(HttpSyncTransport::with_token(config, token.to_owned()).unwrap())
}

/// The rows the demo profile gives `user`: own accounts, open tasks, own open opportunities.
fn expected(user: uuid::Uuid) -> BTreeSet<(String, String)> {
    let source = demo::build(demo::DemoSize { accounts: 20 }).unwrap();
    let mut out = BTreeSet::new();
    let owner = |r: &sync_core::Row| r.get("ownerid") == Some(&Value::Uuid(user));
    let open = |r: &sync_core::Row| r.get("statecode") == Some(&Value::Integer(0));
    for r in source.rows("account").unwrap().into_iter().filter(|r| owner(r)) {
        out.insert(("account".to_owned(), r.id.to_string()));
    }
    for r in source.rows("task").unwrap().into_iter().filter(|r| open(r)) {
        out.insert(("task".to_owned(), r.id.to_string()));
    }
    for r in source.rows("opportunity").unwrap().into_iter().filter(|r| owner(r) && open(r)) {
        out.insert(("opportunity".to_owned(), r.id.to_string()));
    }
    out
}

async fn pulled_rows(t: &HttpSyncTransport) -> BTreeSet<(String, String)> {
    let mut rows = BTreeSet::new();
    let mut cursor = None;
    loop {
        let r = t.pull(&PullRequest { cursor: cursor.clone(), limit: None, wait_ms: None }).await.unwrap();
        for b in &r.batches {
            for put in &b.puts {
                rows.insert((b.entity.to_string(), put[0].canonical_text()));
            }
        }
        cursor = Some(r.cursor);
        if !r.has_more {
            return rows;
        }
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_syncs_the_demo_and_the_server_stops_gracefully() {
    let data = tempfile::tempdir().unwrap();
    let mut server = start(data.path());
    ready(&server.base).await;
    assert_eq!(server.tokens.len(), 2, "dev tokens for two demo users");
    let (name, token) = server.tokens[0].clone();
    assert_eq!(name, "alice");
    let alice = transport(&server.base, &token);
    let want = expected(demo::user_id(demo::DEMO_USERS[0].1));
    // Staging runs in the background: wait until the first sync is complete.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = pulled_rows(&alice).await;
    while got != want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        got = pulled_rows(&alice).await;
    }
    assert_eq!(got, want, "alice receives exactly her profile's rows");
    let bob = pulled_rows(&transport(&server.base, &server.tokens[1].1)).await;
    assert_ne!(bob, got, "bob's rows differ from alice's");

    // A live pull in flight when SIGTERM arrives completes, and the exit is clean.
    let up_to_date = alice.pull(&PullRequest::default()).await.unwrap();
    let mut cursor = up_to_date.cursor;
    let mut more = up_to_date.has_more;
    while more {
        let r = alice
            .pull(&PullRequest { cursor: Some(cursor.clone()), ..PullRequest::default() })
            .await
            .unwrap();
        cursor = r.cursor;
        more = r.has_more;
    }
    let live = {
        let alice = alice.clone();
        tokio::spawn(async move {
            alice.pull(&PullRequest { cursor: Some(cursor), limit: None, wait_ms: Some(3000) }).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigterm(&server.child);
    let in_flight = live.await.unwrap();
    assert!(in_flight.is_ok(), "the in-flight request completed: {in_flight:?}");
    let status = wait_exit(&mut server.child, Duration::from_secs(30));
    assert!(status.success(), "graceful exit with code 0, got {status:?}");

    // No lease is left behind: a restart picks the work up at once.
    let queue =
        storage_sqlite::SqliteQueue::open_in_dir(data.path(), storage_sqlite::QueueOptions::default())
            .await
            .unwrap();
    for q in ["provisioning", "datasync"] {
        let depth =
            sync_core::WorkQueue::depth(&queue, &sync_core::QueueName::new(q).unwrap()).await.unwrap();
        assert_eq!(depth.leased, 0, "no lease left on {q}: {depth:?}");
        assert_eq!(depth.dead, 0, "nothing dead-lettered on {q}: {depth:?}");
    }
    drop(queue);
    let mut again = start(data.path());
    ready(&again.base).await;
    let t = transport(&again.base, &again.tokens[0].1);
    assert_eq!(pulled_rows(&t).await, want, "after a restart the same rows are served");
    sigterm(&again.child);
    assert!(wait_exit(&mut again.child, Duration::from_secs(30)).success());
}
