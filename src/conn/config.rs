//! A resolved connection: what the user wrote, filled in with the libpq
//! environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`,
//! `PGPASSFILE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGCONNECT_TIMEOUT`,
//! `PGOPTIONS`) and `~/.pgpass`. The password never leaves this type except
//! to authenticate: `Debug` and `Display` redact it.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::conninfo::{self, ConnInfo, ConnInfoError};
use super::pgpass;

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

/// Where environment variables come from: the process, or a map in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

impl ConnConfig {
    /// Parses a conninfo string or URI and fills in the defaults from `env`.
    pub fn resolve(input: &str, env: &dyn Env) -> Result<Self, ConfigError> {
        let info = conninfo::parse(input)?;
        Self::from_info(&info, env)
    }

    fn from_info(info: &ConnInfo, env: &dyn Env) -> Result<Self, ConfigError> {
        let pick =
            |key: &str, var: &str| info.get(key).map(str::to_string).or_else(|| env.var(var));

        let host_str = pick("host", "PGHOST").unwrap_or_else(default_socket_dir);
        let hosts: Vec<Host> = host_str
            .split(',')
            .map(|h| {
                let h = h.trim();
                if h.is_empty() {
                    Host::Unix(PathBuf::from(default_socket_dir()))
                } else if h.starts_with('/') || h.starts_with('@') {
                    Host::Unix(PathBuf::from(h))
                } else {
                    Host::Tcp(h.to_string())
                }
            })
            .collect();
        let hostaddr = match pick("hostaddr", "PGHOSTADDR") {
            Some(_) if hosts.len() > 1 => {
                return Err(ConfigError::HostAddrWithSeveralHosts(host_str))
            }
            Some(a) => Some(a.parse().map_err(|_| ConfigError::BadHostAddr(a))?),
            None => None,
        };
        let ports: Vec<u16> = match pick("port", "PGPORT") {
            Some(list) => list
                .split(',')
                .map(|p| match p.trim() {
                    "" => Ok(5432),
                    t => match t.parse::<u16>() {
                        Ok(n) if n > 0 => Ok(n),
                        _ => Err(ConfigError::BadPort(p.to_string())),
                    },
                })
                .collect::<Result<_, _>>()?,
            None => vec![5432],
        };
        if ports.len() != 1 && ports.len() != hosts.len() {
            return Err(ConfigError::PortCount {
                hosts: hosts.len(),
                ports: ports.len(),
            });
        }
        let port_of = |i: usize| ports.get(i).copied().unwrap_or(ports[0]);
        let session_attrs = match pick("target_session_attrs", "PGTARGETSESSIONATTRS") {
            Some(a) => SessionAttrs::parse(&a)?,
            None => SessionAttrs::Any,
        };
        let mut hosts = hosts.into_iter();
        let host = hosts
            .next()
            .unwrap_or_else(|| Host::Tcp("localhost".into()));
        let port = port_of(0);
        let user = pick("user", "PGUSER").unwrap_or_else(os_user);
        let dbname = pick("dbname", "PGDATABASE").unwrap_or_else(|| user.clone());
        let sslmode = match pick("sslmode", "PGSSLMODE") {
            Some(m) => SslMode::parse(&m)?,
            None => SslMode::Prefer,
        };
        let connect_timeout = match pick("connect_timeout", "PGCONNECT_TIMEOUT") {
            Some(t) => match t.trim().parse::<u64>() {
                Ok(0) => None,
                Ok(secs) => Some(Duration::from_secs(secs.max(2))),
                Err(_) => return Err(ConfigError::BadTimeout(t)),
            },
            None => Some(Duration::from_secs(30)),
        };
        let mut cfg = ConnConfig {
            host,
            hostaddr,
            port,
            user,
            dbname,
            password: None,
            sslmode,
            sslrootcert: pick("sslrootcert", "PGSSLROOTCERT"),
            sslcert: pick("sslcert", "PGSSLCERT").map(PathBuf::from),
            sslkey: pick("sslkey", "PGSSLKEY").map(PathBuf::from),
            connect_timeout,
            options: pick("options", "PGOPTIONS"),
            more_hosts: Vec::new(),
            session_attrs,
        };
        // The password of each host: given, or ~/.pgpass's for that host.
        let passfile = info
            .get("passfile")
            .map(str::to_string)
            .or_else(|| env.var("PGPASSFILE"));
        let given = info
            .get("password")
            .map(str::to_string)
            .or_else(|| env.var("PGPASSWORD"))
            .map(Password);
        cfg.password = given
            .clone()
            .or_else(|| cfg.password_from_file(passfile.clone(), env));
        for (i, host) in hosts.enumerate() {
            let mut one = cfg.clone();
            one.host = host;
            one.port = port_of(i + 1);
            let password = given
                .clone()
                .or_else(|| one.password_from_file(passfile.clone(), env));
            cfg.more_hosts.push(OtherHost {
                host: one.host,
                port: one.port,
                password,
            });
        }
        Ok(cfg)
    }

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

