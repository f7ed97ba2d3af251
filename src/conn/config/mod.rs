//! A resolved connection: what the user wrote, filled in with the libpq
//! environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`,
//! `PGPASSFILE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGCONNECT_TIMEOUT`,
//! `PGOPTIONS`) and `~/.pgpass`. The password never leaves this type except
//! to authenticate: `Debug` and `Display` redact it.
//!
//! Here: the types and what a session needs from them (hosts to try,
//! socket path, server options, tokio-postgres settings). How one is
//! resolved from a conninfo and the environment is in `resolve`.

mod resolve;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::conninfo::ConnInfoError;
pub use resolve::{Env, ProcessEnv};

/// Every session pgrepl opens shows this in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "pgrepl";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Syntax(#[from] ConnInfoError),
    #[error("invalid port {0:?}: expected a number from 1 to 65535")]
    BadPort(String),
    #[error("invalid sslmode {0:?}: use disable, prefer, require, verify-ca or verify-full")]
    BadSslMode(String),
    #[error("invalid hostaddr {0:?}: expected an IP address")]
    BadHostAddr(String),
    #[error("invalid connect_timeout {0:?}: expected whole seconds")]
    BadTimeout(String),
    #[error("{hosts} host(s) but {ports} ports: give one port for all, or one per host")]
    PortCount { hosts: usize, ports: usize },
    #[error("hostaddr goes with one host only (host={0})")]
    HostAddrWithSeveralHosts(String),
    #[error(
        "invalid target_session_attrs {0:?}: use any, read-write, primary, read-only or standby"
    )]
    BadSessionAttrs(String),
    #[error("no {0} connection given: pass --{0} or set PGREPL_{1}")]
    Missing(&'static str, &'static str),
}

/// Where the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// A directory holding `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, ConfigError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries plain text first; pgrepl treats it as
            // `prefer`, which is never less protected.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(ConfigError::BadSslMode(other.to_string())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// What a session's server must be (libpq's `target_session_attrs`),
/// checked on each host in turn until one is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAttrs {
    Any,
    /// `read-write` or `primary`: a server not in recovery. (pgrepl's
    /// sessions override `default_transaction_read_only`, so the two are
    /// the same here.)
    ReadWrite,
    /// `read-only` or `standby`: a hot standby.
    ReadOnly,
}

impl SessionAttrs {
    fn parse(s: &str) -> Result<Self, ConfigError> {
        Ok(match s {
            "any" => SessionAttrs::Any,
            "read-write" | "primary" => SessionAttrs::ReadWrite,
            "read-only" | "standby" => SessionAttrs::ReadOnly,
            other => return Err(ConfigError::BadSessionAttrs(other.to_string())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
        }
    }

    /// Whether a server whose `transaction_read_only` is `read_only` fits.
    pub fn accepts(self, read_only: bool) -> bool {
        match self {
            SessionAttrs::Any => true,
            SessionAttrs::ReadWrite => !read_only,
            SessionAttrs::ReadOnly => read_only,
        }
    }
}

/// A further host of a multi-host conninfo (`host=a,b port=1,2`), with the
/// password `~/.pgpass` gives for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherHost {
    pub host: Host,
    pub port: u16,
    pub password: Option<Password>,
}

/// A password that does not print itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

/// Everything needed to open a session, resolved and validated. `host`,
/// `port` and `password` are the first (or only) server's; `more_hosts`
/// the others of a multi-host conninfo, tried in order until one is what
/// `session_attrs` asks for.
#[derive(Clone, Debug)]
pub struct ConnConfig {
    pub host: Host,
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub password: Option<Password>,
    pub sslmode: SslMode,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
    /// Extra server options (`-c name=value ...`), as libpq's `options`.
    pub options: Option<String>,
    pub more_hosts: Vec<OtherHost>,
    pub session_attrs: SessionAttrs,
}

impl ConnConfig {
    /// Each server to try, in order, as a config of its own (one host).
    pub fn candidates(&self) -> Vec<ConnConfig> {
        let first = ConnConfig {
            more_hosts: Vec::new(),
            ..self.clone()
        };
        let mut all = vec![first.clone()];
        for h in &self.more_hosts {
            all.push(ConnConfig {
                host: h.host.clone(),
                port: h.port,
                password: h.password.clone(),
                ..first.clone()
            });
        }
        all
    }

