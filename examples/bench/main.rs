//! `just bench`: pgrepl measured side by side with what users would pick
//! instead, on the same data, the same machine, the same run, reported as
//! ratios. `--quick` for a short version. The table is printed and written
//! to bench-results/ (latest.md and a dated copy; latest-only.md for a
//! `--only` run, latest-quick.md for `--quick`).

#[path = "../../tests/support/mod.rs"]
mod support;

mod anchors;
mod apply;
mod copy;
mod cpu;
mod ddl;
mod drain;
mod env;
mod finish;
mod keep_up;
mod observe;
mod report;
mod resume;
mod scale;
mod server;

use std::path::PathBuf;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("rss") {
        env::rss_mode(&args);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only: Vec<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok());
    const PARTS: [&str; 8] = [
        "copy", "apply", "ddl", "verify", "cutover", "scale", "server", "resume",
    ];
    if let Some(bad) = only.iter().find(|o| !PARTS.contains(&o.as_str())) {
        eprintln!(
            "bench: unknown part `{bad}` after --only: pick from {}",
            PARTS.join(",")
        );
        std::process::exit(2);
    }
    let wants = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    let env = env::Env::new(quick, rounds);
    let version = support::pg::major_of(&env.pg.bin_dir().join("postgres")).unwrap_or(0);
    let mut report = report::Report::new(report::machine(&version.to_string(), quick));
    println!("{}", report.machine);
    if wants("copy") {
        copy::run(&env, &mut report).await;
    }
    if wants("apply") {
        apply::run(&env, &mut report).await;
    }
    if wants("ddl") {
        ddl::run(&env, &mut report).await;
    }
    if wants("verify") {
        finish::verify(&env, &mut report).await;
    }
    if wants("cutover") {
        finish::cutover(&env, &mut report).await;
    }
    if wants("scale") {
        scale::run(&env, &mut report).await;
    }
    if wants("server") {
        server::run(&env, &mut report).await;
    }
    if wants("resume") {
        resume::run(&env, &mut report).await;
    }
    let table = report.markdown();
    println!("\n{table}");
    let dir = support::pg::repo_root().join("bench-results");
    std::fs::create_dir_all(&dir).expect("create bench-results");
    let stamp = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y%m%d-%H%M")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // latest.md stays the full run the README shows; a partial run
    // (`--only`) or a quick one goes to a file of its own.
    let kind = match (quick, only.is_empty()) {
        (true, _) => "-quick",
        (false, false) => "-only",
        (false, true) => "",
    };
    let name = format!("latest{kind}.md");
    for file in [dir.join(&name), dir.join(format!("{stamp}{kind}.md"))] {
        std::fs::write(&file, &table).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    }
    println!(
        "written to {}",
        PathBuf::from("bench-results").join(&name).display()
    );
    if !quick && only.is_empty() {
        readme_table(&table);
    }
}

/// The README shows the latest full run, between its bench markers.
fn readme_table(table: &str) {
    let path = support::pg::repo_root().join("README.md");
    let Ok(readme) = std::fs::read_to_string(&path) else {
        return;
    };
    let (start, end) = ("<!-- bench:start -->", "<!-- bench:end -->");
    let (Some(a), Some(b)) = (readme.find(start), readme.find(end)) else {
        println!("README.md has no bench markers: not updated");
        return;
    };
    let updated = format!(
        "{}{start}\n{}\n{}",
        &readme[..a],
        table.trim_end(),
        &readme[b..]
    );
    std::fs::write(&path, updated).expect("write README.md");
    println!("README.md updated");
}
