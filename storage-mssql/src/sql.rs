//! T-SQL generation: pure functions, no I/O.
//!
//! Every identifier is a validated `sync-core` name (`[A-Za-z_][A-Za-z0-9_]*`)
//! and is bracket-quoted by [`quote`] with `]` doubled, so a name that is a
//! T-SQL keyword stays usable and a name that somehow slipped past
//! validation still cannot break out of its brackets. Every value is a bound
//! parameter (`@P1`, `@P2`, … in the order the caller binds them); the only
//! literals are constants of this module.

use std::fmt::Write as _;

use sync_core::{Attribute, AttributeType, EntityMetadata, Result};

/// The column of every staging table holding the seq of the row's last change.
pub const VERSION_COLUMN: &str = "_sync_version";

/// Bracket-quotes an identifier, doubling every `]`.
///
/// ```
/// assert_eq!(storage_mssql::sql::quote("account"), "[account]");
/// assert_eq!(storage_mssql::sql::quote("a]b"), "[a]]b]");
/// ```
pub fn quote(ident: &str) -> String {
    let mut s = String::with_capacity(ident.len() + 2);
    s.push('[');
    for c in ident.chars() {
        if c == ']' {
            s.push(']');
        }
        s.push(c);
    }
    s.push(']');
    s
}

/// `[schema].[table]`, both validated identifiers.
pub fn qualified(schema: &str, table: &str) -> Result<String> {
    sync_core::ids::validate_identifier("schema", schema)?;
    sync_core::ids::validate_identifier("table", table)?;
    Ok(format!("{}.{}", quote(schema), quote(table)))
}

/// The T-SQL type of an attribute type. `key` selects the indexable form of
/// strings (`nvarchar(450)`: `nvarchar(max)` cannot be a key).
pub fn column_type(ty: &AttributeType, key: bool) -> &'static str {
    match ty {
        AttributeType::String if key => "nvarchar(450)",
        AttributeType::String => "nvarchar(max)",
        AttributeType::Integer => "bigint",
        AttributeType::Decimal => "decimal(38,10)",
        AttributeType::Float => "float",
        AttributeType::Boolean => "bit",
        AttributeType::DateTime => "datetimeoffset(7)",
        AttributeType::Uuid | AttributeType::Lookup { .. } => "uniqueidentifier",
        AttributeType::Json => "nvarchar(max)",
    }
}

fn column_def(attr: &Attribute, key: bool) -> String {
    let null = if key { "NOT NULL" } else { "NULL" };
    format!("{} {} {null}", quote(attr.name.as_str()), column_type(&attr.ty, key))
}

/// `CREATE TABLE` of an entity's staging table: one column per attribute,
/// the primary key, and [`VERSION_COLUMN`].
pub fn create_entity_table(schema: &str, meta: &EntityMetadata) -> Result<String> {
    meta.validate()?;
    let table = qualified(schema, meta.name.as_str())?;
    let mut cols = Vec::with_capacity(meta.attributes.len() + 1);
    for a in &meta.attributes {
        cols.push(column_def(a, a.name == meta.primary_key));
    }
    cols.push(format!("{} bigint NOT NULL", quote(VERSION_COLUMN)));
    let pk = quote(&format!("PK_{}", meta.name.as_str()));
    Ok(format!(
        "CREATE TABLE {table} ({}, CONSTRAINT {pk} PRIMARY KEY CLUSTERED ({}))",
        cols.join(", "),
        quote(meta.primary_key.as_str())
    ))
}

/// `ALTER TABLE … ADD` of a new (nullable) attribute.
pub fn add_column(schema: &str, entity: &str, attr: &Attribute) -> Result<String> {
    Ok(format!("ALTER TABLE {} ADD {}", qualified(schema, entity)?, column_def(attr, false)))
}

/// `ALTER TABLE … DROP COLUMN` of a removed attribute.
pub fn drop_column(schema: &str, entity: &str, column: &str) -> Result<String> {
    sync_core::ids::validate_identifier("column", column)?;
    Ok(format!("ALTER TABLE {} DROP COLUMN {}", qualified(schema, entity)?, quote(column)))
}

