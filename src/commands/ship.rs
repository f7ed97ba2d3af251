//! What operators install besides the binary, generated from the same clap
//! definitions the parser uses (so the help never drifts from the CLI):
//! shell completions (`pgrepl completions SHELL`) and man pages (`pgrepl
//! man`, `pgrepl man --dir DIR`). The version text is `cli::version`'s.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::version::{CompletionsArgs, ManArgs, VERSION};
use crate::cli::Cli;

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("rendering the man page {page}: {source}")]
    Render {
        page: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The names of pgrepl's visible subcommands, as the parser knows them.
pub fn subcommand_names() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect()
}

/// The completion script for `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pgrepl", &mut out);
    out
}

/// The main page, pgrepl(1), listing every subcommand.
pub fn man_page() -> Result<Vec<u8>, ShipError> {
    render(clap_mangen::Man::new(Cli::command()), "pgrepl.1")
}

/// Writes pgrepl.1 and pgrepl-SUBCOMMAND.1 for every visible subcommand
/// into `dir` (created if missing); returns the files written.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>, ShipError> {
    std::fs::create_dir_all(dir).map_err(|source| ShipError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = vec![clap_mangen::Man::new(cmd.clone())];
    pages.extend(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            // A subcommand has no version of its own: the page names pgrepl's.
            .map(|s| clap_mangen::Man::new(s.clone()).source(format!("pgrepl {VERSION}"))),
    );
    let mut written = Vec::new();
    for man in pages {
        let name = man.get_filename();
        let text = render(man, &name)?;
        let path = dir.join(&name);
        std::fs::write(&path, text).map_err(|source| ShipError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

fn render(man: clap_mangen::Man, page: &str) -> Result<Vec<u8>, ShipError> {
    let mut out = Vec::new();
    man.render(&mut out).map_err(|source| ShipError::Render {
        page: page.to_string(),
        source,
    })?;
    Ok(out)
}

/// Deliberate output on stdout (a script, a page), not a log line.
fn print(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        // `pgrepl man | head`: the reader had enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// `pgrepl completions SHELL`.
pub fn run_completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    print(&completions(args.shell))?;
    Ok(ExitCode::SUCCESS)
}

/// `pgrepl man [--dir DIR]`.
pub fn run_man(args: ManArgs) -> anyhow::Result<ExitCode> {
    match args.dir {
        None => print(&man_page()?)?,
        Some(dir) => {
            let written = write_man_pages(&dir)?;
            tracing::info!(pages = written.len(), dir = %dir.display(), "wrote the man pages");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::version::{long_version, GIT_COMMIT};

    /// Every subcommand, from the parser (tests/ship.rs holds them against
    /// a fixed list).
    fn all_subcommands() -> Vec<String> {
        let mut names = subcommand_names();
        assert!(names.len() >= 10, "{names:?}");
        names.sort();
        names
    }

    #[test]
    fn completions_name_every_subcommand_and_their_flags() {
        let script = |shell| String::from_utf8(completions(shell)).expect("a utf-8 script");
        let (bash, zsh, fish) = (script(Shell::Bash), script(Shell::Zsh), script(Shell::Fish));
        assert!(bash.contains("complete -F _pgrepl"), "{bash}");
        assert!(zsh.starts_with("#compdef pgrepl"), "{zsh}");
        assert!(fish.contains("complete -c pgrepl"), "{fish}");
        for name in all_subcommands() {
            // Each shell's own form of "NAME is a subcommand, with its
            // own flags", so a name merely mentioned in a help text does
            // not count.
            let bash_case = format!("pgrepl,{name})");
            assert!(bash.contains(&bash_case), "bash: no {bash_case}");
            let zsh_case = format!("({name})");
            assert!(
                zsh.lines().any(|l| l.trim() == zsh_case),
                "zsh: no {zsh_case} case"
            );
            let fish_sub = format!("-f -a \"{name}\"");
            assert!(fish.contains(&fish_sub), "fish: no {fish_sub}");
            let fish_flags = format!("__fish_pgrepl_using_subcommand {name}\"");
            assert!(fish.contains(&fish_flags), "fish: no flags for {name}");
        }
        for text in [&bash, &zsh, &fish] {
            for flag in ["until-caught-up", "listen", "all-databases", "pg-dump"] {
                assert!(text.contains(flag), "no --{flag} in\n{text}");
            }
        }
    }

    #[test]
    fn the_man_page_lists_every_subcommand() {
        let page = String::from_utf8(man_page().expect("renders")).expect("utf-8");
        assert!(
            page.starts_with(".ie") || page.contains(".TH pgrepl 1"),
            "{page}"
        );
        let section = page
            .split(".SH SUBCOMMANDS")
            .nth(1)
            .expect("a SUBCOMMANDS section");
        for name in all_subcommands() {
            // roff escapes the dash: install\-capture.
            let roff = format!("pgrepl\\-{}(1)", name.replace('-', "\\-"));
            assert!(section.contains(&roff), "no {roff} in\n{section}");
        }
        assert!(
            page.contains(GIT_COMMIT),
            "the version section names the commit"
        );
    }

    #[test]
    fn one_man_page_per_subcommand_with_its_flags() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = write_man_pages(dir.path()).expect("writes");
        let mut files: Vec<String> = written
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        files.sort();
        let mut want: Vec<String> = all_subcommands()
            .iter()
            .map(|n| format!("pgrepl-{n}.1"))
            .collect();
        want.push("pgrepl.1".into());
        want.sort();
        assert_eq!(files, want);
        let sync = std::fs::read_to_string(dir.path().join("pgrepl-sync.1")).expect("read");
        assert!(sync.contains("until\\-caught\\-up"), "{sync}");
        assert!(sync.contains("\\-\\-listen"), "{sync}");
    }

    #[test]
    fn the_long_version_names_commit_and_majors() {
        let v = long_version();
        assert!(v.starts_with(env!("CARGO_PKG_VERSION")), "{v}");
        assert!(v.contains(&format!("commit: {GIT_COMMIT}")), "{v}");
        assert!(v.contains("PostgreSQL sources: 12 to 18"), "{v}");
        assert!(!GIT_COMMIT.is_empty());
    }
}
