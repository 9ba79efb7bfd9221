//! Server-side error responses and the JSON body extractor.
//!
//! [`ApiError`] turns a [`sync_core::Error`] into an
//! `application/problem+json` response; [`ApiJson`] reads a JSON request body
//! and reports every way it can be wrong as such a problem (415 for a wrong
//! content type, 413 for a body over the [`BodyLimit`], 400 saying where the
//! JSON is malformed or which field has the wrong type).

use std::time::Duration;

use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use sync_core::Error;

use crate::problem::{DEFAULT_RETRY_AFTER, PROBLEM_JSON, Problem};

/// An error as an HTTP response: an RFC 9457 problem with the status of the
/// error's kind (see [`status_of`](crate::problem::status_of)).
///
/// `Unauthenticated` adds `WWW-Authenticate: Bearer`; `Unavailable` adds
/// `Retry-After` (the error's delay, or
/// [`DEFAULT_RETRY_AFTER`]); an `Internal` error is logged with
/// the `instance` id the response carries, and its message is not disclosed.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    error: Error,
    status: Option<StatusCode>,
}

impl ApiError {
    /// The response for `error`, with its kind's status.
    pub fn new(error: Error) -> Self {
        ApiError { error, status: None }
    }

    /// The response for `error` with a more specific status of the same
    /// meaning (e.g. 415 for an `InvalidInput` about the content type).
    pub fn with_status(error: Error, status: StatusCode) -> Self {
        ApiError { error, status: Some(status) }
    }

    /// The error.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The error, consuming the response.
    pub fn into_error(self) -> Error {
        self.error
    }

    /// The status the response will have.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| crate::problem::status_of(self.error.kind()))
    }

    /// The problem body the response will carry.
    pub fn problem(&self) -> Problem {
        let mut problem = Problem::from_error(&self.error);
        problem.status = self.status().as_u16();
        problem
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError::new(error)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status(), self.error)
    }
}

impl std::error::Error for ApiError {}

/// Whole seconds for a `Retry-After` header: rounded up, at least one.
fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        match &self.error {
            Error::Internal { message } => tracing::error!(
                instance = problem.instance.as_deref().unwrap_or_default(),
                "internal error: {message}"
            ),
            other => tracing::debug!(status = problem.status, "request failed: {other}"),
        }
        let body = match serde_json::to_vec(&problem) {
            Ok(body) => body,
            Err(e) => {
                // Serializing plain strings and numbers cannot fail; answer
                // with a bare 500 should it ever.
                tracing::error!("could not serialize a problem: {e}");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        };
        let mut response = (self.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match &self.error {
            Error::Unauthenticated { .. } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Error::Unavailable { retry_after, .. } => {
                let secs = retry_after_secs(retry_after.unwrap_or(DEFAULT_RETRY_AFTER));
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        response
    }
}

/// The most bytes a request body may have. The router puts it into the
/// request extensions; [`ApiJson`] reads it there and falls back to
/// [`BodyLimit::DEFAULT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit(pub usize);

impl BodyLimit {
    /// The limit used when none is configured: 4 MiB.
    pub const DEFAULT: BodyLimit = BodyLimit(4 * 1024 * 1024);
    /// The name of the limit in configuration and in `LimitExceeded` errors.
    pub const NAME: &'static str = "body_limit";
}

impl Default for BodyLimit {
    fn default() -> Self {
        BodyLimit::DEFAULT
    }
}

/// A JSON request body, decoded into `T`, whose every failure is a problem
/// response:
///
/// - a `Content-Type` other than `application/json` (or `…+json`) → 415,
/// - a body larger than the [`BodyLimit`] → 413 `LimitExceeded` naming
///   `body_limit`, its value and the size sent (at least the limit plus one
///   when the size was not declared),
/// - malformed JSON → 400 saying at which line and column,
/// - a well-formed body of the wrong shape (a wrong type, an unknown or
///   missing field) → 400 naming the field's path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApiJson<T>(pub T);

/// Whether a `Content-Type` is JSON (`application/json`,
/// `application/<anything>+json`, with any parameters).
fn is_json_content_type(value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.strip_prefix("application/") {
        Some(sub) => sub == "json" || sub.ends_with("+json"),
        None => false,
    }
}

/// Reads a body of at most `limit` bytes.
async fn read_limited(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = |requested: u64| {
        ApiError::new(Error::limit(BodyLimit::NAME, u64::try_from(limit).unwrap_or(u64::MAX), requested))
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared
        && declared > u64::try_from(limit).unwrap_or(u64::MAX)
    {
        return Err(too_large(declared));
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(too_large(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1)))
        }
        Err(e) => Err(ApiError::new(Error::invalid(format!("the request body could not be read: {e}")))),
    }
}

/// Decodes JSON, saying where it is malformed or which field is wrong.
pub(crate) fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| json_error(&e))?;
    de.end().map_err(|e| Error::invalid(format!("malformed JSON: {e}")))?;
    Ok(value)
}

