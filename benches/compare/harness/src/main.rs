//! `compare`: runs ringws and its peers (fastwebsockets, tokio-tungstenite) under the same load and
//! writes `compare.json`, `compare.md` and `compare.svg`.
//!
//! For every server × connections × size it starts the server pinned to one CPU, waits for its
//! `listening on` line, runs `ringws load` pinned to another CPU, samples both processes' CPU time
//! from `/proc` over the measured window, stops the server (SIGTERM, then SIGKILL) and records the
//! lot. Ratios are taken against ringws for the same connections and size. With `--baseline PATH`
//! a second ringws binary (say, the build before a change) runs as one more server,
//! `ringws-before`, so two builds are compared in one run. With `--rate` every server serves the
//! same fixed message rate (open loop) instead of being driven flat out, and with `--repeat N`
//! each scenario runs N rounds of every server, interleaved, reported as medians. See README.md.

mod chart;
mod environment;
mod probe;
mod procs;
mod rate;
mod report;

use clap::{Parser, ValueEnum};
use environment::Environment;
use probe::{Prober, Upgrades};
use procs::{Child, CoreTicks, ProcStat, WaitError};
use rate::{RateEntry, RateError, SizeRate};
use report::{Anchor, Config, CpuWindow, LoadReport, Report, Run};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a server may take to exit after SIGTERM before it is killed (ringws drains its
/// connections for a bounded time first).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How much earlier than the harness's window end the generator may exit without the window being
/// called truncated: its own window starts (and ends) a little before ours.
const TRUNCATION_TOLERANCE: Duration = Duration::from_millis(100);

/// Time allowed to a load run beyond warm-up + duration, for connecting and closing.
const LOAD_SLACK: Duration = Duration::from_secs(30);

/// The servers that can be compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Server {
    /// `ringws serve --workers 1`.
    Ringws,
    /// The fastwebsockets peer (`fastwebsockets_echo`).
    Fastwebsockets,
    /// The tokio-tungstenite peer (`tungstenite_echo`).
    Tungstenite,
    /// A second ringws binary given with `--baseline` (e.g. the build before a change), run like
    /// ringws and reported as `ringws-before`.
    #[value(alias = "ringws-before")]
    Baseline,
}

impl Server {
    /// The name used in results; ringws is [`report::BASELINE`], the server every ratio is taken
    /// against (the `--baseline` binary is not: it is compared with ringws like a peer).
    fn name(self) -> &'static str {
        match self {
            Server::Ringws => report::BASELINE,
            Server::Fastwebsockets => "fastwebsockets",
            Server::Tungstenite => "tungstenite",
            Server::Baseline => "ringws-before",
        }
    }

    /// The server's binary; `None` for [`Server::Baseline`] without `--baseline`.
    fn program(self, args: &Args) -> Option<PathBuf> {
        match self {
            Server::Ringws => Some(args.ringws.clone()),
            Server::Fastwebsockets => Some(args.peers_dir.join("fastwebsockets_echo")),
            Server::Tungstenite => Some(args.peers_dir.join("tungstenite_echo")),
            Server::Baseline => args.baseline.clone(),
        }
    }

    /// Whether this is a ringws build (`ringws serve ...`) rather than a peer binary.
    fn is_ringws(self) -> bool {
        matches!(self, Server::Ringws | Server::Baseline)
    }

    /// Arguments that make the server echo on `addr` with one thread (over TLS with `tls`'s
    /// certificate and key).
    fn args(self, addr: &str, tls: Option<(&Path, &Path)>) -> Vec<String> {
        let mut args = Vec::new();
        if self.is_ringws() {
            args.push("serve".to_owned());
        }
        args.extend(["--addr".to_owned(), addr.to_owned()]);
        if self.is_ringws() {
            args.extend(["--workers".to_owned(), "1".to_owned()]);
        }
        if let Some((cert, key)) = tls {
            args.extend([
                "--tls-cert".to_owned(),
                cert.display().to_string(),
                "--tls-key".to_owned(),
                key.display().to_string(),
            ]);
        }
        args
    }
}

/// The servers run when `--servers` is not given.
const DEFAULT_SERVERS: [Server; 3] = [Server::Ringws, Server::Fastwebsockets, Server::Tungstenite];

/// The compare workspace: the parent of this package's directory.
fn compare_dir() -> &'static Path {
    let harness = Path::new(env!("CARGO_MANIFEST_DIR"));
    harness.parent().unwrap_or(harness)
}

/// The ringws repository, two levels above the compare workspace.
fn repo_dir() -> &'static Path {
    compare_dir()
        .parent()
        .and_then(Path::parent)
        .unwrap_or(compare_dir())
}

