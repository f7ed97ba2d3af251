//! `sync --listen ADDR`: what a running sync serves over HTTP (axum).
//!
//! - `/metrics`: the telemetry in the Prometheus text format;
//! - `/status`: the same JSON as `pgrepl status --json`;
//! - `/live`: what the page draws (phase, the copy's tables with ETA, the
//!   lag history, the slot's WAL, the last warnings and errors);
//! - `/`: one self-contained page (no external assets) that refreshes
//!   itself;
//! - `/healthz`: 200 while copying or streaming and not retrying for more
//!   than half of `--retry-for`, else 503 saying why.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use crate::conn::Endpoint;
use crate::progress::telemetry::{telemetry, Event, LagPoint, SlotHealth, TableProgress};
use crate::sql::SyncName;

#[derive(Debug, thiserror::Error)]
#[error("--listen {addr}: {message}: pick another address or port")]
pub struct ListenError {
    pub addr: SocketAddr,
    pub message: String,
}

/// What the handlers need.
pub struct Context {
    pub name: SyncName,
    pub source: Endpoint,
    pub target: Endpoint,
    pub retry_for: Duration,
    /// A whole-server move: each database's sync (empty for one sync).
    pub databases: Vec<Member>,
}

/// One database of a whole-server move, as the listener shows it.
#[derive(Clone, Debug)]
pub struct Member {
    pub database: String,
    pub name: SyncName,
    pub source: Endpoint,
    pub target: Endpoint,
}

/// Binds now (so a taken port fails the sync before it changes
/// anything); serves once the returned future is awaited.
pub async fn bind(
    addr: SocketAddr,
    ctx: Context,
) -> Result<impl std::future::Future<Output = ()>, ListenError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ListenError {
            addr,
            message: e.to_string(),
        })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(listen = %bound, "serving /metrics, /status, /healthz and the status page at http://{bound}/");
    let app = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/live", get(live_handler))
        .route("/healthz", get(healthz))
        .with_state(Arc::new(ctx));
    Ok(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP listener stopped");
        }
    })
}

async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::progress::telemetry::render_all(),
    )
        .into_response()
}

async fn status(State(ctx): State<Arc<Context>>) -> Response {
    if !ctx.databases.is_empty() {
        return server_status(&ctx).await;
    }
    let report = report_json(&ctx.source, &ctx.target, &ctx.name);
    match tokio::time::timeout(Duration::from_secs(10), report).await {
        Ok(Ok(r)) => axum::Json(r).into_response(),
        Ok(Err(e)) => unavailable(e),
        Err(_) => unavailable("the servers did not answer within 10 s".into()),
    }
}

/// One sync's report as `pgrepl status --json` gives it: the status, the
/// failover slot's state, and what a cutover left.
async fn report_json(
    source: &Endpoint,
    target: &Endpoint,
    name: &SyncName,
) -> Result<serde_json::Value, String> {
    let (src, tgt) =
        tokio::try_join!(source.connect(), target.connect()).map_err(|e| e.to_string())?;
    let decoder = source.connect_decoder().await.map_err(|e| e.to_string())?;
    let report = crate::progress::status::report(&src, decoder.as_ref(), &tgt, name)
        .await
        .map_err(|e| e.to_string())?
        .with_failover(source, &src, name)
        .await
        .map_err(|e| e.to_string())?;
    let cutover = crate::cutover::abandon::Standing::read(&src, &tgt, name)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::to_value(crate::cutover::abandon::WithCutover {
        report: &report,
        cutover: &cutover,
    })
    .map_err(|e| e.to_string())
}

