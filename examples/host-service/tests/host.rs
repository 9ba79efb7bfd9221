//! The host application started in-process on a free loopback port: its own
//! routes, offline sync under `/sync` with the host's API keys, two-way sync
//! with its system of record, and refusals as problem+json.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use host_service::helpdesk::{self, TICKET};
use host_service::run::{self, ApiKeyGrant, HostConfig, RunningHost};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use sync_core::protocol::{ClientMutation, MutationOutcome, PullRequest, PushRequest};
use sync_core::{
    ColumnName, EntityName, ErrorKind, MutationId, MutationOp, OrgId, RowId, SyncTransport, Value,
};
use transport_http::{HttpSyncTransport, HttpTransportConfig, RetryPolicy};

struct Host {
    host: RunningHost,
    grants: Vec<ApiKeyGrant>,
    _dir: tempfile::TempDir,
}

impl Host {
    async fn start() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let mut config = HostConfig::new(dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.sync_interval_secs = 1;
        let grants = run::demo_grants();
        let host = run::start(config, &grants).await.expect("the host starts");
        assert!(host.addr().ip().is_loopback());
        Host { host, grants, _dir: dir }
    }

    fn key(&self, user: &str) -> &str {
        &self.grants.iter().find(|g| g.user_id == user).unwrap().key
    }

    fn device(&self, key: &str) -> HttpSyncTransport {
        // The base URL carries the mount point: requests go to
        // {base}/sync/v1/orgs/helpdesk/sync/….
        let config = HttpTransportConfig::new(format!("http://{}/sync", self.host.addr()), org())
            .with_retry(RetryPolicy::default().with_max_attempts(1));
        HttpSyncTransport::with_token(config, key.to_owned()).unwrap()
    }
}