/// Compare ringws with fastwebsockets and tokio-tungstenite echo servers under one load generator.
#[derive(Debug, Parser)]
#[command(name = "compare", about)]
struct Args {
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds per run (connections are open and echoing, nothing is measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Connection counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    connections: Vec<u32>,
    /// Message sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "20,1024,16384")]
    sizes: Vec<usize>,
    /// Servers to run, comma-separated, in this order within each scenario; ratios need ringws
    /// among them; `baseline` (alias `ringws-before`) needs --baseline [default:
    /// ringws,fastwebsockets,tungstenite; with --baseline: ringws,baseline,fastwebsockets,tungstenite].
    #[arg(long, value_enum, value_delimiter = ',')]
    servers: Option<Vec<Server>>,
    /// Messages in flight per connection [default: 1; with --rate: the generator's own cap on
    /// outstanding messages, not passed].
    #[arg(long)]
    in_flight: Option<u32>,
    /// Fixed rate (open loop) instead of flat out: the load generator sends this many messages per
    /// second in total over all connections (`ringws load --rate`), the same for every server, so
    /// each one's CPU per message is measured under the same load. Comma-separated entries: `RATE`
    /// for every size, or `SIZE=RATE` for one size (e.g. `1024=40000,16384=20000`); a bare RATE
    /// with SIZE=RATE entries is the rate of the sizes not listed. A run more than 3% short of
    /// its rate is flagged (the server did not keep up).
    #[arg(long, value_delimiter = ',', value_name = "RATE|SIZE=RATE")]
    rate: Vec<RateEntry>,
    /// Rounds per scenario: each round runs every server once, in --servers order (ringws,
    /// fastwebsockets, tungstenite, ringws, ...); the report adds each server's median over the
    /// rounds and the ratios of the medians.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Output directory for compare.json, compare.md and compare.svg [default: benches/compare/results].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The ringws binary (the server, and the load generator unless --load is given).
    #[arg(long, default_value_os_t = repo_dir().join("target/release/ringws"))]
    ringws: PathBuf,
    /// The load generator binary, run as `LOAD load --url ... --json` [default: the --ringws binary].
    #[arg(long)]
    load: Option<PathBuf>,
    /// A second ringws binary (e.g. the build before a change), run with the same arguments as
    /// ringws as the server `ringws-before` (`--servers ... baseline`) and reported as a ratio to
    /// ringws. The load generator stays the --ringws (or --load) binary.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// Where the peer binaries (fastwebsockets_echo, tungstenite_echo) are.
    #[arg(long, default_value_os_t = compare_dir().join("target/release"))]
    peers_dir: PathBuf,
    /// CPU the server is pinned to.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// CPU the load generator is pinned to.
    #[arg(long, default_value_t = 1)]
    load_cpu: usize,
    /// Seconds to wait between runs (lets sockets and caches settle).
    #[arg(long, default_value_t = 1.0)]
    pause: f64,
    /// Serve wss:// with this certificate chain (PEM; with --tls-key): every server is given it
    /// (`--tls-cert FILE --tls-key FILE`), the load generator connects to wss:// with `--insecure`
    /// (certificate checks cost the client, not the servers measured).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// New connections the harness opens one after another during each measured window (TCP
    /// connect, upgrade request, 101), timing each: how long a client joining a busy server waits
    /// (reported as upgrade p50/p99). 0 turns the probes off; they are not made over TLS.
    #[arg(long, default_value_t = 200)]
    upgrade_probes: u32,
}

impl Args {
    /// The certificate and key to serve wss:// with, if given.
    fn tls(&self) -> Option<(&Path, &Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }

    /// The URL scheme the load generator uses, and the option it then needs.
    fn scheme(&self) -> (&'static str, Option<&'static str>) {
        if self.tls().is_some() {
            ("wss", Some("--insecure"))
        } else {
            ("ws", None)
        }
    }

    /// The servers to run, in order: `--servers`, or the defaults with `baseline` after ringws
    /// when `--baseline` is given.
    fn servers(&self) -> Vec<Server> {
        match &self.servers {
            Some(servers) => servers.clone(),
            None => {
                let mut servers = DEFAULT_SERVERS.to_vec();
                if self.baseline.is_some() {
                    servers.insert(1, Server::Baseline);
                }
                servers
            }
        }
    }

    /// Messages in flight per connection passed to the generator: `--in-flight`, else 1 when
    /// closed-loop and nothing (the generator's own cap) at a fixed rate.
    fn in_flight(&self) -> Option<u32> {
        match (self.in_flight, self.rate.is_empty()) {
            (Some(n), _) => Some(n),
            (None, true) => Some(1),
            (None, false) => None,
        }
    }

    /// The target rate of every size, in `--sizes` order; empty when closed-loop.
    fn rates(&self) -> Result<Vec<SizeRate>, RateError> {
        if self.rate.is_empty() {
            return Ok(Vec::new());
        }
        rate::resolve(&self.rate, &self.sizes)
    }

