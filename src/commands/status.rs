//! `pgrepl status`: where a sync stands, from another shell.

use std::process::ExitCode;

use crate::cli::StatusArgs;
use crate::progress::status;

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.endpoints.databases.any() {
        return super::server::each(&args.endpoints, |m| {
            let args = &args;
            async move { one(args, &m.source, &m.target, &m.name).await }
        })
        .await;
    }
    let (source, target) = super::endpoints(&args.endpoints)?;
    one(&args, &source, &target, &args.endpoints.name).await
}

async fn one(
    args: &StatusArgs,
    source: &crate::conn::Endpoint,
    target: &crate::conn::Endpoint,
    name: &crate::sql::SyncName,
) -> anyhow::Result<ExitCode> {
    let tgt = match target.connect().await {
        Err(e)
            if args.endpoints.databases.any()
                && e.failure == crate::conn::ConnectFailure::NoDatabase =>
        {
            crate::say!(
                "NOT SYNCED: the target has no database {:?} (created on the source after the move started?): run the same `pgrepl sync` again to copy it",
                target.config.dbname
            );
            return Ok(ExitCode::SUCCESS);
        }
        other => other?,
    };
    let src = source.connect().await?;
    let decoder = source.connect_decoder().await?;
    let report = status::report(&src, decoder.as_ref(), &tgt, name)
        .await?
        .with_failover(source, &src, name)
        .await?;
    // What a cutover left: done, running, or a fence with nobody behind it.
    let cutover = crate::cutover::abandon::Standing::read(&src, &tgt, name).await?;
    if args.json {
        let full = crate::cutover::abandon::WithCutover {
            report: &report,
            cutover: &cutover,
        };
        println!("{}", serde_json::to_string_pretty(&full)?);
    } else {
        let mut text = report.render();
        if let Some(line) = cutover.render(name) {
            text = format!("{}\n{line}", text.trim_end_matches('\n'));
        }
        print!("{}", crate::progress::scope::prefixed(&text) + "\n");
    }
    Ok(ExitCode::SUCCESS)
}
