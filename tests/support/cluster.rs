//! Throwaway PostgreSQL clusters for tests, each on its own socket
//! directory and port so tests run in parallel: initdb + pg_ctl from
//! installed binaries, run as an unprivileged user when the tests run as
//! root (the local backend), or the same server in a container of its own
//! (the docker backend, see `docker`). Either way the cluster's folder
//! (data, socket, log) is under /tmp and the harness reads and writes it
//! the same. A cluster stops when dropped (its container is removed); when
//! the test failed, its log's path and last lines are printed and its
//! directory is kept.

mod sessions;
mod standby;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use super::docker;
use super::pg::{Backend, PgInstall};

/// The superuser's password, for tests that connect over TCP.
pub const SUPERUSER_PASSWORD: &str = "pgrepl-test-pw";

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub wal_level: &'static str,
    /// Extra `postgresql.conf` lines.
    pub settings: Vec<String>,
    /// Listen on TLS with a test certificate: (cert PEM, key PEM).
    pub tls: Option<(String, String)>,
    /// pg_hba.conf lines put before initdb's (the first match wins).
    pub hba: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            wal_level: "logical",
            settings: Vec::new(),
            tls: None,
            hba: Vec::new(),
        }
    }
}

pub struct Cluster {
    pub name: String,
    pub install: PgInstall,
    pub root: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    /// Who owns the data files: the local user the server runs as (when
    /// the tests run as root), or the container's user.
    run_as: Option<String>,
    owner: Option<(u32, u32)>,
    stopped: bool,
    runner: Runner,
}

