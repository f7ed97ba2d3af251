//! The target's databases of a whole-server move: each one the target lacks
//! is made as on the source (owner, encoding, locale provider, collation,
//! ctype, ICU or builtin locale, ICU rules, connection limit) from
//! template0. What else a database carries (settings, comment, privileges)
//! the database's own sync brings, as for one database.
//!
//! The rule: every database that cannot be made as on the source is named
//! before any is made; then nothing is created.

use tokio_postgres::Client;

use super::databases::{LocaleProvider, SourceDatabase};
use crate::sql::{quote_ident, quote_literal};

/// Why a database cannot be made on the target as on the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmakeable {
    pub database: String,
    pub why: String,
}

/// The chosen databases the target lacks, and the reasons any of them
/// could not be made there as on the source (empty: all can).
/// `owners_come`: the source's roles will be made first (`--roles copy`),
/// so a missing owner is no obstacle.
pub async fn plan<'a>(
    tgt: &Client,
    chosen: &'a [SourceDatabase],
    owners_come: bool,
) -> Result<(Vec<&'a SourceDatabase>, Vec<Unmakeable>), tokio_postgres::Error> {
    let row = tgt
        .query_one(
            "SELECT current_setting('server_version_num')::int,
                    coalesce(array_agg(datname::text), '{}') FROM pg_database",
            &[],
        )
        .await?;
    let (version, present): (i32, Vec<String>) = (row.get(0), row.get(1));
    let missing: Vec<&SourceDatabase> = chosen
        .iter()
        .filter(|d| !present.contains(&d.name))
        .collect();
    let mut problems = Vec::new();
    for db in &missing {
        for why in unmakeable(tgt, version, db, owners_come).await? {
            problems.push(Unmakeable {
                database: db.name.clone(),
                why,
            });
        }
    }
    Ok((missing, problems))
}

/// What keeps `db` from being made on a target of `version` as on the
/// source.
async fn unmakeable(
    tgt: &Client,
    version: i32,
    db: &SourceDatabase,
    owners_come: bool,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut why = Vec::new();
    match db.provider {
        LocaleProvider::Icu if version < 150000 => why.push(
            "its locale provider is ICU, which a database may have from PostgreSQL 15 on: use a 15+ target".to_string(),
        ),
        LocaleProvider::Builtin if version < 170000 => why.push(
            "its locale provider is builtin, which a database may have from PostgreSQL 17 on: use a 17+ target".to_string(),
        ),
        _ => {}
    }
    if db.icu_rules.is_some() && version < 160000 {
        why.push("it has ICU rules, which PostgreSQL 16+ takes: use a 16+ target".into());
    }
    // libc locales come from the operating system: initdb records those it
    // found in pg_collation. C and POSIX are always there.
    for (what, locale) in [("collation", &db.collate), ("ctype", &db.ctype)] {
        if is_builtin_libc(locale) {
            continue;
        }
        let found: bool = tgt
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_collation
                                WHERE collprovider = 'c' AND (collcollate = $1 OR collname = $1))",
                &[locale],
            )
            .await?
            .get(0);
        if !found {
            why.push(format!(
                "its {what} {locale:?} is not a locale of the target's system: install it there (locale-gen), restart the target, then run again"
            ));
        }
    }
    if db.provider == LocaleProvider::Icu {
        if let Some(locale) = &db.locale {
            // An ICU locale the target's ICU does not know makes CREATE
            // DATABASE warn and fall back: refused here instead.
            let column = if version >= 170000 {
                "colllocale"
            } else {
                "colliculocale"
            };
            let found: bool = tgt
                .query_one(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM pg_collation WHERE collprovider = 'i' AND ({column} = $1 OR collname = $1))
                             OR $1 IN ('und', 'root', '')"
                    ),
                    &[locale],
                )
                .await?
                .get(0);
            if !found {
                why.push(format!(
                    "its ICU locale {locale:?} is unknown to the target's ICU: upgrade the target's ICU, or create the database yourself"
                ));
            }
        }
    }
    let owner: bool = tgt
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &[&db.owner],
        )
        .await?
        .get(0);
    if !owner && !owners_come {
        why.push(format!(
            "its owner {:?} is not a role of the target: --roles copy creates it",
            db.owner
        ));
    }
    Ok(why)
}

fn is_builtin_libc(locale: &str) -> bool {
    matches!(locale, "C" | "POSIX" | "C.UTF-8" | "C.utf8")
}

/// `CREATE DATABASE` for `db`, as on the source.
pub fn create_sql(db: &SourceDatabase) -> String {
    let mut sql = format!(
        "CREATE DATABASE {} WITH OWNER {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        quote_ident(&db.name),
        quote_ident(&db.owner),
        quote_literal(&db.encoding),
        quote_literal(&db.collate),
        quote_literal(&db.ctype),
    );
    match (db.provider, &db.locale) {
        (LocaleProvider::Libc, _) => {}
        (LocaleProvider::Icu, Some(l)) => sql.push_str(&format!(
            " LOCALE_PROVIDER icu ICU_LOCALE {}",
            quote_literal(l)
        )),
        (LocaleProvider::Builtin, Some(l)) => sql.push_str(&format!(
            " LOCALE_PROVIDER builtin BUILTIN_LOCALE {}",
            quote_literal(l)
        )),
        (p, None) => sql.push_str(&format!(" LOCALE_PROVIDER {}", p.as_sql())),
    }
    if let Some(rules) = &db.icu_rules {
        sql.push_str(&format!(" ICU_RULES {}", quote_literal(rules)));
    }
    sql.push_str(&format!(" CONNECTION LIMIT {}", db.connection_limit));
    sql
}

/// Makes each database (CREATE DATABASE runs alone, outside a transaction).
pub async fn create(
    tgt: &Client,
    missing: &[&SourceDatabase],
) -> Result<(), (String, tokio_postgres::Error)> {
    for db in missing {
        tgt.batch_execute(&create_sql(db))
            .await
            .map_err(|e| (db.name.clone(), e))?;
        tracing::info!(database = %db.name, "database created on the target as on the source");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_is_made_with_the_sources_locale() {
        let db = SourceDatabase {
            name: "shop eu".into(),
            owner: "app".into(),
            encoding: "UTF8".into(),
            provider: LocaleProvider::Icu,
            collate: "C".into(),
            ctype: "C".into(),
            locale: Some("de-DE".into()),
            icu_rules: None,
            connection_limit: 20,
            bytes: None,
        };
        assert_eq!(
            create_sql(&db),
            "CREATE DATABASE \"shop eu\" WITH OWNER \"app\" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' CONNECTION LIMIT 20"
        );
    }
}
