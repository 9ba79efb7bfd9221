//! T-SQL generation: pure functions, no I/O.
//!
//! Every identifier is a validated `sync-core` name (`[A-Za-z_][A-Za-z0-9_]*`)
//! and is bracket-quoted by [`quote`] with `]` doubled, so a name that is a
//! T-SQL keyword stays usable and a name that somehow slipped past
//! validation still cannot break out of its brackets. Every value is a bound
//! parameter (`@P1`, `@P2`, … in the order the caller binds them); the only
//! literals are constants of this module.
//!
//! Statements that bind a list (`IN (…)`, `VALUES (…), (…)`) take the list's
//! length and number their parameters in order; callers split lists so that
//! no request binds more than [`MAX_PARAMS`] values (SQL Server allows 2,100
//! per request).
//!
//! The staging statements take `schema`: the org's schema (`dbo` of the
//! org's own database in the database-per-org layout, `<prefix><org>` in the
//! schema-per-org layout). Transactions, isolation levels and `SET XACT_ABORT`
//! are not part of these statements: they are sent as plain batches
//! ([`BEGIN_WRITE`], [`BEGIN_SNAPSHOT`], [`COMMIT`], [`ROLLBACK`]) because a
//! `SET` inside a parameterized request (`sp_executesql`) ends with it and a
//! `BEGIN TRAN` left open by it raises error 266.

use std::fmt::Write as _;

use sync_core::{Attribute, AttributeType, EntityMetadata, Result};

/// The most parameters one request of this crate binds (SQL Server's limit
/// is 2,100, of which `sp_executesql` itself uses two).
pub const MAX_PARAMS: usize = 2000;

/// The column of every staging table holding the seq of the row's last change.
pub const VERSION_COLUMN: &str = "_sync_version";

/// The column of every staging table holding the row id's canonical text:
/// the clustered primary key, so rows are found, joined with membership and
/// listed (`row_ids`) by the same text the core uses, whatever the key's type
/// (a `uniqueidentifier` or `bigint` would order differently from text).
pub const ROWID_COLUMN: &str = "_sync_rowid";

/// The prefix of names this store keeps for itself: no entity or attribute
/// may start with it.
pub const RESERVED_PREFIX: &str = "_sync_";

/// The binary collation of key text columns: ordinal comparison, the
/// order of Rust's `str`, independent of the database's default collation.
pub const BIN2: &str = "Latin1_General_100_BIN2";

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

/// A T-SQL `N'…'` literal of `text`, quotes doubled. Only used for names
/// built by this module (object names given to `OBJECT_ID`).
fn literal(text: &str) -> String {
    format!("N'{}'", text.replace('\'', "''"))
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

/// `@P{first}, @P{first+1}, …` (`count` of them).
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

/// `(@P{first}, …), (…), …`: `rows` tuples of `width` parameters each.
pub fn value_rows(first: usize, width: usize, rows: usize) -> String {
    let mut s = String::new();
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        s.push_str(&placeholders(first + r * width, width));
        s.push(')');
    }
    s
}

/// How many rows of `width` parameters one request may bind (at least 1).
pub fn rows_per_request(width: usize) -> usize {
    (MAX_PARAMS / width.max(1)).max(1)
}

// ---------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------

/// The session options SQL Server requires to write a table with an indexed
/// computed column (`_sync_partitions.key_hash`), set explicitly rather than
/// trusting the login's defaults (a plain batch).
pub const SESSION_OPTIONS: &str = "SET ANSI_NULLS ON; SET ANSI_PADDING ON; SET ANSI_WARNINGS ON; \
     SET ARITHABORT ON; SET CONCAT_NULL_YIELDS_NULL ON; SET QUOTED_IDENTIFIER ON; SET NUMERIC_ROUNDABORT OFF;";

/// Opens a staging write transaction (a plain batch): errors abort and roll
/// back the whole transaction, read-committed reads.
pub const BEGIN_WRITE: &str = "SET ANSI_NULLS ON; SET ANSI_PADDING ON; SET ANSI_WARNINGS ON; \
     SET ARITHABORT ON; SET CONCAT_NULL_YIELDS_NULL ON; SET QUOTED_IDENTIFIER ON; SET NUMERIC_ROUNDABORT OFF; \
     SET XACT_ABORT ON; SET TRANSACTION ISOLATION LEVEL READ COMMITTED; BEGIN TRANSACTION;";

/// Opens a read transaction on one snapshot (a plain batch): every read
/// until [`COMMIT`] sees the org as of the first read. Needs
/// `ALLOW_SNAPSHOT_ISOLATION ON`, which provisioning sets.
pub const BEGIN_SNAPSHOT: &str =
    "SET XACT_ABORT ON; SET TRANSACTION ISOLATION LEVEL SNAPSHOT; BEGIN TRANSACTION;";

/// Most columns of a SQL Server table.
pub const MAX_TABLE_COLUMNS: usize = 1024;

/// Commits and puts the connection back to read committed (a plain batch).
pub const COMMIT: &str = "COMMIT TRANSACTION; SET TRANSACTION ISOLATION LEVEL READ COMMITTED;";

/// Rolls back whatever is open (a plain batch); harmless when nothing is.
pub const ROLLBACK: &str =
    "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION; SET TRANSACTION ISOLATION LEVEL READ COMMITTED;";

/// Takes the org's write lock for the current transaction: resource `@P1`
/// (see [`org_lock_resource`]), timeout `@P2` milliseconds. Raises error
/// 51000 when not granted, which maps to `Unavailable`. Released by the
/// commit or rollback.
pub const TAKE_ORG_LOCK: &str = "DECLARE @rc int; \
     EXEC @rc = sp_getapplock @Resource = @P1, @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = @P2; \
     IF @rc < 0 THROW 51000, N'the org write lock was not granted in time', 1;";

/// The application-lock resource name of an org's staging writes.
pub fn org_lock_resource(org: &sync_core::OrgId) -> String {
    format!("offline-sync/org/{}", org.as_str())
}

/// Takes a session-owned application lock: resource `@P1`, timeout `@P2`
/// ms; error 51000 when not granted. Serializes provisioning of one org
/// across processes (its `CREATE DATABASE` cannot run in a transaction).
pub const TAKE_SESSION_LOCK: &str = "DECLARE @rc int; \
     EXEC @rc = sp_getapplock @Resource = @P1, @LockMode = N'Exclusive', @LockOwner = N'Session', @LockTimeout = @P2; \
     IF @rc < 0 THROW 51000, N'the provisioning lock was not granted in time', 1;";

/// Releases the session-owned lock `@P1`.
pub const RELEASE_SESSION_LOCK: &str = "EXEC sp_releaseapplock @Resource = @P1, @LockOwner = N'Session';";

/// The application-lock resource name of an org's provisioning.
pub fn provision_lock_resource(org: &sync_core::OrgId) -> String {
    format!("offline-sync/provision/{}", org.as_str().to_ascii_lowercase())
}

// ---------------------------------------------------------------------------
// Entity tables
// ---------------------------------------------------------------------------

/// `CREATE TABLE` of an entity's staging table: [`ROWID_COLUMN`] (the
/// clustered primary key), one column per attribute (the key attribute
/// `NOT NULL`), and [`VERSION_COLUMN`].
pub fn create_entity_table(schema: &str, meta: &EntityMetadata) -> Result<String> {
    meta.validate()?;
    let table = qualified(schema, meta.name.as_str())?;
    let mut cols = Vec::with_capacity(meta.attributes.len() + 2);
    cols.push(format!("{} nvarchar(256) COLLATE {BIN2} NOT NULL PRIMARY KEY CLUSTERED", quote(ROWID_COLUMN)));
    for a in &meta.attributes {
        cols.push(column_def(a, a.name == meta.primary_key));
    }
    cols.push(format!("{} bigint NOT NULL", quote(VERSION_COLUMN)));
    Ok(format!("CREATE TABLE {table} ({})", cols.join(", ")))
}

