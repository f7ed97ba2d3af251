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

pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Repeated measurements of one tool: medians for the table, min–max for
/// the spread.
#[derive(Clone, Debug, Default)]
pub struct Runs(pub Vec<f64>);

impl Runs {
    pub fn push(&mut self, x: f64) {
        self.0.push(x);
    }

    pub fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    /// (max − min) / median.
    pub fn spread(&self) -> f64 {
        if self.0.len() < 2 {
            return 0.0;
        }
        (self.max() - self.min()) / self.median().max(f64::MIN_POSITIVE)
    }

    /// "2.29 s (2.11–2.47, 5 runs)" with `unit` and `digits` decimals.
    pub fn show(&self, unit: &str, digits: usize) -> String {
        if self.0.len() < 2 {
            return format!("{:.digits$} {unit}", self.median());
        }
        format!(
            "{:.digits$} {unit} ({:.digits$}–{:.digits$}, {} runs)",
            self.median(),
            self.min(),
            self.max(),
            self.0.len()
        )
    }
}

/// A note when either side's spread is wider than the distance between the
/// ratio of medians and its target: the verdict could flip on another run.
pub fn spread_note(
    report: &mut Report,
    what: &str,
    ours: &Runs,
    theirs: &Runs,
    ratio: f64,
    target: f64,
) {
    let margin = (target - ratio).abs() / target;
    let wider = ours.spread().max(theirs.spread());
    if wider > margin {
        report.note(format!(
            "{what}: the runs spread by up to {:.0} % (pgrepl {:.0} %, anchor {:.0} %), wider than the {:.0} % between the ratio {ratio:.3} and its target {target:.2}: read the verdict as uncertain",
            wider * 100.0,
            ours.spread() * 100.0,
            theirs.spread() * 100.0,
            margin * 100.0
        ));
    }
}
