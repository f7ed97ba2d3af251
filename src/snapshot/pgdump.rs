//! The source's schema comes from `pg_dump --schema-only` at the exported
//! snapshot. pg_dump refuses servers newer than itself, so pgrepl picks the
//! newest pg_dump it can find that is at least the source's major (or the
//! one given with `--pg-dump`), and says clearly when there is none.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::conn::{ConnConfig, Host};
use crate::sql::quote::exact_pattern;
use crate::sql::TableName;

#[derive(Debug, thiserror::Error)]
pub enum PgDumpError {
    #[error("no pg_dump new enough for the source (PostgreSQL {source_major}){found}: install the PostgreSQL {source_major}+ client tools or pass --pg-dump /path/to/pg_dump")]
    NoneNewEnough { source_major: u32, found: String },
    #[error("{path}: pg_dump {major} cannot dump a PostgreSQL {source_major} source: pass a pg_dump of version {source_major} or newer")]
    TooOld {
        path: PathBuf,
        major: u32,
        source_major: u32,
    },
    #[error("{path} is not a working pg_dump ({reason})")]
    NotPgDump { path: PathBuf, reason: String },
    #[error("pg_dump --section={section} failed: {stderr}")]
    Failed {
        section: &'static str,
        stderr: String,
    },
}

#[derive(Clone, Debug)]
pub struct PgDump {
    pub path: PathBuf,
    pub major: u32,
}

/// `pg_dump (PostgreSQL) 18.6` → 18.
fn version_of(path: &Path) -> Result<u32, String> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("pg_dump") {
        return Err(format!("`--version` printed {:?}", text.trim()));
    }
    text.split_whitespace()
        .last()
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("cannot read a version in {:?}", text.trim()))
}

/// Where a user's pg_dump may be: the PATH, the bin directory of every
/// `pg_config` on it, and the usual layouts (Debian/Ubuntu
/// /usr/lib/postgresql/*/bin, RPM /usr/pgsql-*/bin, source builds
/// /usr/local/pgsql/bin, Homebrew).
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            out.push(dir.join("pg_dump"));
            let pg_config = dir.join("pg_config");
            if pg_config.is_file() {
                if let Ok(o) = std::process::Command::new(&pg_config)
                    .arg("--bindir")
                    .output()
                {
                    let bindir = String::from_utf8_lossy(&o.stdout).trim().to_string();
                    if !bindir.is_empty() {
                        out.push(PathBuf::from(bindir).join("pg_dump"));
                    }
                }
            }
        }
    }
    for pattern_dir in [
        "/usr/lib/postgresql",
        "/usr/local/pgsql",
        "/opt/homebrew/opt",
        "/usr/local/opt",
    ] {
        if let Ok(entries) = std::fs::read_dir(pattern_dir) {
            out.extend(entries.flatten().map(|e| e.path().join("bin/pg_dump")));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr") {
        out.extend(
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("pgsql-"))
                .map(|e| e.path().join("bin/pg_dump")),
        );
    }
    out.into_iter().filter(|p| p.is_file()).collect()
}

/// The pg_dump to use for a source of major `source_major`.
pub fn find(explicit: Option<&Path>, source_major: u32) -> Result<PgDump, PgDumpError> {
    if let Some(path) = explicit {
        let major = version_of(path).map_err(|reason| PgDumpError::NotPgDump {
            path: path.to_path_buf(),
            reason,
        })?;
        if major < source_major {
            return Err(PgDumpError::TooOld {
                path: path.to_path_buf(),
                major,
                source_major,
            });
        }
        return Ok(PgDump {
            path: path.to_path_buf(),
            major,
        });
    }
    let mut found: Vec<PgDump> = candidates()
        .into_iter()
        .filter_map(|path| version_of(&path).ok().map(|major| PgDump { path, major }))
        .collect();
    found.sort_by_key(|d| std::cmp::Reverse(d.major));
    match found.first() {
        Some(best) if best.major >= source_major => Ok(best.clone()),
        Some(best) => Err(PgDumpError::NoneNewEnough {
            source_major,
            found: format!(
                " (newest found: pg_dump {} at {})",
                best.major,
                best.path.display()
            ),
        }),
        None => Err(PgDumpError::NoneNewEnough {
            source_major,
            found: " (none found on PATH)".into(),
        }),
    }
}

/// One pg_dump run's parameters.
pub struct DumpRequest<'a> {
    pub source: &'a ConnConfig,
    pub snapshot: &'a str,
    /// Top-level tables and partitions left out of the sync.
    pub excluded: &'a [TableName],
    pub section: &'static str,
    /// Emit `DROP ... IF EXISTS` for every object first (for cleaning).
    pub clean: bool,
    /// Owners and privileges as on the source (else the target user owns
    /// everything, with no grants).
    pub ownership: bool,
}

impl PgDump {
    /// Runs pg_dump and returns its SQL. Connection settings travel in the
    /// environment, so the password never shows in `ps`.
    pub async fn dump(&self, req: &DumpRequest<'_>) -> Result<String, PgDumpError> {
        let mut cmd = Command::new(&self.path);
        cmd.args(["--schema-only", "--no-publications", "--no-subscriptions"])
            .args([
                "--no-security-labels",
                "--no-tablespaces",
                "--exclude-schema=pgrepl",
                "--exclude-schema=pgrepl_fence",
                "--lock-wait-timeout=60000",
            ])
            .arg(format!("--section={}", req.section))
            .arg(format!("--snapshot={}", req.snapshot));
        if self.major >= 18 {
            cmd.arg("--no-statistics");
        }
        if !req.ownership {
            cmd.args(["--no-owner", "--no-privileges"]);
        }
        if req.clean {
            cmd.args(["--clean", "--if-exists"]);
        }
        for t in req.excluded {
            cmd.arg(format!(
                "--exclude-table={}",
                exact_pattern(&t.schema, &t.name)
            ));
        }
        let cfg = req.source;
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(
                "PGHOST",
                match &cfg.host {
                    Host::Tcp(h) => h.clone(),
                    Host::Unix(p) => p.display().to_string(),
                },
            )
            .env("PGPORT", cfg.port.to_string())
            .env("PGUSER", &cfg.user)
            .env("PGDATABASE", &cfg.dbname)
            .env("PGSSLMODE", cfg.sslmode.as_str())
            .env("PGAPPNAME", crate::conn::config::APPLICATION_NAME)
            .env("PGOPTIONS", cfg.session_options())
            .env("PGCONNECT_TIMEOUT", "30");
        if let Some(home) = std::env::var_os("HOME") {
            cmd.env("HOME", home);
        }
        if let Some(addr) = cfg.hostaddr {
            cmd.env("PGHOSTADDR", addr.to_string());
        }
        if let Some(pw) = &cfg.password {
            cmd.env("PGPASSWORD", pw.expose());
        }
        if let Some(root) = &cfg.sslrootcert {
            cmd.env("PGSSLROOTCERT", root);
        }
        if let Some(c) = &cfg.sslcert {
            cmd.env("PGSSLCERT", c);
        }
        if let Some(k) = &cfg.sslkey {
            cmd.env("PGSSLKEY", k);
        }
        let out = cmd
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| PgDumpError::Failed {
                section: req.section,
                stderr: format!("cannot run {}: {e}", self.path.display()),
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " ");
            return Err(PgDumpError::Failed {
                section: req.section,
                stderr,
            });
        }
        String::from_utf8(out.stdout).map_err(|_| PgDumpError::Failed {
            section: req.section,
            stderr: "output is not UTF-8".into(),
        })
    }
}
