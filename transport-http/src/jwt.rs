//! [`JwtAuthenticator`]: bearer JWTs to [`Principal`]s.
//!
//! One algorithm is pinned by configuration; a token signed with any other
//! (`none` included, and HS256 when RS256 is configured — the classic
//! key-confusion attack) is refused before any key is used. HS256 verifies
//! with a shared secret; RS256 and ES256 with a public key or a JWKS (inline,
//! from a file, or from a URL fetched over rustls, cached by `kid`, refetched
//! when a token names an unknown `kid` — at most once per
//! [`JwksUrl::min_refresh_interval`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::Full;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value as Json};
use sync_core::{Authenticator, Error, OrgId, Principal, Result};
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

use crate::client::{ClientOptions, HttpClient, TlsRoots, error_chain, is_loopback, parse_url};

/// The signing algorithm a [`JwtAuthenticator`] accepts: exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RSA public keys).
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl JwtAlgorithm {
    /// The name in a JWT header (`HS256`, `RS256`, `ES256`).
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        }
    }

    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            JwtAlgorithm::Hs256 => jsonwebtoken::Algorithm::HS256,
            JwtAlgorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            JwtAlgorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        }
    }

    /// The JWK `kty` of this algorithm's keys.
    fn key_type(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "oct",
            JwtAlgorithm::Rs256 => "RSA",
            JwtAlgorithm::Es256 => "EC",
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JwtAlgorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "HS256" => Ok(JwtAlgorithm::Hs256),
            "RS256" => Ok(JwtAlgorithm::Rs256),
            "ES256" => Ok(JwtAlgorithm::Es256),
            _ => Err(Error::invalid(format!("unsupported JWT algorithm {s:?}; use HS256, RS256 or ES256"))),
        }
    }
}

