//! What DDL capture costs the source: pgbench TPS with pgrepl's event
//! triggers installed and without, alternating, a checkpoint before each
//! run; the medians are compared (one run disturbed by the machine must
//! not decide it).

use crate::env::Env;
use crate::report::{percentile, Report};

pub async fn run(env: &Env, report: &mut Report) {
    let (rounds, secs) = if env.quick { (2, 8) } else { (5, 15) };
    println!("\n== DDL capture overhead on source DML");
    let source = env.cluster("bench-ddl-source");
    env.pgbench_init(&source, 10).await;
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
        client
            .batch_execute("CHECKPOINT")
            .await
            .expect("checkpoint");
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
        let tps = crate::env::pgbench_tps(&out);
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
    let (w, wo) = (percentile(&with, 50.0), percentile(&without, 50.0));
    let ratio = w / wo.max(0.001);
    report.row(
        "source pgbench TPS with DDL capture installed (median of runs)",
        format!("{w:.0} tps"),
        format!("without triggers {wo:.0} tps"),
        Some(ratio),
        "≥ 0.98 ×",
        Some(ratio >= 0.98),
    );
    let runs = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    report.note(format!(
        "DDL capture runs (tps): with {}; without {}",
        runs(&with),
        runs(&without)
    ));
}
