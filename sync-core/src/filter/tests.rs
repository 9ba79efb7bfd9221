use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::ids::{EntityName, OrgId, ProfileName, RowId};
use crate::partition::{MembershipAction, Partition, PartitionKey};
use crate::principal::Principal;
use crate::profile::{Profile, ProfileItem};
use crate::schema::Attribute;

fn col(s: &str) -> ColumnName {
    ColumnName::new(s).unwrap()
}

fn account() -> EntityMetadata {
    EntityMetadata::new(
        EntityName::new("account").unwrap(),
        col("accountid"),
        vec![
            Attribute::new(col("accountid"), AttributeType::Uuid),
            Attribute::new(col("name"), AttributeType::String),
            Attribute::new(col("statecode"), AttributeType::Integer),
            Attribute::new(col("revenue"), AttributeType::Decimal),
            Attribute::new(
                col("ownerid"),
                AttributeType::Lookup { target: EntityName::new("systemuser").unwrap() },
            ),
            Attribute::new(col("modifiedon"), AttributeType::DateTime),
            Attribute::new(col("teamid"), AttributeType::String),
        ],
    )
    .unwrap()
}

fn row(values: &[(&str, Value)]) -> Row {
    let id = uuid::Uuid::new_v4();
    account()
        .check_row(Row::new(
            RowId::new(id.to_string()).unwrap(),
            values.iter().map(|(c, v)| (col(c), v.clone())),
        ))
        .unwrap()
}

