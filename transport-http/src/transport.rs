//! [`HttpSyncTransport`]: the sync protocol over HTTP(S), for clients.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::Full;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sync_core::protocol::{ProfileResponse, PullRequest, PullResponse, PushRequest, PushResponse};
use sync_core::{Error, OrgId, Result, SyncTransport};

use crate::client::{ClientOptions, HttpClient, HttpError, TlsRoots, parse_url};
use crate::problem::{error_from_response, retry_after_of};

/// Supplies the bearer token of each request.
///
/// Called once per attempt, so a provider that caches a token can refresh it
/// when it nears expiry. A `String` is a fixed token; [`token_fn`] adapts an
/// async closure.
#[async_trait]
pub trait TokenProvider: Send + Sync {
    /// The token to send (without the `Bearer ` prefix). An error ends the
    /// request with that error.
    async fn token(&self) -> Result<String>;
}

#[async_trait]
impl TokenProvider for String {
    async fn token(&self) -> Result<String> {
        Ok(self.clone())
    }
}

/// A [`TokenProvider`] calling an async closure; see [`token_fn`].
pub struct TokenFn<F>(F);

impl<F> std::fmt::Debug for TokenFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenFn")
    }
}

/// A [`TokenProvider`] from an async closure returning the token.
///
/// ```
/// use transport_http::token_fn;
///
/// let provider = token_fn(|| async { Ok::<_, sync_core::Error>("a token".to_owned()) });
/// # let _ = provider;
/// ```
pub fn token_fn<F, Fut>(f: F) -> TokenFn<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<String>> + Send,
{
    TokenFn(f)
}

#[async_trait]
impl<F, Fut> TokenProvider for TokenFn<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<String>> + Send,
{
    async fn token(&self) -> Result<String> {
        (self.0)().await
    }
}

/// When and how long [`HttpSyncTransport`] waits before trying again.
///
/// Retried: `Unavailable` problems, 408, 429, 502, 503 and 504 responses, lost
/// connections and timeouts. Waits grow exponentially from
/// `initial_backoff` up to `max_backoff`, each with random jitter (between
/// half and all of the step), unless the server sent `Retry-After`, which is
/// honoured exactly — up to `max_retry_after`: a longer one ends the request
/// with an `Unavailable` error carrying that delay, for the caller to schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// How many attempts in all (at least 1; 1 means no retries).
    pub max_attempts: u32,
    /// The wait before the first retry (before jitter).
    pub initial_backoff: Duration,
    /// The longest wait between attempts (before jitter).
    pub max_backoff: Duration,
    /// The longest `Retry-After` honoured by waiting.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// No retries: every failure is returned at once.
    pub fn none() -> Self {
        RetryPolicy { max_attempts: 1, ..RetryPolicy::default() }
    }

    /// Sets [`max_attempts`](Self::max_attempts).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets [`initial_backoff`](Self::initial_backoff) and
    /// [`max_backoff`](Self::max_backoff).
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Sets [`max_retry_after`](Self::max_retry_after).
    pub fn with_max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// The wait after failed attempt number `attempt` (1-based), jittered:
    /// between half and all of `min(initial · 2^(attempt-1), max)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let step = self.initial_backoff.saturating_mul(1u32 << exp).min(self.max_backoff);
        let half = step / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if nanos == 0 { 0 } else { random_u64() % (nanos + 1) };
        half + Duration::from_nanos(jitter)
    }
}

/// A random number from the standard library's per-instance hash keys.
fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x5eed);
    hasher.finish()
}