/// The statements that retype a column, keeping values that convert:
/// add a temporary column of the new type, copy with `TRY_CONVERT` (values
/// that do not convert become null), drop the old column, rename the new
/// one. The rename takes two bound parameters: `@P1` the quoted
/// `[schema].[table].[tmp]` and `@P2` the column name, as
/// [`retype_rename_params`] returns them.
pub fn retype_column(schema: &str, entity: &str, attr: &Attribute) -> Result<Vec<String>> {
    let table = qualified(schema, entity)?;
    let col = attr.name.as_str();
    let tmp = format!("{col}__retype");
    let ty = column_type(&attr.ty, false);
    Ok(vec![
        format!("ALTER TABLE {table} ADD {} {ty} NULL", quote(&tmp)),
        format!("UPDATE {table} SET {} = TRY_CONVERT({ty}, {})", quote(&tmp), quote(col)),
        format!("ALTER TABLE {table} DROP COLUMN {}", quote(col)),
        "EXEC sp_rename @P1, @P2, N'COLUMN'".to_owned(),
    ])
}

/// The bound values of the rename in [`retype_column`].
pub fn retype_rename_params(schema: &str, entity: &str, column: &str) -> Result<(String, String)> {
    sync_core::ids::validate_identifier("column", column)?;
    Ok((format!("{}.{}", qualified(schema, entity)?, quote(&format!("{column}__retype"))), column.to_owned()))
}

/// Upsert of one row: `MERGE … WITH (HOLDLOCK)` keyed by the primary key.
/// Binds `@P1..@Pn` to `columns` in order (the key among them) and
/// `@P{n+1}` to the new version.
pub fn upsert_row(schema: &str, meta: &EntityMetadata, columns: &[&str]) -> Result<String> {
    let table = qualified(schema, meta.name.as_str())?;
    let key = meta.primary_key.as_str();
    if !columns.contains(&key) {
        return Err(sync_core::Error::invalid(format!(
            "an upsert of '{}' must bind the key '{key}'",
            meta.name
        )));
    }
    let mut source = Vec::with_capacity(columns.len() + 1);
    for (i, c) in columns.iter().enumerate() {
        if meta.attribute(c).is_none() {
            return Err(sync_core::Error::invalid(format!("'{}' has no attribute '{c}'", meta.name)));
        }
        source.push(format!("@P{} AS {}", i + 1, quote(c)));
    }
    let version = quote(VERSION_COLUMN);
    source.push(format!("@P{} AS {version}", columns.len() + 1));
    let mut all: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    all.push(version.clone());
    let set: Vec<String> =
        all.iter().filter(|c| **c != quote(key)).map(|c| format!("t.{c} = s.{c}")).collect();
    let values: Vec<String> = all.iter().map(|c| format!("s.{c}")).collect();
    Ok(format!(
        "MERGE {table} WITH (HOLDLOCK) AS t USING (SELECT {}) AS s ON t.{k} = s.{k} \
         WHEN MATCHED THEN UPDATE SET {} \
         WHEN NOT MATCHED THEN INSERT ({}) VALUES ({});",
        source.join(", "),
        set.join(", "),
        all.join(", "),
        values.join(", "),
        k = quote(key),
    ))
}

/// Deletes one row by key (`@P1`).
pub fn delete_row(schema: &str, meta: &EntityMetadata) -> Result<String> {
    Ok(format!(
        "DELETE FROM {} WHERE {} = @P1",
        qualified(schema, meta.name.as_str())?,
        quote(meta.primary_key.as_str())
    ))
}

/// Reads one row by key (`@P1`): every attribute in metadata order, then the version.
pub fn select_row(schema: &str, meta: &EntityMetadata) -> Result<String> {
    let mut cols: Vec<String> = meta.attributes.iter().map(|a| quote(a.name.as_str())).collect();
    cols.push(quote(VERSION_COLUMN));
    Ok(format!(
        "SELECT {} FROM {} WHERE {} = @P1",
        cols.join(", "),
        qualified(schema, meta.name.as_str())?,
        quote(meta.primary_key.as_str())
    ))
}