/// `DROP TABLE` of an entity's table, when it exists.
pub fn drop_entity_table(schema: &str, entity: &str) -> Result<String> {
    let table = qualified(schema, entity)?;
    Ok(format!("IF OBJECT_ID({}, N'U') IS NOT NULL DROP TABLE {table}", literal(&table)))
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

/// The name of the scratch column that receives attribute number `index`'s
/// converted values while its type changes (short, whatever the attribute's
/// name, and reserved: attributes cannot start with [`RESERVED_PREFIX`]).
pub fn retype_scratch_column(index: usize) -> String {
    format!("{RESERVED_PREFIX}retype_{index}")
}

/// Adds the scratch column of a retyped attribute (see
/// [`retype_scratch_column`]), typed as the attribute's new type.
pub fn add_retype_column(schema: &str, entity: &str, index: usize, attr: &Attribute) -> Result<String> {
    Ok(format!(
        "ALTER TABLE {} ADD {} {} NULL",
        qualified(schema, entity)?,
        quote(&retype_scratch_column(index)),
        column_type(&attr.ty, false)
    ))
}

/// Renames a column: `@P1` the quoted `[schema].[table].[column]` (see
/// [`rename_column_params`]), `@P2` the new name, unquoted.
pub const RENAME_COLUMN: &str = "EXEC sp_rename @objname = @P1, @newname = @P2, @objtype = N'COLUMN';";

/// The bound values of [`RENAME_COLUMN`] renaming `from` to `to`.
pub fn rename_column_params(schema: &str, entity: &str, from: &str, to: &str) -> Result<(String, String)> {
    sync_core::ids::validate_identifier("column", from)?;
    sync_core::ids::validate_identifier("column", to)?;
    Ok((format!("{}.{}", qualified(schema, entity)?, quote(from)), to.to_owned()))
}

/// The select list of a staging row: [`ROWID_COLUMN`], every attribute in
/// metadata order, then [`VERSION_COLUMN`].
fn row_columns(meta: &EntityMetadata) -> String {
    let mut cols = vec![quote(ROWID_COLUMN)];
    cols.extend(meta.attributes.iter().map(|a| quote(a.name.as_str())));
    cols.push(quote(VERSION_COLUMN));
    cols.join(", ")
}

/// Reads the rows whose ids are `@P1..@Pn` (`n` = `count`): the row id,
/// every attribute in metadata order, then the version.
pub fn select_rows(schema: &str, meta: &EntityMetadata, count: usize) -> Result<String> {
    Ok(format!(
        "SELECT {} FROM {} WHERE {} IN ({})",
        row_columns(meta),
        qualified(schema, meta.name.as_str())?,
        quote(ROWID_COLUMN),
        placeholders(1, count.max(1))
    ))
}

/// Reads up to `@P2` rows with ids after `@P1`, in id order (for passes over
/// a whole table): the columns of [`select_rows`].
pub fn select_rows_after(schema: &str, meta: &EntityMetadata) -> Result<String> {
    let rowid = quote(ROWID_COLUMN);
    Ok(format!(
        "SELECT TOP (@P2) {} FROM {} WHERE {rowid} > @P1 ORDER BY {rowid}",
        row_columns(meta),
        qualified(schema, meta.name.as_str())?
    ))
}

/// Up to `@P2` row ids after `@P1`, ascending.
pub fn row_ids_after(schema: &str, entity: &str) -> Result<String> {
    let rowid = quote(ROWID_COLUMN);
    Ok(format!(
        "SELECT TOP (@P2) {rowid} FROM {} WHERE {rowid} > @P1 ORDER BY {rowid}",
        qualified(schema, entity)?
    ))
}

/// The number of staged rows of an entity.
pub fn count_rows(schema: &str, entity: &str) -> Result<String> {
    Ok(format!("SELECT COUNT_BIG(*) FROM {}", qualified(schema, entity)?))
}

/// Upserts `rows` rows in one `MERGE … WITH (HOLDLOCK)` keyed by
/// [`ROWID_COLUMN`]. Each row binds its id, every attribute in metadata
/// order, then its version: `attributes + 2` parameters (see
/// [`upsert_width`]). The ids must be distinct (a `MERGE` may not match one
/// target row twice).
pub fn upsert_rows(schema: &str, meta: &EntityMetadata, rows: usize) -> Result<String> {
    let table = qualified(schema, meta.name.as_str())?;
    let mut cols = vec![quote(ROWID_COLUMN)];
    cols.extend(meta.attributes.iter().map(|a| quote(a.name.as_str())));
    cols.push(quote(VERSION_COLUMN));
    let set: Vec<String> = cols[1..].iter().map(|c| format!("t.{c} = s.{c}")).collect();
    let values: Vec<String> = cols.iter().map(|c| format!("s.{c}")).collect();
    let rowid = quote(ROWID_COLUMN);
    Ok(format!(
        "MERGE {table} WITH (HOLDLOCK) AS t USING (VALUES {}) AS s ({}) ON t.{rowid} = s.{rowid} \
         WHEN MATCHED THEN UPDATE SET {} \
         WHEN NOT MATCHED THEN INSERT ({}) VALUES ({});",
        value_rows(1, cols.len(), rows.max(1)),
        cols.join(", "),
        set.join(", "),
        cols.join(", "),
        values.join(", "),
    ))
}

/// Parameters per row of [`upsert_rows`].
pub fn upsert_width(meta: &EntityMetadata) -> usize {
    meta.attributes.len() + 2
}

/// Deletes the rows whose ids are `@P1..@Pn`.
pub fn delete_rows(schema: &str, entity: &str, count: usize) -> Result<String> {
    Ok(format!(
        "DELETE FROM {} WHERE {} IN ({})",
        qualified(schema, entity)?,
        quote(ROWID_COLUMN),
        placeholders(1, count.max(1))
    ))
}

/// Sets `columns` and the version of `rows` rows in one statement: each row
/// binds its id, a value per column, then its version (`columns + 2`
/// parameters). Used by schema changes to write converted values and new
/// versions.
pub fn update_rows(schema: &str, entity: &str, columns: &[String], rows: usize) -> Result<String> {
    for c in columns {
        sync_core::ids::validate_identifier("column", c)?;
    }
    let table = qualified(schema, entity)?;
    let mut cols = vec![quote(ROWID_COLUMN)];
    cols.extend(columns.iter().map(|c| quote(c)));
    cols.push(quote(VERSION_COLUMN));
    let set: Vec<String> = cols[1..].iter().map(|c| format!("{c} = v.{c}")).collect();
    let rowid = quote(ROWID_COLUMN);
    Ok(format!(
        "UPDATE t SET {} FROM {table} AS t JOIN (VALUES {}) AS v ({}) ON t.{rowid} = v.{rowid}",
        set.join(", "),
        value_rows(1, cols.len(), rows.max(1)),
        cols.join(", ")
    ))
}

// ---------------------------------------------------------------------------
// Per-org bookkeeping
// ---------------------------------------------------------------------------

/// The per-org bookkeeping tables, each created when missing:
///
/// | table | holds |
/// | --- | --- |
/// | `_sync_info` | `incarnation` |
/// | `_sync_meta` | `head`, `schema_version`, `tombstone_floor` |
/// | `_sync_schemas` | entity → metadata (JSON), schema hash |
/// | `_sync_profiles` | profile name → profile (JSON) |
/// | `_sync_partitions` | partition key → `pid`, checksum (sum mod 2³², count) |
/// | `_sync_membership` | latest op per (partition, entity, row): seq, version, removed |
/// | `_sync_tokens` | entity → committed source token |
/// | `_sync_runs` | entity → last run, last success, last error, rows |
/// | `_sync_mutations` | the push journal |
///
/// Membership is clustered by `(pid, seq)`, so a pull reads a partition's
/// ops in seq order from one range; a unique index on `(entity, row_id,
/// pid)` finds a row's entries when it changes (the last statement, created
/// when missing). Partition keys (up to 1,024 bytes, too long for an index
/// key) are found by a persisted SHA-256.
pub fn create_org_tables(schema: &str) -> Result<Vec<String>> {
    let t = |name: &str| qualified(schema, name);
    let name_col = format!("nvarchar(128) COLLATE {BIN2} NOT NULL");
    let tables = [
        (
            "_sync_info",
            format!(
                "CREATE TABLE {} ([name] nvarchar(64) NOT NULL PRIMARY KEY, [value] nvarchar(200) NOT NULL)",
                t("_sync_info")?
            ),
        ),
        (
            "_sync_meta",
            format!(
                "CREATE TABLE {} ([name] nvarchar(64) NOT NULL PRIMARY KEY, [value] bigint NOT NULL)",
                t("_sync_meta")?
            ),
        ),
        (
            "_sync_schemas",
            format!(
                "CREATE TABLE {} ([entity] {name_col} PRIMARY KEY, [metadata] nvarchar(max) NOT NULL, \
                 [schema_hash] nvarchar(64) NOT NULL)",
                t("_sync_schemas")?
            ),
        ),
        (
            "_sync_profiles",
            format!(
                "CREATE TABLE {} ([name] {name_col} PRIMARY KEY, [profile] nvarchar(max) NOT NULL)",
                t("_sync_profiles")?
            ),
        ),
        (
            "_sync_partitions",
            format!(
                "CREATE TABLE {} ([pid] bigint IDENTITY(1,1) NOT NULL PRIMARY KEY, \
                 [partition_key] nvarchar(1024) NOT NULL, \
                 [key_hash] AS CAST(HASHBYTES('SHA2_256', [partition_key]) AS binary(32)) PERSISTED NOT NULL, \
                 [checksum_sum] bigint NOT NULL DEFAULT 0, [member_count] bigint NOT NULL DEFAULT 0, \
                 CONSTRAINT [UQ__sync_partitions_key_hash] UNIQUE ([key_hash]))",
                t("_sync_partitions")?
            ),
        ),
        (
            "_sync_membership",
            format!(
                "CREATE TABLE {} ([pid] bigint NOT NULL, [entity] {name_col}, \
                 [row_id] nvarchar(256) COLLATE {BIN2} NOT NULL, [seq] bigint NOT NULL, [version] bigint NOT NULL, \
                 [removed] bit NOT NULL, \
                 CONSTRAINT [PK__sync_membership] PRIMARY KEY CLUSTERED ([pid], [seq]))",
                t("_sync_membership")?
            ),
        ),
        (
            "_sync_tokens",
            format!(
                "CREATE TABLE {} ([entity] {name_col} PRIMARY KEY, [token] nvarchar(max) NOT NULL)",
                t("_sync_tokens")?
            ),
        ),
        (
            "_sync_runs",
            format!(
                "CREATE TABLE {} ([entity] {name_col} PRIMARY KEY, [last_run] datetimeoffset(7) NULL, \
                 [last_success] datetimeoffset(7) NULL, [last_error] nvarchar(max) NULL, [last_rows] bigint NOT NULL)",
                t("_sync_runs")?
            ),
        ),
        (
            "_sync_mutations",
            format!(
                "CREATE TABLE {} ([id] uniqueidentifier NOT NULL PRIMARY KEY, [fingerprint] nvarchar(max) NOT NULL, \
                 [outcome] nvarchar(max) NOT NULL, [checkpoint] bigint NOT NULL)",
                t("_sync_mutations")?
            ),
        ),
    ];
    let mut out = Vec::with_capacity(tables.len() + 1);
    for (name, ddl) in tables {
        out.push(format!("IF OBJECT_ID({}, N'U') IS NULL {ddl}", literal(&qualified(schema, name)?)));
    }
    // An inline `INDEX` of `CREATE TABLE` takes no `INCLUDE` clause (SQL
    // Server refuses it as a syntax error), so the covering index is its
    // own statement, idempotent like the tables.
    let membership = t("_sync_membership")?;
    out.push(format!(
        "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE [object_id] = OBJECT_ID({}, N'U') \
         AND [name] = N'{MEMBERSHIP_ROW_INDEX}') \
         CREATE UNIQUE NONCLUSTERED INDEX [{MEMBERSHIP_ROW_INDEX}] ON {membership} ([entity], [row_id], [pid]) \
         INCLUDE ([version], [removed])",
        literal(&membership)
    ));
    Ok(out)
}

/// The unique index finding a row's membership entries (see
/// [`create_org_tables`]).
const MEMBERSHIP_ROW_INDEX: &str = "UX__sync_membership_row";

/// Fills the bookkeeping rows of a new org when missing: incarnation `@P1`,
/// head, schema version and tombstone floor 0. Returns the incarnation kept
/// (an existing one wins).
pub fn init_org(schema: &str) -> Result<String> {
    let info = qualified(schema, "_sync_info")?;
    let meta = qualified(schema, "_sync_meta")?;
    Ok(format!(
        "IF NOT EXISTS (SELECT 1 FROM {info} WHERE [name] = N'incarnation') \
         INSERT INTO {info} ([name], [value]) VALUES (N'incarnation', @P1); \
         INSERT INTO {meta} ([name], [value]) SELECT v.[name], 0 FROM (VALUES (N'head'), (N'schema_version'), (N'tombstone_floor')) AS v ([name]) \
         WHERE NOT EXISTS (SELECT 1 FROM {meta} AS m WHERE m.[name] = v.[name]); \
         SELECT [value] FROM {info} WHERE [name] = N'incarnation';"
    ))
}

/// The org's state in one row: incarnation, head, schema version,
/// tombstone floor.
pub fn org_state(schema: &str) -> Result<String> {
    let info = qualified(schema, "_sync_info")?;
    let meta = qualified(schema, "_sync_meta")?;
    let m = |name: &str| format!("(SELECT [value] FROM {meta} WHERE [name] = N'{name}')");
    Ok(format!(
        "SELECT i.[value], {}, {}, {} FROM {info} AS i WHERE i.[name] = N'incarnation'",
        m("head"),
        m("schema_version"),
        m("tombstone_floor")
    ))
}

/// Sets meta value `@P1` (`head`, `schema_version`, `tombstone_floor`) to `@P2`.
pub fn set_meta(schema: &str) -> Result<String> {
    Ok(format!("UPDATE {} SET [value] = @P2 WHERE [name] = @P1", qualified(schema, "_sync_meta")?))
}

/// Raises the tombstone floor to `@P1` (never lowers it).
pub fn raise_floor(schema: &str) -> Result<String> {
    Ok(format!(
        "UPDATE {} SET [value] = @P1 WHERE [name] = N'tombstone_floor' AND [value] < @P1",
        qualified(schema, "_sync_meta")?
    ))
}

/// Every staged schema: `(entity, metadata)`, ordered by entity.
pub fn select_schemas(schema: &str) -> Result<String> {
    Ok(format!("SELECT [entity], [metadata] FROM {} ORDER BY [entity]", qualified(schema, "_sync_schemas")?))
}

/// The metadata of entity `@P1`.
pub fn select_schema(schema: &str) -> Result<String> {
    Ok(format!("SELECT [metadata] FROM {} WHERE [entity] = @P1", qualified(schema, "_sync_schemas")?))
}

/// A staged entity whose name equals `@P1` ignoring case but differs from
/// it (SQL Server object names follow the database's collation, usually
/// case-insensitive, so such an entity could not have a table of its own).
pub fn schema_case_clash(schema: &str) -> Result<String> {
    Ok(format!(
        "SELECT TOP (1) [entity] FROM {} WHERE LOWER([entity]) = LOWER(@P1) AND [entity] <> @P1",
        qualified(schema, "_sync_schemas")?
    ))
}

/// Inserts or replaces entity `@P1`'s metadata `@P2` and hash `@P3`.
pub fn put_schema(schema: &str) -> Result<String> {
    Ok(format!(
        "MERGE {} WITH (HOLDLOCK) AS t USING (VALUES (@P1, @P2, @P3)) AS s ([entity], [metadata], [schema_hash]) \
         ON t.[entity] = s.[entity] \
         WHEN MATCHED THEN UPDATE SET t.[metadata] = s.[metadata], t.[schema_hash] = s.[schema_hash] \
         WHEN NOT MATCHED THEN INSERT ([entity], [metadata], [schema_hash]) VALUES (s.[entity], s.[metadata], s.[schema_hash]);",
        qualified(schema, "_sync_schemas")?
    ))
}

/// Every profile (JSON), ordered by name.
pub fn select_profiles(schema: &str) -> Result<String> {
    Ok(format!("SELECT [profile] FROM {} ORDER BY [name]", qualified(schema, "_sync_profiles")?))
}

/// Profile `@P1` (JSON).
pub fn select_profile(schema: &str) -> Result<String> {
    Ok(format!("SELECT [profile] FROM {} WHERE [name] = @P1", qualified(schema, "_sync_profiles")?))
}

/// Inserts or replaces profile `@P1` with JSON `@P2`.
pub fn put_profile(schema: &str) -> Result<String> {
    Ok(format!(
        "MERGE {} WITH (HOLDLOCK) AS t USING (VALUES (@P1, @P2)) AS s ([name], [profile]) ON t.[name] = s.[name] \
         WHEN MATCHED THEN UPDATE SET t.[profile] = s.[profile] \
         WHEN NOT MATCHED THEN INSERT ([name], [profile]) VALUES (s.[name], s.[profile]);",
        qualified(schema, "_sync_profiles")?
    ))
}

/// Deletes profile `@P1`.
pub fn delete_profile(schema: &str) -> Result<String> {
    Ok(format!("DELETE FROM {} WHERE [name] = @P1", qualified(schema, "_sync_profiles")?))
}

/// Partitions whose keys are `@P1..@Pn`: `(pid, partition_key)`, found by
/// the persisted hash.
pub fn select_partitions(schema: &str, count: usize) -> Result<String> {
    let hashes: Vec<String> =
        (1..=count.max(1)).map(|i| format!("CAST(HASHBYTES('SHA2_256', @P{i}) AS binary(32))")).collect();
    Ok(format!(
        "SELECT [pid], [partition_key] FROM {} WHERE [key_hash] IN ({})",
        qualified(schema, "_sync_partitions")?,
        hashes.join(", ")
    ))
}

/// Partitions `@P1..@Pn` with their checksums: `(partition_key,
/// checksum_sum, member_count)`.
pub fn select_checksums(schema: &str, count: usize) -> Result<String> {
    let hashes: Vec<String> =
        (1..=count.max(1)).map(|i| format!("CAST(HASHBYTES('SHA2_256', @P{i}) AS binary(32))")).collect();
    Ok(format!(
        "SELECT [partition_key], [checksum_sum], [member_count] FROM {} WHERE [key_hash] IN ({})",
        qualified(schema, "_sync_partitions")?,
        hashes.join(", ")
    ))
}

/// Registers partitions `@P1..@Pn` (new keys, at most 1,000) and returns
/// `(pid, partition_key)` of each.
pub fn insert_partitions(schema: &str, count: usize) -> Result<String> {
    Ok(format!(
        "INSERT INTO {} ([partition_key]) OUTPUT inserted.[pid], inserted.[partition_key] VALUES {}",
        qualified(schema, "_sync_partitions")?,
        value_rows(1, 1, count.max(1))
    ))
}

/// The live (non-removed) memberships of entity `@P1`'s rows `@P2..@Pn+1`:
/// `(row_id, partition_key, version)`.
pub fn select_live_memberships(schema: &str, count: usize) -> Result<String> {
    Ok(format!(
        "SELECT m.[row_id], p.[partition_key], m.[version] FROM {} AS m JOIN {} AS p ON p.[pid] = m.[pid] \
         WHERE m.[entity] = @P1 AND m.[removed] = 0 AND m.[row_id] IN ({})",
        qualified(schema, "_sync_membership")?,
        qualified(schema, "_sync_partitions")?,
        placeholders(2, count.max(1))
    ))
}

/// Parameters per op of [`merge_membership`].
pub const MEMBERSHIP_WIDTH: usize = 6;

/// Records the latest op of `rows` (partition, entity, row) triples in one
/// `MERGE … WITH (HOLDLOCK)`, replacing the previous op of each, so the log
/// keeps one entry per (partition, row). Each op binds pid, entity, row id,
/// seq, version, removed. The triples must be distinct.
pub fn merge_membership(schema: &str, rows: usize) -> Result<String> {
    Ok(format!(
        "MERGE {} WITH (HOLDLOCK) AS t \
         USING (VALUES {}) AS s ([pid], [entity], [row_id], [seq], [version], [removed]) \
         ON t.[entity] = s.[entity] AND t.[row_id] = s.[row_id] AND t.[pid] = s.[pid] \
         WHEN MATCHED THEN UPDATE SET t.[seq] = s.[seq], t.[version] = s.[version], t.[removed] = s.[removed] \
         WHEN NOT MATCHED THEN INSERT ([pid], [entity], [row_id], [seq], [version], [removed]) \
         VALUES (s.[pid], s.[entity], s.[row_id], s.[seq], s.[version], s.[removed]);",
        qualified(schema, "_sync_membership")?,
        value_rows(1, MEMBERSHIP_WIDTH, rows.max(1))
    ))
}

/// Adds checksum deltas to `rows` partitions: each binds pid, the sum delta
/// (0 to 2³²−1, added modulo 2³²) and the member-count delta.
pub fn add_checksums(schema: &str, rows: usize) -> Result<String> {
    Ok(format!(
        "UPDATE p SET [checksum_sum] = (p.[checksum_sum] + d.[dsum]) % CAST(4294967296 AS bigint), \
         [member_count] = p.[member_count] + d.[dcount] \
         FROM {} AS p JOIN (VALUES {}) AS d ([pid], [dsum], [dcount]) ON p.[pid] = d.[pid]",
        qualified(schema, "_sync_partitions")?,
        value_rows(1, 3, rows.max(1))
    ))
}

/// One partition's ops after a position: partition `@P1`, `seq > @P2`,
/// `seq <= @P3` (the snapshot's head), at most `@P4` ops, in seq order:
/// `(entity, row_id, seq, removed)`.
pub fn pull_ops(schema: &str) -> Result<String> {
    Ok(format!(
        "SELECT TOP (@P4) m.[entity], m.[row_id], m.[seq], m.[removed] FROM {} AS m \
         WHERE m.[pid] = @P1 AND m.[seq] > @P2 AND m.[seq] <= @P3 ORDER BY m.[seq]",
        qualified(schema, "_sync_membership")?
    ))
}

/// Deletes remove-entries with a seq at or below `@P1`.
pub fn purge_tombstones(schema: &str) -> Result<String> {
    Ok(format!("DELETE FROM {} WHERE [removed] = 1 AND [seq] <= @P1", qualified(schema, "_sync_membership")?))
}

/// Entity `@P1`'s committed source token.
pub fn select_token(schema: &str) -> Result<String> {
    Ok(format!("SELECT [token] FROM {} WHERE [entity] = @P1", qualified(schema, "_sync_tokens")?))
}

/// Every committed token: `(entity, token)`.
pub fn select_tokens(schema: &str) -> Result<String> {
    Ok(format!("SELECT [entity], [token] FROM {}", qualified(schema, "_sync_tokens")?))
}

/// Sets entity `@P1`'s token to `@P2`.
pub fn put_token(schema: &str) -> Result<String> {
    Ok(format!(
        "MERGE {} WITH (HOLDLOCK) AS t USING (VALUES (@P1, @P2)) AS s ([entity], [token]) ON t.[entity] = s.[entity] \
         WHEN MATCHED THEN UPDATE SET t.[token] = s.[token] \
         WHEN NOT MATCHED THEN INSERT ([entity], [token]) VALUES (s.[entity], s.[token]);",
        qualified(schema, "_sync_tokens")?
    ))
}

/// Records a run of entity `@P1` at `@P2` with `@P3` rows and error `@P4`
/// (null on success): the last success and the last error follow it.
pub fn record_run(schema: &str) -> Result<String> {
    Ok(format!(
        "MERGE {} WITH (HOLDLOCK) AS t USING (VALUES (@P1, @P2, @P3, @P4)) AS s ([entity], [at], [rows], [error]) \
         ON t.[entity] = s.[entity] \
         WHEN MATCHED THEN UPDATE SET t.[last_run] = s.[at], t.[last_rows] = s.[rows], t.[last_error] = s.[error], \
         t.[last_success] = CASE WHEN s.[error] IS NULL THEN s.[at] ELSE t.[last_success] END \
         WHEN NOT MATCHED THEN INSERT ([entity], [last_run], [last_success], [last_error], [last_rows]) \
         VALUES (s.[entity], s.[at], CASE WHEN s.[error] IS NULL THEN s.[at] END, s.[error], s.[rows]);",
        qualified(schema, "_sync_runs")?
    ))
}

/// Every recorded run: `(entity, last_run, last_success, last_error, last_rows)`.
pub fn select_runs(schema: &str) -> Result<String> {
    Ok(format!(
        "SELECT [entity], [last_run], [last_success], [last_error], [last_rows] FROM {}",
        qualified(schema, "_sync_runs")?
    ))
}

/// Mutation `@P1`'s record: `(fingerprint, outcome, checkpoint)`.
pub fn select_mutation(schema: &str) -> Result<String> {
    Ok(format!(
        "SELECT [fingerprint], [outcome], [checkpoint] FROM {} WHERE [id] = @P1",
        qualified(schema, "_sync_mutations")?
    ))
}

/// Records mutation `@P1` (fingerprint `@P2`, outcome `@P3`, checkpoint
/// `@P4`) unless it is known, and returns the fingerprint now recorded, so
/// two processes recording one id race safely.
pub fn record_mutation(schema: &str) -> Result<String> {
    let t = qualified(schema, "_sync_mutations")?;
    Ok(format!(
        "MERGE {t} WITH (HOLDLOCK) AS t USING (VALUES (@P1, @P2, @P3, @P4)) AS s ([id], [fingerprint], [outcome], [checkpoint]) \
         ON t.[id] = s.[id] \
         WHEN NOT MATCHED THEN INSERT ([id], [fingerprint], [outcome], [checkpoint]) \
         VALUES (s.[id], s.[fingerprint], s.[outcome], s.[checkpoint]); \
         SELECT [fingerprint] FROM {t} WHERE [id] = @P1;"
    ))
}

// ---------------------------------------------------------------------------
// Control plane and provisioning
// ---------------------------------------------------------------------------

/// The control-plane statements: orgs and the org directory, in the
/// control schema of the control database.
pub mod control {
    use super::{BIN2, literal, qualified, quote};
    use sync_core::Result;

    /// Creates the control schema (when it is not `dbo` and missing) and the
    /// tables `sync_orgs` (id, configuration JSON, incarnation) and
    /// `sync_org_directory` (id, base URL), under an application lock so
    /// processes starting together do not race. `@P1` is the schema name.
    pub fn create_tables(schema: &str) -> Result<String> {
        let orgs = qualified(schema, "sync_orgs")?;
        let dir = qualified(schema, "sync_org_directory")?;
        let create_schema = format!("CREATE SCHEMA {}", quote(schema)).replace('\'', "''");
        Ok(format!(
            "SET XACT_ABORT ON; BEGIN TRAN; \
             DECLARE @rc int; EXEC @rc = sp_getapplock @Resource = N'offline-sync/ddl/control', @LockMode = N'Exclusive', \
             @LockOwner = N'Transaction'; \
             IF @rc < 0 THROW 51000, N'the control table creation lock was not granted', 1; \
             IF SCHEMA_ID(@P1) IS NULL EXEC(N'{create_schema}'); \
             IF OBJECT_ID({}, N'U') IS NULL CREATE TABLE {orgs} ([id] nvarchar(128) COLLATE {BIN2} NOT NULL PRIMARY KEY, \
             [config] nvarchar(max) NOT NULL, [incarnation] nvarchar(200) NOT NULL); \
             IF OBJECT_ID({}, N'U') IS NULL CREATE TABLE {dir} ([id] nvarchar(128) COLLATE {BIN2} NOT NULL PRIMARY KEY, \
             [base_url] nvarchar(max) NOT NULL); \
             COMMIT;",
            literal(&orgs),
            literal(&dir)
        ))
    }

    /// Every org: `(id, config)`, ordered by id.
    pub fn select_orgs(schema: &str) -> Result<String> {
        Ok(format!("SELECT [id], [config] FROM {} ORDER BY [id]", qualified(schema, "sync_orgs")?))
    }

    /// Org `@P1`: `(config, incarnation)`.
    pub fn select_org(schema: &str) -> Result<String> {
        Ok(format!(
            "SELECT [config], [incarnation] FROM {} WHERE [id] = @P1",
            qualified(schema, "sync_orgs")?
        ))
    }

    /// An org whose id equals `@P1` ignoring case but differs from it (its
    /// database or schema name would collide on a case-insensitive server).
    pub fn org_case_clash(schema: &str) -> Result<String> {
        Ok(format!(
            "SELECT TOP (1) [id] FROM {} WHERE LOWER([id]) = LOWER(@P1) AND [id] <> @P1",
            qualified(schema, "sync_orgs")?
        ))
    }

    /// Inserts or replaces org `@P1` with configuration `@P2` and incarnation `@P3`.
    pub fn put_org(schema: &str) -> Result<String> {
        Ok(format!(
            "MERGE {} WITH (HOLDLOCK) AS t USING (VALUES (@P1, @P2, @P3)) AS s ([id], [config], [incarnation]) \
             ON t.[id] = s.[id] \
             WHEN MATCHED THEN UPDATE SET t.[config] = s.[config], t.[incarnation] = s.[incarnation] \
             WHEN NOT MATCHED THEN INSERT ([id], [config], [incarnation]) VALUES (s.[id], s.[config], s.[incarnation]);",
            qualified(schema, "sync_orgs")?
        ))
    }

    /// Deletes org `@P1`.
    pub fn delete_org(schema: &str) -> Result<String> {
        Ok(format!("DELETE FROM {} WHERE [id] = @P1", qualified(schema, "sync_orgs")?))
    }

    /// Sets org `@P1`'s directory entry to `@P2`.
    pub fn put_location(schema: &str) -> Result<String> {
        Ok(format!(
            "MERGE {} WITH (HOLDLOCK) AS t USING (VALUES (@P1, @P2)) AS s ([id], [base_url]) ON t.[id] = s.[id] \
             WHEN MATCHED THEN UPDATE SET t.[base_url] = s.[base_url] \
             WHEN NOT MATCHED THEN INSERT ([id], [base_url]) VALUES (s.[id], s.[base_url]);",
            qualified(schema, "sync_org_directory")?
        ))
    }

    /// Deletes org `@P1`'s directory entry.
    pub fn delete_location(schema: &str) -> Result<String> {
        Ok(format!("DELETE FROM {} WHERE [id] = @P1", qualified(schema, "sync_org_directory")?))
    }

    /// Org `@P1`'s directory entry.
    pub fn select_location(schema: &str) -> Result<String> {
        Ok(format!("SELECT [base_url] FROM {} WHERE [id] = @P1", qualified(schema, "sync_org_directory")?))
    }

    /// Drops the control tables (and the control schema unless it is `dbo`):
    /// what [`uninstall`](crate::SqlServerStagingStore::uninstall) runs after
    /// dropping every org. `@P1` is the schema name.
    pub fn drop_tables(schema: &str) -> Result<String> {
        let orgs = qualified(schema, "sync_orgs")?;
        let dir = qualified(schema, "sync_org_directory")?;
        let drop_schema = format!("DROP SCHEMA {}", quote(schema)).replace('\'', "''");
        Ok(format!(
            "IF OBJECT_ID({}, N'U') IS NOT NULL DROP TABLE {orgs}; \
             IF OBJECT_ID({}, N'U') IS NOT NULL DROP TABLE {dir}; \
             IF @P1 <> N'dbo' AND SCHEMA_ID(@P1) IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM sys.objects WHERE schema_id = SCHEMA_ID(@P1)) EXEC(N'{drop_schema}');",
            literal(&orgs),
            literal(&dir)
        ))
    }
}

/// `CREATE DATABASE` of an org (database-per-org layout) when missing, then,
/// only where needed, multi-user access (a drop interrupted after
/// `SET SINGLE_USER` leaves it single-user) and snapshot reads allowed.
/// `@P1` is the name. The name cannot be a parameter in DDL; it is a
/// validated identifier, bracket-quoted. Must run outside a transaction.
pub fn create_database(name: &str) -> Result<String> {
    sync_core::ids::validate_identifier("database", name)?;
    let q = quote(name);
    Ok(format!(
        "IF DB_ID(@P1) IS NULL CREATE DATABASE {q}; \
         IF EXISTS (SELECT 1 FROM sys.databases WHERE [name] = @P1 AND [user_access] <> 0) \
         ALTER DATABASE {q} SET MULTI_USER; \
         IF EXISTS (SELECT 1 FROM sys.databases WHERE [name] = @P1 AND [snapshot_isolation_state] = 0) \
         ALTER DATABASE {q} SET ALLOW_SNAPSHOT_ISOLATION ON;"
    ))
}

/// Drops an org's database, closing other sessions on it first. `@P1` is
/// the name. Must run outside a transaction.
///
/// `SET SINGLE_USER WITH ROLLBACK IMMEDIATE` closes every other session,
/// but the database then admits one session, and not necessarily this one:
/// a session of another process that connects between the `ALTER` and the
/// `DROP` takes the slot, and the `DROP` fails (error 3702). The failure is
/// caught and the database put back to `MULTI_USER` (so it is not left
/// admitting one session), then re-raised for the caller to retry; the
/// caller also makes other processes stop connecting first (see
/// [`mark_dropped`]). `SET OFFLINE` would keep everyone out, but dropping
/// an offline database leaves its files on disk, and re-creating the org
/// would then fail on them.
pub fn drop_database(name: &str) -> Result<String> {
    sync_core::ids::validate_identifier("database", name)?;
    let q = quote(name);
    Ok(format!(
        "IF DB_ID(@P1) IS NOT NULL BEGIN \
         BEGIN TRY ALTER DATABASE {q} SET SINGLE_USER WITH ROLLBACK IMMEDIATE; DROP DATABASE {q}; END TRY \
         BEGIN CATCH \
         IF EXISTS (SELECT 1 FROM sys.databases WHERE [name] = @P1 AND [user_access] = 1) \
         ALTER DATABASE {q} SET MULTI_USER WITH ROLLBACK IMMEDIATE; \
         THROW; \
         END CATCH; END"
    ))
}

/// Whether database `@P1` exists: one `bit`.
pub const DATABASE_EXISTS: &str = "SELECT CAST(CASE WHEN DB_ID(@P1) IS NULL THEN 0 ELSE 1 END AS bit)";

/// The incarnation [`mark_dropped`] writes: no real incarnation (a UUID's
/// hex digits) equals it.
pub const DROPPED_INCARNATION: &str = "dropped";

/// Marks the org in `schema` as dropped, when its bookkeeping exists: its
/// incarnation becomes [`DROPPED_INCARNATION`], so every handle of every
/// process finds its incarnation gone on its next call (and its head
/// poller stops) before the org's database or schema is dropped.
pub fn mark_dropped(schema: &str) -> Result<String> {
    let info = qualified(schema, "_sync_info")?;
    Ok(format!(
        "IF OBJECT_ID({}, N'U') IS NOT NULL UPDATE {info} SET [value] = N'{DROPPED_INCARNATION}' \
         WHERE [name] = N'incarnation' AND [value] <> N'{DROPPED_INCARNATION}'",
        literal(&info)
    ))
}

/// Allows snapshot reads in the current (control) database when they are
/// not yet allowed: the schema-per-org layout reads pulls from a snapshot
/// there. Azure SQL Database allows them by default.
pub const ALLOW_SNAPSHOT_HERE: &str = "IF EXISTS (SELECT 1 FROM sys.databases WHERE [name] = DB_NAME() \
     AND [snapshot_isolation_state] = 0) ALTER DATABASE CURRENT SET ALLOW_SNAPSHOT_ISOLATION ON;";

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
    use super::{BIN2, qualified, quote};
    use sync_core::Result;

    /// The longest dedup key a message may carry (UTF-16 code units): the
    /// `[dedup_key]` column is `nvarchar(400)`, so that `([queue],
    /// [dedup_key])` stays within a nonclustered index key's 1,700 bytes.
    pub const MAX_DEDUP_KEY: usize = 400;

    /// Equality of `[dedup_key]` with `{param}` exactly as the other queues
    /// compare keys: ordinal (the column is `BIN2`), and trailing spaces
    /// counted (`=` pads the shorter side with spaces; the lengths must
    /// match too).
    fn same_key(param: &str) -> String {
        format!("[dedup_key] = {param} AND DATALENGTH([dedup_key]) = DATALENGTH({param})")
    }

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
             DECLARE @rc int; EXEC @rc = sp_getapplock @Resource = N'offline-sync/ddl/queue', @LockMode = N'Exclusive', \
             @LockOwner = N'Transaction'; \
             IF @rc < 0 THROW 51000, N'the queue table creation lock was not granted', 1; \
             IF OBJECT_ID(N'{ml}', N'U') IS NULL BEGIN \
             CREATE TABLE {m} ([id] bigint IDENTITY(1,1) NOT NULL PRIMARY KEY CLUSTERED, \
             [queue] nvarchar(128) COLLATE {BIN2} NOT NULL, [body] varbinary(max) NOT NULL, \
             [dedup_key] nvarchar(400) COLLATE {BIN2} NULL, [visible_at] bigint NOT NULL, \
             [lease_token] nvarchar(64) NULL, [delivery_count] int NOT NULL DEFAULT 0, [enqueued_at] bigint NOT NULL); \
             CREATE INDEX {ixv} ON {m} ([queue], [visible_at], [id]) INCLUDE ([delivery_count]); \
             CREATE INDEX {ixk} ON {m} ([queue], [dedup_key]) WHERE [dedup_key] IS NOT NULL; END; \
             IF OBJECT_ID(N'{dl}', N'U') IS NULL BEGIN \
             CREATE TABLE {d} ([id] bigint NOT NULL PRIMARY KEY CLUSTERED, [queue] nvarchar(128) COLLATE {BIN2} NOT NULL, \
             [body] varbinary(max) NOT NULL, [dedup_key] nvarchar(400) COLLATE {BIN2} NULL, [delivery_count] int NOT NULL, \
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
             WHERE [queue] = @P1 AND {key} AND ([lease_token] IS NULL OR [visible_at] <= @now) ORDER BY [id]; \
             IF @id IS NOT NULL BEGIN \
             UPDATE {m} SET [visible_at] = @visible WHERE [id] = @id AND [visible_at] > @visible; \
             SELECT @id AS [id], CAST(1 AS bit) AS [deduplicated]; END \
             ELSE BEGIN \
             INSERT INTO {m} ([queue], [body], [dedup_key], [visible_at], [enqueued_at]) VALUES (@P1, @P2, @P3, @visible, @now); \
             SELECT CAST(SCOPE_IDENTITY() AS bigint) AS [id], CAST(0 AS bit) AS [deduplicated]; END; \
             COMMIT;",
            key = same_key("@P3")
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
            "DELETE FROM {} WHERE [queue] = @P1 AND {} AND ([lease_token] IS NULL OR [visible_at] <= {NOW_MS})",
            tables(schema)?.0,
            same_key("@P2")
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

    /// Every `@Pn` a statement mentions, as numbers, sorted and deduplicated.
    fn params_of(sql: &str) -> Vec<usize> {
        let mut out: Vec<usize> = sql
            .split("@P")
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Brackets and parentheses balance and every quoted literal closes.
    fn balanced(sql: &str) -> bool {
        let (mut paren, mut bracket, mut quoted) = (0i32, 0i32, false);
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            if quoted {
                if c == '\'' {
                    if chars.peek() == Some(&'\'') {
                        chars.next();
                    } else {
                        quoted = false;
                    }
                }
                continue;
            }
            match c {
                '\'' => quoted = true,
                '(' => paren += 1,
                ')' => paren -= 1,
                '[' => bracket += 1,
                ']' => {
                    if chars.peek() == Some(&']') && bracket > 0 {
                        chars.next();
                    } else {
                        bracket -= 1;
                    }
                }
                _ => {}
            }
            if paren < 0 || bracket < 0 {
                return false;
            }
        }
        paren == 0 && bracket == 0 && !quoted
    }

    #[test]
    fn quoting_doubles_closing_brackets() {
        assert_eq!(quote("select"), "[select]");
        assert_eq!(quote("a]]b"), "[a]]]]b]");
        assert_eq!(qualified("dbo", "account").unwrap(), "[dbo].[account]");
        assert!(qualified("dbo", "x]; DROP TABLE y; --").is_err());
        assert!(qualified("a b", "t").is_err());
        assert_eq!(literal("[a].[it's]"), "N'[a].[it''s]'");
    }

    #[test]
    fn lists_and_batching() {
        assert_eq!(placeholders(3, 3), "@P3, @P4, @P5");
        assert_eq!(value_rows(1, 2, 2), "(@P1, @P2), (@P3, @P4)");
        assert_eq!(rows_per_request(6), 333);
        assert_eq!(rows_per_request(5000), 1, "one row per request at least");
        assert!(rows_per_request(3) * 3 <= MAX_PARAMS && MAX_PARAMS < 2100);
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
            let a = Attribute::new(col("c"), ty.clone());
            assert_eq!(
                add_column("s", "t", &a).unwrap(),
                format!("ALTER TABLE [s].[t] ADD [c] {sql_ty} NULL")
            );
            assert_eq!(
                add_retype_column("s", "t", 4, &a).unwrap(),
                format!("ALTER TABLE [s].[t] ADD [_sync_retype_4] {sql_ty} NULL")
            );
            let m = EntityMetadata::new(
                EntityName::new("t").unwrap(),
                col("id"),
                vec![Attribute::new(col("id"), AttributeType::Uuid), a],
            )
            .unwrap();
            assert_eq!(
                create_entity_table("s", &m).unwrap(),
                format!(
                    "CREATE TABLE [s].[t] ([_sync_rowid] nvarchar(256) COLLATE Latin1_General_100_BIN2 NOT NULL \
                     PRIMARY KEY CLUSTERED, [id] uniqueidentifier NOT NULL, [c] {sql_ty} NULL, \
                     [_sync_version] bigint NOT NULL)"
                )
            );
        }
        // Keys: strings take their indexable form.
        assert_eq!(column_type(&AttributeType::String, true), "nvarchar(450)");
        assert_eq!(
            create_entity_table("org1", &meta(AttributeType::String)).unwrap(),
            "CREATE TABLE [org1].[account] ([_sync_rowid] nvarchar(256) COLLATE Latin1_General_100_BIN2 NOT NULL \
             PRIMARY KEY CLUSTERED, [id] nvarchar(450) NOT NULL, [name] nvarchar(max) NULL, \
             [_sync_version] bigint NOT NULL)"
        );
        assert_eq!(
            create_entity_table("org1", &meta(AttributeType::Integer)).unwrap(),
            "CREATE TABLE [org1].[account] ([_sync_rowid] nvarchar(256) COLLATE Latin1_General_100_BIN2 NOT NULL \
             PRIMARY KEY CLUSTERED, [id] bigint NOT NULL, [name] nvarchar(max) NULL, \
             [_sync_version] bigint NOT NULL)"
        );
        assert_eq!(
            drop_entity_table("s", "account").unwrap(),
            "IF OBJECT_ID(N'[s].[account]', N'U') IS NOT NULL DROP TABLE [s].[account]"
        );
    }

    #[test]
    fn schema_evolution_statements() {
        assert_eq!(
            drop_column("s", "account", "name").unwrap(),
            "ALTER TABLE [s].[account] DROP COLUMN [name]"
        );
        assert!(drop_column("s", "account", "x]y").is_err());
        assert_eq!(retype_scratch_column(12), "_sync_retype_12");
        assert_eq!(RENAME_COLUMN, "EXEC sp_rename @objname = @P1, @newname = @P2, @objtype = N'COLUMN';");
        assert_eq!(
            rename_column_params("s", "account", "_sync_retype_1", "name").unwrap(),
            ("[s].[account].[_sync_retype_1]".to_owned(), "name".to_owned())
        );
        assert!(rename_column_params("s", "account", "a", "b]").is_err());
        assert_eq!(
            update_rows("s", "account", &["_sync_retype_1".to_owned()], 2).unwrap(),
            "UPDATE t SET [_sync_retype_1] = v.[_sync_retype_1], [_sync_version] = v.[_sync_version] \
             FROM [s].[account] AS t JOIN (VALUES (@P1, @P2, @P3), (@P4, @P5, @P6)) \
             AS v ([_sync_rowid], [_sync_retype_1], [_sync_version]) ON t.[_sync_rowid] = v.[_sync_rowid]"
        );
        assert_eq!(
            update_rows("s", "account", &[], 1).unwrap(),
            "UPDATE t SET [_sync_version] = v.[_sync_version] FROM [s].[account] AS t \
             JOIN (VALUES (@P1, @P2)) AS v ([_sync_rowid], [_sync_version]) ON t.[_sync_rowid] = v.[_sync_rowid]"
        );
        assert!(update_rows("s", "account", &["bad name".to_owned()], 1).is_err());
    }

    #[test]
    fn upsert_is_a_holdlock_merge_of_bound_rows() {
        let m = meta(AttributeType::Integer);
        assert_eq!(upsert_width(&m), 4);
        assert_eq!(
            upsert_rows("s", &m, 2).unwrap(),
            "MERGE [s].[account] WITH (HOLDLOCK) AS t USING (VALUES (@P1, @P2, @P3, @P4), (@P5, @P6, @P7, @P8)) \
             AS s ([_sync_rowid], [id], [name], [_sync_version]) ON t.[_sync_rowid] = s.[_sync_rowid] \
             WHEN MATCHED THEN UPDATE SET t.[id] = s.[id], t.[name] = s.[name], t.[_sync_version] = s.[_sync_version] \
             WHEN NOT MATCHED THEN INSERT ([_sync_rowid], [id], [name], [_sync_version]) \
             VALUES (s.[_sync_rowid], s.[id], s.[name], s.[_sync_version]);"
        );
        let big = upsert_rows("s", &m, rows_per_request(upsert_width(&m))).unwrap();
        assert!(params_of(&big).len() <= MAX_PARAMS);
        assert!(big.ends_with(';'), "a MERGE must end with a semicolon");
    }

    #[test]
    fn row_reads_and_deletes() {
        let m = meta(AttributeType::Uuid);
        assert_eq!(
            select_rows("s", &m, 3).unwrap(),
            "SELECT [_sync_rowid], [id], [name], [_sync_version] FROM [s].[account] \
             WHERE [_sync_rowid] IN (@P1, @P2, @P3)"
        );
        assert_eq!(
            select_rows_after("s", &m).unwrap(),
            "SELECT TOP (@P2) [_sync_rowid], [id], [name], [_sync_version] FROM [s].[account] \
             WHERE [_sync_rowid] > @P1 ORDER BY [_sync_rowid]"
        );
        assert_eq!(
            row_ids_after("s", "account").unwrap(),
            "SELECT TOP (@P2) [_sync_rowid] FROM [s].[account] WHERE [_sync_rowid] > @P1 ORDER BY [_sync_rowid]"
        );
        assert_eq!(count_rows("s", "account").unwrap(), "SELECT COUNT_BIG(*) FROM [s].[account]");
        assert_eq!(
            delete_rows("s", "account", 2).unwrap(),
            "DELETE FROM [s].[account] WHERE [_sync_rowid] IN (@P1, @P2)"
        );
    }

    #[test]
    fn org_tables_and_bookkeeping() {
        let tables = create_org_tables("o").unwrap();
        let names = [
            "_sync_info",
            "_sync_meta",
            "_sync_schemas",
            "_sync_profiles",
            "_sync_partitions",
            "_sync_membership",
            "_sync_tokens",
            "_sync_runs",
            "_sync_mutations",
        ];
        assert_eq!(tables.len(), names.len() + 1, "the tables, then the membership row index");
        for (ddl, name) in tables.iter().zip(names) {
            assert!(
                ddl.starts_with(&format!(
                    "IF OBJECT_ID(N'[o].[{name}]', N'U') IS NULL CREATE TABLE [o].[{name}] ("
                )),
                "{ddl}"
            );
            assert!(balanced(ddl), "{ddl}");
            assert!(params_of(ddl).is_empty(), "DDL binds nothing: {ddl}");
        }
        assert!(tables[4].contains(
            "[key_hash] AS CAST(HASHBYTES('SHA2_256', [partition_key]) AS binary(32)) PERSISTED NOT NULL"
        ));
        assert!(tables[5].contains("PRIMARY KEY CLUSTERED ([pid], [seq]))"));
        for ddl in &tables[..names.len()] {
            // `CREATE TABLE`'s inline `INDEX` takes no `INCLUDE`: a syntax error on SQL Server.
            assert!(!ddl.contains("INCLUDE"), "{ddl}");
        }
        let index = &tables[names.len()];
        assert_eq!(
            index,
            "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE [object_id] = OBJECT_ID(N'[o].[_sync_membership]', N'U') \
             AND [name] = N'UX__sync_membership_row') \
             CREATE UNIQUE NONCLUSTERED INDEX [UX__sync_membership_row] ON [o].[_sync_membership] \
             ([entity], [row_id], [pid]) INCLUDE ([version], [removed])"
        );
        assert!(balanced(index) && params_of(index).is_empty());
        let init = init_org("o").unwrap();
        assert!(init.contains("INSERT INTO [o].[_sync_info] ([name], [value]) VALUES (N'incarnation', @P1)"));
        assert!(init.ends_with("SELECT [value] FROM [o].[_sync_info] WHERE [name] = N'incarnation';"));
        assert_eq!(
            org_state("o").unwrap(),
            "SELECT i.[value], (SELECT [value] FROM [o].[_sync_meta] WHERE [name] = N'head'), \
             (SELECT [value] FROM [o].[_sync_meta] WHERE [name] = N'schema_version'), \
             (SELECT [value] FROM [o].[_sync_meta] WHERE [name] = N'tombstone_floor') \
             FROM [o].[_sync_info] AS i WHERE i.[name] = N'incarnation'"
        );
        assert_eq!(set_meta("o").unwrap(), "UPDATE [o].[_sync_meta] SET [value] = @P2 WHERE [name] = @P1");
        assert_eq!(
            raise_floor("o").unwrap(),
            "UPDATE [o].[_sync_meta] SET [value] = @P1 WHERE [name] = N'tombstone_floor' AND [value] < @P1"
        );
        for (sql, n) in [
            (select_schemas("o").unwrap(), 0),
            (select_schema("o").unwrap(), 1),
            (schema_case_clash("o").unwrap(), 1),
            (put_schema("o").unwrap(), 3),
            (select_profiles("o").unwrap(), 0),
            (select_profile("o").unwrap(), 1),
            (put_profile("o").unwrap(), 2),
            (delete_profile("o").unwrap(), 1),
            (select_token("o").unwrap(), 1),
            (select_tokens("o").unwrap(), 0),
            (put_token("o").unwrap(), 2),
            (record_run("o").unwrap(), 4),
            (select_runs("o").unwrap(), 0),
            (select_mutation("o").unwrap(), 1),
            (record_mutation("o").unwrap(), 4),
            (purge_tombstones("o").unwrap(), 1),
        ] {
            assert_eq!(params_of(&sql), (1..=n).collect::<Vec<_>>(), "{sql}");
            assert!(balanced(&sql), "{sql}");
            if sql.starts_with("MERGE") {
                assert!(sql.contains("WITH (HOLDLOCK)") && sql.contains(';'), "{sql}");
            }
        }
        assert!(record_run("o").unwrap().contains(
            "t.[last_success] = CASE WHEN s.[error] IS NULL THEN s.[at] ELSE t.[last_success] END"
        ));
        assert!(record_mutation("o").unwrap().contains("WHEN NOT MATCHED THEN INSERT"));
        assert!(
            !record_mutation("o").unwrap().contains("WHEN MATCHED"),
            "a known mutation is never replaced"
        );
        assert_eq!(
            purge_tombstones("o").unwrap(),
            "DELETE FROM [o].[_sync_membership] WHERE [removed] = 1 AND [seq] <= @P1"
        );
    }

    #[test]
    fn membership_checksum_and_pull() {
        assert_eq!(
            select_partitions("s", 2).unwrap(),
            "SELECT [pid], [partition_key] FROM [s].[_sync_partitions] WHERE [key_hash] IN \
             (CAST(HASHBYTES('SHA2_256', @P1) AS binary(32)), CAST(HASHBYTES('SHA2_256', @P2) AS binary(32)))"
        );
        assert!(select_checksums("s", 1).unwrap().starts_with(
            "SELECT [partition_key], [checksum_sum], [member_count] FROM [s].[_sync_partitions] WHERE [key_hash] IN"
        ));
        assert_eq!(
            insert_partitions("s", 2).unwrap(),
            "INSERT INTO [s].[_sync_partitions] ([partition_key]) OUTPUT inserted.[pid], inserted.[partition_key] \
             VALUES (@P1), (@P2)"
        );
        assert_eq!(
            select_live_memberships("s", 2).unwrap(),
            "SELECT m.[row_id], p.[partition_key], m.[version] FROM [s].[_sync_membership] AS m \
             JOIN [s].[_sync_partitions] AS p ON p.[pid] = m.[pid] \
             WHERE m.[entity] = @P1 AND m.[removed] = 0 AND m.[row_id] IN (@P2, @P3)"
        );
        let merge = merge_membership("s", 2).unwrap();
        assert_eq!(
            merge,
            "MERGE [s].[_sync_membership] WITH (HOLDLOCK) AS t \
             USING (VALUES (@P1, @P2, @P3, @P4, @P5, @P6), (@P7, @P8, @P9, @P10, @P11, @P12)) \
             AS s ([pid], [entity], [row_id], [seq], [version], [removed]) \
             ON t.[entity] = s.[entity] AND t.[row_id] = s.[row_id] AND t.[pid] = s.[pid] \
             WHEN MATCHED THEN UPDATE SET t.[seq] = s.[seq], t.[version] = s.[version], t.[removed] = s.[removed] \
             WHEN NOT MATCHED THEN INSERT ([pid], [entity], [row_id], [seq], [version], [removed]) \
             VALUES (s.[pid], s.[entity], s.[row_id], s.[seq], s.[version], s.[removed]);"
        );
        assert_eq!(
            add_checksums("s", 1).unwrap(),
            "UPDATE p SET [checksum_sum] = (p.[checksum_sum] + d.[dsum]) % CAST(4294967296 AS bigint), \
             [member_count] = p.[member_count] + d.[dcount] FROM [s].[_sync_partitions] AS p \
             JOIN (VALUES (@P1, @P2, @P3)) AS d ([pid], [dsum], [dcount]) ON p.[pid] = d.[pid]"
        );
        assert_eq!(
            pull_ops("s").unwrap(),
            "SELECT TOP (@P4) m.[entity], m.[row_id], m.[seq], m.[removed] FROM [s].[_sync_membership] AS m \
             WHERE m.[pid] = @P1 AND m.[seq] > @P2 AND m.[seq] <= @P3 ORDER BY m.[seq]"
        );
        let full = merge_membership("s", rows_per_request(MEMBERSHIP_WIDTH)).unwrap();
        assert!(params_of(&full).len() <= MAX_PARAMS);
    }

    #[test]
    fn transactions_and_locks() {
        assert!(BEGIN_WRITE.contains("SET XACT_ABORT ON") && BEGIN_WRITE.ends_with("BEGIN TRANSACTION;"));
        assert!(BEGIN_WRITE.starts_with(SESSION_OPTIONS), "writes run with the indexed-view options");
        assert!(
            SESSION_OPTIONS.contains("SET QUOTED_IDENTIFIER ON")
                && SESSION_OPTIONS.contains("SET ARITHABORT ON")
        );
        assert!(BEGIN_SNAPSHOT.contains("SET TRANSACTION ISOLATION LEVEL SNAPSHOT; BEGIN TRANSACTION;"));
        assert!(COMMIT.starts_with("COMMIT TRANSACTION;") && COMMIT.contains("READ COMMITTED"));
        assert!(ROLLBACK.starts_with("IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;"));
        for plain in [SESSION_OPTIONS, BEGIN_WRITE, BEGIN_SNAPSHOT, COMMIT, ROLLBACK] {
            assert!(params_of(plain).is_empty(), "plain batches bind nothing: {plain}");
        }
        assert!(TAKE_ORG_LOCK.contains(
            "sp_getapplock @Resource = @P1, @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = @P2"
        ));
        assert!(TAKE_ORG_LOCK.contains("THROW 51000"));
        assert!(TAKE_SESSION_LOCK.contains("@LockOwner = N'Session', @LockTimeout = @P2"));
        assert_eq!(RELEASE_SESSION_LOCK, "EXEC sp_releaseapplock @Resource = @P1, @LockOwner = N'Session';");
        let org = OrgId::new("Contoso").unwrap();
        assert_eq!(org_lock_resource(&org), "offline-sync/org/Contoso");
        assert_eq!(provision_lock_resource(&org), "offline-sync/provision/contoso");
    }

    #[test]
    fn provisioning_in_both_layouts() {
        assert_eq!(
            create_database("sync_org_a").unwrap(),
            "IF DB_ID(@P1) IS NULL CREATE DATABASE [sync_org_a]; \
             IF EXISTS (SELECT 1 FROM sys.databases WHERE [name] = @P1 AND [user_access] <> 0) \
             ALTER DATABASE [sync_org_a] SET MULTI_USER; \
             IF EXISTS (SELECT 1 FROM sys.databases WHERE [name] = @P1 AND [snapshot_isolation_state] = 0) \
             ALTER DATABASE [sync_org_a] SET ALLOW_SNAPSHOT_ISOLATION ON;"
        );
        assert_eq!(
            drop_database("sync_org_a").unwrap(),
            "IF DB_ID(@P1) IS NOT NULL BEGIN \
             BEGIN TRY ALTER DATABASE [sync_org_a] SET SINGLE_USER WITH ROLLBACK IMMEDIATE; \
             DROP DATABASE [sync_org_a]; END TRY \
             BEGIN CATCH IF EXISTS (SELECT 1 FROM sys.databases WHERE [name] = @P1 AND [user_access] = 1) \
             ALTER DATABASE [sync_org_a] SET MULTI_USER WITH ROLLBACK IMMEDIATE; THROW; END CATCH; END"
        );
        assert!(balanced(&drop_database("sync_org_a").unwrap()));
        // A failed drop never leaves the database admitting one session, and
        // is re-raised (THROW) for the caller's retry.
        assert_eq!(DATABASE_EXISTS, "SELECT CAST(CASE WHEN DB_ID(@P1) IS NULL THEN 0 ELSE 1 END AS bit)");
        assert_eq!(
            mark_dropped("dbo").unwrap(),
            "IF OBJECT_ID(N'[dbo].[_sync_info]', N'U') IS NOT NULL UPDATE [dbo].[_sync_info] \
             SET [value] = N'dropped' WHERE [name] = N'incarnation' AND [value] <> N'dropped'"
        );
        assert!(mark_dropped("x]").is_err());
        assert_eq!(create_schema("o").unwrap(), "IF SCHEMA_ID(@P1) IS NULL EXEC(N'CREATE SCHEMA [o]')");
        let drop = drop_schema("o").unwrap();
        assert!(drop.contains("QUOTENAME(s.name)") && drop.ends_with("EXEC(N'DROP SCHEMA [o]'); END"));
        assert!(ALLOW_SNAPSHOT_HERE.contains("ALTER DATABASE CURRENT SET ALLOW_SNAPSHOT_ISOLATION ON"));
        for bad in ["x]", "a;b", "", "1a"] {
            assert!(create_database(bad).is_err(), "{bad}");
            assert!(drop_database(bad).is_err(), "{bad}");
            assert!(create_schema(bad).is_err(), "{bad}");
            assert!(drop_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn control_plane_statements() {
        let create = control::create_tables("ctl").unwrap();
        assert!(create.starts_with("SET XACT_ABORT ON; BEGIN TRAN;") && create.ends_with("COMMIT;"));
        assert!(create.contains("IF SCHEMA_ID(@P1) IS NULL EXEC(N'CREATE SCHEMA [ctl]');"));
        // sp_getapplock reports a lock not granted (timeout, deadlock) by its
        // return code, not by an error: the code is checked.
        assert!(create.contains(
            "DECLARE @rc int; EXEC @rc = sp_getapplock @Resource = N'offline-sync/ddl/control', \
             @LockMode = N'Exclusive', @LockOwner = N'Transaction'; IF @rc < 0 THROW 51000,"
        ));
        assert!(create.contains(
            "IF OBJECT_ID(N'[ctl].[sync_orgs]', N'U') IS NULL CREATE TABLE [ctl].[sync_orgs] \
             ([id] nvarchar(128) COLLATE Latin1_General_100_BIN2 NOT NULL PRIMARY KEY"
        ));
        assert!(balanced(&create));
        assert_eq!(
            control::select_orgs("ctl").unwrap(),
            "SELECT [id], [config] FROM [ctl].[sync_orgs] ORDER BY [id]"
        );
        assert_eq!(
            control::select_org("ctl").unwrap(),
            "SELECT [config], [incarnation] FROM [ctl].[sync_orgs] WHERE [id] = @P1"
        );
        assert!(control::put_org("ctl").unwrap().starts_with("MERGE [ctl].[sync_orgs] WITH (HOLDLOCK) AS t"));
        assert_eq!(control::delete_org("ctl").unwrap(), "DELETE FROM [ctl].[sync_orgs] WHERE [id] = @P1");
        assert!(control::org_case_clash("ctl").unwrap().contains("LOWER([id]) = LOWER(@P1) AND [id] <> @P1"));
        assert!(
            control::put_location("ctl")
                .unwrap()
                .starts_with("MERGE [ctl].[sync_org_directory] WITH (HOLDLOCK)")
        );
        assert_eq!(
            control::select_location("ctl").unwrap(),
            "SELECT [base_url] FROM [ctl].[sync_org_directory] WHERE [id] = @P1"
        );
        assert_eq!(
            control::delete_location("ctl").unwrap(),
            "DELETE FROM [ctl].[sync_org_directory] WHERE [id] = @P1"
        );
        let drop = control::drop_tables("ctl").unwrap();
        assert!(drop.contains("DROP TABLE [ctl].[sync_orgs]") && drop.contains("EXEC(N'DROP SCHEMA [ctl]')"));
        assert!(balanced(&drop));
        assert!(control::create_tables("bad]").is_err());
    }

    #[test]
    fn queue_lease_skips_locked_rows_and_outputs_the_message() {
        let r = queue::receive("dbo").unwrap();
        assert!(r.contains(
            "WITH [next] AS (SELECT TOP (1) * FROM [dbo].[sync_queue_messages] WITH (READPAST, UPDLOCK, ROWLOCK) \
             WHERE [queue] = @P1 AND [visible_at] <= @now AND [delivery_count] < @P2 ORDER BY [visible_at], [id])"
        ));
        assert!(r.contains(
            "UPDATE [next] SET [lease_token] = @P3, [visible_at] = @now + @P4, [delivery_count] = [delivery_count] + 1 \
             OUTPUT inserted.[id], inserted.[body], inserted.[dedup_key], inserted.[delivery_count];"
        ));
        // Exhausted messages are dead-lettered before leasing.
        let bury = r.find("INTO [dbo].[sync_queue_dead_letters]").unwrap();
        assert!(bury < r.find("WITH [next]").unwrap());
        assert!(r.starts_with("SET XACT_ABORT ON; BEGIN TRAN;") && r.ends_with("COMMIT;"));
    }

    #[test]
    fn queue_send_dedup_and_lease_holder_statements() {
        let s = queue::send("dbo").unwrap();
        assert!(s.contains(
            "WITH (UPDLOCK, HOLDLOCK) WHERE [queue] = @P1 AND [dedup_key] = @P3 AND DATALENGTH([dedup_key]) = DATALENGTH(@P3) \
             AND ([lease_token] IS NULL OR [visible_at] <= @now)"
        ));
        assert!(s.contains(
            "INSERT INTO [dbo].[sync_queue_messages] ([queue], [body], [dedup_key], [visible_at], [enqueued_at]) VALUES (@P1, @P2, @P3, @visible, @now)"
        ));
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
                .contains("[queue] = @P1 AND [dedup_key] = @P2 AND DATALENGTH([dedup_key]) = DATALENGTH(@P2) AND ([lease_token] IS NULL")
        );
        assert!(
            queue::depth("dbo").unwrap().contains("FROM [dbo].[sync_queue_messages] WHERE [queue] = @P1")
        );
        assert!(queue::dead_letters("dbo").unwrap().starts_with("SELECT TOP (@P2)"));
        let ddl = queue::create_tables("dbo").unwrap();
        assert!(ddl.contains("IF OBJECT_ID(N'[dbo].[sync_queue_messages]', N'U') IS NULL"));
        // Keys and queue names compare as the other queues compare them:
        // ordinally, whatever the database's (often case-insensitive) collation.
        assert!(ddl.contains("[queue] nvarchar(128) COLLATE Latin1_General_100_BIN2 NOT NULL"));
        assert!(ddl.contains(&format!(
            "[dedup_key] nvarchar({}) COLLATE Latin1_General_100_BIN2 NULL",
            queue::MAX_DEDUP_KEY
        )));
        assert!(!ddl.contains("nvarchar(128) NOT NULL") && !ddl.contains("nvarchar(400) NULL"));
        assert!(ddl.contains("EXEC @rc = sp_getapplock") && ddl.contains("IF @rc < 0 THROW 51000,"));
        assert!(balanced(&ddl));
        assert!(queue::send("bad]schema").is_err());
    }
}
