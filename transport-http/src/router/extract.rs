//! Extractors whose every rejection is a problem response, and the reply
//! type of the handlers.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use serde::de::DeserializeOwned;
use sync_core::Error;

use crate::api_error::ApiError;

/// Path parameters; a path that does not decode (bad percent-encoding, a
/// segment of the wrong type) is a 400 problem saying so.
#[derive(Debug, Clone)]
pub(crate) struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(path_rejection(&rejection)),
        }
    }
}

fn path_rejection(rejection: &PathRejection) -> ApiError {
    match rejection {
        PathRejection::MissingPathParams(_) => ApiError::new(Error::internal(format!(
            "route without its path parameters: {}",
            rejection.body_text()
        ))),
        _ => ApiError::new(Error::invalid(format!("the request path is invalid: {}", rejection.body_text()))),
    }
}

/// Query parameters; a query that does not decode (an unknown parameter, a
/// value of the wrong type) is a 400 problem naming it.
#[derive(Debug, Clone)]
pub(crate) struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(&rejection)),
        }
    }
}

fn query_rejection(rejection: &QueryRejection) -> ApiError {
    ApiError::new(Error::invalid(format!("the query string is invalid: {}", rejection.body_text())))
}

/// What a handler answers when it does not answer normally: a problem, or a
/// redirect to the deployment that serves the org.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// A problem response.
    Problem(ApiError),
    /// `307 Temporary Redirect` to this URL (the method and body are kept).
    Redirect(HeaderValue),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Problem(e)
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Problem(ApiError::new(e))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Problem(e) => e.into_response(),
            Refusal::Redirect(location) => {
                let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
        }
    }
}
