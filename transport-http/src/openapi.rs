//! The OpenAPI 3.1 document of the router, written by hand.
//!
//! A test checks that its paths and methods are exactly the router's route
//! table, so a route cannot be added or removed without the document
//! following.

use serde_json::{Map, Value as Json, json};

use crate::problem::PROBLEM_JSON;

/// A `$ref` to a component schema.
fn schema(name: &str) -> Json {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A JSON response of `schema`.
fn json_response(description: &str, body: Json) -> Json {
    json!({"description": description, "content": {"application/json": {"schema": body}}})
}

/// A JSON request body of `schema`.
fn json_body(body: Json, required: bool) -> Json {
    json!({"required": required, "content": {"application/json": {"schema": body}}})
}

/// The problem responses an operation may give, by status.
fn problems(statuses: &[u16]) -> Map<String, Json> {
    let mut out = Map::new();
    for status in statuses {
        let description = match status {
            400 => "Invalid input (malformed JSON, wrong types, unknown fields, bad identifiers)",
            401 => "No valid bearer token",
            403 => "The caller may not do this",
            404 => "Not found",
            409 => "Conflicts with the current state",
            410 => "The cursor cannot be honoured: resync from scratch",
            413 => "A configured limit was exceeded (the problem names it)",
            415 => "The body is not application/json",
            503 => "Unavailable or timed out; retry after Retry-After",
            _ => "Error",
        };
        out.insert(
            status.to_string(),
            json!({"description": description, "content": {PROBLEM_JSON: {"schema": schema("Problem")}}}),
        );
    }
    out
}

/// An operation: summary, tag, parameters, optional body, success
/// responses and problem statuses.
struct Operation {
    id: &'static str,
    tag: &'static str,
    summary: String,
    params: Vec<Json>,
    body: Option<Json>,
    ok: Vec<(u16, Json)>,
    problems: &'static [u16],
    secured: bool,
}

impl Operation {
    fn render(self) -> Json {
        let mut responses = problems(self.problems);
        for (status, response) in self.ok {
            responses.insert(status.to_string(), response);
        }
        let mut op = json!({
            "operationId": self.id,
            "tags": [self.tag],
            "summary": self.summary,
            "responses": responses,
        });
        if !self.params.is_empty() {
            op["parameters"] = Json::Array(self.params);
        }
        if let Some(body) = self.body {
            op["requestBody"] = body;
        }
        if !self.secured {
            op["security"] = json!([]);
        }
        op
    }
}

fn path_param(name: &str, description: &str) -> Json {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn org_param() -> Json {
    path_param("org", "The org id (lower-case letters, digits and underscores, starting with a letter)")
}

const SYNC_PROBLEMS: &[u16] = &[400, 401, 403, 404, 410, 413, 415, 503];
const ADMIN_PROBLEMS: &[u16] = &[400, 401, 403, 404, 413, 415, 503];

fn no_content(description: &str) -> (u16, Json) {
    (204, json!({"description": description}))
}

fn redirect() -> (u16, Json) {
    (
        307,
        json!({"description": "The org is served by another deployment: repeat the request at Location",
               "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}}}),
    )
}

/// The sync operations, for the path form or the host form.
fn sync_ops(by_host: bool) -> [(&'static str, &'static str, Operation); 3] {
    let params = || if by_host { vec![] } else { vec![org_param()] };
    let suffix = if by_host { " (org named by the host {org}.<base domain>)" } else { "" };
    let (p, pl, pu) = if by_host {
        ("/v1/sync/profile", "/v1/sync/pull", "/v1/sync/push")
    } else {
        ("/v1/orgs/{org}/sync/profile", "/v1/orgs/{org}/sync/pull", "/v1/orgs/{org}/sync/push")
    };
    let id = |name: &'static str, host: &'static str| if by_host { host } else { name };
    let summary = |s: &str| format!("{s}{suffix}");
    [
        (
            p,
            "get",
            Operation {
                id: id("getSyncProfile", "getSyncProfileByHost"),
                tag: "sync",
                summary: summary("The caller's profiles, partitions and the schemas of their entities"),
                params: params(),
                body: None,
                ok: vec![(200, json_response("The caller's profile", schema("ProfileResponse"))), redirect()],
                problems: SYNC_PROBLEMS,
                secured: true,
            },
        ),
        (
            pl,
            "post",
            Operation {
                id: id("pull", "pullByHost"),
                tag: "sync",
                summary: summary(
                    "Changes of the caller's partitions after its cursor; with wait_ms, held open until something changes",
                ),
                params: params(),
                body: Some(json_body(schema("PullRequest"), true)),
                ok: vec![(200, json_response("A page of changes", schema("PullResponse"))), redirect()],
                problems: SYNC_PROBLEMS,
                secured: true,
            },
        ),
        (
            pu,
            "post",
            Operation {
                id: id("push", "pushByHost"),
                tag: "sync",
                summary: summary(
                    "Upload offline changes; a mutation id seen before returns its recorded result",
                ),
                params: params(),
                body: Some(json_body(schema("PushRequest"), true)),
                ok: vec![(200, json_response("One result per mutation", schema("PushResponse"))), redirect()],
                problems: &[400, 401, 403, 404, 409, 413, 415, 503],
                secured: true,
            },
        ),
    ]
}

fn operations() -> Vec<(&'static str, &'static str, Operation)> {
    let admin = |id, summary: &str, params, body, ok| Operation {
        id,
        tag: "admin",
        summary: summary.to_owned(),
        params,
        body,
        ok,
        problems: ADMIN_PROBLEMS,
        secured: true,
    };
    let ops_op = |id, summary: &str, ok| Operation {
        id,
        tag: "operations",
        summary: summary.to_owned(),
        params: vec![],
        body: None,
        ok,
        problems: &[503],
        secured: false,
    };
    let name_param = || path_param("name", "The profile name");
    let mut out: Vec<(&'static str, &'static str, Operation)> = vec![
        (
            "/healthz",
            "get",
            ops_op("healthz", "The process is up", vec![(200, json_response("Up", schema("Status")))]),
        ),
        (
            "/readyz",
            "get",
            ops_op(
                "readyz",
                "The store and the queue answer (503 naming what does not)",
                vec![(200, json_response("Ready", schema("Status")))],
            ),
        ),
        (
            "/metrics",
            "get",
            ops_op(
                "metrics",
                "Prometheus text: requests by route and status, latency histograms, rows served, queue depths. \
                 Public by default; a deployment may require a bearer token with a role (401/403) or turn it \
                 off (404)",
                vec![(
                    200,
                    json!({"description": "Prometheus text exposition format 0.0.4",
                           "content": {"text/plain": {"schema": {"type": "string"}}}}),
                )],
            ),
        ),
        (
            "/v1/openapi.json",
            "get",
            ops_op(
                "openapi",
                "This document",
                vec![(200, json_response("The OpenAPI document", json!({"type": "object"})))],
            ),
        ),
    ];
    out.extend(sync_ops(false));
    out.extend(sync_ops(true));
    out.extend([
        (
            "/v1/admin/orgs",
            "post",
            admin(
                "provision",
                "Enqueue provisioning of an org (creates its staging database and schedules its sync)",
                vec![],
                Some(json_body(schema("OrgConfig"), true)),
                vec![(202, json_response("The provisioning event was enqueued", schema("SendOutcome")))],
            ),
        ),
        (
            "/v1/admin/orgs",
            "get",
            admin(
                "listOrgs",
                "Every org staged here (operators)",
                vec![],
                None,
                vec![(200, json_response("The orgs", json!({"type": "array", "items": schema("OrgConfig")})))],
            ),
        ),
        (
            "/v1/admin/orgs/{org}",
            "delete",
            admin(
                "deprovision",
                "Enqueue deprovisioning of an org (removes every row of it)",
                vec![org_param()],
                None,
                vec![(202, json_response("The deprovisioning event was enqueued", schema("SendOutcome")))],
            ),
        ),
        (
            "/v1/admin/orgs/{org}/status",
            "get",
            admin(
                "orgStatus",
                "Per entity: source token, row count, last run, last error",
                vec![org_param()],
                None,
                vec![(200, json_response("The org's status", schema("OrgStatus")))],
            ),
        ),
        (
            "/v1/admin/orgs/{org}/profiles",
            "get",
            admin(
                "listProfiles",
                "The org's mobile offline profiles",
                vec![org_param()],
                None,
                vec![(200, json_response("The profiles", json!({"type": "array", "items": schema("Profile")})))],
            ),
        ),
        (
            "/v1/admin/orgs/{org}/profiles/{name}",
            "put",
            admin(
                "putProfile",
                "Save a profile (its name must be the path's); filters are checked against the staged schemas",
                vec![org_param(), name_param()],
                Some(json_body(schema("Profile"), true)),
                vec![(200, json_response("The profile as saved", schema("Profile")))],
            ),
        ),
        (
            "/v1/admin/orgs/{org}/profiles/{name}",
            "get",
            admin(
                "getProfile",
                "One profile",
                vec![org_param(), name_param()],
                None,
                vec![(200, json_response("The profile", schema("Profile")))],
            ),
        ),
        (
            "/v1/admin/orgs/{org}/profiles/{name}",
            "delete",
            admin(
                "deleteProfile",
                "Delete a profile; its partitions' members are removed from devices",
                vec![org_param(), name_param()],
                None,
                vec![no_content("Deleted")],
            ),
        ),
        (
            "/v1/admin/orgs/{org}/sync-now",
            "post",
            admin(
                "syncNow",
                "Make the staging sync of one entity (or all) due now",
                vec![org_param()],
                Some(json_body(schema("SyncNowRequest"), false)),
                vec![(202, json_response("Work items made due", schema("SyncNowResponse")))],
            ),
        ),
        (
            "/v1/admin/orgs/{org}/location",
            "put",
            admin(
                "putOrgLocation",
                "Record that another deployment serves the org: its requests are redirected there (operators)",
                vec![org_param()],
                Some(json_body(schema("OrgLocation"), true)),
                vec![no_content("Recorded")],
            ),
        ),
        (
            "/v1/admin/orgs/{org}/location",
            "delete",
            admin(
                "deleteOrgLocation",
                "Remove the org's directory entry: it is served here again (operators)",
                vec![org_param()],
                None,
                vec![no_content("Removed")],
            ),
        ),
        (
            "/v1/admin/queues",
            "get",
            admin(
                "queues",
                "Depths of the provisioning and data-sync queues (operators)",
                vec![],
                None,
                vec![(200, json_response("The queues", json!({"type": "array", "items": schema("QueueReport")})))],
            ),
        ),
        (
            "/v1/admin/queues/{queue}/dead-letters",
            "get",
            admin(
                "deadLetters",
                "Dead letters of a queue, newest first (operators)",
                vec![
                    path_param("queue", "provisioning or datasync"),
                    json!({"name": "limit", "in": "query", "required": false,
                           "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}),
                ],
                None,
                vec![(
                    200,
                    json_response("The dead letters", json!({"type": "array", "items": schema("DeadLetter")})),
                )],
            ),
        ),
    ]);
    out
}

/// The path templates and methods the document describes, in order.
#[cfg(test)]
pub(crate) fn documented_routes() -> Vec<(String, String)> {
    operations().into_iter().map(|(path, method, _)| (method.to_ascii_uppercase(), path.to_owned())).collect()
}

fn components() -> Json {
    let seq = json!({"type": "integer", "minimum": 0, "description": "An org-wide change sequence number"});
    let value = json!({"description": "An attribute value: null, string, number, boolean, or any JSON for json attributes; decimals, datetimes and UUIDs as strings"});
    let mut schemas = Map::new();
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object", "required": ["type", "title", "status"],
            "description": "RFC 9457 problem details; `type` is stable per error kind",
            "properties": {
                "type": {"type": "string", "format": "uri"}, "title": {"type": "string"},
                "status": {"type": "integer"}, "detail": {"type": "string"},
                "instance": {"type": "string"}, "limit": {"type": "string"},
                "max": {"type": "integer"}, "requested": {"type": "integer"},
                "position": {"type": "integer"}
            }
        }),
    );
    schemas.insert("Status".into(), json!({"type": "object", "properties": {"status": {"type": "string"}}, "additionalProperties": {"type": "string"}}));
    schemas.insert("Value".into(), json!(value));
    schemas.insert("Seq".into(), json!(seq));
    schemas.insert("AttributeType".into(), json!({
                "description": "A type name, or {\"lookup\": {\"target\": entity}}",
                "oneOf": [
                    {"type": "string", "enum": ["string", "integer", "decimal", "float", "boolean", "datetime", "uuid", "json"]},
                    {"type": "object", "required": ["lookup"], "properties": {"lookup": {"type": "object", "required": ["target"], "properties": {"target": {"type": "string"}}}}}
                ]
            }));
    schemas.insert(
        "Attribute".into(),
        json!({"type": "object", "required": ["name", "type"],
                "properties": {"name": {"type": "string"}, "type": schema("AttributeType")}}),
    );
    schemas.insert(
        "EntityMetadata".into(),
        json!({"type": "object", "required": ["name", "primary_key", "attributes"],
                "properties": {"name": {"type": "string"}, "primary_key": {"type": "string"},
                    "attributes": {"type": "array", "items": schema("Attribute")}}}),
    );
    schemas.insert(
        "PartitionInfo".into(),
        json!({"type": "object", "required": ["key", "entity"],
                "properties": {"key": {"type": "string"}, "entity": {"type": "string"}}}),
    );
    schemas.insert("ProfileResponse".into(), json!({"type": "object", "required": ["org", "user_id", "profiles", "partitions", "schema_version", "schemas"],
                "properties": {"org": {"type": "string"}, "user_id": {"type": "string"},
                    "profiles": {"type": "array", "items": {"type": "string"}},
                    "partitions": {"type": "array", "items": schema("PartitionInfo")},
                    "schema_version": {"type": "integer"},
                    "schemas": {"type": "array", "items": schema("EntityMetadata")}}}));
    schemas.insert("PullRequest".into(), json!({"type": "object", "additionalProperties": false,
                "properties": {"cursor": {"type": "string", "description": "The previous response's cursor; absent on a first pull"},
                    "limit": {"type": "integer", "minimum": 1, "description": "Most rows in this page (capped by max_rows_per_page)"},
                    "wait_ms": {"type": "integer", "minimum": 0, "description": "Live mode: wait up to this long for a change (capped by the server)"}}}));
    schemas.insert("Batch".into(), json!({"type": "object", "required": ["entity", "partition", "columns", "puts", "versions", "removes"],
                "properties": {"entity": {"type": "string"}, "partition": {"type": "string"},
                    "columns": {"type": "array", "items": {"type": "string"}},
                    "puts": {"type": "array", "items": {"type": "array", "items": schema("Value")}},
                    "versions": {"type": "array", "items": schema("Seq")},
                    "removes": {"type": "array", "items": {"type": "string"}}}}));
    schemas.insert(
        "Checksum".into(),
        json!({"type": "object", "required": ["sum", "count"],
                "properties": {"sum": {"type": "integer"}, "count": {"type": "integer"}}}),
    );
    schemas.insert("PullResponse".into(), json!({"type": "object", "required": ["schema_version", "partitions", "batches", "cursor", "has_more"],
                "properties": {"schema_version": {"type": "integer"},
                    "schemas": {"type": "array", "items": schema("EntityMetadata")},
                    "partitions": {"type": "array", "items": schema("PartitionInfo")},
                    "batches": {"type": "array", "items": schema("Batch")},
                    "checksums": {"type": "object", "additionalProperties": schema("Checksum")},
                    "cursor": {"type": "string"}, "has_more": {"type": "boolean"}}}));
    schemas.insert(
        "ClientMutation".into(),
        json!({"type": "object", "additionalProperties": false, "required": ["id", "entity", "op", "row_id"],
                "properties": {"id": {"type": "string", "format": "uuid"}, "entity": {"type": "string"},
                    "op": {"type": "string", "enum": ["insert", "update", "delete"]},
                    "row_id": {"type": "string"}, "base_version": schema("Seq"),
                    "values": {"type": "object", "additionalProperties": schema("Value")}}}),
    );
    schemas.insert(
        "PushRequest".into(),
        json!({"type": "object", "additionalProperties": false, "required": ["mutations"],
                "properties": {"mutations": {"type": "array", "items": schema("ClientMutation")}}}),
    );
    schemas.insert("Row".into(), json!({"type": "object", "required": ["id", "values"],
                "properties": {"id": {"type": "string"}, "values": {"type": "object", "additionalProperties": schema("Value")}}}));
    schemas.insert(
        "MutationResult".into(),
        json!({"type": "object", "required": ["id", "status"],
                "properties": {"id": {"type": "string", "format": "uuid"},
                    "status": {"type": "string", "enum": ["applied", "conflict", "rejected"]},
                    "row": schema("Row"), "version": schema("Seq"), "server_row": schema("Row"),
                    "reason": {"type": "string"}}}),
    );
    schemas.insert(
        "PushResponse".into(),
        json!({"type": "object", "required": ["results", "write_checkpoint"],
                "properties": {"results": {"type": "array", "items": schema("MutationResult")},
                    "write_checkpoint": schema("Seq")}}),
    );
    schemas.insert("OrgSourceConfig".into(), json!({"type": "object", "required": ["kind"],
                "properties": {"kind": {"type": "string"}, "settings": {"type": "object", "additionalProperties": {"type": "string"}}}}));
    schemas.insert(
        "OrgConfig".into(),
        json!({"type": "object", "required": ["id", "source"],
                "properties": {"id": {"type": "string"}, "source": schema("OrgSourceConfig"),
                    "sync_interval_secs": {"type": "integer", "minimum": 1, "default": 60},
                    "entity_intervals": {"type": "object", "additionalProperties": {"type": "integer"}}}}),
    );
    schemas.insert("SendOutcome".into(), json!({"type": "object", "required": ["outcome", "message_id"],
                "properties": {"outcome": {"type": "string", "enum": ["enqueued", "deduplicated"]}, "message_id": {"type": "string"}}}));
    schemas.insert("EntityStatus".into(), json!({"type": "object",
                "properties": {"entity": {"type": "string"}, "schema_hash": {"type": "string"}, "rows": {"type": "integer"},
                    "token": {"type": ["string", "null"]}, "last_run": {"type": ["string", "null"], "format": "date-time"},
                    "last_success": {"type": ["string", "null"], "format": "date-time"},
                    "last_error": {"type": ["string", "null"]}, "last_rows": {"type": "integer"}}}));
    schemas.insert("OrgStatus".into(), json!({"type": "object", "required": ["org", "schema_version", "head", "entities"],
                "properties": {"org": {"type": "string"}, "schema_version": {"type": "integer"}, "head": schema("Seq"),
                    "entities": {"type": "array", "items": schema("EntityStatus")}}}));
    schemas.insert("ProfileItem".into(), json!({"type": "object", "required": ["entity"],
                "properties": {"id": {"type": "string"}, "entity": {"type": "string"},
                    "filter": {"type": "string", "description": "OData $filter subset; @user.id and @user.<claim> parameters"},
                    "columns": {"type": "array", "items": {"type": "string"}},
                    "allow_upload": {"type": "boolean", "default": false},
                    "conflict": {"description": "merge (default), client-wins, server-wins, or {\"custom\": {\"resolver\": name}}"}}}));
    schemas.insert("Profile".into(), json!({"type": "object", "required": ["name", "roles", "items"],
                "properties": {"name": {"type": "string"}, "roles": {"type": "array", "items": {"type": "string"}},
                    "items": {"type": "array", "items": schema("ProfileItem")}}}));
    schemas.insert("SyncNowRequest".into(), json!({"type": "object", "additionalProperties": false,
                "properties": {"entity": {"type": "string", "description": "One entity; absent: every staged entity"}}}));
    schemas.insert(
        "SyncNowResponse".into(),
        json!({"type": "object", "required": ["enqueued"], "properties": {"enqueued": {"type": "integer"}}}),
    );
    schemas.insert(
        "OrgLocation".into(),
        json!({"type": "object", "additionalProperties": false, "required": ["base_url"],
                "properties": {"base_url": {"type": "string", "format": "uri"}}}),
    );
    schemas.insert("QueueDepth".into(), json!({"type": "object",
                "properties": {"ready": {"type": "integer"}, "delayed": {"type": "integer"}, "leased": {"type": "integer"}, "dead": {"type": "integer"}}}));
    schemas.insert(
        "QueueReport".into(),
        json!({"type": "object", "required": ["queue", "depth"],
                "properties": {"queue": {"type": "string"}, "depth": schema("QueueDepth")}}),
    );
    schemas.insert("DeadLetter".into(), json!({"type": "object",
                "properties": {"message_id": {"type": "string"},
                    "body": {"description": "The message body: its JSON, or text, or base64 (see body_encoding)"},
                    "body_encoding": {"type": "string", "enum": ["json", "text", "base64"]},
                    "dedup_key": {"type": ["string", "null"]}, "delivery_count": {"type": "integer"},
                    "reason": {"type": "string"}, "dead_at": {"type": "string", "format": "date-time"}}}));
    json!({
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": schemas,
    })
}

/// The OpenAPI 3.1 document of every route of [`router`](crate::router).
pub fn document() -> Json {
    let mut paths = Map::new();
    for (path, method, op) in operations() {
        let entry = paths.entry(path.to_owned()).or_insert_with(|| json!({}));
        entry[method] = op.render();
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "offline-sync",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Mobile-offline sync: the sync protocol v1 for devices, admin endpoints for operators. Errors are application/problem+json (RFC 9457) with a stable type per error kind."
        },
        "security": [{"bearer": []}],
        "tags": [
            {"name": "sync", "description": "The device protocol"},
            {"name": "admin", "description": "Provisioning, profiles, status and queues (admin or operator role)"},
            {"name": "operations", "description": "Health, readiness, metrics and this document"}
        ],
        "paths": paths,
        "components": components(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let routed: std::collections::BTreeSet<(String, String)> = crate::router::routes()
            .list()
            .iter()
            .map(|(method, path)| (method.as_str().to_owned(), (*path).to_owned()))
            .collect();
        let documented: std::collections::BTreeSet<(String, String)> =
            documented_routes().into_iter().collect();
        assert_eq!(documented.len(), documented_routes().len(), "an operation is documented twice");
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let phantom: Vec<_> = documented.difference(&routed).collect();
        assert!(undocumented.is_empty(), "routes missing from the OpenAPI document: {undocumented:?}");
        assert!(phantom.is_empty(), "documented operations the router lacks: {phantom:?}");
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            assert!(schemas.contains_key(&name), "dangling $ref to {name}");
        }
        let ids: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap())
            .collect();
        let unique: std::collections::BTreeSet<&&str> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "operation ids must be unique: {ids:?}");
    }
}