    /// Whether sessions must look for the right server among several, or
    /// check the one they reach.
    pub fn needs_choosing(&self) -> bool {
        !self.more_hosts.is_empty() || self.session_attrs != SessionAttrs::Any
    }

    /// The host as the user wrote it (a name, an address or a socket directory).
    pub fn host_display(&self) -> String {
        match &self.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        }
    }

    /// The full path of the Unix socket, for socket hosts.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            Host::Tcp(_) => None,
        }
    }

    /// Whether TLS is attempted at all (never on a Unix socket, as libpq).
    pub fn tls_wanted(&self) -> bool {
        matches!(self.host, Host::Tcp(_)) && self.sslmode != SslMode::Disable
    }

    /// Server options every pgrepl session sets so values print the same on
    /// both sides: ISO dates, UTC, full float precision, hex bytea, C money;
    /// and read-write transactions, also in a database a cutover left
    /// read-only for everyone else (pgrepl writes there for a reverse sync).
    /// JIT off: pgrepl's statements are catalog queries, short set-based
    /// writes and range hashes whose plans the planner costs high; where the
    /// server has LLVM (Debian's packages do), compiling one took ~1 s, more
    /// than the statement (the roles inventory: 967 ms with, 12 ms without).
    /// A user's `options` come after and win.
    pub fn session_options(&self) -> String {
        let mut opts = String::from(
            "-c datestyle=ISO,YMD -c intervalstyle=postgres -c timezone=UTC \
             -c extra_float_digits=3 -c bytea_output=hex -c lc_monetary=C \
             -c default_transaction_read_only=off -c jit=off",
        );
        if let Some(user_opts) = &self.options {
            opts.push(' ');
            opts.push_str(user_opts);
        }
        opts
    }

    /// The options for a `tokio_postgres` connection (which tries the hosts
    /// in order itself and checks `target_session_attrs` as libpq does). A
    /// multi-host config is given one password: the first host's.
    pub fn to_tokio(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        let hosts = std::iter::once((&self.host, self.port))
            .chain(self.more_hosts.iter().map(|h| (&h.host, h.port)));
        for (host, port) in hosts {
            match host {
                Host::Tcp(h) => {
                    c.host(h);
                }
                Host::Unix(p) => {
                    c.host_path(p);
                }
            }
            c.port(port);
        }
        if let Some(addr) = self.hostaddr {
            c.hostaddr(addr);
        }
        c.target_session_attrs(match self.session_attrs {
            SessionAttrs::Any => tokio_postgres::config::TargetSessionAttrs::Any,
            SessionAttrs::ReadWrite => tokio_postgres::config::TargetSessionAttrs::ReadWrite,
            SessionAttrs::ReadOnly => tokio_postgres::config::TargetSessionAttrs::ReadOnly,
        });
        c.user(&self.user)
            .dbname(&self.dbname)
            .application_name(APPLICATION_NAME)
            .options(self.session_options())
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .ssl_mode(match self.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
        if let Some(t) = self.connect_timeout {
            c.connect_timeout(t);
        }
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        c
    }
}

/// `host=… port=… dbname=… user=…`: safe to log, never holds the password.
impl fmt::Display for ConnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hosts = self.host_display();
        let mut ports = self.port.to_string();
        for h in &self.more_hosts {
            hosts.push(',');
            hosts.push_str(&match &h.host {
                Host::Tcp(t) => t.clone(),
                Host::Unix(p) => p.display().to_string(),
            });
            ports.push(',');
            ports.push_str(&h.port.to_string());
        }
        write!(
            f,
            "host={hosts} port={ports} dbname={} user={}",
            self.dbname, self.user
        )?;
        if self.session_attrs != SessionAttrs::Any {
            write!(f, " target_session_attrs={}", self.session_attrs.as_str())?;
        }
        Ok(())
    }
}
