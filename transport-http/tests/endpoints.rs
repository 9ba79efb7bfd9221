//! Every endpoint of the router over a loopback socket: sync (by path and by
//! host), org-directory redirects, admin, health, readiness, metrics, the
//! OpenAPI document, unknown routes, timeouts and compression.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::{Value as Json, json};
use sync_core::queue::WorkQueue;
use sync_core::service::SyncConfig;
use sync_core::{Message, QueueName, StagingStore};
use transport_http::HttpConfig;

use common::fixture::{Backend, Fixture, Options, assert_problem, org};

/// Rows of `account` in a pull response, by id: (name, owner).
fn accounts(pull: &Json) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for batch in pull["batches"].as_array().unwrap() {
        let cols: Vec<&str> =
            batch["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        let at = |name: &str| cols.iter().position(|c| *c == name).unwrap();
        for put in batch["puts"].as_array().unwrap() {
            out.push((
                put[at("accountid")].as_str().unwrap().to_owned(),
                put[at("name")].as_str().unwrap().to_owned(),
                put[at("owner")].as_str().unwrap().to_owned(),
            ));
        }
    }
    out.sort();
    out
}

/// The version of row `id` in a pull response.
fn version_of(pull: &Json, id: &str) -> u64 {
    for batch in pull["batches"].as_array().unwrap() {
        for (i, put) in batch["puts"].as_array().unwrap().iter().enumerate() {
            if put[0] == id {
                return batch["versions"][i].as_u64().unwrap();
            }
        }
    }
    panic!("row {id} not in {pull}")
}

async fn sync_round_trip(backend: Backend) {
    let f = Fixture::start(backend).await;
    let alice = f.alice();

    let profile = f.get("/v1/orgs/contoso/sync/profile", &alice).await;
    assert_eq!(profile.status, 200);
    assert_eq!(profile.header("cache-control"), Some("no-store"));
    let p = profile.json();
    assert_eq!(p["org"], "contoso");
    assert_eq!(p["user_id"], "alice");
    assert_eq!(p["profiles"], json!(["sales"]));
    assert_eq!(p["partitions"].as_array().unwrap().len(), 1);
    assert_eq!(p["schemas"][0]["name"], "account");

    let first = f.pull_all(&alice).await;
    assert_eq!(
        accounts(&first),
        vec![("a1".into(), "Alpha".into(), "alice".into()), ("a2".into(), "Acme".into(), "alice".into())],
        "alice gets her accounts only"
    );
    assert!(first["schemas"].is_array(), "a first pull carries the schemas");
    assert!(first["checksums"].is_object());

    let push = json!({"mutations": [{
        "id": "6a1f3f5e-0000-4000-8000-000000000001",
        "entity": "account", "op": "update", "row_id": "a1",
        "base_version": version_of(&first, "a1"),
        "values": {"name": "Alpha Prime"}
    }]});
    let pushed = f.post("/v1/orgs/contoso/sync/push", &alice, &push).await;
    assert_eq!(pushed.status, 200, "{}", String::from_utf8_lossy(&pushed.body));
    let r = pushed.json();
    assert_eq!(r["results"][0]["status"], "applied", "{r}");
    assert_eq!(r["results"][0]["row"]["values"]["name"], "Alpha Prime");
    let checkpoint = r["write_checkpoint"].as_u64().unwrap();
    assert!(checkpoint > 0);
    assert_eq!(f.contoso_source.row("account", "a1").unwrap().get("name").unwrap(), &"Alpha Prime".into());

    // Read-your-writes: the next pull has the change.
    let next = f.post("/v1/orgs/contoso/sync/pull", &alice, &json!({"cursor": first["cursor"]})).await;
    assert_eq!(next.status, 200);
    let next = next.json();
    assert_eq!(accounts(&next), vec![("a1".into(), "Alpha Prime".into(), "alice".into())]);
    assert!(next.get("schemas").is_none(), "the schemas are not resent without a schema change");

    // The same push again returns the recorded result and changes nothing.
    let source_head = f.contoso_source.head();
    let again = f.post("/v1/orgs/contoso/sync/push", &alice, &push).await.json();
    assert_eq!(again["results"], r["results"]);
    assert_eq!(f.contoso_source.head(), source_head);

    // Up to date: an empty page.
    let idle = f.post("/v1/orgs/contoso/sync/pull", &alice, &json!({"cursor": next["cursor"]})).await.json();
    assert_eq!(idle["batches"], json!([]));
    assert_eq!(idle["has_more"], false);
}