fn org() -> OrgId {
    OrgId::new(helpdesk::ORG).unwrap()
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One plain HTTP/1.1 request, as any client of the host would send it.
async fn call(addr: SocketAddr, method: Method, path: &str, key: Option<&str>, body: &str) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder().method(method).uri(path).header("host", addr.to_string());
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    if !body.is_empty() {
        request = request.header("content-type", "application/json");
    }
    let response =
        sender.send_request(request.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await.unwrap();
    let status = response.status();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply { status, content_type, body }
}

/// The ticket ids (and titles) a device holds after pulling from scratch.
async fn pull_all(device: &HttpSyncTransport) -> (Vec<(String, Value)>, String) {
    let mut cursor = None;
    let mut rows = Vec::new();
    loop {
        let page =
            device.pull(&PullRequest { cursor: cursor.clone(), ..PullRequest::default() }).await.unwrap();
        rows.extend(ticket_titles(&page));
        cursor = Some(page.cursor.clone());
        if !page.has_more {
            return (rows, page.cursor);
        }
    }
}

fn ticket_titles(page: &sync_core::protocol::PullResponse) -> Vec<(String, Value)> {
    let mut rows = Vec::new();
    for batch in page.batches.iter().filter(|b| b.entity.as_str() == TICKET) {
        let id = batch.columns.iter().position(|c| c.as_str() == "ticketid").unwrap();
        let title = batch.columns.iter().position(|c| c.as_str() == "title").unwrap();
        for put in &batch.puts {
            let Value::String(ticket) = &put[id] else { panic!("ticket id {:?}", put[id]) };
            rows.push((ticket.clone(), put[title].clone()));
        }
    }
    rows
}

/// The open tickets the source assigns to `user`.
fn expected_for(host: &RunningHost, user: &str) -> BTreeSet<String> {
    host.source()
        .rows(TICKET)
        .unwrap()
        .into_iter()
        .filter(|r| r.get("assignee") == Some(&Value::from(user)))
        .filter(|r| r.get("status") == Some(&Value::from("open")))
        .map(|r| r.id.as_str().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_routes_and_sync_share_the_hosts_api_keys() {
    let host = Host::start().await;
    let addr = host.host.addr();

    let home = call(addr, Method::GET, "/", None, "").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&home.body).contains("Helpdesk"));

    let hello = call(addr, Method::GET, "/api/hello", Some(host.key("alice")), "").await;
    assert_eq!(hello.status, StatusCode::OK);
    let hello = hello.json();
    assert_eq!((hello["hello"].as_str(), hello["org"].as_str()), (Some("alice"), Some(helpdesk::ORG)));
    let anonymous = call(addr, Method::GET, "/api/hello", None, "").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // The sync router's own operational routes live under the mount point too.
    assert_eq!(call(addr, Method::GET, "/sync/readyz", None, "").await.status, StatusCode::OK);

    // Each agent receives exactly their open tickets.
    for user in ["alice", "bob"] {
        let (rows, _) = pull_all(&host.device(host.key(user))).await;
        let ids: BTreeSet<String> = rows.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids.len(), rows.len(), "each ticket arrives once");
        let expected = expected_for(&host.host, user);
        assert!(!expected.is_empty());
        assert_eq!(ids, expected, "{user} receives exactly their open tickets");
    }

    // A raw pull at the documented path works with the same key.
    let raw = call(addr, Method::POST, "/sync/v1/orgs/helpdesk/sync/pull", Some(host.key("bob")), "{}").await;
    assert_eq!(raw.status, StatusCode::OK, "{:?}", raw.body);
    assert!(raw.json()["cursor"].is_string());

    host.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_with_401_problem_json() {
    let host = Host::start().await;
    let addr = host.host.addr();
    let wrong = "hk_this-key-was-never-issued-by-the-host";

    let reply = call(addr, Method::POST, "/sync/v1/orgs/helpdesk/sync/pull", Some(wrong), "{}").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.content_type, "application/problem+json");
    let problem = reply.json();
    assert_eq!(problem["status"], 401);
    assert!(problem["type"].as_str().unwrap().ends_with("/unauthenticated"), "{problem}");
    assert!(problem["detail"].as_str().unwrap_or_default().contains("API key"), "{problem}");

    let missing = call(addr, Method::POST, "/sync/v1/orgs/helpdesk/sync/pull", None, "{}").await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.content_type, "application/problem+json");

    // The client transport maps it back to the error kind.
    let error = host.device(wrong).pull(&PullRequest::default()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unauthenticated, "{error}");

    // The host's own API refuses the same key the same way.
    let hello = call(addr, Method::GET, "/api/hello", Some(wrong), "").await;
    assert_eq!(hello.status, StatusCode::UNAUTHORIZED);
    assert_eq!(hello.content_type, "application/problem+json");

    host.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_flow_both_ways_between_device_and_system_of_record() {
    let host = Host::start().await;
    let device = host.device(host.key("alice"));
    let (rows, cursor) = pull_all(&device).await;
    let (first, _) = rows.first().cloned().unwrap();

    // Offline edit on the device, pushed: it lands in the system of record.
    let edit = ClientMutation {
        id: MutationId::new_v4(),
        entity: EntityName::new(TICKET).unwrap(),
        op: MutationOp::Update,
        row_id: RowId::new(first.clone()).unwrap(),
        base_version: None,
        values: [(ColumnName::new("title").unwrap(), Value::from("Called the customer back"))].into(),
    };
    let pushed = device.push(&PushRequest { mutations: vec![edit] }).await.unwrap();
    assert!(matches!(pushed.results[0].outcome, MutationOutcome::Applied { .. }), "{pushed:?}");
    let at_source = host.host.source().row(TICKET, &first).unwrap();
    assert_eq!(at_source.get("title"), Some(&Value::from("Called the customer back")));

    // A change made by the host's own code reaches the device through the
    // recurring staging sync (every second here).
    let source = host.host.source();
    let mut ticket = source.row(TICKET, &first).unwrap();
    ticket.values.insert(ColumnName::new("priority").unwrap(), Value::from(3i64));
    ticket.values.insert(ColumnName::new("title").unwrap(), Value::from("Escalated by the host"));
    source.upsert(TICKET, ticket).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut cursor = cursor;
    loop {
        let page = device.pull(&PullRequest { cursor: Some(cursor.clone()), ..PullRequest::default() }).await;
        let page = page.unwrap();
        cursor = page.cursor.clone();
        if ticket_titles(&page).contains(&(first.clone(), Value::from("Escalated by the host"))) {
            break;
        }
        assert!(Instant::now() < deadline, "the host's edit never reached the device");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    host.host.shutdown().await.unwrap();
}
