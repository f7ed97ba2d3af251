//! The database itself on the target: its `ALTER DATABASE … SET` settings
//! (`default_transaction_*` among them), its comment, and who may connect
//! to it or create in it.

use super::roles::set_clause;
use super::Plan;
use crate::sql::{quote_ident, quote_literal};

/// The statements that give the target database the source's settings,
/// comment and privileges. `grants` only when owners and grants move.
pub fn statements(plan: &Plan, database: &str, grants: bool) -> Vec<String> {
    let db = quote_ident(database);
    let mut out: Vec<String> = plan
        .database_settings
        .iter()
        .map(|s| format!("ALTER DATABASE {db} SET {}", set_clause(s)))
        .collect();
    if let Some(comment) = &plan.inventory.database.comment {
        out.push(format!(
            "COMMENT ON DATABASE {db} IS {}",
            quote_literal(comment)
        ));
    }
    if let (true, Some(list)) = (grants, &plan.inventory.database.grants) {
        // The source's list replaces the default (PUBLIC may CONNECT and
        // TEMP): what it does not grant is revoked.
        out.push(format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC"));
        for g in list {
            out.push(format!(
                "GRANT {} ON DATABASE {db} TO {}{}",
                g.privilege,
                g.grantee
                    .as_deref()
                    .map(quote_ident)
                    .unwrap_or_else(|| "PUBLIC".into()),
                if g.grantable {
                    " WITH GRANT OPTION"
                } else {
                    ""
                }
            ));
        }
    }
    out
}

/// One line per carried thing, for the summary.
pub fn carried(plan: &Plan, grants: bool) -> Vec<String> {
    let mut out: Vec<String> = plan
        .database_settings
        .iter()
        .map(|s| format!("database setting {} = {}", s.name, s.value))
        .collect();
    if plan.inventory.database.comment.is_some() {
        out.push("database comment".into());
    }
    if let (true, Some(list)) = (grants, &plan.inventory.database.grants) {
        out.push(format!("database privileges ({} grant(s))", list.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::inventory::{DatabaseGrant, DatabaseProps, Inventory, Setting};

    #[test]
    fn settings_comment_and_privileges() {
        let plan = Plan {
            database_settings: vec![Setting {
                name: "default_transaction_isolation".into(),
                value: "serializable".into(),
            }],
            inventory: Inventory {
                database: DatabaseProps {
                    settings: vec![],
                    comment: Some("it's ours".into()),
                    grants: Some(vec![DatabaseGrant {
                        grantee: Some("app_rw".into()),
                        privilege: "CONNECT".into(),
                        grantable: false,
                    }]),
                },
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            statements(&plan, "db", true),
            vec![
                "ALTER DATABASE \"db\" SET \"default_transaction_isolation\" TO 'serializable'",
                "COMMENT ON DATABASE \"db\" IS 'it''s ours'",
                "REVOKE ALL ON DATABASE \"db\" FROM PUBLIC",
                "GRANT CONNECT ON DATABASE \"db\" TO \"app_rw\"",
            ]
        );
        assert_eq!(statements(&plan, "db", false).len(), 2);
    }
}
