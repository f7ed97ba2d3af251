//! What the source's database holds besides rows, that its application
//! depends on: the roles its objects name (owners, grantees, grantors,
//! policy roles, their members and the groups they belong to), those
//! roles' memberships and settings, the database's own settings, comment
//! and privileges, its extensions and its large objects. Read from the
//! catalog; `carry` decides what of it moves.

use tokio_postgres::GenericClient;

/// Schemas pgrepl never carries (its own, and the system's).
const SKIPPED_SCHEMAS: &str =
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgrepl', 'pgrepl_fence')
    AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'";

/// A role as `CREATE ROLE` needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleDef {
    pub name: String,
    /// Predefined roles (`pg_read_all_data`, …) are never created, only found.
    pub predefined: bool,
    pub superuser: bool,
    pub inherit: bool,
    pub createrole: bool,
    pub createdb: bool,
    pub login: bool,
    pub replication: bool,
    pub bypassrls: bool,
    pub connlimit: i32,
    pub valid_until: Option<String>,
    pub password: Password,
    pub settings: Vec<RoleSetting>,
}

/// A role's password as the source let us read it.
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// The role has none.
    None,
    /// The stored verifier (`SCRAM-SHA-256$…` or `md5…`), moved as it is.
    Verifier(String),
    /// The source user may not read `pg_authid` (not a superuser).
    Unreadable,
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Password::None => "None",
            Password::Verifier(_) => "Verifier(…)",
            Password::Unreadable => "Unreadable",
        })
    }
}

/// `ALTER ROLE … [IN DATABASE …] SET name = value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleSetting {
    /// Only in the synced database (else for the role everywhere).
    pub this_database: bool,
    pub setting: Setting,
}

/// One `name=value` of a `setconfig` array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    pub value: String,
}

impl Setting {
    /// `search_path=app, public` → name and value.
    pub fn parse(entry: &str) -> Option<Setting> {
        let (name, value) = entry.split_once('=')?;
        Some(Setting {
            name: name.to_string(),
            value: value.to_string(),
        })
    }
}

/// `GRANT role TO member`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub role: String,
    pub member: String,
    pub admin: bool,
    /// PostgreSQL 16+ only (older servers follow the member's INHERIT).
    pub inherit: Option<bool>,
    pub set: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    pub name: String,
    pub version: String,
    pub schema: String,
}

/// One privilege on the database itself (`GRANT CONNECT ON DATABASE …`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseGrant {
    /// `None` for PUBLIC.
    pub grantee: Option<String>,
    pub privilege: String,
    pub grantable: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatabaseProps {
    pub settings: Vec<Setting>,
    pub comment: Option<String>,
    /// `None` when the database has default privileges.
    pub grants: Option<Vec<DatabaseGrant>>,
}

/// Everything besides rows, as read from the source.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub roles: Vec<RoleDef>,
    pub memberships: Vec<Membership>,
    pub extensions: Vec<Extension>,
    pub database: DatabaseProps,
    pub large_objects: i64,
}

