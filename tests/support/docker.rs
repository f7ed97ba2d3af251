//! The docker backend (`PGREPL_TEST_BACKEND=docker`): a cluster's server
//! runs in a container of its own, started with testcontainers from
//! `pgrepl-test/postgres:MAJOR` (built locally by `scripts/test-images`) or
//! any image `PGREPL_TEST_IMAGE` names (`postgres:{major}` on a laptop with
//! a registry). Host networking only: the server listens on its own
//! loopback port, and its data directory and socket live in the cluster's
//! folder under /tmp, bind-mounted, so the harness reads and writes them as
//! with the local backend.
//!
//! Every container carries the label `pgrepl-test` with the test process's
//! pid: a container whose process is gone (a test killed by a timeout) is
//! removed by the next test that starts, and `scripts/test` removes what is
//! left at its end.

use std::future::Future;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use testcontainers::core::wait::ExitWaitStrategy;
use testcontainers::core::{ExecCommand, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// The image of `major`: `PGREPL_TEST_IMAGE` with `{major}` replaced, or
/// the one `scripts/test-images` builds.
pub fn image(major: u32) -> (String, String) {
    let template = std::env::var("PGREPL_TEST_IMAGE")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "pgrepl-test/postgres:{major}".into());
    let full = template.replace("{major}", &major.to_string());
    match full.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_string(), tag.to_string()),
        _ => (full, "latest".to_string()),
    }
}

/// testcontainers' own runtime: docker calls run on a thread of their own,
/// never on a test's runtime (which may be busy blocking on them).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for docker calls")
    })
}

fn block<T: Send>(f: impl Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| runtime().block_on(f))
            .join()
            .expect("docker call thread")
    })
}

/// Panics with what to do when a locally built image is missing (there is
/// no registry to pull it from).
fn require_image(name: &str, tag: &str) {
    if std::env::var("PGREPL_TEST_IMAGE").is_ok_and(|t| !t.is_empty()) {
        return;
    }
    let found = std::process::Command::new("docker")
        .args(["image", "inspect", &format!("{name}:{tag}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "image {name}:{tag} is missing: build it with `scripts/test-images {tag}` (or set PGREPL_TEST_IMAGE)"
    );
}

fn request(major: u32, root: &Path) -> testcontainers::ContainerRequest<GenericImage> {
    let (name, tag) = image(major);
    require_image(&name, &tag);
    let root = root.display().to_string();
    GenericImage::new(name, tag)
        .with_entrypoint("")
        .with_wait_for(WaitFor::Nothing)
        .with_network("host")
        .with_user("postgres")
        .with_mount(Mount::bind_mount(root.clone(), root))
        .with_label("pgrepl-test", std::process::id().to_string())
        .with_startup_timeout(Duration::from_secs(120))
}

/// Runs `initdb` with `args` in a container that ends with it.
pub fn initdb(major: u32, root: &Path, args: &[String]) {
    let mut cmd = vec!["initdb".to_string()];
    cmd.extend(args.iter().cloned());
    let req = request(major, root)
        .with_cmd(cmd)
        .with_ready_conditions(vec![WaitFor::exit(
            ExitWaitStrategy::new().with_exit_code(0),
        )]);
    block(async move {
        let c = req
            .start()
            .await
            .unwrap_or_else(|e| panic!("initdb in {}: {e}", image(major).0));
        let _ = c.rm().await;
    });
}

/// A server in its container.
pub struct Server {
    container: Option<ContainerAsync<GenericImage>>,
    data: String,
}

impl Server {
    /// Starts `postgres -D data` (its configuration is in the data dir).
    pub fn start(major: u32, root: &Path, data: &Path) -> Result<Server, String> {
        let data = data.display().to_string();
        let req = request(major, root).with_cmd(["postgres", "-D", &data]);
        let container = block(async move { req.start().await }).map_err(|e| e.to_string())?;
        Ok(Server {
            container: Some(container),
            data,
        })
    }

    fn container(&self) -> &ContainerAsync<GenericImage> {
        self.container
            .as_ref()
            .expect("the container lives until drop")
    }

    /// `pg_ctl stop -m MODE` inside the container; the container ends with
    /// its server.
    pub fn stop(&self, mode: &str) {
        let c = self.container();
        let cmd = ExecCommand::new([
            "pg_ctl", "-D", &self.data, "-m", mode, "-w", "-t", "60", "stop",
        ]);
        block(async move {
            if let Ok(mut r) = c.exec(cmd).await {
                let _ = r.stdout_to_vec().await;
            }
            for _ in 0..600 {
                match c.is_running().await {
                    Ok(true) => tokio::time::sleep(Duration::from_millis(100)).await,
                    _ => break,
                }
            }
        });
    }

    /// What the server wrote to stderr (before its logging collector took
    /// over: configuration errors, say).
    pub fn stderr(&self) -> String {
        let c = self.container();
        block(async move { c.stderr_to_vec().await })
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Starts the stopped container again (same data, same port).
    pub fn start_again(&self) -> Result<(), String> {
        let c = self.container();
        block(async move { c.start().await }).map_err(|e| e.to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.container.take() {
            block(async move {
                let _ = c.rm().await;
            });
        }
    }
}

/// Removes containers of test processes that are gone.
pub fn reap_orphans() {
    let Ok(out) = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            "label=pgrepl-test",
            "--format",
            "{{.ID}} {{.Label \"pgrepl-test\"}}",
        ])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((id, pid)) = line.split_once(' ') else {
            continue;
        };
        let Ok(pid) = pid.trim().parse::<i32>() else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks the process exists.
        let alive = unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM };
        if !alive {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", id])
                .output();
        }
    }
}
