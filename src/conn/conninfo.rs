//! Parsing connection strings the way libpq does: `key=value` conninfo
//! (values optionally single-quoted, `\'` and `\\` escapes) and
//! `postgres://` / `postgresql://` URIs (percent-decoded, `[v6]` hosts,
//! socket directories as `%2Ftmp` or `?host=/tmp`).

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;

/// The options pgrepl understands, as libpq names them.
pub const KNOWN_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslsni",
    "application_name",
    "fallback_application_name",
    "connect_timeout",
    "options",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "target_session_attrs",
    "channel_binding",
    "gssencmode",
    "client_encoding",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnInfoError {
    #[error("connection string: unknown option {0:?} (expected libpq names such as host, port, dbname, user, password, sslmode)")]
    UnknownKey(String),
    #[error("connection string: missing '=' after {0:?}")]
    MissingEquals(String),
    #[error("connection string: unterminated quoted value for {0:?}")]
    Unterminated(String),
    #[error("connection URI: {0}")]
    BadUri(String),
    #[error("connection URI: invalid percent-encoding in {0}")]
    BadPercent(&'static str),
    /// Text after an unquoted password that is no `key=value`: most likely
    /// the rest of a password with a space, so it is not repeated.
    #[error("connection string: the text after password= is not an option (a password with spaces or quotes must be quoted: password='...')")]
    AfterPassword,
}

/// Raw options from one connection string, keys as libpq names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    pub values: BTreeMap<String, String>,
}

impl ConnInfo {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn set(&mut self, key: &str, value: String) -> Result<(), ConnInfoError> {
        if !KNOWN_KEYS.contains(&key) {
            return Err(ConnInfoError::UnknownKey(key.to_string()));
        }
        self.values.insert(key.to_string(), value);
        Ok(())
    }
}

/// Parses either form; an empty string gives no options (all defaults).
pub fn parse(input: &str) -> Result<ConnInfo, ConnInfoError> {
    let trimmed = input.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        parse_uri(trimmed)
    } else {
        parse_keyword_value(trimmed)
    }
}

fn parse_keyword_value(input: &str) -> Result<ConnInfo, ConnInfoError> {
    let mut info = ConnInfo::default();
    let mut chars = input.chars().peekable();
    // The option just read was an unquoted password: what follows may be
    // more of it, never to be echoed in an error.
    let mut after_password = false;
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(info);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(match after_password {
                true => ConnInfoError::AfterPassword,
                false => ConnInfoError::MissingEquals(key),
            });
        }
        if after_password && !KNOWN_KEYS.contains(&key.as_str()) {
            return Err(ConnInfoError::AfterPassword);
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        after_password = key == "password" && chars.peek() != Some(&'\'');
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(e) => value.push(e),
                        None => break,
                    },
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(ConnInfoError::Unterminated(key));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(e) = chars.next() {
                        value.push(e);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        info.set(&key, value)?;
    }
}

fn decode(part: &str, what: &'static str) -> Result<String, ConnInfoError> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ConnInfoError::BadPercent(what))
}