fn json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> Error {
    let inner = e.inner();
    let path = e.path().to_string();
    match inner.classify() {
        serde_json::error::Category::Data if path != "." => {
            Error::invalid(format!("invalid request body at '{path}': {inner}"))
        }
        serde_json::error::Category::Data => Error::invalid(format!("invalid request body: {inner}")),
        serde_json::error::Category::Eof if inner.line() == 1 && inner.column() == 0 => {
            Error::invalid("the request body is empty; a JSON document was expected")
        }
        _ => Error::invalid(format!("malformed JSON: {inner}")),
    }
}

/// Checks the content type and reads the body within the request's
/// [`BodyLimit`].
async fn json_body(request: Request) -> Result<Bytes, ApiError> {
    match request.headers().get(header::CONTENT_TYPE) {
        Some(value) if is_json_content_type(value) => {}
        Some(value) => {
            let shown = value.to_str().unwrap_or("(not text)");
            return Err(ApiError::with_status(
                Error::invalid(format!("the request body must be application/json, not '{shown}'")),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ));
        }
        None => {
            return Err(ApiError::with_status(
                Error::invalid("the request has no Content-Type; send application/json"),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ));
        }
    }
    let limit = request.extensions().get::<BodyLimit>().copied().unwrap_or_default();
    read_limited(request, limit.0).await
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = json_body(request).await?;
        decode_json(&bytes).map(ApiJson).map_err(ApiError::new)
    }
}

/// Reads a request body that must be a JSON object, as [`ApiJson`] does
/// (content type, body limit), and decodes it with [`decode_request_body`].
pub(crate) async fn json_object<T: DeserializeOwned>(request: Request) -> Result<T, ApiError> {
    let bytes = json_body(request).await?;
    decode_request_body(&bytes).map_err(ApiError::new)
}

/// Decodes a request body the way the router does: one JSON object (serde
/// would also read a struct from an array of its fields in order, which no
/// client means), nothing after it, every failure an `InvalidInput` saying
/// where the JSON is malformed or which field is wrong.
///
/// ```
/// use sync_core::protocol::PullRequest;
/// use transport_http::decode_request_body;
///
/// let ok: PullRequest = decode_request_body(br#"{"limit": 10}"#).unwrap();
/// assert_eq!(ok.limit, Some(10));
/// let e = decode_request_body::<PullRequest>(br#"{"limit": "ten"}"#).unwrap_err();
/// assert!(e.to_string().contains("'limit'"));
/// let e = decode_request_body::<PullRequest>(b"[]").unwrap_err();
/// assert!(e.to_string().contains("expected a JSON object, found an array"));
/// ```
pub fn decode_request_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if let Some(b) = first
        && *b != b'{'
        // Malformed text is reported as such, by the decoder below.
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    {
        let found = match b {
            b'[' => "an array",
            b'"' => "a string",
            b'-' | b'0'..=b'9' => "a number",
            b't' | b'f' => "a boolean",
            _ => "null",
        };
        return Err(Error::invalid(format!("invalid request body: expected a JSON object, found {found}")));
    }
    decode_json(bytes)
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        let ok = [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ];
        for v in ok {
            assert!(is_json_content_type(&HeaderValue::from_static(v)), "{v}");
        }
        for v in ["text/plain", "application/jsonx", "application/xml", "json"] {
            assert!(!is_json_content_type(&HeaderValue::from_static(v)), "{v}");
        }
    }

    #[test]
    fn json_errors_say_where() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            a: Vec<u32>,
        }
        let e = decode_json::<T>(b"{\"a\": [1,\n 2,").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = decode_json::<T>(br#"{"a": [1, "x"]}"#).unwrap_err();
        assert!(e.to_string().contains("'a[1]'"), "{e}");
        let e = decode_json::<T>(b"").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = decode_json::<T>(br#"{"a": []} trailing"#).unwrap_err();
        assert!(e.to_string().contains("malformed JSON"), "{e}");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }
}