    /// Refuses options that make no sense, before anything is started.
    fn check(&self) -> Result<(), HarnessError> {
        let duration_ok = self.duration.is_finite() && self.duration > 0.0;
        let waits_ok = [self.warmup, self.pause]
            .iter()
            .all(|v| v.is_finite() && *v >= 0.0);
        if !(duration_ok && waits_ok) {
            return Err(HarnessError::Usage(
                "--duration must be > 0, --warmup and --pause >= 0 seconds".into(),
            ));
        }
        if self.connections.contains(&0)
            || self.sizes.contains(&0)
            || self.in_flight == Some(0)
            || self.repeat == 0
        {
            return Err(HarnessError::Usage(
                "connections, sizes, --in-flight and --repeat must be > 0".into(),
            ));
        }
        self.rates()
            .map_err(|e| HarnessError::Usage(e.to_string()))?;
        let servers = self.servers();
        if servers.contains(&Server::Baseline) && self.baseline.is_none() {
            return Err(HarnessError::Usage(
                "--servers baseline needs --baseline PATH (the ringws binary to compare with)"
                    .into(),
            ));
        }
        if self.baseline.is_some() && !servers.contains(&Server::Baseline) {
            return Err(HarnessError::Usage(
                "--baseline is given but --servers does not list baseline: it would not run".into(),
            ));
        }
        Ok(())
    }
}

/// Why the harness could not do its job (a failed run is not one: it is recorded and reported).
#[derive(Debug)]
enum HarnessError {
    /// The options make no sense.
    Usage(String),
    /// A needed binary is missing.
    Missing(PathBuf),
    /// The load generator binary has no working `load` subcommand.
    NoLoad(PathBuf),
    /// Reading, writing or process control failed.
    Io(io::Error),
    /// compare.json could not be written.
    Json(serde_json::Error),
    /// compare.svg could not be drawn.
    Chart(chart::ChartError),
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::Usage(msg) => f.write_str(msg),
            HarnessError::Missing(path) => write!(
                f,
                "{} not found: build it first (benches/compare/run.sh builds everything)",
                path.display()
            ),
            HarnessError::NoLoad(path) => write!(
                f,
                "`{} load --help` failed: this binary has no load generator (pass one with --load)",
                path.display()
            ),
            HarnessError::Io(e) => write!(f, "{e}"),
            HarnessError::Json(e) => write!(f, "writing compare.json: {e}"),
            HarnessError::Chart(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for HarnessError {
    fn from(e: io::Error) -> Self {
        HarnessError::Io(e)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every combination, writes the results; the exit code says whether all runs succeeded
/// (0), some failed (1) or a signal cut the comparison short (130).
fn run(args: &Args) -> Result<ExitCode, HarnessError> {
    args.check()?;
    let servers = args.servers();
    // check() refused a --rate that does not fit --sizes.
    let rates = args.rates().unwrap_or_default();
    let load_bin = args.load.clone().unwrap_or_else(|| args.ringws.clone());
    for server in &servers {
        // check() refused a server without a program.
        let program = server.program(args).unwrap_or_default();
        if !program.is_file() {
            return Err(HarnessError::Missing(program));
        }
    }
    if let Some(baseline) = &args.baseline
        && let (Ok(before), Ok(now)) = (fs::read(baseline), fs::read(&args.ringws))
        && before == now
    {
        eprintln!(
            "warning: --baseline {} is the same binary as --ringws {}: ringws-before will only show \
             the noise between runs of one build",
            baseline.display(),
            args.ringws.display()
        );
    }
    if !load_bin.is_file() {
        return Err(HarnessError::Missing(load_bin));
    }
    let has_load = std::process::Command::new(&load_bin)
        .args(["load", "--help"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_load {
        return Err(HarnessError::NoLoad(load_bin));
    }

    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))?;
    }
    let nofile = procs::raise_nofile_limit()?;
    let max_connections = args.connections.iter().copied().max().unwrap_or(0);
    if u64::from(max_connections) + 64 > nofile.0 {
        eprintln!(
            "warning: open-file limit {} is below {max_connections} connections: expect failed connects",
            nofile.0
        );
    }
    let ticks = procs::clock_ticks_per_second();
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| compare_dir().join("results"));
    fs::create_dir_all(&out_dir)?;

    let mut report = Report {
        environment: Environment::collect(
            repo_dir(),
            &compare_dir().join("Cargo.lock"),
            ticks,
            nofile,
        ),
        config: Config {
            duration_s: args.duration,
            warmup_s: args.warmup,
            in_flight: args.in_flight(),
            rates: rates.clone(),
            repeat: args.repeat,
            connections: args.connections.clone(),
            sizes: args.sizes.clone(),
            servers: servers.iter().map(|s| s.name().to_owned()).collect(),
            baseline: args.baseline.as_ref().map(|p| p.display().to_string()),
            server_cpu: args.server_cpu,
            load_cpu: args.load_cpu,
            load_command: format!(
                "taskset -c {} {} load --url {}://127.0.0.1:PORT/{} --connections N --size BYTES --duration {} \
                 --warmup {}{}{} --binary --workers 1 --json",
                args.load_cpu,
                load_bin.display(),
                args.scheme().0,
                args.scheme().1.map(|o| format!(" {o}")).unwrap_or_default(),
                args.duration,
                args.warmup,
                args.in_flight()
                    .map(|n| format!(" --in-flight {n}"))
                    .unwrap_or_default(),
                if rates.is_empty() { "" } else { " --rate RATE" },
            ),
            cpu_window: format!(
                "utime+stime of each process (all threads) from /proc/PID/stat, read every {} ms; the \
                 window runs from {} s after the generator reports its connections established (the \
                 end of its warm-up) for {} s (its measured window); % is of one core",
                procs::POLL.as_millis(),
                args.warmup,
                args.duration
            ),
        },
        runs: Vec::new(),
        medians: Vec::new(),
        interrupted: false,
    };

    let bench = Bench {
        args,
        load_bin: &load_bin,
        ticks,
        interrupted: &interrupted,
    };
    let repeat = usize::try_from(args.repeat).unwrap_or(usize::MAX);
    let total = args.sizes.len() * args.connections.len() * repeat * servers.len();
    let mut failed = 0;
    'all: for &size in &args.sizes {
        let target = rates.iter().find(|r| r.size == size).map(|r| r.msgs_per_s);
        for &connections in &args.connections {
            // Rounds inside the scenario, servers inside the round: every server's runs are spread
            // over the same stretch of time, so drifting background load hits them alike.
            for round in 1..=args.repeat {
                for &server in &servers {
                    if !report.runs.is_empty() {
                        sleep_unless(Duration::from_secs_f64(args.pause), &interrupted);
                    }
                    if interrupted.load(Ordering::Relaxed) {
                        break 'all;
                    }
                    eprintln!(
                        "[{}/{total}] {} × {connections} connections × {size} B{}{}",
                        report.runs.len() + 1,
                        server.name(),
                        target.map(|t| format!(" at {t} msg/s")).unwrap_or_default(),
                        if args.repeat > 1 {
                            format!(", round {round}/{}", args.repeat)
                        } else {
                            String::new()
                        }
                    );
                    let run = bench
                        .run(server, connections, size, target)
                        .with_round(round);
                    if interrupted.load(Ordering::Relaxed) {
                        // Cut short by the signal: not a result.
                        break 'all;
                    }
                    match &run.error {
                        Some(e) => {
                            failed += 1;
                            eprintln!("  failed: {e}");
                        }
                        None => eprintln!(
                            "  {:.0} msg/s, p50 {:.1} µs, p99 {:.1} µs, server CPU {:.1}%, load CPU {:.1}%",
                            run.metrics.msgs_per_s.unwrap_or(f64::NAN),
                            run.metrics.p50_us.unwrap_or(f64::NAN),
                            run.metrics.p99_us.unwrap_or(f64::NAN),
                            run.metrics.server_cpu_pct.unwrap_or(f64::NAN),
                            run.metrics.load_cpu_pct.unwrap_or(f64::NAN),
                        ),
                    }
                    for note in &run.notes {
                        eprintln!("  note: {note}");
                    }
                    report.runs.push(run);
                }
            }
        }
    }
    report.interrupted = interrupted.load(Ordering::Relaxed);
    report.fill_ratios();

    let json = serde_json::to_string_pretty(&report).map_err(HarnessError::Json)?;
    fs::write(out_dir.join("compare.json"), json + "\n")?;
    fs::write(out_dir.join("compare.md"), report.markdown())?;
    fs::write(
        out_dir.join("compare.svg"),
        chart::svg(&report).map_err(HarnessError::Chart)?,
    )?;
    eprintln!(
        "wrote compare.json, compare.md and compare.svg to {}",
        out_dir.display()
    );

    Ok(if report.interrupted {
        ExitCode::from(130)
    } else if failed > 0 {
        eprintln!("{failed} of {total} runs failed");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Sleeps for `d`, waking early if `interrupted` is raised.
fn sleep_unless(d: Duration, interrupted: &AtomicBool) {
    let end = Instant::now() + d;
    while !interrupted.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        thread::sleep((end - now).min(procs::POLL));
    }
}

/// What every run shares: the options, the load generator, the tick rate and the interrupt flag.
struct Bench<'a> {
    args: &'a Args,
    load_bin: &'a Path,
    ticks: f64,
    interrupted: &'a AtomicBool,
}

/// What a run produced, filled in as far as it got.
#[derive(Default)]
struct Outcome {
    load: Option<LoadReport>,
    cpu: Option<CpuWindow>,
    upgrades: Option<Upgrades>,
    notes: Vec<String>,
}

/// Both processes' CPU time and the pinned CPUs' totals (ticks) at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    server: u64,
    load: u64,
    cores: CoreTicks,
}

/// What following a load generator to its exit recorded.
struct Followed {
    /// When it was started.
    started: Instant,
    /// When its `established` phase line was seen, if it printed one.
    established: Option<Instant>,
    /// CPU samples, one per poll, the last one taken after it exited (before it was reaped).
    samples: Vec<Sample>,
    /// How it exited.
    status: std::process::ExitStatus,
}

/// The stderr line `ringws load --json` prints once every connection is up or has failed; its
/// warm-up starts then.
const ESTABLISHED_MARKER: &str = r#""phase":"established""#;

impl Bench<'_> {
    /// One server under one load. Never fails: what went wrong is recorded in the run, next to
    /// whatever was measured before it went wrong.
    /// `target` is the fixed message rate, `None` closed-loop.
    fn run(&self, server: Server, connections: u32, size: usize, target: Option<f64>) -> Run {
        let mut out = Outcome::default();
        let error = self
            .measure(server, connections, size, target, &mut out)
            .err();
        let mut run = Run::new(server.name(), connections, size, out.load, out.cpu, error)
            .with_upgrades(out.upgrades)
            .with_target_rate(target);
        run.notes.extend(out.notes);
        run
    }

