//! The admin endpoints under `/v1/admin/`. Each authenticates the caller and
//! checks its admin rights before it reads a request body, so a refused
//! caller learns nothing from how its body would have been judged.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use sync_core::queue::DeadLetter;
use sync_core::{EntityName, Error, OrgConfig, Principal, Profile, ProfileName, QueueName};

use super::extract::{ApiPath, ApiQuery};
use super::{AppState, org_from_path};
use crate::api_error::{ApiError, json_object};
use crate::bearer::Authenticated;

/// The most dead letters one request returns, and the default.
const MAX_DEAD_LETTERS: usize = 1000;
const DEFAULT_DEAD_LETTERS: usize = 100;

fn profile_name(text: &str) -> Result<ProfileName, Error> {
    ProfileName::new(text)
        .map_err(|e| Error::invalid(format!("the profile name in the path is not valid: {e}")))
}

/// `POST /v1/admin/orgs`: enqueue provisioning of an org.
pub(super) async fn provision(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    request: Request,
) -> Result<Response, ApiError> {
    // Admin rights depend on the org in the body; refuse callers with no
    // admin role at all before reading it.
    require_some_admin_role(&principal)?;
    let config: OrgConfig = json_object(request).await?;
    let outcome = state.service().provision(&principal, config).await?;
    Ok((StatusCode::ACCEPTED, Json(outcome)).into_response())
}

fn require_some_admin_role(principal: &Principal) -> Result<(), Error> {
    if principal.is_admin() || principal.has_role(sync_core::principal::OPERATOR_ROLE) {
        Ok(())
    } else {
        Err(Error::forbidden("this operation needs the admin role"))
    }
}

