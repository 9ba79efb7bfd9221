//! Problem responses and the JSON body extractor, over loopback sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Extension, Router};
use http::{Method, StatusCode};
use serde_json::json;
use sync_core::protocol::PushRequest;
use sync_core::{Error, ErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport_http::{ApiError, ApiJson, BodyLimit, PROBLEM_TYPE_BASE, error_from_response, problem_type};

use common::{Reply, send, serve};

fn sample(kind: &str) -> Error {
    match kind {
        "not-found" => Error::not_found("org 'contoso'"),
        "conflict" => Error::conflict("the lease is stale"),
        "invalid-input" => Error::invalid_at("unexpected 'eqq' in the filter", 9),
        "limit-exceeded" => Error::limit("rows_per_page", 1000, 25000),
        "unauthenticated" => Error::unauthenticated("the token has expired"),
        "forbidden" => Error::forbidden("alice may not read org 'fabrikam'"),
        "resync-required" => Error::resync("the cursor is older than the tombstone window"),
        "unavailable" => Error::Unavailable {
            message: "the store is busy".into(),
            retry_after: Some(Duration::from_millis(2500)),
        },
        "unavailable-no-hint" => Error::unavailable("the queue is down"),
        _ => Error::internal("disk I/O error at /var/lib/secret-path"),
    }
}

async fn error_route(Path(kind): Path<String>) -> ApiError {
    ApiError::from(sample(&kind))
}

async fn push_route(ApiJson(request): ApiJson<PushRequest>) -> ApiJson<serde_json::Value> {
    ApiJson(json!({ "mutations": request.mutations.len() }))
}

async fn app() -> String {
    let router = Router::new()
        .route("/error/{kind}", get(error_route))
        .route("/push", post(push_route).layer(Extension(BodyLimit(1024))))
        .route("/push-default", post(push_route));
    serve(router).await
}

#[tokio::test]
async fn every_error_kind_is_a_problem_with_its_status_and_type() {
    let base = app().await;
    let expected = [
        ("not-found", 404, "not found: org 'contoso'"),
        ("conflict", 409, "the lease is stale"),
        ("invalid-input", 400, "unexpected 'eqq' in the filter"),
        (
            "limit-exceeded",
            413,
            "limit 'rows_per_page' exceeded: the maximum is 1000, the request needed 25000",
        ),
        ("unauthenticated", 401, "the token has expired"),
        ("forbidden", 403, "alice may not read org 'fabrikam'"),
        ("resync-required", 410, "the cursor is older than the tombstone window"),
        ("unavailable", 503, "the store is busy"),
        ("internal", 500, "an internal error occurred; the server log has the details"),
    ];
    for (kind, status, detail) in expected {
        let reply = send(Method::GET, &format!("{base}/error/{kind}"), &[], "").await;
        assert_eq!(reply.status.as_u16(), status, "{kind}");
        assert_eq!(reply.header("content-type"), Some("application/problem+json"), "{kind}");
        let problem = reply.json();
        assert_eq!(problem["type"], format!("{PROBLEM_TYPE_BASE}{kind}"), "{kind}");
        assert_eq!(problem["status"], status, "{kind}");
        assert_eq!(problem["detail"], detail, "{kind}");
        assert!(problem["title"].as_str().is_some_and(|t| !t.is_empty()), "{kind}");
        assert_eq!(reply.header("www-authenticate").is_some(), kind == "unauthenticated", "{kind}");
        assert_eq!(reply.header("retry-after").is_some(), kind == "unavailable", "{kind}");

        // The client decodes the problem back into the same error.
        let decoded = error_from_response(reply.status, &reply.headers, &reply.body);
        assert_eq!(decoded.kind().as_str(), kind);
        match kind {
            "internal" => assert!(!decoded.to_string().contains("secret-path")),
            // Retry-After is whole seconds, rounded up.
            "unavailable" => assert_eq!(
                decoded,
                Error::Unavailable {
                    message: "the store is busy".into(),
                    retry_after: Some(Duration::from_secs(3))
                }
            ),
            _ => assert_eq!(decoded, sample(kind), "{kind}"),
        }
    }
}

#[tokio::test]
async fn problem_extension_members() {
    let base = app().await;
    let limit = send(Method::GET, &format!("{base}/error/limit-exceeded"), &[], "").await.json();
    assert_eq!(
        (limit["limit"].as_str(), limit["max"].as_u64(), limit["requested"].as_u64()),
        (Some("rows_per_page"), Some(1000), Some(25000))
    );
    let invalid = send(Method::GET, &format!("{base}/error/invalid-input"), &[], "").await.json();
    assert_eq!(invalid["position"], 9);
    let internal = send(Method::GET, &format!("{base}/error/internal"), &[], "").await.json();
    assert!(internal["instance"].as_str().unwrap().starts_with("urn:uuid:"));
    assert!(!internal.to_string().contains("secret-path"), "internal details stay in the log");

    let busy = send(Method::GET, &format!("{base}/error/unavailable"), &[], "").await;
    assert_eq!(busy.header("retry-after"), Some("3"), "2.5 s rounds up");
    let down = send(Method::GET, &format!("{base}/error/unavailable-no-hint"), &[], "").await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.header("retry-after"), Some("1"), "Unavailable always says when to retry");
}

