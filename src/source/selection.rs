//! `--include` / `--exclude` patterns: `schema.table` globs with `*` and `?`
//! (`public.*`, `sales.order_*`); a pattern without a dot matches the table
//! name in any schema; double quotes take a part literally (`"My.Schema".*`).
//! Every pattern must match at least one table: a typo is an error, not an
//! empty sync.

use std::fmt;

use crate::sql::TableName;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("pattern {0:?} has an unclosed double quote")]
    Unclosed(String),
    #[error("pattern {0:?} is empty")]
    Empty(String),
    #[error("--{kind} {pattern} matches no table on the source: check the spelling (patterns are schema.table globs, case-sensitive)")]
    MatchesNothing { kind: &'static str, pattern: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Glob(Vec<GlobToken>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum GlobToken {
    Literal(char),
    Any,
    One,
}

/// One parsed pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    schema: Option<Part>,
    table: Part,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts: Vec<Vec<GlobToken>> = vec![Vec::new()];
        let mut quoted = false;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            let current = parts
                .last_mut()
                .expect("parts always holds the part being built");
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    current.push(GlobToken::Literal('"'));
                }
                '"' => quoted = !quoted,
                '.' if !quoted => parts.push(Vec::new()),
                '*' if !quoted => current.push(GlobToken::Any),
                '?' if !quoted => current.push(GlobToken::One),
                c => current.push(GlobToken::Literal(c)),
            }
        }
        if quoted {
            return Err(PatternError::Unclosed(text.to_string()));
        }
        if parts.iter().any(Vec::is_empty) || parts.len() > 2 {
            return Err(PatternError::Empty(text.to_string()));
        }
        let table = Part::Glob(parts.pop().expect("at least one part"));
        let schema = parts.pop().map(Part::Glob);
        Ok(Pattern {
            text: text.to_string(),
            schema,
            table,
        })
    }
}

fn glob_match(tokens: &[GlobToken], text: &[char]) -> bool {
    match tokens.split_first() {
        None => text.is_empty(),
        Some((GlobToken::Any, rest)) => (0..=text.len()).any(|i| glob_match(rest, &text[i..])),
        Some((GlobToken::One, rest)) => !text.is_empty() && glob_match(rest, &text[1..]),
        Some((GlobToken::Literal(c), rest)) => {
            text.first() == Some(c) && glob_match(rest, &text[1..])
        }
    }
}

fn regex(tokens: &[GlobToken]) -> String {
    let mut out = String::from("^");
    for t in tokens {
        match t {
            GlobToken::Any => out.push_str(".*"),
            GlobToken::One => out.push('.'),
            GlobToken::Literal(c) if c.is_alphanumeric() || *c == '_' || *c == ' ' => out.push(*c),
            GlobToken::Literal(c) => {
                out.push('\\');
                out.push(*c);
            }
        }
    }
    out.push('$');
    out
}

impl Pattern {
    /// The pattern as anchored POSIX regexes (schema part, table part), for
    /// matching inside the source's DDL trigger.
    pub fn regex_parts(&self) -> (Option<String>, String) {
        let Part::Glob(t) = &self.table;
        (self.schema.as_ref().map(|Part::Glob(s)| regex(s)), regex(t))
    }

    pub fn matches(&self, table: &TableName) -> bool {
        let Part::Glob(t) = &self.table;
        let name: Vec<char> = table.name.chars().collect();
        if !glob_match(t, &name) {
            return false;
        }
        match &self.schema {
            None => true,
            Some(Part::Glob(s)) => {
                let schema: Vec<char> = table.schema.chars().collect();
                glob_match(s, &schema)
            }
        }
    }
}

/// Which tables a sync covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub include: Vec<Pattern>,
    pub exclude: Vec<Pattern>,
}

impl Selection {
    /// No pattern at all: every table, published `FOR ALL TABLES`.
    pub fn is_everything(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    pub fn selects(&self, table: &TableName) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(table)))
            && !self.exclude.iter().any(|p| p.matches(table))
    }

    /// Errors for patterns that match none of `candidates`.
    pub fn unmatched<'a>(
        &self,
        candidates: impl Iterator<Item = &'a TableName> + Clone,
    ) -> Vec<PatternError> {
        let kinds = self
            .include
            .iter()
            .map(|p| ("include", p))
            .chain(self.exclude.iter().map(|p| ("exclude", p)));
        kinds
            .filter(|(_, p)| !candidates.clone().any(|t| p.matches(t)))
            .map(|(kind, p)| PatternError::MatchesNothing {
                kind,
                pattern: p.to_string(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, n: &str) -> TableName {
        TableName::new(s, n)
    }

    fn p(s: &str) -> Pattern {
        s.parse().expect("valid pattern")
    }

    #[test]
    fn globs_match_schema_and_table() {
        assert!(p("public.*").matches(&t("public", "a")));
        assert!(!p("public.*").matches(&t("sales", "a")));
        assert!(p("sales.order_*").matches(&t("sales", "order_items")));
        assert!(!p("sales.order_*").matches(&t("sales", "orders")));
        assert!(p("s?les.*").matches(&t("sales", "x")));
        assert!(p("orders").matches(&t("any", "orders")));
    }

    #[test]
    fn quotes_make_parts_literal() {
        assert!(p(r#""My.Schema"."we""ird tbl""#).matches(&t("My.Schema", "we\"ird tbl")));
        assert!(p(r#""a*".x"#).matches(&t("a*", "x")));
        assert!(!p(r#""a*".x"#).matches(&t("ab", "x")));
    }

    #[test]
    fn patterns_become_anchored_regexes() {
        assert_eq!(
            p("sales.order_*").regex_parts(),
            (Some("^sales$".into()), "^order_.*$".into())
        );
        assert_eq!(p("a?.x").regex_parts().0, Some("^a.$".into()));
        assert_eq!(p("orders").regex_parts(), (None, "^orders$".into()));
        assert_eq!(
            p(r#""a.b".t"#).regex_parts(),
            (Some(r"^a\.b$".into()), "^t$".into())
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(matches!(
            "\"abc".parse::<Pattern>(),
            Err(PatternError::Unclosed(_))
        ));
        assert!(matches!(
            "a..b".parse::<Pattern>(),
            Err(PatternError::Empty(_))
        ));
        assert!(matches!(
            "a.b.c".parse::<Pattern>(),
            Err(PatternError::Empty(_))
        ));
    }

    #[test]
    fn include_then_exclude_and_unmatched_patterns() {
        let sel = Selection {
            include: vec![p("public.*")],
            exclude: vec![p("public.tmp_*"), p("nope.*")],
        };
        let tables = [t("public", "a"), t("public", "tmp_1"), t("sales", "b")];
        let chosen: Vec<_> = tables.iter().filter(|x| sel.selects(x)).collect();
        assert_eq!(chosen, vec![&tables[0]]);
        let errors = sel.unmatched(tables.iter());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("nope.*"));
    }
}
