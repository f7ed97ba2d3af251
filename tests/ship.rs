//! What operators install besides the binary, through the binary as they
//! run it: `pgrepl completions SHELL`, `pgrepl man [--dir]` and `pgrepl
//! --version` (the commit this checkout is at, and the majors).

mod support;

use std::time::Duration;

use support::pgrepl;

const LIMIT: Duration = Duration::from_secs(30);

/// Every subcommand, hard-coded: one added to the CLI must be added here.
const SUBCOMMANDS: [&str; 10] = [
    "check",
    "sync",
    "teardown",
    "status",
    "verify",
    "cutover",
    "install-capture",
    "tail",
    "completions",
    "man",
];

#[tokio::test]
async fn completions_and_man_pages_come_from_the_binary() {
    // The parser's own list matches the fixed one.
    let mut from_clap = ::pgrepl::commands::ship::subcommand_names();
    from_clap.sort();
    let mut fixed: Vec<String> = SUBCOMMANDS.iter().map(|s| s.to_string()).collect();
    fixed.sort();
    assert_eq!(from_clap, fixed);

    for (shell, form) in [
        ("bash", "pgrepl,{})"),
        ("zsh", "({})"),
        ("fish", "-f -a \"{}\""),
    ] {
        let out = pgrepl::run(&["completions", shell], LIMIT).await;
        assert!(out.success(), "{out}");
        assert!(out.stderr.trim().is_empty(), "{out}");
        for name in SUBCOMMANDS {
            let want = form.replace("{}", name);
            assert!(out.stdout.contains(&want), "{shell}: no {want}");
        }
    }
    let bad = pgrepl::run(&["completions", "tcsh"], LIMIT).await;
    assert_eq!(bad.code, Some(2), "{bad}");

    let page = pgrepl::run(&["man"], LIMIT).await;
    assert!(page.success(), "{page}");
    assert!(page.stdout.contains(".TH pgrepl 1"), "{page}");
    for name in SUBCOMMANDS {
        let roff = format!("pgrepl\\-{}(1)", name.replace('-', "\\-"));
        assert!(page.stdout.contains(&roff), "no {roff} in pgrepl(1)");
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let dir_arg = dir.path().display().to_string();
    let out = pgrepl::run(&["man", "--dir", &dir_arg], LIMIT).await;
    assert!(out.success(), "{out}");
    for name in SUBCOMMANDS {
        let page = dir.path().join(format!("pgrepl-{name}.1"));
        let text =
            std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        assert!(text.contains(&format!(".TH pgrepl-{name} 1 ")), "{text}");
        // Each page names the build it documents.
        assert!(text.contains("(commit "), "{text}");
    }
}

#[tokio::test]
async fn the_version_names_the_commit_and_the_majors() {
    let out = pgrepl::run(&["--version"], LIMIT).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("PostgreSQL sources: 12 to 18"), "{out}");
    assert!(out.stdout.contains("PostgreSQL targets: up to 18"), "{out}");
    let commit = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("commit: "))
        .unwrap_or_else(|| panic!("no commit line:\n{out}"));
    // In a git checkout (as CI's clone is), the commit HEAD was at when the
    // binary was built: this checkout's HEAD or one of its ancestors.
    let root = env!("CARGO_MANIFEST_DIR");
    let in_git = std::process::Command::new("git")
        .args(["-C", root, "rev-parse", "--show-toplevel"])
        .output()
        .is_ok_and(|o| o.status.success());
    if in_git && std::env::var_os("PGREPL_GIT_COMMIT").is_none() {
        let known = std::process::Command::new("git")
            .args(["-C", root, "merge-base", "--is-ancestor", commit, "HEAD"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(known, "commit {commit} is not in this checkout's history");
    }
    let short = pgrepl::run(&["-V"], LIMIT).await;
    assert_eq!(
        short.stdout.trim(),
        format!("pgrepl {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}