/// What a [`JwtAuthenticator`] checks and how it reads claims.
///
/// `exp` is always required; `nbf` is checked when present; `iss` and `aud`
/// are required and checked when issuers or audiences are configured (set
/// both in production).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JwtConfig {
    /// The one accepted algorithm.
    pub algorithm: JwtAlgorithm,
    /// Accepted issuers (`iss`); empty: not checked.
    pub issuers: Vec<String>,
    /// Accepted audiences (`aud`); empty: not checked.
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf` (whole seconds).
    pub leeway: Duration,
    /// The claim holding the principal's org (default `org`).
    pub org_claim: String,
    /// The claim holding the roles: an array of strings or a space-separated
    /// string (default `roles`).
    pub roles_claim: String,
}

impl JwtConfig {
    /// Defaults for `algorithm`: no issuer or audience check, 30 s leeway,
    /// claims `org` and `roles`.
    pub fn new(algorithm: JwtAlgorithm) -> Self {
        JwtConfig {
            algorithm,
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(30),
            org_claim: "org".to_owned(),
            roles_claim: "roles".to_owned(),
        }
    }

    /// Accepts tokens from `issuer` (call again for more).
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuers.push(issuer.into());
        self
    }

    /// Accepts tokens for `audience` (call again for more).
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Sets [`leeway`](Self::leeway).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Sets [`org_claim`](Self::org_claim).
    pub fn with_org_claim(mut self, claim: impl Into<String>) -> Self {
        self.org_claim = claim.into();
        self
    }

    /// Sets [`roles_claim`](Self::roles_claim).
    pub fn with_roles_claim(mut self, claim: impl Into<String>) -> Self {
        self.roles_claim = claim.into();
        self
    }

    fn validation(&self) -> Validation {
        let mut v = Validation::new(self.algorithm.jwt());
        v.leeway = self.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if !self.issuers.is_empty() {
            v.set_issuer(&self.issuers);
            required.push("iss");
        }
        if self.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audiences);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }
}

/// A JWKS served over HTTP(S).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JwksUrl {
    /// The URL. Plain `http` is accepted only for loopback hosts.
    pub url: String,
    /// The shortest time between two fetches: a token with an unknown `kid`
    /// triggers a refetch only when the last one is at least this old
    /// (default 60 s).
    pub min_refresh_interval: Duration,
    /// How long a fetched set is used before it is refetched (default 1 h;
    /// should a refetch fail, the old set stays in use).
    pub max_age: Duration,
    /// The timeout of one fetch (default 10 s).
    pub timeout: Duration,
    /// Trusted roots for `https`.
    pub tls_roots: TlsRoots,
}

impl JwksUrl {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        JwksUrl {
            url: url.into(),
            min_refresh_interval: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            tls_roots: TlsRoots::default(),
        }
    }

    /// Sets [`min_refresh_interval`](Self::min_refresh_interval).
    pub fn with_min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh_interval = interval;
        self
    }

    /// Sets [`max_age`](Self::max_age).
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Sets [`timeout`](Self::timeout).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`tls_roots`](Self::tls_roots).
    pub fn with_tls_roots(mut self, roots: TlsRoots) -> Self {
        self.tls_roots = roots;
        self
    }
}

/// Where a [`JwtAuthenticator`]'s verification keys come from.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtKeys {
    /// The HS256 shared secret (at least 32 bytes).
    Secret(Vec<u8>),
    /// An RSA or P-256 public key in PEM (`PUBLIC KEY`, or `RSA PUBLIC KEY`).
    PublicKeyPem(Vec<u8>),
    /// A JWKS document (`{"keys": […]}`).
    Jwks(String),
    /// A file holding a JWKS document, read when the authenticator is built.
    JwksFile(PathBuf),
    /// A JWKS fetched from a URL and cached.
    JwksUrl(JwksUrl),
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtKeys::Secret(_) => f.write_str("Secret(..)"),
            JwtKeys::PublicKeyPem(_) => f.write_str("PublicKeyPem(..)"),
            JwtKeys::Jwks(_) => f.write_str("Jwks(..)"),
            JwtKeys::JwksFile(path) => f.debug_tuple("JwksFile").field(path).finish(),
            JwtKeys::JwksUrl(url) => f.debug_tuple("JwksUrl").field(&url.url).finish(),
        }
    }
}

/// The shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_LEN: usize = 32;

/// Why a credential was refused; every one becomes `Unauthenticated`.
#[derive(Debug, thiserror::Error)]
enum AuthFailure {
    #[error("no bearer token was presented")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unsigned tokens (alg \"none\") are not accepted")]
    AlgNone,
    #[error("wrong algorithm: the token is signed with {found}, and only {expected} is accepted")]
    WrongAlgorithm { found: String, expected: JwtAlgorithm },
    #[error("unknown key: the token names key id {0:?}, which the trusted key set does not hold")]
    UnknownKey(String),
    #[error("the token names no key id (kid), and the trusted key set holds {0} keys")]
    NoKeyId(usize),
    #[error("bad signature: the token was not signed by a trusted key")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (its nbf is in the future)")]
    NotYetValid,
    #[error("wrong issuer {0}: tokens from it are not accepted")]
    WrongIssuer(String),
    #[error("wrong audience {0}: the token is not meant for this server")]
    WrongAudience(String),
    #[error("the token has no {0:?} claim")]
    MissingClaim(String),
    #[error("the token's {claim:?} claim {problem}")]
    BadClaim { claim: String, problem: String },
}

impl From<AuthFailure> for Error {
    fn from(failure: AuthFailure) -> Self {
        Error::unauthenticated(failure.to_string())
    }
}

/// A set of verification keys.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    unnamed: Vec<Arc<DecodingKey>>,
}

enum Lookup {
    Found(Arc<DecodingKey>),
    Unknown(AuthFailure),
}

impl KeySet {
    fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    fn find(&self, kid: Option<&str>) -> Lookup {
        match kid {
            Some(kid) => match self.by_kid.get(kid) {
                Some(key) => Lookup::Found(key.clone()),
                // A named key can still match a set's only, unnamed key.
                None if self.by_kid.is_empty() && self.unnamed.len() == 1 => {
                    Lookup::Found(self.unnamed[0].clone())
                }
                None => Lookup::Unknown(AuthFailure::UnknownKey(kid.to_owned())),
            },
            None if self.len() == 1 => match (self.by_kid.values().next(), self.unnamed.first()) {
                (Some(key), _) | (None, Some(key)) => Lookup::Found(key.clone()),
                (None, None) => Lookup::Unknown(AuthFailure::NoKeyId(0)),
            },
            None => Lookup::Unknown(AuthFailure::NoKeyId(self.len())),
        }
    }

    /// The keys of a JWKS document usable with `algorithm`: `kty` matching,
    /// `use` absent or `sig`, `alg` absent or the pinned one, P-256 for ES256.
    /// Other keys are skipped; a set with no usable key is an error.
    fn from_jwks(document: &str, algorithm: JwtAlgorithm) -> std::result::Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<Json>,
        }
        let doc: Doc = serde_json::from_str(document).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut set = KeySet::default();
        for raw in doc.keys {
            let field = |name: &str| raw.get(name).and_then(Json::as_str);
            let kid = field("kid").map(str::to_owned);
            if field("kty") != Some(algorithm.key_type())
                || field("use").is_some_and(|u| u != "sig")
                || field("alg").is_some_and(|a| a != algorithm.as_str())
                || (algorithm == JwtAlgorithm::Es256 && field("crv") != Some("P-256"))
            {
                tracing::debug!(?kid, "skipping a JWK not usable with {algorithm}");
                continue;
            }
            let key = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(raw)
                .map_err(|e| e.to_string())
                .and_then(|jwk| DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string()));
            match (key, kid) {
                (Ok(key), Some(kid)) => {
                    set.by_kid.insert(kid, Arc::new(key));
                }
                (Ok(key), None) => set.unnamed.push(Arc::new(key)),
                (Err(e), kid) => tracing::warn!(?kid, "skipping an unreadable JWK: {e}"),
            }
        }
        if set.len() == 0 {
            return Err(format!("the key set holds no {algorithm} signing key"));
        }
        Ok(set)
    }
}

/// A JWKS fetched from a URL.
struct RemoteKeys {
    url: Uri,
    options: JwksUrl,
    algorithm: JwtAlgorithm,
    client: HttpClient,
    keys: RwLock<Option<(Arc<KeySet>, Instant)>>,
    /// When the last fetch was attempted, and its error if it failed; held
    /// while fetching, so concurrent misses cause one fetch.
    fetch: Mutex<(Option<Instant>, Option<String>)>,
}

impl RemoteKeys {
    async fn find(&self, kid: Option<&str>) -> Result<Arc<DecodingKey>> {
        if let Some((set, at)) = self.keys.read().await.as_ref()
            && at.elapsed() < self.options.max_age
            && let Lookup::Found(key) = set.find(kid)
        {
            return Ok(key);
        }
        let mut fetch = self.fetch.lock().await;
        let may_fetch = fetch.0.is_none_or(|last| last.elapsed() >= self.options.min_refresh_interval);
        if may_fetch {
            fetch.0 = Some(Instant::now());
            match self.fetch_set().await {
                Ok(set) => {
                    fetch.1 = None;
                    tracing::debug!(url = %self.url, keys = set.len(), "fetched the JWKS");
                    *self.keys.write().await = Some((Arc::new(set), Instant::now()));
                }
                Err(e) => {
                    tracing::warn!(url = %self.url, "fetching the JWKS failed: {e}");
                    fetch.1 = Some(e);
                }
            }
        }
        let last_error = fetch.1.clone();
        drop(fetch);
        match self.keys.read().await.as_ref() {
            Some((set, _)) => match set.find(kid) {
                Lookup::Found(key) => Ok(key),
                Lookup::Unknown(failure) => Err(failure.into()),
            },
            None => Err(Error::unavailable(format!(
                "the JWKS at {} could not be fetched: {}",
                self.url,
                last_error.unwrap_or_else(|| "no fetch has succeeded yet".to_owned())
            ))),
        }
    }

    async fn fetch_set(&self) -> std::result::Result<KeySet, String> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(self.url.clone())
            .header(header::ACCEPT, "application/json, application/jwk-set+json")
            .body(Full::default())
            .map_err(|e| e.to_string())?;
        let response = self.client.send(request, self.options.timeout).await.map_err(|e| error_chain(&e))?;
        if response.status() != StatusCode::OK {
            return Err(format!("the server answered {}", response.status()));
        }
        let text = std::str::from_utf8(response.body()).map_err(|e| format!("not UTF-8: {e}"))?;
        KeySet::from_jwks(text, self.algorithm)
    }
}

enum Keys {
    Static(KeySet),
    Remote(Box<RemoteKeys>),
}

/// Verifies bearer JWTs and turns their claims into a [`Principal`]:
/// `sub` → `user_id`, the org claim (default `org`) → `org`, the roles
/// claim (default `roles`, an array of strings or a space-separated string)
/// → `roles`, and every other claim → `claims` (for `@user.<claim>` in
/// filters).
///
/// Every refusal is `Unauthenticated` saying why (expired, bad signature,
/// wrong audience, …); only an unreachable JWKS URL is `Unavailable`.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use sync_core::{Authenticator, ErrorKind, OrgId};
/// use transport_http::{DevToken, JwtAlgorithm, JwtAuthenticator, JwtConfig, JwtKeys};
///
/// let secret = b"a shared secret of at least 32 bytes!".to_vec();
/// let config = JwtConfig::new(JwtAlgorithm::Hs256).with_audience("offline-sync");
/// let auth = JwtAuthenticator::new(config, JwtKeys::Secret(secret.clone())).unwrap();
///
/// let org = OrgId::new("contoso").unwrap();
/// let token = DevToken::new("alice", &org).with_role("sales").with_audience("offline-sync");
/// let principal = auth.authenticate(&token.sign_hs256(&secret).unwrap()).await.unwrap();
/// assert_eq!(principal.user_id, "alice");
/// assert!(principal.has_role("sales"));
///
/// let error = auth.authenticate("not.a.token").await.unwrap_err();
/// assert_eq!(error.kind(), ErrorKind::Unauthenticated);
/// # });
/// ```
pub struct JwtAuthenticator {
    config: JwtConfig,
    validation: Validation,
    keys: Keys,
}

impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = match &self.keys {
            Keys::Static(set) => format!("{} static key(s)", set.len()),
            Keys::Remote(remote) => format!("JWKS at {}", remote.url),
        };
        f.debug_struct("JwtAuthenticator").field("config", &self.config).field("keys", &keys).finish()
    }
}

impl JwtAuthenticator {
    /// An authenticator with `config`, verifying with `keys`.
    ///
    /// Errors (`InvalidInput`): keys that do not fit the algorithm (a secret
    /// for RS256, a JWKS for HS256), a secret shorter than
    /// [`MIN_SECRET_LEN`], an unreadable key, file or key set, a key set
    /// with no usable key, a JWKS URL that is not `https` (or loopback
    /// `http`); empty claim names.
    pub fn new(config: JwtConfig, keys: JwtKeys) -> Result<Self> {
        if config.org_claim.is_empty() || config.roles_claim.is_empty() {
            return Err(Error::invalid("the org and roles claim names must not be empty"));
        }
        let alg = config.algorithm;
        let keys = match (alg, keys) {
            (JwtAlgorithm::Hs256, JwtKeys::Secret(secret)) => {
                if secret.len() < MIN_SECRET_LEN {
                    return Err(Error::invalid(format!(
                        "the HS256 secret has {} bytes; at least {MIN_SECRET_LEN} are required",
                        secret.len()
                    )));
                }
                Keys::Static(KeySet {
                    by_kid: HashMap::new(),
                    unnamed: vec![Arc::new(DecodingKey::from_secret(&secret))],
                })
            }
            (JwtAlgorithm::Hs256, _) => {
                return Err(Error::invalid("HS256 verifies with a shared secret (JwtKeys::Secret) only"));
            }
            (_, JwtKeys::Secret(_)) => {
                return Err(Error::invalid(format!("{alg} verifies with public keys, not a shared secret")));
            }
            (_, JwtKeys::PublicKeyPem(pem)) => {
                let key = match alg {
                    JwtAlgorithm::Es256 => DecodingKey::from_ec_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                }
                .map_err(|e| Error::invalid(format!("unreadable {alg} public key: {e}")))?;
                Keys::Static(KeySet { by_kid: HashMap::new(), unnamed: vec![Arc::new(key)] })
            }
            (_, JwtKeys::Jwks(document)) => {
                Keys::Static(KeySet::from_jwks(&document, alg).map_err(Error::invalid)?)
            }
            (_, JwtKeys::JwksFile(path)) => {
                let document = std::fs::read_to_string(&path).map_err(|e| {
                    Error::invalid(format!("cannot read the JWKS file {}: {e}", path.display()))
                })?;
                Keys::Static(
                    KeySet::from_jwks(&document, alg)
                        .map_err(|e| Error::invalid(format!("the JWKS file {}: {e}", path.display())))?,
                )
            }
            (_, JwtKeys::JwksUrl(options)) => {
                let url = parse_url(&options.url)?;
                if url.scheme_str() != Some("https") && !is_loopback(&url) {
                    return Err(Error::invalid(format!(
                        "the JWKS URL {url} must use https (plain http is accepted for loopback hosts only)"
                    )));
                }
                let client = HttpClient::new(&ClientOptions {
                    roots: options.tls_roots.clone(),
                    connect_timeout: options.timeout,
                    max_response_bytes: 1024 * 1024,
                    pool_idle_timeout: Duration::from_secs(60),
                })?;
                Keys::Remote(Box::new(RemoteKeys {
                    url,
                    options,
                    algorithm: alg,
                    client,
                    keys: RwLock::new(None),
                    fetch: Mutex::new((None, None)),
                }))
            }
        };
        let validation = config.validation();
        Ok(JwtAuthenticator { config, validation, keys })
    }

