//! The authenticator matrix: HS256, RS256 and ES256; inline, file and URL
//! key sets; every way a token can be wrong; and the `Authenticated`
//! extractor over a loopback socket.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{FromRef, State};
use axum::routing::get;
use base64::Engine as _;
use http::{Method, StatusCode};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sync_core::{Authenticator, Error, ErrorKind, OrgId, Principal};
use transport_http::{
    Authenticated, DevToken, JwksUrl, JwtAlgorithm, JwtAuthenticator, JwtConfig, JwtKeys, problem_type,
};

use common::{closed_port_url, key, send, serve};

const SECRET: &[u8] = b"test secret: thirty-two bytes or more, please";
const ISS: &str = "https://idp.test";
const AUD: &str = "offline-sync";

fn contoso() -> OrgId {
    OrgId::new("contoso").unwrap()
}

fn config(alg: JwtAlgorithm) -> JwtConfig {
    JwtConfig::new(alg).with_issuer(ISS).with_audience(AUD)
}

fn hs() -> JwtAuthenticator {
    JwtAuthenticator::new(config(JwtAlgorithm::Hs256), JwtKeys::Secret(SECRET.to_vec())).unwrap()
}

/// A good token's claims.
fn alice() -> DevToken {
    DevToken::new("alice", &contoso())
        .with_issuer(ISS)
        .with_audience(AUD)
        .with_role("sales")
        .with_claim("team", json!("north"))
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&key(name)).unwrap()
}

fn ec(name: &str) -> EncodingKey {
    EncodingKey::from_ec_pem(&key(name)).unwrap()
}

/// A JWK (public part) of a private key, with a `kid`.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

fn jwks(keys: Vec<Value>) -> String {
    json!({ "keys": keys }).to_string()
}

