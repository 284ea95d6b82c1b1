//! `ringws top [URL]`: a live view of a running server, read from its `/metrics` page.
//!
//! Every `--interval` seconds it GETs the page ([`http`]), reads the series it shows ([`parse`],
//! [`stats`]) and prints a row per worker and a total ([`view`]): connections, messages and bytes
//! per second in and out, deliveries, backpressure events and drops per second, slow-consumer
//! disconnects, and the loop-turn p99 of the interval, under a line with the server's version,
//! uptime and state. Rates are the increase between two scrapes over the time between them, so the
//! first refresh has none.
//!
//! On a terminal each refresh redraws the screen; into a pipe or file the refreshes are appended. A
//! server that cannot be read is reported and retried. Ctrl-C or SIGTERM ends the view with exit
//! status 0 ([`signals`]). `--once` takes two scrapes one interval apart, prints one view (or one
//! JSON object with `--json`) and exits; 1 when a scrape failed.

mod http;
mod parse;
pub(crate) mod signals;
mod stats;
mod view;

use super::note;
use clap::Args;
use http::{FetchError, Target};
use signals::StopSignals;
use stats::{Row, Scrape};
use std::fmt;
use std::io::{self, IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use view::Frame;

/// The bound on one scrape (connect, request, whole answer): a local server answers in
/// milliseconds; a signal that arrives during a scrape is taken when it ends.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// Options of `ringws top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The server's metrics page: http://HOST:PORT/metrics (http://HOST:PORT and HOST:PORT get the
    /// /metrics path).
    #[arg(
        value_name = "URL",
        default_value = "http://127.0.0.1:9001/metrics",
        value_parser = Target::parse
    )]
    url: Target,
    /// Seconds between two scrapes, 0.1 to 3600; the rates are over this interval.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = parse_interval)]
    interval: f64,
    /// Take two scrapes one interval apart, print the view once and exit (status 1 when the
    /// server cannot be read).
    #[arg(long)]
    once: bool,
    /// With --once: print one JSON object (the same fields per worker and for the total) instead
    /// of the table.
    #[arg(long, requires = "once")]
    json: bool,
}

/// Checks `--interval`: a number of seconds from 0.1 to 3600.
fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err("expected seconds from 0.1 to 3600 (e.g. 1 or 0.5)".to_owned()),
    }
}

/// Why a scrape gave nothing to show.
#[derive(Debug)]
enum ScrapeError {
    /// The GET failed.
    Fetch(FetchError),
    /// The page has no `ringws_` series: another program answered.
    NotRingws,
}

impl fmt::Display for ScrapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fetch(e) => write!(f, "{e}"),
            Self::NotRingws => write!(f, "the page has no ringws_ metrics: not a ringws server"),
        }
    }
}

