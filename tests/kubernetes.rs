//! The Kubernetes example (examples/kubernetes/) is valid and fits
//! together: parsed, never deployed. The Job runs `sync --listen` with
//! arguments pgrepl's own parser takes, its probes and the Service reach the
//! port it listens on, on paths pgrepl serves, and it runs as the image's
//! user.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;
use serde_yaml::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes")
}

/// Every document of every .yaml file, by kind.
fn documents() -> BTreeMap<String, Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("examples/kubernetes")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir().display());
    let mut out = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read manifest");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", f.display()));
            if v.is_null() {
                continue;
            }
            for key in ["apiVersion", "kind", "metadata"] {
                assert!(v.get(key).is_some(), "{}: no {key}", f.display());
            }
            let kind = str_at(&v, &["kind"]).to_string();
            assert!(
                out.insert(kind.clone(), v).is_none(),
                "two {kind} documents: the test expects one of each"
            );
        }
    }
    out
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        cur = match key.parse::<usize>() {
            Ok(n) => cur.get(n),
            Err(_) => cur.get(*key),
        }
        .unwrap_or_else(|| panic!("no {}", path[..=i].join(".")));
    }
    cur
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

fn int_at(v: &Value, path: &[&str]) -> i64 {
    at(v, path)
        .as_i64()
        .unwrap_or_else(|| panic!("{} is not an integer", path.join(".")))
}

/// A port given by name or number, as the container declares it.
fn resolve_port(port: &Value, container: &Value) -> i64 {
    if let Some(n) = port.as_i64() {
        return n;
    }
    let name = port.as_str().expect("a port is a name or a number");
    at(container, &["ports"])
        .as_sequence()
        .expect("container ports")
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .map(|p| int_at(p, &["containerPort"]))
        .unwrap_or_else(|| panic!("the container has no port named {name}"))
}

/// The paths `sync --listen` serves, from its router.
fn served_paths() -> Vec<String> {
    let src = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/observe/http.rs"),
    )
    .expect("src/observe/http.rs");
    src.split(".route(\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_kubernetes_example_fits_together() {
    let docs = documents();
    let kinds: Vec<&str> = docs.keys().map(String::as_str).collect();
    assert_eq!(kinds, ["Job", "Secret", "Service"]);
    let (job, service, secret) = (&docs["Job"], &docs["Service"], &docs["Secret"]);
    assert_eq!(str_at(job, &["apiVersion"]), "batch/v1");
    assert_eq!(str_at(service, &["apiVersion"]), "v1");
    assert_eq!(str_at(secret, &["apiVersion"]), "v1");

    let pod = at(job, &["spec", "template", "spec"]);
    let containers = at(pod, &["containers"]).as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert!(str_at(c, &["image"]).starts_with("pgrepl"), "{c:?}");
    let restart = str_at(pod, &["restartPolicy"]);
    assert!(restart == "OnFailure" || restart == "Never", "{restart}");

    // The arguments are a `sync --listen ADDR` pgrepl's parser takes, with
    // the conninfo from the Secret the container's environment names.
    let args: Vec<String> = at(c, &["args"])
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string args").to_string())
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("sync"), "{args:?}");
    let secret_name = str_at(secret, &["metadata", "name"]);
    let from = at(c, &["envFrom"]).as_sequence().expect("envFrom");
    assert!(
        from.iter().any(|e| e
            .get("secretRef")
            .and_then(|r| r.get("name"))
            .and_then(Value::as_str)
            == Some(secret_name)),
        "the container does not read Secret {secret_name}"
    );
    let source = str_at(secret, &["stringData", "PGREPL_SOURCE"]);
    let target = str_at(secret, &["stringData", "PGREPL_TARGET"]);
    let mut argv = vec!["pgrepl".to_string()];
    argv.extend(args.iter().cloned());
    argv.extend([
        "--source".into(),
        source.into(),
        "--target".into(),
        target.into(),
    ]);
    let cli = pgrepl::cli::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("pgrepl does not take {args:?}: {e}"));
    let pgrepl::cli::Command::Sync(sync) = cli.command else {
        panic!("not a sync: {args:?}");
    };
    let listen: SocketAddr = sync.listen.expect("--listen is given");
    assert!(
        listen.ip().is_unspecified(),
        "--listen {listen}: other pods reach only 0.0.0.0"
    );
    let port = i64::from(listen.port());
    for conninfo in [source, target] {
        let no_env = |_: &str| None;
        pgrepl::conn::ConnConfig::resolve(conninfo, &no_env)
            .unwrap_or_else(|e| panic!("{conninfo}: {e}"));
    }

    // The container declares that port; the probes use it, on paths the
    // listener serves: readiness on /status, liveness on /healthz.
    let served = served_paths();
    for p in ["/metrics", "/status", "/healthz"] {
        assert!(
            served.iter().any(|s| s == p),
            "pgrepl no longer serves {p}: {served:?}"
        );
    }
    let declared = at(c, &["ports"]).as_sequence().expect("ports");
    assert!(declared
        .iter()
        .any(|p| int_at(p, &["containerPort"]) == port));
    for (probe, path) in [("readinessProbe", "/status"), ("livenessProbe", "/healthz")] {
        let get = at(c, &[probe, "httpGet"]);
        assert_eq!(str_at(get, &["path"]), path, "{probe}");
        assert_eq!(resolve_port(at(get, &["port"]), c), port, "{probe} port");
    }

    // The Service selects the Job's pods and sends its port there; the
    // scrape annotation names a path pgrepl serves.
    let labels = at(job, &["spec", "template", "metadata", "labels"])
        .as_mapping()
        .expect("pod labels");
    let selector = at(service, &["spec", "selector"])
        .as_mapping()
        .expect("selector");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "the pods lack label {k:?}: {v:?}");
    }
    let ports = at(service, &["spec", "ports"])
        .as_sequence()
        .expect("service ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(resolve_port(at(&ports[0], &["targetPort"]), c), port);
    assert_eq!(str_at(&ports[0], &["name"]), "metrics");
    let annotations = at(service, &["metadata", "annotations"]);
    let scrape_path = str_at(annotations, &["prometheus.io/path"]);
    assert_eq!(scrape_path, "/metrics");
    assert!(served.iter().any(|s| s == scrape_path));
    assert_eq!(
        str_at(annotations, &["prometheus.io/port"])
            .parse::<i64>()
            .ok(),
        Some(int_at(&ports[0], &["port"]))
    );

    // It runs as the image's user, not root.
    let dockerfile =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
            .expect("Dockerfile");
    let uid = int_at(pod, &["securityContext", "runAsUser"]);
    assert!(uid != 0);
    assert!(
        dockerfile.contains(&format!("--uid {uid} "))
            && dockerfile.contains(&format!("USER {uid}:")),
        "the Dockerfile's user is not uid {uid}"
    );
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );
}
