//! The shape of a database from its catalog, to compare source and target:
//! columns (type, nullability, default, identity, generation), indexes,
//! constraints, triggers, views, functions, types and domains, sequences
//! and their parameters, partitions, schemas and comments (tables and
//! columns). pgrepl's own schema is left out.

use tokio_postgres::Client;

const QUERIES: &[(&str, &str)] = &[
    ("column", "SELECT format('%I.%I.%I %s%s%s%s%s%s', n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                   (SELECT ' collate ' || co.collname FROM pg_collation co JOIN pg_type t ON t.oid = a.atttypid
                    WHERE co.oid = a.attcollation AND a.attcollation <> t.typcollation),
                   CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                   coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''),
                   CASE a.attidentity WHEN 'a' THEN ' identity always' WHEN 'd' THEN ' identity by default' ELSE '' END,
                   CASE a.attgenerated WHEN 's' THEN ' generated' ELSE '' END)
                FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')"),
    ("index", "SELECT indexdef FROM pg_indexes WHERE true"),
    ("constraint", "SELECT format('%I.%I %s', n.nspname, c.conname, pg_get_constraintdef(c.oid))
                    FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
                    -- NOT NULL is a constraint from 18 on (columns compare it on every major).
                    WHERE c.contype <> 'n'"),
    ("trigger", "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal"),
    ("view", "SELECT format('%I.%I %s %s', n.nspname, c.relname, c.relkind, pg_get_viewdef(c.oid))
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('v', 'm')"),
    // Functions a type made for itself (multirange constructors, 14+) left out.
    ("function", "SELECT pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                  WHERE p.prokind IN ('f', 'p') AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'i')"),
    ("enum", "SELECT format('%I.%I %s', n.nspname, t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder))
              FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace JOIN pg_enum e ON e.enumtypid = t.oid
              WHERE {where} GROUP BY n.nspname, t.typname"),
    ("relation", "SELECT format('%I.%I %s %s %s', n.nspname, c.relname, c.relkind, c.relpersistence,
                  coalesce(pg_get_expr(c.relpartbound, c.oid), ''))
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f')"),
    ("comment", "SELECT format('%s %s %s', d.objoid::regclass,
                        coalesce((SELECT a.attname FROM pg_attribute a WHERE a.attrelid = d.objoid AND a.attnum = d.objsubid), ''),
                        d.description) FROM pg_description d
                 JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE true"),
    ("domain", "SELECT format('%I.%I %s%s%s', n.nspname, t.typname, format_type(t.typbasetype, t.typtypmod),
                    CASE WHEN t.typnotnull THEN ' not null' ELSE '' END, coalesce(' default ' || t.typdefault, ''))
                FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typtype = 'd'"),
    ("sequence", "SELECT format('%I.%I %s start %s inc %s min %s max %s cache %s%s', n.nspname, c.relname,
                      format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache,
                      CASE WHEN s.seqcycle THEN ' cycle' ELSE '' END)
                  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE true"),
    ("schema", "SELECT n.nspname::text FROM pg_namespace n WHERE true"),
];

const USER_SCHEMAS: &str =
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgrepl') AND n.nspname !~ '^pg_'";

/// Every line of the database's shape, sorted.
pub async fn shape(client: &Client) -> Vec<String> {
    let mut lines = Vec::new();
    for (kind, sql) in QUERIES {
        let filter = if *kind == "index" {
            "schemaname NOT IN ('pg_catalog', 'information_schema', 'pgrepl')".to_string()
        } else {
            USER_SCHEMAS.to_string()
        };
        let sql = if sql.contains("{where}") {
            sql.replace("{where}", &filter)
        } else {
            format!("{sql} AND {filter}")
        };
        for row in client
            .query(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{kind}: {}", super::db_error(&e)))
        {
            lines.push(format!("{kind}: {}", row.get::<_, String>(0)));
        }
    }
    lines.sort();
    lines
}

async fn major(client: &Client) -> i32 {
    let v: String = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .expect("server version")
        .get(0);
    v.parse::<i32>().unwrap_or(0) / 10000
}

/// Panics with the differing lines unless both have the same shape.
/// Between majors, view definitions are compared by name and kind only:
/// each major deparses a query its own way (16 dropped the table prefix
/// of columns).
pub async fn assert_same_shape(source: &Client, target: &Client) {
    let (mut a, mut b) = (shape(source).await, shape(target).await);
    if major(source).await != major(target).await {
        for lines in [&mut a, &mut b] {
            for line in lines.iter_mut() {
                if let Some(rest) = line.strip_prefix("view: ") {
                    let head: Vec<&str> = rest.splitn(3, ' ').take(2).collect();
                    *line = format!("view: {}", head.join(" "));
                }
            }
        }
    }
    let only_source: Vec<&String> = a.iter().filter(|l| !b.contains(l)).collect();
    let only_target: Vec<&String> = b.iter().filter(|l| !a.contains(l)).collect();
    assert!(
        only_source.is_empty() && only_target.is_empty(),
        "schemas differ\nonly on the source:\n  {}\nonly on the target:\n  {}",
        only_source
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        only_target
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}
