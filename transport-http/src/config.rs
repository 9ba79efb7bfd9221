//! Configuration of the HTTP server side.

use std::time::Duration;

use sync_core::{Error, OrgId, Result};

use crate::api_error::BodyLimit;

/// How the HTTP endpoints behave: limits, timeouts and org routing.
///
/// ```
/// use std::time::Duration;
/// use transport_http::HttpConfig;
///
/// let config = HttpConfig::default()
///     .with_body_limit(1 << 20)
///     .with_max_wait(Duration::from_secs(20))
///     .with_base_domain("sync.example.com");
/// config.validate().unwrap();
/// // Live pulls are capped by `max_wait`.
/// assert_eq!(config.wait_for(Some(60_000)), Some(Duration::from_secs(20)));
/// // `{org}.<base domain>` names the org.
/// let org = config.org_from_host("contoso.sync.example.com:8443").unwrap();
/// assert_eq!(org.unwrap().as_str(), "contoso");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpConfig {
    /// The most bytes a request body may have (`body_limit`); larger bodies
    /// get 413 `LimitExceeded`.
    pub body_limit: usize,
    /// How long a request may take (live pulls get `max_wait` on top); slower
    /// requests get 503 `Unavailable`.
    pub request_timeout: Duration,
    /// The longest a live pull (`wait_ms`) is held open; longer waits asked
    /// for are shortened to this.
    pub max_wait: Duration,
    /// When set, a request whose host is `{org}.<base_domain>` is routed to
    /// that org (besides the `/v1/orgs/{org}/…` paths).
    pub base_domain: Option<String>,
    /// How long the router remembers an org-directory answer (where an org
    /// is served) before asking the store again; zero asks on every request.
    /// Changes made through this router's admin endpoints take effect at
    /// once; changes made by another process, within this time.
    pub directory_ttl: Duration,
    /// Whether responses are compressed (gzip, br, zstd) as the request's
    /// `Accept-Encoding` asks. Turn it off where the network is not the
    /// bottleneck (loopback, or a proxy in front that compresses): it costs
    /// CPU on every page.
    pub compression: bool,
    /// Who may read `GET /metrics`.
    pub metrics: MetricsAccess,
}

/// Who may read `GET /metrics`.
///
/// In a TOML or JSON configuration: `"public"`, `"off"`, or
/// `{ role = "sync-operator" }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricsAccess {
    /// Anyone who reaches the endpoint (a scraper on a private network).
    #[default]
    Public,
    /// Callers whose bearer token verifies and holds this role (of any
    /// org); others get 401 or 403.
    Role(String),
    /// The endpoint answers 404, as if it did not exist.
    Off,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit: BodyLimit::DEFAULT.0,
            request_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(30),
            base_domain: None,
            directory_ttl: Duration::from_secs(5),
            compression: true,
            metrics: MetricsAccess::Public,
        }
    }
}

impl HttpConfig {
    /// Sets [`compression`](Self::compression).
    pub fn with_compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    /// Sets [`metrics`](Self::metrics).
    pub fn with_metrics(mut self, access: MetricsAccess) -> Self {
        self.metrics = access;
        self
    }

