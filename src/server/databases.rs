//! The source server's databases: which a whole-server command covers, what
//! each is made with (owner, encoding, locale provider, collation, ctype,
//! ICU or builtin locale, ICU rules, connection limit), and the name of
//! each one's sync.

use tokio_postgres::Client;

use crate::cli::DatabaseArgs;
use crate::conn::ConnConfig;
use crate::sql::SyncName;

/// How a database sorts and classifies text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocaleProvider {
    Libc,
    /// PostgreSQL 15+ as a database's provider.
    Icu,
    /// PostgreSQL 17+.
    Builtin,
}

impl LocaleProvider {
    fn parse(s: &str) -> Self {
        match s {
            "i" => LocaleProvider::Icu,
            "b" => LocaleProvider::Builtin,
            _ => LocaleProvider::Libc,
        }
    }

    pub fn as_sql(self) -> &'static str {
        match self {
            LocaleProvider::Libc => "libc",
            LocaleProvider::Icu => "icu",
            LocaleProvider::Builtin => "builtin",
        }
    }
}

/// A database of the source server, as `CREATE DATABASE` needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceDatabase {
    pub name: String,
    pub owner: String,
    pub encoding: String,
    pub provider: LocaleProvider,
    pub collate: String,
    pub ctype: String,
    /// The ICU or builtin locale.
    pub locale: Option<String>,
    pub icu_rules: Option<String>,
    pub connection_limit: i32,
    /// Its size (`None`: this role may not connect to it).
    pub bytes: Option<i64>,
}

/// Every database that takes connections and is no template; read from
/// `pg_database` the same on 12 to 18 (columns that came later through
/// `to_jsonb`).
pub async fn list(client: &Client) -> Result<Vec<SourceDatabase>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT d.datname::text, pg_get_userbyid(d.datdba)::text, pg_encoding_to_char(d.encoding)::text,
                    coalesce(to_jsonb(d) ->> 'datlocprovider', 'c'), d.datcollate::text, d.datctype::text,
                    coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale'),
                    to_jsonb(d) ->> 'daticurules', d.datconnlimit,
                    CASE WHEN has_database_privilege(d.oid, 'CONNECT') THEN pg_database_size(d.oid) END
             FROM pg_database d
             WHERE NOT d.datistemplate AND d.datallowconn
               -- (-2: left invalid by an interrupted DROP DATABASE)
               AND d.datconnlimit <> -2
             ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| SourceDatabase {
            name: r.get(0),
            owner: r.get(1),
            encoding: r.get(2),
            provider: LocaleProvider::parse(r.get(3)),
            collate: r.get(4),
            ctype: r.get(5),
            locale: r.get::<_, Option<String>>(6).filter(|l| !l.is_empty()),
            icu_rules: r.get::<_, Option<String>>(7).filter(|l| !l.is_empty()),
            connection_limit: r.get(8),
            bytes: r.get(9),
        })
        .collect())
}

/// The databases `args` asks for, largest first (the copy pool takes
/// them in this order); a name that is not there is an error naming it.
pub fn choose(
    all: Vec<SourceDatabase>,
    args: &DatabaseArgs,
) -> Result<Vec<SourceDatabase>, String> {
    let known = |n: &String| all.iter().any(|d| &d.name == n);
    let unknown: Vec<&String> = args
        .databases
        .iter()
        .chain(&args.exclude_databases)
        .filter(|n| !known(n))
        .collect();
    if !unknown.is_empty() {
        let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
        return Err(format!(
            "the source has no database {} that takes connections (it has: {})",
            unknown
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            names.join(", ")
        ));
    }
    let mut chosen: Vec<SourceDatabase> = all
        .into_iter()
        .filter(|d| match args.all_databases {
            true => !args.exclude_databases.contains(&d.name),
            false => args.databases.contains(&d.name),
        })
        .collect();
    if chosen.is_empty() {
        return Err("no database is left to move".into());
    }
    chosen.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
    Ok(chosen)
}

/// The longest `--name` of a whole-server move: what is left of the 40
/// characters of a sync name (`NAME_DB`) tells databases apart.
pub const LONGEST_BASE: usize = 24;

/// The sync of database `db` in a whole-server move named `base`:
/// `base_db`, the database's name made a valid sync name (lower case,
/// `[a-z0-9_]`, at most 40 characters), with a hash of the real name
/// where that changed it, so two databases never share one.
pub fn sync_name(base: &SyncName, db: &str) -> SyncName {
    let clean: String = db
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    let room = 40usize.saturating_sub(base.as_str().len() + 1);
    let part = if clean == db && clean.len() <= room {
        clean
    } else {
        let hash = fnv1a(db.as_bytes());
        let keep: String = clean.chars().take(room.saturating_sub(9)).collect();
        format!("{keep}_{hash:08x}")
    };
    let full = format!("{}_{part}", base.as_str());
    let full: String = full.chars().take(40).collect();
    // Made of [a-z0-9_] and at most 40 characters above: always valid.
    SyncName::new(&full).unwrap_or_else(|_| base.clone())
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// `cfg` on database `db`.
pub fn on_database(cfg: &ConnConfig, db: &str) -> ConnConfig {
    ConnConfig {
        dbname: db.to_string(),
        ..cfg.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(name: &str, bytes: i64) -> SourceDatabase {
        SourceDatabase {
            name: name.into(),
            owner: "o".into(),
            encoding: "UTF8".into(),
            provider: LocaleProvider::Libc,
            collate: "C".into(),
            ctype: "C".into(),
            locale: None,
            icu_rules: None,
            connection_limit: -1,
            bytes: Some(bytes),
        }
    }

    #[test]
    fn databases_are_chosen_largest_first_and_unknown_names_refused() {
        let all = || vec![db("a", 1), db("b", 3), db("postgres", 2)];
        let every = DatabaseArgs {
            all_databases: true,
            exclude_databases: vec!["postgres".into()],
            ..Default::default()
        };
        let names: Vec<String> = choose(all(), &every)
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, vec!["b", "a"]);
        let only = DatabaseArgs {
            databases: vec!["a".into(), "nope".into()],
            ..Default::default()
        };
        let err = choose(all(), &only).unwrap_err();
        assert!(
            err.contains("\"nope\"") && err.contains("a, b, postgres"),
            "{err}"
        );
    }

    #[test]
    fn every_database_gets_a_valid_sync_name_of_its_own() {
        let base = SyncName::default();
        assert_eq!(sync_name(&base, "shop").as_str(), "pgrepl_shop");
        let odd = sync_name(&base, "Shop-EU");
        let other = sync_name(&base, "shop_eu");
        assert_ne!(odd, other);
        assert!(odd.as_str().starts_with("pgrepl_shop_eu_"), "{odd:?}");
        let long = sync_name(&base, &"x".repeat(100));
        assert!(long.as_str().len() <= 40);
        assert_ne!(long, sync_name(&base, &"x".repeat(101)));
        // The longest base still tells "order" from "orders".
        let base = SyncName::new(&"b".repeat(LONGEST_BASE)).unwrap();
        assert_ne!(sync_name(&base, "order"), sync_name(&base, "orders"));
        assert_ne!(
            sync_name(&base, &"order".repeat(9)),
            sync_name(&base, &format!("{}s", "order".repeat(9)))
        );
    }
}