async fn pull_pages_with_limit(backend: Backend) {
    let f = Fixture::start(backend).await;
    let manager = f.token("mia", "contoso", &["manager"]);
    let mut body = json!({"limit": 1});
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let page = f.post("/v1/orgs/contoso/sync/pull", &manager, &body).await.json();
        pages += 1;
        for (id, _, _) in accounts(&page) {
            ids.push(id);
        }
        if !page["has_more"].as_bool().unwrap() {
            assert!(page["checksums"].is_object(), "the last page carries checksums");
            break;
        }
        assert!(page.get("checksums").is_none(), "only the last page carries checksums");
        body = json!({"cursor": page["cursor"], "limit": 1});
    }
    ids.sort();
    assert_eq!(ids, vec!["a1", "a2", "b1"]);
    assert!(pages >= 3);
}

async fn host_routing(backend: Backend) {
    let options = Options { http: HttpConfig::default().with_base_domain("sync.test"), ..Options::default() };
    let f = Fixture::start_with(backend, options).await;
    let alice = format!("Bearer {}", f.alice());
    let json_ct = ("content-type", "application/json");
    let by_host = |host: &'static str| vec![("host", host), ("authorization", alice.as_str()), json_ct];

    let reply = f.raw(Method::POST, "/v1/sync/pull", &by_host("contoso.sync.test"), "{}").await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(accounts(&reply.json()).len(), 2);
    let reply = f.raw(Method::GET, "/v1/sync/profile", &by_host("CONTOSO.sync.test:443"), "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["org"], "contoso");
    let push = json!({"mutations": []}).to_string();
    let reply = f.raw(Method::POST, "/v1/sync/push", &by_host("contoso.sync.test"), push).await;
    assert_eq!(reply.status, 200);

    let reply = f.raw(Method::POST, "/v1/sync/pull", &by_host("sync.test"), "{}").await;
    assert_problem(&reply, 404, "not-found", "use a host {org}.sync.test");
    let reply = f.raw(Method::POST, "/v1/sync/pull", &by_host("contoso.elsewhere.test"), "{}").await;
    assert_problem(&reply, 404, "not-found", "host");
    let reply = f.raw(Method::POST, "/v1/sync/pull", &by_host("bad-org.sync.test"), "{}").await;
    assert_problem(&reply, 400, "invalid-input", "does not name an org");
}

async fn host_routing_off(backend: Backend) {
    let f = Fixture::start(backend).await;
    let alice = format!("Bearer {}", f.alice());
    let headers = [
        ("host", "contoso.sync.test"),
        ("authorization", alice.as_str()),
        ("content-type", "application/json"),
    ];
    let reply = f.raw(Method::POST, "/v1/sync/pull", &headers, "{}").await;
    assert_problem(&reply, 404, "not-found", "host routing is not configured");
}

async fn directory_redirects(backend: Backend) {
    let options = Options { http: HttpConfig::default().with_base_domain("sync.test"), ..Options::default() };
    let f = Fixture::start_with(backend, options).await;
    let operator = f.operator();
    let reply = f
        .call(
            Method::PUT,
            "/v1/admin/orgs/elsewhere/location",
            Some(&operator),
            Some(&json!({"base_url": "https://eu.sync.example.com/"})),
        )
        .await;
    assert_eq!(reply.status, 204, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(
        f.store.org_location(&org("elsewhere")).await.unwrap().as_deref(),
        Some("https://eu.sync.example.com/")
    );

    // Before authentication, as DNS would route it; method, path and query kept.
    let reply = f.call(Method::POST, "/v1/orgs/elsewhere/sync/pull?x=1", None, Some(&json!({}))).await;
    assert_eq!(reply.status, 307);
    assert_eq!(reply.header("location"), Some("https://eu.sync.example.com/v1/orgs/elsewhere/sync/pull?x=1"));
    let reply = f.get("/v1/orgs/elsewhere/sync/profile", &f.alice()).await;
    assert_eq!(reply.status, 307);
    assert_eq!(reply.header("location"), Some("https://eu.sync.example.com/v1/orgs/elsewhere/sync/profile"));
    // Host-routed requests are sent to the path form.
    let reply = f.raw(Method::POST, "/v1/sync/push", &[("host", "elsewhere.sync.test")], "").await;
    assert_eq!(reply.status, 307);
    assert_eq!(reply.header("location"), Some("https://eu.sync.example.com/v1/orgs/elsewhere/sync/push"));

    // Removed: the org is no longer redirected (and is unknown here).
    let reply = f.call(Method::DELETE, "/v1/admin/orgs/elsewhere/location", Some(&operator), None).await;
    assert_eq!(reply.status, 204);
    let reply = f.call(Method::POST, "/v1/orgs/elsewhere/sync/pull", None, Some(&json!({}))).await;
    assert_problem(&reply, 401, "unauthenticated", "no bearer token");
    let elsewhere_rep = f.token("eve", "elsewhere", &["rep"]);
    let reply = f.post("/v1/orgs/elsewhere/sync/pull", &elsewhere_rep, &json!({})).await;
    assert_problem(&reply, 404, "not-found", "org 'elsewhere'");
}

async fn directory_entries_from_another_process(backend: Backend) {
    // An entry written to the store directly (as another process would)
    // takes effect once the router's memory of the directory expires.
    let options = Options {
        http: HttpConfig::default().with_directory_ttl(Duration::from_millis(200)),
        ..Options::default()
    };
    let f = Fixture::start_with(backend, options).await;
    let alice = f.alice();
    assert_eq!(f.get("/v1/orgs/contoso/sync/profile", &alice).await.status, 200);
    f.store.set_org_location(&org("contoso"), Some("https://moved.example.com".into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reply = f.get("/v1/orgs/contoso/sync/profile", &alice).await;
    assert_eq!(reply.status, 307);
    assert_eq!(reply.header("location"), Some("https://moved.example.com/v1/orgs/contoso/sync/profile"));
}

async fn admin_provisioning_and_orgs(backend: Backend) {
    let f = Fixture::start(backend).await;
    let operator = f.operator();
    let config = json!({"id": "northwind", "source": {"kind": "memory", "settings": {"name": "nw"}}, "sync_interval_secs": 30});
    let reply = f.post("/v1/admin/orgs", &operator, &config).await;
    assert_eq!(reply.status, 202, "{}", String::from_utf8_lossy(&reply.body));
    let outcome = reply.json();
    assert_eq!(outcome["outcome"], "enqueued");
    assert!(outcome["message_id"].as_str().is_some_and(|id| !id.is_empty()));
    let provisioning = QueueName::new("provisioning").unwrap();
    let delivery = f.queue.receive(&provisioning, Duration::from_secs(30)).await.unwrap().unwrap();
    let event: Json = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(event["event"], "provision");
    assert_eq!(event["org"]["id"], "northwind");
    assert_eq!(event["org"]["sync_interval_secs"], 30);
    f.queue.complete(&delivery).await.unwrap();

    let reply = f.call(Method::DELETE, "/v1/admin/orgs/northwind", Some(&operator), None).await;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.json()["outcome"], "enqueued");
    let delivery = f.queue.receive(&provisioning, Duration::from_secs(30)).await.unwrap().unwrap();
    let event: Json = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(event, json!({"event": "deprovision", "org": "northwind"}));

    let reply = f.get("/v1/admin/orgs", &operator).await;
    assert_eq!(reply.status, 200);
    let ids: Vec<String> =
        reply.json().as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, vec!["contoso", "fabrikam"]);

    // An org's admin provisions its own org only, and lists no orgs.
    let admin = f.admin();
    let own = json!({"id": "contoso", "source": {"kind": "memory", "settings": {"name": "contoso-crm"}}});
    assert_eq!(f.post("/v1/admin/orgs", &admin, &own).await.status, 202);
    assert_problem(&f.get("/v1/admin/orgs", &admin).await, 403, "forbidden", "operator role");
}

async fn admin_status_profiles_and_sync_now(backend: Backend) {
    let f = Fixture::start(backend).await;
    let admin = f.admin();

    let status = f.get("/v1/admin/orgs/contoso/status", &admin).await;
    assert_eq!(status.status, 200);
    let status = status.json();
    assert_eq!(status["org"], "contoso");
    assert_eq!(status["entities"][0]["entity"], "account");
    assert_eq!(status["entities"][0]["rows"], 3);
    assert!(status["head"].as_u64().unwrap() > 0);

    let list = f.get("/v1/admin/orgs/contoso/profiles", &admin).await.json();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["managers", "sales"]);

    let field = json!({"name": "field", "roles": ["technician"], "items": [
        {"entity": "account", "filter": "revenue gt 150", "columns": ["name"]}
    ]});
    let put = f.call(Method::PUT, "/v1/admin/orgs/contoso/profiles/field", Some(&admin), Some(&field)).await;
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(put.json()["name"], "field");
    let got = f.get("/v1/admin/orgs/contoso/profiles/field", &admin).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["items"][0]["filter"], "revenue gt 150");
    // The new profile is live: a technician pulls the accounts it selects.
    let tech = f.token("tim", "contoso", &["technician"]);
    let pulled = f.post("/v1/orgs/contoso/sync/pull", &tech, &json!({})).await.json();
    let ids: Vec<&str> =
        pulled["batches"][0]["puts"].as_array().unwrap().iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(pulled["batches"][0]["columns"], json!(["accountid", "name"]));
    let mut ids = ids;
    ids.sort();
    assert_eq!(ids, vec!["a2", "b1"]);

    let deleted = f.call(Method::DELETE, "/v1/admin/orgs/contoso/profiles/field", Some(&admin), None).await;
    assert_eq!(deleted.status, 204);
    assert_problem(&f.get("/v1/admin/orgs/contoso/profiles/field", &admin).await, 404, "not-found", "field");
    assert_problem(
        &f.post("/v1/orgs/contoso/sync/pull", &tech, &json!({})).await,
        403,
        "forbidden",
        "no mobile offline profile",
    );

    // Sync now: every entity, or one.
    let reply = f.call(Method::POST, "/v1/admin/orgs/contoso/sync-now", Some(&admin), None).await;
    assert_eq!(reply.status, 202, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json(), json!({"enqueued": 1}));
    let reply = f.post("/v1/admin/orgs/contoso/sync-now", &admin, &json!({"entity": "account"})).await;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.json(), json!({"enqueued": 1}));
    let datasync = QueueName::new("datasync").unwrap();
    let depth = f.queue.depth(&datasync).await.unwrap();
    assert_eq!(depth.ready + depth.delayed, 1, "one pending item per (org, entity): {depth:?}");
    let item = f.queue.receive(&datasync, Duration::from_secs(30)).await.unwrap().unwrap();
    let item: Json = serde_json::from_slice(&item.body).unwrap();
    assert_eq!((item["org"].as_str(), item["entity"].as_str()), (Some("contoso"), Some("account")));
    let reply = f.post("/v1/admin/orgs/contoso/sync-now", &admin, &json!({"entity": "contact"})).await;
    assert_problem(&reply, 404, "not-found", "contact");
}