/// How [`HttpSyncTransport`] reaches its server.
///
/// ```
/// use std::time::Duration;
/// use sync_core::OrgId;
/// use transport_http::{HttpTransportConfig, RetryPolicy};
///
/// let config = HttpTransportConfig::new("https://sync.example.com", OrgId::new("contoso").unwrap())
///     .with_request_timeout(Duration::from_secs(20))
///     .with_retry(RetryPolicy::default().with_max_attempts(6));
/// # let _ = config;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HttpTransportConfig {
    /// The server's base URL (`http` or `https`, optionally with a path);
    /// requests go to `{base_url}/v1/orgs/{org}/sync/…`.
    pub base_url: String,
    /// The org to sync.
    pub org: OrgId,
    /// How long one attempt may take, response body included. A live pull
    /// gets its `wait_ms` on top.
    pub request_timeout: Duration,
    /// How long establishing a connection may take.
    pub connect_timeout: Duration,
    /// Retries and backoff.
    pub retry: RetryPolicy,
    /// Trusted certificate authorities for `https`.
    pub tls_roots: TlsRoots,
    /// The largest (decompressed) response body accepted.
    pub max_response_bytes: usize,
    /// The most `307`/`308` redirects followed per request (to the deployment
    /// that hosts the org).
    pub max_redirects: u32,
    /// The `User-Agent` sent.
    pub user_agent: String,
}

impl HttpTransportConfig {
    /// Defaults for `base_url` and `org`: 30 s requests, 10 s connects, the
    /// default [`RetryPolicy`], the Mozilla roots, 64 MiB responses,
    /// 5 redirects.
    pub fn new(base_url: impl Into<String>, org: OrgId) -> Self {
        HttpTransportConfig {
            base_url: base_url.into(),
            org,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            tls_roots: TlsRoots::default(),
            max_response_bytes: 64 * 1024 * 1024,
            max_redirects: 5,
            user_agent: concat!("offline-sync/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`retry`](Self::retry).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets [`tls_roots`](Self::tls_roots).
    pub fn with_tls_roots(mut self, roots: TlsRoots) -> Self {
        self.tls_roots = roots;
        self
    }

    /// Sets [`max_response_bytes`](Self::max_response_bytes).
    pub fn with_max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// Sets [`max_redirects`](Self::max_redirects).
    pub fn with_max_redirects(mut self, redirects: u32) -> Self {
        self.max_redirects = redirects;
        self
    }

    /// Sets [`user_agent`](Self::user_agent).
    pub fn with_user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }
}

/// The client side of the sync protocol over HTTP(S) (rustls):
/// `GET {base}/v1/orgs/{org}/sync/profile`, `POST …/sync/pull` and
/// `POST …/sync/push` with a bearer token.
///
/// Problem responses come back as the [`Error`] of their kind (`410` →
/// `ResyncRequired`, `401` → `Unauthenticated`, …); transient failures are
/// retried per the [`RetryPolicy`]. Pull and push are safe to retry: a pull
/// repeats from the same cursor, and a push's mutation ids make it
/// idempotent.
#[derive(Clone)]
pub struct HttpSyncTransport {
    client: HttpClient,
    sync_base: String,
    token: Arc<dyn TokenProvider>,
    config: HttpTransportConfig,
    user_agent: HeaderValue,
}

impl std::fmt::Debug for HttpSyncTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSyncTransport").field("sync_base", &self.sync_base).finish_non_exhaustive()
    }
}

impl HttpSyncTransport {
    /// A transport sending the tokens `token` supplies.
    ///
    /// Errors: `InvalidInput` for a base URL that is not an absolute `http` /
    /// `https` URL, unusable root certificates, or `max_attempts` of zero.
    pub fn new(config: HttpTransportConfig, token: impl TokenProvider + 'static) -> Result<Self> {
        Self::with_provider(config, Arc::new(token))
    }

    /// A transport sending a fixed bearer token.
    pub fn with_token(config: HttpTransportConfig, token: impl Into<String>) -> Result<Self> {
        Self::new(config, token.into())
    }

