//! A catalogue of bad requests over a loopback socket: truncated, malformed
//! and oversized bodies, wrong types, unknown entities and columns, hostile
//! identifiers, forged and foreign cursors, reused mutation ids, absurd
//! limits — each answered with the right status and a problem that says
//! what was wrong, and none changing anything stored.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use http::Method;
use serde_json::{Value as Json, json};
use sync_core::service::SyncConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport_http::HttpConfig;

use common::fixture::{Backend, Fixture, Options};

const BODY_LIMIT: usize = 64 * 1024;
const MAX_MUTATIONS: usize = 5;

/// Who sends a case.
#[derive(Clone, Copy, Debug)]
enum As {
    Alice,
    Admin,
    Operator,
}

/// One bad request and what it must get.
struct Case {
    name: &'static str,
    who: As,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    kind: &'static str,
    needle: &'static str,
}

fn case(name: &'static str, method: Method, path: &str, body: impl Into<Vec<u8>>) -> Case {
    Case {
        name,
        who: As::Alice,
        method,
        path: path.to_owned(),
        content_type: Some("application/json"),
        body: body.into(),
        status: 400,
        kind: "invalid-input",
        needle: "",
    }
}

impl Case {
    fn expect(mut self, status: u16, kind: &'static str, needle: &'static str) -> Self {
        self.status = status;
        self.kind = kind;
        self.needle = needle;
        self
    }
    fn by(mut self, who: As) -> Self {
        self.who = who;
        self
    }
    fn content_type(mut self, content_type: Option<&'static str>) -> Self {
        self.content_type = content_type;
        self
    }
}

const PULL: &str = "/v1/orgs/contoso/sync/pull";
const PUSH: &str = "/v1/orgs/contoso/sync/push";

fn pull(name: &'static str, body: impl Into<Vec<u8>>) -> Case {
    case(name, Method::POST, PULL, body)
}

fn push_of(name: &'static str, mutation: Json) -> Case {
    case(name, Method::POST, PUSH, json!({"mutations": [mutation]}).to_string())
}

/// A valid update of a1 with `values`, under a fresh or given id.
fn update(id: &str, values: Json) -> Json {
    json!({"id": id, "entity": "account", "op": "update", "row_id": "a1", "values": values})
}

const ID: &str = "7b0c4f00-0000-4000-8000-000000000001";
const USED_ID: &str = "7b0c4f00-0000-4000-8000-0000000000ff";

/// Cursors made by real pulls.
struct Cursors {
    alice: String,
    /// Alice's cursor from before a change whose tombstone window has passed.
    stale: String,
    bob: String,
    fabrikam_alice: String,
}