async fn admin_queues_and_dead_letters(backend: Backend) {
    let f = Fixture::start(backend).await;
    let operator = f.operator();
    let datasync = QueueName::new("datasync").unwrap();
    f.queue
        .send(&datasync, Message { body: br#"{"poison":true}"#.to_vec(), ..Message::default() })
        .await
        .unwrap();
    f.queue.send(&datasync, Message { body: vec![0xff, 0x00], ..Message::default() }).await.unwrap();
    for _ in 0..2 {
        let d = f.queue.receive(&datasync, Duration::from_secs(30)).await.unwrap().unwrap();
        f.queue.dead_letter(&d, "could not parse the work item").await.unwrap();
    }
    f.queue.send(&datasync, Message { body: b"ready".to_vec(), ..Message::default() }).await.unwrap();

    let queues = f.get("/v1/admin/queues", &operator).await;
    assert_eq!(queues.status, 200);
    let queues = queues.json();
    assert_eq!(queues[0]["queue"], "provisioning");
    assert_eq!(queues[1]["queue"], "datasync");
    assert_eq!(queues[1]["depth"], json!({"ready": 1, "delayed": 0, "leased": 0, "dead": 2}));

    let letters = f.get("/v1/admin/queues/datasync/dead-letters", &operator).await;
    assert_eq!(letters.status, 200);
    let letters = letters.json();
    assert_eq!(letters.as_array().unwrap().len(), 2);
    let encodings: Vec<&str> =
        letters.as_array().unwrap().iter().map(|l| l["body_encoding"].as_str().unwrap()).collect();
    assert!(encodings.contains(&"json") && encodings.contains(&"base64"), "{letters}");
    assert_eq!(letters[0]["reason"], "could not parse the work item");
    assert!(letters[0]["dead_at"].as_str().unwrap().ends_with('Z'));
    let one = f.get("/v1/admin/queues/datasync/dead-letters?limit=1", &operator).await.json();
    assert_eq!(one.as_array().unwrap().len(), 1);
    let reply = f.get("/v1/admin/queues/outbox/dead-letters", &operator).await;
    assert_problem(&reply, 404, "not-found", "outbox");
}

async fn health_readiness_metrics_openapi(backend: Backend) {
    let f = Fixture::start(backend).await;
    let health = f.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((health.status.as_u16(), health.json()), (200, json!({"status": "ok"})));
    let ready = f.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");

    let alice = f.alice();
    f.pull_all(&alice).await;
    f.call(Method::GET, "/nowhere/at/all", None, None).await;
    let metrics = f.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    for needle in [
        r#"http_requests_total{method="POST",route="/v1/orgs/{org}/sync/pull",status="200"} 1"#,
        r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"http_request_duration_seconds_count{method="POST",route="/v1/orgs/{org}/sync/pull"} 1"#,
        r#"sync_rows_served_total{op="put"} 2"#,
        r#"sync_queue_depth{queue="datasync",state="ready"} 0"#,
        r#"sync_live_pulls_waiting 0"#,
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }

    let doc = f.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.header("content-type"), Some("application/json"));
    let doc = doc.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/orgs/{org}/sync/pull"]["post"].is_object());
}

async fn every_documented_operation_is_served(backend: Backend) {
    // The unit test in `openapi.rs` matches the document against the route
    // table; this one asks the running router for each documented operation.
    let options = Options { http: HttpConfig::default().with_base_domain("sync.test"), ..Options::default() };
    let f = Fixture::start_with(backend, options).await;
    let doc = f.call(Method::GET, "/v1/openapi.json", None, None).await.json();
    let operator = format!("Bearer {}", f.token("otto", "contoso", &["sync-operator", "rep"]));
    let mut count = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let path = template
                .replace("{org}", "contoso")
                .replace("{name}", "sales")
                .replace("{queue}", "datasync");
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let mut headers = vec![("authorization", operator.as_str()), ("host", "contoso.sync.test")];
            let body = if op.get("requestBody").is_some() {
                headers.push(("content-type", "application/json"));
                "{}"
            } else {
                ""
            };
            let reply = f.raw(method.clone(), &path, &headers, body).await;
            let text = String::from_utf8_lossy(&reply.body);
            assert_ne!(reply.status, 405, "{method} {path}: {text}");
            assert!(
                !text.contains("not found: route"),
                "{method} {path} is documented but not routed: {text}"
            );
            let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            assert!(
                documented.iter().any(|s| s.as_str() == reply.status.as_str()),
                "{method} {path} answered {} which its documentation does not list ({documented:?}): {text}",
                reply.status
            );
            count += 1;
        }
    }
    assert_eq!(count, transport_http::route_table().len());
}

