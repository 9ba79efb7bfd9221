//! Creating and migrating the typed entity tables from the server's schemas.

use rusqlite::{Connection, OptionalExtension, params};
use sync_core::{EntityMetadata, Value};

use crate::error::{ClientError, Result};
use crate::sql::{SqlValue, column_type, quote, read_value};

/// What applying a schema did to the local table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SchemaEffect {
    /// Nothing to do.
    Unchanged,
    /// The table was created.
    Created,
    /// The table was altered. `repair`: stored values may differ from the
    /// server's (a column changed type or the key changed), so the entity's
    /// partitions must be read again.
    Altered { repair: bool },
}

/// The table holding an entity's rows. The app reads them through a view
/// named after the entity ([`view_sql`]).
pub(crate) fn data_table(entity: &str) -> String {
    format!("sync:rows:{entity}")
}

/// The data table's stable row number: memberships refer to rows by it, so
/// a first download appends to the membership index instead of inserting
/// at random places (the key is usually a random UUID).
pub(crate) const RID: &str = "\"sync:rowid\"";
/// Set on a row a partition holds but a pending edit deletes: kept for its
/// membership, not shown.
pub(crate) const HIDDEN: &str = "\"sync:hidden\"";

fn create_sql(meta: &EntityMetadata, table: &str) -> String {
    let mut cols = vec![format!("{RID} INTEGER PRIMARY KEY"), format!("{HIDDEN} INTEGER NOT NULL DEFAULT 0")];
    for a in &meta.attributes {
        let mut c = format!("{} {}", quote(a.name.as_str()), column_type(&a.ty));
        if a.name == meta.primary_key {
            c.push_str(" NOT NULL UNIQUE");
        }
        cols.push(c);
    }
    format!("CREATE TABLE {} ({})", quote(table), cols.join(", "))
}

/// The view the app reads: the entity's columns of its visible rows.
fn view_sql(meta: &EntityMetadata) -> String {
    let cols: Vec<String> = meta.attributes.iter().map(|a| quote(a.name.as_str())).collect();
    format!(
        "CREATE VIEW {} AS SELECT {} FROM {} WHERE {HIDDEN} = 0",
        quote(meta.name.as_str()),
        cols.join(", "),
        quote(&data_table(meta.name.as_str()))
    )
}

fn recreate_view(conn: &Connection, meta: &EntityMetadata) -> Result<()> {
    conn.execute_batch(&format!("DROP VIEW IF EXISTS {}", quote(meta.name.as_str())))?;
    conn.execute_batch(&view_sql(meta))?;
    Ok(())
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
            [name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Brings the table of `new.name` in line with `new`, given the schema last
/// applied (`old`), and records `new` in `sync:schemas`.
pub(crate) fn apply_schema(
    conn: &Connection,
    old: Option<&EntityMetadata>,
    new: &EntityMetadata,
) -> Result<SchemaEffect> {
    new.validate().map_err(|e| ClientError::protocol(format!("schema of '{}': {e}", new.name)))?;
    let name = new.name.as_str();
    let effect = match old {
        Some(old) if old == new => return Ok(SchemaEffect::Unchanged),
        None => {
            if table_exists(conn, name)? || table_exists(conn, &data_table(name))? {
                return Err(ClientError::corrupt(format!(
                    "a table or view named '{name}' exists but was not made by the sync client; \
                     rename it or use another database file"
                )));
            }
            conn.execute_batch(&create_sql(new, &data_table(name)))?;
            conn.execute_batch(&view_sql(new))?;
            SchemaEffect::Created
        }
        Some(old) => migrate(conn, old, new)?,
    };
    conn.execute(
        "INSERT INTO \"sync:schemas\" (entity, hash, schema) VALUES (?1, ?2, ?3) \
         ON CONFLICT (entity) DO UPDATE SET hash = excluded.hash, schema = excluded.schema",
        params![name, new.schema_hash(), serde_json::to_string(new)?],
    )?;
    conn.flush_prepared_statement_cache();
    Ok(effect)
}

fn migrate(conn: &Connection, old: &EntityMetadata, new: &EntityMetadata) -> Result<SchemaEffect> {
    let name = new.name.as_str();
    let table = data_table(name);
    let key_same = old.primary_key == new.primary_key && old.key_type().ok() == new.key_type().ok();
    conn.execute_batch(&format!("DROP VIEW IF EXISTS {}", quote(name)))?;
    if !key_same {
        // Rows cannot be carried over under another key: start the table
        // afresh (memberships of its rows go with it) and let the repair read
        // the entity's partitions again.
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote(&table)))?;
        conn.execute_batch(&create_sql(new, &table))?;
        conn.execute(
            "DELETE FROM \"sync:membership\" WHERE pid IN (SELECT pid FROM \"sync:partitions\" WHERE entity = ?1)",
            [name],
        )?;
        conn.execute("UPDATE \"sync:partitions\" SET sum = 0, count = 0 WHERE entity = ?1", [name])?;
        recreate_view(conn, new)?;
        return Ok(SchemaEffect::Altered { repair: true });
    }
    let only_added = old.attributes.iter().all(|a| new.attribute(a.name.as_str()) == Some(a));
    if only_added {
        for a in &new.attributes {
            if old.attribute(a.name.as_str()).is_none() {
                conn.execute_batch(&format!(
                    "ALTER TABLE {} ADD COLUMN {} {}",
                    quote(&table),
                    quote(a.name.as_str()),
                    column_type(&a.ty)
                ))?;
            }
        }
        recreate_view(conn, new)?;
        return Ok(SchemaEffect::Altered { repair: false });
    }
    // Columns were removed or retyped: rebuild the table under the same row
    // numbers, converting the values that convert (the others become null
    // until the repair brings the server's values).
    let tmp = format!("{table}:rebuild");
    conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote(&tmp)))?;
    conn.execute_batch(&create_sql(new, &tmp))?;
    let kept: Vec<_> = new.attributes.iter().filter(|a| old.attribute(a.name.as_str()).is_some()).collect();
    let retyped = kept.iter().any(|a| old.attribute(a.name.as_str()).map(|o| &o.ty) != Some(&a.ty));
    {
        let mut names = vec![RID.to_owned(), HIDDEN.to_owned()];
        names.extend(kept.iter().map(|a| quote(a.name.as_str())));
        let select = format!("SELECT {} FROM {}", names.join(", "), quote(&table));
        let insert = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quote(&tmp),
            names.join(", "),
            (1..=names.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
        );
        let mut read = conn.prepare(&select)?;
        let mut write = conn.prepare(&insert)?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let mut vals: Vec<Value> = Vec::with_capacity(names.len());
            vals.push(Value::Integer(r.get::<_, i64>(0)?));
            vals.push(Value::Integer(r.get::<_, i64>(1)?));
            for (i, a) in kept.iter().enumerate() {
                let old_ty = old.attribute(a.name.as_str()).map(|o| &o.ty).unwrap_or(&a.ty);
                let v = read_value(r.get_ref(i + 2)?, old_ty).unwrap_or(Value::Null);
                vals.push(convert(v, &a.ty));
            }
            write.execute(rusqlite::params_from_iter(vals.iter().map(SqlValue)))?;
        }
    }
    conn.execute_batch(&format!("DROP TABLE {}", quote(&table)))?;
    conn.execute_batch(&format!("ALTER TABLE {} RENAME TO {}", quote(&tmp), quote(&table)))?;
    recreate_view(conn, new)?;
    Ok(SchemaEffect::Altered { repair: retyped })
}