    /// Starts the server, runs the load, fills `out`, stops the server. Errors are messages for the
    /// record; children are stopped on every path ([`Child`]'s `Drop` covers early returns).
    fn measure(
        &self,
        server: Server,
        connections: u32,
        size: usize,
        target: Option<f64>,
        out: &mut Outcome,
    ) -> Result<(), String> {
        let args = self.args;
        let port = procs::free_port().map_err(|e| format!("finding a free port: {e}"))?;
        let addr = format!("127.0.0.1:{port}");
        let program = server
            .program(args)
            .ok_or("no binary for this server (--baseline missing)")?;
        let server_args = server.args(&addr, args.tls());
        let mut srv = Child::spawn(
            server.name(),
            args.server_cpu,
            &program,
            &server_args,
            Some("listening on"),
            false,
        )
        .map_err(|e| e.to_string())?;
        srv.wait_ready(READY_TIMEOUT, self.interrupted)
            .map_err(|e| format!("server not ready: {e}; stderr: {}", srv.stderr_tail()))?;

        let load_args = load_args(args, &addr, connections, size, target);
        let mut generator = Child::spawn(
            "load generator",
            args.load_cpu,
            self.load_bin,
            &load_args,
            Some(ESTABLISHED_MARKER),
            true,
        )
        .map_err(|e| e.to_string())?;
        let prober = match (args.upgrade_probes, args.tls()) {
            (0, _) | (_, Some(_)) => None,
            (n, None) => Some(
                Prober::spawn(
                    addr.parse().map_err(|e| format!("{addr}: {e}"))?,
                    n,
                    Duration::from_secs_f64(args.duration),
                )
                .map_err(|e| format!("starting the upgrade probes: {e}"))?,
            ),
        };
        let followed = self.follow(&mut srv, &mut generator, connections, prober.as_ref());
        out.upgrades = prober.and_then(Prober::finish);
        // Stop the server whatever happened; a server that needed SIGKILL is reported after the
        // numbers are kept.
        let stopped = srv.stop(STOP_GRACE);
        let followed = followed?;
        let (anchor, at) = match followed.established {
            Some(at) => (Anchor::Established, at),
            None => (Anchor::Start, followed.started),
        };
        let open = at + Duration::from_secs_f64(args.warmup);
        let close = open + Duration::from_secs_f64(args.duration);
        out.cpu = cpu_window(&followed.samples, open, close, anchor, self.ticks);

        let stdout = generator
            .take_stdout()
            .map_err(|e| format!("reading the load generator's output: {e}"))?;
        let report = parse_load_output(&stdout).map_err(|e| {
            format!(
                "load generator ({}) output: {e}; stderr: {}",
                followed.status,
                generator.stderr_tail()
            )
        })?;
        out.load = Some(report);
        if !followed.status.success() {
            // ringws load exits 1 after a complete run that counted failures: the report stands,
            // its error counters say what failed.
            out.notes
                .push(format!("load generator exited with {}", followed.status));
        }
        match stopped {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!(
                "server ignored SIGTERM for {STOP_GRACE:?} and was killed"
            )),
            Err(e) => Err(format!("stopping the server: {e}")),
        }
    }

