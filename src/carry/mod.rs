//! What a migration carries besides rows: roles, ownership and grants,
//! large objects, extensions, the database's settings. The source's
//! [`Inventory`] against what the target has gives a [`Plan`]: the one
//! place that decides what moves and what is left behind, and says so
//! (`check` shows it before anything happens, the copy's summary after).
//!
//! The rule: nothing the application depends on is left behind silently.
//! Either it moves, or `check` refuses until the user chose (`--roles
//! copy|skip`), or the summary names it with what to do.

pub mod database;
pub mod keep;
pub mod large_objects;
pub mod ownership;
pub mod roles;

use std::collections::{HashMap, HashSet};

use tokio_postgres::GenericClient;

use crate::source::inventory::{Extension, Inventory, Membership, Password, RoleDef, Setting};
use crate::sql::quote::display_ident;

/// Never carried to the target's database: `cutover` fences the source
/// with it, and an inventory read under the fence would move the fence.
const FENCE_SETTING: &str = "default_transaction_read_only";

/// Settings never carried, database's or roles': they load libraries into
/// the server's sessions, which the target may not have installed (a
/// missing one stops every new session, the application's and pgrepl's).
const PRELOAD_SETTINGS: &[&str] = &[
    "local_preload_libraries",
    "session_preload_libraries",
    "shared_preload_libraries",
];

const PRELOAD_WHY: &str = "it loads server libraries into every new session, and one the target server lacks stops them all; install the libraries on the target, then set it by hand";

/// Why a setting stays behind, or `None` when it moves.
fn left_behind(name: &str, target: &TargetView) -> Option<String> {
    if PRELOAD_SETTINGS.contains(&name) {
        Some(PRELOAD_WHY.into())
    } else if !target.accepts(name) {
        Some(format!("PostgreSQL {} does not know it", target.major))
    } else {
        None
    }
}

/// What to do with roles the target lacks (kept with the sync's record).
pub use crate::progress::state::RolesPolicy;

/// What the target has, as far as carrying is concerned.
#[derive(Clone, Debug, Default)]
pub struct TargetView {
    pub roles: HashSet<String>,
    pub superuser: bool,
    pub major: i32,
    /// Settings the target server knows (`pg_settings`).
    pub settings: HashSet<String>,
    /// Extension → (default version, every installable version).
    pub extensions: HashMap<String, (String, HashSet<String>)>,
    /// Extensions already installed in the target database, with version.
    pub installed: HashMap<String, String>,
}