/// Converts a value to another attribute type where it has a meaning there
/// (`"12"` → 12); otherwise null.
fn convert(v: Value, ty: &sync_core::AttributeType) -> Value {
    match v.clone().coerce(ty) {
        Ok(v) => v,
        Err(_) => match v {
            Value::String(s) => serde_json::from_str::<serde_json::Value>(s.trim())
                .ok()
                .and_then(|j| Value::from_json(j).coerce(ty).ok())
                .unwrap_or(Value::Null),
            other => Value::String(other.canonical_text()).coerce(ty).unwrap_or(Value::Null),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::{Attribute, AttributeType, ColumnName, EntityName};

    fn meta(attrs: &[(&str, AttributeType)]) -> EntityMetadata {
        EntityMetadata::new(
            EntityName::new("order").unwrap(),
            ColumnName::new("id").unwrap(),
            attrs.iter().map(|(n, t)| Attribute::new(ColumnName::new(*n).unwrap(), t.clone())).collect(),
        )
        .unwrap()
    }

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE \"sync:schemas\" (entity TEXT PRIMARY KEY NOT NULL, hash TEXT NOT NULL, schema TEXT NOT NULL);
             CREATE TABLE \"sync:partitions\" (pid INTEGER PRIMARY KEY, entity TEXT, sum INTEGER, count INTEGER);
             CREATE TABLE \"sync:membership\" (pid INTEGER, rid INTEGER, version INTEGER);",
        )
        .unwrap();
        c
    }

    #[test]
    fn creates_adds_and_rebuilds() {
        let c = conn();
        let v1 = meta(&[("id", AttributeType::Integer), ("qty", AttributeType::String)]);
        assert_eq!(apply_schema(&c, None, &v1).unwrap(), SchemaEffect::Created);
        c.execute("INSERT INTO \"sync:rows:order\" (id, qty) VALUES (1, '12'), (2, 'many')", []).unwrap();
        assert_eq!(apply_schema(&c, Some(&v1), &v1).unwrap(), SchemaEffect::Unchanged);
        let v2 = meta(&[
            ("id", AttributeType::Integer),
            ("qty", AttributeType::String),
            ("note", AttributeType::String),
        ]);
        assert_eq!(apply_schema(&c, Some(&v1), &v2).unwrap(), SchemaEffect::Altered { repair: false });
        let v3 = meta(&[("id", AttributeType::Integer), ("qty", AttributeType::Integer)]);
        assert_eq!(apply_schema(&c, Some(&v2), &v3).unwrap(), SchemaEffect::Altered { repair: true });
        let rows: Vec<(i64, Option<i64>)> = c
            .prepare("SELECT id, qty FROM \"order\" ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(rows, vec![(1, Some(12)), (2, None)]);
    }

    #[test]
    fn refuses_a_foreign_table() {
        let c = conn();
        c.execute_batch("CREATE TABLE \"order\" (x)").unwrap();
        let v1 = meta(&[("id", AttributeType::Integer)]);
        assert!(matches!(apply_schema(&c, None, &v1), Err(ClientError::Corrupt(_))));
    }
}
