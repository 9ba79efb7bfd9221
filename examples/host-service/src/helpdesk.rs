//! The host's system of record: a small helpdesk of tickets, held in a
//! [`MemorySource`], and the mobile offline profile its agents use.

use std::sync::Arc;

use sync_core::memory::MemorySource;
use sync_core::{
    Attribute, AttributeType, ColumnName, EntityMetadata, EntityName, Profile, ProfileItem, ProfileName,
    Result, Row, RowId, Value,
};

/// The helpdesk org's id.
pub const ORG: &str = "helpdesk";
/// The role the agents' profile admits.
pub const AGENT_ROLE: &str = "agent";
/// The ticket entity.
pub const TICKET: &str = "ticket";
/// The agents tickets are assigned to, in assignment order.
pub const AGENTS: [&str; 3] = ["alice", "bob", "carol"];
/// How many tickets the helpdesk starts with.
pub const TICKETS: usize = 30;

fn col(name: &str) -> Result<ColumnName> {
    ColumnName::new(name)
}

/// The schema of a ticket.
pub fn ticket_metadata() -> Result<EntityMetadata> {
    EntityMetadata::new(
        EntityName::new(TICKET)?,
        col("ticketid")?,
        vec![
            Attribute::new(col("ticketid")?, AttributeType::String),
            Attribute::new(col("title")?, AttributeType::String),
            Attribute::new(col("assignee")?, AttributeType::String),
            Attribute::new(col("status")?, AttributeType::String),
            Attribute::new(col("priority")?, AttributeType::Integer),
        ],
    )
}

/// The id of the `n`-th ticket (`T-0001`, …).
pub fn ticket_id(n: usize) -> String {
    format!("T-{n:04}")
}

/// The helpdesk with its [`TICKETS`] tickets: assigned round-robin to the
/// [`AGENTS`], every fifth one closed. The same every time.
pub fn build() -> Result<Arc<MemorySource>> {
    let source = MemorySource::with_entities([ticket_metadata()?])?;
    for n in 1..=TICKETS {
        let status = if n % 5 == 0 { "closed" } else { "open" };
        let row = Row::new(
            RowId::new(ticket_id(n))?,
            [
                (col("title")?, Value::from(format!("Customer issue #{n}"))),
                (col("assignee")?, Value::from(AGENTS[n % AGENTS.len()])),
                (col("status")?, Value::from(status)),
                (col("priority")?, Value::from((n % 4) as i64)),
            ],
        );
        source.upsert(TICKET, row)?;
    }
    Ok(Arc::new(source))
}

/// The agents' profile: each agent takes their own open tickets offline
/// and may update them there.
pub fn agent_profile() -> Result<Profile> {
    let mut tickets = ProfileItem::new(EntityName::new(TICKET)?, "assignee eq @user.id and status eq 'open'");
    tickets.allow_upload = true;
    Ok(Profile {
        name: ProfileName::new("field_agents")?,
        roles: [AGENT_ROLE.to_owned()].into(),
        items: vec![tickets],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpdesk_is_deterministic_and_mixed() {
        let a = build().unwrap().rows(TICKET).unwrap();
        let b = build().unwrap().rows(TICKET).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), TICKETS);
        let open_for_alice = a
            .iter()
            .filter(|r| r.get("assignee") == Some(&Value::from("alice")))
            .filter(|r| r.get("status") == Some(&Value::from("open")))
            .count();
        assert!(open_for_alice > 0 && open_for_alice < TICKETS / AGENTS.len());
        assert!(agent_profile().is_ok());
    }
}
