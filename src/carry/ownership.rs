//! Owners and privileges compared between the two sides: schemas,
//! tables, views, sequences, columns, functions and types, as the same
//! catalog query reads them on each. Used by the copy's summary (what does
//! not match the source) and by `verify`.

use std::collections::BTreeMap;

use tokio_postgres::GenericClient;

/// One object's owner and privileges: `role:PRIVILEGE` items, sorted, a
/// `*` marking WITH GRANT OPTION; no explicit privileges read as the
/// defaults they stand for (so NULL and the default compare equal).
const SQL: &str = r#"
WITH objects(kind, identity, owner, acl) AS (
    SELECT 'schema', quote_ident(n.nspname), n.nspowner, coalesce(n.nspacl, acldefault('n'::"char", n.nspowner))
    FROM pg_namespace n WHERE SKIPPED
    UNION ALL
    SELECT CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                          WHEN 'f' THEN 'foreign table' ELSE 'table' END,
           format('%I.%I', n.nspname, c.relname), c.relowner,
           coalesce(c.relacl, acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", c.relowner))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE SKIPPED AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
    UNION ALL
    SELECT 'column', format('%I.%I.%I', n.nspname, c.relname, a.attname), NULL, a.attacl
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE SKIPPED AND a.attacl IS NOT NULL AND NOT a.attisdropped
    UNION ALL
    SELECT 'function', p.oid::regprocedure::text, p.proowner, coalesce(p.proacl, acldefault('f'::"char", p.proowner))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE SKIPPED
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
    UNION ALL
    SELECT 'type', format('%I.%I', n.nspname, t.typname), t.typowner, coalesce(t.typacl, acldefault('T'::"char", t.typowner))
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE SKIPPED AND t.typtype IN ('b', 'd', 'e', 'r', 'm') AND t.typelem = 0
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
)
SELECT o.kind, o.identity, coalesce(pg_get_userbyid(o.owner)::text, ''),
       coalesce((SELECT array_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END
                                  || ':' || a.privilege_type || CASE WHEN a.is_grantable THEN '*' ELSE '' END ORDER BY 1)
                 FROM aclexplode(o.acl) a), '{}')
FROM objects o"#;

/// Schemas never compared (pgrepl's own and the system's).
const SKIPPED: &str =
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgrepl', 'pgrepl_fence')
    AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'";

#[derive(Clone, Debug, PartialEq, Eq)]
struct Access {
    owner: String,
    grants: Vec<String>,
}

/// One object whose owner or privileges differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub kind: String,
    pub identity: String,
    pub what: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.identity, self.what)
    }
}

async fn read(
    client: &impl GenericClient,
) -> Result<BTreeMap<(String, String), Access>, tokio_postgres::Error> {
    Ok(client
        .query(&SQL.replace("SKIPPED", SKIPPED), &[])
        .await?
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                Access {
                    owner: r.get(2),
                    grants: r.get(3),
                },
            )
        })
        .collect())
}

/// Objects on both sides whose owner or privileges differ (objects on one
/// side only are a schema difference, not this one's business).
pub async fn differences(
    src: &impl GenericClient,
    tgt: &impl GenericClient,
) -> Result<Vec<Difference>, tokio_postgres::Error> {
    let (a, mut b) = tokio::try_join!(read(src), read(tgt))?;
    // MAINTAIN came with PostgreSQL 17: an owner holds it there, and no
    // older source can have granted it.
    let v17 = "SELECT current_setting('server_version_num')::int >= 170000";
    let (s17, t17): (bool, bool) = (
        src.query_one(v17, &[]).await?.get(0),
        tgt.query_one(v17, &[]).await?.get(0),
    );
    if t17 && !s17 {
        for access in b.values_mut() {
            access
                .grants
                .retain(|g| !g.ends_with(":MAINTAIN") && !g.ends_with(":MAINTAIN*"));
        }
    }
    let mut out = Vec::new();
    for (key, s) in &a {
        let Some(t) = b.get(key) else { continue };
        let mut what = Vec::new();
        if s.owner != t.owner {
            what.push(format!(
                "owner {} on the target, {} on the source",
                t.owner, s.owner
            ));
        }
        if s.grants != t.grants {
            let only = |x: &[String], y: &[String]| -> Vec<String> {
                x.iter().filter(|g| !y.contains(g)).cloned().collect()
            };
            let missing = only(&s.grants, &t.grants);
            let extra = only(&t.grants, &s.grants);
            if !missing.is_empty() {
                what.push(format!("target lacks {}", missing.join(", ")));
            }
            if !extra.is_empty() {
                what.push(format!("target also grants {}", extra.join(", ")));
            }
        }
        if !what.is_empty() {
            out.push(Difference {
                kind: key.0.clone(),
                identity: key.1.clone(),
                what: what.join("; "),
            });
        }
    }
    Ok(out)
}
