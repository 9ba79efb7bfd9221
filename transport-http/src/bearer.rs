//! Reading the bearer credential and authenticating a request.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use http::request::Parts;
use http::{HeaderMap, header};
use sync_core::{Authenticator, Error, Principal, Result};

use crate::api_error::ApiError;

/// The credential of an `Authorization: Bearer <token>` header.
///
/// Errors (`Unauthenticated`): no `Authorization` header, another scheme,
/// an empty token, or a header that is not text.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Error::unauthenticated(
            "no bearer token was presented: send 'Authorization: Bearer <token>'",
        ));
    };
    if values.next().is_some() {
        return Err(Error::unauthenticated("more than one Authorization header was sent"));
    }
    let value = value.to_str().map_err(|_| Error::unauthenticated("the Authorization header is not text"))?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Error::unauthenticated("the Authorization scheme must be Bearer"));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::unauthenticated("the bearer token is empty"));
    }
    Ok(token)
}

/// An extractor for the request's authenticated [`Principal`].
///
/// Reads the bearer token and verifies it with the state's
/// `Arc<dyn Authenticator>` (the state implements
/// `FromRef` for it); a failure is the problem response of the error
/// (401 with `WWW-Authenticate: Bearer`, or 503 when a key set is
/// unreachable). The principal is kept in the request's extensions, so a
/// second extraction does not verify again.
#[derive(Clone, Debug, PartialEq)]
pub struct Authenticated(pub Principal);

impl<S> FromRequestParts<S> for Authenticated
where
    S: Send + Sync,
    Arc<dyn Authenticator>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> std::result::Result<Self, ApiError> {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(Authenticated(principal.clone()));
        }
        let token = bearer_token(&parts.headers)?;
        let authenticator = <Arc<dyn Authenticator>>::from_ref(state);
        let principal = authenticator.authenticate(token).await?;
        parts.extensions.insert(principal.clone());
        Ok(Authenticated(principal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn bearer_forms() {
        assert_eq!(bearer_token(&with("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(&with("bearer   abc ")).unwrap(), "abc");
        assert!(bearer_token(&HeaderMap::new()).unwrap_err().to_string().contains("no bearer token"));
        assert!(bearer_token(&with("Basic dXNlcjpwYXNz")).unwrap_err().to_string().contains("scheme"));
        assert!(bearer_token(&with("Bearer")).unwrap_err().to_string().contains("empty"));
        assert!(bearer_token(&with("Bearer  ")).unwrap_err().to_string().contains("empty"));
        let mut two = with("Bearer a");
        two.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert!(bearer_token(&two).is_err());
    }
}
