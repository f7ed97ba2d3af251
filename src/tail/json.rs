//! Decoded changes as JSON records, one per line: begin, commit, each row
//! change (table, operation, key, new and old values with their types),
//! truncations, logical messages, and DDL (a row of `pgrepl.schema_log`
//! shown as the command it records).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::lsn::Lsn;
use crate::stream::pgoutput::{Datum, OldRow, Relation, Tuple};

/// Postgres timestamps count microseconds from 2000-01-01.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// `2026-12-02T10:11:12.123456Z` from a pgoutput commit timestamp.
pub fn commit_time(pg_micros: i64) -> String {
    let unix =
        Duration::from_secs(PG_EPOCH_UNIX_SECS) + Duration::from_micros(pg_micros.max(0) as u64);
    humantime::format_rfc3339_micros(UNIX_EPOCH + unix).to_string()
}

/// A column value as JSON: numbers and booleans as JSON ones, json and
/// jsonb as JSON, every other type (numeric included: no precision lost)
/// as its text.
pub fn value(type_name: &str, datum: &Datum) -> Option<Value> {
    let text = match datum {
        Datum::Null => return Some(Value::Null),
        Datum::Unchanged => return None,
        Datum::Text(b) => String::from_utf8_lossy(b).into_owned(),
        Datum::Binary(_) => return Some(Value::String(datum.display())),
    };
    Some(match type_name {
        "boolean" => Value::Bool(text == "t"),
        "smallint" | "integer" | "bigint" | "oid" => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or(Value::String(text)),
        "real" | "double precision" => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => json!(f),
            _ => Value::String(text),
        },
        "json" | "jsonb" => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        _ => Value::String(text),
    })
}

/// Renders tuples of one relation.
pub struct Shape<'a> {
    pub relation: &'a Relation,
    /// Type names by type OID.
    pub types: &'a HashMap<u32, String>,
}

impl Shape<'_> {
    pub fn table(&self) -> String {
        format!("{}.{}", self.relation.namespace, self.relation.name)
    }

    fn type_of(&self, i: usize) -> String {
        let oid = self.relation.columns[i].type_oid;
        self.types
            .get(&oid)
            .cloned()
            .unwrap_or_else(|| format!("oid {oid}"))
    }

    /// `{column: value}` for every column the tuple carries; `only_key`
    /// keeps the replica identity's columns.
    pub fn object(&self, tuple: &Tuple, only_key: bool) -> Map<String, Value> {
        let mut out = Map::new();
        for (i, (col, datum)) in self.relation.columns.iter().zip(tuple).enumerate() {
            if only_key && !col.key {
                continue;
            }
            if let Some(v) = value(&self.type_of(i), datum) {
                out.insert(col.name.clone(), v);
            }
        }
        out
    }

    /// The columns whose TOASTed value an UPDATE left as it was (not sent).
    pub fn unchanged(&self, tuple: &Tuple) -> Vec<String> {
        self.relation
            .columns
            .iter()
            .zip(tuple)
            .filter(|(_, d)| matches!(d, Datum::Unchanged))
            .map(|(c, _)| c.name.clone())
            .collect()
    }

    pub fn types(&self) -> Map<String, Value> {
        self.relation
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), Value::String(self.type_of(i))))
            .collect()
    }
}

/// Where a change happened.
#[derive(Clone, Copy, Debug)]
pub struct At {
    /// The transaction's commit LSN (pgoutput names changes by it).
    pub lsn: Lsn,
    pub xid: u32,
    pub commit_ts: i64,
}

fn base(kind: &str, at: &At) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("kind".into(), json!(kind));
    m.insert("lsn".into(), json!(at.lsn.to_string()));
    m.insert("xid".into(), json!(at.xid));
    m.insert("commit_time".into(), json!(commit_time(at.commit_ts)));
    m
}

pub fn begin(at: &At) -> Value {
    Value::Object(base("begin", at))
}

pub fn commit(at: &At, end_lsn: Lsn) -> Value {
    let mut m = base("commit", at);
    m.insert("end_lsn".into(), json!(end_lsn.to_string()));
    Value::Object(m)
}