/// The per-org bookkeeping tables (`_sync_meta`, membership, partitions,
/// tokens, mutation journal), created when missing.
pub fn create_org_tables(schema: &str) -> Result<Vec<String>> {
    let t = |name: &str| qualified(schema, name);
    let tables = [
        (
            "_sync_meta",
            format!(
                "CREATE TABLE {} ([name] nvarchar(64) NOT NULL PRIMARY KEY, [value] nvarchar(max) NOT NULL)",
                t("_sync_meta")?
            ),
        ),
        (
            "_sync_partitions",
            format!(
                "CREATE TABLE {} ([pid] bigint IDENTITY(1,1) NOT NULL PRIMARY KEY, [partition_key] nvarchar(450) NOT NULL UNIQUE, \
                 [checksum_sum] bigint NOT NULL DEFAULT 0, [member_count] bigint NOT NULL DEFAULT 0)",
                t("_sync_partitions")?
            ),
        ),
        (
            "_sync_membership",
            format!(
                "CREATE TABLE {} ([pid] bigint NOT NULL, [entity] nvarchar(128) NOT NULL, [row_id] nvarchar(450) NOT NULL, \
                 [seq] bigint NOT NULL, [version] bigint NOT NULL, [removed] bit NOT NULL, \
                 CONSTRAINT [PK__sync_membership] PRIMARY KEY CLUSTERED ([pid], [entity], [row_id]), \
                 INDEX [IX__sync_membership_seq] UNIQUE ([pid], [seq], [entity], [row_id]))",
                t("_sync_membership")?
            ),
        ),
        (
            "_sync_tokens",
            format!(
                "CREATE TABLE {} ([entity] nvarchar(128) NOT NULL PRIMARY KEY, [token] nvarchar(max) NOT NULL)",
                t("_sync_tokens")?
            ),
        ),
        (
            "_sync_mutations",
            format!(
                "CREATE TABLE {} ([id] uniqueidentifier NOT NULL PRIMARY KEY, [fingerprint] nvarchar(200) NOT NULL, \
                 [outcome] nvarchar(max) NOT NULL, [checkpoint] bigint NOT NULL)",
                t("_sync_mutations")?
            ),
        ),
    ];
    Ok(tables
        .into_iter()
        .map(|(name, ddl)| {
            format!(
                "IF OBJECT_ID(N'{}', N'U') IS NULL {ddl}",
                qualified(schema, name).unwrap_or_default().replace('\'', "''")
            )
        })
        .collect())
}

/// Records the latest membership op of (partition `@P1`, entity `@P2`,
/// row `@P3`): seq `@P4`, version `@P5`, removed `@P6`. One entry per
/// (partition, row): the log compacts itself.
pub fn put_membership(schema: &str) -> Result<String> {
    Ok(format!(
        "MERGE {} WITH (HOLDLOCK) AS t \
         USING (SELECT @P1 AS [pid], @P2 AS [entity], @P3 AS [row_id], @P4 AS [seq], @P5 AS [version], @P6 AS [removed]) AS s \
         ON t.[pid] = s.[pid] AND t.[entity] = s.[entity] AND t.[row_id] = s.[row_id] \
         WHEN MATCHED THEN UPDATE SET t.[seq] = s.[seq], t.[version] = s.[version], t.[removed] = s.[removed] \
         WHEN NOT MATCHED THEN INSERT ([pid], [entity], [row_id], [seq], [version], [removed]) \
         VALUES (s.[pid], s.[entity], s.[row_id], s.[seq], s.[version], s.[removed]);",
        qualified(schema, "_sync_membership")?
    ))
}

/// Adds `@P2` (a wrapping 32-bit hash sum delta) and `@P3` (a member count
/// delta) to partition `@P1`'s checksum.
pub fn update_checksum(schema: &str) -> Result<String> {
    Ok(format!(
        "UPDATE {} SET [checksum_sum] = ([checksum_sum] + @P2) & CAST(4294967295 AS bigint), \
         [member_count] = [member_count] + @P3 WHERE [pid] = @P1",
        qualified(schema, "_sync_partitions")?
    ))
}

/// One partition's membership ops after a position: partition `@P1`,
/// `seq > @P2`, `seq <= @P3` (the snapshot's head), at most `@P4` ops, in
/// seq order.
pub fn pull_partition(schema: &str) -> Result<String> {
    Ok(format!(
        "SELECT TOP (@P4) m.[entity], m.[row_id], m.[seq], m.[version], m.[removed] FROM {} AS m \
         WHERE m.[pid] = @P1 AND m.[seq] > @P2 AND m.[seq] <= @P3 ORDER BY m.[seq]",
        qualified(schema, "_sync_membership")?
    ))
}

/// Takes the org's write lock for the current transaction: resource `@P1`
/// (see [`org_lock_resource`]), timeout `@P2` milliseconds. Raises error
/// 51000 when not granted, which maps to `Unavailable`.
pub const TAKE_ORG_LOCK: &str = "DECLARE @rc int; \
     EXEC @rc = sp_getapplock @Resource = @P1, @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = @P2; \
     IF @rc < 0 THROW 51000, N'the org write lock was not granted in time', 1;";

/// The application-lock resource name of an org's staging writes.
pub fn org_lock_resource(org: &sync_core::OrgId) -> String {
    format!("offline-sync/org/{}", org.as_str())
}

/// `CREATE DATABASE` of an org (database-per-org layout). The name cannot be
/// a parameter in T-SQL; it is a validated identifier, bracket-quoted.
pub fn create_database(name: &str) -> Result<String> {
    sync_core::ids::validate_identifier("database", name)?;
    Ok(format!("IF DB_ID(@P1) IS NULL CREATE DATABASE {}", quote(name)))
}