fn json_ct() -> [(&'static str, &'static str); 1] {
    [("content-type", "application/json")]
}

fn assert_problem(reply: &Reply, status: u16, kind: ErrorKind, says: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.header("content-type"), Some("application/problem+json"));
    let problem = reply.json();
    assert_eq!(problem["type"], problem_type(kind));
    assert_eq!(problem["status"], status);
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains(says), "{detail:?} should say {says:?}");
}

#[tokio::test]
async fn json_bodies_are_decoded() {
    let base = app().await;
    let url = format!("{base}/push");
    let ok = send(Method::POST, &url, &json_ct(), r#"{"mutations": []}"#).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json(), json!({"mutations": 0}));
    let with_charset = send(
        Method::POST,
        &url,
        &[("content-type", "application/json; charset=utf-8")],
        r#"{"mutations":[]}"#,
    )
    .await;
    assert_eq!(with_charset.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_bodies_are_problems_that_say_what_is_wrong() {
    let base = app().await;
    let url = format!("{base}/push");
    let cases: [(&str, &str); 8] = [
        (r#"{"mutations": ["#, "line 1 column"),
        ("{\n  \"mutations\": [],\n  oops\n}", "line 3"),
        (r#"{"mutations": 5}"#, "'mutations'"),
        (r#"{"mutations": [], "extra": 1}"#, "unknown field `extra`"),
        (r#"{"mutations": [{"id": "not-a-uuid"}]}"#, "'mutations[0].id'"),
        (r#"{"mutations": []} {"again": 1}"#, "trailing characters"),
        ("", "empty"),
        ("[]", "invalid request body"),
    ];
    for (body, says) in cases {
        let reply = send(Method::POST, &url, &json_ct(), body).await;
        assert_problem(&reply, 400, ErrorKind::InvalidInput, says);
    }
}

#[tokio::test]
async fn wrong_content_types_are_415() {
    let base = app().await;
    let url = format!("{base}/push");
    let body = r#"{"mutations": []}"#;
    let none = send(Method::POST, &url, &[], body).await;
    assert_problem(&none, 415, ErrorKind::InvalidInput, "no Content-Type");
    let text = send(Method::POST, &url, &[("content-type", "text/plain")], body).await;
    assert_problem(&text, 415, ErrorKind::InvalidInput, "'text/plain'");
    let form = send(Method::POST, &url, &[("content-type", "application/x-www-form-urlencoded")], body).await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // The client side still reads it as InvalidInput.
    assert_eq!(error_from_response(form.status, &form.headers, &form.body).kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_naming_the_limit() {
    let base = app().await;
    let big = format!(r#"{{"mutations": [], "pad": "{}"}}"#, "x".repeat(2000));
    let reply = send(Method::POST, &format!("{base}/push"), &json_ct(), big.clone()).await;
    assert_problem(&reply, 413, ErrorKind::LimitExceeded, "limit 'body_limit' exceeded");
    let problem = reply.json();
    assert_eq!(problem["limit"], "body_limit");
    assert_eq!(problem["max"], 1024);
    assert_eq!(problem["requested"], big.len());
    assert_eq!(
        error_from_response(reply.status, &reply.headers, &reply.body),
        Error::limit("body_limit", 1024, big.len() as u64)
    );

    // Without the extension, the default limit applies (4 MiB).
    let fine = send(Method::POST, &format!("{base}/push-default"), &json_ct(), r#"{"mutations": []}"#).await;
    assert_eq!(fine.status, StatusCode::OK);
    let huge = vec![b' '; BodyLimit::DEFAULT.0 + 1];
    let reply = send(Method::POST, &format!("{base}/push-default"), &json_ct(), huge).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// Sends raw HTTP/1.1 bytes and reads until the server closes.
async fn raw(base: &str, request: &[u8]) -> String {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn chunked_bodies_over_the_limit_are_413_too() {
    let base = app().await;
    let chunk = "x".repeat(800);
    let request = format!(
        "POST /push HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    let response = raw(&base, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("application/problem+json"), "{response}");
    assert!(response.contains(r#""requested":1025"#), "at least the limit plus one: {response}");
}

#[tokio::test]
async fn truncated_bodies_are_400() {
    let base = app().await;
    // Content-Length promises more than is sent before the client half-closes.
    let request = "POST /push HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: 40\r\nconnection: close\r\n\r\n{\"mutations\": [";
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let response = String::from_utf8_lossy(&out);
    // The server may answer 400 or just close; it must never accept it.
    assert!(!response.starts_with("HTTP/1.1 200"), "{response}");
    if !response.is_empty() {
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    }
}