/// Runs the view until a signal (or, with `--once`, two scrapes); the exit status.
pub fn run(args: TopArgs) -> ExitCode {
    // Before anything else: a signal must find them blocked, or it ends the process at once.
    let signals = match StopSignals::block() {
        Ok(s) => s,
        Err(e) => {
            note!("error: cannot block SIGINT and SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let interval = Duration::from_secs_f64(args.interval);
    if args.once {
        once(&args, &signals, interval)
    } else {
        live(&args, &signals, interval)
    }
}

/// `--once`: two scrapes, one view on stdout.
fn once(args: &TopArgs, signals: &StopSignals, interval: Duration) -> ExitCode {
    let url = args.url.to_string();
    let read = || {
        scrape(&args.url).map_err(|e| {
            note!("error: cannot read {url}: {e}");
            ExitCode::FAILURE
        })
    };
    let first = match read() {
        Ok(s) => s,
        Err(code) => return code,
    };
    if signals.wait_until(first.0 + interval).is_some() {
        return ExitCode::SUCCESS;
    }
    let second = match read() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let frame = frame(&url, Some(&first), &second);
    let text = if args.json {
        format!("{}\n", frame.json())
    } else {
        frame.table()
    };
    if super::print_or_report(&text) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The live view: a refresh per interval until SIGINT or SIGTERM, or until stdout's reader goes.
fn live(args: &TopArgs, signals: &StopSignals, interval: Duration) -> ExitCode {
    let url = args.url.to_string();
    let mut screen = Screen::new();
    let mut last: Option<(Instant, Scrape)> = None;
    // Runs until a signal: each pass ends in a bounded wait for one.
    loop {
        let started = Instant::now();
        let text = match scrape(&args.url) {
            Ok(now) => {
                let text = frame(&url, last.as_ref(), &now).table();
                last = Some(now);
                text
            }
            Err(e) => format!(
                "{url}: unreachable, retrying every {}s ({e})\n",
                interval.as_secs_f64()
            ),
        };
        match screen.show(&text) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
            Err(e) => {
                note!("error: writing to stdout: {e}");
                return ExitCode::FAILURE;
            }
        }
        if signals.wait_until(started + interval).is_some() {
            return ExitCode::SUCCESS;
        }
    }
}

/// GETs and reads the page; when it arrived and what it says.
fn scrape(target: &Target) -> Result<(Instant, Scrape), ScrapeError> {
    let body = target.get(SCRAPE_TIMEOUT).map_err(ScrapeError::Fetch)?;
    let at = Instant::now();
    let scrape = Scrape::from_text(&String::from_utf8_lossy(&body));
    if !scrape.is_ringws {
        return Err(ScrapeError::NotRingws);
    }
    Ok((at, scrape))
}

/// The view of scrape `now`, with rates against `before` when there is one.
fn frame<'a>(
    url: &'a str,
    before: Option<&(Instant, Scrape)>,
    now: &'a (Instant, Scrape),
) -> Frame<'a> {
    let (at, scrape) = now;
    let seconds = before.map(|(then, _)| at.saturating_duration_since(*then).as_secs_f64());
    let secs = seconds.unwrap_or(0.0);
    let previous = before.map(|(_, s)| s);
    Frame {
        url,
        seconds,
        server: &scrape.server,
        now: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        unparsed: scrape.unparsed,
        workers: scrape
            .workers
            .iter()
            .map(|(w, c)| {
                (
                    *w,
                    Row::new(previous.and_then(|p| p.workers.get(w)), c, secs),
                )
            })
            .collect(),
        total: Row::new(previous.map(Scrape::total).as_ref(), &scrape.total(), secs),
    }
}

/// Where the live view's refreshes go: on a terminal each one redraws the screen, with the cursor
/// hidden while the view runs (shown again on drop, however the view ends); into a pipe or a file
/// they are appended, a blank line apart.
struct Screen {
    terminal: bool,
}

/// Moves the cursor home and clears the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";
/// Hides the cursor.
const HIDE_CURSOR: &str = "\x1b[?25l";
/// Shows the cursor.
const SHOW_CURSOR: &str = "\x1b[?25h";

impl Screen {
    /// Looks at stdout; hides the cursor on a terminal.
    fn new() -> Screen {
        let terminal = io::stdout().is_terminal();
        if terminal {
            let _ = write_out(HIDE_CURSOR);
        }
        Screen { terminal }
    }

    /// Shows one refresh.
    fn show(&mut self, text: &str) -> io::Result<()> {
        if self.terminal {
            write_out(&format!("{CLEAR}{text}"))
        } else {
            write_out(&format!("{text}\n"))
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if self.terminal {
            let _ = write_out(SHOW_CURSOR);
        }
    }
}

/// Writes `text` to stdout and flushes it.
fn write_out(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(parse_interval("1"), Ok(1.0));
        assert_eq!(parse_interval("0.5"), Ok(0.5));
        for bad in ["0", "0.01", "-1", "3601", "NaN", "inf", "x", ""] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }
}
