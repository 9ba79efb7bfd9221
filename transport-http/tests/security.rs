//! The security matrix over a loopback socket: every way a credential can be
//! wrong, and every way a valid caller can reach beyond its rights, against
//! the sync and admin endpoints — each the right status and problem type,
//! nothing of the org in the answer, and nothing stored changed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value as Json, json};
use transport_http::{HttpConfig, JwtAlgorithm, JwtAuthenticator, JwtConfig, JwtKeys};

use common::fixture::{Backend, Fixture, Options, assert_problem};
use common::key;

const ISS: &str = "https://idp.test";
const AUD: &str = "offline-sync";

/// An RS256 deployment (issuer and audience checked), host routing on.
async fn start(backend: Backend) -> Fixture {
    let auth = JwtAuthenticator::new(
        JwtConfig::new(JwtAlgorithm::Rs256).with_issuer(ISS).with_audience(AUD),
        JwtKeys::PublicKeyPem(key("rsa1.pub.pem")),
    )
    .unwrap();
    let options = Options {
        http: HttpConfig::default().with_base_domain("sync.test"),
        auth: Some(Arc::new(auth)),
        ..Options::default()
    };
    Fixture::start_with(backend, options).await
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(user: &str, org: &str, roles: &[&str]) -> Json {
    json!({"sub": user, "org": org, "roles": roles, "iss": ISS, "aud": AUD, "iat": now(), "exp": now() + 600})
}

fn rs256(claims: &Json, key_file: &str) -> String {
    let key = EncodingKey::from_rsa_pem(&key(key_file)).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
}

fn good(user: &str, org: &str, roles: &[&str]) -> String {
    rs256(&claims(user, org, roles), "rsa1.key.pem")
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// Tokens refused with 401, and what the problem says.
fn bad_credentials() -> Vec<(&'static str, Option<String>, &'static str)> {
    let alice = claims("alice", "contoso", &["rep", "sync-admin", "sync-operator"]);
    let with = |k: &str, v: Json| {
        let mut c = alice.clone();
        c[k] = v;
        c
    };
    let bearer = |t: String| Some(format!("Bearer {t}"));
    // HS256 keyed with the RSA public key: the classic key-confusion forgery.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &alice,
        &EncodingKey::from_secret(&key("rsa1.pub.pem")),
    )
    .unwrap();
    vec![
        ("no token", None, "no bearer token"),
        ("another scheme", Some("Basic YWxpY2U6c2VjcmV0".into()), "scheme must be Bearer"),
        ("garbage", bearer("not.a.jwt".into()), "malformed"),
        ("bad signature", bearer(rs256(&alice, "rsa2.key.pem")), "bad signature"),
        (
            "alg none",
            bearer(format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&alice.to_string()))),
            "alg \"none\"",
        ),
        ("HS/RS confusion", bearer(confused), "wrong algorithm"),
        ("expired", bearer(rs256(&with("exp", json!(now() - 3600)), "rsa1.key.pem")), "expired"),
        ("not yet valid", bearer(rs256(&with("nbf", json!(now() + 3600)), "rsa1.key.pem")), "not valid yet"),
        (
            "wrong issuer",
            bearer(rs256(&with("iss", json!("https://evil.test")), "rsa1.key.pem")),
            "wrong issuer",
        ),
        (
            "wrong audience",
            bearer(rs256(&with("aud", json!("another-api")), "rsa1.key.pem")),
            "wrong audience",
        ),
    ]
}

/// One request of every kind that reads or changes something.
fn requests() -> Vec<(Method, &'static str, Option<Json>)> {
    let mutation = json!({"mutations": [{
        "id": "0d5f0b7a-1111-4000-8000-000000000001", "entity": "account", "op": "update",
        "row_id": "a1", "values": {"name": "Hijacked"}
    }]});
    let profile = json!({"name": "sales", "roles": ["everyone"], "items": [{"entity": "account"}]});
    let org = json!({"id": "contoso", "source": {"kind": "memory", "settings": {"name": "evil"}}});
    vec![
        (Method::GET, "/v1/orgs/contoso/sync/profile", None),
        (Method::POST, "/v1/orgs/contoso/sync/pull", Some(json!({}))),
        (Method::POST, "/v1/orgs/contoso/sync/push", Some(mutation)),
        (Method::POST, "/v1/admin/orgs", Some(org)),
        (Method::GET, "/v1/admin/orgs", None),
        (Method::DELETE, "/v1/admin/orgs/contoso", None),
        (Method::GET, "/v1/admin/orgs/contoso/status", None),
        (Method::GET, "/v1/admin/orgs/contoso/profiles", None),
        (Method::PUT, "/v1/admin/orgs/contoso/profiles/sales", Some(profile)),
        (Method::GET, "/v1/admin/orgs/contoso/profiles/sales", None),
        (Method::DELETE, "/v1/admin/orgs/contoso/profiles/sales", None),
        (Method::POST, "/v1/admin/orgs/contoso/sync-now", None),
        (Method::PUT, "/v1/admin/orgs/contoso/location", Some(json!({"base_url": "https://evil.test"}))),
        (Method::DELETE, "/v1/admin/orgs/contoso/location", None),
        (Method::GET, "/v1/admin/queues", None),
        (Method::GET, "/v1/admin/queues/datasync/dead-letters", None),
    ]
}

