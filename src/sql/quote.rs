//! The one place identifiers and literals are quoted.
//!
//! Identifiers are always double-quoted in generated SQL: `"we""ird"`,
//! `"select"`, `"Mixed Case"` and `"ünï"` all survive, and no keyword list is
//! needed. Literals use `E'...'` when they hold a backslash, so they read the
//! same whatever `standard_conforming_strings` is.

use std::fmt::Write;

/// `"name"` with embedded double quotes doubled.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    push_ident(&mut out, name);
    out
}

/// Appends `"name"` to `out`.
pub fn push_ident(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

/// `'text'` (or `E'te\\xt'`) with quotes and backslashes escaped.
pub fn quote_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    if text.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A name as a person would type it: bare when it is plainly lower case,
/// quoted otherwise. For messages only, never for SQL (no keyword check).
pub fn display_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

/// Comma-separated quoted identifiers: `"a", "b"`.
pub fn ident_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for (i, n) in names.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_ident(&mut out, n);
    }
    out
}

/// A `pg_dump` / psql name pattern that matches exactly `schema.name`:
/// inside double quotes the pattern characters `* ? .` are literal.
pub fn exact_pattern(schema: &str, name: &str) -> String {
    let mut out = String::new();
    push_ident(&mut out, schema);
    out.push('.');
    push_ident(&mut out, name);
    out
}

/// Formats `$1, $2, ...` starting at `first`.
pub fn placeholders(first: usize, count: usize) -> String {
    let mut out = String::new();
    for i in 0..count {
        if i > 0 {
            out.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "${}", first + i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents_are_always_quoted_and_escaped() {
        assert_eq!(quote_ident("t"), r#""t""#);
        assert_eq!(quote_ident(r#"we"ird tbl"#), r#""we""ird tbl""#);
        assert_eq!(quote_ident("select"), r#""select""#);
        assert_eq!(quote_ident("ünï"), "\"ünï\"");
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b"), r"E'a\\b'");
        assert_eq!(quote_literal(""), "''");
    }

    #[test]
    fn display_keeps_plain_names_bare() {
        assert_eq!(display_ident("orders"), "orders");
        assert_eq!(display_ident("Orders"), r#""Orders""#);
        assert_eq!(display_ident("1x"), r#""1x""#);
    }

    #[test]
    fn placeholders_count_from_first() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
        assert_eq!(placeholders(1, 0), "");
    }
}