impl TargetView {
    pub async fn read(client: &impl GenericClient) -> Result<Self, tokio_postgres::Error> {
        let roles = client
            .query("SELECT rolname::text FROM pg_roles", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let row = client
            .query_one(
                "SELECT rolsuper, current_setting('server_version_num')::int / 10000
                 FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?;
        let settings = client
            .query("SELECT name FROM pg_settings", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut extensions: HashMap<String, (String, HashSet<String>)> = HashMap::new();
        for r in client
            .query(
                "SELECT a.name::text, coalesce(a.default_version, ''), v.version
                 FROM pg_available_extensions a
                 LEFT JOIN pg_available_extension_versions v ON v.name = a.name",
                &[],
            )
            .await?
        {
            let entry = extensions
                .entry(r.get(0))
                .or_insert_with(|| (r.get(1), HashSet::new()));
            if let Some(v) = r.get::<_, Option<String>>(2) {
                entry.1.insert(v);
            }
        }
        let installed = client
            .query("SELECT extname::text, extversion FROM pg_extension", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(TargetView {
            roles,
            superuser: row.get(0),
            major: row.get(1),
            settings,
            extensions,
            installed,
        })
    }

    /// A setting the target accepts in `ALTER … SET`: one it knows, or a
    /// custom `prefix.name` (placeholders are accepted).
    pub fn accepts(&self, name: &str) -> bool {
        self.settings.contains(name) || name.contains('.')
    }
}

/// How one extension comes to the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtensionPlan {
    /// Installed at the source's version (`CREATE EXTENSION … VERSION`).
    AtSourceVersion(Extension),
    /// The target cannot install the source's version: its default instead.
    AtOtherVersion { ext: Extension, version: String },
    /// Already in the target database.
    Present { ext: Extension, version: String },
    /// The target server has no such extension: the sync cannot start.
    Unavailable(Extension),
}

/// A setting that does not move, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftSetting {
    pub whose: String,
    pub setting: Setting,
    pub why: String,
}

/// What moves and what does not.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub policy: Option<RolesPolicy>,
    /// Roles to create (only with `--roles copy`).
    pub create: Vec<RoleDef>,
    /// Roles the objects need that the target already has: left as they are.
    pub found: Vec<String>,
    /// Roles the objects need that the target lacks and will not get.
    pub missing: Vec<String>,
    /// Predefined roles (`pg_*`) the target server does not have.
    pub predefined_missing: Vec<String>,
    /// Memberships to grant, between roles that will all exist.
    pub memberships: Vec<Membership>,
    /// Memberships that cannot be granted (a side will not exist).
    pub memberships_left: Vec<Membership>,
    pub extensions: Vec<ExtensionPlan>,
    /// The database's settings that move.
    pub database_settings: Vec<Setting>,
    pub settings_left: Vec<LeftSetting>,
    pub inventory: Inventory,
}

impl Plan {
    pub fn new(inv: &Inventory, target: &TargetView, policy: Option<RolesPolicy>) -> Plan {
        let mut plan = Plan {
            policy,
            inventory: inv.clone(),
            ..Default::default()
        };
        for role in &inv.roles {
            if target.roles.contains(&role.name) {
                if !role.predefined {
                    plan.found.push(role.name.clone());
                }
            } else if role.predefined {
                plan.predefined_missing.push(role.name.clone());
            } else if policy == Some(RolesPolicy::Copy) {
                let mut role = role.clone();
                let settings = std::mem::take(&mut role.settings);
                for s in settings {
                    match left_behind(&s.setting.name, target) {
                        None => role.settings.push(s),
                        Some(why) => plan.settings_left.push(LeftSetting {
                            whose: format!("role {}", display_ident(&role.name)),
                            setting: s.setting,
                            why,
                        }),
                    }
                }
                plan.create.push(role);
            } else {
                plan.missing.push(role.name.clone());
            }
        }
        let will_exist =
            |name: &str| target.roles.contains(name) || plan.create.iter().any(|r| r.name == name);
        let (grant, left): (Vec<Membership>, Vec<Membership>) = inv
            .memberships
            .iter()
            .cloned()
            .partition(|m| will_exist(&m.role) && will_exist(&m.member));
        // Memberships between roles that were there already are the
        // target's business: only those of created roles are granted.
        plan.memberships = grant
            .into_iter()
            .filter(|m| {
                plan.create
                    .iter()
                    .any(|r| r.name == m.member || r.name == m.role)
            })
            .collect();
        plan.memberships_left = match policy {
            Some(RolesPolicy::Copy) => left,
            _ => Vec::new(),
        };
        for ext in &inv.extensions {
            plan.extensions
                .push(match target.extensions.get(&ext.name) {
                    _ if target.installed.contains_key(&ext.name) => ExtensionPlan::Present {
                        ext: ext.clone(),
                        version: target.installed[&ext.name].clone(),
                    },
                    None => ExtensionPlan::Unavailable(ext.clone()),
                    Some((_, versions)) if versions.contains(&ext.version) => {
                        ExtensionPlan::AtSourceVersion(ext.clone())
                    }
                    Some((default, _)) => ExtensionPlan::AtOtherVersion {
                        ext: ext.clone(),
                        version: default.clone(),
                    },
                });
        }
        for s in &inv.database.settings {
            if s.name == FENCE_SETTING {
                plan.settings_left.push(LeftSetting {
                    whose: "the database".into(),
                    setting: s.clone(),
                    why: "pgrepl cutover fences the source with it; set it on the target by hand if the application needs it".into(),
                });
            } else if let Some(why) = left_behind(&s.name, target) {
                plan.settings_left.push(LeftSetting {
                    whose: "the database".into(),
                    setting: s.clone(),
                    why,
                });
            } else {
                plan.database_settings.push(s.clone());
            }
        }
        plan
    }

    /// Owners and grants move as on the source: every role they name
    /// exists on the target, or will, and the user did not say skip.
    pub fn carries_ownership(&self) -> bool {
        self.policy != Some(RolesPolicy::Skip) && self.missing.is_empty()
    }

    /// Roles whose passwords cannot move (the source hid them).
    pub fn passwords_unreadable(&self) -> Vec<&str> {
        self.create
            .iter()
            .filter(|r| r.login && r.password == Password::Unreadable)
            .map(|r| r.name.as_str())
            .collect()
    }

