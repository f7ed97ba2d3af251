//! `~/.pgpass` (or `PGPASSFILE`) lookup, as libpq does it: lines of
//! `host:port:database:user:password`, `*` matching anything, `\:` and `\\`
//! escapes, `#` comments, the first matching line wins, and a file that
//! others can read is ignored.

use std::path::Path;

/// What a pgpass line is matched against.
pub struct PgPassQuery<'a> {
    pub host: &'a str,
    /// Socket connections also match lines for `localhost`, as in libpq.
    pub is_socket: bool,
    pub port: u16,
    pub dbname: &'a str,
    pub user: &'a str,
}

/// The password for `query` from the file at `path`, if any line matches.
pub fn lookup(path: &Path, query: &PgPassQuery<'_>) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "password file has group or world access; ignoring it (chmod 0600 it)"
            );
            return None;
        }
    }
    let text = std::fs::read_to_string(path).ok()?;
    find(&text, query)
}

/// Matches `text` (the file's content) against `query`.
pub fn find(text: &str, query: &PgPassQuery<'_>) -> Option<String> {
    let port = query.port.to_string();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_fields(line);
        if fields.len() < 5 {
            continue;
        }
        let field_matches = |field: &str, value: &str| field == "*" || field == value;
        let host_ok =
            field_matches(&fields[0], query.host) || (query.is_socket && fields[0] == "localhost");
        if host_ok
            && field_matches(&fields[1], &port)
            && field_matches(&fields[2], query.dbname)
            && field_matches(&fields[3], query.user)
        {
            // The password is the rest of the line: it may itself hold ':'.
            return Some(fields[4..].join(":"));
        }
    }
    None
}

fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    if let Some(last) = fields.last_mut() {
                        last.push(next);
                    }
                }
            }
            ':' => fields.push(String::new()),
            c => {
                if let Some(last) = fields.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q<'a>(host: &'a str, port: u16, db: &'a str, user: &'a str) -> PgPassQuery<'a> {
        PgPassQuery {
            host,
            is_socket: host.starts_with('/'),
            port,
            dbname: db,
            user,
        }
    }

    const FILE: &str = "# comment\n\
        db1.example.com:5432:sales:alice:s3cret\n\
        *:5433:*:bob:with\\:colon\n\
        localhost:*:*:carol:local\n\
        *:*:*:*:fallback:with:colons\n";

    #[test]
    fn first_matching_line_wins() {
        assert_eq!(
            find(FILE, &q("db1.example.com", 5432, "sales", "alice")).as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            find(FILE, &q("db1.example.com", 5432, "other", "alice")).as_deref(),
            Some("fallback:with:colons")
        );
        assert_eq!(
            find(FILE, &q("h", 5433, "x", "bob")).as_deref(),
            Some("with:colon")
        );
    }

    #[test]
    fn sockets_match_localhost_lines() {
        assert_eq!(
            find(FILE, &q("/tmp", 5432, "x", "carol")).as_deref(),
            Some("local")
        );
        assert_eq!(
            find(
                "localhost:*:*:carol:local\n",
                &q("10.0.0.1", 5432, "x", "carol")
            ),
            None
        );
    }
}
