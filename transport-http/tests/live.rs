//! Live mode over a loopback socket: a pull with `wait_ms` returns soon
//! after a change is staged for the caller, not for changes elsewhere, and
//! waits no longer than the router and the service allow. Timing bounds are
//! generous: the machines are shared and noisy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value as Json, json};
use sync_core::service::SyncConfig;
use transport_http::HttpConfig;

use common::fixture::{Backend, Fixture, Options};

const PULL: &str = "/v1/orgs/contoso/sync/pull";

/// Alice's cursor after pulling everything.
async fn up_to_date(f: &Fixture) -> Json {
    f.pull_all(&f.alice()).await["cursor"].clone()
}

fn row_ids(pull: &Json) -> Vec<String> {
    let mut ids: Vec<String> = pull["batches"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["puts"].as_array().unwrap().iter().map(|r| r[0].as_str().unwrap().to_owned()))
        .collect();
    ids.sort();
    ids
}

/// Starts a waiting pull; returns its handle (resolving to status, body,
/// elapsed time).
fn wait_pull(f: &Fixture, cursor: &Json, wait_ms: u64) -> tokio::task::JoinHandle<(u16, Json, Duration)> {
    let url = format!("{}{PULL}", f.url);
    let auth = format!("Bearer {}", f.alice());
    let body = json!({"cursor": cursor, "wait_ms": wait_ms}).to_string();
    tokio::spawn(async move {
        let started = Instant::now();
        let reply = common::send(
            Method::POST,
            &url,
            &[("authorization", &auth), ("content-type", "application/json")],
            body,
        )
        .await;
        (reply.status.as_u16(), reply.json(), started.elapsed())
    })
}

async fn wakes_soon_after_a_change_for_the_caller(backend: Backend) {
    let f = Fixture::start(backend).await;
    let cursor = up_to_date(&f).await;
    let pending = wait_pull(&f, &cursor, 20_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pending.is_finished(), "an up-to-date live pull waits");
    let staged_at = Instant::now();
    f.add_account("contoso", "a3", "Apex", "alice", 10).await;
    let (status, body, elapsed) = pending.await.unwrap();
    let after_change = staged_at.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(row_ids(&body), vec!["a3"]);
    assert!(elapsed >= Duration::from_millis(400), "it waited ({elapsed:?})");
    assert!(after_change < Duration::from_secs(5), "it returned soon after the change ({after_change:?})");
}

async fn sleeps_through_changes_the_caller_does_not_hold(backend: Backend) {
    let f = Fixture::start(backend).await;
    let cursor = up_to_date(&f).await;
    let pending = wait_pull(&f, &cursor, 2_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Bob's partition and another org change; alice's do not.
    f.add_account("contoso", "b2", "Bravo", "bob", 5).await;
    f.add_account("fabrikam", "f2", "Fabrikam Two", "alice", 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "a change in another partition does not end the wait");
    let (status, body, elapsed) = pending.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(row_ids(&body), Vec::<String>::new());
    assert!(elapsed >= Duration::from_millis(1_900), "it waited its whole wait ({elapsed:?})");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    // The empty answer's cursor is still good: the next pull has nothing for
    // alice either, and a later change of hers arrives.
    let next = f.post(PULL, &f.alice(), &json!({"cursor": body["cursor"]})).await.json();
    assert_eq!(row_ids(&next), Vec::<String>::new());
    f.add_account("contoso", "a4", "Aster", "alice", 7).await;
    let next = f.post(PULL, &f.alice(), &json!({"cursor": next["cursor"]})).await.json();
    assert_eq!(row_ids(&next), vec!["a4"]);
}

async fn waits_are_capped_by_the_router(backend: Backend) {
    let options = Options {
        http: HttpConfig::default().with_max_wait(Duration::from_millis(800)),
        ..Options::default()
    };
    let f = Fixture::start_with(backend, options).await;
    let cursor = up_to_date(&f).await;
    let (status, _, elapsed) = wait_pull(&f, &cursor, 600_000).await.unwrap();
    assert_eq!(status, 200);
    assert!(elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(8), "{elapsed:?}");
}

async fn waits_are_capped_by_the_service(backend: Backend) {
    let options =
        Options { sync: SyncConfig { max_wait_ms: 600, ..SyncConfig::default() }, ..Options::default() };
    let f = Fixture::start_with(backend, options).await;
    let cursor = up_to_date(&f).await;
    let (status, _, elapsed) = wait_pull(&f, &cursor, 600_000).await.unwrap();
    assert_eq!(status, 200);
    assert!(elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(8), "{elapsed:?}");
}

async fn the_wait_extends_the_request_timeout(backend: Backend) {
    let options = Options {
        http: HttpConfig::default().with_request_timeout(Duration::from_millis(300)),
        ..Options::default()
    };
    let f = Fixture::start_with(backend, options).await;
    let cursor = up_to_date(&f).await;
    let (status, body, elapsed) = wait_pull(&f, &cursor, 1_500).await.unwrap();
    assert_eq!(status, 200, "a live pull is not cut off by the plain request timeout: {body}");
    assert!(elapsed >= Duration::from_millis(1_400), "{elapsed:?}");
}

async fn many_waiting_pulls_all_wake(backend: Backend) {
    let f = Fixture::start(backend).await;
    let cursor = up_to_date(&f).await;
    let pending: Vec<_> = (0..40).map(|_| wait_pull(&f, &cursor, 20_000)).collect();
    // Wait (generously: the machine may be busy) until all are held open.
    let started = Instant::now();
    loop {
        let metrics = f.call(Method::GET, "/metrics", None, None).await;
        let text = String::from_utf8_lossy(&metrics.body).to_string();
        if text.contains("sync_live_pulls_waiting 40") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "not all 40 pulls are waiting:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pending.iter().all(|p| !p.is_finished()), "no pull ended before the change");
    f.add_account("contoso", "a5", "Axis", "alice", 1).await;
    for p in pending {
        let (status, body, _) = tokio::time::timeout(Duration::from_secs(10), p).await.unwrap().unwrap();
        assert_eq!(status, 200);
        assert_eq!(row_ids(&body), vec!["a5"]);
    }
    let metrics = f.call(Method::GET, "/metrics", None, None).await;
    assert!(String::from_utf8_lossy(&metrics.body).contains("sync_live_pulls_waiting 0"));
}

async fn a_first_pull_never_waits(backend: Backend) {
    let f = Fixture::start(backend).await;
    let started = Instant::now();
    let reply = f.post(PULL, &f.alice(), &json!({"wait_ms": 20_000})).await;
    assert_eq!(reply.status, 200);
    assert_eq!(row_ids(&reply.json()), vec!["a1", "a2"]);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

across_backends!(
    wakes_soon_after_a_change_for_the_caller,
    sleeps_through_changes_the_caller_does_not_hold,
    waits_are_capped_by_the_router,
    waits_are_capped_by_the_service,
    the_wait_extends_the_request_timeout,
    many_waiting_pulls_all_wake,
    a_first_pull_never_waits,
);