/// The roles the database's objects name, then their members (down) and
/// the groups all of those belong to (up). Oid 10 is the bootstrap
/// superuser; other oids under 16384 are predefined roles. `FOLLOWED` is
/// the condition on the memberships the recursion follows (see
/// [`followed_memberships`]).
const NEEDED_ROLES: &str = "
WITH RECURSIVE schemas AS (
    SELECT n.oid FROM pg_namespace n WHERE SKIPPED
), owned(owner, acl) AS (
    SELECT nspowner, nspacl FROM pg_namespace WHERE oid IN (SELECT oid FROM schemas)
    UNION ALL SELECT relowner, relacl FROM pg_class WHERE relnamespace IN (SELECT oid FROM schemas)
    UNION ALL SELECT c.relowner, a.attacl FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        WHERE c.relnamespace IN (SELECT oid FROM schemas) AND a.attacl IS NOT NULL
    UNION ALL SELECT proowner, proacl FROM pg_proc WHERE pronamespace IN (SELECT oid FROM schemas)
    UNION ALL SELECT typowner, typacl FROM pg_type WHERE typnamespace IN (SELECT oid FROM schemas)
    UNION ALL SELECT defaclrole, defaclacl FROM pg_default_acl
        WHERE defaclnamespace = 0 OR defaclnamespace IN (SELECT oid FROM schemas)
    UNION ALL SELECT lomowner, lomacl FROM pg_largeobject_metadata
    UNION ALL SELECT collowner, NULL FROM pg_collation WHERE collnamespace IN (SELECT oid FROM schemas)
    UNION ALL SELECT conowner, NULL FROM pg_conversion WHERE connamespace IN (SELECT oid FROM schemas)
    UNION ALL SELECT oprowner, NULL FROM pg_operator WHERE oprnamespace IN (SELECT oid FROM schemas)
    UNION ALL SELECT opfowner, NULL FROM pg_opfamily WHERE opfnamespace IN (SELECT oid FROM schemas)
    UNION ALL SELECT opcowner, NULL FROM pg_opclass WHERE opcnamespace IN (SELECT oid FROM schemas)
    UNION ALL SELECT cfgowner, NULL FROM pg_ts_config WHERE cfgnamespace IN (SELECT oid FROM schemas)
    UNION ALL SELECT dictowner, NULL FROM pg_ts_dict WHERE dictnamespace IN (SELECT oid FROM schemas)
    UNION ALL SELECT stxowner, NULL FROM pg_statistic_ext WHERE stxnamespace IN (SELECT oid FROM schemas)
), direct AS (
    SELECT owner AS role FROM owned
    UNION SELECT (aclexplode(acl)).grantee FROM owned WHERE acl IS NOT NULL
    UNION SELECT (aclexplode(acl)).grantor FROM owned WHERE acl IS NOT NULL
    UNION SELECT unnest(p.polroles) FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
        WHERE c.relnamespace IN (SELECT oid FROM schemas)
    UNION SELECT a.grantee FROM pg_database d, aclexplode(d.datacl) a
        WHERE d.datname = current_database() AND a.grantee <> d.datdba
    UNION SELECT r.oid FROM pg_roles r WHERE EVERYROLE
), down(role) AS (
    SELECT role FROM direct WHERE role <> 0
    UNION SELECT m.member FROM pg_auth_members m JOIN down d ON m.roleid = d.role WHERE FOLLOWED
), up(role) AS (
    SELECT role FROM down
    UNION SELECT m.roleid FROM pg_auth_members m JOIN up u ON m.member = u.role WHERE FOLLOWED
)
SELECT r.oid::int8, r.rolname::text, r.oid <> 10 AND r.oid < 16384, r.rolsuper, r.rolinherit,
       r.rolcreaterole, r.rolcreatedb, r.rolcanlogin, r.rolreplication, r.rolbypassrls,
       r.rolconnlimit, r.rolvaliduntil::text
FROM pg_roles r JOIN up ON up.role = r.oid
ORDER BY r.rolname";

/// The memberships that make a role needed, as a condition on
/// `pg_auth_members m`.
///
/// The rule: on PostgreSQL 16+ a membership that neither passes the
/// group's privileges on (INHERIT) nor lets the member become the group
/// (SET) is followed by nobody's privileges: it is the ADMIN grant 16
/// gives a non-superuser on every role it creates. Following it would
/// pull the creator in, then every role it ever created; so only
/// memberships with INHERIT or SET are followed there. Older servers
/// have no such grants and no such options: every membership counts.
fn followed_memberships(v16: bool) -> &'static str {
    if v16 {
        "(m.inherit_option OR m.set_option)"
    } else {
        "true"
    }
}

async fn is_v16(client: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT current_setting('server_version_num')::int >= 160000",
            &[],
        )
        .await?
        .get(0))
}

/// Which roles an inventory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolesScope {
    /// Those the database's objects name (and their memberships).
    Named,
    /// Every role of the server but the bootstrap superuser and the
    /// predefined ones: a whole server moves all of them.
    Server,
}

impl Inventory {
    /// Reads the inventory of the database `client` is connected to.
    pub async fn read(client: &impl GenericClient) -> Result<Inventory, tokio_postgres::Error> {
        Self::read_roles(client, RolesScope::Named).await
    }

    /// The same, with the roles of `scope`.
    pub async fn read_roles(
        client: &impl GenericClient,
        scope: RolesScope,
    ) -> Result<Inventory, tokio_postgres::Error> {
        let v16 = is_v16(client).await?;
        let sql = NEEDED_ROLES
            .replace("SKIPPED", SKIPPED_SCHEMAS)
            .replace("FOLLOWED", followed_memberships(v16))
            .replace(
                "EVERYROLE",
                match scope {
                    RolesScope::Named => "false",
                    RolesScope::Server => "r.oid >= 16384",
                },
            );
        let rows = client.query(&sql, &[]).await?;
        let mut oids = Vec::with_capacity(rows.len());
        let mut roles = Vec::with_capacity(rows.len());
        for r in &rows {
            oids.push(r.get::<_, i64>(0));
            roles.push(RoleDef {
                name: r.get(1),
                predefined: r.get(2),
                superuser: r.get(3),
                inherit: r.get(4),
                createrole: r.get(5),
                createdb: r.get(6),
                login: r.get(7),
                replication: r.get(8),
                bypassrls: r.get(9),
                connlimit: r.get(10),
                valid_until: r.get(11),
                password: Password::None,
                settings: Vec::new(),
            });
        }
        read_passwords(client, &mut roles).await?;
        read_role_settings(client, &oids, &mut roles).await?;
        let memberships = read_memberships(client, &oids, v16).await?;
        let extensions = client
            .query(
                "SELECT e.extname::text, e.extversion, n.nspname::text
                 FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                 WHERE e.extname <> 'plpgsql' ORDER BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|r| Extension {
                name: r.get(0),
                version: r.get(1),
                schema: r.get(2),
            })
            .collect();
        let database = read_database(client).await?;
        let large_objects: i64 = client
            .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
            .await?
            .get(0);
        Ok(Inventory {
            roles,
            memberships,
            extensions,
            database,
            large_objects,
        })
    }
}