    /// A transport sharing a token provider with other parts of the app.
    pub fn with_provider(config: HttpTransportConfig, token: Arc<dyn TokenProvider>) -> Result<Self> {
        let base = parse_url(config.base_url.trim_end_matches('/'))?;
        if config.retry.max_attempts == 0 {
            return Err(Error::invalid("retry.max_attempts must be at least 1"));
        }
        let user_agent = HeaderValue::from_str(&config.user_agent)
            .map_err(|_| Error::invalid("user_agent must be visible ASCII"))?;
        let client = HttpClient::new(&ClientOptions {
            roots: config.tls_roots.clone(),
            connect_timeout: config.connect_timeout,
            max_response_bytes: config.max_response_bytes,
            pool_idle_timeout: Duration::from_secs(90),
        })?;
        let base_text = base.to_string();
        let sync_base = format!("{}/v1/orgs/{}/sync", base_text.trim_end_matches('/'), config.org.as_str());
        Ok(HttpSyncTransport { client, sync_base, token, config, user_agent })
    }

    /// The URL of an endpoint (`profile`, `pull`, `push`).
    pub fn endpoint(&self, name: &str) -> String {
        format!("{}/{name}", self.sync_base)
    }

    async fn call<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        method: Method,
        name: &str,
        body: Option<&B>,
        extra_wait: Duration,
    ) -> Result<T> {
        let body = match body {
            Some(body) => Some(Bytes::from(
                serde_json::to_vec(body)
                    .map_err(|e| Error::internal(format!("encoding the request: {e}")))?,
            )),
            None => None,
        };
        let timeout = self.config.request_timeout.saturating_add(extra_wait);
        let policy = &self.config.retry;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = self.attempt(&method, name, body.as_ref(), timeout).await;
            let (error, retryable, retry_after) = match outcome {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(Failure { error, retryable, retry_after })) => (error, retryable, retry_after),
                Err(http) => (Error::from(http.0), http.1, None),
            };
            if !retryable || attempt >= policy.max_attempts {
                return Err(error);
            }
            let wait = match retry_after {
                Some(delay) if delay > policy.max_retry_after => return Err(error),
                Some(delay) => delay,
                None => policy.backoff(attempt),
            };
            tracing::debug!(attempt, ?wait, "{} {name} failed, retrying: {error}", method);
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt, following redirects. `Err` carries a transport-level
    /// failure and whether it is retryable.
    async fn attempt<T: DeserializeOwned>(
        &self,
        method: &Method,
        name: &str,
        body: Option<&Bytes>,
        timeout: Duration,
    ) -> std::result::Result<std::result::Result<T, Failure>, (HttpError, bool)> {
        let token = match self.token.token().await {
            Ok(token) => token,
            Err(error) => return Ok(Err(Failure { error, retryable: false, retry_after: None })),
        };
        let authorization = match HeaderValue::from_str(&format!("Bearer {token}")) {
            Ok(mut value) => {
                value.set_sensitive(true);
                value
            }
            Err(_) => {
                let error = Error::invalid("the bearer token holds characters a header cannot carry");
                return Ok(Err(Failure { error, retryable: false, retry_after: None }));
            }
        };
        let mut url: Uri = parse_url(&self.endpoint(name)).map_err(|e| (e, false))?;
        let mut redirects = 0u32;
        loop {
            let mut builder = Request::builder()
                .method(method.clone())
                .uri(url.clone())
                .header(
                    header::ACCEPT,
                    HeaderValue::from_static("application/json, application/problem+json"),
                )
                .header(header::USER_AGENT, self.user_agent.clone())
                .header(header::AUTHORIZATION, authorization.clone());
            if body.is_some() {
                builder = builder.header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            let request = builder
                .body(Full::new(body.cloned().unwrap_or_default()))
                .map_err(|e| (HttpError::Request { uri: url.clone(), detail: e.to_string() }, false))?;
            let response = match self.client.send(request, timeout).await {
                Ok(response) => response,
                Err(e) => {
                    let retryable = e.is_retryable();
                    return Err((e, retryable));
                }
            };
            let status = response.status();
            if matches!(status, StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT) {
                redirects += 1;
                url = redirect_target(&url, response.headers(), redirects, self.config.max_redirects)
                    .map_err(|e| (e, false))?;
                continue;
            }
            if status.is_success() {
                return Ok(serde_json::from_slice(response.body()).map_err(|e| Failure {
                    error: Error::internal(format!("the server's {name} response could not be decoded: {e}")),
                    retryable: false,
                    retry_after: None,
                }));
            }
            let retry_after = retry_after_of(response.headers());
            let error = error_from_response(status, response.headers(), response.body());
            let retryable = error.is_retryable() || matches!(status.as_u16(), 408 | 429 | 502 | 503 | 504);
            return Ok(Err(Failure { error, retryable, retry_after }));
        }
    }
}