fn invalid_pos(r: Result<CompiledFilter>) -> Option<usize> {
    match r {
        Err(Error::InvalidInput { position, .. }) => position,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn compiles_and_evaluates_the_design_example() {
    let f = CompiledFilter::compile(
        "statecode eq 0 and ownerid eq @user.id and (revenue gt 1000 or name ne null)",
        &account(),
    )
    .unwrap();
    assert_eq!(f.params().len(), 1);
    assert_eq!(f.params()[0].param, "user.id");
    let owner = uuid::Uuid::new_v4();
    let r = row(&[("statecode", 0.into()), ("ownerid", owner.into()), ("revenue", Value::from("5000"))]);
    let params = f.row_params(&r).unwrap();
    assert_eq!(params["user.id"], owner.to_string());
    let p: BTreeMap<String, Value> =
        [("user.id".to_owned(), Value::from(owner.to_string().to_uppercase()))].into();
    assert!(f.matches(&r, &p));
    let small = row(&[("statecode", 0.into()), ("ownerid", owner.into()), ("revenue", Value::from("5"))]);
    assert!(f.row_params(&small).is_none());
    let named = row(&[("statecode", 0.into()), ("ownerid", owner.into()), ("name", "x".into())]);
    assert!(f.row_params(&named).is_some());
    let unowned = row(&[("statecode", 0.into()), ("revenue", Value::from("5000"))]);
    assert!(f.row_params(&unowned).is_none(), "a null parameter column admits no principal");
}

#[test]
fn misplaced_parameters_are_rejected_with_position() {
    let e = account();
    assert_eq!(invalid_pos(CompiledFilter::compile("statecode eq 0 or ownerid eq @user.id", &e)), Some(29));
    assert_eq!(invalid_pos(CompiledFilter::compile("not (ownerid eq @user.id)", &e)), Some(16));
    assert_eq!(invalid_pos(CompiledFilter::compile("name ne @user.name", &e)), Some(8));
    assert_eq!(invalid_pos(CompiledFilter::compile("name eq @tenant.id", &e)), Some(8));
    assert!(CompiledFilter::compile("@user.team eq teamid and ownerid eq @user.id", &e).is_ok());
}

#[test]
fn unknown_columns_and_ill_typed_literals_are_rejected() {
    let e = account();
    assert_eq!(invalid_pos(CompiledFilter::compile("statecode eq 0 and nosuch eq 1", &e)), Some(19));
    assert!(CompiledFilter::compile("statecode eq 'open'", &e).is_err());
    assert!(CompiledFilter::compile("ownerid eq 'not-a-guid'", &e).is_err());
    assert!(CompiledFilter::compile("modifiedon gt 'yesterday'", &e).is_err());
    assert!(CompiledFilter::compile("modifiedon gt '2024-01-01T00:00:00Z'", &e).is_ok());
    assert!(CompiledFilter::compile("modifiedon gt 2024-01-01T00:00:00Z", &e).is_ok());
}

#[test]
fn null_semantics() {
    let e = account();
    let r = row(&[]);
    let yes = |t: &str| CompiledFilter::compile(t, &e).unwrap().matches_rest(&r);
    assert!(yes("name eq null"));
    assert!(!yes("name ne null"));
    assert!(!yes("revenue gt 0"));
    assert!(!yes("revenue le 0"));
    assert!(yes("not (revenue gt 0)"));
    assert!(yes("name ne 'x'"));
    assert!(!yes("statecode in (0, 1)"));
    assert!(yes("statecode in (0, null)"));
}

#[test]
fn datetime_and_guid_comparisons() {
    let e = account();
    let t =
        time::OffsetDateTime::parse("2024-06-01T00:00:00Z", &time::format_description::well_known::Rfc3339)
            .unwrap();
    let owner = uuid::Uuid::new_v4();
    let r = row(&[("modifiedon", Value::DateTime(t)), ("ownerid", owner.into())]);
    let yes = |t: &str| CompiledFilter::compile(t, &e).unwrap().matches_rest(&r);
    assert!(yes("modifiedon gt 2024-01-01T00:00:00Z"));
    assert!(yes("modifiedon lt 2024-06-01T02:00:00+01:00"));
    assert!(!yes("modifiedon lt 2024-06-01T01:00:00+01:00"));
    assert!(yes(&format!("ownerid eq {}", owner.to_string().to_uppercase())));
    assert!(yes(&format!("ownerid eq '{owner}'")));
}

fn profile(name: &str, roles: &[&str], items: Vec<ProfileItem>) -> Profile {
    Profile {
        name: ProfileName::new(name).unwrap(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        items,
    }
}

#[test]
fn validate_profile_names_the_item() {
    let schemas = vec![account()];
    let good = profile(
        "sales",
        &["rep"],
        vec![ProfileItem::new(EntityName::new("account").unwrap(), "statecode eq 0")],
    );
    assert!(validate_profile(&good, &schemas).is_ok());
    let bad = profile(
        "sales",
        &["rep"],
        vec![ProfileItem::new(EntityName::new("account").unwrap(), "statecode eq 0 or ownerid eq @user.id")],
    );
    let err = validate_profile(&bad, &schemas).unwrap_err().to_string();
    assert!(err.contains("item 'account'") && err.contains("@user.id"), "{err}");
    let missing = profile("sales", &["rep"], vec![ProfileItem::new(EntityName::new("contact").unwrap(), "")]);
    assert!(validate_profile(&missing, &schemas).is_err());
    let mut cols = ProfileItem::new(EntityName::new("account").unwrap(), "");
    cols.columns = Some(vec![col("nosuch")]);
    assert!(validate_profile(&profile("p", &["r"], vec![cols]), &schemas).is_err());
}

#[test]
fn principal_partitions_follow_roles_claims_and_arrays() {
    let schemas = vec![account()];
    let acc = EntityName::new("account").unwrap();
    let mut team_item = ProfileItem::new(acc.clone(), "teamid eq @user.teams");
    team_item.id = Some(ItemIdFor::item("byteam"));
    let profiles = vec![
        profile("mine", &["rep"], vec![ProfileItem::new(acc.clone(), "ownerid eq @user.id")]),
        profile("teams", &["rep"], vec![team_item]),
        profile("managers", &["manager"], vec![ProfileItem::new(acc.clone(), "")]),
    ];
    let uid = uuid::Uuid::new_v4();
    let p = Principal::new(uid.to_string(), OrgId::new("o").unwrap())
        .with_role("rep")
        .with_claim("teams", serde_json::json!(["red", "blue", "red"]));
    let parts = principal_partitions(&p, &profiles, &schemas).unwrap();
    let keys: Vec<String> = parts.iter().map(|p| p.key().to_string()).collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(keys.contains(&format!("mine/account{{\"user.id\":\"{uid}\"}}")));
    assert!(keys.contains(&"teams/byteam{\"user.teams\":\"blue\"}".to_string()));
    // A principal without the claim holds no team partition.
    let q = Principal::new("not-a-uuid", OrgId::new("o").unwrap()).with_role("rep");
    let parts = principal_partitions(&q, &profiles, &schemas).unwrap();
    assert!(parts.is_empty(), "{parts:?}");
    // Matching row partitions equal principal partitions.
    let planner = MembershipPlanner::new(&account(), &profiles).unwrap();
    let r = row(&[("ownerid", uid.into()), ("teamid", "blue".into())]);
    let row_parts = planner.partitions(&r);
    let held: Vec<PartitionKey> =
        principal_partitions(&p, &profiles, &schemas).unwrap().iter().map(Partition::key).collect();
    assert_eq!(row_parts.iter().filter(|k| held.contains(k)).count(), 2);
    assert_eq!(row_parts.len(), 3, "the manager partition holds it too");
}

struct ItemIdFor;
impl ItemIdFor {
    fn item(s: &str) -> crate::ids::ItemId {
        crate::ids::ItemId::new(s).unwrap()
    }
}

// ---------- property tests ----------

fn arb_literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        Just(Literal::Null),
        any::<bool>().prop_map(Literal::Bool),
        any::<i64>().prop_map(Literal::Int),
        (any::<i64>(), 0u32..10).prop_map(|(m, s)| Literal::Decimal(rust_decimal::Decimal::new(m, s))),
        (-1e12f64..1e12).prop_map(Literal::Float),
        "[a-zA-Z0-9 ']{0,8}".prop_map(Literal::String),
        any::<u128>().prop_map(|u| Literal::Guid(uuid::Uuid::from_u128(u))),
        (0i64..4_000_000_000)
            .prop_map(|s| Literal::DateTime(time::OffsetDateTime::from_unix_timestamp(s).unwrap())),
    ]
}

fn arb_operand() -> impl Strategy<Value = Operand> {
    prop_oneof![
        "[a-z_][a-z0-9_]{0,6}"
            .prop_filter("not a keyword", |s| !matches!(
                s.as_str(),
                "and"
                    | "or"
                    | "not"
                    | "in"
                    | "eq"
                    | "ne"
                    | "gt"
                    | "ge"
                    | "lt"
                    | "le"
                    | "true"
                    | "false"
                    | "null"
            ))
            .prop_map(Operand::Column),
        arb_literal().prop_map(Operand::Literal),
        "(user)\\.[a-z][a-z0-9]{0,5}".prop_map(Operand::Param),
    ]
}

fn arb_op() -> impl Strategy<Value = CmpOp> {
    prop_oneof![
        Just(CmpOp::Eq),
        Just(CmpOp::Ne),
        Just(CmpOp::Gt),
        Just(CmpOp::Ge),
        Just(CmpOp::Lt),
        Just(CmpOp::Le)
    ]
}

fn arb_expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        (arb_operand(), arb_op(), arb_operand()).prop_map(|(left, op, right)| Expr::Compare {
            left,
            op,
            right
        }),
        (arb_operand(), prop::collection::vec(arb_literal(), 1..4))
            .prop_map(|(operand, values)| Expr::In { operand, values }),
    ];
    leaf.prop_recursive(5, 32, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::Or(Box::new(a), Box::new(b))),
            inner.prop_map(|a| Expr::Not(Box::new(a))),
        ]
    })
}

