//! Runs the pgrepl binary the way a user does: as a process, with
//! arguments, reading its output and exit code.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub fn binary() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_pgrepl") {
        return PathBuf::from(p);
    }
    // Examples live in target/<profile>/examples; the binary one level up.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    dir.join("pgrepl")
}

/// What a finished run printed and returned.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The one `error: ...` line a failed run prints.
    pub fn error_line(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("no error line in:\n{self}"))
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(binary());
    c.args(args)
        .env_remove("PGREPL_SOURCE")
        .env_remove("PGREPL_TARGET")
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/nonexistent")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // pgrepl finds its pg_dump itself, as for a user: the newest this
    // machine has (the repo's cached client tools 18) is on the PATH.
    c.env_remove("PGREPL_PG_DUMP");
    if let Some(dir) = super::pg::newest_pg_dump().and_then(|p| p.parent().map(|d| d.to_path_buf()))
    {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![dir];
        dirs.extend(std::env::split_paths(&path));
        c.env("PATH", std::env::join_paths(dirs).expect("PATH entries"));
    }
    c
}

/// Runs pgrepl to completion (panics if it takes longer than `limit`).
pub async fn run(args: &[&str], limit: Duration) -> Output {
    run_with_env(args, &[], limit).await
}

pub async fn run_with_env(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut c = command(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().expect("spawn pgrepl");
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.expect("wait for pgrepl");
            Output {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => panic!("pgrepl {args:?} did not finish within {limit:?}"),
    }
}

/// A pgrepl process running in the background; its output is collected.
pub struct Running {
    pub child: Child,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

pub fn spawn(args: &[&str]) -> Running {
    spawn_with_env(args, &[])
}

pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut c = command(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("spawn pgrepl");
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let buf = stdout.clone();
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let mut b = buf.lock().expect("output lock");
                b.push_str(&l);
                b.push('\n');
            }
        }));
    }
    if let Some(err) = child.stderr.take() {
        let buf = stderr.clone();
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let mut b = buf.lock().expect("output lock");
                b.push_str(&l);
                b.push('\n');
            }
        }));
    }
    Running {
        child,
        stdout,
        stderr,
        readers,
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- pgrepl output so far\n{}\n---", self.output_so_far());
        }
    }
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id().expect("running child has a pid") as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Panics with everything it printed if the process has ended.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("pgrepl ended early ({status}):\n{}", self.output_so_far());
        }
    }

    pub fn output_so_far(&self) -> String {
        format!(
            "{}\n{}",
            self.stdout.lock().expect("output lock"),
            self.stderr.lock().expect("output lock")
        )
    }

    /// Waits for exit (panics after `limit`) and returns everything printed.
    pub async fn wait(mut self, limit: Duration) -> Output {
        let readers = std::mem::take(&mut self.readers);
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(s) => s.expect("wait for pgrepl"),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!(
                    "pgrepl did not exit within {limit:?}; output:\n{}",
                    self.output_so_far()
                );
            }
        };
        for r in readers {
            let _ = r.await;
        }
        Output {
            code: status.code(),
            stdout: self.stdout.lock().expect("output lock").clone(),
            stderr: self.stderr.lock().expect("output lock").clone(),
        }
    }

    /// SIGKILL, no chance to clean up.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
        for r in std::mem::take(&mut self.readers) {
            let _ = r.await;
        }
    }
}

/// pgrepl's own endpoint for a test cluster (library-level tests).
pub fn endpoint(cluster: &super::Cluster, side: ::pgrepl::conn::Side) -> ::pgrepl::conn::Endpoint {
    let env = |_: &str| None;
    let config = ::pgrepl::conn::ConnConfig::resolve(&cluster.conninfo(), &env)
        .expect("test conninfo resolves");
    ::pgrepl::conn::Endpoint::new(side, config)
}
