//! The version text (`-V`, `--version`: the commit the binary was built
//! from and the PostgreSQL majors it supports) and the arguments of the
//! commands that ship what operators install besides the binary
//! (`completions`, `man`; run by `commands::ship`).

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::Args;
use clap_complete::Shell;

use crate::check::{NEWEST_TESTED_MAJOR, OLDEST_SOURCE_MAJOR};

/// The git commit the binary was built from (build.rs), or "unknown".
pub const GIT_COMMIT: &str = env!("PGREPL_GIT_COMMIT");

/// `-V`: the package version and the commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PGREPL_GIT_COMMIT"),
    ")"
);

/// `--version`: the version, the commit and the majors this build supports.
pub fn long_version() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{}\n\
             commit: {GIT_COMMIT}\n\
             PostgreSQL sources: {OLDEST_SOURCE_MAJOR} to {NEWEST_TESTED_MAJOR}\n\
             PostgreSQL targets: up to {NEWEST_TESTED_MAJOR}, the source's major or newer (older: warned)\n\
             pg_dump: at least the source's major (found on the PATH, or --pg-dump)",
            env!("CARGO_PKG_VERSION")
        )
    })
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for (bash, zsh, fish; elvish and powershell too).
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write pgrepl.1 and one page per subcommand (pgrepl-sync.1, ...)
    /// into this directory instead of printing pgrepl.1 on stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}