/// The message of an `Unauthenticated` error (fails on any other kind).
async fn refused(auth: &JwtAuthenticator, token: &str) -> String {
    match auth.authenticate(token).await {
        Err(Error::Unauthenticated { message }) => message,
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn a_good_token_becomes_a_principal() {
    let principal = hs().authenticate(&alice().sign_hs256(SECRET).unwrap()).await.unwrap();
    assert_eq!(principal.user_id, "alice");
    assert_eq!(principal.org, contoso());
    assert_eq!(principal.roles.iter().collect::<Vec<_>>(), ["sales"]);
    assert_eq!(principal.claims["team"], json!("north"));
    assert_eq!(principal.claims["iss"], json!(ISS));
    assert!(principal.claims.contains_key("exp"));
    for taken in ["sub", "org", "roles"] {
        assert!(!principal.claims.contains_key(taken), "{taken} is not repeated in claims");
    }
    // `@user.team` in a filter reads the claim.
    assert_eq!(principal.parameter("user.team"), Some(sync_core::Value::String("north".into())));
}

#[tokio::test]
async fn roles_as_array_or_space_separated_string() {
    let auth = hs();
    let token = alice().with_claim("roles", json!("sync-admin  sales")).sign_hs256(SECRET).unwrap();
    let p = auth.authenticate(&token).await.unwrap();
    assert!(p.is_admin() && p.has_role("sales") && p.roles.len() == 2);
    let token = alice().without_claim("roles").sign_hs256(SECRET).unwrap();
    assert!(auth.authenticate(&token).await.unwrap().roles.is_empty());
    let token = alice().with_claim("roles", json!(7)).sign_hs256(SECRET).unwrap();
    assert!(refused(&auth, &token).await.contains("\"roles\" claim must be an array of strings"));
    let token = alice().with_claim("roles", json!(["a", 1])).sign_hs256(SECRET).unwrap();
    assert!(refused(&auth, &token).await.contains("\"roles\" claim"));
}

#[tokio::test]
async fn org_and_roles_claims_are_configurable() {
    let config = config(JwtAlgorithm::Hs256).with_org_claim("tid").with_roles_claim("groups");
    let auth = JwtAuthenticator::new(config, JwtKeys::Secret(SECRET.to_vec())).unwrap();
    let token = alice()
        .without_claim("org")
        .with_claim("tid", json!("fabrikam"))
        .with_claim("groups", json!(["ops"]));
    let p = auth.authenticate(&token.sign_hs256(SECRET).unwrap()).await.unwrap();
    assert_eq!(p.org.as_str(), "fabrikam");
    assert!(p.has_role("ops"));
    assert_eq!(p.claims["roles"], json!(["sales"]), "the default roles claim is an ordinary claim here");
    let missing = alice().sign_hs256(SECRET).unwrap();
    assert!(refused(&auth, &missing).await.contains("no \"tid\" claim"));
}

#[tokio::test]
async fn the_matrix_of_bad_tokens() {
    let auth = hs();
    let now = SystemTime::now();
    let minutes = |m: u64| Duration::from_secs(60 * m);
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty", String::new(), "no bearer token"),
        ("garbage", "abc".into(), "malformed token"),
        ("four parts", "a.b.c.d".into(), "malformed token"),
        ("header not base64", "!!.e30.x".into(), "malformed token"),
        (
            "bad signature",
            alice().sign_hs256(b"another secret, also 32 bytes long!!").unwrap(),
            "bad signature",
        ),
        ("expired", alice().expires_at(now - minutes(2)).sign_hs256(SECRET).unwrap(), "expired"),
        ("not yet valid", alice().not_before(now + minutes(2)).sign_hs256(SECRET).unwrap(), "not valid yet"),
        (
            "wrong issuer",
            alice().with_issuer("https://evil.test").sign_hs256(SECRET).unwrap(),
            "wrong issuer \"https://evil.test\"",
        ),
        ("no issuer", alice().without_claim("iss").sign_hs256(SECRET).unwrap(), "no \"iss\" claim"),
        (
            "wrong audience",
            alice().with_audience("someone-else").sign_hs256(SECRET).unwrap(),
            "wrong audience \"someone-else\"",
        ),
        ("no audience", alice().without_claim("aud").sign_hs256(SECRET).unwrap(), "no \"aud\" claim"),
        ("no sub", alice().without_claim("sub").sign_hs256(SECRET).unwrap(), "no \"sub\" claim"),
        (
            "empty sub",
            alice().with_claim("sub", json!("")).sign_hs256(SECRET).unwrap(),
            "\"sub\" claim must be a non-empty string",
        ),
        (
            "numeric sub",
            alice().with_claim("sub", json!(42)).sign_hs256(SECRET).unwrap(),
            "\"sub\" claim must be a non-empty string",
        ),
        ("no org", alice().without_claim("org").sign_hs256(SECRET).unwrap(), "no \"org\" claim"),
        (
            "hostile org",
            alice().with_claim("org", json!("x; drop table y")).sign_hs256(SECRET).unwrap(),
            "not a valid org id",
        ),
        (
            "org not a string",
            alice().with_claim("org", json!(["a"])).sign_hs256(SECRET).unwrap(),
            "\"org\" claim must be a string",
        ),
        (
            "malformed exp",
            alice().with_claim("exp", json!("tomorrow")).sign_hs256(SECRET).unwrap(),
            "\"exp\" claim is malformed",
        ),
    ];
    for (name, token, expected) in cases {
        let message = refused(&auth, &token).await;
        assert!(message.contains(expected), "{name}: {message:?} should say {expected:?}");
    }

    // No exp at all: signed by hand, since DevToken always sets one.
    let mut claims = alice().claims();
    claims.as_object_mut().unwrap().remove("exp");
    let token = sign(Algorithm::HS256, None, &claims, &EncodingKey::from_secret(SECRET));
    assert!(refused(&auth, &token).await.contains("no \"exp\" claim"));

    // A tampered payload (alice → admin roles) keeps alice's signature.
    let good = alice().sign_hs256(SECRET).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let mut forged_claims = alice().claims();
    forged_claims["roles"] = json!(["sync-admin"]);
    let tampered = format!("{}.{}.{}", parts[0], b64(&forged_claims.to_string()), parts[2]);
    assert!(refused(&auth, &tampered).await.contains("bad signature"));
}

#[tokio::test]
async fn leeway_tolerates_small_clock_skew() {
    let auth = hs();
    let now = SystemTime::now();
    let skew = Duration::from_secs(10);
    assert!(auth.authenticate(&alice().expires_at(now - skew).sign_hs256(SECRET).unwrap()).await.is_ok());
    assert!(auth.authenticate(&alice().not_before(now + skew).sign_hs256(SECRET).unwrap()).await.is_ok());
    let strict = JwtAuthenticator::new(
        config(JwtAlgorithm::Hs256).with_leeway(Duration::ZERO),
        JwtKeys::Secret(SECRET.to_vec()),
    )
    .unwrap();
    assert!(
        refused(&strict, &alice().expires_at(now - skew).sign_hs256(SECRET).unwrap())
            .await
            .contains("expired")
    );
}

#[tokio::test]
async fn audiences_may_be_a_list() {
    let token = alice().with_claim("aud", json!(["other", AUD])).sign_hs256(SECRET).unwrap();
    assert!(hs().authenticate(&token).await.is_ok());
}

#[tokio::test]
async fn alg_none_is_refused() {
    let auth = hs();
    let claims = alice().claims().to_string();
    for alg in ["none", "None", "NONE"] {
        let token = format!("{}.{}.", b64(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)), b64(&claims));
        assert!(refused(&auth, &token).await.contains("alg \"none\""), "{alg}");
    }
    // Also against a public-key authenticator.
    let rs = JwtAuthenticator::new(config(JwtAlgorithm::Rs256), JwtKeys::PublicKeyPem(key("rsa1.pub.pem")))
        .unwrap();
    let token = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&claims));
    assert!(refused(&rs, &token).await.contains("alg \"none\""));
}

