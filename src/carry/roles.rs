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

/// `CREATE ROLE` with the role's attributes; its password verifier inline
/// only when `with_password`.
fn create_role(r: &RoleDef, with_password: bool) -> String {
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
    if let (true, Password::Verifier(v)) = (with_password, &r.password) {
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

/// Settings that keep a statement out of the server's log, set for the
/// rest of the transaction (all superuser-only): a password verifier is
/// as good as the password to whoever reads it.
const UNLOGGED: &[(&str, &str)] = &[
    ("log_statement", "none"),
    ("log_min_error_statement", "panic"),
    ("log_min_duration_statement", "-1"),
];

/// `ALTER ROLE … PASSWORD` with the server's statement logging off around
/// it: each its own statement (a statement is logged as it arrives, before
/// a `SET LOCAL` sent with it would run). The caller runs them in one
/// transaction, as every caller of [`statements`] does.
fn set_password_unlogged(name: &str, verifier: &str) -> Vec<String> {
    let mut out: Vec<String> = UNLOGGED
        .iter()
        .map(|(setting, value)| format!("SET LOCAL {setting} = {}", quote_literal(value)))
        .collect();
    out.push(format!(
        "ALTER ROLE {} PASSWORD {}",
        quote_ident(name),
        quote_literal(verifier)
    ));
    out.extend(
        UNLOGGED
            .iter()
            .map(|(setting, _)| format!("RESET {setting}")),
    );
    out
}

/// The statements that create the plan's roles, then their settings and
/// memberships (every role first, so memberships between them resolve).
/// `database`: the target database, for per-database role settings.
/// `target_superuser`: passwords are set with the server's statement log
/// off (see [`set_password_unlogged`]); others may not turn it off, so
/// the verifier goes in `CREATE ROLE` as before. Run them in one
/// transaction, each on its own (one `batch_execute` per item).
pub fn statements(
    plan: &Plan,
    database: &str,
    target_major: i32,
    target_superuser: bool,
) -> Vec<String> {
    let mut out: Vec<String> = plan
        .create
        .iter()
        .map(|r| create_role(r, !target_superuser))
        .collect();
    if target_superuser {
        for r in &plan.create {
            if let Password::Verifier(v) = &r.password {
                out.extend(set_password_unlogged(&r.name, v));
            }
        }
    }
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

/// Removes the roles a copy created, if the copy is undone (run after the
/// schema's own cleanup, in its transaction).
///
/// The rule: one role that cannot go (it owns or was granted something in
/// another database, or something created since) never stops the others
/// nor the rest of the cleanup: each role in a block of its own, what it
/// owns here handed to the cleaning user and its grants here dropped
/// first, a failure a WARNING naming the role.
pub fn cleanup(plan: &Plan) -> String {
    plan.create
        .iter()
        .rev()
        .map(|r| drop_role_block(&r.name))
        .collect()
}

fn drop_role_block(name: &str) -> String {
    let role = quote_ident(name);
    let body = format!(
        "BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {name}) THEN
        REASSIGN OWNED BY {role} TO CURRENT_USER;
        DROP OWNED BY {role};
        DROP ROLE {role};
    END IF;
EXCEPTION WHEN others THEN
    RAISE WARNING 'pgrepl: role % was left on the target: %', {name}, SQLERRM;
END",
        name = quote_literal(name),
    );
    format!("DO {};\n", quote_literal(&body))
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
            create_role(&r, true),
            "CREATE ROLE \"app rw\" WITH NOSUPERUSER INHERIT NOCREATEROLE CREATEDB LOGIN NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 5 PASSWORD 'SCRAM-SHA-256$4096:abc' VALID UNTIL '2030-01-01 00:00:00+00'"
        );
        let plan = Plan {
            create: vec![r],
            ..Default::default()
        };
        let sql = statements(&plan, "db", 17, true);
        assert!(!sql[0].contains("PASSWORD"), "{sql:?}");
        let at = sql
            .iter()
            .position(|s| s.starts_with("ALTER ROLE \"app rw\" PASSWORD 'SCRAM"))
            .expect("the password on its own");
        assert_eq!(sql[at - 3], "SET LOCAL log_statement = 'none'");
        assert_eq!(sql[at - 2], "SET LOCAL log_min_error_statement = 'panic'");
        assert_eq!(sql[at + 1], "RESET log_statement");
        assert_eq!(redacted(&sql[at]), "ALTER ROLE \"app rw\" PASSWORD '…'");
        let sql = statements(&plan, "db", 17, false);
        assert_eq!(sql.len(), 1, "{sql:?}");
        assert!(sql[0].contains(" PASSWORD 'SCRAM"), "{sql:?}");
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

    #[test]
    fn cleanup_quotes_the_role_inside_the_block() {
        let block = drop_role_block("we'ird \"r\"");
        assert!(block.starts_with("DO 'BEGIN"), "{block}");
        assert!(block.contains(r#"DROP ROLE "we''ird ""r""";"#), "{block}");
        assert!(block.contains(r#"rolname = ''we''''ird "r"'')"#), "{block}");
    }
}
