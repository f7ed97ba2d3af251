//! Reaching a test cluster: its conninfo (socket or TCP), the harness's
//! own sessions, and SQL run for the test.

use super::*;

impl Cluster {
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// Conninfo over the Unix socket as the superuser (trust).
    pub fn conninfo(&self) -> String {
        self.conninfo_db("postgres")
    }

    pub fn conninfo_db(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.root.display(),
            self.port
        )
    }

    /// Conninfo over TCP (password authentication).
    pub fn tcp_conninfo(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db} sslmode=disable",
            self.port
        )
    }

    pub async fn client(&self) -> Client {
        self.client_db("postgres").await
    }

    /// A session of the test itself (application_name `harness`, so tests
    /// can tell it from pgrepl's).
    pub async fn client_db(&self, db: &str) -> Client {
        let conninfo = format!("{} application_name=harness", self.conninfo_db(db));
        let (client, conn) = tokio_postgres::connect(&conninfo, NoTls)
            .await
            .unwrap_or_else(|e| panic!("{}: connect: {e}", self.name));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Runs SQL (several statements allowed), panicking with the server's
    /// message on error.
    pub async fn exec(&self, sql: &str) {
        let c = self.client().await;
        if let Err(e) = c.batch_execute(sql).await {
            panic!(
                "{}: {}\nSQL: {}",
                self.name,
                super::super::db_error(&e),
                truncate(sql, 400)
            );
        }
    }

    /// The single value of a query, as text.
    pub async fn value(&self, sql: &str) -> Option<String> {
        let c = self.client().await;
        let rows = c.simple_query(sql).await.unwrap_or_else(|e| {
            panic!("{}: {}\nSQL: {sql}", self.name, super::super::db_error(&e))
        });
        rows.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })?
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
