//! `pgrepl verify`: compares source and target at one LSN and prints the
//! report; exit 0 when equal, 1 when not.

use std::process::ExitCode;

use crate::cli::VerifyArgs;
use crate::progress::ui::ProgressMode;
use crate::verify::{self, VerifyRequest};

pub async fn run(args: VerifyArgs, json_logs: bool) -> anyhow::Result<ExitCode> {
    if args.endpoints.databases.any() {
        return super::server::each(&args.endpoints, |m| {
            let args = &args;
            async move { one(args, &m.source, &m.target, &m.name, json_logs).await }
        })
        .await;
    }
    let (source, target) = super::endpoints(&args.endpoints)?;
    one(&args, &source, &target, &args.endpoints.name, json_logs).await
}

async fn one(
    args: &VerifyArgs,
    source: &crate::conn::Endpoint,
    target: &crate::conn::Endpoint,
    name: &crate::sql::SyncName,
    json_logs: bool,
) -> anyhow::Result<ExitCode> {
    let selection = args.tables.selection();
    let jobs = args.jobs.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let req = VerifyRequest {
        name,
        source,
        target,
        selection: (!selection.is_everything()).then_some(selection),
        jobs,
        chunk_rows: args.chunk_rows,
        mode: if args.stopped {
            verify::Mode::Stopped
        } else {
            verify::Mode::Running
        },
        wait: args.wait,
        progress: if args.json {
            ProgressMode::Lines
        } else {
            ProgressMode::detect(json_logs)
        },
    };
    let report = verify::run(&req).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!(
            "{}",
            crate::progress::scope::prefixed(&report.render()) + "\n"
        );
    }
    Ok(if report.equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