#[tokio::test]
async fn hs_rs_confusion_is_refused() {
    let public_pem = key("rsa1.pub.pem");
    let rs = JwtAuthenticator::new(config(JwtAlgorithm::Rs256), JwtKeys::PublicKeyPem(public_pem.clone()))
        .unwrap();
    let claims = alice().claims();

    // The real thing works.
    assert!(rs.authenticate(&sign(Algorithm::RS256, None, &claims, &rsa("rsa1.key.pem"))).await.is_ok());

    // The attack: HS256 "signed" with the RSA public key as the HMAC secret.
    let forged = sign(Algorithm::HS256, None, &claims, &EncodingKey::from_secret(&public_pem));
    let message = refused(&rs, &forged).await;
    assert!(message.contains("wrong algorithm") && message.contains("HS256"), "{message}");

    // And the other way round: an HS256 server refuses RS256 tokens.
    let rs_token = sign(Algorithm::RS256, None, &claims, &rsa("rsa1.key.pem"));
    assert!(refused(&hs(), &rs_token).await.contains("only HS256 is accepted"));

    // Another RSA key: a bad signature.
    let other = sign(Algorithm::RS256, None, &claims, &rsa("rsa2.key.pem"));
    assert!(refused(&rs, &other).await.contains("bad signature"));

    // RS384 with the right key is still the wrong algorithm.
    let rs384 = sign(Algorithm::RS384, None, &claims, &rsa("rsa1.key.pem"));
    assert!(refused(&rs, &rs384).await.contains("wrong algorithm"));
}

