//! Why a connection failed, in words a DBA can act on. Both the normal
//! sessions (tokio-postgres) and the walsender session map their failures
//! into [`ConnectFailure`], so a wrong password reads the same everywhere.

use std::fmt;
use std::io;

use super::config::{ConnConfig, Host};

/// Which server a message is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Source,
    Target,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// One server error, as Postgres reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " hint: {h}")?;
        }
        Ok(())
    }
}

impl ServerError {
    pub fn from_db(e: &tokio_postgres::error::DbError) -> Self {
        ServerError {
            severity: e.severity().to_string(),
            code: e.code().code().to_string(),
            message: e.message().to_string(),
            detail: e.detail().map(str::to_string),
            hint: e.hint().map(str::to_string),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    NoSocket,
    UnknownHost,
    TimedOut,
    BadPassword,
    NoPassword,
    Rejected(String),
    NoDatabase,
    NotReady(String),
    TooMany,
    NoTlsOnServer,
    Tls(String),
    Config(String),
    /// Several servers (or a `target_session_attrs`), none of them fit.
    NoneFits {
        wanted: &'static str,
        tried: String,
    },
    Other(String),
}

/// A failed connection attempt: which side, where, and why.
#[derive(Debug, thiserror::Error)]
pub struct ConnectError {
    pub side: Side,
    /// `host:port` or the socket path, and the database.
    pub place: String,
    pub user: String,
    pub dbname: String,
    pub failure: ConnectFailure,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (side, place, user, db) = (self.side, &self.place, &self.user, &self.dbname);
        match &self.failure {
            ConnectFailure::Refused => write!(
                f,
                "{side}: connection to {place} refused: is PostgreSQL running and listening there (listen_addresses, port)?"
            ),
            ConnectFailure::NoSocket => write!(
                f,
                "{side}: no server socket at {place}: is PostgreSQL running, and is host= the socket directory?"
            ),
            ConnectFailure::UnknownHost => {
                write!(f, "{side}: cannot resolve the host of {place}: check the host name")
            }
            ConnectFailure::TimedOut => write!(
                f,
                "{side}: connecting to {place} timed out: check host, port and firewalls (connect_timeout= to wait longer)"
            ),
            ConnectFailure::BadPassword => write!(
                f,
                "{side}: password authentication failed for user {user:?} at {place}: check the password (connection string, PGPASSWORD or ~/.pgpass)"
            ),
            ConnectFailure::NoPassword => write!(
                f,
                "{side}: the server at {place} asks user {user:?} for a password and none was given: put it in the connection string, PGPASSWORD or ~/.pgpass"
            ),
            ConnectFailure::Rejected(msg) => write!(
                f,
                "{side}: {place} rejected user {user:?}: {msg} (check pg_hba.conf and the role's LOGIN)"
            ),
            ConnectFailure::NoDatabase => write!(
                f,
                "{side}: database {db:?} does not exist at {place}: check dbname= (create it first for a target)"
            ),
            ConnectFailure::NotReady(msg) => {
                write!(f, "{side}: {place} is not accepting connections now: {msg}")
            }
            ConnectFailure::TooMany => write!(
                f,
                "{side}: {place} has no free connection slots: close idle sessions or raise max_connections"
            ),
            ConnectFailure::NoTlsOnServer => write!(
                f,
                "{side}: {place} does not offer TLS but sslmode requires it: enable ssl on the server or use sslmode=prefer"
            ),
            ConnectFailure::Tls(msg) => write!(f, "{side}: TLS with {place} failed: {msg}"),
            ConnectFailure::Config(msg) => write!(f, "{side}: {msg}"),
            ConnectFailure::NoneFits { wanted, tried } => write!(
                f,
                "{side}: no server of {place} is {wanted} now ({tried}): during a failover, wait for the standby's promotion (--retry-for rides it out)"
            ),
            ConnectFailure::Other(msg) => write!(f, "{side}: cannot connect to {place}: {msg}"),
        }
    }
}

impl ConnectError {
    pub fn new(side: Side, cfg: &ConnConfig, failure: ConnectFailure) -> Self {
        if !cfg.more_hosts.is_empty() {
            let places: Vec<String> = cfg
                .candidates()
                .iter()
                .map(|one| Self::new(side, one, ConnectFailure::Refused).place)
                .collect();
            return ConnectError {
                side,
                place: places.join(", "),
                user: cfg.user.clone(),
                dbname: cfg.dbname.clone(),
                failure,
            };
        }
        let place = match &cfg.host {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]:{}", cfg.port),
            Host::Tcp(h) => format!("{h}:{}", cfg.port),
            Host::Unix(_) => cfg
                .socket_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        };
        ConnectError {
            side,
            place,
            user: cfg.user.clone(),
            dbname: cfg.dbname.clone(),
            failure,
        }
    }
}

