//! Column kinds the differential test generates, each with its SQL type
//! and a generator of literal values, edge cases included (NULL, empty,
//! quotes and backslashes, special floats, infinities, TOAST-sized text,
//! values that fill a typmod exactly).

use rand::rngs::StdRng;
use rand::Rng;

/// One column kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Int2,
    Int4,
    Int8,
    Numeric,
    /// numeric(p, s)
    NumericPs(u8, u8),
    Float4,
    Float8,
    Bool,
    Text,
    /// text stored out of line, uncompressed: TOASTed past ~2 kB
    Toast,
    Varchar(u8),
    Char(u8),
    Bytea,
    Date,
    Time(u8),
    Timetz(u8),
    Timestamp(u8),
    Timestamptz(u8),
    Interval,
    IntervalHourToMinute,
    Uuid,
    Json,
    Jsonb,
    Inet,
    Cidr,
    Macaddr,
    Bit(u8),
    Varbit(u8),
    Money,
    Tsvector,
    Point,
    Box,
    Int4range,
    Tstzrange,
    Oid,
    PgLsn,
    /// the one-byte "char"
    Char1,
    Name,
    Enum,
    Domain,
    Composite,
    Xml,
    /// an array of the inner kind (one or two dimensions)
    Array(Box<Kind>, bool),
}

/// Types the schema creates once: enum, domain, composite.
pub const TYPES_SQL: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s \"complicated\"');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TYPE pair AS (label text, n numeric(6,2), tags varchar(3)[]);
";

impl Kind {
    /// Every scalar kind (arrays are built from some of them).
    pub fn scalars() -> Vec<Kind> {
        use Kind::*;
        vec![
            Int2,
            Int4,
            Int8,
            Numeric,
            NumericPs(9, 3),
            NumericPs(4, 0),
            Float4,
            Float8,
            Bool,
            Text,
            Toast,
            Varchar(5),
            Char(3),
            Char(1),
            Bytea,
            Date,
            Time(1),
            Timetz(3),
            Timestamp(0),
            Timestamptz(2),
            Interval,
            IntervalHourToMinute,
            Uuid,
            Json,
            Jsonb,
            Inet,
            Cidr,
            Macaddr,
            Bit(4),
            Varbit(6),
            Money,
            Tsvector,
            Point,
            Box,
            Int4range,
            Tstzrange,
            Oid,
            PgLsn,
            Char1,
            Name,
            Enum,
            Domain,
            Composite,
            Xml,
        ]
    }

    /// Array kinds, typmods included.
    pub fn arrays() -> Vec<Kind> {
        use Kind::*;
        let a = |k: Kind, two: bool| Array(std::boxed::Box::new(k), two);
        vec![
            a(Int4, false),
            a(Int4, true),
            a(Text, false),
            a(Char(3), false),
            a(Varchar(4), false),
            a(NumericPs(5, 2), false),
            a(Bit(3), false),
            a(Enum, false),
            a(Timestamptz(1), false),
            a(Jsonb, false),
            a(Box, false),
        ]
    }

    pub fn sql(&self) -> String {
        use Kind::*;
        match self {
            Int2 => "int2".into(),
            Int4 => "int4".into(),
            Int8 => "int8".into(),
            Numeric => "numeric".into(),
            NumericPs(p, s) => format!("numeric({p},{s})"),
            Float4 => "float4".into(),
            Float8 => "float8".into(),
            Bool => "bool".into(),
            Text | Toast => "text".into(),
            Varchar(n) => format!("varchar({n})"),
            Char(n) => format!("char({n})"),
            Bytea => "bytea".into(),
            Date => "date".into(),
            Time(p) => format!("time({p})"),
            Timetz(p) => format!("timetz({p})"),
            Timestamp(p) => format!("timestamp({p})"),
            Timestamptz(p) => format!("timestamptz({p})"),
            Interval => "interval".into(),
            IntervalHourToMinute => "interval hour to minute".into(),
            Uuid => "uuid".into(),
            Json => "json".into(),
            Jsonb => "jsonb".into(),
            Inet => "inet".into(),
            Cidr => "cidr".into(),
            Macaddr => "macaddr".into(),
            Bit(n) => format!("bit({n})"),
            Varbit(n) => format!("varbit({n})"),
            Money => "money".into(),
            Tsvector => "tsvector".into(),
            Point => "point".into(),
            Box => "box".into(),
            Int4range => "int4range".into(),
            Tstzrange => "tstzrange".into(),
            Oid => "oid".into(),
            PgLsn => "pg_lsn".into(),
            Char1 => "\"char\"".into(),
            Name => "name".into(),
            Enum => "mood".into(),
            Domain => "positive".into(),
            Composite => "pair".into(),
            Xml => "xml".into(),
            Array(k, _) => format!("{}[]", k.sql()),
        }
    }

