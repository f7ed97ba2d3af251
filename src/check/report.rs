//! The check report: one readable table for people, JSON for machines.

use std::fmt::Write;

use serde::Serialize;

use crate::conn::Side;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Error,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// One thing a check looked at, what it found, and what to do about it.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub level: Level,
    pub side: Side,
    pub check: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(side: Side, check: &'static str, message: impl Into<String>) -> Self {
        Finding {
            level: Level::Ok,
            side,
            check,
            message: message.into(),
            fix: None,
        }
    }

    pub fn warn(
        side: Side,
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            level: Level::Warning,
            side,
            check,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn error(
        side: Side,
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            level: Level::Error,
            side,
            check,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub source: String,
    pub target: String,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn push(&mut self, f: Finding) {
        self.findings.push(f);
    }

    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.level == Level::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.level == Level::Warning)
            .count()
    }

    pub fn has_errors(&self) -> bool {
        self.errors() > 0
    }

    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            ok: bool,
            errors: usize,
            warnings: usize,
            #[serde(flatten)]
            report: &'a Report,
        }
        serde_json::to_string_pretty(&Out {
            ok: !self.has_errors(),
            errors: self.errors(),
            warnings: self.warnings(),
            report: self,
        })
        .expect("a report is plain strings and numbers, always serialisable")
    }

    /// The table, wrapped to `width` columns. Problems first, errors first.
    pub fn render(&self, width: usize) -> String {
        let mut rows: Vec<&Finding> = self.findings.iter().collect();
        rows.sort_by_key(|f| std::cmp::Reverse(f.level));
        let check_w = rows.iter().map(|f| f.check.len()).max().unwrap_or(5).max(5);
        let lead = 6 + 1 + 6 + 1 + check_w + 1;
        let text_w = width.saturating_sub(lead).max(30);
        let mut out = String::new();
        let _ = writeln!(out, "source: {}", self.source);
        let _ = writeln!(out, "target: {}", self.target);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<6} {:<6} {:<check_w$} RESULT",
            "STATUS", "SIDE", "CHECK"
        );
        for f in rows {
            let mut lines = wrap(&f.message, text_w);
            if let Some(fix) = &f.fix {
                lines.extend(wrap(&format!("-> {fix}"), text_w));
            }
            for (i, line) in lines.iter().enumerate() {
                if i == 0 {
                    let side = f.side.to_string();
                    let _ = writeln!(
                        out,
                        "{:<6} {:<6} {:<check_w$} {line}",
                        f.level.label(),
                        side,
                        f.check
                    );
                } else {
                    let _ = writeln!(out, "{:lead$}{line}", "");
                }
            }
        }
        let _ = writeln!(out);
        let (e, w) = (self.errors(), self.warnings());
        let summary = match (e, w) {
            (0, 0) => "All checks passed: ready to sync.".to_string(),
            (0, w) => {
                format!("No errors, {w} warning(s): the sync can run; read the warnings first.")
            }
            (e, w) => format!(
                "{e} error(s), {w} warning(s): fix the errors, then run pgrepl check again."
            ),
        };
        let _ = writeln!(out, "{summary}");
        out
    }
}

/// Word-wraps `text` to `width` columns; words longer than a line stay whole.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_come_first_with_their_fix() {
        let mut r = Report::default();
        r.push(Finding::ok(Side::Source, "version", "PostgreSQL 15"));
        r.push(Finding::error(
            Side::Source,
            "wal_level",
            "wal_level is replica",
            "set wal_level = logical",
        ));
        let text = r.render(100);
        let err = text.find("ERROR").expect("error row");
        let ok = text.find("ok ").expect("ok row");
        assert!(err < ok);
        assert!(text.contains("-> set wal_level = logical"));
        assert!(text.contains("1 error(s)"));
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).expect("json");
        assert_eq!(json["ok"], false);
        assert_eq!(json["findings"][1]["check"], "wal_level");
    }

    #[test]
    fn wrap_keeps_words_whole() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(wrap("", 5), vec![""]);
    }
}
