//! The demo system of record: a generated CRM (business units, users,
//! accounts, contacts, opportunities, tasks) held in a `MemorySource`, and a
//! background task that keeps changing it so clients always have something
//! new to sync.

use std::sync::Arc;
use std::time::Duration;

use sync_core::memory::MemorySource;
use sync_core::{
    Attribute, AttributeType, ColumnName, EntityMetadata, EntityName, Result, Row, RowId, Value,
};
use uuid::Uuid;

/// The demo users who get dev tokens: (name, user id).
pub const DEMO_USERS: [(&str, u128); 2] = [("alice", 0xa11ce), ("bob", 0xb0b)];
/// Further owners who hold rows but get no token.
const OTHER_OWNERS: [u128; 3] = [0xc0ffee, 0xd00d, 0xe1e];

/// The user id of a demo owner.
pub fn user_id(n: u128) -> Uuid {
    Uuid::from_u128(0x5157_0000_0000_0000_0000_0000_0000_0000 | n)
}

/// SplitMix64: a small deterministic generator, so every run makes the same CRM.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn col(name: &str) -> Result<ColumnName> {
    ColumnName::new(name)
}

fn entity(name: &str, key: &str, attrs: &[(&str, AttributeType)]) -> Result<EntityMetadata> {
    let mut attributes = vec![Attribute::new(col(key)?, AttributeType::Uuid)];
    for (n, t) in attrs {
        attributes.push(Attribute::new(col(n)?, t.clone()));
    }
    EntityMetadata::new(EntityName::new(name)?, col(key)?, attributes)
}

/// The demo CRM's schemas.
pub fn schemas() -> Result<Vec<EntityMetadata>> {
    let lookup =
        |t: &str| -> Result<AttributeType> { Ok(AttributeType::Lookup { target: EntityName::new(t)? }) };
    Ok(vec![
        entity("businessunit", "businessunitid", &[("name", AttributeType::String)])?,
        entity(
            "account",
            "accountid",
            &[
                ("name", AttributeType::String),
                ("ownerid", lookup("systemuser")?),
                ("owningbusinessunit", lookup("businessunit")?),
                ("revenue", AttributeType::Decimal),
                ("statecode", AttributeType::Integer),
                ("modifiedon", AttributeType::DateTime),
            ],
        )?,
        entity(
            "contact",
            "contactid",
            &[
                ("fullname", AttributeType::String),
                ("emailaddress1", AttributeType::String),
                ("parentcustomerid", lookup("account")?),
                ("ownerid", lookup("systemuser")?),
                ("statecode", AttributeType::Integer),
            ],
        )?,
        entity(
            "opportunity",
            "opportunityid",
            &[
                ("name", AttributeType::String),
                ("customerid", lookup("account")?),
                ("ownerid", lookup("systemuser")?),
                ("estimatedvalue", AttributeType::Decimal),
                ("closeprobability", AttributeType::Integer),
                ("statecode", AttributeType::Integer),
            ],
        )?,
        entity(
            "task",
            "activityid",
            &[
                ("subject", AttributeType::String),
                ("regardingobjectid", lookup("account")?),
                ("ownerid", lookup("systemuser")?),
                ("statecode", AttributeType::Integer),
                ("scheduledend", AttributeType::DateTime),
                ("isurgent", AttributeType::Boolean),
            ],
        )?,
    ])
}

/// How big the generated CRM is.
#[derive(Clone, Copy, Debug)]
pub struct DemoSize {
    /// Accounts; contacts, opportunities and tasks scale with it.
    pub accounts: u64,
}

const NAMES: [&str; 12] = [
    "Contoso",
    "Fabrikam",
    "Northwind",
    "Adventure Works",
    "Litware",
    "Tailspin",
    "Woodgrove",
    "Proseware",
    "Alpine",
    "Coho",
    "Fourth Coffee",
    "Wingtip",
];
const FIRST: [&str; 8] = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana"];
const LAST: [&str; 8] = ["Silva", "Novak", "Okafor", "Larsen", "Kim", "Haddad", "Ivanova", "Mendez"];

fn owners() -> Vec<Uuid> {
    DEMO_USERS.iter().map(|(_, n)| user_id(*n)).chain(OTHER_OWNERS.iter().map(|n| user_id(*n))).collect()
}

fn id(kind: u128, n: u64) -> Uuid {
    Uuid::from_u128((kind << 96) | u128::from(n))
}

fn now() -> Value {
    Value::DateTime(
        time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
    )
}

fn row(key: Uuid, values: Vec<(&str, Value)>) -> Result<Row> {
    let mut out = Vec::with_capacity(values.len());
    for (c, v) in values {
        out.push((col(c)?, v));
    }
    Ok(Row::new(RowId::new(key.to_string())?, out))
}