/// Drops an org's database, closing other sessions on it first.
pub fn drop_database(name: &str) -> Result<String> {
    sync_core::ids::validate_identifier("database", name)?;
    let q = quote(name);
    Ok(format!(
        "IF DB_ID(@P1) IS NOT NULL BEGIN ALTER DATABASE {q} SET SINGLE_USER WITH ROLLBACK IMMEDIATE; DROP DATABASE {q}; END"
    ))
}

/// Creates an org's schema (schema-per-org layout) when missing; `@P1` is
/// the schema name. `CREATE SCHEMA` must be alone in its batch, hence `EXEC`.
pub fn create_schema(name: &str) -> Result<String> {
    sync_core::ids::validate_identifier("schema", name)?;
    let stmt = format!("CREATE SCHEMA {}", quote(name)).replace('\'', "''");
    Ok(format!("IF SCHEMA_ID(@P1) IS NULL EXEC(N'{stmt}')"))
}

/// Drops an org's schema with every table in it (schema-per-org layout);
/// `@P1` is the schema name. Table names are quoted server-side with
/// `QUOTENAME`.
pub fn drop_schema(name: &str) -> Result<String> {
    sync_core::ids::validate_identifier("schema", name)?;
    let stmt = format!("DROP SCHEMA {}", quote(name)).replace('\'', "''");
    Ok(format!(
        "IF SCHEMA_ID(@P1) IS NOT NULL BEGIN \
         DECLARE @sql nvarchar(max) = N''; \
         SELECT @sql = @sql + N'DROP TABLE ' + QUOTENAME(s.name) + N'.' + QUOTENAME(t.name) + N';' \
         FROM sys.tables AS t JOIN sys.schemas AS s ON s.schema_id = t.schema_id WHERE s.name = @P1; \
         EXEC sp_executesql @sql; EXEC(N'{stmt}'); END"
    ))
}

/// The statements of the queue: tables, send with dedup, lease, and the
/// lease-holder operations, all in the control schema.
pub mod queue {
    use super::{qualified, quote};
    use sync_core::Result;

    /// The server's clock in milliseconds since the Unix epoch. Every lease
    /// time uses the server's clock, so processes with skewed clocks agree.
    pub const NOW_MS: &str = "DATEDIFF_BIG(millisecond, '19700101', SYSUTCDATETIME())";

    fn tables(schema: &str) -> Result<(String, String)> {
        Ok((qualified(schema, "sync_queue_messages")?, qualified(schema, "sync_queue_dead_letters")?))
    }

    /// Creates the queue tables and indexes when missing, under an
    /// application lock so processes starting together do not race.
    pub fn create_tables(schema: &str) -> Result<String> {
        let (m, d) = tables(schema)?;
        let lit = |s: &str| s.replace('\'', "''");
        let ix = |n: &str| quote(n);
        Ok(format!(
            "SET XACT_ABORT ON; BEGIN TRAN; \
             EXEC sp_getapplock @Resource = N'offline-sync/ddl/queue', @LockMode = N'Exclusive', @LockOwner = N'Transaction'; \
             IF OBJECT_ID(N'{ml}', N'U') IS NULL BEGIN \
             CREATE TABLE {m} ([id] bigint IDENTITY(1,1) NOT NULL PRIMARY KEY CLUSTERED, [queue] nvarchar(128) NOT NULL, \
             [body] varbinary(max) NOT NULL, [dedup_key] nvarchar(400) NULL, [visible_at] bigint NOT NULL, \
             [lease_token] nvarchar(64) NULL, [delivery_count] int NOT NULL DEFAULT 0, [enqueued_at] bigint NOT NULL); \
             CREATE INDEX {ixv} ON {m} ([queue], [visible_at], [id]) INCLUDE ([delivery_count]); \
             CREATE INDEX {ixk} ON {m} ([queue], [dedup_key]) WHERE [dedup_key] IS NOT NULL; END; \
             IF OBJECT_ID(N'{dl}', N'U') IS NULL BEGIN \
             CREATE TABLE {d} ([id] bigint NOT NULL PRIMARY KEY CLUSTERED, [queue] nvarchar(128) NOT NULL, \
             [body] varbinary(max) NOT NULL, [dedup_key] nvarchar(400) NULL, [delivery_count] int NOT NULL, \
             [reason] nvarchar(max) NOT NULL, [dead_at] bigint NOT NULL); \
             CREATE INDEX {ixd} ON {d} ([queue], [dead_at], [id]); END; \
             COMMIT;",
            ml = lit(&m),
            dl = lit(&d),
            ixv = ix("IX_sync_queue_messages_visibility"),
            ixk = ix("IX_sync_queue_messages_dedup"),
            ixd = ix("IX_sync_queue_dead_letters_time"),
        ))
    }

