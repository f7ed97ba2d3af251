//! What a test needs to talk to a sync's `--listen` HTTP listener.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{pgrepl, wait_for};

const LIMIT: Duration = Duration::from_secs(240);

/// One HTTP/1.1 GET: (status code, body).
pub async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((code, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// The address a `--listen 127.0.0.1:0` sync serves on, from its log.
pub async fn listening(sync: &pgrepl::Running) -> String {
    wait_for("the listener's address", LIMIT, || async {
        let out = sync.output_so_far();
        out.lines()
            .find_map(|l| l.split("http://").nth(1))
            .map(|a| {
                a.trim_end_matches('/')
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .filter(|a| !a.is_empty())
    })
    .await
}
