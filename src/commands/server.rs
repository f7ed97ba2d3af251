//! Whole-server commands (`--all-databases`, `--databases a,b`): the
//! databases chosen on the source, each run as its own sync (`NAME_DB`:
//! its slot, publication, DDL capture and target origin) in this one
//! process, under a scope that names it in logs, output and metrics (see
//! `progress::scope`). What is the server's is done once: roles, the
//! target's databases, the copy workers' pool, the connection budget.
//!
//! The rule for failures: one database's sync failing stops the others
//! cleanly (each at a transaction boundary, its position durable), and the
//! command fails naming the database; a restart resumes each where it
//! stood.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use tracing::Instrument;

use crate::carry::{Plan, RolesPolicy, TargetView};
use crate::cli::SyncArgs;
use crate::conn::error::describe;
use crate::conn::Endpoint;
use crate::progress::scope::{self, Scope};
use crate::server::databases::{self, SourceDatabase};
use crate::source::inventory::{Inventory, RolesScope};
use crate::sql::SyncName;

/// One database of the move: its sync's name and endpoints.
#[derive(Clone, Debug)]
pub(super) struct Member {
    pub database: SourceDatabase,
    pub name: SyncName,
    pub source: Endpoint,
    pub target: Endpoint,
}

/// The chosen databases, largest first, each with its sync.
pub(super) async fn members(
    source: &Endpoint,
    target: &Endpoint,
    src: &tokio_postgres::Client,
    base: &SyncName,
    args: &crate::cli::DatabaseArgs,
) -> anyhow::Result<Vec<Member>> {
    let all = databases::list(src)
        .await
        .map_err(|e| anyhow::anyhow!("source: listing databases: {}", describe(&e)))?;
    let chosen = databases::choose(all, args).map_err(|e| anyhow::anyhow!("source: {e}"))?;
    // Slots and origins are the server's: two databases must never share
    // a sync name (a long --name leaves too little room to tell them apart).
    if base.as_str().len() > databases::LONGEST_BASE {
        bail!(
            "--name {base} is too long for a whole-server move: at most {} characters, so each database's sync (NAME_DB) keeps a name of its own",
            databases::LONGEST_BASE
        );
    }
    let members: Vec<Member> = chosen
        .into_iter()
        .map(|db| {
            let on = |e: &Endpoint| Endpoint {
                side: e.side,
                config: databases::on_database(&e.config, &db.name),
                standby: e
                    .standby
                    .as_ref()
                    .map(|s| Box::new(databases::on_database(s, &db.name))),
            };
            Member {
                name: databases::sync_name(base, &db.name),
                source: on(source),
                target: on(target),
                database: db,
            }
        })
        .collect();
    for (i, m) in members.iter().enumerate() {
        if let Some(other) = members[..i].iter().find(|o| o.name == m.name) {
            bail!(
                "databases {:?} and {:?} would share sync name {}: use a shorter --name",
                other.database.name,
                m.database.name,
                m.name
            );
        }
    }
    Ok(members)
}

/// The scope a member's work runs in.
fn scope_of(base: &SyncName, m: &Member, stop: &tokio::sync::watch::Receiver<bool>) -> Scope {
    Scope {
        database: Arc::from(m.database.name.as_str()),
        telemetry: crate::progress::telemetry::for_database(base.as_str(), &m.database.name),
        stop: stop.clone(),
    }
}

