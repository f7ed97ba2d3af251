//! Large objects: logical decoding does not carry them (their writes go
//! to a catalog), so pgrepl copies them: under the copy's snapshot with
//! the rows, then, while streaming, every few seconds it compares both
//! sides (content digest, owner, privileges) and copies what changed,
//! removes what the source removed; at cutover it does the same under the
//! fence, which makes them exact.
//!
//! The rule: an object is compared and copied as a whole, content first,
//! then owner and grants, in one target transaction; the digest is the
//! same SQL on both sides (md5 of its 1 MB pieces' md5s), so big objects
//! are never read into memory whole.

use std::collections::HashMap;

use tokio_postgres::GenericClient;

use crate::conn::error::describe;
use crate::conn::Side;
use crate::sql::quote_ident;

/// Bytes per `lo_get` / `lo_put` round trip.
const PIECE: i64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
#[error("{side}: large object {oid}: {what}: {message}")]
pub struct LargeObjectError {
    pub side: Side,
    pub oid: i64,
    pub what: &'static str,
    pub message: String,
}

fn err(
    side: Side,
    oid: i64,
    what: &'static str,
) -> impl Fn(tokio_postgres::Error) -> LargeObjectError {
    move |e| LargeObjectError {
        side,
        oid,
        what,
        message: describe(&e),
    }
}

/// A large object's grants, `m` its `pg_largeobject_metadata` row: items
/// `PRIVILEGE:g:grantee` (`g` with grant option, `-` without; the grantee
/// empty for PUBLIC, a name no role has), the owner's own left out.
///
/// The rule: the order is the items' bytes (`COLLATE "C"`), the same on
/// both sides whatever their collations, so equal grants compare equal.
const GRANTS: &str = "coalesce((SELECT array_agg(g.item ORDER BY g.item COLLATE \"C\")
    FROM (SELECT a.privilege_type || ':' || CASE WHEN a.is_grantable THEN 'g' ELSE '-' END || ':'
                 || CASE WHEN a.grantee = 0 THEN '' ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END AS item
          FROM pg_catalog.aclexplode(m.lomacl) a WHERE a.grantee <> m.lomowner) g), '{}')";

/// One large object as both sides describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    pub owner: String,
    /// The privileges as [`GRANTS`] items, sorted (the grantor is left
    /// out: it differs with who ran the GRANT, not in effect).
    pub grants: Vec<String>,
    pub digest: String,
}

/// Every large object of the database `client` is on, by oid.
pub async fn describe_all(
    client: &impl GenericClient,
    side: Side,
) -> Result<HashMap<i64, Described>, LargeObjectError> {
    let rows = client
        .query(
            &format!(
                "SELECT m.oid::int8, pg_catalog.pg_get_userbyid(m.lomowner)::text, {GRANTS},
                        (SELECT md5(string_agg(md5(lo_get(m.oid, g * {PIECE}, {PIECE})), '' ORDER BY g))
                         FROM generate_series(0::int8, greatest(0::int8,
                              (lo_lseek64(lo_open(m.oid, 262144), 0, 2) - 1) / {PIECE})) g)
                 FROM pg_catalog.pg_largeobject_metadata m ORDER BY 1"
            ),
            &[],
        )
        .await
        .map_err(err(side, 0, "reading large objects"))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Described {
                    owner: r.get(1),
                    grants: r.get(2),
                    digest: r.get::<_, Option<String>>(3).unwrap_or_default(),
                },
            )
        })
        .collect())
}

/// A [`GRANTS`] item (`SELECT:g:app rw`, `UPDATE:-:` for PUBLIC) as a GRANT.
fn grant_sql(oid: i64, item: &str) -> Option<String> {
    let mut parts = item.splitn(3, ':');
    let (privilege, option, grantee) = (parts.next()?, parts.next()?, parts.next()?);
    if !matches!(privilege, "SELECT" | "UPDATE") {
        return None;
    }
    let grantee = match grantee {
        "" => "PUBLIC".to_string(),
        g => quote_ident(g),
    };
    let option = match option {
        "g" => " WITH GRANT OPTION",
        _ => "",
    };
    Some(format!(
        "GRANT {privilege} ON LARGE OBJECT {oid} TO {grantee}{option}"
    ))
}

