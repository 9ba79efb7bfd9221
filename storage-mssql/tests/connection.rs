//! Connection error paths of the queue and the staging store against
//! loopback TCP listeners: a refused port, a server that accepts and never
//! answers (connect timeout), one that closes at once, one that answers the
//! TDS pre-login with garbage, and bad configurations. No SQL Server is
//! needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use storage_mssql::{OrgLayout, SqlServerConfig, SqlServerQueue, SqlServerStagingStore};
use sync_core::{ErrorKind, OrgId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn config(port: u16) -> SqlServerConfig {
    let mut c = SqlServerConfig::from_ado(format!(
        "server=tcp:127.0.0.1,{port};database=offline_sync;user=sync;password=secret;TrustServerCertificate=true"
    ));
    c.connect_timeout = Duration::from_millis(500);
    c.command_timeout = Duration::from_millis(500);
    c
}

#[tokio::test]
async fn refused_connection_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = SqlServerQueue::connect(&config(port)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    for layout in [OrgLayout::DatabasePerOrg, OrgLayout::SchemaPerOrg] {
        let mut c = config(port);
        c.layout = layout;
        let err = SqlServerStagingStore::connect(&c).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.is_retryable());
    }
}

/// A server that accepts one connection, reads the pre-login and never
/// answers; its port and its task.
async fn stalled_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = sock.read(&mut buf).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    (port, server)
}

#[tokio::test]
async fn stalled_server_times_out_within_the_connect_timeout() {
    let (port, server) = stalled_server().await;
    let started = Instant::now();
    let err = SqlServerQueue::connect(&config(port)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    server.abort();

    let (port, server) = stalled_server().await;
    let started = Instant::now();
    let err = SqlServerStagingStore::connect(&config(port)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    server.abort();
}

#[tokio::test]
async fn server_closing_the_connection_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        drop(sock);
    });
    let err = SqlServerQueue::connect(&config(port)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    server.await.unwrap();
}

#[tokio::test]
async fn garbage_prelogin_answer_is_an_error_not_a_hang() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = sock.read(&mut buf).await;
        // A TDS header announcing a pre-login response whose body is nonsense.
        let mut reply = vec![0x04, 0x01, 0x00, 0x10, 0x00, 0x00, 0x01, 0x00];
        reply.extend_from_slice(&[0xff; 8]);
        let _ = sock.write_all(&reply).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let started = Instant::now();
    let err = SqlServerQueue::connect(&config(port)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Internal), "{err}");
    server.abort();
}

#[tokio::test]
async fn bad_connection_strings_are_invalid_input() {
    let mut c = config(1);
    c.target = storage_mssql::ConnectionTarget::Ado("server=tcp:localhost,notaport".into());
    let err = SqlServerQueue::connect(&c).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let mut c = config(1);
    c.pool_size = 0;
    assert_eq!(SqlServerQueue::connect(&c).await.unwrap_err().kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn bad_configurations_are_invalid_input_before_any_connection() {
    let mut c = config(1);
    c.control_schema = "dbo; DROP TABLE x".into();
    assert_eq!(SqlServerStagingStore::connect(&c).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    let mut c = config(1);
    c.database_prefix = "sync-org-".into();
    assert_eq!(SqlServerStagingStore::connect(&c).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    let mut c = config(1);
    c.org_pool_size = 0;
    assert_eq!(SqlServerStagingStore::connect(&c).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    let mut c = config(1);
    c.target = storage_mssql::ConnectionTarget::Ado("server=tcp:localhost,notaport".into());
    assert_eq!(SqlServerStagingStore::connect(&c).await.unwrap_err().kind(), ErrorKind::InvalidInput);
}

#[test]
fn org_containers_are_prefixed_and_bounded() {
    let c = config(1);
    assert_eq!(c.org_container(&OrgId::new("contoso").unwrap()).unwrap(), "sync_org_contoso");
    let long = OrgId::new("o".repeat(125)).unwrap();
    let err = c.org_container(&long).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    // With an empty prefix an org id could name a system database or
    // schema, or the control schema: provisioning would write into it and
    // drop_org drop it.
    let mut bare = config(1);
    bare.database_prefix = String::new();
    for system in ["master", "TempDB", "dbo", "sys", "db_owner"] {
        let err = bare.org_container(&OrgId::new(system).unwrap()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{system}: {err}");
    }
    bare.layout = storage_mssql::OrgLayout::SchemaPerOrg;
    bare.control_schema = "ctl".into();
    assert!(bare.org_container(&OrgId::new("CTL").unwrap()).is_err(), "the control schema");
    assert_eq!(bare.org_container(&OrgId::new("contoso").unwrap()).unwrap(), "contoso");
}