#[tokio::test]
async fn rs256_and_es256_with_a_jwks_file() {
    let dir = tempfile::tempdir().unwrap();
    let claims = alice().claims();

    let rsa_file = dir.path().join("rsa.jwks.json");
    let rs_keys = vec![
        jwk(&rsa("rsa1.key.pem"), Algorithm::RS256, "k1"),
        jwk(&rsa("rsa2.key.pem"), Algorithm::RS256, "k2"),
        // Keys for other algorithms are skipped, whatever their kid.
        jwk(&ec("ec1.key.pem"), Algorithm::ES256, "e1"),
        json!({"kty": "oct", "k": b64("secret"), "kid": "h1"}),
    ];
    std::fs::write(&rsa_file, jwks(rs_keys)).unwrap();
    let rs = JwtAuthenticator::new(config(JwtAlgorithm::Rs256), JwtKeys::JwksFile(rsa_file)).unwrap();
    let p =
        rs.authenticate(&sign(Algorithm::RS256, Some("k1"), &claims, &rsa("rsa1.key.pem"))).await.unwrap();
    assert_eq!(p.user_id, "alice");
    assert!(
        rs.authenticate(&sign(Algorithm::RS256, Some("k2"), &claims, &rsa("rsa2.key.pem"))).await.is_ok()
    );
    // Signed by k1 but claiming to be k2.
    let lying = sign(Algorithm::RS256, Some("k2"), &claims, &rsa("rsa1.key.pem"));
    assert!(refused(&rs, &lying).await.contains("bad signature"));
    let unknown = sign(Algorithm::RS256, Some("k9"), &claims, &rsa("rsa1.key.pem"));
    assert!(refused(&rs, &unknown).await.contains("unknown key"));
    let no_kid = sign(Algorithm::RS256, None, &claims, &rsa("rsa1.key.pem"));
    assert!(refused(&rs, &no_kid).await.contains("no key id"));
    // The oct key in the set is never an HMAC key for a confused token.
    let confused = sign(Algorithm::HS256, Some("h1"), &claims, &EncodingKey::from_secret(b"secret"));
    assert!(refused(&rs, &confused).await.contains("wrong algorithm"));
    // The EC key is not usable for RS256.
    let es_token = sign(Algorithm::ES256, Some("e1"), &claims, &ec("ec1.key.pem"));
    assert!(refused(&rs, &es_token).await.contains("wrong algorithm"));

    let ec_file = dir.path().join("ec.jwks.json");
    std::fs::write(&ec_file, jwks(vec![jwk(&ec("ec1.key.pem"), Algorithm::ES256, "e1")])).unwrap();
    let es = JwtAuthenticator::new(config(JwtAlgorithm::Es256), JwtKeys::JwksFile(ec_file)).unwrap();
    assert!(es.authenticate(&es_token).await.is_ok());
    // A single-key set also verifies a token without kid.
    assert!(es.authenticate(&sign(Algorithm::ES256, None, &claims, &ec("ec1.key.pem"))).await.is_ok());
    let expired = alice().expires_at(SystemTime::now() - Duration::from_secs(3600)).claims();
    assert!(
        refused(&es, &sign(Algorithm::ES256, Some("e1"), &expired, &ec("ec1.key.pem")))
            .await
            .contains("expired")
    );
    let rs_token = sign(Algorithm::RS256, Some("e1"), &claims, &rsa("rsa1.key.pem"));
    assert!(refused(&es, &rs_token).await.contains("only ES256"));

    // A missing or empty file is a configuration error.
    let missing =
        JwtAuthenticator::new(config(JwtAlgorithm::Rs256), JwtKeys::JwksFile(dir.path().join("nope")));
    assert_eq!(missing.unwrap_err().kind(), ErrorKind::InvalidInput);
}

/// A loopback JWKS endpoint whose document can be swapped, counting fetches.
#[derive(Clone)]
struct JwksServer {
    document: Arc<std::sync::Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(document: String) -> (JwksServer, String) {
        let server =
            JwksServer { document: Arc::new(std::sync::Mutex::new(document)), fetches: Arc::default() };
        let router = Router::new()
            .route(
                "/jwks",
                get(|State(s): State<JwksServer>| async move {
                    s.fetches.fetch_add(1, Ordering::SeqCst);
                    let doc = s.document.lock().unwrap().clone();
                    ([("content-type", "application/json")], doc)
                }),
            )
            .with_state(server.clone());
        let base = serve(router).await;
        (server, format!("{base}/jwks"))
    }