    /// The statements that set the passwords a source user could not read
    /// (`\password name` in psql does it without the server logging it).
    pub fn password_statements(names: &[&str]) -> String {
        names
            .iter()
            .map(|n| format!("ALTER ROLE {} PASSWORD '...';", crate::sql::quote_ident(n)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Roles to create that only a superuser may create.
    pub fn need_superuser(&self) -> Vec<&str> {
        self.create
            .iter()
            .filter(|r| r.superuser || r.replication || r.bypassrls)
            .map(|r| r.name.as_str())
            .collect()
    }

    pub fn unavailable_extensions(&self) -> Vec<&Extension> {
        self.extensions
            .iter()
            .filter_map(|e| match e {
                ExtensionPlan::Unavailable(ext) => Some(ext),
                _ => None,
            })
            .collect()
    }

    /// The version to put in pg_dump's `CREATE EXTENSION` for `name`.
    pub fn extension_version(&self, name: &str) -> Option<&str> {
        self.extensions.iter().find_map(|e| match e {
            ExtensionPlan::AtSourceVersion(ext) if ext.name == name => Some(ext.version.as_str()),
            _ => None,
        })
    }
}

/// `a, b, c and 4 more`.
pub fn names<S: AsRef<str>>(list: &[S]) -> String {
    const SHOWN: usize = 8;
    let shown: Vec<String> = list
        .iter()
        .take(SHOWN)
        .map(|s| display_ident(s.as_ref()))
        .collect();
    match list.len() {
        n if n > SHOWN => format!("{} and {} more", shown.join(", "), n - SHOWN),
        _ => shown.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::inventory::{RoleSetting, Setting};

    fn role(name: &str) -> RoleDef {
        RoleDef {
            name: name.into(),
            predefined: name.starts_with("pg_"),
            superuser: false,
            inherit: true,
            createrole: false,
            createdb: false,
            login: true,
            replication: false,
            bypassrls: false,
            connlimit: -1,
            valid_until: None,
            password: Password::Unreadable,
            settings: vec![RoleSetting {
                this_database: false,
                setting: Setting {
                    name: "vacuum_defer_cleanup_age".into(),
                    value: "0".into(),
                },
            }],
        }
    }

    fn inventory() -> Inventory {
        Inventory {
            roles: vec![
                role("app_owner"),
                role("app_rw"),
                role("postgres"),
                role("pg_read_all_data"),
            ],
            memberships: vec![
                Membership {
                    role: "app_rw".into(),
                    member: "app_owner".into(),
                    admin: false,
                    inherit: None,
                    set: None,
                },
                Membership {
                    role: "pg_read_all_data".into(),
                    member: "app_rw".into(),
                    admin: false,
                    inherit: None,
                    set: None,
                },
            ],
            ..Default::default()
        }
    }

    fn target() -> TargetView {
        TargetView {
            roles: ["postgres".to_string()].into_iter().collect(),
            major: 13,
            settings: ["work_mem".to_string()].into_iter().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn without_a_policy_missing_roles_are_named_and_ownership_does_not_move() {
        let plan = Plan::new(&inventory(), &target(), None);
        assert_eq!(plan.missing, vec!["app_owner", "app_rw"]);
        assert_eq!(plan.found, vec!["postgres"]);
        assert_eq!(plan.predefined_missing, vec!["pg_read_all_data"]);
        assert!(plan.create.is_empty());
        assert!(!plan.carries_ownership());
    }

    #[test]
    fn copy_creates_the_missing_and_grants_only_what_can_exist() {
        let plan = Plan::new(&inventory(), &target(), Some(RolesPolicy::Copy));
        let created: Vec<&str> = plan.create.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(created, vec!["app_owner", "app_rw"]);
        assert!(plan.carries_ownership());
        assert_eq!(plan.memberships.len(), 1);
        assert_eq!(
            plan.memberships_left.len(),
            1,
            "pg_read_all_data is not on PG 13"
        );
        assert!(plan.create.iter().all(|r| r.settings.is_empty()));
        assert_eq!(
            plan.settings_left.len(),
            2,
            "an unknown setting is named, not sent"
        );
        assert_eq!(plan.passwords_unreadable(), vec!["app_owner", "app_rw"]);
    }

    #[test]
    fn preload_libraries_stay_behind_with_the_reason() {
        let mut inv = inventory();
        inv.roles[1].settings.push(RoleSetting {
            this_database: true,
            setting: Setting {
                name: "session_preload_libraries".into(),
                value: "auto_explain".into(),
            },
        });
        inv.database.settings = vec![
            Setting {
                name: "shared_preload_libraries".into(),
                value: "pg_stat_statements".into(),
            },
            Setting {
                name: "local_preload_libraries".into(),
                value: "x".into(),
            },
            Setting {
                name: "work_mem".into(),
                value: "8MB".into(),
            },
        ];
        let mut view = target();
        view.settings.extend(
            PRELOAD_SETTINGS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        );
        let plan = Plan::new(&inv, &view, Some(RolesPolicy::Copy));
        let moved: Vec<&str> = plan
            .database_settings
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(moved, vec!["work_mem"]);
        let app_rw = plan.create.iter().find(|r| r.name == "app_rw");
        assert!(app_rw.is_some_and(|r| r.settings.is_empty()));
        let left: Vec<(&str, &str)> = plan
            .settings_left
            .iter()
            .filter(|l| l.why == PRELOAD_WHY)
            .map(|l| (l.whose.as_str(), l.setting.name.as_str()))
            .collect();
        assert_eq!(
            left,
            vec![
                ("role app_rw", "session_preload_libraries"),
                ("the database", "shared_preload_libraries"),
                ("the database", "local_preload_libraries"),
            ]
        );
    }

    #[test]
    fn skip_never_carries_ownership() {
        let plan = Plan::new(&inventory(), &target(), Some(RolesPolicy::Skip));
        assert!(!plan.carries_ownership());
        assert!(plan.create.is_empty());
    }
}