/// `sync --all-databases`: roles once, the target's databases made as on
/// the source, then every database's sync at once.
pub(super) async fn sync(args: SyncArgs, json_logs: bool) -> anyhow::Result<ExitCode> {
    let (source, target) = super::endpoints(&args.endpoints)?;
    let base = args.endpoints.name.clone();
    crate::progress::telemetry::init(base.as_str()).set_phase("checking");
    let (src, tgt) = tokio::try_join!(source.connect(), target.connect())?;
    let members = members(&source, &target, &src, &base, &args.endpoints.databases).await?;
    // What would stop every database alike, before anything is made.
    if !args.existing_schema {
        let facts = crate::source::catalog::ServerFacts::read(&src)
            .await
            .map_err(|e| anyhow::anyhow!("source: {}", describe(&e)))?;
        crate::snapshot::pgdump::find(args.pg_dump.as_deref(), facts.major() as u32)?;
    }
    let jobs = args.jobs.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let (src_room, tgt_room) = tokio::try_join!(
        crate::server::budget::room(&src),
        crate::server::budget::room(&tgt)
    )
    .map_err(|e| anyhow::anyhow!("reading the servers' limits: {e}"))?;
    crate::server::budget::judge(
        members.len(),
        jobs,
        args.max_connections,
        src_room,
        tgt_room,
    )
    .map_err(|e| anyhow::anyhow!("{e}; nothing was created"))?;
    let policy: Option<RolesPolicy> = args.roles.map(Into::into);
    if policy == Some(RolesPolicy::Copy) {
        carry_roles(&src, &tgt).await?;
    }
    let chosen: Vec<SourceDatabase> = members.iter().map(|m| m.database.clone()).collect();
    let (missing, problems) = crate::server::create::plan(&tgt, &chosen, false)
        .await
        .map_err(|e| anyhow::anyhow!("target: reading its databases: {}", describe(&e)))?;
    if !problems.is_empty() {
        let list: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.database, p.why))
            .collect();
        bail!(
            "target: {} database(s) cannot be made as on the source ({}); nothing was created",
            problems.len(),
            list.join("; ")
        );
    }
    crate::server::create::create(&tgt, &missing)
        .await
        .map_err(|(db, e)| anyhow::anyhow!("target: creating database {db}: {}", describe(&e)))?;
    drop((src, tgt));
    crate::snapshot::pool::share(jobs);
    let names: Vec<&str> = members.iter().map(|m| m.database.name.as_str()).collect();
    crate::say!(
        "Syncing {} database(s) in one process: {} ({} copy worker(s) shared).",
        members.len(),
        names.join(", "),
        jobs
    );
    if let Some(addr) = args.listen {
        let server = crate::observe::http::bind(
            addr,
            crate::observe::http::Context {
                name: base.clone(),
                source: source.clone(),
                target: target.clone(),
                retry_for: args.retry_for,
                databases: members
                    .iter()
                    .map(|m| crate::observe::http::Member {
                        database: m.database.name.clone(),
                        name: m.name.clone(),
                        source: m.source.clone(),
                        target: m.target.clone(),
                    })
                    .collect(),
            },
        )
        .await?;
        scope::spawn(server);
    }
    let watcher = tokio::spawn(watch_new_databases(
        source.clone(),
        args.endpoints.databases.clone(),
        names.iter().map(|n| n.to_string()).collect(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut set = tokio::task::JoinSet::new();
    for m in &members {
        let mut one_args = args.clone();
        one_args.endpoints.name = m.name.clone();
        one_args.endpoints.databases = Default::default();
        one_args.listen = None;
        let m = m.clone();
        let span = tracing::info_span!("db", database = %m.database.name);
        let scope = scope_of(&base, &m, &stop_rx);
        set.spawn(
            scope::within(scope, async move {
                let r = super::sync::one(&one_args, &m.source, &m.target, json_logs).await;
                (m.database.name, r)
            })
            .instrument(span),
        );
    }
    let mut failed: Vec<String> = Vec::new();
    let mut code = ExitCode::SUCCESS;
    while let Some(joined) = set.join_next().await {
        let (db, result) = joined.context("a database's sync panicked")?;
        match result {
            Ok(c) if c == ExitCode::SUCCESS => {}
            Ok(c) => code = c,
            Err(e) => {
                tracing::error!(database = %db, error = %format!("{e:#}"), "this database's sync failed; stopping the others");
                failed.push(format!("{db}: {e:#}"));
                let _ = stop_tx.send(true);
            }
        }
    }
    watcher.abort();
    if !failed.is_empty() {
        bail!(
            "{} database(s) failed ({}); the others stopped with their positions durable: fix it and run the same command again",
            failed.len(),
            failed.join("; ")
        );
    }
    Ok(code)
}

/// Every role of the source server made on the target, once, before the
/// databases (their owners among them); each database's sync then finds
/// them there.
async fn carry_roles(
    src: &tokio_postgres::Client,
    tgt: &tokio_postgres::Client,
) -> anyhow::Result<()> {
    let inventory = Inventory::read_roles(src, RolesScope::Server)
        .await
        .map_err(|e| anyhow::anyhow!("source: reading roles: {}", describe(&e)))?;
    let view = TargetView::read(tgt)
        .await
        .map_err(|e| anyhow::anyhow!("target: reading roles: {}", describe(&e)))?;
    let plan = Plan::new(&inventory, &view, Some(RolesPolicy::Copy));
    let only_superuser = plan.need_superuser();
    if !view.superuser && !only_superuser.is_empty() {
        bail!(
            "target: role(s) {} need a superuser to be created (SUPERUSER, REPLICATION or BYPASSRLS): connect to the target as one, or create them first",
            only_superuser.join(", ")
        );
    }
    if plan.create.is_empty() && plan.memberships.is_empty() {
        return Ok(());
    }
    let database: String = tgt
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| anyhow::anyhow!("target: {}", describe(&e)))?
        .get(0);
    tgt.batch_execute("BEGIN")
        .await
        .map_err(|e| anyhow::anyhow!("target: {}", describe(&e)))?;
    for sql in crate::carry::roles::statements(&plan, &database, view.major, view.superuser) {
        if let Err(e) = tgt.batch_execute(&sql).await {
            let _ = tgt.batch_execute("ROLLBACK").await;
            bail!(
                "target: creating the source's roles: {} ({}); nothing was created",
                describe(&e),
                crate::carry::roles::redacted(&sql)
            );
        }
    }
    tgt.batch_execute("COMMIT")
        .await
        .map_err(|e| anyhow::anyhow!("target: creating the source's roles: {}", describe(&e)))?;
    let unreadable = plan.passwords_unreadable();
    crate::say!(
        "Roles: {} created for the server ({} already there){}.",
        plan.create.len(),
        plan.found.len(),
        if unreadable.is_empty() {
            String::new()
        } else {
            format!(
                "; passwords NOT copied (the source hides them): {}",
                Plan::password_statements(&unreadable)
            )
        }
    );
    Ok(())
}

/// How often the source is looked at for databases made since the start.
const NEW_DATABASES_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Warns, once each, about databases created on the source after the
/// move started: they are not synced.
async fn watch_new_databases(
    source: Endpoint,
    args: crate::cli::DatabaseArgs,
    synced: Vec<String>,
) {
    let mut warned: Vec<String> = Vec::new();
    loop {
        tokio::time::sleep(NEW_DATABASES_EVERY).await;
        let Ok(src) = source.connect().await else {
            continue;
        };
        let Ok(all) = databases::list(&src).await else {
            continue;
        };
        for db in all {
            let wanted = args.all_databases && !args.exclude_databases.contains(&db.name);
            if !wanted || synced.contains(&db.name) || warned.contains(&db.name) {
                continue;
            }
            crate::progress::telemetry::note_unsynced_database(&db.name);
            tracing::warn!(
                database = %db.name,
                "database {:?} was created on the source after this sync started: it is NOT synced. Stop this sync and run the same command again: it is copied then, the others resume",
                db.name
            );
            warned.push(db.name);
        }
    }
}

/// A whole-server command that is one command per database (status,
/// verify, teardown): `f` for each database in turn, under its scope (its
/// output prefixed with the database). Every database is visited even
/// when one fails; the failures are then named together.
pub(super) async fn each<F, Fut>(
    endpoints: &crate::cli::Endpoints,
    mut f: F,
) -> anyhow::Result<ExitCode>
where
    F: FnMut(Member) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let (source, target) = super::endpoints(endpoints)?;
    let base = endpoints.name.clone();
    let src = source.connect().await?;
    let members = members(&source, &target, &src, &base, &endpoints.databases).await?;
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut failed = Vec::new();
    let mut code = ExitCode::SUCCESS;
    for m in members {
        let db = m.database.name.clone();
        let scope = scope_of(&base, &m, &stop_rx);
        match scope::within(scope.clone(), f(m)).await {
            Ok(c) if c == ExitCode::SUCCESS => {}
            Ok(c) => code = c,
            Err(e) => {
                scope::within(scope, async { crate::say_err!("error: {e:#}") }).await;
                failed.push(db);
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} database(s) failed: {} (each one's error is above)",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(code)
}

/// `cutover --all-databases`: every database's cutover at once, meeting
/// at one fence and one "ready" (see `cutover::together`); any failure
/// lifts every fence.
pub(super) async fn cutover(
    args: crate::cli::CutoverArgs,
    json_logs: bool,
) -> anyhow::Result<ExitCode> {
    use crate::cutover::{self, together::Together, CutoverRequest};
    let (source, target) = super::endpoints(&args.endpoints)?;
    let base = args.endpoints.name.clone();
    let src = source.connect().await?;
    let members = members(&source, &target, &src, &base, &args.endpoints.databases).await?;
    drop(src);
    let together = Arc::new(Together::new(members.len()));
    let reverse_base = match SyncName::new(&format!("{base}_r")) {
        Ok(b) => Some(b),
        Err(_) if args.reverse => {
            bail!("--reverse names the way back {base}_r, which is too long: use a sync name of at most 38 characters")
        }
        Err(_) => None,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        if let Ok(signal) = super::shutdown_signal().await {
            eprintln!("{signal}: lifting every fence; the syncs go on as before");
            let _ = tx.send(true);
        }
    });
    let selection = args.tables.selection();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    eprintln!(
        "Cutting over {} database(s) as one: {}",
        members.len(),
        members
            .iter()
            .map(|m| m.database.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let started = std::time::Instant::now();
    let runs = members.iter().map(|m| {
        let req = CutoverRequest {
            name: &m.name,
            source: &m.source,
            target: &m.target,
            selection: (!selection.is_everything()).then(|| selection.clone()),
            max_lag_bytes: args.max_lag,
            max_lag_time: args.max_lag_time,
            wait: args.wait,
            terminate: args.terminate,
            verify: args.verify,
            reverse: args.reverse,
            jobs: args.jobs.map(usize::from).unwrap_or(2),
            progress: crate::progress::ui::ProgressMode::Lines,
            together: Some(together.clone()),
            // Named also without --reverse: a run again finds the way back
            // a dead run had begun by this name (see `cutover::reverse`).
            reverse_as: reverse_base
                .as_ref()
                .map(|b| databases::sync_name(b, &m.database.name)),
        };
        let scope = scope_of(&base, m, &stop_rx);
        let rx = rx.clone();
        let span = tracing::info_span!("db", database = %m.database.name);
        scope::within(scope, async move {
            let r = cutover::run(&req, rx).await;
            (m.database.name.clone(), r)
        })
        .instrument(span)
    });
    let results = futures_util::future::join_all(runs).await;
    signals.abort();
    let _ = json_logs;
    // Databases cut over by an earlier run that died before the others
    // were: they count as done, the others finish now.
    let done_before = |r: &Result<_, cutover::CutoverError>| {
        matches!(r, Err(cutover::CutoverError::AlreadyCutOver { .. }))
    };
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, r)| !done_before(r))
        .filter_map(|(db, r)| r.as_ref().err().map(|e| format!("{db}: {e}")))
        .collect();
    if !failed.is_empty() {
        let lasting = results
            .iter()
            .any(|(_, r)| matches!(r, Err(cutover::CutoverError::AfterFence(_))));
        bail!(
            "{}: {}",
            if lasting {
                "cutover failed; a database whose error says its fence stands keeps it (`pgrepl status` says what to do), every other fence this run put up is lifted"
            } else {
                "cutover abandoned; every fence this run put up is lifted, and the sources not yet cut over take writes as before"
            },
            failed.join("; ")
        );
    }
    let earlier: Vec<&str> = results
        .iter()
        .filter(|(_, r)| done_before(r))
        .map(|(db, _)| db.as_str())
        .collect();
    if earlier.len() == results.len() {
        bail!("every database was cut over already: nothing to do");
    }
    if !earlier.is_empty() {
        eprintln!(
            "Cut over by an earlier run already: {} (the others are now).",
            earlier.join(", ")
        );
    }
    let downtime = together
        .first_fence()
        .map(|t| t.elapsed().as_millis())
        .unwrap_or_default();
    let sequences: usize = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|s| s.sequences_set))
        .sum();
    if args.json {
        let summaries: Vec<serde_json::Value> = results
            .iter()
            .filter_map(|(db, r)| {
                r.as_ref()
                    .ok()
                    .map(|s| serde_json::json!({ "database": db, "summary": s }))
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "databases": summaries,
                "write_downtime_ms": downtime,
                "total_ms": started.elapsed().as_millis(),
            }))?
        );
    } else {
        println!(
            "The target server is ready: {} database(s) cut over as one; switch the application to {}. Write downtime {downtime} ms (from the first fence to the last target ready; whole cutover {} ms); {sequences} sequence(s) set{}.",
            results.len(),
            target.config,
            started.elapsed().as_millis(),
            if args.verify { "; verified equal" } else { "" }
        );
        if let Some(b) = reverse_base.as_ref().filter(|_| args.reverse) {
            let names: Vec<&str> = members.iter().map(|m| m.database.name.as_str()).collect();
            println!(
                "The way back is ready: `pgrepl sync --name {b} --databases {} --source <the target> --target <the old source>` carries the application's writes back; `pgrepl cutover --name {b} --databases ...` returns.",
                names.join(",")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `check --all-databases`: what the server needs (connections, walsenders,
/// slots), which target databases would be made and whether they can be,
/// then each database's own preflight where the target has it already.
pub(super) async fn check(args: crate::cli::CheckArgs) -> anyhow::Result<ExitCode> {
    let (source, target) = super::endpoints(&args.endpoints)?;
    let base = args.endpoints.name.clone();
    let (src, tgt) = tokio::try_join!(source.connect(), target.connect())?;
    let members = members(&source, &target, &src, &base, &args.endpoints.databases).await?;
    let jobs = args.jobs.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let mut errors = 0;
    let (src_room, tgt_room) = tokio::try_join!(
        crate::server::budget::room(&src),
        crate::server::budget::room(&tgt)
    )
    .map_err(|e| anyhow::anyhow!("reading the servers' limits: {e}"))?;
    let (need_src, need_tgt) = crate::server::budget::needed(members.len(), jobs);
    match crate::server::budget::judge(members.len(), jobs, args.max_connections, src_room, tgt_room) {
        Ok(()) => println!(
            "ok     server connections: {} database(s) with {jobs} copy worker(s) need about {need_src} sessions on the source ({} free) and {need_tgt} on the target ({} free)",
            members.len(),
            src_room.connections,
            tgt_room.connections
        ),
        Err(e) => {
            errors += 1;
            println!("ERROR  server connections: {e}");
        }
    }
    let chosen: Vec<SourceDatabase> = members.iter().map(|m| m.database.clone()).collect();
    let roles_copy = args.roles.map(Into::into) == Some(RolesPolicy::Copy);
    let (missing, problems) = crate::server::create::plan(&tgt, &chosen, roles_copy)
        .await
        .map_err(|e| anyhow::anyhow!("target: reading its databases: {}", describe(&e)))?;
    for p in &problems {
        errors += 1;
        println!(
            "ERROR  server database {}: cannot be made on the target as on the source: {}",
            p.database, p.why
        );
    }
    let made: Vec<&str> = missing.iter().map(|d| d.name.as_str()).collect();
    if !made.is_empty() {
        println!(
            "ok     server databases: {} will be made on the target as on the source",
            made.join(", ")
        );
    }
    drop((src, tgt));
    let code = each(&args.endpoints, |m| {
        let args = &args;
        let made = &made;
        async move {
            if made.contains(&m.database.name.as_str()) {
                return Ok(ExitCode::SUCCESS);
            }
            super::check::one(args, &m.source, &m.target, &m.name).await
        }
    })
    .await?;
    if errors > 0 {
        return Ok(ExitCode::from(1));
    }
    Ok(code)
}
