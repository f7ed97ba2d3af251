//! `pgrepl install-capture`: the DDL capture and the cutover's DDL fence,
//! made by a role that may create event triggers for one that may not.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::InstallCaptureArgs;
use crate::conn::{ConnConfig, Endpoint, Side};

/// The whole script, in one transaction that pgrepl's own capture does
/// not log.
fn script(role: &str) -> String {
    format!(
        "BEGIN;\nSET LOCAL pgrepl.internal = 'on';\n{}\n{}COMMIT;\n",
        crate::ddl::capture::install_for(role),
        crate::cutover::fence::install_for(role)
    )
}

pub async fn run(args: InstallCaptureArgs) -> anyhow::Result<ExitCode> {
    let sql = script(&args.role);
    if args.print {
        print!("{sql}");
        return Ok(ExitCode::SUCCESS);
    }
    let conninfo = args
        .source
        .as_deref()
        .context("--source is needed without --print")?;
    let config =
        ConnConfig::resolve(conninfo, &crate::conn::config::ProcessEnv).context("--source")?;
    let client = Endpoint::new(Side::Source, config).connect().await?;
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &[&args.role],
        )
        .await
        .map_err(|e| anyhow::anyhow!("source: {}", crate::conn::error::describe(&e)))?
        .get(0);
    if !exists {
        anyhow::bail!(
            "source: role {:?} does not exist: create it first, or name the role pgrepl sync connects as",
            args.role
        );
    }
    if let Err(e) = client.batch_execute(&sql).await {
        let _ = client.batch_execute("ROLLBACK").await;
        anyhow::bail!(
            "source: installing the DDL capture (nothing was changed): {}",
            crate::conn::error::describe(&e)
        );
    }
    println!(
        "Installed the DDL capture and the cutover's DDL fence for role {:?}: `pgrepl sync` as that role now replicates DDL, and `pgrepl cutover` fences it.",
        args.role
    );
    Ok(ExitCode::SUCCESS)
}