    /// Follows a load run to the generator's exit, sampling both processes' CPU time at every poll
    /// and noting when the generator announced its connections established (the `prober`'s window
    /// opens when the warm-up after that ends).
    fn follow(
        &self,
        srv: &mut Child,
        generator: &mut Child,
        connections: u32,
        prober: Option<&Prober>,
    ) -> Result<Followed, String> {
        let started = Instant::now();
        // Connecting has no fixed length: allow a millisecond per connection on top of the slack.
        let deadline = started
            + Duration::from_secs_f64(self.args.warmup + self.args.duration)
            + LOAD_SLACK
            + Duration::from_millis(u64::from(connections));
        let mut established = None;
        let mut samples = Vec::new();
        loop {
            srv.check_running(self.interrupted).map_err(|e| match e {
                WaitError::Exited(status) => format!(
                    "server exited during the run ({status}); stderr: {}",
                    srv.stderr_tail()
                ),
                other => other.to_string(),
            })?;
            // Read before reaping: an exited, unreaped generator is a zombie whose CPU times are
            // still in /proc.
            let g = ProcStat::read(generator.pid())
                .map_err(|e| format!("reading load generator CPU: {e}"))?;
            let s = ProcStat::read(srv.pid()).map_err(|e| format!("reading server CPU: {e}"))?;
            let cores = CoreTicks::read(&[self.args.server_cpu, self.args.load_cpu])
                .map_err(|e| format!("reading /proc/stat: {e}"))?;
            let now = Instant::now();
            samples.push(Sample {
                at: now,
                server: s.cpu_ticks,
                load: g.cpu_ticks,
                cores,
            });
            if established.is_none() && generator.is_ready() {
                established = Some(now);
                if let Some(p) = prober {
                    p.open(now + Duration::from_secs_f64(self.args.warmup));
                }
            }
            // The leader thread turns zombie first; the process can be reaped once every thread
            // has exited, a poll or so later.
            if g.state == 'Z'
                && let Some(status) = generator.try_reap().map_err(|e| e.to_string())?
            {
                return Ok(Followed {
                    started,
                    established,
                    samples,
                    status,
                });
            }
            if now >= deadline {
                return Err(format!(
                    "load generator still running after {:?}",
                    deadline - started
                ));
            }
            thread::sleep(procs::POLL);
        }
    }
}

