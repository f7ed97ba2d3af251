//! Set-based statements for many rows of one table at once: the rows go to
//! the target either as one text array per column, unnested into rows
//! (`unnest($1::int4[], $2::text[]) AS s(id, v)`: no temp table to fill,
//! scan and empty), or, for columns whose values cannot travel in an array
//! (arrays themselves, types with another delimiter), through a COPY into a
//! temp stage table. Either way one DELETE or UPDATE joins them on the key.

use bytes::{BufMut, BytesMut};

use super::copy_text::SHORT_VALUE;
use super::params::Param;
use super::pipeline::Pipeline;
use super::relation::{Stages, TargetRelation};
use crate::stream::pgoutput::{Datum, Tuple};

/// Which stage table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageKind {
    Delete,
    Update,
}

impl TargetRelation {
    /// Whether every column of `cols` can travel as an array.
    pub fn unnestable(&self, cols: &[usize]) -> bool {
        cols.iter()
            .all(|&i| self.columns.get(i).is_some_and(|c| c.array_type.is_some()))
    }

    /// `unnest($1::T1[], ...) AS s(c1, ...)` over `cols` (all unnestable).
    pub fn unnest_from(&self, cols: &[usize]) -> String {
        let arrays: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                let ty = self.columns[i].array_type.as_deref().unwrap_or("text[]");
                format!("${}::{ty}", n + 1)
            })
            .collect();
        format!(
            "unnest({}) AS s({})",
            arrays.join(", "),
            self.column_list(cols)
        )
    }

    /// The stage table for `kind`, created on first use and emptied if this
    /// transaction already used it (they empty themselves at commit).
    pub fn stage<M>(
        &mut self,
        pipe: &mut Pipeline<M>,
        kind: StageKind,
        seq: &mut u64,
        meta: impl Fn() -> M,
    ) -> String {
        if self.stages.is_none() {
            *seq += 1;
            let base = format!("pgrepl_stage_{seq}");
            for (suffix, cols) in [("d", self.key.clone()), ("u", self.all_columns())] {
                let sql = format!(
                    "CREATE TEMP TABLE \"{base}_{suffix}\" ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA",
                    self.column_list(&cols),
                    self.table.quoted()
                );
                pipe.execute_sql(&sql, meta());
            }
            self.stages = Some(Stages {
                base,
                dirty: [false, false],
            });
        }
        let stages = self.stages.as_mut().expect("created just above");
        let (suffix, slot) = match kind {
            StageKind::Delete => ("d", 0),
            StageKind::Update => ("u", 1),
        };
        let name = format!("\"{}_{suffix}\"", stages.base);
        if stages.dirty[slot] {
            pipe.execute_sql(&format!("DELETE FROM {name}"), meta());
        }
        stages.dirty[slot] = true;
        name
    }

    /// After a rollback to a savepoint: the stages may be gone; the next
    /// use creates new ones (under new names).
    pub fn forget_stages(&mut self) {
        self.stages = None;
    }

    /// After COMMIT: the stages emptied themselves.
    pub fn committed(&mut self) {
        if let Some(s) = &mut self.stages {
            s.dirty = [false, false];
        }
    }

    /// `COPY` of `cols` into `into` (the table itself, or a stage).
    pub fn copy_sql(&self, into: &str, cols: &[usize]) -> String {
        format!("COPY {into} ({}) FROM STDIN", self.column_list(cols))
    }

    fn join_key(&self) -> String {
        self.key
            .iter()
            .map(|&i| {
                let c = crate::sql::quote_ident(self.col(i));
                format!("t.{c} = s.{c}")
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// DELETE of the rows whose keys `from` holds (a stage table or
    /// unnested arrays, as `s`).
    pub fn set_delete_sql(&self, from: &str) -> String {
        format!(
            "DELETE FROM {} AS t USING {from} WHERE {}",
            self.table.quoted(),
            self.join_key()
        )
    }

    /// UPDATE setting `cols` from the rows `from` holds (as `s`), or its
    /// DELETE + INSERT form (see `identity`).
    pub fn set_update_sql(&self, from: &str, cols: &[usize]) -> String {
        if self.rewrites_identity(false) {
            return self.set_delete_insert_sql(from);
        }
        let set = cols
            .iter()
            .map(|&i| {
                let c = crate::sql::quote_ident(self.col(i));
                format!("{c} = s.{c}")
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "UPDATE {} AS t SET {set} FROM {from} WHERE {}",
            self.table.quoted(),
            self.join_key()
        )
    }
}

/// One text array literal per column of `cols`, over `rows`: every value
/// double-quoted (backslash before `"` and `\`), NULL bare.
pub fn array_params(rows: &[Tuple], cols: &[usize]) -> Vec<Param> {
    cols.iter()
        .map(|&i| {
            // Quotes and a comma around each value: no doubling as it fills.
            let size: usize = rows
                .iter()
                .map(|r| match r.get(i) {
                    Some(Datum::Text(v)) => v.len() + 3,
                    _ => 5,
                })
                .sum();
            let mut out = BytesMut::with_capacity(size + 2);
            out.put_u8(b'{');
            for (n, row) in rows.iter().enumerate() {
                if n > 0 {
                    out.put_u8(b',');
                }
                match row.get(i) {
                    Some(Datum::Text(v)) => {
                        out.put_u8(b'"');
                        if v.len() < SHORT_VALUE && !v.iter().any(|&b| b == b'"' || b == b'\\') {
                            out.put_slice(v);
                        } else {
                            let mut rest: &[u8] = v;
                            while let Some(at) = memchr::memchr2(b'"', b'\\', rest) {
                                out.put_slice(&rest[..at]);
                                out.put_u8(b'\\');
                                out.put_u8(rest[at]);
                                rest = &rest[at + 1..];
                            }
                            out.put_slice(rest);
                        }
                        out.put_u8(b'"');
                    }
                    _ => out.put_slice(b"NULL"),
                }
            }
            out.put_u8(b'}');
            Param::Text(out.freeze())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn array_literals_quote_every_value() {
        let row = |a: &str, b: Option<&str>| -> Tuple {
            vec![
                Datum::Text(Bytes::copy_from_slice(a.as_bytes())),
                b.map_or(Datum::Null, |b| {
                    Datum::Text(Bytes::copy_from_slice(b.as_bytes()))
                }),
            ]
        };
        let rows = vec![
            row("1", Some("NULL")),
            row("2", None),
            row("3", Some("a\"b\\c,{}")),
        ];
        let p = array_params(&rows, &[0, 1]);
        let text = |p: &Param| match p {
            Param::Text(b) => String::from_utf8(b.to_vec()).expect("utf8"),
            other => panic!("{other:?}"),
        };
        assert_eq!(text(&p[0]), r#"{"1","2","3"}"#);
        assert_eq!(text(&p[1]), r#"{"NULL",NULL,"a\"b\\c,{}"}"#);
    }

    #[test]
    fn long_array_values_are_escaped_like_short_ones() {
        let long = format!("\"{}\\{}\"", "x".repeat(40), "y".repeat(40));
        let rows: Vec<Tuple> = vec![
            vec![Datum::Text(Bytes::copy_from_slice(long.as_bytes()))],
            vec![Datum::Text(Bytes::copy_from_slice(
                "q".repeat(50).as_bytes(),
            ))],
        ];
        let p = array_params(&rows, &[0]);
        let Param::Text(b) = &p[0] else {
            panic!("a text parameter");
        };
        let want = format!(
            "{{\"\\\"{}\\\\{}\\\"\",\"{}\"}}",
            "x".repeat(40),
            "y".repeat(40),
            "q".repeat(50)
        );
        assert_eq!(String::from_utf8_lossy(b), want);
    }
}