    /// An HS256 authenticator with the default [`JwtConfig`].
    pub fn hs256(secret: impl Into<Vec<u8>>) -> Result<Self> {
        Self::new(JwtConfig::new(JwtAlgorithm::Hs256), JwtKeys::Secret(secret.into()))
    }

    /// The configuration.
    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    async fn verify(&self, credential: &str) -> Result<Principal> {
        let token = credential.trim();
        if token.is_empty() {
            return Err(AuthFailure::Missing.into());
        }
        let (alg, kid) = read_header(token)?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(AuthFailure::AlgNone.into());
        }
        if alg != self.config.algorithm.as_str() {
            return Err(AuthFailure::WrongAlgorithm { found: alg, expected: self.config.algorithm }.into());
        }
        let key = match &self.keys {
            Keys::Static(set) => match set.find(kid.as_deref()) {
                Lookup::Found(key) => key,
                Lookup::Unknown(failure) => return Err(failure.into()),
            },
            Keys::Remote(remote) => remote.find(kid.as_deref()).await?,
        };
        let data = jsonwebtoken::decode::<Map<String, Json>>(token, &key, &self.validation)
            .map_err(|e| self.describe(token, e))?;
        self.principal(data.claims)
    }

    /// Words for a jsonwebtoken failure.
    fn describe(&self, token: &str, e: jsonwebtoken::errors::Error) -> Error {
        use jsonwebtoken::errors::ErrorKind as K;
        // Claims are read only to name a wrong iss/aud, after the signature
        // has been verified (jsonwebtoken validates claims last).
        let present = |name: &str| {
            jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Json>>(token)
                .ok()
                .and_then(|c| c.get(name).cloned())
                .map(|v| v.to_string())
        };
        let claim = |name: &str| present(name).unwrap_or_else(|| "(unreadable)".to_owned());
        let failure = match e.kind() {
            K::InvalidSignature => AuthFailure::BadSignature,
            K::ExpiredSignature => AuthFailure::Expired,
            K::ImmatureSignature => AuthFailure::NotYetValid,
            K::InvalidIssuer => AuthFailure::WrongIssuer(claim("iss")),
            K::InvalidAudience => AuthFailure::WrongAudience(claim("aud")),
            // jsonwebtoken reports a required claim of the wrong type as missing.
            K::MissingRequiredClaim(name) if present(name).is_some() => {
                AuthFailure::BadClaim { claim: name.clone(), problem: "is malformed".to_owned() }
            }
            K::MissingRequiredClaim(name) => AuthFailure::MissingClaim(name.clone()),
            K::InvalidClaimFormat(name) => {
                AuthFailure::BadClaim { claim: name.clone(), problem: "is malformed".to_owned() }
            }
            K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
                AuthFailure::WrongAlgorithm {
                    found: "another algorithm".to_owned(),
                    expected: self.config.algorithm,
                }
            }
            K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat | K::InvalidEddsaKey => {
                AuthFailure::BadSignature
            }
            _ => AuthFailure::Malformed(e.to_string()),
        };
        failure.into()
    }

    /// Claims to a principal.
    fn principal(&self, mut claims: Map<String, Json>) -> Result<Principal> {
        let sub = match claims.remove("sub") {
            Some(Json::String(s)) if !s.is_empty() => s,
            Some(_) => {
                return Err(AuthFailure::BadClaim {
                    claim: "sub".into(),
                    problem: "must be a non-empty string".into(),
                }
                .into());
            }
            None => return Err(AuthFailure::MissingClaim("sub".into()).into()),
        };
        let org_claim = &self.config.org_claim;
        let org = match claims.remove(org_claim) {
            Some(Json::String(s)) => OrgId::new(s.as_str()).map_err(|e| AuthFailure::BadClaim {
                claim: org_claim.clone(),
                problem: format!("is not a valid org id ({e})"),
            })?,
            Some(_) => {
                return Err(AuthFailure::BadClaim {
                    claim: org_claim.clone(),
                    problem: "must be a string".into(),
                }
                .into());
            }
            None => return Err(AuthFailure::MissingClaim(org_claim.clone()).into()),
        };
        let roles_claim = &self.config.roles_claim;
        let bad_roles = || AuthFailure::BadClaim {
            claim: roles_claim.clone(),
            problem: "must be an array of strings or a space-separated string".into(),
        };
        let roles = match claims.remove(roles_claim) {
            None | Some(Json::Null) => Default::default(),
            Some(Json::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Json::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Json::String(s) => Ok(s),
                    _ => Err(bad_roles()),
                })
                .collect::<std::result::Result<_, _>>()?,
            Some(_) => return Err(bad_roles().into()),
        };
        Ok(Principal { user_id: sub, org, roles, claims: claims.into_iter().collect::<BTreeMap<_, _>>() })
    }
}