async fn read_passwords(
    client: &impl GenericClient,
    roles: &mut [RoleDef],
) -> Result<(), tokio_postgres::Error> {
    let readable: bool = client
        .query_one(
            "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')",
            &[],
        )
        .await?
        .get(0);
    if !readable {
        for r in roles.iter_mut().filter(|r| !r.predefined) {
            r.password = Password::Unreadable;
        }
        return Ok(());
    }
    let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    for row in client
        .query(
            "SELECT rolname::text, rolpassword FROM pg_authid WHERE rolname = ANY($1) AND rolpassword IS NOT NULL",
            &[&names],
        )
        .await?
    {
        let name: String = row.get(0);
        if let Some(role) = roles.iter_mut().find(|r| r.name == name) {
            role.password = Password::Verifier(row.get(1));
        }
    }
    Ok(())
}

async fn read_role_settings(
    client: &impl GenericClient,
    oids: &[i64],
    roles: &mut [RoleDef],
) -> Result<(), tokio_postgres::Error> {
    for row in client
        .query(
            "SELECT r.rolname::text, s.setdatabase <> 0, s.setconfig
             FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
             WHERE s.setrole::int8 = ANY($1)
               AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
             ORDER BY 1, 2",
            &[&oids],
        )
        .await?
    {
        let name: String = row.get(0);
        let this_database: bool = row.get(1);
        let config: Vec<String> = row.get(2);
        if let Some(role) = roles.iter_mut().find(|r| r.name == name) {
            role.settings.extend(
                config
                    .iter()
                    .filter_map(|e| Setting::parse(e))
                    .map(|setting| RoleSetting {
                        this_database,
                        setting,
                    }),
            );
        }
    }
    Ok(())
}

/// The memberships between needed roles, one per (group, member): on 16+
/// the same membership may be granted by several grantors, each row with
/// its own options, and the member has an option when any grant gives it.
async fn read_memberships(
    client: &impl GenericClient,
    oids: &[i64],
    v16: bool,
) -> Result<Vec<Membership>, tokio_postgres::Error> {
    let options = if v16 {
        "bool_or(m.inherit_option), bool_or(m.set_option)"
    } else {
        "NULL::bool, NULL::bool"
    };
    let sql = format!(
        "SELECT g.rolname::text, u.rolname::text, bool_or(m.admin_option), {options}
         FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
         WHERE m.member::int8 = ANY($1) AND m.roleid::int8 = ANY($1)
         GROUP BY 1, 2 ORDER BY 1, 2"
    );
    Ok(client
        .query(&sql, &[&oids])
        .await?
        .iter()
        .map(|r| Membership {
            role: r.get(0),
            member: r.get(1),
            admin: r.get(2),
            inherit: r.get(3),
            set: r.get(4),
        })
        .collect())
}

async fn read_database(
    client: &impl GenericClient,
) -> Result<DatabaseProps, tokio_postgres::Error> {
    let settings = client
        .query(
            "SELECT unnest(setconfig) FROM pg_db_role_setting
             WHERE setrole = 0 AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await?
        .iter()
        .filter_map(|r| Setting::parse(&r.get::<_, String>(0)))
        .collect();
    let row = client
        .query_one(
            "SELECT shobj_description(d.oid, 'pg_database'), d.datacl IS NULL
             FROM pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await?;
    let comment: Option<String> = row.get(0);
    let default_acl: bool = row.get(1);
    let grants = if default_acl {
        None
    } else {
        Some(
            client
                .query(
                    "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END,
                            a.privilege_type, a.is_grantable
                     FROM pg_database d, aclexplode(d.datacl) a
                     WHERE d.datname = current_database() AND a.grantee <> d.datdba
                     ORDER BY 1 NULLS FIRST, 2",
                    &[],
                )
                .await?
                .iter()
                .map(|r| DatabaseGrant {
                    grantee: r.get(0),
                    privilege: r.get(1),
                    grantable: r.get(2),
                })
                .collect(),
        )
    };
    Ok(DatabaseProps {
        settings,
        comment,
        grants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_split_at_the_first_equals_sign() {
        assert_eq!(
            Setting::parse("search_path=app, \"a=b\""),
            Some(Setting {
                name: "search_path".into(),
                value: "app, \"a=b\"".into()
            })
        );
        assert_eq!(Setting::parse("garbage"), None);
    }

    #[test]
    fn passwords_never_print() {
        let p = Password::Verifier("SCRAM-SHA-256$4096:secret".into());
        assert!(!format!("{p:?}").contains("secret"));
    }
}
