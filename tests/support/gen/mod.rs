//! A seeded generator of schemas and workloads for the differential test:
//! tables holding every column kind (see `kinds`), keyless ones with
//! REPLICA IDENTITY FULL and duplicate rows, identity and generated
//! columns, partitioned and inherited tables, a deferrable unique
//! constraint and a foreign key; transactions of single-row and bulk
//! INSERT / UPDATE / DELETE, key changes, swaps through the unique
//! constraint, delete + reinsert, TRUNCATE [ONLY] of roots, partitions and
//! inheritance parents, and DDL mixed in. The same seed gives the same SQL.

pub mod kinds;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use kinds::{quote, Kind};

/// Column names a generator may pick besides `cN`: hostile ones, and `t`
/// (which would win over a row alias named `t`).
const ODD_NAMES: &[&str] = &["Mixed Case", "select", "t", "we\"ird col", "ünï"];

#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
}

/// How a table is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `id int8` primary key.
    Keyed,
    /// No key: REPLICA IDENTITY FULL, duplicates allowed.
    Full,
    /// Keyed, with an identity column ALWAYS outside the key, a stored
    /// generated column and a serial.
    Identity,
    /// Partitioned by range of `id`: leaves `_p0`, `_p1`, `_p2`.
    Partitioned,
    /// An inheritance parent with children `_c0`, `_c1` (keyed each).
    Inherited,
    /// Keyed, with `u int UNIQUE DEFERRABLE INITIALLY DEFERRED` and a child
    /// table `NAME_child` referencing it ON DELETE CASCADE.
    Unique,
}

#[derive(Clone, Debug)]
pub struct Table {
    pub name: String,
    pub shape: Shape,
    pub columns: Vec<Column>,
    /// Next unused id.
    pub next: i64,
    /// Whether the table has array columns (set-based writes go through a
    /// stage table) or not (arrays unnested).
    pub arrays: bool,
}

pub struct Gen {
    pub rng: StdRng,
    pub tables: Vec<Table>,
    /// The source's major version (a few values need 14+).
    pub major: u32,
    column_seq: usize,
    table_seq: usize,
}