    /// Send: queue `@P1`, body `@P2`, dedup key `@P3` (nullable), not-before
    /// `@P4` (epoch ms, nullable). With a key, a pending (not leased, or
    /// lease run out) message with it is found under `UPDLOCK, HOLDLOCK`
    /// (a key-range lock, so two senders cannot both insert), keeps its body
    /// and gets the earlier visibility. Returns one row `(id, deduplicated)`.
    pub fn send(schema: &str) -> Result<String> {
        let (m, _) = tables(schema)?;
        Ok(format!(
            "SET XACT_ABORT ON; BEGIN TRAN; \
             DECLARE @now bigint = {NOW_MS}; DECLARE @visible bigint = COALESCE(@P4, @now); DECLARE @id bigint = NULL; \
             IF @P3 IS NOT NULL \
             SELECT TOP (1) @id = [id] FROM {m} WITH (UPDLOCK, HOLDLOCK) \
             WHERE [queue] = @P1 AND [dedup_key] = @P3 AND ([lease_token] IS NULL OR [visible_at] <= @now) ORDER BY [id]; \
             IF @id IS NOT NULL BEGIN \
             UPDATE {m} SET [visible_at] = @visible WHERE [id] = @id AND [visible_at] > @visible; \
             SELECT @id AS [id], CAST(1 AS bit) AS [deduplicated]; END \
             ELSE BEGIN \
             INSERT INTO {m} ([queue], [body], [dedup_key], [visible_at], [enqueued_at]) VALUES (@P1, @P2, @P3, @visible, @now); \
             SELECT CAST(SCOPE_IDENTITY() AS bigint) AS [id], CAST(0 AS bit) AS [deduplicated]; END; \
             COMMIT;"
        ))
    }

    /// Receive: queue `@P1`, max deliveries `@P2`, new lease token `@P3`,
    /// lease `@P4` ms. First moves due messages that used up their
    /// deliveries to the dead letters, then leases the oldest due message:
    /// `UPDATE` of a `TOP (1) … ORDER BY` CTE read `WITH (READPAST, UPDLOCK,
    /// ROWLOCK)` — competing consumers skip each other's locked rows instead
    /// of waiting, and never lease one message twice — with `OUTPUT
    /// inserted.*` returning the leased message in the same statement.
    pub fn receive(schema: &str) -> Result<String> {
        let (m, d) = tables(schema)?;
        Ok(format!(
            "SET XACT_ABORT ON; BEGIN TRAN; \
             DECLARE @now bigint = {NOW_MS}; \
             DELETE FROM {m} WITH (READPAST, UPDLOCK, ROWLOCK) \
             OUTPUT deleted.[id], deleted.[queue], deleted.[body], deleted.[dedup_key], deleted.[delivery_count], \
             CONCAT(N'delivered ', deleted.[delivery_count], N' times without being completed; the maximum is ', @P2), @now \
             INTO {d} ([id], [queue], [body], [dedup_key], [delivery_count], [reason], [dead_at]) \
             WHERE [queue] = @P1 AND [visible_at] <= @now AND [delivery_count] >= @P2; \
             WITH [next] AS (SELECT TOP (1) * FROM {m} WITH (READPAST, UPDLOCK, ROWLOCK) \
             WHERE [queue] = @P1 AND [visible_at] <= @now AND [delivery_count] < @P2 ORDER BY [visible_at], [id]) \
             UPDATE [next] SET [lease_token] = @P3, [visible_at] = @now + @P4, [delivery_count] = [delivery_count] + 1 \
             OUTPUT inserted.[id], inserted.[body], inserted.[dedup_key], inserted.[delivery_count]; \
             COMMIT;"
        ))
    }

    /// The condition of a live lease: id `@P1`, token `@P2`, not run out.
    const HELD: &str = "[id] = @P1 AND [lease_token] = @P2 AND [visible_at] > DATEDIFF_BIG(millisecond, '19700101', SYSUTCDATETIME())";

    /// Complete: deletes the message if the lease (`@P1`, `@P2`) is held.
    pub fn complete(schema: &str) -> Result<String> {
        Ok(format!("DELETE FROM {} WHERE {HELD}", tables(schema)?.0))
    }

    /// Abandon: releases the lease (`@P1`, `@P2`), visible again after `@P3` ms.
    pub fn abandon(schema: &str) -> Result<String> {
        Ok(format!(
            "UPDATE {} SET [lease_token] = NULL, [visible_at] = {NOW_MS} + @P3 WHERE {HELD}",
            tables(schema)?.0
        ))
    }

