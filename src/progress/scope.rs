//! Which database a task works for, in a process that moves several at
//! once (`sync --all-databases`): its telemetry (metrics labelled with the
//! database) and the prefix of what it prints. Carried by a tokio
//! task-local; tasks the library spawns inherit it through [`spawn`].
//! Outside a scope (one database) everything is as before: the process's
//! own telemetry, no prefix.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::telemetry::Telemetry;

tokio::task_local! {
    static SCOPE: Scope;
}

/// One database's part of the process.
#[derive(Clone)]
pub struct Scope {
    pub database: Arc<str>,
    pub telemetry: &'static Telemetry,
    /// Turns true when this database's work is to stop (another
    /// database's failed): as a signal would stop it.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// Runs `f` for `scope`.
pub async fn within<F: Future>(scope: Scope, f: F) -> F::Output {
    let t = scope.telemetry;
    SCOPE.scope(scope, super::telemetry::within(t, f)).await
}

/// The scope of the running task, if any.
pub fn current() -> Option<Scope> {
    SCOPE.try_with(Clone::clone).ok()
}

/// `f`, bound to the running task's scope (for `JoinSet::spawn` and the
/// like).
pub fn bound<F>(f: F) -> Pin<Box<dyn Future<Output = F::Output> + Send>>
where
    F: Future + Send + 'static,
{
    use tracing::Instrument;
    match current() {
        // The database's span too: log lines of the task name it.
        Some(s) => {
            let t = s.telemetry;
            Box::pin(SCOPE.scope(s, super::telemetry::within(t, f.in_current_span())))
        }
        None => Box::pin(f),
    }
}

/// `tokio::spawn`, the task keeping the spawner's scope.
pub fn spawn<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(bound(f))
}

/// What a line printed for the user starts with: `[db] ` in a scope.
pub fn prefix() -> String {
    match current() {
        Some(s) => format!("[{}] ", s.database),
        None => String::new(),
    }
}

/// `text` with every line prefixed (see [`prefix`]).
pub fn prefixed(text: &str) -> String {
    let p = prefix();
    if p.is_empty() {
        return text.to_string();
    }
    text.lines()
        .map(|l| format!("{p}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints a line for the user on stdout, each line prefixed in a scope.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", $crate::progress::scope::prefixed(&format!($($arg)*)))
    };
}

/// The same on stderr.
#[macro_export]
macro_rules! say_err {
    ($($arg:tt)*) => {
        eprintln!("{}", $crate::progress::scope::prefixed(&format!($($arg)*)))
    };
}
