//! The HTTP(S) client under [`HttpSyncTransport`](crate::HttpSyncTransport)
//! and the JWKS fetcher: hyper-util's pooled client over rustls (aws-lc-rs,
//! named explicitly so no process-wide default provider is needed), HTTP/1.1
//! and HTTP/2 by ALPN, gzip/br/zstd response decompression, bounded response
//! sizes and whole-request timeouts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tower::Service;
use tower_http::decompression::Decompression;

/// Which certificate authorities an HTTPS client trusts.
///
/// By default the Mozilla root program (the `webpki-roots` set, the same on
/// every platform); add PEM certificates for a private CA, or trust only them.
///
/// ```
/// use transport_http::TlsRoots;
///
/// let pem = b"-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n";
/// let roots = TlsRoots::default().with_pem(pem.to_vec());
/// let private_only = TlsRoots::none().with_pem(pem.to_vec());
/// # let _ = (roots, private_only);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsRoots {
    webpki: bool,
    pem: Vec<Vec<u8>>,
}

impl Default for TlsRoots {
    fn default() -> Self {
        TlsRoots { webpki: true, pem: Vec::new() }
    }
}

impl TlsRoots {
    /// No trusted roots yet: add some with [`with_pem`](Self::with_pem).
    pub fn none() -> Self {
        TlsRoots { webpki: false, pem: Vec::new() }
    }

    /// Also trusts the certificates in `pem` (one or more `CERTIFICATE` blocks).
    pub fn with_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.pem.push(pem.into());
        self
    }

    fn root_store(&self) -> Result<RootCertStore, HttpError> {
        let mut store = RootCertStore::empty();
        if self.webpki {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for pem in &self.pem {
            let mut found = 0usize;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| HttpError::TlsConfig(format!("unreadable PEM certificate: {e}")))?;
                store
                    .add(cert)
                    .map_err(|e| HttpError::TlsConfig(format!("unusable root certificate: {e}")))?;
                found += 1;
            }
            if found == 0 {
                return Err(HttpError::TlsConfig("a root certificate PEM holds no CERTIFICATE block".into()));
            }
        }
        if store.is_empty() {
            return Err(HttpError::TlsConfig("no trusted root certificates are configured".into()));
        }
        Ok(store)
    }
}

/// What went wrong talking HTTP; mapped into [`sync_core::Error`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid TLS configuration: {0}")]
    TlsConfig(String),
    #[error("could not connect to {uri}: {detail}")]
    Connect { uri: Uri, detail: String },
    #[error("the TLS handshake with {uri} failed: {detail}")]
    Tls { uri: Uri, detail: String },
    #[error("the request to {uri} failed: {detail}")]
    Request { uri: Uri, detail: String },
    #[error("no complete response from {uri} within {timeout:?}")]
    Timeout { uri: Uri, timeout: Duration },
    #[error("reading the response from {uri} failed: {detail}")]
    Body { uri: Uri, detail: String },
    #[error("the response from {uri} is larger than {limit} bytes")]
    TooLarge { uri: Uri, limit: usize },
    #[error("redirect refused: {0}")]
    Redirect(String),
}

impl HttpError {
    /// Whether trying again soon may help (a lost connection, a timeout).
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(
            self,
            HttpError::Connect { .. }
                | HttpError::Request { .. }
                | HttpError::Timeout { .. }
                | HttpError::Body { .. }
        )
    }
}

impl From<HttpError> for sync_core::Error {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::InvalidUrl { .. } | HttpError::TlsConfig(_) => {
                sync_core::Error::invalid(e.to_string())
            }
            HttpError::TooLarge { limit, .. } => {
                let limit = u64::try_from(limit).unwrap_or(u64::MAX);
                sync_core::Error::limit("max_response_bytes", limit, limit.saturating_add(1))
            }
            HttpError::Redirect(_) => sync_core::Error::internal(e.to_string()),
            HttpError::Connect { .. }
            | HttpError::Tls { .. }
            | HttpError::Request { .. }
            | HttpError::Timeout { .. }
            | HttpError::Body { .. } => sync_core::Error::unavailable(e.to_string()),
        }
    }
}