fn account_row(rng: &mut Rng, n: u64, owners: &[Uuid]) -> Result<Row> {
    let name = format!("{} {}", rng.pick(&NAMES), n);
    row(
        id(1, n),
        vec![
            ("name", Value::from(name)),
            ("ownerid", Value::Uuid(*rng.pick(owners))),
            ("owningbusinessunit", Value::Uuid(id(9, rng.below(3)))),
            ("revenue", Value::Decimal(rust_decimal::Decimal::new(rng.below(10_000_000) as i64, 2))),
            ("statecode", Value::Integer((rng.below(10) == 0) as i64)),
            ("modifiedon", now()),
        ],
    )
}

fn contact_row(rng: &mut Rng, n: u64, accounts: u64, owners: &[Uuid]) -> Result<Row> {
    let (f, l) = (rng.pick(&FIRST), rng.pick(&LAST));
    row(
        id(2, n),
        vec![
            ("fullname", Value::from(format!("{f} {l}"))),
            (
                "emailaddress1",
                Value::from(format!("{}.{}{n}@example.com", f.to_lowercase(), l.to_lowercase())),
            ),
            ("parentcustomerid", Value::Uuid(id(1, rng.below(accounts)))),
            ("ownerid", Value::Uuid(*rng.pick(owners))),
            ("statecode", Value::Integer(0)),
        ],
    )
}

fn opportunity_row(rng: &mut Rng, n: u64, accounts: u64, owners: &[Uuid]) -> Result<Row> {
    row(
        id(3, n),
        vec![
            ("name", Value::from(format!("Deal {n}"))),
            ("customerid", Value::Uuid(id(1, rng.below(accounts)))),
            ("ownerid", Value::Uuid(*rng.pick(owners))),
            ("estimatedvalue", Value::Decimal(rust_decimal::Decimal::new(rng.below(50_000_000) as i64, 2))),
            ("closeprobability", Value::Integer(rng.below(101) as i64)),
            ("statecode", Value::Integer((rng.below(4) == 0) as i64)),
        ],
    )
}

fn task_row(rng: &mut Rng, n: u64, accounts: u64, owners: &[Uuid]) -> Result<Row> {
    let subjects = ["Call back", "Send quote", "Site visit", "Follow up", "Renewal review"];
    row(
        id(4, n),
        vec![
            ("subject", Value::from(format!("{} #{n}", rng.pick(&subjects)))),
            ("regardingobjectid", Value::Uuid(id(1, rng.below(accounts)))),
            ("ownerid", Value::Uuid(*rng.pick(owners))),
            ("statecode", Value::Integer((rng.below(3) == 0) as i64)),
            ("scheduledend", now()),
            ("isurgent", Value::Boolean(rng.below(5) == 0)),
        ],
    )
}

/// Builds the demo source with its generated rows.
pub fn build(size: DemoSize) -> Result<Arc<MemorySource>> {
    let source = Arc::new(MemorySource::with_entities(schemas()?)?);
    let owners = owners();
    let mut rng = Rng::new(42);
    for (i, name) in ["North", "South", "Central"].iter().enumerate() {
        source.upsert("businessunit", row(id(9, i as u64), vec![("name", Value::from(*name))])?)?;
    }
    let a = size.accounts.max(1);
    for n in 0..a {
        source.upsert("account", account_row(&mut rng, n, &owners)?)?;
    }
    for n in 0..a * 3 {
        source.upsert("contact", contact_row(&mut rng, n, a, &owners)?)?;
    }
    for n in 0..a * 2 {
        source.upsert("opportunity", opportunity_row(&mut rng, n, a, &owners)?)?;
    }
    for n in 0..a * 4 {
        source.upsert("task", task_row(&mut rng, n, a, &owners)?)?;
    }
    Ok(source)
}

/// Keeps the demo CRM changing: every `every`, `changes` random edits
/// (mostly updates, some inserts and deletes), until the task is aborted.
pub async fn keep_changing(source: Arc<MemorySource>, size: DemoSize, every: Duration, changes: u32) {
    let owners = owners();
    let mut rng = Rng::new(7);
    let a = size.accounts.max(1);
    let mut next_task = a * 4;
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let mut applied = 0;
        for _ in 0..changes {
            let result: Result<()> = match rng.below(10) {
                0..=3 => {
                    let n = rng.below(next_task);
                    task_row(&mut rng, n, a, &owners).and_then(|r| source.upsert("task", r)).map(drop)
                }
                4..=5 => {
                    let n = rng.below(a);
                    account_row(&mut rng, n, &owners).and_then(|r| source.upsert("account", r)).map(drop)
                }
                6 => {
                    let n = rng.below(a * 2);
                    opportunity_row(&mut rng, n, a, &owners)
                        .and_then(|r| source.upsert("opportunity", r))
                        .map(drop)
                }
                7..=8 => {
                    next_task += 1;
                    task_row(&mut rng, next_task, a, &owners).and_then(|r| source.upsert("task", r)).map(drop)
                }
                // Deleting a task that is already gone is fine: the demo only needs churn.
                _ => source.delete("task", &id(4, rng.below(next_task)).to_string()).map(drop),
            };
            match result {
                Ok(_) => applied += 1,
                Err(e) => tracing::warn!(error = %e, "demo source change failed"),
            }
        }
        tracing::debug!(applied, "demo source changed");
    }
}