    fn set(&self, document: String) {
        *self.document.lock().unwrap() = document;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn jwks_url_is_cached_and_refreshed_on_unknown_kid_at_most_once_per_interval() {
    let k1 = jwk(&rsa("rsa1.key.pem"), Algorithm::RS256, "k1");
    let k2 = jwk(&rsa("rsa2.key.pem"), Algorithm::RS256, "k2");
    let (server, url) = JwksServer::start(jwks(vec![k1.clone()])).await;
    let interval = Duration::from_millis(1500);
    let auth = Arc::new(
        JwtAuthenticator::new(
            config(JwtAlgorithm::Rs256),
            JwtKeys::JwksUrl(JwksUrl::new(url).with_min_refresh_interval(interval)),
        )
        .unwrap(),
    );
    let claims = alice().claims();
    let by_k1 = sign(Algorithm::RS256, Some("k1"), &claims, &rsa("rsa1.key.pem"));
    let by_k2 = sign(Algorithm::RS256, Some("k2"), &claims, &rsa("rsa2.key.pem"));
    let by_k9 = sign(Algorithm::RS256, Some("k9"), &claims, &rsa("rsa2.key.pem"));
    assert_eq!(server.fetches(), 0, "nothing is fetched before it is needed");

    // First use fetches; later uses hit the cache.
    assert!(auth.authenticate(&by_k1).await.is_ok());
    assert!(auth.authenticate(&by_k1).await.is_ok());
    assert_eq!(server.fetches(), 1);

    // The issuer rotates in k2. Right after a fetch, an unknown kid does not
    // refetch: a burst of such tokens cannot hammer the issuer.
    server.set(jwks(vec![k1.clone(), k2.clone()]));
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let (auth, token) = (auth.clone(), by_k2.clone());
            tokio::spawn(async move { auth.authenticate(&token).await })
        })
        .collect();
    for task in burst {
        let message = task.await.unwrap().unwrap_err().to_string();
        assert!(message.contains("unknown key"), "{message}");
    }
    assert_eq!(server.fetches(), 1);

    // Once the interval has passed, an unknown kid refetches (once, however
    // many requests ask at the same moment) and k2 is accepted.
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    let together: Vec<_> = (0..10)
        .map(|_| {
            let (auth, token) = (auth.clone(), by_k2.clone());
            tokio::spawn(async move { auth.authenticate(&token).await })
        })
        .collect();
    for task in together {
        assert_eq!(task.await.unwrap().unwrap().user_id, "alice");
    }
    assert_eq!(server.fetches(), 2);

    // A kid the issuer never had: refused, and no fetch within the interval.
    assert!(auth.authenticate(&by_k9).await.unwrap_err().to_string().contains("unknown key"));
    assert_eq!(server.fetches(), 2);
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    assert!(auth.authenticate(&by_k9).await.is_err());
    assert!(auth.authenticate(&by_k9).await.is_err());
    assert_eq!(server.fetches(), 3);
}

#[tokio::test]
async fn jwks_url_sets_age_out_so_revoked_keys_stop_working() {
    let k1 = jwk(&rsa("rsa1.key.pem"), Algorithm::RS256, "k1");
    let k2 = jwk(&rsa("rsa2.key.pem"), Algorithm::RS256, "k2");
    let (server, url) = JwksServer::start(jwks(vec![k1, k2.clone()])).await;
    let options = JwksUrl::new(url)
        .with_min_refresh_interval(Duration::from_millis(50))
        .with_max_age(Duration::from_millis(1000));
    let auth = JwtAuthenticator::new(config(JwtAlgorithm::Rs256), JwtKeys::JwksUrl(options)).unwrap();
    let by_k1 = sign(Algorithm::RS256, Some("k1"), &alice().claims(), &rsa("rsa1.key.pem"));
    assert!(auth.authenticate(&by_k1).await.is_ok());
    server.set(jwks(vec![k2]));
    assert!(auth.authenticate(&by_k1).await.is_ok(), "still cached");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(auth.authenticate(&by_k1).await.unwrap_err().to_string().contains("unknown key"));
    assert_eq!(server.fetches(), 2);
}