/// Parses an absolute `http` or `https` URL.
pub(crate) fn parse_url(url: &str) -> Result<Uri, HttpError> {
    let invalid = |reason: &str| HttpError::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
    let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("the scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host"));
    }
    Ok(uri)
}

/// Whether `uri`'s host is a loopback name or address.
#[cfg(feature = "server")]
pub(crate) fn is_loopback(uri: &Uri) -> bool {
    match uri.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Options of an [`HttpClient`].
#[derive(Clone, Debug)]
pub(crate) struct ClientOptions {
    pub(crate) roots: TlsRoots,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_response_bytes: usize,
    pub(crate) pool_idle_timeout: Duration,
}

type Inner = Decompression<Client<HttpsConnector<HttpConnector>, Full<Bytes>>>;

/// A pooled HTTP/1.1 + HTTP/2 client over rustls.
#[derive(Clone)]
pub(crate) struct HttpClient {
    inner: Inner,
    max_response_bytes: usize,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").field("max_response_bytes", &self.max_response_bytes).finish()
    }
}

impl HttpClient {
    pub(crate) fn new(options: &ClientOptions) -> Result<Self, HttpError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::TlsConfig(e.to_string()))?
            .with_root_certificates(options.roots.root_store()?)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(options.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(options.pool_idle_timeout)
            .build(https);
        Ok(HttpClient { inner: Decompression::new(client), max_response_bytes: options.max_response_bytes })
    }

    /// Sends `request` and reads the whole (decompressed) response body,
    /// all within `timeout`.
    pub(crate) async fn send(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response<Bytes>, HttpError> {
        let uri = request.uri().clone();
        match tokio::time::timeout(timeout, self.send_inner(request)).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout { uri, timeout }),
        }
    }

    async fn send_inner(&self, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, HttpError> {
        let uri = request.uri().clone();
        let mut service = self.inner.clone();
        std::future::poll_fn(|cx| service.poll_ready(cx)).await.map_err(|e| classify_send_error(&uri, &e))?;
        let response = service.call(request).await.map_err(|e| classify_send_error(&uri, &e))?;
        let (parts, body) = response.into_parts();
        let limit = self.max_response_bytes;
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(HttpError::TooLarge { uri, limit });
            }
            Err(e) => return Err(HttpError::Body { uri, detail: error_chain(&*e) }),
        };
        Ok(Response::from_parts(parts, bytes))
    }
}

/// The error and its sources, joined by ": ".
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn classify_send_error(uri: &Uri, e: &hyper_util::client::legacy::Error) -> HttpError {
    let detail = error_chain(e);
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return HttpError::Tls { uri: uri.clone(), detail };
        }
        // An io::Error wrapping another error reports that error's source,
        // not the error itself; step into it instead.
        source = match s.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        };
    }
    if e.is_connect() {
        HttpError::Connect { uri: uri.clone(), detail }
    } else {
        HttpError::Request { uri: uri.clone(), detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(parse_url("https://sync.example.com").is_ok());
        assert!(parse_url("http://127.0.0.1:8080/base").is_ok());
        assert!(parse_url("ftp://example.com").is_err());
        assert!(parse_url("/relative").is_err());
        assert!(parse_url("not a url").is_err());
    }

    #[cfg(feature = "server")]
    #[test]
    fn loopback() {
        assert!(is_loopback(&parse_url("http://127.0.0.1:1").unwrap()));
        assert!(is_loopback(&parse_url("http://[::1]:1").unwrap()));
        assert!(is_loopback(&parse_url("http://localhost/").unwrap()));
        assert!(!is_loopback(&parse_url("http://example.com/").unwrap()));
    }

    #[test]
    fn roots() {
        assert!(TlsRoots::default().root_store().is_ok_and(|s| !s.is_empty()));
        assert!(TlsRoots::none().root_store().is_err());
        assert!(TlsRoots::none().with_pem(b"garbage".to_vec()).root_store().is_err());
        let e = sync_core::Error::from(HttpError::TooLarge { uri: Uri::from_static("http://x/"), limit: 10 });
        assert_eq!(e, sync_core::Error::limit("max_response_bytes", 10, 11));
    }
}
