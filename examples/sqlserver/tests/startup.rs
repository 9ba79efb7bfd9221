//! The SQL Server server binary as an operator meets it: `--help`, a clear
//! refusal of missing settings, a fast failure naming the step when the
//! server is unreachable and, where `MSSQL_TEST_URL` names a real server, two
//! processes over one database serving the same devices.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqlserver-server"));
    // The developer's own settings must not leak into these tests.
    for var in
        ["OFFLINE_SYNC_MSSQL", "OFFLINE_SYNC_JWT_SECRET", "OFFLINE_SYNC_CURSOR_SECRET", "OFFLINE_SYNC_CONFIG"]
    {
        c.env_remove(var);
    }
    c
}

fn run_to_end(mut c: Command, within: Duration) -> Output {
    let started = Instant::now();
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < within, "took {:?}", started.elapsed());
    out
}

#[test]
fn help_explains_the_sql_server_settings() {
    let mut c = bin();
    c.arg("--help");
    let out = run_to_end(c, Duration::from_secs(30));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in
        ["--connection-string", "--layout", "schema-per-org", "--jwt-secret", "--cursor-secret", "--listen"]
    {
        assert!(text.contains(flag), "--help does not mention {flag}:\n{text}");
    }
}

#[test]
fn missing_settings_are_refused_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = bin();
    c.arg("--data-dir").arg(dir.path()).args(["--jwt-secret", "j", "--cursor-secret", "c"]);
    let out = run_to_end(c, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connection string"), "{err}");

    let mut c = bin();
    c.arg("--data-dir").arg(dir.path()).args(["--connection-string", "server=tcp:127.0.0.1,1"]);
    let out = run_to_end(c, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cursor_secret"));
}

#[test]
fn an_unreachable_server_fails_fast_naming_the_step() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sqlserver.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\njwt_secret = \"j\"\ncursor_secret = \"c\"\nlisten = \"127.0.0.1:0\"\n\
             [sqlserver]\nconnection_string = \"server=tcp:127.0.0.1,{port};user=u;password=p;\
             TrustServerCertificate=true\"\nconnect_timeout_secs = 2\n"
        ),
    )
    .unwrap();
    let mut c = bin();
    c.arg("--config").arg(&config).arg("--data-dir").arg(dir.path().join("data"));
    let out = run_to_end(c, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening the staging store"), "{err}");
    // Nothing was served: no listening banner.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
}

#[cfg(mssql_test_server)]
mod server {
    //! Two processes over the SQL Server named by `MSSQL_TEST_URL`.
    use std::io::{BufRead, BufReader};
    use std::process::Child;
    use std::sync::Arc;

    use sync_core::protocol::PullRequest;
    use sync_core::{OrgId, SyncTransport};
    use transport_http::{HttpSyncTransport, HttpTransportConfig};

    use super::*;

    struct Server {
        child: Child,
        base: String,
        tokens: Vec<(String, String)>,
        admin: String,
    }

    fn start(config: &std::path::Path, data: &std::path::Path) -> Server {
        let mut child = bin()
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut base, mut tokens, mut admin) = (None, Vec::new(), None);
        while let Some(Ok(line)) = lines.next() {
            if let Some(rest) = line.strip_prefix("offline-sync server listening on ") {
                base = Some(rest.trim().to_owned());
            }
            if let Some(rest) = line.trim().strip_prefix("dev token for ") {
                let (name, token) = rest.split_once(": ").unwrap();
                tokens.push((name.to_owned(), token.trim().to_owned()));
            }
            if let Some(rest) = line.trim().strip_prefix("admin token: ") {
                admin = Some(rest.trim().to_owned());
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Server { child, base: base.unwrap(), tokens, admin: admin.unwrap() }
    }

    async fn request(base: &str, method: &str, path: &str, token: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = base.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }

    async fn rows(base: &str, token: &str, cursor: Option<String>) -> (usize, String) {
        let config = HttpTransportConfig::new(base, OrgId::new("demo").unwrap());
        let t = Arc::new(HttpSyncTransport::with_token(config, token.to_owned()).unwrap());
        let mut n = 0;
        let mut cursor = cursor;
        loop {
            let r =
                t.pull(&PullRequest { cursor: cursor.clone(), limit: None, wait_ms: None }).await.unwrap();
            n += r.batches.iter().map(|b| b.puts.len()).sum::<usize>();
            cursor = Some(r.cursor.clone());
            if !r.has_more {
                return (n, r.cursor);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn two_processes_serve_one_deployment() {
        let url = std::env::var("MSSQL_TEST_URL").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("t{}_", std::process::id());
        let config = dir.path().join("sqlserver.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\njwt_secret = \"shared-jwt\"\ncursor_secret = \"shared-cursor\"\n\
                 listen = \"127.0.0.1:0\"\nlog = \"warn\"\n[server.demo]\naccounts = 20\n\
                 change_every_ms = 0\nsync_interval_secs = 1\n[sqlserver]\nconnection_string = {url:?}\n\
                 database_prefix = {prefix:?}\n"
            ),
        )
        .unwrap();
        let mut a = start(&config, &dir.path().join("a"));
        let mut b = start(&config, &dir.path().join("b"));
        let alice = a.tokens.iter().find(|(n, _)| n == "alice").unwrap().1.clone();
        // A device syncs on one process and continues on the other: the
        // cursor and the data are the deployment's, not a process's.
        let (n_a, cursor) = rows(&a.base, &alice, None).await;
        assert!(n_a > 0);
        let (n_b, _) = rows(&b.base, &alice, None).await;
        assert_eq!(n_a, n_b);
        let (again, _) = rows(&b.base, &alice, Some(cursor)).await;
        assert_eq!(again, 0, "nothing changed, so the cursor from A is up to date on B");

        let reply = request(&a.base, "DELETE", "/v1/admin/orgs/demo", &a.admin).await;
        assert!(reply.starts_with("HTTP/1.1 2"), "{reply}");
        for s in [&mut a, &mut b] {
            let status = Command::new("kill").arg("-TERM").arg(s.child.id().to_string()).status().unwrap();
            assert!(status.success());
            assert!(s.child.wait().unwrap().success());
        }
    }
}

#[cfg(not(mssql_test_server))]
#[test]
#[ignore = "skipped: MSSQL_TEST_URL is not set, so there is no SQL Server to run two server processes against"]
fn two_processes_serve_one_deployment() {}