async fn send_as(
    f: &Fixture,
    method: &Method,
    path: &str,
    auth: Option<&str>,
    body: Option<&Json>,
) -> common::Reply {
    let mut headers = vec![];
    if let Some(auth) = auth {
        headers.push(("authorization", auth));
    }
    let bytes = match body {
        Some(b) => {
            headers.push(("content-type", "application/json"));
            serde_json::to_vec(b).unwrap()
        }
        None => vec![],
    };
    f.raw(method.clone(), path, &headers, bytes).await
}

/// Nothing of contoso's data in a refusal.
#[track_caller]
fn reveals_nothing(reply: &common::Reply) {
    let body = String::from_utf8_lossy(&reply.body);
    for secret in ["Alpha", "Acme", "Beta", "a1", "b1", "contoso-crm"] {
        assert!(!body.contains(secret), "the refusal leaks {secret:?}: {body}");
    }
}

async fn bad_credentials_are_401_everywhere(backend: Backend) {
    let f = start(backend).await;
    let before = f.snapshot().await;
    for (case, auth, needle) in bad_credentials() {
        for (method, path, body) in requests() {
            let reply = send_as(&f, &method, path, auth.as_deref(), body.as_ref()).await;
            assert_eq!(
                reply.status,
                401,
                "{case}: {method} {path}: {}",
                String::from_utf8_lossy(&reply.body)
            );
            assert_problem(&reply, 401, "unauthenticated", needle);
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{case}: {method} {path}");
            reveals_nothing(&reply);
        }
    }
    assert_eq!(f.snapshot().await, before, "a refused request changed stored state");
    // The same requests with a good operator token do get through (the
    // matrix above is not refusing for some other reason).
    let operator = format!("Bearer {}", good("otto", "contoso", &["sync-operator", "rep"]));
    let reply = send_as(&f, &Method::GET, "/v1/admin/orgs/contoso/status", Some(&operator), None).await;
    assert_eq!(reply.status, 200);
    let reply =
        send_as(&f, &Method::POST, "/v1/orgs/contoso/sync/pull", Some(&operator), Some(&json!({}))).await;
    assert_eq!(reply.status, 200);
}