fn unavailable(error: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

/// What the page shows.
#[derive(Serialize)]
pub struct Live {
    pub sync: String,
    pub phase: &'static str,
    pub uptime_seconds: f64,
    pub lag_bytes: i64,
    pub lag_seconds: f64,
    pub applied_transactions: u64,
    pub applied_rows: u64,
    pub sequences_behind: i64,
    pub retrying_seconds: Option<f64>,
    pub tables: Vec<TableProgress>,
    pub history: Vec<LagPoint>,
    pub slot: SlotHealth,
    pub recent: Vec<Event>,
}

pub fn live(name: &SyncName) -> Live {
    live_of(telemetry(), name)
}

fn live_of(t: &crate::progress::telemetry::Telemetry, name: &SyncName) -> Live {
    Live {
        sync: name.to_string(),
        phase: t.phase(),
        uptime_seconds: t.uptime_seconds(),
        lag_bytes: t.lag_bytes.get(),
        lag_seconds: t.lag_seconds.get(),
        applied_transactions: t.applied_transactions.get(),
        applied_rows: t.applied_rows.get(),
        sequences_behind: t.sequences_behind.get(),
        retrying_seconds: t.retrying_for().map(|d| d.as_secs_f64()),
        tables: t.tables(),
        history: t.history(),
        slot: t.slot(),
        recent: t.recent(),
    }
}

/// What the whole-server page shows: a row per database.
#[derive(Serialize)]
pub struct ServerLive {
    pub databases: Vec<DatabaseLive>,
    pub unsynced: Vec<String>,
}

#[derive(Serialize)]
pub struct DatabaseLive {
    pub database: String,
    pub live: Live,
}

fn server_live(ctx: &Context) -> ServerLive {
    let all = crate::progress::telemetry::databases();
    ServerLive {
        databases: ctx
            .databases
            .iter()
            .filter_map(|m| {
                let t = all
                    .iter()
                    .find(|t| t.database.as_deref() == Some(m.database.as_str()))?;
                Some(DatabaseLive {
                    database: m.database.clone(),
                    live: live_of(t, &m.name),
                })
            })
            .collect(),
        unsynced: crate::progress::telemetry::unsynced_databases(),
    }
}

/// `/status` of a whole-server move: each database's report, as `status`
/// of that database's sync gives it (its cutover included), read for all
/// databases at once. A database whose report fails has its error in its
/// place, the others theirs, and the answer is 503.
async fn server_status(ctx: &Context) -> Response {
    let reports = futures_util::future::join_all(ctx.databases.iter().map(|m| async move {
        match report_json(&m.source, &m.target, &m.name).await {
            Ok(r) => (
                true,
                serde_json::json!({ "database": m.database, "status": r }),
            ),
            Err(e) => (
                false,
                serde_json::json!({ "database": m.database, "error": e }),
            ),
        }
    }));
    match tokio::time::timeout(Duration::from_secs(20), reports).await {
        Ok(r) => {
            let code = if r.iter().all(|(ok, _)| *ok) {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let databases: Vec<serde_json::Value> = r.into_iter().map(|(_, v)| v).collect();
            (
                code,
                axum::Json(serde_json::json!({
                    "databases": databases,
                    "unsynced": crate::progress::telemetry::unsynced_databases(),
                })),
            )
                .into_response()
        }
        Err(_) => unavailable("the servers did not answer within 20 s".into()),
    }
}

async fn live_handler(State(ctx): State<Arc<Context>>) -> Response {
    if !ctx.databases.is_empty() {
        return axum::Json(server_live(&ctx)).into_response();
    }
    axum::Json(live(&ctx.name)).into_response()
}

async fn page(State(ctx): State<Arc<Context>>) -> Html<String> {
    if !ctx.databases.is_empty() {
        let initial = serde_json::to_string(&server_live(&ctx))
            .unwrap_or_else(|_| "null".into())
            .replace("</", "<\\/");
        return Html(
            include_str!("server.html")
                .replace("__SYNC__", &html_escape(ctx.name.as_str()))
                .replace("__INITIAL__", &initial),
        );
    }
    // The first picture is in the page itself (no request needed to
    // draw it); the script refreshes it from /live.
    let initial = serde_json::to_string(&live(&ctx.name))
        .unwrap_or_else(|_| "null".into())
        .replace("</", "<\\/");
    Html(
        include_str!("page.html")
            .replace("__SYNC__", &html_escape(ctx.name.as_str()))
            .replace("__INITIAL__", &initial),
    )
}

async fn healthz(State(ctx): State<Arc<Context>>) -> Response {
    if !ctx.databases.is_empty() {
        // Healthy when every database is.
        let all = crate::progress::telemetry::databases();
        for t in &all {
            let (phase, retrying) = (t.phase(), t.retrying_for());
            let db = t.database.clone().unwrap_or_default();
            if !matches!(phase, "copying" | "streaming") {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{db}: not running: {phase}\n"),
                )
                    .into_response();
            }
            if retrying.is_some_and(|d| d > ctx.retry_for / 2) {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{db}: retrying for more than half of --retry-for\n"),
                )
                    .into_response();
            }
        }
        return (StatusCode::OK, format!("ok: {} database(s)\n", all.len())).into_response();
    }
    let t = telemetry();
    let phase = t.phase();
    let retrying = t.retrying_for();
    let healthy_phase = matches!(phase, "copying" | "streaming");
    match (healthy_phase, retrying) {
        (true, Some(d)) if d > ctx.retry_for / 2 => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "retrying for {} (more than half of --retry-for)\n",
                crate::progress::human_duration(d)
            ),
        )
            .into_response(),
        (true, _) => (StatusCode::OK, format!("ok: {phase}\n")).into_response(),
        (false, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not running: {phase}\n"),
        )
            .into_response(),
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
