//! The bench's result: one markdown table with ratios, the machine it ran
//! on, and notes (individual runs, skipped tools).

use std::fmt::Write;

pub struct Row {
    pub bench: String,
    pub pgrepl: String,
    pub anchor: String,
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub machine: String,
}

impl Report {
    pub fn new(machine: String) -> Self {
        Report {
            machine,
            ..Default::default()
        }
    }

    pub fn row(
        &mut self,
        bench: &str,
        pgrepl: String,
        anchor: String,
        ratio: Option<f64>,
        target: &str,
        met: Option<bool>,
    ) {
        println!(
            "  {bench}: pgrepl {pgrepl} | {anchor} | ratio {} | target {target}",
            ratio.map(|r| format!("{r:.3}")).unwrap_or("-".into())
        );
        self.rows.push(Row {
            bench: bench.into(),
            pgrepl,
            anchor,
            ratio,
            target: target.into(),
            met,
        });
    }

    pub fn note(&mut self, note: String) {
        println!("  note: {note}");
        self.notes.push(note);
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}\n", self.machine);
        let _ = writeln!(
            out,
            "| Benchmark | pgrepl | Compared with | Ratio | Target | Met |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.bench,
                r.pgrepl,
                r.anchor,
                r.ratio
                    .map(|x| format!("{x:.3}"))
                    .unwrap_or_else(|| "-".into()),
                r.target,
                match r.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "-",
                }
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out);
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

/// CPU, cores and memory of this machine.
pub fn machine(pg_version: &str, quick: bool) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map(str::trim)
        .unwrap_or("unknown CPU")
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let when = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "`just bench{}` on {when}: {model}, {cores} cores, {:.0} GiB RAM; source and target are two PostgreSQL {pg_version} clusters on this machine (fsync on), over Unix sockets.",
        if quick { " --quick" } else { "" },
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}