/// How the server process runs.
enum Runner {
    /// pg_ctl on this machine.
    Local,
    /// In a container; `None` until the first start.
    Docker(Option<Box<docker::Server>>),
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn test_user() -> String {
    std::env::var("PGREPL_TEST_USER").unwrap_or_else(|_| "postgres".to_string())
}

fn user_ids(user: &str) -> (u32, u32) {
    let cuser = CString::new(user).expect("user name has no NUL");
    // SAFETY: getpwnam returns NULL or a pointer to a static passwd entry.
    unsafe {
        let pw = libc::getpwnam(cuser.as_ptr());
        assert!(
            !pw.is_null(),
            "user {user} does not exist (set PGREPL_TEST_USER)"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

fn chown_to(path: &Path, user: &str) {
    chown_ids(path, user_ids(user));
}

fn chown_ids(path: &Path, (uid, gid): (u32, u32)) {
    let cpath = CString::new(path.as_os_str().as_encoded_bytes()).expect("path has no NUL");
    // SAFETY: chown on a path we created.
    let rc = unsafe { libc::chown(cpath.as_ptr(), uid, gid) };
    assert_eq!(rc, 0, "chown {} to {uid}:{gid}", path.display());
}

/// Stops clusters left behind by test processes that died without dropping
/// them (killed by a timeout), so they do not pile up.
fn reap_orphans() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("pgt-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks the process exists.
        let alive = unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM };
        if alive {
            continue;
        }
        for data in [e.path().join("data")] {
            if let Ok(pidfile) = std::fs::read_to_string(data.join("postmaster.pid")) {
                if let Some(pm) = pidfile
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse::<i32>().ok())
                {
                    // SAFETY: signalling a postmaster we started in an earlier run.
                    unsafe { libc::kill(pm, libc::SIGQUIT) };
                }
            }
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

impl Cluster {
    pub fn start(name: &str, install: PgInstall) -> Cluster {
        Self::start_with(name, install, ClusterOptions::default())
    }

    pub fn start_with(name: &str, install: PgInstall, opts: ClusterOptions) -> Cluster {
        let backend = Backend::from_env();
        if COUNTER.load(Ordering::SeqCst) == 0 {
            reap_orphans();
            if backend == Backend::Docker {
                docker::reap_orphans();
            }
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = PathBuf::from(format!("/tmp/pgt-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create cluster dir");
        let run_as = (is_root() && backend == Backend::Local).then(test_user);
        if let Some(user) = &run_as {
            chown_to(&root, user);
        }
        if backend == Backend::Docker {
            // The container's user (the image's) creates the data dir here.
            std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o777))
                .expect("chmod cluster dir");
        }
        let data = root.join("data");
        let log = root.join("server.log");
        let mut cluster = Cluster {
            name: name.to_string(),
            install,
            root,
            data,
            port: 0,
            log,
            owner: run_as.as_deref().map(user_ids),
            run_as,
            stopped: true,
            runner: match backend {
                Backend::Local => Runner::Local,
                Backend::Docker => Runner::Docker(None),
            },
        };
        let pwfile = cluster.root.join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).expect("write pwfile");
        std::fs::set_permissions(&pwfile, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod pwfile");
        if let Some(user) = &cluster.run_as {
            chown_to(&pwfile, user);
        }
        let initdb: Vec<String> = [
            "-D",
            &cluster.data.display().to_string(),
            "-U",
            "postgres",
            "--pwfile",
            &pwfile.display().to_string(),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        ]
        .map(String::from)
        .to_vec();
        match cluster.runner {
            Runner::Local => {
                let args: Vec<&str> = initdb.iter().map(String::as_str).collect();
                cluster.run("initdb", &args);
            }
            Runner::Docker(_) => {
                docker::initdb(cluster.install.major, &cluster.root, &initdb);
                let meta = std::fs::metadata(&cluster.data).expect("initdb made the data dir");
                cluster.owner = Some((
                    std::os::unix::fs::MetadataExt::uid(&meta),
                    std::os::unix::fs::MetadataExt::gid(&meta),
                ));
            }
        }
        if let Some((cert, key)) = &opts.tls {
            for (file, text) in [("server.crt", cert), ("server.key", key)] {
                let p = cluster.data.join(file);
                std::fs::write(&p, text).expect("write tls file");
                if let Some(ids) = cluster.owner {
                    chown_ids(&p, ids);
                }
                std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .expect("chmod");
            }
        }
        if !opts.hba.is_empty() {
            let path = cluster.data.join("pg_hba.conf");
            let old = std::fs::read_to_string(&path).expect("read pg_hba.conf");
            std::fs::write(&path, format!("{}\n{old}", opts.hba.join("\n")))
                .expect("write pg_hba.conf");
        }
        cluster.start_on_a_free_port(&opts);
        cluster
    }

    /// Writes the configuration and starts, on another port while the one
    /// picked turns out taken.
    fn start_on_a_free_port(&mut self, opts: &ClusterOptions) {
        for attempt in 0..8 {
            self.port = free_port();
            self.write_config(opts);
            if self.try_start() {
                return;
            }
            let tail = self.log_tail(5);
            assert!(
                tail.contains("could not bind")
                    || tail.contains("could not create")
                    || attempt == 7,
                "{}: server failed to start:\n{tail}",
                self.name
            );
        }
        panic!(
            "{}: server failed to start after 8 ports:\n{}",
            self.name,
            self.log_tail(20)
        );
    }

    fn write_config(&self, opts: &ClusterOptions) {
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{}'\n\
             wal_level = {}\n\
             max_replication_slots = 16\n\
             max_wal_senders = 16\n\
             max_connections = 60\n\
             shared_buffers = 32MB\n\
             fsync = off\n\
             full_page_writes = off\n\
             log_line_prefix = '%m [%p] %q%a '\n\
             log_min_messages = warning\n\
             lc_messages = 'C'\n",
            self.port,
            self.root.display(),
            opts.wal_level
        );
        if opts.tls.is_some() {
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        for s in &opts.settings {
            // Settings a test wants where the major has them.
            let key = s.split('=').next().unwrap_or("").trim();
            if key == "logical_decoding_work_mem" && self.install.major < 13 {
                continue;
            }
            conf.push_str(s);
            conf.push('\n');
        }
        if matches!(self.runner, Runner::Docker(_)) {
            // The log where the local backend's pg_ctl -l puts it.
            conf.push_str(&format!(
                "logging_collector = on\nlog_directory = '{}'\nlog_filename = 'server.log'\n",
                self.root.display()
            ));
        }
        let path = self.data.join("postgresql.auto.conf");
        std::fs::write(&path, conf).expect("write config");
        if let Some(ids) = self.owner {
            chown_ids(&path, ids);
        }
    }

    fn command(&self, tool: &str) -> Command {
        let binary = self.install.tool(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(binary);
                c
            }
            None => Command::new(binary),
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run pg tool");
        assert!(
            out.status.success(),
            "{}: {tool} {args:?} failed:\n{}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn try_start(&mut self) -> bool {
        let ok = match &mut self.runner {
            Runner::Local => self
                .command("pg_ctl")
                .args([
                    "-D",
                    &self.data.display().to_string(),
                    "-l",
                    &self.log.display().to_string(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false),
            Runner::Docker(server) => {
                let started = match server {
                    Some(s) => s.start_again().is_ok(),
                    None => match docker::Server::start(self.install.major, &self.root, &self.data)
                    {
                        Ok(s) => {
                            *server = Some(Box::new(s));
                            true
                        }
                        Err(e) => {
                            eprintln!("{}: container did not start: {e}", self.name);
                            false
                        }
                    },
                };
                started && self.wait_ready()
            }
        };
        self.stopped = !ok;
        ok
    }

    /// Waits (like `pg_ctl -w`) until the server takes connections, or
    /// its process ended.
    fn wait_ready(&self) -> bool {
        let socket = self.root.join(format!(".s.PGSQL.{}", self.port));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if socket.exists() && self.accepts_connections() {
                return true;
            }
            if self.log_tail(5).contains("could not bind") {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// A session can be opened (the server is past recovery).
    fn accepts_connections(&self) -> bool {
        let conninfo = self.conninfo();
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()
                    .and_then(|rt| {
                        rt.block_on(async {
                            let (c, conn) = tokio_postgres::connect(&conninfo, NoTls).await.ok()?;
                            tokio::spawn(conn);
                            c.simple_query("SELECT 1").await.ok()
                        })
                    })
                    .is_some()
            })
            .join()
            .unwrap_or(false)
        })
    }

    /// Stops the server (`fast` shutdown, or `immediate` to simulate a crash).
    pub fn stop_mode(&mut self, mode: &str) {
        if self.stopped {
            return;
        }
        match &self.runner {
            Runner::Local => {
                let _ = self
                    .command("pg_ctl")
                    .args([
                        "-D",
                        &self.data.display().to_string(),
                        "-m",
                        mode,
                        "-w",
                        "-t",
                        "60",
                        "stop",
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            Runner::Docker(Some(server)) => server.stop(mode),
            Runner::Docker(None) => {}
        }
        self.stopped = true;
    }

    pub fn stop(&mut self) {
        self.stop_mode("fast");
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&mut self) {
        assert!(
            self.try_start(),
            "{}: restart failed:\n{}",
            self.name,
            self.log_tail(20)
        );
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Changes one setting and restarts (for settings that need it).
    pub fn set_and_restart(&mut self, line: &str) {
        let path = self.data.join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&path).expect("read config");
        conf.push_str(line);
        conf.push('\n');
        std::fs::write(&path, conf).expect("write config");
        self.restart();
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        if let Runner::Docker(Some(server)) = &self.runner {
            // What the server said before its log file was open.
            text = format!("{}{text}", server.stderr());
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn major(&self) -> u32 {
        self.install.major
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_mode("immediate");
        if std::thread::panicking() {
            eprintln!(
                "--- {} server log: {} (kept)\n{}\n---",
                self.name,
                self.log.display(),
                self.log_tail(30)
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let port: u16 = rng.random_range(20000..60000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` until it returns `Some`, or panics after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Waits until the sync's phase on `target` is `phase` (`copying`,
/// `streaming`, ...).
pub async fn wait_for_phase(target: &Cluster, phase: &str, deadline: Duration) {
    let client = target.client().await;
    wait_for(&format!("phase {phase}"), deadline, || {
        let c = &client;
        async move {
            let p: String = c
                .query_one("SELECT phase FROM pgrepl.sync", &[])
                .await
                .ok()?
                .get(0);
            (p == phase).then_some(())
        }
    })
    .await;
}