#[tokio::test]
async fn an_unreachable_jwks_url_is_unavailable() {
    let url = format!("{}/jwks", closed_port_url().await);
    let auth = JwtAuthenticator::new(
        config(JwtAlgorithm::Rs256),
        JwtKeys::JwksUrl(JwksUrl::new(url).with_timeout(Duration::from_secs(2))),
    )
    .unwrap();
    let token = sign(Algorithm::RS256, Some("k1"), &alice().claims(), &rsa("rsa1.key.pem"));
    let error = auth.authenticate(&token).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.to_string().contains("could not be fetched"), "{error}");
    // The failure is remembered: no refetch within the interval, same answer.
    assert_eq!(auth.authenticate(&token).await.unwrap_err().kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn a_jwks_url_answering_garbage_is_unavailable() {
    let (_server, url) = JwksServer::start("<html>not json</html>".into()).await;
    let auth =
        JwtAuthenticator::new(config(JwtAlgorithm::Es256), JwtKeys::JwksUrl(JwksUrl::new(url))).unwrap();
    let token = sign(Algorithm::ES256, Some("e1"), &alice().claims(), &ec("ec1.key.pem"));
    let error = auth.authenticate(&token).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert!(error.to_string().contains("not a JWKS document"), "{error}");
}

#[derive(Clone)]
struct AppState {
    auth: Arc<dyn Authenticator>,
}

impl FromRef<AppState> for Arc<dyn Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

async fn me(Authenticated(principal): Authenticated) -> axum::Json<Principal> {
    axum::Json(principal)
}

async fn me_twice(Authenticated(a): Authenticated, Authenticated(b): Authenticated) -> String {
    assert_eq!(a, b);
    a.user_id
}

#[tokio::test]
async fn the_authenticated_extractor_over_http() {
    let router = Router::new()
        .route("/me", get(me))
        .route("/me-twice", get(me_twice))
        .with_state(AppState { auth: Arc::new(hs()) });
    let base = serve(router).await;
    let url = format!("{base}/me");
    let good = alice().sign_hs256(SECRET).unwrap();

    let ok = send(Method::GET, &url, &[("authorization", &format!("Bearer {good}"))], "").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["user_id"], "alice");
    assert_eq!(ok.json()["org"], "contoso");
    let twice =
        send(Method::GET, &format!("{base}/me-twice"), &[("authorization", &format!("Bearer {good}"))], "")
            .await;
    assert_eq!(twice.status, StatusCode::OK);

    let expired =
        alice().expires_at(SystemTime::now() - Duration::from_secs(3600)).sign_hs256(SECRET).unwrap();
    let forged = alice().sign_hs256(b"not the secret but thirty-two bytes").unwrap();
    let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&alice().claims().to_string()));
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![], "no bearer token"),
        (vec![("authorization", "Basic YWxpY2U6cHc=".into())], "scheme must be Bearer"),
        (vec![("authorization", "Bearer ".into())], "empty"),
        (vec![("authorization", format!("Bearer {expired}"))], "expired"),
        (vec![("authorization", format!("Bearer {forged}"))], "bad signature"),
        (vec![("authorization", format!("Bearer {none}"))], "alg \"none\""),
    ];
    for (headers, expected) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = send(Method::GET, &url, &headers, "").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{expected}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        assert_eq!(reply.header("content-type"), Some("application/problem+json"));
        let problem = reply.json();
        assert_eq!(problem["type"], problem_type(ErrorKind::Unauthenticated));
        assert_eq!(problem["status"], 401);
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{detail:?} should say {expected:?}");
    }
}

#[tokio::test]
async fn an_unreachable_key_set_is_a_503_with_retry_after() {
    let url = format!("{}/jwks", closed_port_url().await);
    let auth =
        JwtAuthenticator::new(config(JwtAlgorithm::Rs256), JwtKeys::JwksUrl(JwksUrl::new(url))).unwrap();
    let router = Router::new().route("/me", get(me)).with_state(AppState { auth: Arc::new(auth) });
    let base = serve(router).await;
    let token = sign(Algorithm::RS256, Some("k1"), &alice().claims(), &rsa("rsa1.key.pem"));
    let reply =
        send(Method::GET, &format!("{base}/me"), &[("authorization", &format!("Bearer {token}"))], "").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.json()["type"], problem_type(ErrorKind::Unavailable));
}