async fn another_orgs_principal_is_403_by_path_and_host(backend: Backend) {
    let f = start(backend).await;
    let before = f.snapshot().await;
    // A fabrikam user with every role, even operator-less admin.
    let foreign = format!("Bearer {}", good("alice", "fabrikam", &["rep", "manager", "sync-admin"]));
    for (method, path, body) in requests().into_iter().filter(|(_, p, _)| p.starts_with("/v1/orgs/")) {
        let reply = send_as(&f, &method, path, Some(&foreign), body.as_ref()).await;
        assert_problem(&reply, 403, "forbidden", "may not use org 'contoso'");
        reveals_nothing(&reply);
    }
    for (method, path, body) in [
        (Method::GET, "/v1/sync/profile", None),
        (Method::POST, "/v1/sync/pull", Some("{}")),
        (Method::POST, "/v1/sync/push", Some(r#"{"mutations":[]}"#)),
    ] {
        let mut headers = vec![("host", "contoso.sync.test"), ("authorization", foreign.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let reply = f.raw(method.clone(), path, &headers, body.unwrap_or_default()).await;
        assert_problem(&reply, 403, "forbidden", "may not use org 'contoso'");
        reveals_nothing(&reply);
    }
    // Admin routes of contoso, as fabrikam's admin.
    for (method, path, body) in
        requests().into_iter().filter(|(_, p, _)| p.starts_with("/v1/admin/orgs/contoso"))
    {
        let reply = send_as(&f, &method, path, Some(&foreign), body.as_ref()).await;
        assert_eq!(reply.status, 403, "{method} {path}: {}", String::from_utf8_lossy(&reply.body));
        assert_problem(&reply, 403, "forbidden", "");
        reveals_nothing(&reply);
    }
    // Provisioning contoso, as fabrikam's admin.
    let org = json!({"id": "contoso", "source": {"kind": "memory", "settings": {}}});
    let reply = send_as(&f, &Method::POST, "/v1/admin/orgs", Some(&foreign), Some(&org)).await;
    assert_problem(&reply, 403, "forbidden", "may not manage org 'contoso'");
    assert_eq!(f.snapshot().await, before);
}

async fn non_admins_are_403_on_admin_routes(backend: Backend) {
    let f = start(backend).await;
    let before = f.snapshot().await;
    let rep = format!("Bearer {}", good("alice", "contoso", &["rep", "manager"]));
    for (method, path, body) in requests().into_iter().filter(|(_, p, _)| p.starts_with("/v1/admin/")) {
        let reply = send_as(&f, &method, path, Some(&rep), body.as_ref()).await;
        assert_problem(&reply, 403, "forbidden", "needs the admin role");
        reveals_nothing(&reply);
    }
    // An org admin may not use the operator-wide routes.
    let admin = format!("Bearer {}", good("ada", "contoso", &["sync-admin"]));
    for path in ["/v1/admin/orgs", "/v1/admin/queues", "/v1/admin/queues/datasync/dead-letters"] {
        let reply = send_as(&f, &Method::GET, path, Some(&admin), None).await;
        assert_problem(&reply, 403, "forbidden", "operator role");
    }
    for method in [Method::PUT, Method::DELETE] {
        let body = json!({"base_url": "https://evil.test"});
        let reply = send_as(&f, &method, "/v1/admin/orgs/contoso/location", Some(&admin), Some(&body)).await;
        assert_problem(&reply, 403, "forbidden", "operator role");
    }
    assert_eq!(f.snapshot().await, before);
}

async fn a_role_no_profile_allows_is_403(backend: Backend) {
    let f = start(backend).await;
    let before = f.snapshot().await;
    for roles in [vec!["intern"], vec![], vec!["sync-admin"]] {
        let token = format!("Bearer {}", good("ivy", "contoso", &roles));
        for (method, path, body) in requests().into_iter().filter(|(_, p, _)| p.starts_with("/v1/orgs/")) {
            let reply = send_as(&f, &method, path, Some(&token), body.as_ref()).await;
            assert_problem(&reply, 403, "forbidden", "no mobile offline profile");
            reveals_nothing(&reply);
        }
    }
    assert_eq!(f.snapshot().await, before);
}

async fn a_valid_caller_cannot_write_outside_its_partitions(backend: Backend) {
    let f = start(backend).await;
    let before = f.snapshot().await;
    let bob = format!("Bearer {}", good("bob", "contoso", &["rep"]));
    // a1 is alice's: bob's update is rejected per mutation, nothing written.
    let push = json!({"mutations": [{
        "id": "0d5f0b7a-2222-4000-8000-000000000001", "entity": "account", "op": "update",
        "row_id": "a1", "values": {"name": "Bob was here"}
    }]});
    let reply = send_as(&f, &Method::POST, "/v1/orgs/contoso/sync/push", Some(&bob), Some(&push)).await;
    assert_eq!(reply.status, 200);
    let result = &reply.json()["results"][0];
    assert_eq!(result["status"], "rejected", "{result}");
    assert!(result["reason"].as_str().unwrap().contains("not in any of your partitions"));
    let after = f.snapshot().await;
    assert_eq!(after["contoso"]["rows"], before["contoso"]["rows"]);
    assert_eq!(after["contoso"]["source_head"], before["contoso"]["source_head"]);
    // And bob's pull shows only his own account.
    let reply = send_as(&f, &Method::POST, "/v1/orgs/contoso/sync/pull", Some(&bob), Some(&json!({}))).await;
    let body = String::from_utf8_lossy(&reply.body).to_string();
    assert!(body.contains("Beta") && !body.contains("Alpha") && !body.contains("Acme"), "{body}");
}

async fn tokens_expire_between_requests(backend: Backend) {
    // A token valid for two seconds works, then is refused (the leeway of
    // the default config is 30 s, so this one uses a zero leeway).
    let auth = JwtAuthenticator::new(
        JwtConfig::new(JwtAlgorithm::Rs256).with_issuer(ISS).with_audience(AUD).with_leeway(Duration::ZERO),
        JwtKeys::PublicKeyPem(key("rsa1.pub.pem")),
    )
    .unwrap();
    let f = Fixture::start_with(backend, Options { auth: Some(Arc::new(auth)), ..Options::default() }).await;
    let mut c = claims("alice", "contoso", &["rep"]);
    c["exp"] = json!(now() + 2);
    let token = format!("Bearer {}", rs256(&c, "rsa1.key.pem"));
    let reply =
        send_as(&f, &Method::POST, "/v1/orgs/contoso/sync/pull", Some(&token), Some(&json!({}))).await;
    assert_eq!(reply.status, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reply =
        send_as(&f, &Method::POST, "/v1/orgs/contoso/sync/pull", Some(&token), Some(&json!({}))).await;
    assert_problem(&reply, 401, "unauthenticated", "expired");
}

across_backends!(
    bad_credentials_are_401_everywhere,
    another_orgs_principal_is_403_by_path_and_host,
    non_admins_are_403_on_admin_routes,
    a_role_no_profile_allows_is_403,
    a_valid_caller_cannot_write_outside_its_partitions,
    tokens_expire_between_requests,
);
