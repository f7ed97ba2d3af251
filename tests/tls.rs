//! TLS as libpq users know it: `require` encrypts, `verify-full` checks the
//! chain and the host name, and both the normal and the walsender session
//! use it (the server here refuses any unencrypted TCP connection).

mod support;

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use support::{pgrepl, Cluster, ClusterOptions, PgInstall, SUPERUSER_PASSWORD};

const LIMIT: Duration = Duration::from_secs(60);

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("ca cert");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server cert");
    Pki {
        ca_pem: ca.pem(),
        server_cert: cert.pem(),
        server_key: key.serialize_pem(),
    }
}

fn tls_only_server(pki: &Pki) -> Cluster {
    Cluster::start_with(
        "source",
        PgInstall::for_source(),
        ClusterOptions {
            tls: Some((pki.server_cert.clone(), pki.server_key.clone())),
            hba: vec![
                "hostnossl all all 0.0.0.0/0 reject".into(),
                "hostssl all all 127.0.0.1/32 scram-sha-256".into(),
                "hostssl replication all 127.0.0.1/32 scram-sha-256".into(),
            ],
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_behave_like_libpq() {
    let pki = pki();
    let source = tls_only_server(&pki);
    let target = Cluster::start("target", PgInstall::for_target());
    let dir = tempfile::tempdir().expect("tmp");
    let ca = dir.path().join("root.crt");
    std::fs::write(&ca, &pki.ca_pem).expect("write ca");
    let ca = ca.display().to_string();
    let target_ci = target.conninfo();
    let conn = |host: &str, mode: &str, extra: &str| {
        format!(
            "host={host} port={} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres sslmode={mode} {extra}",
            source.port
        )
    };
    let check = |src: String| {
        let target_ci = target_ci.clone();
        async move { pgrepl::run(&["check", "--source", &src, "--target", &target_ci], LIMIT).await }
    };

    // require: encrypted, certificate not checked. Both sessions got through
    // a server that rejects plain TCP.
    let out = check(conn("127.0.0.1", "require", "")).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("replication connection works"), "{out}");

    // verify-full with the CA and the right name.
    let out = check(conn(
        "localhost",
        "verify-full",
        &format!("sslrootcert={ca}"),
    ))
    .await;
    assert!(out.success(), "{out}");

    // verify-full, right CA, wrong name: refused, one line.
    let out = check(conn(
        "127.0.0.1",
        "verify-full",
        &format!("sslrootcert={ca}"),
    ))
    .await;
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    assert!(out.stderr.contains("TLS with 127.0.0.1"), "{out}");
    assert!(!out.all().contains(SUPERUSER_PASSWORD));

    // verify-ca accepts the chain whatever the name.
    let out = check(conn("127.0.0.1", "verify-ca", &format!("sslrootcert={ca}"))).await;
    assert!(out.success(), "{out}");

    // verify-full without any root certificate: told where to put one.
    let out = pgrepl::run_with_env(
        &[
            "check",
            "--source",
            &conn("localhost", "verify-full", ""),
            "--target",
            &target_ci,
        ],
        &[("HOME", &dir.path().join("empty-home").display().to_string())],
        LIMIT,
    )
    .await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("needs a root certificate"), "{out}");

    // disable: the server's pg_hba.conf rejects it.
    let out = check(conn("127.0.0.1", "disable", "")).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("rejected") && out.stderr.contains("pg_hba.conf"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_fails_clearly_when_the_server_has_no_tls() {
    let source = Cluster::start("source", PgInstall::for_source());
    let target = Cluster::start("target", PgInstall::for_target());
    let src = format!(
        "host=127.0.0.1 port={} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres sslmode=require",
        source.port
    );
    let out = pgrepl::run(
        &["check", "--source", &src, "--target", &target.conninfo()],
        LIMIT,
    )
    .await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("does not offer TLS"), "{out}");
    // prefer falls back to plain text.
    let src = src.replace("sslmode=require", "sslmode=prefer");
    let out = pgrepl::run(
        &["check", "--source", &src, "--target", &target.conninfo()],
        LIMIT,
    )
    .await;
    assert!(out.success(), "{out}");
}