async fn unknown_routes_and_methods(backend: Backend) {
    let f = Fixture::start(backend).await;
    assert_problem(
        &f.call(Method::GET, "/v2/anything", None, None).await,
        404,
        "not-found",
        "GET /v2/anything",
    );
    let reply = f.call(Method::GET, "/v1/orgs/contoso/sync/pull", Some(&f.alice()), None).await;
    assert_problem(&reply, 405, "invalid-input", "GET is not allowed");
    assert!(reply.header("allow").is_some_and(|a| a.contains("POST")), "{:?}", reply.headers);
    let reply = f.call(Method::PATCH, "/v1/admin/orgs/contoso/profiles/sales", Some(&f.admin()), None).await;
    assert_problem(&reply, 405, "invalid-input", "PATCH is not allowed");
}

async fn request_timeout_is_a_problem(backend: Backend) {
    let options = Options {
        http: HttpConfig::default().with_request_timeout(Duration::from_millis(300)),
        ..Options::default()
    };
    let f = Fixture::start_with(backend, options).await;
    f.contoso_source.set_latency(Duration::from_secs(10));
    let push = json!({"mutations": [{
        "id": "6a1f3f5e-0000-4000-8000-0000000000aa", "entity": "account", "op": "insert",
        "row_id": "n1", "values": {"name": "New", "owner": "alice"}
    }]});
    let started = std::time::Instant::now();
    let reply = f.post("/v1/orgs/contoso/sync/push", &f.alice(), &push).await;
    assert_problem(&reply, 503, "unavailable", "did not complete within 300 ms");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(5), "answered at the timeout, not after the source");
}

