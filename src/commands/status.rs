//! `pgrepl status`: where a sync stands, from another shell.

use std::process::ExitCode;

use crate::cli::StatusArgs;
use crate::progress::status;

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (source, target) = super::endpoints(&args.endpoints)?;
    let (src, tgt) = tokio::try_join!(source.connect(), target.connect())?;
    let decoder = source.connect_decoder().await?;
    let report = status::report(&src, decoder.as_ref(), &tgt, &args.endpoints.name)
        .await?
        .with_failover(&source, &src, &args.endpoints.name)
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::SUCCESS)
}
