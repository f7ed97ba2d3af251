//! Resolving a conninfo string or URI into a [`ConnConfig`]: what the user
//! wrote first, then the libpq environment variables, then the defaults
//! (the socket directory, the OS user), and each host's password from
//! `~/.pgpass` when none was given.

use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, ConnConfig, Host, OtherHost, Password, SessionAttrs, SslMode};
use crate::conn::conninfo::{self, ConnInfo};
use crate::conn::pgpass;

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