    /// Extend: the lease (`@P1`, `@P2`) now runs `@P3` ms from now.
    pub fn extend(schema: &str) -> Result<String> {
        Ok(format!("UPDATE {} SET [visible_at] = {NOW_MS} + @P3 WHERE {HELD}", tables(schema)?.0))
    }

    /// Dead-letter: moves the leased message (`@P1`, `@P2`) to the dead
    /// letters with reason `@P3`, in one statement (`OUTPUT … INTO`).
    pub fn dead_letter(schema: &str) -> Result<String> {
        let (m, d) = tables(schema)?;
        Ok(format!(
            "DELETE FROM {m} OUTPUT deleted.[id], deleted.[queue], deleted.[body], deleted.[dedup_key], \
             deleted.[delivery_count], @P3, {NOW_MS} \
             INTO {d} ([id], [queue], [body], [dedup_key], [delivery_count], [reason], [dead_at]) WHERE {HELD}"
        ))
    }

    /// Cancel: deletes pending messages of queue `@P1` with dedup key `@P2`.
    pub fn cancel(schema: &str) -> Result<String> {
        Ok(format!(
            "DELETE FROM {} WHERE [queue] = @P1 AND [dedup_key] = @P2 AND ([lease_token] IS NULL OR [visible_at] <= {NOW_MS})",
            tables(schema)?.0
        ))
    }

    /// Depth of queue `@P1`: one row `(ready, delayed, leased, dead)`.
    pub fn depth(schema: &str) -> Result<String> {
        let (m, d) = tables(schema)?;
        Ok(format!(
            "DECLARE @now bigint = {NOW_MS}; SELECT \
             CAST(COALESCE(SUM(CASE WHEN [visible_at] <= @now THEN 1 ELSE 0 END), 0) AS bigint), \
             CAST(COALESCE(SUM(CASE WHEN [visible_at] > @now AND [lease_token] IS NULL THEN 1 ELSE 0 END), 0) AS bigint), \
             CAST(COALESCE(SUM(CASE WHEN [visible_at] > @now AND [lease_token] IS NOT NULL THEN 1 ELSE 0 END), 0) AS bigint), \
             (SELECT COUNT_BIG(*) FROM {d} WHERE [queue] = @P1) \
             FROM {m} WHERE [queue] = @P1"
        ))
    }

    /// Up to `@P2` dead letters of queue `@P1`, newest first.
    pub fn dead_letters(schema: &str) -> Result<String> {
        Ok(format!(
            "SELECT TOP (@P2) [id], [body], [dedup_key], [delivery_count], [reason], [dead_at] FROM {} \
             WHERE [queue] = @P1 ORDER BY [dead_at] DESC, [id] DESC",
            tables(schema)?.1
        ))
    }
}