pub fn insert(at: &At, shape: &Shape<'_>, new: &Tuple) -> Value {
    let mut m = base("insert", at);
    m.insert("table".into(), json!(shape.table()));
    m.insert("key".into(), Value::Object(shape.object(new, true)));
    m.insert("new".into(), Value::Object(shape.object(new, false)));
    m.insert("types".into(), Value::Object(shape.types()));
    Value::Object(m)
}

pub fn update(at: &At, shape: &Shape<'_>, old: Option<&OldRow>, new: &Tuple) -> Value {
    let mut m = base("update", at);
    m.insert("table".into(), json!(shape.table()));
    let key = match old {
        Some(OldRow::Key(t) | OldRow::Full(t)) => shape.object(t, true),
        None => shape.object(new, true),
    };
    m.insert("key".into(), Value::Object(key));
    m.insert("new".into(), Value::Object(shape.object(new, false)));
    match old {
        Some(OldRow::Full(t)) => {
            m.insert("old".into(), Value::Object(shape.object(t, false)));
        }
        Some(OldRow::Key(t)) => {
            m.insert("old_key".into(), Value::Object(shape.object(t, true)));
        }
        None => {}
    }
    let unchanged = shape.unchanged(new);
    if !unchanged.is_empty() {
        m.insert("unchanged_toast".into(), json!(unchanged));
    }
    m.insert("types".into(), Value::Object(shape.types()));
    Value::Object(m)
}

pub fn delete(at: &At, shape: &Shape<'_>, old: &OldRow) -> Value {
    let mut m = base("delete", at);
    m.insert("table".into(), json!(shape.table()));
    let (OldRow::Key(t) | OldRow::Full(t)) = old;
    m.insert("key".into(), Value::Object(shape.object(t, true)));
    if let OldRow::Full(t) = old {
        m.insert("old".into(), Value::Object(shape.object(t, false)));
    }
    m.insert("types".into(), Value::Object(shape.types()));
    Value::Object(m)
}

pub fn truncate(at: &At, tables: Vec<String>, cascade: bool, restart_identity: bool) -> Value {
    let mut m = base("truncate", at);
    m.insert("tables".into(), json!(tables));
    m.insert("cascade".into(), json!(cascade));
    m.insert("restart_identity".into(), json!(restart_identity));
    Value::Object(m)
}

/// A row of `pgrepl.schema_log`: the DDL command it records.
pub fn ddl(at: &At, shape: &Shape<'_>, new: &Tuple) -> Value {
    let row = shape.object(new, false);
    let mut m = base("ddl", at);
    for (field, column) in [
        ("id", "id"),
        ("tag", "command_tag"),
        ("event", "event"),
        ("ddl", "ddl"),
        ("search_path", "search_path"),
        ("role", "role"),
    ] {
        if let Some(v) = row.get(column) {
            m.insert(field.into(), v.clone());
        }
    }
    Value::Object(m)
}

pub fn message(
    at: Option<&At>,
    lsn: Lsn,
    prefix: &str,
    content: &[u8],
    transactional: bool,
) -> Value {
    let mut m = match at {
        Some(at) => base("message", at),
        None => {
            let mut m = Map::new();
            m.insert("kind".into(), json!("message"));
            m.insert("lsn".into(), json!(lsn.to_string()));
            m
        }
    };
    m.insert("prefix".into(), json!(prefix));
    m.insert("content".into(), json!(String::from_utf8_lossy(content)));
    m.insert("transactional".into(), json!(transactional));
    Value::Object(m)
}

/// Now, for records that have no commit time of their own.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64 - (PG_EPOCH_UNIX_SECS as i64) * 1_000_000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn values_keep_their_type() {
        let t = |s: &str| Datum::Text(Bytes::from(s.to_string()));
        assert_eq!(value("integer", &t("42")), Some(json!(42)));
        assert_eq!(value("boolean", &t("t")), Some(json!(true)));
        assert_eq!(
            value("numeric", &t("1.10")),
            Some(json!("1.10")),
            "no precision lost"
        );
        assert_eq!(value("double precision", &t("NaN")), Some(json!("NaN")));
        assert_eq!(value("jsonb", &t("{\"a\": [1]}")), Some(json!({"a": [1]})));
        assert_eq!(value("text", &Datum::Null), Some(Value::Null));
        assert_eq!(value("text", &Datum::Unchanged), None);
    }

    #[test]
    fn commit_times_are_rfc3339() {
        assert_eq!(commit_time(0), "2000-01-01T00:00:00.000000Z");
    }
}