/// A failed attempt with a response (or a token failure).
struct Failure {
    error: Error,
    retryable: bool,
    retry_after: Option<Duration>,
}

/// The URL a `307`/`308` points to; refuses loops past `max` and downgrades
/// from `https` to `http`.
fn redirect_target(
    from: &Uri,
    headers: &http::HeaderMap,
    count: u32,
    max: u32,
) -> std::result::Result<Uri, HttpError> {
    if count > max {
        return Err(HttpError::Redirect(format!("more than {max} redirects, the last from {from}")));
    }
    let location = headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| HttpError::Redirect(format!("a redirect from {from} has no usable Location")))?;
    let target = if location.starts_with('/') {
        let mut parts = from.clone().into_parts();
        parts.path_and_query = Some(
            location.parse().map_err(|e| HttpError::Redirect(format!("bad Location {location:?}: {e}")))?,
        );
        Uri::from_parts(parts).map_err(|e| HttpError::Redirect(format!("bad Location {location:?}: {e}")))?
    } else {
        parse_url(location).map_err(|e| HttpError::Redirect(e.to_string()))?
    };
    if from.scheme_str() == Some("https") && target.scheme_str() != Some("https") {
        return Err(HttpError::Redirect(format!("{from} redirected to {target}, which is not https")));
    }
    Ok(target)
}

#[async_trait]
impl SyncTransport for HttpSyncTransport {
    async fn profile(&self) -> Result<ProfileResponse> {
        self.call::<(), _>(Method::GET, "profile", None, Duration::ZERO).await
    }

    async fn pull(&self, request: &PullRequest) -> Result<PullResponse> {
        let wait = Duration::from_millis(request.wait_ms.unwrap_or(0));
        self.call(Method::POST, "pull", Some(request), wait).await
    }

    async fn push(&self, request: &PushRequest) -> Result<PushResponse> {
        self.call(Method::POST, "push", Some(request), Duration::ZERO).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let p = RetryPolicy::default().with_backoff(Duration::from_millis(100), Duration::from_millis(1000));
        for _ in 0..50 {
            let b1 = p.backoff(1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100), "{b1:?}");
            let b3 = p.backoff(3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400), "{b3:?}");
            let b20 = p.backoff(20);
            assert!(b20 >= Duration::from_millis(500) && b20 <= Duration::from_millis(1000), "{b20:?}");
            assert!(p.backoff(u32::MAX) <= Duration::from_millis(1000));
        }
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| p.backoff(4)).collect();
        assert!(distinct.len() > 1, "jitter varies the waits");
    }

    #[test]
    fn redirects() {
        let from = Uri::from_static("https://a.example.com/v1/orgs/x/sync/pull");
        let mut h = http::HeaderMap::new();
        h.insert(header::LOCATION, HeaderValue::from_static("https://b.example.com/v1/orgs/x/sync/pull"));
        assert_eq!(redirect_target(&from, &h, 1, 5).unwrap().host(), Some("b.example.com"));
        assert!(redirect_target(&from, &h, 6, 5).is_err());
        h.insert(header::LOCATION, HeaderValue::from_static("/elsewhere"));
        assert_eq!(redirect_target(&from, &h, 1, 5).unwrap().to_string(), "https://a.example.com/elsewhere");
        h.insert(header::LOCATION, HeaderValue::from_static("http://b.example.com/"));
        assert!(redirect_target(&from, &h, 1, 5).is_err(), "no downgrade to http");
        assert!(redirect_target(&from, &http::HeaderMap::new(), 1, 5).is_err());
    }
}
