//! RFC 9457 problem details: the wire form of [`sync_core::Error`].
//!
//! Every error response of the server is `application/problem+json` with a
//! stable `type` URI per [`ErrorKind`]: [`PROBLEM_TYPE_BASE`] followed by
//! [`ErrorKind::as_str`]. The client side decodes such a response back into
//! the matching [`Error`] with [`error_from_response`], so an error crosses the
//! wire without losing its kind.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use sync_core::{Error, ErrorKind};

/// The media type of problem responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The prefix of every problem `type` URI; the kind's name follows it.
pub const PROBLEM_TYPE_BASE: &str = "https://offline-sync.dev/problems/";

/// The `Retry-After` sent with an `Unavailable` error that names no delay.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Every error kind, in declaration order (used to decode `type` URIs).
const KINDS: [ErrorKind; 9] = [
    ErrorKind::NotFound,
    ErrorKind::Conflict,
    ErrorKind::InvalidInput,
    ErrorKind::LimitExceeded,
    ErrorKind::Unauthenticated,
    ErrorKind::Forbidden,
    ErrorKind::ResyncRequired,
    ErrorKind::Unavailable,
    ErrorKind::Internal,
];

/// The stable problem `type` URI of an error kind, e.g.
/// `https://offline-sync.dev/problems/resync-required`.
pub fn problem_type(kind: ErrorKind) -> String {
    format!("{PROBLEM_TYPE_BASE}{}", kind.as_str())
}

/// The kind named by a problem `type` URI, if it is one of ours.
pub fn kind_of_problem_type(type_uri: &str) -> Option<ErrorKind> {
    let name = type_uri.strip_prefix(PROBLEM_TYPE_BASE)?;
    KINDS.into_iter().find(|k| k.as_str() == name)
}

/// The HTTP status of an error kind.
///
/// `NotFound` 404, `Conflict` 409, `InvalidInput` 400, `LimitExceeded` 413,
/// `Unauthenticated` 401, `Forbidden` 403, `ResyncRequired` 410,
/// `Unavailable` 503, `Internal` (and any kind added later) 500.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::LimitExceeded => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::ResyncRequired => StatusCode::GONE,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The short, fixed human-readable summary of an error kind.
pub fn title_of(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "Not found",
        ErrorKind::Conflict => "Conflict",
        ErrorKind::InvalidInput => "Invalid input",
        ErrorKind::LimitExceeded => "Limit exceeded",
        ErrorKind::Unauthenticated => "Unauthenticated",
        ErrorKind::Forbidden => "Forbidden",
        ErrorKind::ResyncRequired => "Resync required",
        ErrorKind::Unavailable => "Service unavailable",
        _ => "Internal server error",
    }
}

/// An RFC 9457 problem details object, with the extension members offline-sync
/// uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The problem type URI (see [`problem_type`]).
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence, in words a caller can act on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// A URI naming this occurrence (set for internal errors, so the server
    /// log entry can be found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// `LimitExceeded`: the name of the limit, as in configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// `LimitExceeded`: the configured maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    /// `LimitExceeded`: what the request needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<u64>,
    /// `InvalidInput`: the character offset into the offending text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
}

impl Problem {
    /// The problem for `error`, with the kind's default status.
    ///
    /// An `Internal` error's message is not disclosed: the detail says only
    /// that an internal error happened, and `instance` carries a fresh
    /// `urn:uuid:` for finding the server's log entry (the caller logs it; see
    /// `ApiError`).
    pub fn from_error(error: &Error) -> Self {
        let kind = error.kind();
        let mut problem = Problem {
            type_uri: problem_type(kind),
            title: title_of(kind).to_owned(),
            status: status_of(kind).as_u16(),
            detail: String::new(),
            instance: None,
            limit: None,
            max: None,
            requested: None,
            position: None,
        };
        match error {
            Error::NotFound { what } => problem.detail = format!("not found: {what}"),
            Error::Conflict { message }
            | Error::Unauthenticated { message }
            | Error::Forbidden { message }
            | Error::Unavailable { message, .. } => problem.detail = message.clone(),
            Error::InvalidInput { message, position } => {
                problem.detail = message.clone();
                problem.position = *position;
            }
            Error::LimitExceeded { limit, max, requested } => {
                problem.detail = error.to_string();
                problem.limit = Some(limit.clone());
                problem.max = Some(*max);
                problem.requested = Some(*requested);
            }
            Error::ResyncRequired { reason } => problem.detail = reason.clone(),
            _ => {
                problem.detail = "an internal error occurred; the server log has the details".to_owned();
                problem.instance = Some(format!("urn:uuid:{}", uuid::Uuid::new_v4()));
            }
        }
        problem
    }

    /// The kind this problem stands for: from its `type` when it is one of
    /// ours, otherwise from its `status`.
    pub fn kind(&self) -> ErrorKind {
        kind_of_problem_type(&self.type_uri).unwrap_or_else(|| {
            StatusCode::from_u16(self.status).map(kind_of_status).unwrap_or(ErrorKind::Internal)
        })
    }

    /// Turns the problem back into an [`Error`] of the same kind.
    /// `retry_after` is the response's `Retry-After`, if any.
    pub fn into_error(self, retry_after: Option<Duration>) -> Error {
        let kind = self.kind();
        let detail = if self.detail.is_empty() { self.title.clone() } else { self.detail };
        match kind {
            ErrorKind::NotFound => Error::NotFound {
                what: detail.strip_prefix("not found: ").map(str::to_owned).unwrap_or(detail),
            },
            ErrorKind::Conflict => Error::Conflict { message: detail },
            ErrorKind::InvalidInput => Error::InvalidInput { message: detail, position: self.position },
            ErrorKind::LimitExceeded => match (self.limit, self.max, self.requested) {
                (Some(limit), Some(max), Some(requested)) => Error::LimitExceeded { limit, max, requested },
                _ => Error::InvalidInput { message: detail, position: None },
            },
            ErrorKind::Unauthenticated => Error::Unauthenticated { message: detail },
            ErrorKind::Forbidden => Error::Forbidden { message: detail },
            ErrorKind::ResyncRequired => Error::ResyncRequired { reason: detail },
            ErrorKind::Unavailable => Error::Unavailable { message: detail, retry_after },
            _ => Error::Internal {
                message: match self.instance {
                    Some(instance) => format!("{detail} ({instance})"),
                    None => detail,
                },
            },
        }
    }
}