/// The `alg` and `kid` of a compact JWS, read without trusting anything.
fn read_header(token: &str) -> Result<(String, Option<String>)> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthFailure::Malformed("a JWT has three dot-separated parts".into()).into());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| AuthFailure::Malformed("the header is not base64url".into()))?;
    let header: Map<String, Json> = serde_json::from_slice(&bytes)
        .map_err(|_| AuthFailure::Malformed("the header is not a JSON object".into()))?;
    let alg = match header.get("alg") {
        Some(Json::String(alg)) => alg.clone(),
        _ => return Err(AuthFailure::Malformed("the header names no algorithm (alg)".into()).into()),
    };
    let kid = match header.get("kid") {
        None | Some(Json::Null) => None,
        Some(Json::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthFailure::Malformed("the header's kid is not a string".into()).into()),
    };
    Ok((alg, kid))
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, credential: &str) -> Result<Principal> {
        self.verify(credential).await
    }
}

/// A token for development, tests and demos, signed with HS256.
///
/// Holds `sub`, `org`, `roles`, `iat`, `exp` (one hour from now unless set)
/// and, when set, `nbf`, `iss`, `aud` and further claims.
///
/// ```
/// use std::time::Duration;
/// use sync_core::OrgId;
/// use transport_http::DevToken;
///
/// let org = OrgId::new("contoso").unwrap();
/// let token = DevToken::new("alice", &org)
///     .with_role("sync-admin")
///     .with_claim("team", serde_json::json!("north"))
///     .with_ttl(Duration::from_secs(600))
///     .sign_hs256(b"a shared secret of at least 32 bytes!")
///     .unwrap();
/// assert_eq!(token.split('.').count(), 3);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct DevToken {
    claims: Map<String, Json>,
    expires_at: Option<SystemTime>,
    ttl: Duration,
    kid: Option<String>,
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