/// A small typed world for the reference evaluator: integer columns a, b, c.
#[derive(Clone, Debug)]
enum RefExpr {
    And(Box<RefExpr>, Box<RefExpr>),
    Or(Box<RefExpr>, Box<RefExpr>),
    Not(Box<RefExpr>),
    Cmp(usize, CmpOp, Option<i64>),
    In(usize, Vec<Option<i64>>),
}

const COLS: [&str; 3] = ["a", "b", "c"];

fn arb_ref() -> impl Strategy<Value = RefExpr> {
    let lit = prop_oneof![Just(None), (-3i64..4).prop_map(Some)];
    let leaf = prop_oneof![
        (0usize..3, arb_op(), lit.clone()).prop_map(|(c, op, v)| RefExpr::Cmp(c, op, v)),
        (0usize..3, prop::collection::vec(lit, 1..4)).prop_map(|(c, vs)| RefExpr::In(c, vs)),
    ];
    leaf.prop_recursive(5, 32, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| RefExpr::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| RefExpr::Or(Box::new(a), Box::new(b))),
            inner.prop_map(|a| RefExpr::Not(Box::new(a))),
        ]
    })
}

fn lit_text(v: Option<i64>) -> String {
    v.map_or("null".into(), |i| i.to_string())
}

fn ref_text(e: &RefExpr) -> String {
    match e {
        RefExpr::And(a, b) => format!("({}) and ({})", ref_text(a), ref_text(b)),
        RefExpr::Or(a, b) => format!("({}) or ({})", ref_text(a), ref_text(b)),
        RefExpr::Not(a) => format!("not ({})", ref_text(a)),
        RefExpr::Cmp(c, op, v) => format!("{} {} {}", COLS[*c], op.keyword(), lit_text(*v)),
        RefExpr::In(c, vs) => {
            format!("{} in ({})", COLS[*c], vs.iter().map(|v| lit_text(*v)).collect::<Vec<_>>().join(", "))
        }
    }
}

