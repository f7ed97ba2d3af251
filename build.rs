//! Puts the git commit pgrepl is built from into `PGREPL_GIT_COMMIT`, for
//! `pgrepl --version`: the variable of the same name when set (the
//! Dockerfile passes it: its context has no .git), else `git rev-parse`
//! in a checkout, else the commit `cargo package` recorded in
//! .cargo_vcs_info.json (a crate tarball), else "unknown".

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PGREPL_GIT_COMMIT");
    let commit = match std::env::var("PGREPL_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => from_git()
            .or_else(from_vcs_info)
            .unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=PGREPL_GIT_COMMIT={commit}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The short commit of HEAD, when the package is a git checkout. A release
/// build (cargo install, just dist, the image) is rebuilt when HEAD moves;
/// a debug build keeps the commit it was first built at (following HEAD
/// would recompile pgrepl and every test binary after each commit, even
/// with no change to the code).
fn from_git() -> Option<String> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    // Only this package's own checkout: not a repository that happens to
    // contain an unpacked crate (cargo's registry cache under ~/.cargo).
    let top = git(&["-C", manifest.to_str()?, "rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != manifest.canonicalize().ok()? {
        return None;
    }
    let dir = manifest.to_str()?;
    if std::env::var("PROFILE").as_deref() != Ok("release") {
        println!("cargo:rerun-if-changed=build.rs");
        return git(&["-C", dir, "rev-parse", "--short=12", "HEAD"]);
    }
    for file in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["-C", dir, "rev-parse", "--git-path", file]) {
            println!("cargo:rerun-if-changed={}", manifest.join(p).display());
        }
    }
    if let Some(head_ref) = git(&["-C", dir, "symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["-C", dir, "rev-parse", "--git-path", &head_ref]) {
            println!("cargo:rerun-if-changed={}", manifest.join(p).display());
        }
    }
    git(&["-C", dir, "rev-parse", "--short=12", "HEAD"])
}

/// The commit `cargo package` wrote into a crate tarball's
/// .cargo_vcs_info.json (`"sha1": "..."`).
fn from_vcs_info() -> Option<String> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let text = std::fs::read_to_string(manifest.join(".cargo_vcs_info.json")).ok()?;
    let after = text.split("\"sha1\"").nth(1)?;
    let sha: String = after
        .chars()
        .skip_while(|c| !c.is_ascii_hexdigit())
        .take_while(char::is_ascii_hexdigit)
        .collect();
    (sha.len() >= 12).then(|| sha[..12].to_string())
}
