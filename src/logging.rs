//! Logs go to stderr through `tracing`: human lines by default, JSON with
//! `--log-format json`. What a person watches (progress bars, the status
//! line, reports) is deliberate output, not logging; while bars are drawn,
//! log lines are printed above them instead of through them.

use std::io::Write;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

struct StderrAroundBars;

impl Write for StderrAroundBars {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bars = crate::progress::ui::bars();
        match bars {
            Some(bars) => bars
                .suspend(|| std::io::stderr().write_all(buf))
                .map(|_| buf.len()),
            None => std::io::stderr().write_all(buf).map(|_| buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

struct MakeStderr;

impl<'a> MakeWriter<'a> for MakeStderr {
    type Writer = StderrAroundBars;
    fn make_writer(&'a self) -> Self::Writer {
        StderrAroundBars
    }
}

/// Installs the global subscriber: JSON lines if `json`, else human ones.
/// `verbosity`: -1 quiet, 0 normal, 1+ more.
/// Warnings and errors also reach the telemetry (counted, and the last
/// ones kept for the status page).
pub fn init(json: bool, verbosity: i8) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // tokio_postgres logs every statement it sends at debug, a role's
    // password verifier among them: it never goes below info.
    let default = match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "pgrepl=info,warn",
        1 => "pgrepl=debug,tokio_postgres=info,info",
        _ => "pgrepl=trace,tokio_postgres=info,debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(MakeStderr)
        .with_target(false);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(crate::progress::telemetry::RecentEvents);
    // A second init (tests) keeps the first subscriber.
    let _ = if json {
        registry
            .with(fmt.json().with_current_span(true).with_span_list(false))
            .try_init()
    } else {
        registry.with(fmt).try_init()
    };
}

/// The width of the terminal on stdout; unlimited when it is not one, so
/// piped output is never wrapped mid-sentence.
pub fn terminal_width() -> usize {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return usize::MAX / 2;
    }
    // SAFETY: TIOCGWINSZ fills a winsize struct we own; failure leaves it zeroed.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            return ws.ws_col as usize;
        }
    }
    100
}