/// The straightforward reference: plain Option<i64> logic.
fn ref_eval(e: &RefExpr, row: &[Option<i64>; 3]) -> bool {
    match e {
        RefExpr::And(a, b) => ref_eval(a, row) && ref_eval(b, row),
        RefExpr::Or(a, b) => ref_eval(a, row) || ref_eval(b, row),
        RefExpr::Not(a) => !ref_eval(a, row),
        RefExpr::Cmp(c, op, v) => {
            let x = row[*c];
            match (op, x, v) {
                (CmpOp::Eq, x, v) => x == *v,
                (CmpOp::Ne, x, v) => x != *v,
                (_, None, _) | (_, _, None) => false,
                (CmpOp::Gt, Some(x), Some(v)) => x > *v,
                (CmpOp::Ge, Some(x), Some(v)) => x >= *v,
                (CmpOp::Lt, Some(x), Some(v)) => x < *v,
                (CmpOp::Le, Some(x), Some(v)) => x <= *v,
            }
        }
        RefExpr::In(c, vs) => vs.contains(&row[*c]),
    }
}

fn abc() -> EntityMetadata {
    EntityMetadata::new(
        EntityName::new("t").unwrap(),
        col("id"),
        vec![
            Attribute::new(col("id"), AttributeType::Integer),
            Attribute::new(col("a"), AttributeType::Integer),
            Attribute::new(col("b"), AttributeType::Integer),
            Attribute::new(col("c"), AttributeType::Integer),
            Attribute::new(col("owner"), AttributeType::String),
        ],
    )
    .unwrap()
}

fn abc_row(vals: &[Option<i64>; 3], owner: Option<&str>) -> Row {
    let mut values: Vec<(ColumnName, Value)> =
        COLS.iter().zip(vals).map(|(c, v)| (col(c), v.map_or(Value::Null, Value::Integer))).collect();
    values.push((col("owner"), owner.map_or(Value::Null, Value::from)));
    abc().check_row(Row::new(RowId::new("1").unwrap(), values)).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_print_parse_round_trips(e in arb_expr()) {
        let text = e.to_string();
        let parsed = Filter::parse(&text).map_err(|err| TestCaseError::fail(format!("{text}: {err}")))?;
        prop_assert_eq!(parsed.expr(), Some(&e), "text: {}", text);
        prop_assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn evaluator_matches_reference(e in arb_ref(), rows in prop::collection::vec(
        [prop::option::of(-3i64..4), prop::option::of(-3i64..4), prop::option::of(-3i64..4)], 1..8)) {
        let f = CompiledFilter::compile(&ref_text(&e), &abc()).unwrap();
        for r in &rows {
            prop_assert_eq!(f.matches_rest(&abc_row(r, None)), ref_eval(&e, r), "filter {}", ref_text(&e));
        }
    }

    #[test]
    fn planned_membership_equals_recomputation(
        f1 in arb_ref(), f2 in arb_ref(),
        prev in prop::option::of(([prop::option::of(-3i64..4), prop::option::of(-3i64..4), prop::option::of(-3i64..4)], prop::option::of("[xy]"))),
        next in prop::option::of(([prop::option::of(-3i64..4), prop::option::of(-3i64..4), prop::option::of(-3i64..4)], prop::option::of("[xy]"))),
    ) {
        let t = EntityName::new("t").unwrap();
        let mut owned = ProfileItem::new(t.clone(), format!("owner eq @user.id and ({})", ref_text(&f2)));
        owned.id = Some(crate::ids::ItemId::new("owned").unwrap());
        let profiles = vec![
            profile("p1", &["r"], vec![ProfileItem::new(t.clone(), ref_text(&f1)), owned]),
            profile("p2", &["r"], vec![ProfileItem::new(t, "")]),
        ];
        let planner = MembershipPlanner::new(&abc(), &profiles).unwrap();
        let prev = prev.map(|(v, o)| abc_row(&v, o.as_deref()));
        let next = next.map(|(v, o)| abc_row(&v, o.as_deref()));
        // Start from the membership of `prev`, apply the plan...
        let mut held: std::collections::BTreeSet<PartitionKey> =
            prev.as_ref().map(|r| planner.partitions(r)).unwrap_or_default().into_iter().collect();
        let ops = planner.plan(prev.as_ref(), next.as_ref());
        for op in &ops {
            match op.action {
                MembershipAction::Put => { held.insert(op.partition.clone()); }
                MembershipAction::Remove => { prop_assert!(held.remove(&op.partition), "remove of a partition not held"); }
            }
        }
        // ...and it equals a recomputation from the new row alone.
        let expected: std::collections::BTreeSet<PartitionKey> =
            next.as_ref().map(|r| planner.partitions(r)).unwrap_or_default().into_iter().collect();
        prop_assert_eq!(&held, &expected);
        // Every partition of the new row gets a put (its version changed).
        let puts = ops.iter().filter(|o| o.action == MembershipAction::Put).count();
        prop_assert_eq!(puts, expected.len());
    }
}