/// `GET /v1/admin/orgs`: every org staged here.
pub(super) async fn orgs(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Json<Vec<OrgConfig>>, ApiError> {
    Ok(Json(state.service().orgs(&principal).await?))
}

/// `DELETE /v1/admin/orgs/{org}`: enqueue deprovisioning.
pub(super) async fn deprovision(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ApiPath(org): ApiPath<String>,
) -> Result<Response, ApiError> {
    let org = org_from_path(&org)?;
    let outcome = state.service().deprovision(&principal, &org).await?;
    Ok((StatusCode::ACCEPTED, Json(outcome)).into_response())
}

/// `GET /v1/admin/orgs/{org}/status`.
pub(super) async fn org_status(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ApiPath(org): ApiPath<String>,
) -> Result<Response, ApiError> {
    let org = org_from_path(&org)?;
    Ok(Json(state.service().org_status(&principal, &org).await?).into_response())
}

/// `GET /v1/admin/orgs/{org}/profiles`.
pub(super) async fn list_profiles(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ApiPath(org): ApiPath<String>,
) -> Result<Json<Vec<Profile>>, ApiError> {
    let org = org_from_path(&org)?;
    Ok(Json(state.service().list_profiles(&principal, &org).await?))
}

/// `PUT /v1/admin/orgs/{org}/profiles/{name}`: save a profile whose `name`
/// is the path's; answers with the profile as saved.
pub(super) async fn put_profile(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ApiPath((org, name)): ApiPath<(String, String)>,
    request: Request,
) -> Result<Json<Profile>, ApiError> {
    let org = org_from_path(&org)?;
    let name = profile_name(&name)?;
    state.service().authorize_admin(&principal, Some(&org))?;
    let profile: Profile = json_object(request).await?;
    if profile.name != name {
        return Err(Error::invalid(format!(
            "the body names profile '{}' but the path names '{name}'; they must agree",
            profile.name
        ))
        .into());
    }
    state.service().put_profile(&principal, &org, &profile).await?;
    Ok(Json(profile))
}

/// `GET /v1/admin/orgs/{org}/profiles/{name}`.
pub(super) async fn get_profile(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ApiPath((org, name)): ApiPath<(String, String)>,
) -> Result<Json<Profile>, ApiError> {
    let org = org_from_path(&org)?;
    let name = profile_name(&name)?;
    Ok(Json(state.service().get_profile(&principal, &org, &name).await?))
}

/// `DELETE /v1/admin/orgs/{org}/profiles/{name}`: 204.
pub(super) async fn delete_profile(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ApiPath((org, name)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let org = org_from_path(&org)?;
    let name = profile_name(&name)?;
    state.service().delete_profile(&principal, &org, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The optional body of "sync now".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncNowRequest {
    /// One entity; absent: every staged entity.
    #[serde(default)]
    entity: Option<EntityName>,
}

/// The answer of "sync now".
#[derive(Debug, Serialize)]
struct SyncNowResponse {
    /// Work items enqueued or brought forward.
    enqueued: usize,
}

/// `POST /v1/admin/orgs/{org}/sync-now` with an optional
/// `{"entity": "…"}`: 202 with how many work items were made due.
pub(super) async fn sync_now(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ApiPath(org): ApiPath<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let org = org_from_path(&org)?;
    state.service().authorize_admin(&principal, Some(&org))?;
    let SyncNowRequest { entity } = if has_body(&request) {
        json_object::<SyncNowRequest>(request).await?
    } else {
        SyncNowRequest::default()
    };
    let enqueued = state.service().sync_now(&principal, &org, entity.as_ref()).await?;
    Ok((StatusCode::ACCEPTED, Json(SyncNowResponse { enqueued })).into_response())
}

/// Whether a request declares a body (a length above zero, or chunks).
fn has_body(request: &Request) -> bool {
    let headers = request.headers();
    match headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()) {
        Some(length) => length.trim() != "0",
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

/// The body of `PUT …/location`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationRequest {
    /// The base URL of the deployment that serves the org.
    base_url: String,
}

/// `PUT /v1/admin/orgs/{org}/location`: the org is served by the deployment
/// at `base_url`; requests for it are redirected there. 204.
pub(super) async fn put_location(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ApiPath(org): ApiPath<String>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let org = org_from_path(&org)?;
    state.service().authorize_admin(&principal, None)?;
    let LocationRequest { base_url } = json_object(request).await?;
    check_base_url(&base_url)?;
    state.service().set_org_location(&principal, &org, Some(base_url)).await?;
    state.shared.directory.forget(&org)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A base URL usable in a `Location` header: http(s), a host, no query or
/// fragment, nothing a header cannot carry.
fn check_base_url(url: &str) -> Result<(), Error> {
    let refuse = |why: &str| Err(Error::invalid(format!("base_url {url:?} {why}")));
    let Ok(uri) = url.parse::<http::Uri>() else { return refuse("is not a URL") };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return refuse("is not an http(s) URL");
    }
    if uri.host().is_none_or(str::is_empty) {
        return refuse("has no host");
    }
    if uri.query().is_some() || url.contains('#') {
        return refuse("may not have a query or fragment");
    }
    if http::HeaderValue::try_from(url).is_err() {
        return refuse("cannot be sent in a Location header");
    }
    Ok(())
}

/// `DELETE /v1/admin/orgs/{org}/location`: the org is served here again. 204.
pub(super) async fn delete_location(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ApiPath(org): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let org = org_from_path(&org)?;
    state.service().set_org_location(&principal, &org, None).await?;
    state.shared.directory.forget(&org)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/admin/queues`.
pub(super) async fn queues(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Response, ApiError> {
    Ok(Json(state.service().queues(&principal).await?).into_response())
}

/// The query of `GET …/dead-letters`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeadLetterQuery {
    /// Most letters to return (default 100, at most 1000).
    limit: Option<usize>,
}

/// A dead letter as JSON: the body as the JSON it holds, or as text, or
/// base64 when it is neither; the time in RFC 3339.
#[derive(Debug, Serialize)]
struct DeadLetterView {
    message_id: String,
    body: serde_json::Value,
    body_encoding: &'static str,
    dedup_key: Option<String>,
    delivery_count: u32,
    reason: String,
    dead_at: String,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(letter: DeadLetter) -> Self {
        use base64::Engine as _;
        let (body, body_encoding) = match serde_json::from_slice::<serde_json::Value>(&letter.body) {
            Ok(json) => (json, "json"),
            Err(_) => match String::from_utf8(letter.body) {
                Ok(text) => (serde_json::Value::String(text), "text"),
                Err(e) => (
                    serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
                    "base64",
                ),
            },
        };
        DeadLetterView {
            message_id: letter.message_id,
            body,
            body_encoding,
            dedup_key: letter.dedup_key,
            delivery_count: letter.delivery_count,
            reason: letter.reason,
            dead_at: rfc3339(letter.dead_at),
        }
    }
}

fn rfc3339(at: SystemTime) -> String {
    let nanos = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::try_from(nanos).unwrap_or(i128::MAX))
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// `GET /v1/admin/queues/{queue}/dead-letters?limit=`.
pub(super) async fn dead_letters(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ApiPath(queue): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeadLetterQuery>,
) -> Result<Response, ApiError> {
    let queue = QueueName::new(&queue)
        .map_err(|e| Error::invalid(format!("the queue name in the path is not valid: {e}")))?;
    let limit = match query.limit {
        None => DEFAULT_DEAD_LETTERS,
        Some(0) => return Err(Error::invalid("limit must be at least 1").into()),
        Some(n) if n > MAX_DEAD_LETTERS => {
            return Err(Error::limit("dead_letters_per_request", MAX_DEAD_LETTERS as u64, n as u64).into());
        }
        Some(n) => n,
    };
    let letters = state.service().dead_letters(&principal, &queue, limit).await?;
    let views: Vec<DeadLetterView> = letters.into_iter().map(DeadLetterView::from).collect();
    Ok(Json(views).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        for ok in ["https://eu.sync.example.com", "http://127.0.0.1:8080", "https://x.example.com/prefix/"] {
            assert!(check_base_url(ok).is_ok(), "{ok}");
        }
        for bad in
            ["ftp://x", "eu.sync.example.com", "https://", "https://x?y=1", "https://x/#f", "https://x/\n"]
        {
            assert!(check_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dead_letter_bodies() {
        let letter = |body: &[u8]| DeadLetter {
            message_id: "m".into(),
            body: body.to_vec(),
            dedup_key: None,
            delivery_count: 3,
            reason: "r".into(),
            dead_at: UNIX_EPOCH + std::time::Duration::from_secs(86_400),
        };
        let v = DeadLetterView::from(letter(br#"{"a":1}"#));
        assert_eq!((v.body_encoding, v.body["a"].as_i64()), ("json", Some(1)));
        assert_eq!(v.dead_at, "1970-01-02T00:00:00Z");
        assert_eq!(DeadLetterView::from(letter(b"plain")).body_encoding, "text");
        let v = DeadLetterView::from(letter(&[0xff, 0xfe]));
        assert_eq!((v.body_encoding, v.body.as_str()), ("base64", Some("//4=")));
    }
}