/// The load generator's arguments for one run against `addr` (`target`: the fixed message rate,
/// `None` closed-loop).
fn load_args(
    args: &Args,
    addr: &str,
    connections: u32,
    size: usize,
    target: Option<f64>,
) -> Vec<String> {
    let (scheme, tls_option) = args.scheme();
    let mut load = vec![
        "load".to_owned(),
        "--url".into(),
        format!("{scheme}://{addr}/"),
        "--connections".into(),
        connections.to_string(),
        "--size".into(),
        size.to_string(),
        "--duration".into(),
        args.duration.to_string(),
        "--warmup".into(),
        args.warmup.to_string(),
    ];
    if let Some(n) = args.in_flight() {
        load.extend(["--in-flight".into(), n.to_string()]);
    }
    if let Some(rate) = target {
        load.extend(["--rate".into(), rate.to_string()]);
    }
    load.extend([
        "--binary".into(),
        "--workers".into(),
        "1".into(),
        "--json".into(),
    ]);
    load.extend(tls_option.map(str::to_owned));
    load
}

/// The CPU used between the first sample at or after `open` and the last at or before `close`;
/// `None` when no two samples fall in between (the generator exited first, or the window is
/// shorter than a poll).
fn cpu_window(
    samples: &[Sample],
    open: Instant,
    close: Instant,
    anchor: Anchor,
    ticks_per_s: f64,
) -> Option<CpuWindow> {
    let first = samples.iter().find(|s| s.at >= open)?;
    let last = samples
        .iter()
        .rev()
        .find(|s| s.at <= close)
        .filter(|s| s.at > first.at)?;
    let seconds = |t: u64, t0: u64| t.saturating_sub(t0) as f64 / ticks_per_s;
    Some(CpuWindow {
        window_s: last.at.duration_since(first.at).as_secs_f64(),
        server_cpu_s: seconds(last.server, first.server),
        load_cpu_s: seconds(last.load, first.load),
        cores_busy_s: seconds(last.cores.busy, first.cores.busy),
        cores_interrupt_s: seconds(last.cores.interrupts, first.cores.interrupts),
        cores_steal_s: seconds(last.cores.steal, first.cores.steal),
        anchor,
        // The final sample is the generator's last. Its own window ends up to a poll or two before
        // ours (we see its established line late), so only an exit well before `close` is early.
        truncated: samples
            .last()
            .is_some_and(|s| s.at + TRUNCATION_TOLERANCE < close),
    })
}