impl DevToken {
    /// A token for user `sub` of `org`, valid for an hour.
    pub fn new(sub: impl Into<String>, org: &OrgId) -> Self {
        let mut claims = Map::new();
        claims.insert("sub".into(), Json::String(sub.into()));
        claims.insert("org".into(), Json::String(org.as_str().to_owned()));
        DevToken { claims, expires_at: None, ttl: Duration::from_secs(3600), kid: None }
    }

    /// Adds a role.
    pub fn with_role(mut self, role: impl Into<String>) -> Self {
        let roles = self.claims.entry("roles").or_insert_with(|| Json::Array(Vec::new()));
        if let Json::Array(items) = roles {
            items.push(Json::String(role.into()));
        }
        self
    }

    /// Sets a claim (replacing any claim of that name, `sub` and `org`
    /// included).
    pub fn with_claim(mut self, name: impl Into<String>, value: Json) -> Self {
        self.claims.insert(name.into(), value);
        self
    }

    /// Removes a claim (e.g. `sub`, to test its absence).
    pub fn without_claim(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    /// Sets `iss`.
    pub fn with_issuer(self, issuer: impl Into<String>) -> Self {
        self.with_claim("iss", Json::String(issuer.into()))
    }

    /// Sets `aud`.
    pub fn with_audience(self, audience: impl Into<String>) -> Self {
        self.with_claim("aud", Json::String(audience.into()))
    }

    /// Makes the token expire `ttl` after it is signed.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self.expires_at = None;
        self
    }