    /// Sets [`body_limit`](Self::body_limit).
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`max_wait`](Self::max_wait).
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Sets [`directory_ttl`](Self::directory_ttl).
    pub fn with_directory_ttl(mut self, ttl: Duration) -> Self {
        self.directory_ttl = ttl;
        self
    }

    /// Sets [`base_domain`](Self::base_domain) (stored lower-case, without a
    /// leading or trailing dot).
    pub fn with_base_domain(mut self, domain: impl Into<String>) -> Self {
        let domain: String = domain.into();
        self.base_domain = Some(domain.trim_matches('.').to_ascii_lowercase());
        self
    }

    /// Checks the configuration: a body limit and a request timeout above
    /// zero, a well-formed base domain.
    pub fn validate(&self) -> Result<()> {
        if self.body_limit == 0 {
            return Err(Error::invalid("body_limit must be at least one byte"));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::invalid("request_timeout must be longer than zero"));
        }
        if let MetricsAccess::Role(role) = &self.metrics
            && role.trim().is_empty()
        {
            return Err(Error::invalid("metrics role must not be empty"));
        }
        if let Some(domain) = &self.base_domain {
            let well_formed = !domain.is_empty()
                && domain.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !well_formed {
                return Err(Error::invalid(format!("base_domain {domain:?} is not a DNS name")));
            }
        }
        Ok(())
    }

    /// The body limit as a request extension for [`ApiJson`](crate::ApiJson).
    pub fn body_limit(&self) -> BodyLimit {
        BodyLimit(self.body_limit)
    }

    /// How long to hold a live pull that asked to wait `wait_ms`: `None` for
    /// no wait (absent or zero), otherwise at most [`max_wait`](Self::max_wait).
    pub fn wait_for(&self, wait_ms: Option<u64>) -> Option<Duration> {
        let wait = Duration::from_millis(wait_ms?);
        if wait.is_zero() || self.max_wait.is_zero() { None } else { Some(wait.min(self.max_wait)) }
    }

    /// The timeout of a request that waits `wait` (a live pull): the request
    /// timeout on top of the wait.
    pub fn timeout_for(&self, wait: Option<Duration>) -> Duration {
        self.request_timeout.saturating_add(wait.unwrap_or_default())
    }

    /// The org a `Host` header names through `{org}.<base_domain>`.
    ///
    /// `Ok(None)` when no base domain is configured or the host is not a
    /// single label under it (e.g. the base domain itself); an error when the
    /// label is not a valid org id. Host names are case-insensitive, so this
    /// reaches orgs whose ids are lower-case.
    pub fn org_from_host(&self, host: &str) -> Result<Option<OrgId>> {
        let Some(base) = &self.base_domain else { return Ok(None) };
        let host = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        let Some(label) = host.strip_suffix(base.as_str()).and_then(|rest| rest.strip_suffix('.')) else {
            return Ok(None);
        };
        if label.is_empty() || label.contains('.') {
            return Ok(None);
        }
        OrgId::new(label).map(Some).map_err(|e| match e {
            Error::InvalidInput { message, .. } => {
                Error::invalid(format!("the host {host:?} does not name an org: {message}"))
            }
            other => other,
        })
    }
}

/// `host` without a `:port` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_routing() {
        let c = HttpConfig::default().with_base_domain(".Sync.Example.com.");
        assert_eq!(c.base_domain.as_deref(), Some("sync.example.com"));
        let org = |h: &str| c.org_from_host(h).map(|o| o.map(|o| o.as_str().to_owned()));
        assert_eq!(org("contoso.sync.example.com").unwrap().as_deref(), Some("contoso"));
        assert_eq!(org("CONTOSO.sync.example.com:443").unwrap().as_deref(), Some("contoso"));
        assert_eq!(org("contoso.sync.example.com.").unwrap().as_deref(), Some("contoso"));
        assert_eq!(org("sync.example.com").unwrap(), None);
        assert_eq!(org("a.b.sync.example.com").unwrap(), None);
        assert_eq!(org("contoso.other.com").unwrap(), None);
        assert_eq!(org("evilsync.example.com").unwrap(), None);
        assert_eq!(org("[::1]:8080").unwrap(), None);
        assert!(org("my-org.sync.example.com").is_err());
        assert!(org("1abc.sync.example.com").is_err());
        assert_eq!(HttpConfig::default().org_from_host("contoso.sync.example.com").unwrap(), None);
    }

    #[test]
    fn waits_are_capped() {
        let c = HttpConfig::default().with_max_wait(Duration::from_secs(10));
        assert_eq!(c.wait_for(None), None);
        assert_eq!(c.wait_for(Some(0)), None);
        assert_eq!(c.wait_for(Some(1500)), Some(Duration::from_millis(1500)));
        assert_eq!(c.wait_for(Some(u64::MAX)), Some(Duration::from_secs(10)));
        assert_eq!(c.timeout_for(Some(Duration::from_secs(10))), Duration::from_secs(40));
        let none = c.clone().with_max_wait(Duration::ZERO);
        assert_eq!(none.wait_for(Some(5000)), None);
    }

    #[test]
    fn validation() {
        assert!(HttpConfig::default().validate().is_ok());
        assert!(HttpConfig::default().with_body_limit(0).validate().is_err());
        assert!(HttpConfig::default().with_request_timeout(Duration::ZERO).validate().is_err());
        assert!(HttpConfig::default().with_base_domain("bad domain").validate().is_err());
        assert!(HttpConfig::default().with_base_domain("").validate().is_err());
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("host:80"), "host");
        assert_eq!(strip_port("host"), "host");
    }
}