    /// A literal value of this kind (never NULL: callers decide that).
    pub fn literal(&self, rng: &mut StdRng) -> String {
        format!("{}::{}", quote(&self.text(rng)), self.sql())
    }

    /// A value in the kind's text input form.
    pub fn text(&self, rng: &mut StdRng) -> String {
        use Kind::*;
        let pick = |rng: &mut StdRng, xs: &[&str]| xs[rng.random_range(0..xs.len())].to_string();
        match self {
            Int2 => pick(rng, &["0", "-32768", "32767", "7"]),
            Int4 => rng
                .random_range(-2_000_000_000i64..2_000_000_000)
                .to_string(),
            Int8 => pick(
                rng,
                &["-9223372036854775808", "9223372036854775807", "0", "42"],
            ),
            Numeric => pick(
                rng,
                &[
                    "NaN",
                    "0",
                    "-0.000000000000000001",
                    "123456789012345678901234567890.5",
                    "1e-30",
                    "3.14",
                ],
            ),
            NumericPs(p, s) => {
                let int_digits = (p - s) as u32;
                let max = 10i64.pow(int_digits.min(9)) - 1;
                let i = rng.random_range(-max..=max);
                if *s == 0 {
                    i.to_string()
                } else {
                    let f = rng.random_range(0..10i64.pow(*s as u32));
                    format!("{i}.{f:0width$}", width = *s as usize)
                }
            }
            Float4 => pick(
                rng,
                &[
                    "NaN",
                    "Infinity",
                    "-Infinity",
                    "-0",
                    "1.5",
                    "3.4028235e+38",
                    "1e-45",
                ],
            ),
            Float8 => pick(
                rng,
                &[
                    "NaN",
                    "-Infinity",
                    "-0",
                    "0.1",
                    "2.718281828459045",
                    "1.7976931348623157e+308",
                    "5e-324",
                ],
            ),
            Bool => pick(rng, &["true", "false"]),
            Text => pick(
                rng,
                &[
                    "",
                    "plain",
                    "NULL",
                    "quote ' and \" and \\ back",
                    "tab\there\nnew line\rcr",
                    "ünïcödé 日本語 🎉",
                    "{a,b}",
                    "(x,y)",
                ],
            ),
            Toast => {
                // Incompressible: hex of a random stream, ~3-9 kB.
                let n = rng.random_range(1100..2000);
                (0..n)
                    .map(|_| format!("{:02x}", rng.random::<u8>()))
                    .collect()
            }
            Varchar(n) => {
                let len = rng.random_range(0..=*n as usize);
                (0..len)
                    .map(|i| ['a', 'Z', ' ', 'é', '\'', '"'][(i + len) % 6])
                    .collect()
            }
            Char(n) => {
                let len = rng.random_range(1..=*n as usize);
                (0..len)
                    .map(|i| ['U', 'S', 'D', 'x'][(i + len) % 4])
                    .collect()
            }
            Bytea => {
                let n = rng.random_range(0..40);
                format!(
                    "\\x{}",
                    (0..n)
                        .map(|_| format!("{:02x}", rng.random::<u8>()))
                        .collect::<String>()
                )
            }
            Date => pick(
                rng,
                &[
                    "2024-02-29",
                    "infinity",
                    "-infinity",
                    "1999-12-31",
                    "4713-01-01 BC",
                ],
            ),
            Time(_) => pick(
                rng,
                &["00:00:00", "23:59:59.99", "12:34:56.789", "24:00:00"],
            ),
            Timetz(_) => pick(rng, &["10:00:00+02", "23:59:59.999-15:59", "00:00:00+00"]),
            Timestamp(_) => pick(
                rng,
                &[
                    "2024-02-29 12:34:56.789",
                    "infinity",
                    "1970-01-01 00:00:00",
                    "294276-12-31 23:59:59",
                ],
            ),
            Timestamptz(_) => pick(
                rng,
                &[
                    "2024-02-29 12:34:56.789+05:30",
                    "-infinity",
                    "2000-01-01 00:00:00+00",
                    "1999-12-31 23:59:59.5-08",
                ],
            ),
            Interval => pick(
                rng,
                &[
                    "1 year 2 mons 3 days 04:05:06.789",
                    "-178956970 years -8 mons",
                    "0",
                    "@ 1 minute ago",
                ],
            ),
            IntervalHourToMinute => pick(rng, &["3 hours 4 minutes", "-1 hour", "00:00"]),
            Uuid => format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                rng.random::<u32>(),
                rng.random::<u16>(),
                rng.random::<u16>() & 0xfff,
                rng.random::<u16>() & 0xfff,
                rng.random::<u64>() & 0xffff_ffff_ffff
            ),
            Json => pick(
                rng,
                &[
                    "{\"b\": 1,   \"a\": [1, 2, {\"x\": null}]}",
                    "[]",
                    "\"str\"",
                    "null",
                ],
            ),
            Jsonb => pick(
                rng,
                &[
                    "{\"b\": 1, \"a\": [1, {\"x\": null}], \"ü\": \"ñ\"}",
                    "{}",
                    "[1, \"two\", 3.5]",
                    "null",
                ],
            ),
            Inet => pick(rng, &["192.168.1.1/24", "::1", "10.0.0.1"]),
            Cidr => pick(rng, &["10.0.0.0/8", "2001:db8::/32"]),
            Macaddr => pick(rng, &["08:00:2b:01:02:03", "ff:ff:ff:ff:ff:ff"]),
            Bit(n) => (0..*n)
                .map(|_| if rng.random_bool(0.5) { '1' } else { '0' })
                .collect(),
            Varbit(n) => {
                let len = rng.random_range(0..=*n);
                (0..len)
                    .map(|_| if rng.random_bool(0.5) { '1' } else { '0' })
                    .collect()
            }
            Money => pick(rng, &["1234.56", "-92233720368547758.08", "0"]),
            Tsvector => pick(rng, &["the quick brown fox", "a:1A b:2B", ""]),
            Point => pick(rng, &["(1.5,-2.25)", "(0,0)", "(1e300,-1e-300)"]),
            Box => pick(rng, &["((0,0),(2,2))", "((-1,-1),(1,1))"]),
            Int4range => pick(rng, &["[1,10)", "empty", "(,5]"]),
            Tstzrange => pick(
                rng,
                &["[2024-01-01 00:00+00,2024-12-31 00:00+00)", "(,)", "empty"],
            ),
            Oid => pick(rng, &["0", "4294967295", "12345"]),
            PgLsn => pick(rng, &["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF"]),
            Char1 => pick(rng, &["a", "Z", " "]),
            Name => pick(rng, &["a_name", "Mixed Name", ""]),
            Enum => pick(rng, &["sad", "ok", "happy", "it's \"complicated\""]),
            Domain => rng.random_range(1..1_000_000).to_string(),
            Composite => pick(rng, &["(\"a, b\",12.5,\"{x,y}\")", "(,,)", "(\"\",0,{})"]),
            Xml => pick(
                rng,
                &[
                    "<doc><a attr=\"1\">text &amp; more</a></doc>",
                    "content with no root",
                    "<a/>",
                ],
            ),
            Array(k, two) => {
                if *two {
                    let (a, b, c, d) = (k.text(rng), k.text(rng), k.text(rng), k.text(rng));
                    format!("{{{{{},{}}},{{{},{}}}}}", el(&a), el(&b), el(&c), el(&d))
                } else {
                    let n = rng.random_range(0..4);
                    let mut items: Vec<String> = (0..n).map(|_| el(&k.text(rng))).collect();
                    if n > 0 && rng.random_bool(0.3) {
                        items.push("NULL".into());
                    }
                    let delim = if **k == Kind::Box { ";" } else { "," };
                    format!("{{{}}}", items.join(delim))
                }
            }
        }
    }
}

/// An array element, double-quoted (backslash before `"` and `\`).
fn el(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A SQL string literal (standard_conforming_strings on).
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