    /// Makes the token expire at `at` (in the past, for tests).
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Sets `nbf`: the token is not valid before `at`.
    pub fn not_before(self, at: SystemTime) -> Self {
        self.with_claim("nbf", Json::from(unix(at)))
    }

    /// Sets the header's key id.
    pub fn with_key_id(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The key id set with [`with_key_id`](Self::with_key_id).
    pub fn key_id(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The claim set as of now (`iat` now, `exp` from the TTL unless set), for
    /// signing with another algorithm or key.
    pub fn claims(&self) -> Json {
        let now = SystemTime::now();
        let mut claims = self.claims.clone();
        claims.entry("iat").or_insert_with(|| Json::from(unix(now)));
        let exp = self.expires_at.unwrap_or(now + self.ttl);
        claims.entry("exp").or_insert_with(|| Json::from(unix(exp)));
        Json::Object(claims)
    }

    /// Signs the token with HS256.
    pub fn sign_hs256(&self, secret: &[u8]) -> Result<String> {
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, &self.claims(), &EncodingKey::from_secret(secret))
            .map_err(|e| Error::internal(format!("signing a dev token: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_without_trust() {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let t = format!("{}.e30.", enc(r#"{"alg":"none"}"#));
        assert_eq!(read_header(&t).unwrap(), ("none".to_owned(), None));
        let t = format!("{}.e30.sig", enc(r#"{"alg":"RS256","kid":"k1"}"#));
        assert_eq!(read_header(&t).unwrap(), ("RS256".to_owned(), Some("k1".to_owned())));
        assert!(read_header("a.b").is_err());
        assert!(read_header("a.b.c.d").is_err());
        assert!(read_header(&format!("{}.e30.x", enc("[]"))).is_err());
        assert!(read_header(&format!("{}.e30.x", enc(r#"{"kid":"k"}"#))).is_err());
        assert!(read_header(&format!("{}.e30.x", enc(r#"{"alg":"HS256","kid":7}"#))).is_err());
    }

    #[test]
    fn algorithms_parse() {
        assert_eq!("rs256".parse::<JwtAlgorithm>().unwrap(), JwtAlgorithm::Rs256);
        assert!("none".parse::<JwtAlgorithm>().is_err());
        assert_eq!(JwtAlgorithm::Es256.to_string(), "ES256");
    }

    #[test]
    fn keys_must_fit_the_algorithm() {
        let hs = JwtConfig::new(JwtAlgorithm::Hs256);
        let rs = JwtConfig::new(JwtAlgorithm::Rs256);
        assert!(JwtAuthenticator::new(hs.clone(), JwtKeys::Secret(vec![7; 31])).is_err());
        assert!(JwtAuthenticator::new(hs.clone(), JwtKeys::Secret(vec![7; 32])).is_ok());
        assert!(JwtAuthenticator::new(hs.clone(), JwtKeys::Jwks(r#"{"keys":[]}"#.into())).is_err());
        assert!(JwtAuthenticator::new(rs.clone(), JwtKeys::Secret(vec![7; 64])).is_err());
        assert!(JwtAuthenticator::new(rs.clone(), JwtKeys::Jwks(r#"{"keys":[]}"#.into())).is_err());
        assert!(JwtAuthenticator::new(rs.clone(), JwtKeys::Jwks("nope".into())).is_err());
        assert!(JwtAuthenticator::new(rs.clone(), JwtKeys::PublicKeyPem(b"nope".to_vec())).is_err());
        let remote = |url: &str| JwtAuthenticator::new(rs.clone(), JwtKeys::JwksUrl(JwksUrl::new(url)));
        assert!(remote("http://idp.example.com/jwks").is_err(), "plain http off loopback");
        assert!(remote("https://idp.example.com/jwks").is_ok());
        assert!(remote("http://127.0.0.1:9/jwks").is_ok());
        assert!(JwtAuthenticator::new(hs.with_org_claim(""), JwtKeys::Secret(vec![7; 32])).is_err());
    }

    #[test]
    fn oct_keys_are_never_used_for_rs256() {
        let doc = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#;
        assert!(KeySet::from_jwks(doc, JwtAlgorithm::Rs256).is_err());
    }
}