/// The load generator's report: the last line of its stdout that parses as its JSON object.
fn parse_load_output(stdout: &str) -> Result<LoadReport, String> {
    let line = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("no JSON object in {:?}", truncate(stdout, 200)))?;
    serde_json::from_str(line).map_err(|e| format!("{e} in {:?}", truncate(line, 200)))
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_last_json_line() {
        let out = format!(
            "some log line\n{}\n",
            report::tests::SAMPLE.replace('\n', "")
        );
        assert_eq!(parse_load_output(&out).unwrap().messages, 1_234_567);
        assert!(
            parse_load_output("nothing here")
                .unwrap_err()
                .contains("no JSON")
        );
        assert!(
            parse_load_output("{\"msgs_per_s\": 1}").is_err(),
            "missing fields are an error"
        );
    }

    #[test]
    fn cpu_window_takes_the_samples_inside() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 10 ms polls for 1.5 s; the server burns 1 tick per poll, the generator 2, and the two
        // cores 4 (one of it interrupts and steal).
        let samples: Vec<Sample> = (0..150u64)
            .map(|i| Sample {
                at: at(i * 10),
                server: i,
                load: 2 * i,
                cores: CoreTicks {
                    busy: 4 * i,
                    interrupts: i / 2,
                    steal: i / 2,
                },
            })
            .collect();
        let w = cpu_window(&samples, at(205), at(1005), Anchor::Established, 100.0).unwrap();
        // First sample at 210 ms (i = 21), last at 1000 ms (i = 100).
        assert!((w.window_s - 0.79).abs() < 1e-9, "{}", w.window_s);
        assert!((w.server_cpu_s - 0.79).abs() < 1e-9);
        assert!((w.load_cpu_s - 1.58).abs() < 1e-9);
        assert!((w.cores_busy_s - 3.16).abs() < 1e-9);
        // 21 / 2 = 10 and 100 / 2 = 50 ticks.
        assert!((w.cores_interrupt_s - 0.40).abs() < 1e-9);
        assert!((w.cores_steal_s - 0.40).abs() < 1e-9);
        assert!(!w.truncated);
        assert_eq!(w.anchor, Anchor::Established);

        // The generator exited at 600 ms, before the planned close.
        let early = cpu_window(&samples[..61], at(205), at(1005), Anchor::Start, 100.0).unwrap();
        assert!(early.truncated);
        assert!((early.window_s - 0.39).abs() < 1e-9);
        // Exiting at 950 ms, within the tolerance of the 1005 ms close, is the expected end.
        let on_time = cpu_window(&samples[..96], at(205), at(1005), Anchor::Start, 100.0).unwrap();
        assert!(!on_time.truncated);
        // It exited before the window opened, or the window holds a single sample.
        assert!(cpu_window(&samples[..20], at(205), at(1005), Anchor::Start, 100.0).is_none());
        assert!(cpu_window(&samples, at(205), at(212), Anchor::Start, 100.0).is_none());
    }

    #[test]
    fn truncates_at_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn server_command_lines() {
        assert_eq!(
            Server::Ringws.args("127.0.0.1:1", None),
            ["serve", "--addr", "127.0.0.1:1", "--workers", "1"]
        );
        assert_eq!(
            Server::Tungstenite.args("127.0.0.1:1", None),
            ["--addr", "127.0.0.1:1"]
        );
        let tls = Some((Path::new("c.pem"), Path::new("k.pem")));
        assert_eq!(
            Server::Tungstenite.args("127.0.0.1:1", tls),
            [
                "--addr",
                "127.0.0.1:1",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem"
            ]
        );
        let a =
            Args::try_parse_from(["compare", "--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(a.scheme(), ("wss", Some("--insecure")));
        assert!(Args::try_parse_from(["compare", "--tls-cert", "c.pem"]).is_err());
        let a = Args::try_parse_from(["compare", "--peers-dir", "/p", "--ringws", "/r/ringws"])
            .unwrap();
        assert_eq!(Server::Ringws.program(&a).unwrap(), Path::new("/r/ringws"));
        assert_eq!(
            Server::Fastwebsockets.program(&a).unwrap(),
            Path::new("/p/fastwebsockets_echo")
        );
        assert_eq!(Server::Baseline.program(&a), None, "no --baseline");
    }

    #[test]
    fn baseline_runs_the_second_binary_like_ringws() {
        let a = Args::try_parse_from([
            "compare",
            "--ringws",
            "/r/ringws",
            "--baseline",
            "/b/ringws-before",
            "--servers",
            "ringws,baseline",
        ])
        .unwrap();
        assert_eq!(a.servers(), [Server::Ringws, Server::Baseline]);
        assert!(a.check().is_ok());
        assert_eq!(Server::Baseline.name(), "ringws-before");
        assert_eq!(
            Server::Baseline.program(&a).unwrap(),
            Path::new("/b/ringws-before")
        );
        assert_eq!(
            Server::Baseline.args("127.0.0.1:1", None),
            Server::Ringws.args("127.0.0.1:1", None),
            "same arguments as ringws"
        );
        // The server differs, the load generator does not.
        assert_eq!(a.load, None);
        assert_eq!(a.ringws, Path::new("/r/ringws"));
        // Also selectable by its result name.
        let alias = Args::try_parse_from(["compare", "--servers", "ringws-before"]).unwrap();
        assert_eq!(alias.servers(), [Server::Baseline]);

        // With --baseline and no --servers, the defaults gain it right after ringws.
        let d = Args::try_parse_from(["compare", "--baseline", "/b/x"]).unwrap();
        assert_eq!(
            d.servers(),
            [
                Server::Ringws,
                Server::Baseline,
                Server::Fastwebsockets,
                Server::Tungstenite
            ]
        );
        assert!(d.check().is_ok());
    }

    #[test]
    fn baseline_without_its_binary_is_refused() {
        let usage = |argv: &[&str]| match Args::try_parse_from(argv).unwrap().check() {
            Err(HarnessError::Usage(msg)) => msg,
            other => panic!("{argv:?}: expected a usage error, got {other:?}"),
        };
        assert!(usage(&["compare", "--servers", "ringws,baseline"]).contains("--baseline PATH"));
        // And a --baseline that --servers leaves out would be silently ignored: refused too.
        assert!(
            usage(&["compare", "--baseline", "/b/x", "--servers", "ringws"])
                .contains("does not list baseline")
        );
    }

    #[test]
    fn rate_and_repeat_options() {
        let a = Args::try_parse_from([
            "compare",
            "--sizes",
            "1024,16384,65536",
            "--rate",
            "1024=40000,16384=20000",
            "--rate",
            "8000",
            "--repeat",
            "3",
        ])
        .unwrap();
        assert!(a.check().is_ok());
        assert_eq!(a.repeat, 3);
        let rates: Vec<(usize, f64)> = a
            .rates()
            .unwrap()
            .iter()
            .map(|r| (r.size, r.msgs_per_s))
            .collect();
        assert_eq!(rates, [(1024, 4e4), (16384, 2e4), (65536, 8e3)]);

        // At a fixed rate the generator keeps its own in-flight cap unless --in-flight is given.
        let args = load_args(&a, "127.0.0.1:9", 100, 1024, Some(40_000.0));
        let joined = args.join(" ");
        assert!(joined.contains("--rate 40000 "), "{joined}");
        assert!(!joined.contains("--in-flight"), "{joined}");
        let capped =
            Args::try_parse_from(["compare", "--rate", "5000", "--in-flight", "64"]).unwrap();
        let joined = load_args(&capped, "127.0.0.1:9", 100, 20, Some(5_000.0)).join(" ");
        assert!(joined.contains("--in-flight 64 --rate 5000 "), "{joined}");

        // Closed loop, the default: one in flight, no rate, one round.
        let d = Args::try_parse_from(["compare"]).unwrap();
        assert_eq!(d.repeat, 1);
        assert!(d.rates().unwrap().is_empty());
        assert_eq!(
            load_args(&d, "127.0.0.1:9", 100, 20, None),
            [
                "load",
                "--url",
                "ws://127.0.0.1:9/",
                "--connections",
                "100",
                "--size",
                "20",
                "--duration",
                "10",
                "--warmup",
                "2",
                "--in-flight",
                "1",
                "--binary",
                "--workers",
                "1",
                "--json"
            ]
        );
    }

    #[test]
    fn bad_rates_and_rounds_are_refused() {
        assert!(Args::try_parse_from(["compare", "--rate", "fast"]).is_err());
        assert!(Args::try_parse_from(["compare", "--rate", "0"]).is_err());
        let usage = |argv: &[&str]| match Args::try_parse_from(argv).unwrap().check() {
            Err(HarnessError::Usage(msg)) => msg,
            other => panic!("{argv:?}: expected a usage error, got {other:?}"),
        };
        assert!(usage(&["compare", "--sizes", "20,1024", "--rate", "1024=5"]).contains("[20]"));
        assert!(usage(&["compare", "--sizes", "20", "--rate", "64=5,10"]).contains("size 64"));
        assert!(usage(&["compare", "--repeat", "0"]).contains("--repeat"));
        assert!(usage(&["compare", "--in-flight", "0"]).contains("--in-flight"));
    }

    #[test]
    fn options_parse_lists_and_defaults() {
        let a = Args::try_parse_from([
            "compare",
            "--connections",
            "100,1000",
            "--sizes",
            "20",
            "--servers",
            "ringws,tungstenite",
        ])
        .unwrap();
        assert_eq!(a.connections, vec![100, 1000]);
        assert_eq!(a.sizes, vec![20]);
        assert_eq!(a.servers(), vec![Server::Ringws, Server::Tungstenite]);
        assert_eq!(a.duration, 10.0);
        let d = Args::try_parse_from(["compare"]).unwrap();
        assert_eq!(d.connections, vec![100, 1000, 10000]);
        assert_eq!(d.sizes, vec![20, 1024, 16384]);
        assert_eq!(d.servers().len(), 3);
        assert!(!d.servers().contains(&Server::Baseline));
        assert!(Args::try_parse_from(["compare", "--servers", "nginx"]).is_err());
    }
}