async fn responses_are_compressed(backend: Backend) {
    let f = Fixture::start(backend).await;
    let auth = format!("Bearer {}", f.alice());
    for (encoding, magic) in
        [("gzip", &[0x1f_u8, 0x8b][..]), ("zstd", &[0x28, 0xb5, 0x2f, 0xfd][..]), ("br", &[][..])]
    {
        let reply = f
            .raw(
                Method::POST,
                "/v1/orgs/contoso/sync/pull",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                    ("accept-encoding", encoding),
                ],
                "{}",
            )
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-encoding"), Some(encoding));
        assert!(reply.body.starts_with(magic), "{encoding}");
        assert!(serde_json::from_slice::<Json>(&reply.body).is_err(), "{encoding} body is not plain JSON");
    }
    let plain = f
        .raw(
            Method::POST,
            "/v1/orgs/contoso/sync/pull",
            &[("authorization", &auth), ("content-type", "application/json")],
            "{}",
        )
        .await;
    assert_eq!(plain.header("content-encoding"), None);
    assert!(plain.json()["cursor"].is_string());
}

#[tokio::test]
async fn readiness_reports_an_unreachable_store() {
    let mut store = sync_core::staging::MockStagingStore::new();
    store.expect_ping().returning(|| Err(sync_core::Error::unavailable("connection refused")));
    let store: Arc<dyn StagingStore> = Arc::new(store);
    let queue: Arc<dyn WorkQueue> = Arc::new(sync_core::memory::MemoryQueue::new());
    let connector = Arc::new(sync_core::memory::MemoryConnector::new());
    let service =
        sync_core::SyncService::builder(store, queue, connector, b"k").config(SyncConfig::default()).build();
    let auth = Arc::new(transport_http::JwtAuthenticator::hs256(common::fixture::SECRET.to_vec()).unwrap());
    let url = common::serve(transport_http::router(service, auth, HttpConfig::default())).await;
    let reply = common::send(Method::GET, &format!("{url}/readyz"), &[], "").await;
    assert_problem(&reply, 503, "unavailable", "the store is not reachable: unavailable: connection refused");
    let reply = common::send(Method::GET, &format!("{url}/healthz"), &[], "").await;
    assert_eq!(reply.status, 200, "alive even when not ready");
}

