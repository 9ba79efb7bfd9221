//! The sync endpoints: `profile`, `pull` (with live mode) and `push`, by
//! `/v1/orgs/{org}/sync/…` path or by `{org}.<base domain>` host.

use std::time::Duration;

use axum::Json;
use axum::extract::{OriginalUri, Request, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, header};
use sync_core::protocol::{MutationOutcome, PullRequest, PushRequest};
use sync_core::{Error, OrgId, Principal};

use super::extract::{ApiPath, Refusal};
use super::{AppState, Deadline, org_from_path, original_path_and_query};
use crate::api_error::json_object;

/// Which sync operation a request is for.
#[derive(Clone, Copy)]
enum Op {
    Profile,
    Pull,
    Push,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Profile => "profile",
            Op::Pull => "pull",
            Op::Push => "push",
        }
    }
}

/// How the request named its org.
enum Named {
    /// `/v1/orgs/{org}/sync/…`: the segment, not yet validated.
    Path(String),
    /// `/v1/sync/…` on the host `{org}.<base domain>`.
    Host,
}

/// Finds the request's org, redirects it when the directory places the org
/// elsewhere, authenticates the caller and refuses a principal of another
/// org — in that order, so a device is routed as DNS would route it, and
/// nothing of an org is read for a caller who may not see it.
async fn admit(
    state: &AppState,
    named: Named,
    op: Op,
    request: &Parts,
) -> Result<(OrgId, Principal), Refusal> {
    let org = match &named {
        Named::Path(segment) => org_from_path(segment)?,
        Named::Host => org_from_host(state, request)?,
    };
    if let Some(base) = state.directory_location(&org).await? {
        let path = match named {
            Named::Path(_) => {
                let uri = request.extensions.get::<OriginalUri>().map_or(&request.uri, |u| &u.0);
                original_path_and_query(uri).to_owned()
            }
            Named::Host => {
                let query = request.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
                format!("/v1/orgs/{org}/sync/{}{query}", op.name())
            }
        };
        let location = format!("{}{path}", base.trim_end_matches('/'));
        let location = HeaderValue::try_from(location).map_err(|_| {
            Error::internal(format!("the org directory holds an unusable URL for org '{org}'"))
        })?;
        return Err(Refusal::Redirect(location));
    }
    let principal = state.authenticate(&request.headers).await?;
    if principal.org != org {
        return Err(Error::forbidden(format!(
            "a principal of org '{}' may not use org '{org}'",
            principal.org
        ))
        .into());
    }
    Ok((org, principal))
}

/// The org named by the request's host through `{org}.<base domain>`.
fn org_from_host(state: &AppState, request: &Parts) -> Result<OrgId, Error> {
    let config = state.config();
    let Some(base) = &config.base_domain else {
        return Err(Error::not_found(
            "an org for this path: host routing is not configured; use /v1/orgs/{org}/sync/…",
        ));
    };
    let host = request
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default();
    match config.org_from_host(host)? {
        Some(org) => Ok(org),
        None => Err(Error::not_found(format!(
            "an org for the host {host:?}: use a host {{org}}.{base}, or /v1/orgs/{{org}}/sync/…"
        ))),
    }
}

/// A JSON response that no cache may keep (it is one caller's data).
fn private_json<T: serde::Serialize>(body: &T) -> Response {
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(super) async fn profile_at(
    State(state): State<AppState>,
    ApiPath(org): ApiPath<String>,
    request: Request,
) -> Result<Response, Refusal> {
    profile(state, Named::Path(org), request).await
}

pub(super) async fn profile_by_host(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, Refusal> {
    profile(state, Named::Host, request).await
}

async fn profile(state: AppState, named: Named, request: Request) -> Result<Response, Refusal> {
    let (parts, _body) = request.into_parts();
    let (org, principal) = admit(&state, named, Op::Profile, &parts).await?;
    let response = state.service().profile(&principal, &org).await?;
    Ok(private_json(&response))
}

pub(super) async fn pull_at(
    State(state): State<AppState>,
    ApiPath(org): ApiPath<String>,
    request: Request,
) -> Result<Response, Refusal> {
    pull(state, Named::Path(org), request).await
}

pub(super) async fn pull_by_host(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, Refusal> {
    pull(state, Named::Host, request).await
}

/// Decrements the live-pull gauge when the pull ends, however it ends.
struct Waiting<'a>(Option<&'a prometheus::IntGauge>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(gauge) = self.0 {
            gauge.dec();
        }
    }
}

async fn pull(state: AppState, named: Named, request: Request) -> Result<Response, Refusal> {
    let (parts, body) = request.into_parts();
    let (org, principal) = admit(&state, named, Op::Pull, &parts).await?;
    let deadline = parts.extensions.get::<Deadline>().cloned();
    let request = Request::from_parts(parts, body);
    let mut body: PullRequest = json_object(request).await?;
    let wait = live_wait(&state, body.wait_ms);
    body.wait_ms = wait.map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX));
    let _waiting = match wait {
        Some(wait) => {
            if let Some(deadline) = &deadline {
                deadline.extend(wait);
            }
            let gauge = state.metrics().map(|m| m.live_pulls());
            if let Some(gauge) = gauge {
                gauge.inc();
            }
            Waiting(gauge)
        }
        None => Waiting(None),
    };
    let response = state.service().pull(&principal, &org, &body).await?;
    if let Some(metrics) = state.metrics() {
        let (puts, removes) = response
            .batches
            .iter()
            .fold((0u64, 0u64), |(p, r), b| (p + b.puts.len() as u64, r + b.removes.len() as u64));
        metrics.rows_served(puts, removes);
    }
    Ok(private_json(&response))
}

/// How long a live pull may wait: what it asked for, capped by the router's
/// `max_wait` and the service's `max_wait_ms`; `None` for no wait.
fn live_wait(state: &AppState, wait_ms: Option<u64>) -> Option<Duration> {
    let service_max = Duration::from_millis(state.service().config().max_wait_ms);
    let wait = state.config().wait_for(wait_ms)?.min(service_max);
    (!wait.is_zero()).then_some(wait)
}

pub(super) async fn push_at(
    State(state): State<AppState>,
    ApiPath(org): ApiPath<String>,
    request: Request,
) -> Result<Response, Refusal> {
    push(state, Named::Path(org), request).await
}

pub(super) async fn push_by_host(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, Refusal> {
    push(state, Named::Host, request).await
}

async fn push(state: AppState, named: Named, request: Request) -> Result<Response, Refusal> {
    let (parts, body) = request.into_parts();
    let (org, principal) = admit(&state, named, Op::Push, &parts).await?;
    let request = Request::from_parts(parts, body);
    let body: PushRequest = json_object(request).await?;
    // A push runs to the end even if the client goes away: cancelled
    // between the write-back and the journal entry, a retry would apply
    // the same edit twice.
    let service = state.service().clone();
    let response = tokio::spawn(async move { service.push(&principal, &org, &body).await })
        .await
        .map_err(|e| sync_core::Error::internal(format!("the push task ended abnormally: {e}")))??;
    if let Some(metrics) = state.metrics() {
        for result in &response.results {
            metrics.mutation(match result.outcome {
                MutationOutcome::Applied { .. } => "applied",
                MutationOutcome::Conflict { .. } => "conflict",
                MutationOutcome::Rejected { .. } => "rejected",
            });
        }
    }
    Ok(private_json(&response))
}
