//! A streaming standby of a test cluster, and its promotion.

use super::*;

impl Cluster {
    /// A streaming standby of `primary` (same major): a base backup taken
    /// with the client tools' pg_basebackup through physical slot
    /// `slot` (made on the primary), `hot_standby_feedback` on, and with
    /// `sync_replication_slots` on 17+ so failover slots are kept here.
    /// `opts.settings` come on top (e.g. `wal_level`).
    pub async fn standby_of(
        primary: &Cluster,
        name: &str,
        slot: &str,
        opts: ClusterOptions,
    ) -> Cluster {
        primary
            .exec(&format!(
                "SELECT pg_create_physical_replication_slot('{slot}', true)"
            ))
            .await;
        let backend = Backend::from_env();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = PathBuf::from(format!("/tmp/pgt-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create cluster dir");
        // The base backup runs here, as the user the servers run as (the
        // images' postgres user has the same uid).
        let user = is_root().then(test_user);
        if let Some(user) = &user {
            chown_to(&root, user);
        }
        if backend == Backend::Docker {
            std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o777))
                .expect("chmod cluster dir");
        }
        let data = root.join("data");
        let tool = super::super::pg::client_tool("pg_basebackup");
        let mut cmd = match &user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(u).arg("--").arg(&tool);
                c
            }
            None => Command::new(&tool),
        };
        let out = cmd
            .args([
                "-h",
                &primary.root.display().to_string(),
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                &data.display().to_string(),
                "-S",
                slot,
                "-X",
                "stream",
                "-c",
                "fast",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_basebackup");
        assert!(
            out.status.success(),
            "{name}: pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta = std::fs::metadata(&data).expect("the base backup made the data dir");
        let owner = (
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::gid(&meta),
        );
        let signal = data.join("standby.signal");
        std::fs::write(&signal, "").expect("write standby.signal");
        chown_ids(&signal, owner);
        let mut settings = vec![
            // Over TCP: a container sees only its own folder, not the
            // primary's socket.
            format!(
                "primary_conninfo = 'host=127.0.0.1 port={} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres application_name={name}'",
                primary.port
            ),
            format!("primary_slot_name = '{slot}'"),
            "hot_standby_feedback = on".into(),
        ];
        if primary.install.major >= 17 {
            settings.push("sync_replication_slots = on".into());
        }
        settings.extend(opts.settings.iter().cloned());
        let opts = ClusterOptions { settings, ..opts };
        let mut cluster = Cluster {
            name: name.to_string(),
            install: primary.install.clone(),
            root: root.clone(),
            data,
            port: 0,
            log: root.join("server.log"),
            owner: Some(owner),
            run_as: (is_root() && backend == Backend::Local).then(test_user),
            stopped: true,
            runner: match backend {
                Backend::Local => Runner::Local,
                Backend::Docker => Runner::Docker(None),
            },
        };
        cluster.start_on_a_free_port(&opts);
        cluster
    }

    /// Promotes a standby (waits until it takes writes).
    pub async fn promote(&self) {
        let done = self.value("SELECT pg_promote(true, 60)").await;
        assert_eq!(
            done.as_deref(),
            Some("t"),
            "{}: promotion failed:\n{}",
            self.name,
            self.log_tail(20)
        );
    }
}
