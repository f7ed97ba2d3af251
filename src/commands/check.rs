//! `pgrepl check`: the preflight report, nothing changed.

use std::process::ExitCode;

use crate::check::{self, CheckOptions};
use crate::cli::CheckArgs;

/// One database's preflight (`server::check` runs every database's).
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (source, target) = super::endpoints(&args.endpoints)?;
    one(&args, &source, &target, &args.endpoints.name).await
}

/// One database's preflight.
pub(super) async fn one(
    args: &CheckArgs,
    source: &crate::conn::Endpoint,
    target: &crate::conn::Endpoint,
    name: &crate::sql::SyncName,
) -> anyhow::Result<ExitCode> {
    let (source, target) = (source.clone(), target.clone());
    let (src, tgt) = tokio::try_join!(source.connect(), target.connect())?;
    let opts = CheckOptions {
        name: name.clone(),
        selection: args.tables.selection(),
        existing_schema: args.existing_schema,
        ddl: !args.no_ddl,
        resuming: false,
        roles: args.roles.map(Into::into),
        failover_slot: args.failover_slot,
    };
    let preflight = check::run(&source, &target, &src, &tgt, &opts).await?;
    if args.json {
        println!("{}", preflight.report.to_json());
    } else {
        println!(
            "{}",
            crate::progress::scope::prefixed(
                &preflight.report.render(crate::logging::terminal_width())
            )
        );
    }
    Ok(if preflight.report.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