/// `"name"`, quoted.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl Gen {
    pub fn new(seed: u64, major: u32) -> Gen {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            tables: Vec::new(),
            major,
            column_seq: 0,
            table_seq: 0,
        }
    }

    fn column_name(&mut self) -> String {
        self.column_seq += 1;
        if self.rng.random_bool(0.15) {
            let odd = ODD_NAMES[self.rng.random_range(0..ODD_NAMES.len())];
            format!("{odd} {}", self.column_seq)
        } else if self.column_seq % 17 == 0 {
            "t".to_string()
        } else {
            format!("c{}", self.column_seq)
        }
    }

    fn columns_of(&mut self, kinds: Vec<Kind>) -> Vec<Column> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for kind in kinds {
            let mut name = self.column_name();
            while !seen.insert(name.clone()) || name == "id" || name == "u" {
                name = format!("c{}_{}", self.column_seq, out.len());
            }
            out.push(Column { name, kind });
        }
        out
    }

    /// The initial schema: the wide tables every path must see, then one
    /// table of each other shape with a random subset of kinds.
    pub fn schema(&mut self) -> String {
        let mut sql = String::from(kinds::TYPES_SQL);
        let scalars = Kind::scalars();
        let mut arrays = Kind::arrays();
        arrays.extend(scalars.iter().take(6).cloned());
        let plan: Vec<(&str, Shape, Vec<Kind>, bool)> = vec![
            ("w_scalar", Shape::Keyed, scalars.clone(), false),
            ("w_array", Shape::Keyed, arrays, true),
        ];
        for (name, shape, kinds, arrays) in plan {
            let columns = self.columns_of(kinds);
            sql.push_str(&self.create(name, shape, columns, arrays));
        }
        for shape in [
            Shape::Full,
            Shape::Identity,
            Shape::Partitioned,
            Shape::Inherited,
            Shape::Unique,
        ] {
            let kinds = self.some_kinds(6);
            let arrays = kinds.iter().any(|k| matches!(k, Kind::Array(..)));
            let columns = self.columns_of(kinds);
            let name = format!("s{}", self.table_seq);
            sql.push_str(&self.create(&name, shape, columns, arrays));
        }
        sql
    }

    fn some_kinds(&mut self, n: usize) -> Vec<Kind> {
        let mut all = Kind::scalars();
        all.extend(Kind::arrays());
        (0..n)
            .map(|_| all[self.rng.random_range(0..all.len())].clone())
            .collect()
    }

    /// CREATE statements for a table of `shape`; adds it to the model.
    pub fn create(
        &mut self,
        name: &str,
        shape: Shape,
        columns: Vec<Column>,
        arrays: bool,
    ) -> String {
        self.table_seq += 1;
        let cols: Vec<String> = columns
            .iter()
            .map(|c| format!("{} {}", ident(&c.name), c.kind.sql()))
            .collect();
        let body = cols.join(", ");
        let t = ident(name);
        let mut sql = match &shape {
            Shape::Keyed => format!("CREATE TABLE {t} (id int8 PRIMARY KEY, {body});"),
            Shape::Full => format!(
                "CREATE TABLE {t} (id int8, {body}); ALTER TABLE {t} REPLICA IDENTITY FULL;"
            ),
            Shape::Identity => format!(
                "CREATE TABLE {t} (id int8 PRIMARY KEY, idn int GENERATED ALWAYS AS IDENTITY, ser serial,
                   gen int8 GENERATED ALWAYS AS (id * 2 + 1) STORED, {body});"
            ),
            Shape::Partitioned => format!(
                "CREATE TABLE {t} (id int8, {body}, PRIMARY KEY (id)) PARTITION BY RANGE (id);
                 CREATE TABLE {p0} PARTITION OF {t} FOR VALUES FROM (MINVALUE) TO (100000);
                 CREATE TABLE {p1} PARTITION OF {t} FOR VALUES FROM (100000) TO (1000000);
                 CREATE TABLE {p2} PARTITION OF {t} FOR VALUES FROM (1000000) TO (MAXVALUE);",
                p0 = ident(&format!("{name}_p0")),
                p1 = ident(&format!("{name}_p1")),
                p2 = ident(&format!("{name}_p2")),
            ),
            Shape::Inherited => format!(
                "CREATE TABLE {t} (id int8 PRIMARY KEY, {body});
                 CREATE TABLE {c0} (extra text) INHERITS ({t}); ALTER TABLE {c0} ADD PRIMARY KEY (id);
                 CREATE TABLE {c1} () INHERITS ({t}); ALTER TABLE {c1} ADD PRIMARY KEY (id);",
                c0 = ident(&format!("{name}_c0")),
                c1 = ident(&format!("{name}_c1")),
            ),
            Shape::Unique => format!(
                "CREATE TABLE {t} (id int8 PRIMARY KEY, u int8 UNIQUE DEFERRABLE INITIALLY DEFERRED, {body});
                 CREATE TABLE {child} (id int8 PRIMARY KEY, parent int8 REFERENCES {t} (id) ON DELETE CASCADE ON UPDATE CASCADE, note text);",
                child = ident(&format!("{name}_child")),
            ),
        };
        if columns.iter().any(|c| c.kind == Kind::Toast) {
            for c in columns.iter().filter(|c| c.kind == Kind::Toast) {
                sql.push_str(&format!(
                    " ALTER TABLE {t} ALTER COLUMN {} SET STORAGE EXTERNAL;",
                    ident(&c.name)
                ));
            }
        }
        sql.push('\n');
        self.tables.push(Table {
            name: name.to_string(),
            shape,
            columns,
            next: 1,
            arrays,
        });
        sql
    }

    /// A value for `kind`, NULL now and then.
    fn value(&mut self, kind: &Kind) -> String {
        if self.rng.random_bool(0.08) {
            format!("NULL::{}", kind.sql())
        } else {
            kind.literal(&mut self.rng)
        }
    }

    /// A value of `kind` that varies with the SQL integer `g`: one of
    /// three literals (NULL among them now and then).
    fn varying(&mut self, kind: &Kind, g: &str) -> String {
        let (a, b, c) = (self.value(kind), self.value(kind), self.value(kind));
        format!("CASE {g} % 3 WHEN 0 THEN {a} WHEN 1 THEN {b} ELSE {c} END")
    }

    fn leaf_or_child(&mut self, t: &Table) -> String {
        match t.shape {
            Shape::Inherited if self.rng.random_bool(0.5) => {
                format!("{}_c{}", t.name, self.rng.random_range(0..2))
            }
            _ => t.name.clone(),
        }
    }

    /// INSERT of `n` rows into table `i` (ids from its counter).
    pub fn insert(&mut self, i: usize, n: i64) -> String {
        let t = self.tables[i].clone();
        let target = self.leaf_or_child(&t);
        let first = self.tables[i].next;
        self.tables[i].next += n;
        let mut names = vec!["id".to_string()];
        let mut values = vec![format!("{first} + g")];
        if t.shape == Shape::Unique {
            names.push("u".into());
            values.push(format!("{first} + g"));
        }
        for c in &t.columns {
            names.push(ident(&c.name));
            let v = self.varying(&c.kind, "g");
            values.push(v);
        }
        let names = names.join(", ");
        let values = values.join(", ");
        let mut sql = format!(
            "INSERT INTO {} ({names}) SELECT {values} FROM generate_series(0, {}) g;",
            ident(&target),
            n - 1
        );
        if t.shape == Shape::Full && self.rng.random_bool(0.5) {
            // Exact duplicates of some rows.
            sql.push_str(&format!(
                " INSERT INTO {} SELECT * FROM {} WHERE id % 5 = 0 AND id >= {first};",
                ident(&target),
                ident(&target)
            ));
        }
        if t.shape == Shape::Unique {
            sql.push_str(&format!(
                " INSERT INTO {child} (id, parent, note) SELECT id, id, 'child' FROM {p} WHERE id >= {first} AND id % 2 = 0 ON CONFLICT DO NOTHING;",
                child = ident(&format!("{}_child", t.name)),
                p = ident(&t.name)
            ));
        }
        sql
    }

    /// An UPDATE of some columns of the rows `pred` selects.
    pub fn update(&mut self, i: usize, pred: &str) -> String {
        let t = self.tables[i].clone();
        if t.columns.is_empty() {
            return String::new();
        }
        let n = self.rng.random_range(1..=3.min(t.columns.len()));
        let mut sets = Vec::new();
        for _ in 0..n {
            let c = t.columns[self.rng.random_range(0..t.columns.len())].clone();
            let v = self.varying(&c.kind, "id");
            let set = format!("{} = {v}", ident(&c.name));
            if !sets
                .iter()
                .any(|s: &String| s.starts_with(&format!("{} =", ident(&c.name))))
            {
                sets.push(set);
            }
        }
        if t.shape == Shape::Identity && self.rng.random_bool(0.3) {
            sets.push("idn = DEFAULT".into());
        }
        format!(
            "UPDATE {} SET {} WHERE {pred};",
            ident(&self.leaf_or_child(&t)),
            sets.join(", ")
        )
    }

    /// A predicate on `id` selecting a slice of the table.
    pub fn slice(&mut self, i: usize, single: bool) -> String {
        let next = self.tables[i].next.max(2);
        if single {
            format!("id = {}", self.rng.random_range(1..next))
        } else {
            let m = self.rng.random_range(2..9);
            format!("id % {m} = {}", self.rng.random_range(0..m))
        }
    }

    /// One statement of a random kind on table `i`; `bulk` for many rows.
    pub fn statement(&mut self, i: usize, bulk: bool) -> String {
        let t = self.tables[i].clone();
        let roll = self.rng.random_range(0..100);
        let ti = ident(&t.name);
        match roll {
            0..=29 => {
                let n = if bulk {
                    self.rng.random_range(20..400)
                } else {
                    1
                };
                self.insert(i, n)
            }
            30..=59 => {
                let pred = self.slice(i, !bulk);
                self.update(i, &pred)
            }
            60..=69 => {
                let pred = self.slice(i, !bulk);
                format!(
                    "DELETE FROM {} WHERE {pred};",
                    ident(&self.leaf_or_child(&t))
                )
            }
            70..=77 if t.shape != Shape::Full => {
                // The key changes (across partitions, for partitioned ones),
                // never onto a key that exists.
                let pred = self.slice(i, !bulk);
                let (below, by) = if t.shape == Shape::Partitioned {
                    (100_000, self.rng.random_range(100_000..800_000))
                } else {
                    (
                        10_000_000,
                        self.rng.random_range(10_000_000..1_000_000_000_000i64),
                    )
                };
                format!(
                    "UPDATE {ti} SET id = id + {by} WHERE {pred} AND id < {below} AND id + {by} NOT IN (SELECT id FROM {ti});"
                )
            }
            78..=85 => {
                // Delete and insert the same key in one transaction.
                let k = self.rng.random_range(1..t.next.max(2));
                let ins = self.insert_at(i, k);
                format!("DELETE FROM {ti} WHERE id = {k}; {ins}")
            }
            86..=91 if t.shape == Shape::Unique => {
                let next = t.next.max(3);
                let (a, b) = (
                    self.rng.random_range(1..next),
                    self.rng.random_range(1..next),
                );
                format!(
                    "UPDATE {ti} SET u = CASE id WHEN {a} THEN (SELECT u FROM {ti} WHERE id = {b}) ELSE (SELECT u FROM {ti} WHERE id = {a}) END
                     WHERE id IN ({a}, {b}) AND {a} <> {b} AND EXISTS (SELECT 1 FROM {ti} WHERE id = {a}) AND EXISTS (SELECT 1 FROM {ti} WHERE id = {b});"
                )
            }
            92..=93 => self.truncate(i),
            _ => {
                let pred = self.slice(i, true);
                self.update(i, &pred)
            }
        }
    }

    /// An INSERT of one row with id `k`.
    fn insert_at(&mut self, i: usize, k: i64) -> String {
        let t = self.tables[i].clone();
        let mut names = vec!["id".to_string()];
        let mut values = vec![k.to_string()];
        if t.shape == Shape::Unique {
            names.push("u".into());
            values.push(format!("{}", k + 50_000_000));
        }
        for c in &t.columns {
            names.push(ident(&c.name));
            values.push(self.value(&c.kind));
        }
        format!(
            "INSERT INTO {} ({}) VALUES ({});",
            ident(&t.name),
            names.join(", "),
            values.join(", ")
        )
    }

    fn truncate(&mut self, i: usize) -> String {
        let t = self.tables[i].clone();
        let ti = ident(&t.name);
        match t.shape {
            Shape::Partitioned => {
                let leaf = ident(&format!("{}_p{}", t.name, self.rng.random_range(0..3)));
                if self.rng.random_bool(0.5) {
                    format!("TRUNCATE {leaf};")
                } else {
                    format!("TRUNCATE {ti};")
                }
            }
            Shape::Inherited => match self.rng.random_range(0..3) {
                0 => format!("TRUNCATE ONLY {ti};"),
                1 => format!("TRUNCATE {ti};"),
                _ => format!("TRUNCATE {};", ident(&format!("{}_c0", t.name))),
            },
            // Deferred unique checks must run before a TRUNCATE.
            Shape::Unique => format!("SET CONSTRAINTS ALL IMMEDIATE; TRUNCATE {ti} CASCADE;"),
            _ => format!("TRUNCATE {ti};"),
        }
    }

    /// A column change on table `i`, the kind a large transaction may
    /// carry between its rows: ADD COLUMN (a plain one, so the rows around
    /// it keep their values), RENAME COLUMN, or DROP COLUMN of a column an
    /// earlier ADD made (the kinds the table was built with stay).
    pub fn column_ddl(&mut self, i: usize) -> String {
        let t = self.tables[i].clone();
        let ti = ident(&t.name);
        let added: Vec<usize> = (0..t.columns.len())
            .filter(|&c| t.columns[c].name.starts_with("added "))
            .collect();
        match self.rng.random_range(0..3) {
            0 if !added.is_empty() => {
                let c = added[self.rng.random_range(0..added.len())];
                let col = self.tables[i].columns.remove(c);
                format!("ALTER TABLE {ti} DROP COLUMN {};", ident(&col.name))
            }
            1 if !t.columns.is_empty() => {
                let c = self.rng.random_range(0..t.columns.len());
                self.column_seq += 1;
                let old = t.columns[c].name.clone();
                // Added columns keep their mark through a rename.
                let new = match old.starts_with("added ") {
                    true => format!("added r{}", self.column_seq),
                    false => format!("r{}", self.column_seq),
                };
                self.tables[i].columns[c].name = new.clone();
                format!(
                    "ALTER TABLE {ti} RENAME COLUMN {} TO {};",
                    ident(&old),
                    ident(&new)
                )
            }
            _ => {
                self.column_seq += 1;
                let name = format!("added {}", self.column_seq);
                let kind = self.some_kinds(1).remove(0);
                let sql = format!(
                    "ALTER TABLE {ti} ADD COLUMN {} {};",
                    ident(&name),
                    kind.sql()
                );
                self.tables[i].columns.push(Column { name, kind });
                sql
            }
        }
    }

    /// A DDL statement on table `i` (changes the model accordingly).
    pub fn ddl(&mut self, i: usize) -> String {
        let t = self.tables[i].clone();
        let ti = ident(&t.name);
        match self.rng.random_range(0..7) {
            6 => self.column_ddl(i),
            0 | 1 => {
                let mut name = self.column_name();
                while t.columns.iter().any(|c| c.name == name) || name == "id" || name == "u" {
                    name = format!("c{}_{}", self.column_seq, t.columns.len());
                }
                let identity_ok = matches!(t.shape, Shape::Keyed | Shape::Full | Shape::Unique);
                let mut roll = self.rng.random_range(0..6);
                if roll == 3 && !identity_ok {
                    roll = 5;
                }
                let (kind, default) = match roll {
                    0 => (
                        Kind::Timestamptz(3),
                        "DEFAULT clock_timestamp()".to_string(),
                    ),
                    1 => (Kind::Timestamptz(6), "DEFAULT now()".to_string()),
                    2 => (Kind::Text, "DEFAULT md5(random()::text)".to_string()),
                    3 => (Kind::Int8, "GENERATED BY DEFAULT AS IDENTITY".to_string()),
                    4 => {
                        let k = self.some_kinds(1).remove(0);
                        let d = format!("DEFAULT {}", k.literal(&mut self.rng));
                        (k, d)
                    }
                    _ => (Kind::Int4, String::new()),
                };
                let sql = format!(
                    "ALTER TABLE {ti} ADD COLUMN {} {} {default};",
                    ident(&name),
                    kind.sql()
                );
                // An identity column takes its own values (and is NOT NULL):
                // the workload leaves it alone.
                if !default.contains("IDENTITY") {
                    self.tables[i].columns.push(Column { name, kind });
                }
                sql
            }
            2 if t.columns.len() > 2 => {
                let c = self.rng.random_range(0..t.columns.len());
                let col = self.tables[i].columns.remove(c);
                format!("ALTER TABLE {ti} DROP COLUMN {};", ident(&col.name))
            }
            3 => {
                // Widen a column in place.
                let found = t.columns.iter().position(|c| {
                    matches!(c.kind, Kind::Int4 | Kind::Varchar(_) | Kind::NumericPs(..))
                });
                match found {
                    Some(c) => {
                        let wider = match &t.columns[c].kind {
                            Kind::Int4 => Kind::Int8,
                            Kind::Varchar(n) => Kind::Varchar(n + 10),
                            Kind::NumericPs(p, s) => Kind::NumericPs(p + 2, *s),
                            k => k.clone(),
                        };
                        let sql = format!(
                            "ALTER TABLE {ti} ALTER COLUMN {} TYPE {};",
                            ident(&t.columns[c].name),
                            wider.sql()
                        );
                        self.tables[i].columns[c].kind = wider;
                        sql
                    }
                    None => String::new(),
                }
            }
            4 => {
                let c = &t.columns[self
                    .rng
                    .random_range(0..t.columns.len().max(1))
                    .min(t.columns.len().saturating_sub(1))];
                match c.kind {
                    Kind::Json
                    | Kind::Xml
                    | Kind::Point
                    | Kind::Box
                    | Kind::Toast
                    | Kind::Array(..) => String::new(),
                    _ => format!("CREATE INDEX ON {ti} ({});", ident(&c.name)),
                }
            }
            _ => {
                // A new table, then rows in it.
                let kinds = self.some_kinds(4);
                let arrays = kinds.iter().any(|k| matches!(k, Kind::Array(..)));
                let columns = self.columns_of(kinds);
                let name = format!("n{}", self.table_seq);
                let create = self.create(&name, Shape::Keyed, columns, arrays);
                let j = self.tables.len() - 1;
                let fill = self.insert(j, 30);
                format!("{create} {fill}")
            }
        }
    }
}

/// A transaction of statements, as one string.
pub fn transaction(statements: &[String]) -> String {
    let body: Vec<&str> = statements
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    format!("BEGIN; {} COMMIT;", body.join(" "))
}

/// A literal a statement can embed (for tests building their own SQL).
pub fn literal(s: &str) -> String {
    quote(s)
}