fn altered(cursor: &str) -> String {
    let mut chars: Vec<char> = cursor.chars().collect();
    let mid = chars.len() / 2;
    chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

fn catalogue(c: &Cursors) -> Vec<Case> {
    let nested = format!(
        r#"{{"mutations": [{{"id": "{ID}", "entity": "account", "op": "update", "row_id": "a1", "values": {{"name": {}{}}}}}]}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let big_cursor = format!("{{\"cursor\": \"{}\"}}", "A".repeat(BODY_LIMIT));
    let many: Vec<Json> = (0..=MAX_MUTATIONS)
        .map(|i| update(&format!("7b0c4f00-0000-4000-8000-00000000010{i}"), json!({"name": "x"})))
        .collect();
    vec![
        // Bodies that are not the JSON asked for.
        pull("truncated JSON", r#"{"cursor": "ab"#).expect(400, "invalid-input", "malformed JSON"),
        pull("empty body", "").expect(400, "invalid-input", "the request body is empty"),
        pull("not JSON", "cursor=abc").expect(400, "invalid-input", "malformed JSON"),
        pull("trailing garbage", r#"{} {}"#).expect(400, "invalid-input", "malformed JSON"),
        pull("a JSON array, not an object", "[]").expect(400, "invalid-input", "invalid request body"),
        case("nesting bomb", Method::POST, PUSH, nested).expect(400, "invalid-input", "recursion limit"),
        pull("text/plain", "{}").content_type(Some("text/plain")).expect(415, "invalid-input", "must be application/json"),
        pull("no content type", "{}").content_type(None).expect(415, "invalid-input", "no Content-Type"),
        pull("oversized body", big_cursor).expect(413, "limit-exceeded", "limit 'body_limit' exceeded"),
        // Wrong types and absurd limits.
        pull("limit of the wrong type", r#"{"limit": "ten"}"#).expect(400, "invalid-input", "at 'limit'"),
        pull("negative limit", r#"{"limit": -1}"#).expect(400, "invalid-input", "at 'limit'"),
        pull("limit beyond u32", r#"{"limit": 4294967296}"#).expect(400, "invalid-input", "at 'limit'"),
        pull("limit of zero", r#"{"limit": 0}"#).expect(400, "invalid-input", "limit must be at least 1"),
        pull("limit above the page size", r#"{"limit": 1000000}"#)
            .expect(413, "limit-exceeded", "limit 'max_rows_per_page' exceeded: the maximum is 1000, the request needed 1000000"),
        pull("fractional limit", r#"{"limit": 2.5}"#).expect(400, "invalid-input", "at 'limit'"),
        pull("wait_ms of the wrong type", r#"{"wait_ms": "soon"}"#).expect(400, "invalid-input", "at 'wait_ms'"),
        pull("unknown field", r#"{"limt": 5}"#).expect(400, "invalid-input", "unknown field `limt`"),
        pull("cursor of the wrong type", r#"{"cursor": 42}"#).expect(400, "invalid-input", "at 'cursor'"),
        // Forged and foreign cursors.
        pull("garbage cursor", r#"{"cursor": "not a cursor!"}"#).expect(410, "resync-required", "not valid base64url"),
        pull("truncated cursor", json!({"cursor": c.alice[..c.alice.len() / 2]}).to_string())
            .expect(410, "resync-required", ""),
        pull("altered cursor", json!({"cursor": altered(&c.alice)}).to_string())
            .expect(410, "resync-required", "not issued by this server or was altered"),
        pull("a cursor older than the tombstone window", json!({"cursor": c.stale}).to_string())
            .expect(410, "resync-required", "older than the tombstone window"),
        pull("another user's cursor", json!({"cursor": c.bob}).to_string())
            .expect(410, "resync-required", "belongs to another user"),
        pull("another org's cursor", json!({"cursor": c.fabrikam_alice}).to_string())
            .expect(410, "resync-required", "belongs to another org"),
        // Pushes: shapes, types, unknown names, hostile identifiers.
        case("mutations not an array", Method::POST, PUSH, r#"{"mutations": {}}"#)
            .expect(400, "invalid-input", "at 'mutations'"),
        case("no mutations field", Method::POST, PUSH, "{}").expect(400, "invalid-input", "missing field `mutations`"),
        push_of("unknown entity", json!({"id": ID, "entity": "contact", "op": "insert", "row_id": "c1", "values": {}}))
            .expect(400, "invalid-input", "unknown entity 'contact'"),
        push_of("unknown column", update(ID, json!({"colour": "red"})))
            .expect(400, "invalid-input", "entity 'account' has no column 'colour'"),
        push_of("value of the wrong type", update(ID, json!({"revenue": "lots"})))
            .expect(400, "invalid-input", "column 'revenue'"),
        push_of("hostile entity name", json!({"id": ID, "entity": "account; DROP TABLE account", "op": "insert", "row_id": "x", "values": {}}))
            .expect(400, "invalid-input", "mutations[0].entity"),
        push_of("hostile column name", update(ID, json!({"name\" = ''; --": "x"})))
            .expect(400, "invalid-input", "mutations[0].values"),
        push_of("control character in a row id", json!({"id": ID, "entity": "account", "op": "insert", "row_id": "a\u{0}1", "values": {}}))
            .expect(400, "invalid-input", "control character"),
        push_of("mutation id not a UUID", update("12345", json!({"name": "x"}))).expect(400, "invalid-input", "mutations[0].id"),
        push_of("unknown op", json!({"id": ID, "entity": "account", "op": "upsert", "row_id": "a1", "values": {}}))
            .expect(400, "invalid-input", "mutations[0].op"),
        push_of("a delete with values", json!({"id": ID, "entity": "account", "op": "delete", "row_id": "a1", "values": {"name": "x"}}))
            .expect(400, "invalid-input", "a delete carries no values"),
        push_of("key column differs from row_id", update(ID, json!({"accountid": "zz"})))
            .expect(400, "invalid-input", "differs from row_id"),
        case("the same id twice in one push", Method::POST, PUSH,
            json!({"mutations": [update(ID, json!({"name": "x"})), update(ID, json!({"name": "x"}))]}).to_string())
            .expect(400, "invalid-input", "appears twice"),
        push_of("a used mutation id with different content", update(USED_ID, json!({"name": "Something else"})))
            .expect(409, "conflict", "was used before for a different change"),
        case("too many mutations", Method::POST, PUSH, json!({"mutations": many}).to_string())
            .expect(413, "limit-exceeded", "limit 'max_mutations_per_push' exceeded: the maximum is 5, the request needed 6"),
        // Paths.
        case("hostile org in the path", Method::POST, "/v1/orgs/contoso%27%3B%20DROP%20TABLE%20x/sync/pull", "{}")
            .expect(400, "invalid-input", "not a valid org id"),
        case("path that is not UTF-8", Method::POST, "/v1/orgs/%FF%FE/sync/pull", "{}")
            .expect(400, "invalid-input", "the request path is invalid"),
        // Admin.
        case("profile named differently in body and path", Method::PUT, "/v1/admin/orgs/contoso/profiles/sales",
            json!({"name": "field", "roles": ["rep"], "items": []}).to_string())
            .by(As::Admin).expect(400, "invalid-input", "they must agree"),
        case("profile over an unknown entity", Method::PUT, "/v1/admin/orgs/contoso/profiles/field",
            json!({"name": "field", "roles": ["rep"], "items": [{"entity": "contact"}]}).to_string())
            .by(As::Admin).expect(400, "invalid-input", "entity 'contact' is not staged"),
        case("profile with a malformed filter", Method::PUT, "/v1/admin/orgs/contoso/profiles/field",
            json!({"name": "field", "roles": ["rep"], "items": [{"entity": "account", "filter": "revenue gt"}]}).to_string())
            .by(As::Admin).expect(400, "invalid-input", "field"),
        case("profile with a parameter inside an or", Method::PUT, "/v1/admin/orgs/contoso/profiles/field",
            json!({"name": "field", "roles": ["rep"], "items": [{"entity": "account", "filter": "owner eq @user.id or revenue gt 5"}]}).to_string())
            .by(As::Admin).expect(400, "invalid-input", "@user.id"),
        case("profile with an unknown column", Method::PUT, "/v1/admin/orgs/contoso/profiles/field",
            json!({"name": "field", "roles": ["rep"], "items": [{"entity": "account", "filter": "colour eq 'red'"}]}).to_string())
            .by(As::Admin).expect(400, "invalid-input", "colour"),
        case("provision with a zero interval", Method::POST, "/v1/admin/orgs",
            json!({"id": "contoso", "source": {"kind": "memory"}, "sync_interval_secs": 0}).to_string())
            .by(As::Operator).expect(400, "invalid-input", "sync_interval_secs must be at least 1"),
        case("provision with a hostile org id", Method::POST, "/v1/admin/orgs",
            json!({"id": "../../etc", "source": {"kind": "memory"}}).to_string())
            .by(As::Operator).expect(400, "invalid-input", "at 'id'"),
        case("sync now with an unknown field", Method::POST, "/v1/admin/orgs/contoso/sync-now", r#"{"entities": ["account"]}"#)
            .by(As::Admin).expect(400, "invalid-input", "unknown field `entities`"),
        case("sync now of a hostile entity", Method::POST, "/v1/admin/orgs/contoso/sync-now", r#"{"entity": "x;y"}"#)
            .by(As::Admin).expect(400, "invalid-input", "at 'entity'"),
        case("location that is not http(s)", Method::PUT, "/v1/admin/orgs/contoso/location", r#"{"base_url": "ftp://files.example.com"}"#)
            .by(As::Operator).expect(400, "invalid-input", "not an http(s) URL"),
        case("location with a query", Method::PUT, "/v1/admin/orgs/contoso/location", r#"{"base_url": "https://x.example.com/?a=b"}"#)
            .by(As::Operator).expect(400, "invalid-input", "may not have a query"),
        case("dead letters with a limit that is not a number", Method::GET, "/v1/admin/queues/datasync/dead-letters?limit=abc", "")
            .by(As::Operator).content_type(None).expect(400, "invalid-input", "query string is invalid"),
        case("dead letters with an unknown parameter", Method::GET, "/v1/admin/queues/datasync/dead-letters?lmit=5", "")
            .by(As::Operator).content_type(None).expect(400, "invalid-input", "unknown field `lmit`"),
        case("dead letters with a zero limit", Method::GET, "/v1/admin/queues/datasync/dead-letters?limit=0", "")
            .by(As::Operator).content_type(None).expect(400, "invalid-input", "limit must be at least 1"),
        case("dead letters with an absurd limit", Method::GET, "/v1/admin/queues/datasync/dead-letters?limit=99999999999", "")
            .by(As::Operator).content_type(None).expect(413, "limit-exceeded", "dead_letters_per_request"),
        case("dead letters of a hostile queue name", Method::GET, "/v1/admin/queues/a%20b/dead-letters", "")
            .by(As::Operator).content_type(None).expect(400, "invalid-input", "queue name"),
    ]
}

async fn start(backend: Backend) -> (Fixture, Cursors) {
    let options = Options {
        http: HttpConfig::default().with_body_limit(BODY_LIMIT),
        sync: SyncConfig { max_mutations_per_push: MAX_MUTATIONS, ..SyncConfig::default() },
        ..Options::default()
    };
    let f = Fixture::start_with(backend, options).await;
    // A push whose id a later case reuses with other content.
    let reply =
        f.post(PUSH, &f.alice(), &json!({"mutations": [update(USED_ID, json!({"name": "Alpha 2"}))]})).await;
    assert_eq!(reply.json()["results"][0]["status"], "applied");
    let alice = f.pull_all(&f.alice()).await["cursor"].as_str().unwrap().to_owned();
    let bob = f.pull_all(&f.bob()).await["cursor"].as_str().unwrap().to_owned();
    let fabrikam = f.token("alice", "fabrikam", &["rep"]);
    let reply = f.post("/v1/orgs/fabrikam/sync/pull", &fabrikam, &json!({})).await;
    let fabrikam_alice = reply.json()["cursor"].as_str().unwrap().to_owned();
    // A change after alice's cursor, then a purge of everything up to the
    // head: her cursor is now older than the tombstone window.
    f.add_account("contoso", "a7", "Aged", "alice", 1).await;
    let staging = f.store.org(&common::fixture::org("contoso")).await.unwrap();
    staging.purge_tombstones(staging.head().await.unwrap()).await.unwrap();
    let stale = alice.clone();
    (f, Cursors { alice, stale, bob, fabrikam_alice })
}

async fn catalogue_of_bad_requests(backend: Backend) {
    let (f, cursors) = start(backend).await;
    let cases = catalogue(&cursors);
    assert!(cases.len() >= 30, "the catalogue holds {} cases", cases.len());
    let before = f.snapshot().await;
    for c in cases {
        let token = match c.who {
            As::Alice => f.alice(),
            As::Admin => f.admin(),
            As::Operator => f.operator(),
        };
        let auth = format!("Bearer {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(ct) = c.content_type {
            headers.push(("content-type", ct));
        }
        let reply = f.raw(c.method.clone(), &c.path, &headers, c.body.clone()).await;
        let shown = String::from_utf8_lossy(&reply.body).chars().take(400).collect::<String>();
        assert_eq!(reply.status.as_u16(), c.status, "{}: {shown}", c.name);
        let json = reply.json();
        assert_eq!(
            json["type"].as_str().unwrap(),
            format!("https://offline-sync.dev/problems/{}", c.kind),
            "{}: {shown}",
            c.name
        );
        let detail = json["detail"].as_str().unwrap_or_default();
        assert!(!detail.is_empty(), "{}: the problem says nothing", c.name);
        assert!(
            detail.to_lowercase().contains(&c.needle.to_lowercase()),
            "{}: detail {detail:?} should mention {:?}",
            c.name,
            c.needle
        );
        assert_eq!(f.snapshot().await, before, "{}: stored state changed", c.name);
    }
}

/// A request sent over a raw socket (to send what a well-behaved client
/// would not); returns the status and the body.
async fn raw_exchange(url: &str, head: &str, body_chunks: &[Vec<u8>]) -> (u16, Vec<u8>) {
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body_chunks {
        // The server may answer and close before everything is sent.
        if stream.write_all(chunk).await.is_err() {
            break;
        }
    }
    let _ = stream.shutdown().await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status: u16 = text.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    let body = match text.find("\r\n\r\n") {
        Some(at) => response[at + 4..].to_vec(),
        None => Vec::new(),
    };
    (status, body)
}

async fn oversized_chunked_body_without_a_length(backend: Backend) {
    let (f, _) = start(backend).await;
    let before = f.snapshot().await;
    let head = format!(
        "POST {PULL} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        f.alice()
    );
    let chunk = |data: &[u8]| {
        let mut out = format!("{:x}\r\n", data.len()).into_bytes();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        out
    };
    let mut chunks = vec![chunk(b"{\"cursor\": \"")];
    for _ in 0..(BODY_LIMIT / 8192 + 2) {
        chunks.push(chunk(&[b'A'; 8192]));
    }
    chunks.push(chunk(b"\"}"));
    chunks.push(b"0\r\n\r\n".to_vec());
    let (status, body) = raw_exchange(&f.url, &head, &chunks).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    // The body is chunked too; its problem JSON is in there.
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("limit-exceeded") && text.contains("body_limit"), "{text}");
    assert_eq!(f.snapshot().await, before);
}

async fn body_cut_short_changes_nothing(backend: Backend) {
    // A push that declares more bytes than it sends, then closes: the
    // server gives up on it (a 400 if it can still answer) and applies none
    // of it.
    let (f, _) = start(backend).await;
    let before = f.snapshot().await;
    let body = json!({"mutations": [update(ID, json!({"name": "half"}))]}).to_string();
    let head = format!(
        "POST {PUSH} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        f.alice(),
        body.len() + 100
    );
    let (status, reply) = raw_exchange(&f.url, &head, &[body.into_bytes()]).await;
    assert!(status == 0 || status == 400, "status {status}: {}", String::from_utf8_lossy(&reply));
    if status == 400 {
        assert!(String::from_utf8_lossy(&reply).contains("could not be read"));
    }
    assert_eq!(f.snapshot().await, before);
    // The server is still healthy.
    assert_eq!(f.get("/v1/orgs/contoso/sync/profile", &f.alice()).await.status, 200);
}

across_backends!(
    catalogue_of_bad_requests,
    oversized_chunked_body_without_a_length,
    body_cut_short_changes_nothing
);