/// Appends `@P<n>` placeholders for `count` values starting at `first`
/// (`@P3, @P4, …`), for callers that build value lists.
pub fn placeholders(first: usize, count: usize) -> String {
    let mut s = String::new();
    for i in 0..count {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "@P{}", first + i);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::{ColumnName, EntityName, OrgId};

    fn col(s: &str) -> ColumnName {
        ColumnName::new(s).unwrap()
    }

    fn meta(key_ty: AttributeType) -> EntityMetadata {
        EntityMetadata::new(
            EntityName::new("account").unwrap(),
            col("id"),
            vec![Attribute::new(col("id"), key_ty), Attribute::new(col("name"), AttributeType::String)],
        )
        .unwrap()
    }

    #[test]
    fn quoting_doubles_closing_brackets() {
        assert_eq!(quote("select"), "[select]");
        assert_eq!(quote("a]]b"), "[a]]]]b]");
        assert_eq!(qualified("dbo", "account").unwrap(), "[dbo].[account]");
        assert!(qualified("dbo", "x]; DROP TABLE y; --").is_err());
        assert!(qualified("a b", "t").is_err());
    }

    #[test]
    fn ddl_for_every_attribute_type() {
        let cases = [
            (AttributeType::String, "nvarchar(max)"),
            (AttributeType::Integer, "bigint"),
            (AttributeType::Decimal, "decimal(38,10)"),
            (AttributeType::Float, "float"),
            (AttributeType::Boolean, "bit"),
            (AttributeType::DateTime, "datetimeoffset(7)"),
            (AttributeType::Uuid, "uniqueidentifier"),
            (AttributeType::Lookup { target: EntityName::new("contact").unwrap() }, "uniqueidentifier"),
            (AttributeType::Json, "nvarchar(max)"),
        ];
        for (ty, sql_ty) in cases {
            assert_eq!(column_type(&ty, false), sql_ty);
            let a = Attribute::new(col("c"), ty);
            assert_eq!(
                add_column("s", "t", &a).unwrap(),
                format!("ALTER TABLE [s].[t] ADD [c] {sql_ty} NULL")
            );
        }
        assert_eq!(column_type(&AttributeType::String, true), "nvarchar(450)");
        assert_eq!(
            create_entity_table("org1", &meta(AttributeType::String)).unwrap(),
            "CREATE TABLE [org1].[account] ([id] nvarchar(450) NOT NULL, [name] nvarchar(max) NULL, \
             [_sync_version] bigint NOT NULL, CONSTRAINT [PK_account] PRIMARY KEY CLUSTERED ([id]))"
        );
        assert_eq!(
            create_entity_table("org1", &meta(AttributeType::Integer)).unwrap(),
            "CREATE TABLE [org1].[account] ([id] bigint NOT NULL, [name] nvarchar(max) NULL, \
             [_sync_version] bigint NOT NULL, CONSTRAINT [PK_account] PRIMARY KEY CLUSTERED ([id]))"
        );
    }

    #[test]
    fn schema_evolution_statements() {
        assert_eq!(
            drop_column("s", "account", "name").unwrap(),
            "ALTER TABLE [s].[account] DROP COLUMN [name]"
        );
        assert!(drop_column("s", "account", "x]y").is_err());
        let stmts =
            retype_column("s", "account", &Attribute::new(col("name"), AttributeType::Integer)).unwrap();
        assert_eq!(
            stmts,
            vec![
                "ALTER TABLE [s].[account] ADD [name__retype] bigint NULL",
                "UPDATE [s].[account] SET [name__retype] = TRY_CONVERT(bigint, [name])",
                "ALTER TABLE [s].[account] DROP COLUMN [name]",
                "EXEC sp_rename @P1, @P2, N'COLUMN'",
            ]
        );
        assert_eq!(
            retype_rename_params("s", "account", "name").unwrap(),
            ("[s].[account].[name__retype]".to_owned(), "name".to_owned())
        );
    }

    #[test]
    fn upsert_is_a_holdlock_merge_with_bound_values() {
        let m = meta(AttributeType::Integer);
        assert_eq!(
            upsert_row("s", &m, &["id", "name"]).unwrap(),
            "MERGE [s].[account] WITH (HOLDLOCK) AS t USING (SELECT @P1 AS [id], @P2 AS [name], @P3 AS [_sync_version]) AS s \
             ON t.[id] = s.[id] WHEN MATCHED THEN UPDATE SET t.[name] = s.[name], t.[_sync_version] = s.[_sync_version] \
             WHEN NOT MATCHED THEN INSERT ([id], [name], [_sync_version]) VALUES (s.[id], s.[name], s.[_sync_version]);"
        );
        assert!(upsert_row("s", &m, &["name"]).is_err(), "the key must be bound");
        assert!(upsert_row("s", &m, &["id", "nope"]).is_err(), "unknown columns are refused");
        assert_eq!(delete_row("s", &m).unwrap(), "DELETE FROM [s].[account] WHERE [id] = @P1");
        assert_eq!(
            select_row("s", &m).unwrap(),
            "SELECT [id], [name], [_sync_version] FROM [s].[account] WHERE [id] = @P1"
        );
    }

    #[test]
    fn membership_checksum_and_pull() {
        let put = put_membership("s").unwrap();
        assert!(put.starts_with("MERGE [s].[_sync_membership] WITH (HOLDLOCK) AS t"));
        for p in 1..=6 {
            assert!(put.contains(&format!("@P{p} AS")), "{put}");
        }
        assert!(put.contains("ON t.[pid] = s.[pid] AND t.[entity] = s.[entity] AND t.[row_id] = s.[row_id]"));
        let ck = update_checksum("s").unwrap();
        assert!(
            ck.starts_with("UPDATE [s].[_sync_partitions] SET [checksum_sum] = ([checksum_sum] + @P2) & ")
        );
        assert_eq!(
            pull_partition("s").unwrap(),
            "SELECT TOP (@P4) m.[entity], m.[row_id], m.[seq], m.[version], m.[removed] FROM [s].[_sync_membership] AS m \
             WHERE m.[pid] = @P1 AND m.[seq] > @P2 AND m.[seq] <= @P3 ORDER BY m.[seq]"
        );
        let tables = create_org_tables("s").unwrap();
        assert_eq!(tables.len(), 5);
        assert!(tables[2].starts_with("IF OBJECT_ID(N'[s].[_sync_membership]', N'U') IS NULL CREATE TABLE"));
    }

    #[test]
    fn org_lock_and_provisioning() {
        assert!(TAKE_ORG_LOCK.contains("sp_getapplock @Resource = @P1, @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = @P2"));
        assert!(TAKE_ORG_LOCK.contains("THROW 51000"));
        assert_eq!(org_lock_resource(&OrgId::new("contoso").unwrap()), "offline-sync/org/contoso");
        assert_eq!(
            create_database("sync_org_a").unwrap(),
            "IF DB_ID(@P1) IS NULL CREATE DATABASE [sync_org_a]"
        );
        assert!(
            drop_database("sync_org_a")
                .unwrap()
                .contains("SET SINGLE_USER WITH ROLLBACK IMMEDIATE; DROP DATABASE [sync_org_a];")
        );
        assert_eq!(create_schema("o").unwrap(), "IF SCHEMA_ID(@P1) IS NULL EXEC(N'CREATE SCHEMA [o]')");
        assert!(drop_schema("o").unwrap().contains("QUOTENAME(s.name)"));
        for bad in ["x]", "a;b", "", "1a"] {
            assert!(create_database(bad).is_err(), "{bad}");
            assert!(create_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queue_lease_skips_locked_rows_and_outputs_the_message() {
        let r = queue::receive("dbo").unwrap();
        assert!(r.contains(
            "WITH [next] AS (SELECT TOP (1) * FROM [dbo].[sync_queue_messages] WITH (READPAST, UPDLOCK, ROWLOCK) \
             WHERE [queue] = @P1 AND [visible_at] <= @now AND [delivery_count] < @P2 ORDER BY [visible_at], [id])"
        ));
        assert!(r.contains("UPDATE [next] SET [lease_token] = @P3, [visible_at] = @now + @P4, [delivery_count] = [delivery_count] + 1 \
             OUTPUT inserted.[id], inserted.[body], inserted.[dedup_key], inserted.[delivery_count];"));
        // Exhausted messages are dead-lettered before leasing.
        let bury = r.find("INTO [dbo].[sync_queue_dead_letters]").unwrap();
        assert!(bury < r.find("WITH [next]").unwrap());
        assert!(r.starts_with("SET XACT_ABORT ON; BEGIN TRAN;") && r.ends_with("COMMIT;"));
    }

    #[test]
    fn queue_send_dedup_and_lease_holder_statements() {
        let s = queue::send("dbo").unwrap();
        assert!(s.contains("WITH (UPDLOCK, HOLDLOCK) WHERE [queue] = @P1 AND [dedup_key] = @P3 AND ([lease_token] IS NULL OR [visible_at] <= @now)"));
        assert!(s.contains("INSERT INTO [dbo].[sync_queue_messages] ([queue], [body], [dedup_key], [visible_at], [enqueued_at]) VALUES (@P1, @P2, @P3, @visible, @now)"));
        assert!(s.contains("SET [visible_at] = @visible WHERE [id] = @id AND [visible_at] > @visible"));
        let held = "[id] = @P1 AND [lease_token] = @P2 AND [visible_at] > DATEDIFF_BIG(millisecond, '19700101', SYSUTCDATETIME())";
        assert_eq!(
            queue::complete("dbo").unwrap(),
            format!("DELETE FROM [dbo].[sync_queue_messages] WHERE {held}")
        );
        assert!(
            queue::abandon("dbo").unwrap().contains("SET [lease_token] = NULL, [visible_at] = DATEDIFF_BIG")
        );
        assert!(queue::extend("dbo").unwrap().ends_with(&format!("+ @P3 WHERE {held}")));
        let dl = queue::dead_letter("dbo").unwrap();
        assert!(
            dl.contains("@P3") && dl.contains("INTO [dbo].[sync_queue_dead_letters]") && dl.ends_with(held)
        );
        assert!(
            queue::cancel("dbo")
                .unwrap()
                .contains("[queue] = @P1 AND [dedup_key] = @P2 AND ([lease_token] IS NULL")
        );
        assert!(
            queue::depth("dbo").unwrap().contains("FROM [dbo].[sync_queue_messages] WHERE [queue] = @P1")
        );
        assert!(queue::dead_letters("dbo").unwrap().starts_with("SELECT TOP (@P2)"));
        assert!(
            queue::create_tables("dbo")
                .unwrap()
                .contains("IF OBJECT_ID(N'[dbo].[sync_queue_messages]', N'U') IS NULL")
        );
        assert!(queue::send("bad]schema").is_err());
        assert_eq!(placeholders(3, 3), "@P3, @P4, @P5");
    }
}
