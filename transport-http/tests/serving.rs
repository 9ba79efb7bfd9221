//! The router end to end: `HttpSyncTransport` against it (plain and TLS,
//! through an org-directory redirect to another deployment), and the
//! `serve` helpers' graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sync_core::memory::{MemoryConnector, MemoryQueue, MemoryStagingStore};
use sync_core::protocol::{ClientMutation, MutationOutcome, PullRequest, PushRequest};
use sync_core::{
    EntityName, ErrorKind, MutationId, MutationOp, RowId, StagingStore, SyncService, SyncTransport, Value,
};
use transport_http::{
    HttpConfig, HttpSyncTransport, HttpTransportConfig, JwtAuthenticator, RetryPolicy, TlsRoots, router,
    serve,
};

use common::fixture::{Backend, Fixture, SECRET, org};
use common::key;

fn transport(base: &str, org_name: &str, token: String) -> HttpSyncTransport {
    let config = HttpTransportConfig::new(base, org(org_name)).with_retry(RetryPolicy::none());
    HttpSyncTransport::with_token(config, token).unwrap()
}

fn tls_transport(base: &str, token: String) -> HttpSyncTransport {
    let config = HttpTransportConfig::new(base, org("contoso"))
        .with_retry(RetryPolicy::none())
        .with_tls_roots(TlsRoots::none().with_pem(key("tls-ca.cert.pem")));
    HttpSyncTransport::with_token(config, token).unwrap()
}

/// Pulls to the end; returns the row ids put and the last cursor.
async fn pull_all(client: &HttpSyncTransport, mut cursor: Option<String>) -> (Vec<String>, String) {
    let mut ids = Vec::new();
    loop {
        let page = client
            .pull(&PullRequest { cursor: cursor.clone(), limit: Some(1), wait_ms: None })
            .await
            .unwrap();
        for batch in &page.batches {
            for put in &batch.puts {
                ids.push(put[0].canonical_text());
            }
        }
        cursor = Some(page.cursor.clone());
        if !page.has_more {
            ids.sort();
            return (ids, page.cursor);
        }
    }
}

