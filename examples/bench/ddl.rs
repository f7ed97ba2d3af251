//! What DDL capture costs the source: pgbench TPS with pgrepl's event
//! triggers installed and without, alternating.

use crate::env::Env;
use crate::report::{mean, Report};

pub async fn run(env: &Env, report: &mut Report) {
    let (rounds, secs) = if env.quick { (2, 8) } else { (3, 20) };
    println!("\n== DDL capture overhead on source DML");
    let source = env.cluster("bench-ddl-source");
    let init = env
        .pgbench_cmd(&source, "postgres", &["-i", "-s", "10", "-q"])
        .output()
        .await
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let client = source.client().await;
    let name = pgrepl::sql::SyncName::new("bench").expect("valid name");
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds * 2 {
        let installed = round % 2 == 1;
        if installed {
            pgrepl::ddl::capture::install(&client, &name, &name.publication(), &Default::default())
                .await
                .expect("install capture");
        } else {
            pgrepl::ddl::capture::remove(&client, &name)
                .await
                .expect("remove capture");
        }
        let out = env
            .pgbench_cmd(
                &source,
                "postgres",
                &[
                    "-c",
                    "4",
                    "-j",
                    "2",
                    "-T",
                    &secs.to_string(),
                    "-n",
                    "-M",
                    "prepared",
                ],
            )
            .output()
            .await
            .expect("pgbench");
        let tps = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("tps = ")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        println!(
            "  {} triggers: {tps:.0} tps",
            if installed { "with" } else { "without" }
        );
        if installed {
            with.push(tps)
        } else {
            without.push(tps)
        }
    }
    let (w, wo) = (mean(&with), mean(&without));
    let ratio = w / wo.max(0.001);
    report.row(
        "source pgbench TPS with DDL capture installed",
        format!("{w:.0} tps"),
        format!("without triggers {wo:.0} tps"),
        Some(ratio),
        "≥ 0.98 ×",
        Some(ratio >= 0.98),
    );
}