    fn password_from_file(&self, passfile: Option<String>, env: &dyn Env) -> Option<Password> {
        let path = match passfile {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(env.var("HOME")?).join(".pgpass"),
        };
        let host = self.host_display();
        pgpass::lookup(
            &path,
            &pgpass::PgPassQuery {
                host: &host,
                is_socket: matches!(self.host, Host::Unix(_)),
                port: self.port,
                dbname: &self.dbname,
                user: &self.user,
            },
        )
        .map(Password)
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

fn default_socket_dir() -> String {
    for dir in ["/var/run/postgresql", "/tmp"] {
        if std::path::Path::new(dir).is_dir() {
            return dir.to_string();
        }
    }
    "localhost".to_string()
}

fn os_user() -> String {
    // SAFETY: geteuid cannot fail; getpwuid returns NULL or a pointer to a
    // static passwd entry whose pw_name is a NUL-terminated string.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            if let Ok(name) = std::ffi::CStr::from_ptr((*pw).pw_name).to_str() {
                return name.to_string();
            }
        }
    }
    std::env::var("USER").unwrap_or_else(|_| "postgres".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn conninfo_wins_over_environment() {
        let cfg = ConnConfig::resolve(
            "host=db port=6000 user=u dbname=d",
            &env(&[("PGHOST", "other"), ("PGPORT", "1")]),
        )
        .expect("resolves");
        assert_eq!(cfg.host, Host::Tcp("db".into()));
        assert_eq!(cfg.port, 6000);
        assert_eq!(cfg.user, "u");
        assert_eq!(cfg.dbname, "d");
    }

    #[test]
    fn environment_fills_the_gaps() {
        let cfg = ConnConfig::resolve(
            "",
            &env(&[
                ("PGHOST", "/tmp/s"),
                ("PGPORT", "7000"),
                ("PGUSER", "eve"),
                ("PGPASSWORD", "pw"),
                ("PGSSLMODE", "require"),
            ]),
        )
        .expect("resolves");
        assert_eq!(cfg.host, Host::Unix("/tmp/s".into()));
        assert_eq!(
            cfg.socket_path(),
            Some(PathBuf::from("/tmp/s/.s.PGSQL.7000"))
        );
        assert_eq!(cfg.dbname, "eve");
        assert_eq!(cfg.password.as_ref().map(Password::expose), Some("pw"));
        assert_eq!(cfg.sslmode, SslMode::Require);
        assert!(!cfg.tls_wanted(), "no TLS over a Unix socket");
    }

    #[test]
    fn password_comes_from_pgpass_last() {
        let dir = std::env::temp_dir().join(format!("pgrepl-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("pgpass");
        std::fs::write(&file, "h:5432:d:u:from-file\n").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let pf = file.display().to_string();
        let cfg = ConnConfig::resolve("host=h user=u dbname=d", &env(&[("PGPASSFILE", &pf)]))
            .expect("resolves");
        assert_eq!(
            cfg.password.as_ref().map(Password::expose),
            Some("from-file")
        );
        let cfg = ConnConfig::resolve(
            "host=h user=u dbname=d password=inline",
            &env(&[("PGPASSFILE", &pf)]),
        )
        .expect("resolves");
        assert_eq!(cfg.password.as_ref().map(Password::expose), Some("inline"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn printing_never_shows_the_password() {
        let cfg = ConnConfig::resolve("postgres://u:hunter2@h/d", &env(&[])).expect("resolves");
        assert_eq!(cfg.password.as_ref().map(Password::expose), Some("hunter2"));
        assert!(!format!("{cfg}").contains("hunter2"));
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn bad_values_are_named() {
        assert!(matches!(
            ConnConfig::resolve("port=x", &env(&[])),
            Err(ConfigError::BadPort(_))
        ));
        assert!(matches!(
            ConnConfig::resolve("sslmode=maybe", &env(&[])),
            Err(ConfigError::BadSslMode(_))
        ));
        assert!(matches!(
            ConnConfig::resolve("host=a,b,c port=1,2", &env(&[])),
            Err(ConfigError::PortCount { hosts: 3, ports: 2 })
        ));
        assert!(matches!(
            ConnConfig::resolve("host=a,b hostaddr=127.0.0.1", &env(&[])),
            Err(ConfigError::HostAddrWithSeveralHosts(_))
        ));
        assert!(matches!(
            ConnConfig::resolve("host=a target_session_attrs=prefer-primary", &env(&[])),
            Err(ConfigError::BadSessionAttrs(_))
        ));
    }

    #[test]
    fn several_hosts_are_tried_in_order_with_their_ports() {
        let cfg = ConnConfig::resolve(
            "host=a,/tmp/s,b port=1,2,3 user=u dbname=d target_session_attrs=primary",
            &env(&[]),
        )
        .expect("resolves");
        let tried: Vec<(Host, u16)> = cfg
            .candidates()
            .into_iter()
            .map(|c| {
                assert!(c.more_hosts.is_empty());
                (c.host, c.port)
            })
            .collect();
        assert_eq!(
            tried,
            vec![
                (Host::Tcp("a".into()), 1),
                (Host::Unix("/tmp/s".into()), 2),
                (Host::Tcp("b".into()), 3)
            ]
        );
        assert_eq!(cfg.session_attrs, SessionAttrs::ReadWrite);
        assert!(cfg.needs_choosing());
        assert_eq!(
            cfg.to_string(),
            "host=a,/tmp/s,b port=1,2,3 dbname=d user=u target_session_attrs=read-write"
        );
        // One port for every host.
        let cfg = ConnConfig::resolve("postgresql://u@a,b:7/d", &env(&[])).expect("resolves");
        assert_eq!(cfg.candidates().len(), 2);
    }
}