async fn transport_end_to_end(backend: Backend) {
    let f = Fixture::start(backend).await;
    let client = transport(&f.url, "contoso", f.alice());

    let profile = client.profile().await.unwrap();
    assert_eq!(profile.profiles.len(), 1);
    assert_eq!(profile.schemas[0].name.as_str(), "account");

    let (ids, cursor) = pull_all(&client, None).await;
    assert_eq!(ids, vec!["a1", "a2"]);

    let staged = f.store.org(&org("contoso")).await.unwrap();
    let a2 =
        staged.row(&EntityName::new("account").unwrap(), &RowId::new("a2").unwrap()).await.unwrap().unwrap();
    let push = PushRequest {
        mutations: vec![ClientMutation {
            id: MutationId::new_v4(),
            entity: EntityName::new("account").unwrap(),
            op: MutationOp::Update,
            row_id: RowId::new("a2").unwrap(),
            base_version: Some(a2.version),
            values: [(sync_core::ColumnName::new("revenue").unwrap(), Value::Integer(999))].into(),
        }],
    };
    let result = client.push(&push).await.unwrap();
    assert!(matches!(result.results[0].outcome, MutationOutcome::Applied { .. }), "{result:?}");
    let (ids, cursor) = pull_all(&client, Some(cursor)).await;
    assert_eq!(ids, vec!["a2"]);

    // Live mode through the client: wakes on a change.
    let waiting = {
        let client = client.clone();
        let cursor = cursor.clone();
        tokio::spawn(async move {
            client
                .pull(&PullRequest { cursor: Some(cursor), limit: None, wait_ms: Some(15_000) })
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.add_account("contoso", "a9", "Late", "alice", 1).await;
    let page = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    assert_eq!(page.batches[0].puts[0][0], Value::from("a9"));

    // Errors come back as their kinds.
    let e = client
        .pull(&PullRequest { cursor: Some("forged".into()), ..PullRequest::default() })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResyncRequired);
    let foreign = transport(&f.url, "fabrikam", f.alice());
    assert_eq!(foreign.profile().await.unwrap_err().kind(), ErrorKind::Forbidden);
    let anonymous = transport(&f.url, "contoso", "not a token".into());
    assert_eq!(anonymous.profile().await.unwrap_err().kind(), ErrorKind::Unauthenticated);
}

async fn the_client_follows_the_directory_to_another_deployment(backend: Backend) {
    // Deployment B serves contoso; deployment A knows only that.
    let b = Fixture::start(backend).await;
    let store = Arc::new(MemoryStagingStore::new());
    store.set_org_location(&org("contoso"), Some(b.url.clone())).await.unwrap();
    let service =
        SyncService::builder(store, Arc::new(MemoryQueue::new()), Arc::new(MemoryConnector::new()), b"a")
            .build();
    let auth = Arc::new(JwtAuthenticator::hs256(SECRET.to_vec()).unwrap());
    let a_url = common::serve(router(service, auth, HttpConfig::default())).await;

    let client = transport(&a_url, "contoso", b.alice());
    let (ids, _) = pull_all(&client, None).await;
    assert_eq!(ids, vec!["a1", "a2"], "pulled from deployment B through A's redirect");
    assert_eq!(client.profile().await.unwrap().org.as_str(), "contoso");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let f = Fixture::start(Backend::Memory).await;
    let listener = serve::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = router(
        f.service.clone(),
        Arc::new(JwtAuthenticator::hs256(SECRET.to_vec()).unwrap()),
        HttpConfig::default(),
    );
    let server = tokio::spawn(serve::serve(listener, app, async move {
        let _ = stopped.await;
    }));
    let base = format!("http://{addr}");
    let client = transport(&base, "contoso", f.alice());
    let (_, cursor) = pull_all(&client, None).await;
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let page =
                client.pull(&PullRequest { cursor: Some(cursor), limit: None, wait_ms: Some(1_500) }).await;
            (page, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(()).unwrap();
    let (page, elapsed) = in_flight.await.unwrap();
    assert!(page.is_ok(), "the in-flight pull was answered: {page:?}");
    assert!(elapsed >= Duration::from_millis(1_400), "it ran its whole wait ({elapsed:?})");
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "no longer accepting connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_from_pem_files_with_graceful_shutdown() {
    let f = Fixture::start(Backend::Memory).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let tls =
        serve::tls_config_from_pem_files(&dir.join("tls-server.cert.pem"), &dir.join("tls-server.key.pem"))
            .unwrap();
    let listener = serve::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = router(
        f.service.clone(),
        Arc::new(JwtAuthenticator::hs256(SECRET.to_vec()).unwrap()),
        HttpConfig::default(),
    );
    let server = tokio::spawn(serve::serve_tls(
        listener,
        app,
        tls,
        async move {
            let _ = stopped.await;
        },
        Some(Duration::from_secs(10)),
    ));
    let client = tls_transport(&format!("https://localhost:{port}"), f.alice());
    let (ids, cursor) = pull_all(&client, None).await;
    assert_eq!(ids, vec!["a1", "a2"]);
    // A client that does not trust the test CA is refused by TLS.
    let untrusting = HttpSyncTransport::with_token(
        HttpTransportConfig::new(format!("https://localhost:{port}"), org("contoso"))
            .with_retry(RetryPolicy::none())
            .with_tls_roots(TlsRoots::none().with_pem(key("tls-server.cert.pem"))),
        f.alice(),
    )
    .unwrap();
    assert!(untrusting.profile().await.is_err());

    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move {
            client.pull(&PullRequest { cursor: Some(cursor), limit: None, wait_ms: Some(1_200) }).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(()).unwrap();
    assert!(in_flight.await.unwrap().is_ok(), "the in-flight pull finished within the grace period");
    tokio::time::timeout(Duration::from_secs(15), server).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let f = Fixture::start(Backend::Memory).await;
    let listener = serve::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(
        f.service.clone(),
        Arc::new(JwtAuthenticator::hs256(SECRET.to_vec()).unwrap()),
        HttpConfig::default(),
    );
    tokio::spawn(serve::serve(listener, app, std::future::pending()));
    let client: Client<_, Full<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let request = http::Request::post(format!("http://{addr}/v1/orgs/contoso/sync/pull"))
        .header("authorization", format!("Bearer {}", f.alice()))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["batches"][0]["puts"].as_array().unwrap().len(), 2);
}

#[test]
fn tls_configuration_errors_say_what_is_wrong() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let missing =
        serve::tls_config_from_pem_files(&dir.join("nope.pem"), &dir.join("tls-server.key.pem")).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::InvalidInput);
    assert!(missing.to_string().contains("nope.pem"), "{missing}");
    let mismatched =
        serve::tls_config_from_pem(&key("tls-server.cert.pem"), &key("ec1.key.pem")).unwrap_err();
    assert!(mismatched.to_string().contains("do not fit together"), "{mismatched}");
    let no_cert = serve::tls_config_from_pem(b"", &key("tls-server.key.pem")).unwrap_err();
    assert!(no_cert.to_string().contains("no certificate"), "{no_cert}");
    let no_key = serve::tls_config_from_pem(&key("tls-server.cert.pem"), b"nothing here").unwrap_err();
    assert!(no_key.to_string().contains("no usable private key"), "{no_key}");
}

across_backends!(transport_end_to_end, the_client_follows_the_directory_to_another_deployment);