/// Copies one large object from `src` to `tgt` (replacing what the target
/// has under its oid). `ownership`: give it the source's owner and grants
/// (else the target user owns it, with no grants).
pub async fn copy_one(
    src: &impl GenericClient,
    tgt: &impl GenericClient,
    oid: i64,
    ownership: bool,
) -> Result<i64, LargeObjectError> {
    let oid_param = oid as u32;
    tgt.execute(
        "SELECT lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata WHERE oid = $1",
        &[&oid_param],
    )
    .await
    .map_err(err(Side::Target, oid, "replacing it"))?;
    tgt.execute("SELECT lo_create($1)", &[&oid_param])
        .await
        .map_err(err(Side::Target, oid, "creating it"))?;
    let mut offset = 0i64;
    loop {
        let piece: Vec<u8> = src
            .query_one(
                "SELECT lo_get($1, $2, $3::int4)",
                &[&oid_param, &offset, &(PIECE as i32)],
            )
            .await
            .map_err(err(Side::Source, oid, "reading it"))?
            .get(0);
        if !piece.is_empty() {
            tgt.execute("SELECT lo_put($1, $2, $3)", &[&oid_param, &offset, &piece])
                .await
                .map_err(err(Side::Target, oid, "writing it"))?;
        }
        offset += piece.len() as i64;
        if (piece.len() as i64) < PIECE {
            break;
        }
    }
    if ownership {
        let row = src
            .query_one(
                &format!(
                    "SELECT pg_catalog.pg_get_userbyid(m.lomowner)::text, {GRANTS}
                     FROM pg_catalog.pg_largeobject_metadata m WHERE m.oid = $1"
                ),
                &[&oid_param],
            )
            .await
            .map_err(err(Side::Source, oid, "reading its owner"))?;
        let owner: String = row.get(0);
        let grants: Vec<String> = row.get(1);
        let mut sql = vec![format!(
            "ALTER LARGE OBJECT {oid} OWNER TO {}",
            quote_ident(&owner)
        )];
        sql.extend(grants.iter().filter_map(|g| grant_sql(oid, g)));
        tgt.batch_execute(&sql.join(";")).await.map_err(err(
            Side::Target,
            oid,
            "setting its owner and grants",
        ))?;
    }
    Ok(offset)
}

/// What one comparison did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Large objects the source has.
    pub total: usize,
    pub copied: usize,
    pub removed: usize,
    pub bytes: i64,
}

/// Makes the target's large objects the source's: copies what is new or
/// differs, removes what the source no longer has. The caller runs it in
/// one target transaction; `src` may be inside a snapshot.
pub async fn make_equal(
    src: &impl GenericClient,
    tgt: &impl GenericClient,
    ownership: bool,
) -> Result<Round, LargeObjectError> {
    let source = describe_all(src, Side::Source).await?;
    let target = describe_all(tgt, Side::Target).await?;
    let mut round = Round {
        total: source.len(),
        ..Default::default()
    };
    let mut oids: Vec<&i64> = source.keys().collect();
    oids.sort();
    for oid in oids {
        let s = &source[oid];
        let same = target.get(oid).is_some_and(|t| match ownership {
            true => t == s,
            false => t.digest == s.digest,
        });
        if same {
            continue;
        }
        round.bytes += copy_one(src, tgt, *oid, ownership).await?;
        round.copied += 1;
    }
    for oid in target.keys().filter(|o| !source.contains_key(o)) {
        tgt.execute("SELECT lo_unlink($1)", &[&(*oid as u32)])
            .await
            .map_err(err(Side::Target, *oid, "removing it"))?;
        round.removed += 1;
    }
    Ok(round)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_become_statements() {
        assert_eq!(
            grant_sql(42, "SELECT:-:app rw:x").as_deref(),
            Some("GRANT SELECT ON LARGE OBJECT 42 TO \"app rw:x\"")
        );
        assert_eq!(
            grant_sql(42, "SELECT:g:PUBLIC").as_deref(),
            Some("GRANT SELECT ON LARGE OBJECT 42 TO \"PUBLIC\" WITH GRANT OPTION")
        );
        assert_eq!(
            grant_sql(42, "UPDATE:-:").as_deref(),
            Some("GRANT UPDATE ON LARGE OBJECT 42 TO PUBLIC")
        );
        assert_eq!(grant_sql(42, "DELETE:-:x"), None);
        assert_eq!(grant_sql(42, "garbage"), None);
    }
}
