//! `HttpSyncTransport` against a scripted loopback server: decoding,
//! problems back into errors, retries with backoff and `Retry-After`,
//! timeouts, redirects, compression and TLS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sync_core::protocol::{ProfileResponse, PullRequest, PullResponse, PushRequest, PushResponse};
use sync_core::{Error, ErrorKind, OrgId, Seq, SyncTransport};
use transport_http::{ApiError, HttpSyncTransport, HttpTransportConfig, RetryPolicy, TlsRoots, token_fn};

use common::{closed_port_url, key, send, serve, serve_tls};

/// What the scripted server does for one request.
#[derive(Clone, Debug)]
enum Step {
    /// Answer normally.
    Ok,
    /// Answer with this error as a problem.
    Problem(Error),
    /// Answer with a bare status, optional `Retry-After`, and a text body.
    Bare(u16, Option<&'static str>),
    /// Wait, then answer normally.
    Slow(Duration),
    /// `307` to this URL.
    Redirect(String),
    /// `200` with a body that is not the expected JSON.
    Garbage,
}

/// A request the server saw.
#[derive(Clone, Debug)]
struct Seen {
    endpoint: String,
    org: String,
    at: Instant,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Script {
    steps: Arc<Mutex<VecDeque<Step>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Size of the cursor of normal pull answers (to make big responses).
    cursor_len: Arc<AtomicUsize>,
}

impl Script {
    fn then(&self, step: Step) -> &Self {
        self.steps.lock().unwrap().push_back(step);
        self
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn attempts(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn ok_answer(endpoint: &str, org: &str, body: &[u8], cursor_len: usize) -> Response {
    match endpoint {
        "profile" => axum::Json(ProfileResponse {
            org: OrgId::new(org).unwrap(),
            user_id: "alice".into(),
            profiles: vec![],
            partitions: vec![],
            schema_version: 3,
            schemas: vec![],
        })
        .into_response(),
        "pull" => {
            let request: PullRequest = serde_json::from_slice(body).unwrap();
            let cursor = if cursor_len > 0 {
                "c".repeat(cursor_len)
            } else {
                format!("after-{}", request.cursor.unwrap_or_default())
            };
            axum::Json(PullResponse {
                schema_version: 3,
                schemas: None,
                partitions: vec![],
                batches: vec![],
                checksums: None,
                cursor,
                has_more: false,
            })
            .into_response()
        }
        _ => {
            let request: PushRequest = serde_json::from_slice(body).unwrap();
            axum::Json(PushResponse {
                results: vec![],
                write_checkpoint: Seq(40 + request.mutations.len() as u64),
            })
            .into_response()
        }
    }
}

async fn handle(
    State(script): State<Script>,
    Path((org, endpoint)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    script.seen.lock().unwrap().push(Seen {
        endpoint: endpoint.clone(),
        org: org.clone(),
        at: Instant::now(),
        headers,
        body: body.clone(),
    });
    let step = script.steps.lock().unwrap().pop_front().unwrap_or(Step::Ok);
    let cursor_len = script.cursor_len.load(Ordering::SeqCst);
    match step {
        Step::Ok => ok_answer(&endpoint, &org, &body, cursor_len),
        Step::Problem(error) => ApiError::from(error).into_response(),
        Step::Bare(status, retry_after) => {
            let mut response =
                (StatusCode::from_u16(status).unwrap(), "<html>upstream trouble</html>").into_response();
            if let Some(value) = retry_after {
                response.headers_mut().insert("retry-after", value.parse().unwrap());
            }
            response
        }
        Step::Slow(delay) => {
            tokio::time::sleep(delay).await;
            ok_answer(&endpoint, &org, &body, cursor_len)
        }
        Step::Redirect(location) => (
            StatusCode::TEMPORARY_REDIRECT,
            [("location", format!("{location}/v1/orgs/{org}/sync/{endpoint}"))],
        )
            .into_response(),
        Step::Garbage => (StatusCode::OK, "{\"surprise\": true}").into_response(),
    }
}

fn router(script: Script) -> Router {
    Router::new()
        .route("/v1/orgs/{org}/sync/{endpoint}", get(handle))
        .route("/v1/orgs/{org}/sync/{endpoint}", post(handle))
        .with_state(script)
}

async fn server() -> (Script, String) {
    let script = Script::default();
    let base = serve(router(script.clone())).await;
    (script, base)
}

fn contoso() -> OrgId {
    OrgId::new("contoso").unwrap()
}

/// Fast retries for tests.
fn quick(attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(attempts)
        .with_backoff(Duration::from_millis(40), Duration::from_millis(200))
}

fn transport(base: &str, retry: RetryPolicy) -> HttpSyncTransport {
    let config = HttpTransportConfig::new(base, contoso()).with_retry(retry);
    HttpSyncTransport::with_token(config, "tok-123").unwrap()
}

fn pull(cursor: &str) -> PullRequest {
    PullRequest { cursor: Some(cursor.into()), limit: Some(100), wait_ms: None }
}

#[tokio::test]
async fn the_three_endpoints_round_trip() {
    let (script, base) = server().await;
    // A trailing slash and a path prefix on the base URL are fine.
    let t = transport(&format!("{base}/"), quick(1));
    assert_eq!(t.endpoint("pull"), format!("{base}/v1/orgs/contoso/sync/pull"));

    let profile = t.profile().await.unwrap();
    assert_eq!(
        (profile.org.as_str(), profile.user_id.as_str(), profile.schema_version),
        ("contoso", "alice", 3)
    );
    let pulled = t.pull(&pull("c7")).await.unwrap();
    assert_eq!(pulled.cursor, "after-c7");
    let pushed = t.push(&PushRequest::default()).await.unwrap();
    assert_eq!(pushed.write_checkpoint, Seq(40));

    let seen = script.seen();
    assert_eq!(seen.iter().map(|s| s.endpoint.as_str()).collect::<Vec<_>>(), ["profile", "pull", "push"]);
    for s in &seen {
        assert_eq!(s.org, "contoso");
        assert_eq!(s.headers["authorization"], "Bearer tok-123");
        assert!(s.headers["accept"].to_str().unwrap().contains("application/problem+json"));
        assert!(s.headers["user-agent"].to_str().unwrap().starts_with("offline-sync/"));
    }
    assert!(seen[0].body.is_empty() && !seen[0].headers.contains_key("content-type"), "GET has no body");
    assert_eq!(seen[1].headers["content-type"], "application/json");
    let sent: serde_json::Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(sent, serde_json::json!({"cursor": "c7", "limit": 100}));
}

#[tokio::test]
async fn problems_come_back_as_errors_of_their_kind_without_retries() {
    let (script, base) = server().await;
    let t = transport(&base, quick(4));
    let errors = [
        Error::resync("the cursor is older than the tombstone window"),
        Error::unauthenticated("the token has expired"),
        Error::forbidden("not your org"),
        Error::not_found("org 'contoso'"),
        Error::conflict("duplicate mutation id with different content"),
        Error::invalid_at("bad filter", 4),
        Error::limit("body_limit", 1024, 5000),
    ];
    for error in errors {
        script.then(Step::Problem(error.clone()));
        let before = script.attempts();
        let got = t.pull(&pull("c")).await.unwrap_err();
        assert_eq!(got, error);
        assert_eq!(script.attempts() - before, 1, "{:?} is not retried", error.kind());
    }
    script.then(Step::Problem(Error::internal("secret detail")));
    let got = t.pull(&pull("c")).await.unwrap_err();
    assert_eq!(got.kind(), ErrorKind::Internal);
    assert!(!got.to_string().contains("secret detail"));
}

#[tokio::test]
async fn bare_statuses_from_proxies_are_mapped() {
    let (script, base) = server().await;
    let t = transport(&base, quick(1));
    for (status, kind) in [
        (410, ErrorKind::ResyncRequired),
        (401, ErrorKind::Unauthenticated),
        (500, ErrorKind::Internal),
        (400, ErrorKind::InvalidInput),
    ] {
        script.then(Step::Bare(status, None));
        let e = t.profile().await.unwrap_err();
        assert_eq!(e.kind(), kind, "{status}: {e}");
        assert!(e.to_string().contains("upstream trouble"), "{e}");
    }
}

#[tokio::test]
async fn transient_failures_are_retried_with_growing_backoff() {
    let (script, base) = server().await;
    script.then(Step::Bare(503, None)).then(Step::Bare(502, None)).then(Step::Bare(504, None));
    let t = transport(&base, quick(5));
    let started = Instant::now();
    assert_eq!(t.pull(&pull("x")).await.unwrap().cursor, "after-x");
    assert_eq!(script.attempts(), 4);
    let at: Vec<Instant> = script.seen().iter().map(|s| s.at).collect();
    // Jittered waits: between half and all of 40, 80, 160 ms.
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, step) in gaps.iter().zip([40u64, 80, 160]) {
        assert!(*gap >= Duration::from_millis(step / 2), "{gaps:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (script, base) = server().await;
    script.then(Step::Bare(429, Some("1")));
    let t = transport(&base, quick(3));
    let pushed = t.push(&PushRequest::default()).await.unwrap();
    assert_eq!(pushed.write_checkpoint, Seq(40));
    let at: Vec<Instant> = script.seen().iter().map(|s| s.at).collect();
    assert_eq!(at.len(), 2);
    assert!(at[1] - at[0] >= Duration::from_millis(950), "waited {:?}", at[1] - at[0]);

    // An Unavailable problem carries Retry-After too (the server's default 1 s).
    script.then(Step::Problem(Error::unavailable("store busy")));
    let before = Instant::now();
    assert!(t.profile().await.is_ok());
    assert!(before.elapsed() >= Duration::from_millis(950));
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_ends_the_request_with_the_delay() {
    let (script, base) = server().await;
    script.then(Step::Bare(503, Some("120")));
    let t = transport(&base, quick(5).with_max_retry_after(Duration::from_secs(60)));
    let started = Instant::now();
    let e = t.profile().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(script.attempts(), 1);
    match e {
        Error::Unavailable { retry_after, .. } => assert_eq!(retry_after, Some(Duration::from_secs(120))),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn attempts_are_bounded() {
    let (script, base) = server().await;
    for _ in 0..10 {
        script.then(Step::Bare(503, None));
    }
    let t = transport(&base, quick(3));
    let e = t.pull(&pull("x")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(script.attempts(), 3);

    let none = transport(&base, RetryPolicy::none());
    assert_eq!(none.pull(&pull("x")).await.unwrap_err().kind(), ErrorKind::Unavailable);
    assert_eq!(script.attempts(), 4);
}

#[tokio::test]
async fn connection_failures_are_retried_then_unavailable() {
    let base = closed_port_url().await;
    let t = transport(&base, quick(3));
    let started = Instant::now();
    let e = t.profile().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("could not connect"), "{e}");
    // Two backoffs of at least 20 and 40 ms happened.
    assert!(started.elapsed() >= Duration::from_millis(60), "{:?}", started.elapsed());
}

#[tokio::test]
async fn timeouts_are_retried_and_live_pulls_get_their_wait_on_top() {
    let (script, base) = server().await;
    script.then(Step::Slow(Duration::from_secs(3)));
    let config = HttpTransportConfig::new(&base, contoso())
        .with_request_timeout(Duration::from_millis(800))
        .with_retry(quick(2));
    let t = HttpSyncTransport::with_token(config, "tok").unwrap();
    assert!(t.profile().await.is_ok(), "the second attempt is answered in time");
    assert_eq!(script.attempts(), 2);

    script.then(Step::Slow(Duration::from_secs(3))).then(Step::Slow(Duration::from_secs(3)));
    let e = t.profile().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.to_string().contains("within"), "{e}");

    // A live pull waits up to wait_ms: its timeout is the wait plus the
    // request timeout.
    script.then(Step::Slow(Duration::from_millis(1200)));
    let before = script.attempts();
    let live = PullRequest { cursor: Some("c".into()), limit: None, wait_ms: Some(1000) };
    assert_eq!(t.pull(&live).await.unwrap().cursor, "after-c");
    assert_eq!(script.attempts() - before, 1);
}

#[tokio::test]
async fn tokens_come_from_the_provider_on_every_attempt() {
    let (script, base) = server().await;
    script.then(Step::Bare(503, None));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let provider = token_fn(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok(format!("token-{n}")) }
    });
    let config = HttpTransportConfig::new(&base, contoso()).with_retry(quick(3));
    let t = HttpSyncTransport::new(config, provider).unwrap();
    t.profile().await.unwrap();
    let auth: Vec<String> =
        script.seen().iter().map(|s| s.headers["authorization"].to_str().unwrap().to_owned()).collect();
    assert_eq!(auth, ["Bearer token-1", "Bearer token-2"]);

    let failing = token_fn(|| async { Err(Error::unauthenticated("signed out")) });
    let t = HttpSyncTransport::new(HttpTransportConfig::new(&base, contoso()), failing).unwrap();
    let before = script.attempts();
    assert_eq!(t.profile().await.unwrap_err(), Error::unauthenticated("signed out"));
    assert_eq!(script.attempts(), before, "no request without a token");
}

#[tokio::test]
async fn redirects_to_another_deployment_are_followed() {
    let (home, home_base) = server().await;
    let (other, other_base) = server().await;
    home.then(Step::Redirect(other_base.clone()));
    let t = transport(&home_base, quick(1));
    let body = PushRequest::default();
    assert_eq!(t.push(&body).await.unwrap().write_checkpoint, Seq(40));
    assert_eq!(home.attempts(), 1);
    let there = other.seen();
    assert_eq!(there.len(), 1);
    assert_eq!(there[0].headers["authorization"], "Bearer tok-123");
    assert_eq!(there[0].body.as_ref(), br#"{"mutations":[]}"#, "the body is sent again");

    // A loop ends with an error rather than forever.
    for _ in 0..10 {
        home.then(Step::Redirect(home_base.clone()));
    }
    let e = t.profile().await.unwrap_err();
    assert!(e.to_string().contains("redirects"), "{e}");
}

#[tokio::test]
async fn compressed_responses_are_decoded() {
    let script = Script::default();
    script.cursor_len.store(200_000, Ordering::SeqCst);
    let router = router(script.clone()).layer(tower_http::compression::CompressionLayer::new());
    let base = serve(router).await;
    let t = transport(&base, quick(1));
    let pulled = t.pull(&pull("x")).await.unwrap();
    assert_eq!(pulled.cursor.len(), 200_000);
    let accept = script.seen()[0].headers["accept-encoding"].to_str().unwrap().to_owned();
    for encoding in ["gzip", "br", "zstd"] {
        assert!(accept.contains(encoding), "{accept}");
    }
    // The server really compresses, for each encoding.
    for encoding in ["gzip", "br", "zstd"] {
        let reply = send(
            http::Method::POST,
            &t.endpoint("pull"),
            &[("content-type", "application/json"), ("accept-encoding", encoding)],
            r#"{"cursor":"x"}"#,
        )
        .await;
        assert_eq!(reply.header("content-encoding"), Some(encoding));
        assert!(reply.body.len() < 10_000, "{encoding}: {} bytes", reply.body.len());
    }
}

#[tokio::test]
async fn responses_over_the_size_limit_are_refused() {
    let script = Script::default();
    script.cursor_len.store(100_000, Ordering::SeqCst);
    let base = serve(router(script.clone())).await;
    let config =
        HttpTransportConfig::new(&base, contoso()).with_max_response_bytes(10_000).with_retry(quick(3));
    let t = HttpSyncTransport::with_token(config, "tok").unwrap();
    let e = t.pull(&pull("x")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    assert_eq!(script.attempts(), 1, "not retried");
}

#[tokio::test]
async fn undecodable_success_bodies_are_internal_errors() {
    let (script, base) = server().await;
    script.then(Step::Garbage);
    let e = transport(&base, quick(3)).pull(&pull("x")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal);
    assert!(e.to_string().contains("pull response could not be decoded"), "{e}");
    assert_eq!(script.attempts(), 1);
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let script = Script::default();
    let base = serve_tls(router(script.clone())).await;

    let trusted = HttpTransportConfig::new(&base, contoso())
        .with_tls_roots(TlsRoots::none().with_pem(key("tls-ca.cert.pem")))
        .with_retry(quick(1));
    let t = HttpSyncTransport::with_token(trusted, "tok").unwrap();
    assert_eq!(t.pull(&pull("secure")).await.unwrap().cursor, "after-secure");
    assert!(t.profile().await.is_ok());

    // The public roots do not know the test CA: refused, and not retried.
    let slow_retries = quick(3).with_backoff(Duration::from_secs(3), Duration::from_secs(3));
    let untrusted = HttpTransportConfig::new(&base, contoso()).with_retry(slow_retries);
    let t = HttpSyncTransport::with_token(untrusted, "tok").unwrap();
    let started = Instant::now();
    let e = t.profile().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.to_string().contains("TLS handshake"), "{e}");
    assert!(started.elapsed() < Duration::from_millis(1400), "not retried (a retry waits 1.5 s or more)");
    assert_eq!(script.attempts(), 2, "only the trusted requests arrived");
}

#[tokio::test]
async fn bad_configuration_is_invalid_input() {
    let bad =
        |url: &str| HttpSyncTransport::with_token(HttpTransportConfig::new(url, contoso()), "t").unwrap_err();
    assert_eq!(bad("ftp://example.com").kind(), ErrorKind::InvalidInput);
    assert_eq!(bad("no scheme").kind(), ErrorKind::InvalidInput);
    let zero = HttpTransportConfig::new("https://example.com", contoso()).with_retry(quick(0));
    assert_eq!(HttpSyncTransport::with_token(zero, "t").unwrap_err().kind(), ErrorKind::InvalidInput);
    let roots = HttpTransportConfig::new("https://example.com", contoso()).with_tls_roots(TlsRoots::none());
    assert_eq!(HttpSyncTransport::with_token(roots, "t").unwrap_err().kind(), ErrorKind::InvalidInput);
    // A token that cannot be a header value.
    let t = HttpSyncTransport::with_token(HttpTransportConfig::new("http://127.0.0.1:9", contoso()), "a\nb")
        .unwrap();
    assert_eq!(t.profile().await.unwrap_err().kind(), ErrorKind::InvalidInput);
}