impl ConnectFailure {
    /// Worth trying again: the server is down, starting, full, or (several
    /// servers) none is what is wanted yet, as during a failover.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ConnectFailure::Refused
                | ConnectFailure::NoSocket
                | ConnectFailure::TimedOut
                | ConnectFailure::NotReady(_)
                | ConnectFailure::TooMany
                | ConnectFailure::NoneFits { .. }
        )
    }

    /// A server's refusal during startup, by SQLSTATE.
    pub fn from_server(e: &ServerError) -> Self {
        match e.code.as_str() {
            "28P01" => ConnectFailure::BadPassword,
            "28000" => ConnectFailure::Rejected(e.message.clone()),
            "3D000" => ConnectFailure::NoDatabase,
            "53300" => ConnectFailure::TooMany,
            // Starting up, or shutting down (a restart, a failover) while
            // this session started: both pass.
            "57P01" | "57P02" | "57P03" => ConnectFailure::NotReady(e.message.clone()),
            _ => ConnectFailure::Other(e.to_string()),
        }
    }

    pub fn from_io(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
            io::ErrorKind::NotFound => ConnectFailure::NoSocket,
            io::ErrorKind::TimedOut => ConnectFailure::TimedOut,
            _ => {
                let text = e.to_string();
                if text.contains("lookup address") || text.contains("Name or service not known") {
                    ConnectFailure::UnknownHost
                } else {
                    ConnectFailure::Other(text)
                }
            }
        }
    }

    /// tokio-postgres keeps its error kinds private: read the db error, the
    /// io error underneath, or (last) the message.
    pub fn from_tokio(e: &tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            return Self::from_server(&ServerError::from_db(db));
        }
        let text = full_text(e);
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<io::Error>() {
                if let Some(inner) = io.get_ref() {
                    if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                        return ConnectFailure::Tls(r.to_string());
                    }
                }
                if text.contains("TLS") {
                    return ConnectFailure::Tls(io.to_string());
                }
                return Self::from_io(io);
            }
            if let Some(r) = s.downcast_ref::<rustls::Error>() {
                return ConnectFailure::Tls(r.to_string());
            }
            source = s.source();
        }
        if text.contains("password missing") {
            ConnectFailure::NoPassword
        } else if text.contains("server does not support TLS") {
            ConnectFailure::NoTlsOnServer
        } else if text.contains("timeout") || text.contains("timed out") {
            ConnectFailure::TimedOut
        } else {
            ConnectFailure::Other(text)
        }
    }
}

/// A query error from a live session, with everything the server said.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => ServerError::from_db(db).to_string(),
        None => full_text(e),
    }
}

/// tokio-postgres prints only its error kind; the cause is in the chain.
fn full_text(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The SQLSTATE of a query error, if the server sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// Errors that a retry can cure: the connection dropped, the server is
/// restarting or shutting down, or a serialization conflict.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match sqlstate(e) {
        Some(code) => {
            code.starts_with("08") // connection exception
                || code == "57P01" // admin_shutdown
                || code == "57P02" // crash_shutdown
                || code == "57P03" // cannot_connect_now
                || code == "40001" // serialization_failure
                || code == "40P01" // deadlock_detected
                || code == "53300" // too_many_connections
        }
        None => {
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                if s.downcast_ref::<io::Error>().is_some() {
                    return true;
                }
                source = s.source();
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: &str) -> ConnectFailure {
        ConnectFailure::from_server(&ServerError {
            severity: "FATAL".into(),
            code: code.into(),
            message: "m".into(),
            detail: None,
            hint: None,
        })
    }

    #[test]
    fn a_server_starting_or_stopping_during_the_startup_is_passing() {
        // 57P01: a session starting while the server shuts down (a
        // restart); a sync retries it rather than stopping for good.
        for code in ["57P01", "57P02", "57P03", "53300"] {
            assert!(refused(code).is_transient(), "{code}");
        }
        for code in ["28P01", "28000", "3D000", "42501"] {
            assert!(!refused(code).is_transient(), "{code}");
        }
    }
}
