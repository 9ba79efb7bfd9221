//! `push`: offline changes written back to the system of record.

use std::collections::{BTreeMap, HashSet};

use sha2::{Digest, Sha256};

use super::{CallerView, SyncService};
use crate::conflict::{ConflictContext, Resolution};
use crate::error::{Error, ErrorKind, Result};
use crate::filter::MembershipPlanner;
use crate::ids::{ColumnName, OrgId};
use crate::partition::PartitionKey;
use crate::principal::Principal;
use crate::profile::{ConflictPolicy, ProfileItem};
use crate::protocol::{ClientMutation, MutationOutcome, MutationResult, PushRequest, PushResponse};
use crate::row::{ChangePage, Mutation, MutationOp, Row, StagedRow};
use crate::schema::EntityMetadata;
use crate::source::MetadataSource;
use crate::staging::MutationRecord;
use crate::value::Value;

/// A content fingerprint of a mutation (everything but its id).
fn fingerprint(m: &ClientMutation) -> String {
    let canonical = serde_json::json!({
        "entity": m.entity, "op": m.op, "row_id": m.row_id, "base_version": m.base_version, "values": m.values,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

struct Checked {
    mutation: ClientMutation,
    fingerprint: String,
    /// The values coerced to their columns' types.
    values: BTreeMap<ColumnName, Value>,
}

impl SyncService {
    /// `POST push`: applies each mutation in order and returns one result
    /// per mutation and a write checkpoint.
    ///
    /// The whole request is validated first — entities, columns, value
    /// types, row ids, duplicate ids in the request, and ids reused with
    /// different content — and a request that fails changes nothing
    /// (`InvalidInput`, or `Conflict` for a reused id). A mutation seen
    /// before returns its recorded result and is not applied again. Then per
    /// mutation: authorization by the caller's profile items (uploads
    /// allowed; updates and deletes only of rows the caller holds), conflict
    /// detection by `base_version` under the item's policy, write-back
    /// through the source, and staging of the source's answer through the
    /// same path as ingestion, so membership stays right.
    pub async fn push(
        &self,
        principal: &Principal,
        org: &OrgId,
        request: &PushRequest,
    ) -> Result<PushResponse> {
        let max = self.inner.config.max_mutations_per_push;
        if request.mutations.len() > max {
            return Err(Error::limit("max_mutations_per_push", max as u64, request.mutations.len() as u64));
        }
        let view = self.caller_view(principal, org).await?;
        let checked = self.validate_push(&view, request).await?;
        let mut results = Vec::with_capacity(checked.len());
        for c in checked {
            if let Some(rec) = view.org.mutation_result(&c.mutation.id).await? {
                results.push(MutationResult { id: c.mutation.id, outcome: rec.outcome });
                continue;
            }
            let outcome = self.apply_one(principal, org, &view, &c).await?;
            let checkpoint = view.org.head().await?;
            let record =
                MutationRecord { fingerprint: c.fingerprint.clone(), outcome: outcome.clone(), checkpoint };
            view.org.record_mutation(&c.mutation.id, &record).await?;
            results.push(MutationResult { id: c.mutation.id, outcome });
        }
        Ok(PushResponse { results, write_checkpoint: view.org.head().await? })
    }

    async fn validate_push(&self, view: &CallerView, request: &PushRequest) -> Result<Vec<Checked>> {
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(request.mutations.len());
        for (i, m) in request.mutations.iter().enumerate() {
            let at = |msg: String| Error::invalid(format!("mutation {i} ({}): {msg}", m.id));
            if !seen.insert(m.id) {
                return Err(at("the same mutation id appears twice in one request".into()));
            }
            let meta = view.schema(&m.entity).ok_or_else(|| at(format!("unknown entity '{}'", m.entity)))?;
            let canonical_id = meta.parse_row_id(m.row_id.as_str()).map_err(|e| at(e.to_string()))?;
            if m.op == MutationOp::Delete && !m.values.is_empty() {
                return Err(at("a delete carries no values".into()));
            }
            let mut values = BTreeMap::new();
            for (col, v) in &m.values {
                let attr = meta
                    .attribute(col.as_str())
                    .ok_or_else(|| at(format!("entity '{}' has no column '{col}'", m.entity)))?;
                let v = v.clone().coerce(&attr.ty).map_err(|e| at(format!("column '{col}': {e}")))?;
                if *col == meta.primary_key && v.canonical_text() != canonical_id.as_str() {
                    return Err(at(format!("column '{col}' differs from row_id")));
                }
                values.insert(col.clone(), v);
            }
            let fp = fingerprint(m);
            if let Some(rec) = view.org.mutation_result(&m.id).await?
                && rec.fingerprint != fp
            {
                return Err(Error::conflict(format!(
                    "mutation id {} was used before for a different change; use a new id for a new change",
                    m.id
                )));
            }
            let mut mutation = m.clone();
            mutation.row_id = canonical_id;
            out.push(Checked { mutation, fingerprint: fp, values });
        }
        Ok(out)
    }

    async fn apply_one(
        &self,
        principal: &Principal,
        org: &OrgId,
        view: &CallerView,
        c: &Checked,
    ) -> Result<MutationOutcome> {
        let m = &c.mutation;
        let Some(meta) = view.schema(&m.entity) else {
            return Ok(rejected(format!("unknown entity '{}'", m.entity)));
        };
        let items = view.items_for(principal, &m.entity);
        let Some(item) = items.iter().find(|i| i.allow_upload) else {
            return Ok(rejected(format!("your profile does not allow uploads to '{}'", m.entity)));
        };
        let server = view.org.row(&m.entity, &m.row_id).await?;
        if let Some(s) = &server
            && m.op != MutationOp::Insert
            && !holds(view, meta, &s.row)?
        {
            return Ok(rejected(format!(
                "row '{}' of '{}' is not in any of your partitions",
                m.row_id, m.entity
            )));
        }
        if m.op != MutationOp::Insert && server.is_none() && m.base_version.is_none() {
            return Ok(MutationOutcome::Conflict {
                server_row: None,
                reason: "the row does not exist on the server".into(),
            });
        }
        let conflicting = match (m.op, m.base_version, &server) {
            (MutationOp::Insert, _, Some(_)) => true,
            (MutationOp::Insert, _, None) => false,
            (_, Some(base), Some(s)) => s.version != base,
            (_, Some(_), None) => true,
            (_, None, _) => false,
        };
        let mut values = c.values.clone();
        let mut op = m.op;
        if conflicting {
            match resolve(self, item, meta, &server, m, &c.values, principal).await? {
                Decision::Write(v, o) => {
                    values = v;
                    op = o;
                }
                Decision::Keep(reason) => {
                    return Ok(MutationOutcome::Conflict { server_row: server.map(|s| s.row), reason });
                }
                Decision::Reject(reason) => return Ok(rejected(reason)),
            }
        }
        let config = self.inner.store.org_config(org).await?;
        let source = self.inner.sources.get(org, &config.source).await?;
        let mutation = Mutation { op, row_id: m.row_id.clone(), values };
        self.write_back(view, source.as_ref(), meta, &mutation, server).await
    }

    async fn write_back(
        &self,
        view: &CallerView,
        source: &dyn MetadataSource,
        meta: &EntityMetadata,
        mutation: &Mutation,
        server: Option<StagedRow>,
    ) -> Result<MutationOutcome> {
        match source.apply(&meta.name, mutation).await {
            Ok(Some(row)) => {
                let row = match meta.check_row(row.clone()) {
                    Ok(r) => r,
                    // The source's schema moved ahead of staging: apply the drift now.
                    Err(_) => {
                        let current =
                            source.entities().await?.into_iter().find(|m| m.name == meta.name).ok_or_else(
                                || Error::not_found(format!("entity '{}' at the source", meta.name)),
                            )?;
                        view.org.apply_schema(&current).await?;
                        current.check_row(row)?
                    }
                };
                let page = ChangePage { upserts: vec![row.clone()], ..ChangePage::default() };
                view.org.apply_changes(&meta.name, page).await?;
                let version = view.org.row(&meta.name, &row.id).await?.map(|s| s.version).unwrap_or_default();
                Ok(MutationOutcome::Applied { row: Some(row), version })
            }
            Ok(None) => {
                let page = ChangePage { deletes: vec![mutation.row_id.clone()], ..ChangePage::default() };
                let outcome = view.org.apply_changes(&meta.name, page).await?;
                Ok(MutationOutcome::Applied { row: None, version: outcome.head })
            }
            Err(e) => match e.kind() {
                ErrorKind::Conflict => {
                    Ok(MutationOutcome::Conflict { server_row: server.map(|s| s.row), reason: e.to_string() })
                }
                ErrorKind::Forbidden | ErrorKind::InvalidInput | ErrorKind::NotFound => {
                    Ok(rejected(e.to_string()))
                }
                _ => Err(e),
            },
        }
    }
}

/// Whether the caller holds `row` through any of its partitions.
fn holds(view: &CallerView, meta: &EntityMetadata, row: &Row) -> Result<bool> {
    let planner = MembershipPlanner::new(meta, &view.profiles)?;
    let held: HashSet<PartitionKey> = view.partitions.iter().map(|p| p.key()).collect();
    Ok(planner.partitions(row).iter().any(|k| held.contains(k)))
}

fn rejected(reason: String) -> MutationOutcome {
    MutationOutcome::Rejected { reason }
}

enum Decision {
    Write(BTreeMap<ColumnName, Value>, MutationOp),
    Keep(String),
    Reject(String),
}

/// Applies the item's conflict policy to an upload whose base version is
/// not the server's current version.
async fn resolve(
    service: &SyncService,
    item: &ProfileItem,
    meta: &EntityMetadata,
    server: &Option<StagedRow>,
    m: &ClientMutation,
    values: &BTreeMap<ColumnName, Value>,
    principal: &Principal,
) -> Result<Decision> {
    let values = values.clone();
    Ok(match &item.conflict {
        ConflictPolicy::ServerWins => {
            Decision::Keep("the server's row changed since your edit (server-wins)".into())
        }
        ConflictPolicy::Merge => match (m.op, server) {
            // The client's changed columns on top of the server's row.
            (MutationOp::Update, Some(_)) => Decision::Write(values, MutationOp::Update),
            (MutationOp::Delete, Some(_)) => Decision::Write(BTreeMap::new(), MutationOp::Delete),
            (MutationOp::Insert, Some(_)) => Decision::Write(values, MutationOp::Update),
            (_, None) => Decision::Keep("the row was deleted on the server".into()),
        },
        ConflictPolicy::ClientWins => match (m.op, server) {
            (MutationOp::Delete, None) => Decision::Keep("the row was already deleted on the server".into()),
            (MutationOp::Delete, Some(_)) => Decision::Write(BTreeMap::new(), MutationOp::Delete),
            (_, Some(_)) => Decision::Write(values, MutationOp::Update),
            // Deleted on the server: the client's row comes back.
            (_, None) => Decision::Write(values, MutationOp::Insert),
        },
        ConflictPolicy::Custom { resolver } => {
            let Some(r) = service.inner.resolvers.get(resolver) else {
                return Ok(Decision::Reject(format!(
                    "conflict resolver '{resolver}' is not registered on this server"
                )));
            };
            let ctx = ConflictContext {
                entity: meta.clone(),
                server: server.clone(),
                mutation: m.clone(),
                principal: principal.clone(),
            };
            match r.resolve(ctx).await? {
                Resolution::Apply(v) => {
                    let op = if server.is_some() { MutationOp::Update } else { MutationOp::Insert };
                    Decision::Write(v, op)
                }
                Resolution::KeepServer => {
                    Decision::Keep(format!("resolver '{resolver}' kept the server's row"))
                }
                Resolution::Reject(reason) => Decision::Reject(reason),
            }
        }
    })
}
