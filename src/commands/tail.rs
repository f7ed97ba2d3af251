//! `pgrepl tail`: decoded changes as JSON lines until Ctrl-C.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::TailArgs;
use crate::conn::{ConnConfig, Endpoint, Side};
use crate::sql::SyncName;
use crate::tail::{self, SlotChoice, TailRequest};

pub async fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    let config =
        ConnConfig::resolve(&args.source, &crate::conn::config::ProcessEnv).context("--source")?;
    let slot = match &args.slot {
        Some(s) => SlotChoice::Existing(SyncName::existing_slot(s).context("--slot")?),
        None => SlotChoice::Temporary,
    };
    let publication = args
        .publication
        .as_deref()
        .map(SyncName::existing_publication)
        .transpose()
        .context("--publication")?;
    let req = TailRequest {
        source: Endpoint::new(Side::Source, config),
        name: args.name.clone(),
        slot,
        publication,
        selection: args.tables.selection(),
        advance: args.advance,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        if super::shutdown_signal().await.is_ok() {
            let _ = stop_tx.send(true);
        }
    });
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let tailed = tail::run(&req, &mut out, stop_rx).await;
    signals.abort();
    let tailed = tailed?;
    tracing::info!(
        records = tailed.records,
        transactions = tailed.transactions,
        "tail stopped"
    );
    Ok(ExitCode::SUCCESS)
}