across_backends!(
    sync_round_trip,
    pull_pages_with_limit,
    host_routing,
    host_routing_off,
    directory_redirects,
    directory_entries_from_another_process,
    admin_provisioning_and_orgs,
    admin_status_profiles_and_sync_now,
    admin_queues_and_dead_letters,
    health_readiness_metrics_openapi,
    unknown_routes_and_methods,
    every_documented_operation_is_served,
    request_timeout_is_a_problem,
    responses_are_compressed,
    metrics_access_follows_the_configuration,
    compression_follows_the_configuration,
);

/// `/metrics` as the deployment configures it: public, behind a role, or off.
async fn metrics_access_follows_the_configuration(backend: Backend) {
    use transport_http::MetricsAccess;
    let options = |access: MetricsAccess| Options {
        http: HttpConfig::default().with_metrics(access),
        ..Options::default()
    };
    let f = Fixture::start_with(backend, options(MetricsAccess::Role("sync-operator".into()))).await;
    let anonymous = f.call(Method::GET, "/metrics", None, None).await;
    assert_problem(&anonymous, 401, "unauthenticated", "");
    let rep = f.call(Method::GET, "/metrics", Some(&f.alice()), None).await;
    assert_problem(&rep, 403, "forbidden", "sync-operator");
    let operator = f.call(Method::GET, "/metrics", Some(&f.operator()), None).await;
    assert_eq!(operator.status, 200);
    assert!(String::from_utf8_lossy(&operator.body).contains("http_requests_total"));

    let f = Fixture::start_with(backend, options(MetricsAccess::Off)).await;
    let off = f.call(Method::GET, "/metrics", Some(&f.operator()), None).await;
    assert_eq!(off.status, 404);
    assert!(HttpConfig::default().with_metrics(MetricsAccess::Role(" ".into())).validate().is_err());
}

/// Compression as configured: on, a page is compressed when asked; off, it
/// never is.
async fn compression_follows_the_configuration(backend: Backend) {
    for (on, expected) in [(true, Some("gzip")), (false, None)] {
        let options = Options { http: HttpConfig::default().with_compression(on), ..Options::default() };
        let f = Fixture::start_with(backend, options).await;
        let auth = format!("Bearer {}", f.alice());
        let reply = f
            .raw(
                Method::POST,
                "/v1/orgs/contoso/sync/pull",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                    ("accept-encoding", "gzip"),
                ],
                "{}",
            )
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-encoding"), expected, "compression {on}");
    }
}