fn parse_uri(input: &str) -> Result<ConnInfo, ConnInfoError> {
    let mut info = ConnInfo::default();
    let rest = input
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| ConnInfoError::BadUri("missing '://'".into()))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    // The authority ends at the first '/' after the user info, so that a
    // password holding a '/' is never read as host and port (and echoed).
    let from = rest.rfind('@').map_or(0, |i| i + 1);
    let (authority, path) = match rest[from..].find('/') {
        Some(i) => (&rest[..from + i], Some(&rest[from + i + 1..])),
        None => (rest, None),
    };
    let hostport = match authority.rfind('@') {
        Some(i) => {
            let userinfo = &authority[..i];
            match userinfo.split_once(':') {
                Some((u, p)) => {
                    if !u.is_empty() {
                        info.set("user", decode(u, "the user name")?)?;
                    }
                    info.set("password", decode(p, "the password")?)?;
                }
                None if !userinfo.is_empty() => {
                    info.set("user", decode(userinfo, "the user name")?)?;
                }
                None => {}
            }
            &authority[i + 1..]
        }
        None => authority,
    };
    // `host1:port1,host2:port2`: one host and port list each, as the
    // keyword form writes them (an empty port is the default).
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for one in hostport.split(',').filter(|h| !h.is_empty()) {
        let (host, port) = if let Some(v6) = one.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| ConnInfoError::BadUri("unclosed '[' in IPv6 host".into()))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => {
                    return Err(ConnInfoError::BadUri(
                        "unexpected text after IPv6 host".into(),
                    ))
                }
            };
            (host.to_string(), port)
        } else {
            let (host, port) = match one.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (one, None),
            };
            (decode(host, "the host")?, port)
        };
        hosts.push(host);
        ports.push(port.unwrap_or("").to_string());
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        info.set("host", hosts.join(","))?;
    }
    if ports.iter().any(|p| !p.is_empty()) {
        info.set("port", ports.join(","))?;
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        info.set("dbname", decode(db, "the database name")?)?;
    }
    if let Some(query) = query {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| ConnInfoError::BadUri(format!("parameter {pair:?} has no '='")))?;
            let k = decode(k, "a parameter name")?;
            let v = decode(v, "a parameter value")?;
            info.set(&k, v)?;
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(info: &ConnInfo) -> Vec<(String, String)> {
        info.values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    #[test]
    fn keyword_value_with_quotes_and_escapes() {
        let info = parse(r"host=/tmp port = 5433 dbname='my db' password='it\'s \\ ok' user=bob")
            .expect("parses");
        assert_eq!(info.get("host"), Some("/tmp"));
        assert_eq!(info.get("port"), Some("5433"));
        assert_eq!(info.get("dbname"), Some("my db"));
        assert_eq!(info.get("password"), Some(r"it's \ ok"));
        assert_eq!(info.get("user"), Some("bob"));
    }

    #[test]
    fn keyword_value_errors_are_named() {
        assert_eq!(
            parse("hots=x"),
            Err(ConnInfoError::UnknownKey("hots".into()))
        );
        assert_eq!(
            parse("host"),
            Err(ConnInfoError::MissingEquals("host".into()))
        );
        assert_eq!(
            parse("password='x"),
            Err(ConnInfoError::Unterminated("password".into()))
        );
    }

    #[test]
    fn password_fragments_never_appear_in_errors() {
        for input in [
            "host=h password=sec ret user=u",
            "host=h password=sec ret=x",
            "password=s3cret trailing",
        ] {
            let e = parse(input).expect_err(input);
            assert_eq!(e, ConnInfoError::AfterPassword, "{input}");
            assert!(!e.to_string().contains("ret"), "{e}");
        }
        // Quoted, anything goes; an option after an unquoted one is fine.
        assert_eq!(
            parse("password='sec ret' user=u")
                .expect("parses")
                .get("password"),
            Some("sec ret")
        );
        assert_eq!(
            parse("password=secret user=u").expect("parses").get("user"),
            Some("u")
        );
        let info = parse("postgres://u:pa/ss@h:5432/db").expect("parses");
        assert_eq!(info.get("password"), Some("pa/ss"));
        assert_eq!(info.get("host"), Some("h"));
        assert_eq!(info.get("dbname"), Some("db"));
    }

    #[test]
    fn uri_full_form() {
        let info = parse("postgresql://us%40er:p%3Ass@db.example.com:6543/sales?sslmode=require&application_name=x")
            .expect("parses");
        assert_eq!(
            kv(&info),
            vec![
                ("application_name".into(), "x".into()),
                ("dbname".into(), "sales".into()),
                ("host".into(), "db.example.com".into()),
                ("password".into(), "p:ss".into()),
                ("port".into(), "6543".into()),
                ("sslmode".into(), "require".into()),
                ("user".into(), "us@er".into()),
            ]
        );
    }

    #[test]
    fn uri_socket_and_v6_hosts() {
        let info = parse("postgres://%2Ftmp%2Fpg:5999/db").expect("parses");
        assert_eq!(info.get("host"), Some("/tmp/pg"));
        assert_eq!(info.get("port"), Some("5999"));
        let info = parse("postgres:///db?host=/var/run/postgresql").expect("parses");
        assert_eq!(info.get("host"), Some("/var/run/postgresql"));
        assert_eq!(info.get("dbname"), Some("db"));
        let info = parse("postgres://[::1]:5432/x").expect("parses");
        assert_eq!(info.get("host"), Some("::1"));
        assert_eq!(info.get("port"), Some("5432"));
    }

    #[test]
    fn uri_host_lists_and_unknown_params() {
        let info = parse("postgres://a:1,[::1]:2,b/db?target_session_attrs=read-write").unwrap();
        assert_eq!(info.get("host"), Some("a,::1,b"));
        assert_eq!(info.get("port"), Some("1,2,"));
        assert_eq!(
            parse("postgres://h/db?nope=1"),
            Err(ConnInfoError::UnknownKey("nope".into()))
        );
    }
}
