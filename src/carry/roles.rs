//! Roles on the target: `CREATE ROLE` with the source's attributes and
//! password verifier, the settings it has for itself (everywhere or in
//! the synced database), and its memberships.

use super::Plan;
use crate::source::inventory::{Membership, Password, RoleDef, Setting};
use crate::sql::{quote_ident, quote_literal};

/// Settings whose values are lists of names, each quoted on its own
/// (PostgreSQL's GUC_LIST_QUOTE; pg_dumpall treats the same ones so).
const LIST_SETTINGS: &[&str] = &[
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// `name TO value` for `ALTER … SET`, from a `setconfig` entry.
pub fn set_clause(s: &Setting) -> String {
    let value = if LIST_SETTINGS.contains(&s.name.as_str()) {
        split_list(&s.value)
            .iter()
            .map(|v| quote_literal(v))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        quote_literal(&s.value)
    };
    let value = if value.is_empty() { "''".into() } else { value };
    format!("{} TO {value}", quote_ident(&s.name))
}

/// `app, "$user", "We ""x"""` → `app`, `$user`, `We "x"`.
fn split_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur).trim().to_string()),
            c if quoted || !c.is_whitespace() || !cur.is_empty() => cur.push(c),
            _ => {}
        }
    }
    let last = cur.trim().to_string();
    if !last.is_empty() || !out.is_empty() {
        out.push(last);
    }
    out
}

fn create_role(r: &RoleDef) -> String {
    let flag = |on: bool, yes: &str, no: &str| if on { yes } else { no }.to_string();
    let mut sql = format!(
        "CREATE ROLE {} WITH {} {} {} {} {} {} {} CONNECTION LIMIT {}",
        quote_ident(&r.name),
        flag(r.superuser, "SUPERUSER", "NOSUPERUSER"),
        flag(r.inherit, "INHERIT", "NOINHERIT"),
        flag(r.createrole, "CREATEROLE", "NOCREATEROLE"),
        flag(r.createdb, "CREATEDB", "NOCREATEDB"),
        flag(r.login, "LOGIN", "NOLOGIN"),
        flag(r.replication, "REPLICATION", "NOREPLICATION"),
        flag(r.bypassrls, "BYPASSRLS", "NOBYPASSRLS"),
        r.connlimit,
    );
    if let Password::Verifier(v) = &r.password {
        sql.push_str(&format!(" PASSWORD {}", quote_literal(v)));
    }
    if let Some(until) = &r.valid_until {
        sql.push_str(&format!(" VALID UNTIL {}", quote_literal(until)));
    }
    sql
}

fn grant_membership(m: &Membership, target_major: i32) -> String {
    let mut sql = format!(
        "GRANT {} TO {}",
        quote_ident(&m.role),
        quote_ident(&m.member)
    );
    if target_major >= 16 {
        let mut options = vec![format!("ADMIN {}", m.admin)];
        if let Some(i) = m.inherit {
            options.push(format!("INHERIT {i}"));
        }
        if let Some(s) = m.set {
            options.push(format!("SET {s}"));
        }
        sql.push_str(&format!(" WITH {}", options.join(", ")));
    } else if m.admin {
        sql.push_str(" WITH ADMIN OPTION");
    }
    sql
}

/// The statements that create the plan's roles, then their settings and
/// memberships (every role first, so memberships between them resolve).
/// `database`: the target database, for per-database role settings.
pub fn statements(plan: &Plan, database: &str, target_major: i32) -> Vec<String> {
    let mut out: Vec<String> = plan.create.iter().map(create_role).collect();
    for r in &plan.create {
        for s in &r.settings {
            let scope = match s.this_database {
                true => format!(" IN DATABASE {}", quote_ident(database)),
                false => String::new(),
            };
            out.push(format!(
                "ALTER ROLE {}{scope} SET {}",
                quote_ident(&r.name),
                set_clause(&s.setting)
            ));
        }
    }
    out.extend(
        plan.memberships
            .iter()
            .map(|m| grant_membership(m, target_major)),
    );
    out
}

/// A statement fit for a message: a password verifier is cut off.
pub fn redacted(sql: &str) -> String {
    match sql.find(" PASSWORD '") {
        Some(at) => format!("{} PASSWORD '…'", &sql[..at]),
        None => sql.to_string(),
    }
}

/// Removes the roles a copy created, if the copy is undone.
pub fn cleanup(plan: &Plan) -> String {
    plan.create
        .iter()
        .rev()
        .map(|r| format!("DROP ROLE IF EXISTS {};\n", quote_ident(&r.name)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_settings_quote_each_element() {
        let s = Setting {
            name: "search_path".into(),
            value: "app, \"$user\", \"We \"\"x\"\"\", public".into(),
        };
        assert_eq!(
            set_clause(&s),
            "\"search_path\" TO 'app', '$user', 'We \"x\"', 'public'"
        );
        let s = Setting {
            name: "work_mem".into(),
            value: "8MB".into(),
        };
        assert_eq!(set_clause(&s), "\"work_mem\" TO '8MB'");
        let s = Setting {
            name: "search_path".into(),
            value: "".into(),
        };
        assert_eq!(set_clause(&s), "\"search_path\" TO ''");
    }

    #[test]
    fn roles_keep_their_attributes_and_verifier() {
        let r = RoleDef {
            name: "app rw".into(),
            predefined: false,
            superuser: false,
            inherit: true,
            createrole: false,
            createdb: true,
            login: true,
            replication: false,
            bypassrls: false,
            connlimit: 5,
            valid_until: Some("2030-01-01 00:00:00+00".into()),
            password: Password::Verifier("SCRAM-SHA-256$4096:abc".into()),
            settings: vec![],
        };
        assert_eq!(
            create_role(&r),
            "CREATE ROLE \"app rw\" WITH NOSUPERUSER INHERIT NOCREATEROLE CREATEDB LOGIN NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 5 PASSWORD 'SCRAM-SHA-256$4096:abc' VALID UNTIL '2030-01-01 00:00:00+00'"
        );
    }

    #[test]
    fn memberships_carry_their_options_where_the_target_has_them() {
        let m = Membership {
            role: "g".into(),
            member: "u".into(),
            admin: true,
            inherit: Some(false),
            set: Some(true),
        };
        assert_eq!(
            grant_membership(&m, 16),
            "GRANT \"g\" TO \"u\" WITH ADMIN true, INHERIT false, SET true"
        );
        assert_eq!(
            grant_membership(&m, 15),
            "GRANT \"g\" TO \"u\" WITH ADMIN OPTION"
        );
    }
}