/// The error kind a bare status code (one without a problem body, e.g. from
/// a proxy) stands for.
pub fn kind_of_status(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        401 => ErrorKind::Unauthenticated,
        403 => ErrorKind::Forbidden,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        410 => ErrorKind::ResyncRequired,
        408 | 429 | 502 | 503 | 504 => ErrorKind::Unavailable,
        400..=499 => ErrorKind::InvalidInput,
        _ => ErrorKind::Internal,
    }
}

/// Parses a `Retry-After` header value: delta-seconds or an HTTP date.
/// A date in the past is a zero delay.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// The `Retry-After` of a response, if present and well-formed.
pub fn retry_after_of(headers: &HeaderMap) -> Option<Duration> {
    headers.get(header::RETRY_AFTER)?.to_str().ok().and_then(parse_retry_after)
}

/// Decodes an error response: a problem body becomes the [`Error`] of its
/// kind; anything else (a proxy's HTML page, an empty body) is mapped by its
/// status code, with a short excerpt of the body as the message.
pub fn error_from_response(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Error {
    let retry_after = retry_after_of(headers);
    if let Ok(problem) = serde_json::from_slice::<Problem>(body) {
        return problem.into_error(retry_after);
    }
    let excerpt: String = String::from_utf8_lossy(body).chars().take(200).collect();
    let excerpt = excerpt.trim();
    let message = if excerpt.is_empty() {
        format!("the server answered {status}")
    } else {
        format!("the server answered {status}: {excerpt}")
    };
    match kind_of_status(status) {
        ErrorKind::Unauthenticated => Error::unauthenticated(message),
        ErrorKind::Forbidden => Error::forbidden(message),
        ErrorKind::NotFound => Error::not_found(message),
        ErrorKind::Conflict => Error::conflict(message),
        ErrorKind::ResyncRequired => Error::resync(message),
        ErrorKind::Unavailable => Error::Unavailable { message, retry_after },
        ErrorKind::InvalidInput => Error::invalid(message),
        _ => Error::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_errors() -> Vec<Error> {
        vec![
            Error::not_found("org 'contoso'"),
            Error::conflict("lease is stale"),
            Error::invalid_at("unexpected token", 7),
            Error::invalid("no position"),
            Error::limit("rows_per_page", 1000, 5000),
            Error::unauthenticated("token has expired"),
            Error::forbidden("not your org"),
            Error::resync("cursor is older than the tombstone window"),
            Error::Unavailable { message: "store is busy".into(), retry_after: Some(Duration::from_secs(3)) },
        ]
    }

    #[test]
    fn problems_round_trip_every_kind() {
        for error in all_errors() {
            let problem = Problem::from_error(&error);
            assert_eq!(problem.type_uri, problem_type(error.kind()));
            assert_eq!(problem.status, status_of(error.kind()).as_u16());
            let json = serde_json::to_vec(&problem).unwrap();
            let back: Problem = serde_json::from_slice(&json).unwrap();
            let retry = match &error {
                Error::Unavailable { retry_after, .. } => *retry_after,
                _ => None,
            };
            assert_eq!(back.into_error(retry), error);
        }
    }

    #[test]
    fn internal_details_are_not_disclosed() {
        let problem = Problem::from_error(&Error::internal("password=hunter2 in connection string"));
        assert!(!problem.detail.contains("hunter2"));
        assert!(problem.instance.as_deref().is_some_and(|i| i.starts_with("urn:uuid:")));
        assert_eq!(problem.status, 500);
    }

    #[test]
    fn every_kind_has_a_distinct_type() {
        let mut types: Vec<String> = KINDS.iter().map(|k| problem_type(*k)).collect();
        types.sort();
        types.dedup();
        assert_eq!(types.len(), KINDS.len());
        for kind in KINDS {
            assert_eq!(kind_of_problem_type(&problem_type(kind)), Some(kind));
        }
        assert_eq!(kind_of_problem_type("about:blank"), None);
    }

    #[test]
    fn bare_statuses_map_to_kinds() {
        let h = HeaderMap::new();
        assert_eq!(error_from_response(StatusCode::GONE, &h, b"").kind(), ErrorKind::ResyncRequired);
        assert_eq!(
            error_from_response(StatusCode::BAD_GATEWAY, &h, b"<html>").kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(
            error_from_response(StatusCode::TOO_MANY_REQUESTS, &h, b"slow down").kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(error_from_response(StatusCode::IM_A_TEAPOT, &h, b"").kind(), ErrorKind::InvalidInput);
        let e = error_from_response(StatusCode::INTERNAL_SERVER_ERROR, &h, b"boom");
        assert_eq!(e, Error::internal("the server answered 500 Internal Server Error: boom"));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let later = SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        assert_eq!(parse_retry_after("soon"), None);
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, http::HeaderValue::from_static("2"));
        let e = error_from_response(StatusCode::SERVICE_UNAVAILABLE, &h, b"");
        assert_eq!(
            e,
            Error::Unavailable {
                message: "the server answered 503 Service Unavailable".into(),
                retry_after: Some(Duration::from_secs(2))
            }
        );
    }
}
