//! Where a sync stands: its state on the target ([`state`]) and what a
//! person watching sees ([`ui`]).

pub mod copy_status;
pub mod ledger;
pub mod scope;
pub mod state;
pub mod status;
pub mod table_stats;
pub mod telemetry;
pub mod ui;

/// `1.5 GiB`, `312 KiB`, `17 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `1h02m`, `3m05s`, `12.3s`.
pub fn human_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (secs / 3600.0) as u64,
            ((secs % 3600.0) / 60.0) as u64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_bytes(17), "17 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(
            human_duration(std::time::Duration::from_millis(12_300)),
            "12.3s"
        );
        assert_eq!(human_duration(std::time::Duration::from_secs(185)), "3m05s");
        assert_eq!(
            human_duration(std::time::Duration::from_secs(3720)),
            "1h02m"
        );
    }
}
