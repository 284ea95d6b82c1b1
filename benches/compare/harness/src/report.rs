//! What one run measured, the metrics derived from it, ratios to ringws, and the Markdown table.

use crate::environment::Environment;
use crate::probe::Upgrades;
use crate::rate::{self, RateCheck, SizeRate};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// The server every ratio is taken against.
pub const BASELINE: &str = "ringws";

/// A load generator at or above this CPU share may be the bottleneck, not the server; the table
/// marks such runs.
pub const SATURATED_CPU_PCT: f64 = 95.0;

/// Other work on the two pinned CPUs at or above this share of one core disturbs a run; the table
/// marks it.
pub const DISTURBED_CPU_PCT: f64 = 10.0;

/// The load generator's JSON report (`ringws load --json`). Fields the harness does not use are kept
/// in `extra`, so compare.json holds every number the generator printed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// Connections that completed the opening handshake.
    pub connections_established: u64,
    /// Connections that did not.
    pub connections_failed: u64,
    /// Echoes received back and verified during the measured window.
    pub messages: u64,
    /// `messages` per second of the measured window.
    pub msgs_per_s: f64,
    /// Round-trip latency percentiles, in microseconds.
    pub latency_us: Latency,
    /// Failures by kind, counted by the generator.
    pub errors: LoadErrors,
    /// Everything else the generator reported (url, duration, connect rate, MB/s, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Round-trip latency percentiles in microseconds, as the load generator reports them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Other percentiles (p90, p999, max).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Failure counters of the load generator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadErrors {
    /// Echoes that differed from what was sent.
    pub mismatch: u64,
    /// Connections the server closed during the run.
    pub closed: u64,
    /// Failed connection attempts.
    pub connect: u64,
    /// Echoes that did not come back in time.
    pub timeout: u64,
    /// Messages the generator could not send (its send queue was full); not in every report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// Counters this harness does not know about, kept for compare.json.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl LoadErrors {
    /// All failures together: a comparison is only meaningful where this is 0.
    pub fn total(&self) -> u64 {
        self.mismatch + self.closed + self.connect + self.timeout + self.dropped.unwrap_or(0)
    }
}

/// What the CPU window's timing starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    /// The generator's `{"phase":"established",...}` stderr line: every connection is resolved and
    /// its warm-up starts, so the window matches its measured window.
    Established,
    /// The generator's start (it printed no such line): connection set-up may overlap the window.
    Start,
}

/// CPU time used by the server and the load generator over the harness's measuring window.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CpuWindow {
    /// Wall-clock length of the window, seconds.
    pub window_s: f64,
    /// Server CPU time (user + system, all threads) in the window, seconds.
    pub server_cpu_s: f64,
    /// Load generator CPU time in the window, seconds.
    pub load_cpu_s: f64,
    /// Busy time of the pinned CPUs together (everything but idle and iowait), seconds.
    pub cores_busy_s: f64,
    /// Of that, interrupt handling (irq + softirq), seconds. Depending on the kernel's accounting
    /// it is also in the times of the processes it interrupted, or charged to none.
    pub cores_interrupt_s: f64,
    /// Of that, hypervisor steal, seconds.
    pub cores_steal_s: f64,
    /// What the window was timed from.
    pub anchor: Anchor,
    /// The load generator exited before the window's planned end, which was then cut short.
    pub truncated: bool,
}

impl CpuWindow {
    /// CPU time of everything else on the pinned CPUs, in % of one core: their busy time less steal,
    /// the server and the generator. That is other processes and kernel threads (ksoftirqd among
    /// them). Interrupt work stays in the server's and generator's time where the kernel charges it
    /// to the task it interrupted (tick-based accounting, as here); with IRQ time accounting it is
    /// charged to no task and shows up here instead.
    pub fn others_pct(&self) -> Option<f64> {
        let others = self.cores_busy_s - self.cores_steal_s - self.server_cpu_s - self.load_cpu_s;
        // Ticks are sampled at slightly different moments per file: clamp the rounding below 0.
        (self.window_s > 0.0).then(|| 100.0 * others.max(0.0) / self.window_s)
    }
}

/// Everything compared between servers. Each field is `None` where the run could not produce it;
/// the same struct holds ratios to ringws (`value / ringws value`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Verified echoes per second.
    pub msgs_per_s: Option<f64>,
    /// Median round trip, microseconds.
    pub p50_us: Option<f64>,
    /// 99th-percentile round trip, microseconds.
    pub p99_us: Option<f64>,
    /// Server CPU use, percent of one core.
    pub server_cpu_pct: Option<f64>,
    /// Echoes per second of server CPU time: efficiency, independent of whether the server was busy.
    pub msgs_per_server_cpu_s: Option<f64>,
    /// Load generator CPU use, percent of one core.
    pub load_cpu_pct: Option<f64>,
    /// Median time a new client waited for its upgrade while the load ran, microseconds.
    pub upgrade_p50_us: Option<f64>,
    /// 99th percentile of the same, microseconds.
    pub upgrade_p99_us: Option<f64>,
}

/// One of the [`Metrics`] fields, to walk them in tables and charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// [`Metrics::msgs_per_s`]
    MsgsPerS,
    /// [`Metrics::p50_us`]
    P50,
    /// [`Metrics::p99_us`]
    P99,
    /// [`Metrics::server_cpu_pct`]
    ServerCpu,
    /// [`Metrics::msgs_per_server_cpu_s`]
    MsgsPerServerCpuS,
    /// [`Metrics::load_cpu_pct`]
    LoadCpu,
    /// [`Metrics::upgrade_p50_us`]
    UpgradeP50,
    /// [`Metrics::upgrade_p99_us`]
    UpgradeP99,
}

impl Metric {
    /// Every metric, in table order.
    pub const ALL: [Metric; 8] = [
        Metric::MsgsPerS,
        Metric::P50,
        Metric::P99,
        Metric::ServerCpu,
        Metric::MsgsPerServerCpuS,
        Metric::LoadCpu,
        Metric::UpgradeP50,
        Metric::UpgradeP99,
    ];

    /// Column heading / axis title.
    pub fn title(self) -> &'static str {
        match self {
            Metric::MsgsPerS => "msg/s",
            Metric::P50 => "p50 µs",
            Metric::P99 => "p99 µs",
            Metric::ServerCpu => "server CPU %",
            Metric::MsgsPerServerCpuS => "msg per server CPU-s",
            Metric::LoadCpu => "load-gen CPU %",
            Metric::UpgradeP50 => "upgrade p50 µs",
            Metric::UpgradeP99 => "upgrade p99 µs",
        }
    }

    /// Which way is better, for chart captions.
    pub fn better(self) -> &'static str {
        match self {
            Metric::MsgsPerS | Metric::MsgsPerServerCpuS => "higher is better",
            Metric::P50
            | Metric::P99
            | Metric::ServerCpu
            | Metric::LoadCpu
            | Metric::UpgradeP50
            | Metric::UpgradeP99 => "lower is better",
        }
    }

    /// This metric's value in `m`.
    pub fn of(self, m: &Metrics) -> Option<f64> {
        match self {
            Metric::MsgsPerS => m.msgs_per_s,
            Metric::P50 => m.p50_us,
            Metric::P99 => m.p99_us,
            Metric::ServerCpu => m.server_cpu_pct,
            Metric::MsgsPerServerCpuS => m.msgs_per_server_cpu_s,
            Metric::LoadCpu => m.load_cpu_pct,
            Metric::UpgradeP50 => m.upgrade_p50_us,
            Metric::UpgradeP99 => m.upgrade_p99_us,
        }
    }

    /// Formats a value of this metric for the table.
    fn format(self, v: f64) -> String {
        match self {
            Metric::MsgsPerS | Metric::MsgsPerServerCpuS => thousands(v),
            Metric::P50
            | Metric::P99
            | Metric::ServerCpu
            | Metric::LoadCpu
            | Metric::UpgradeP50
            | Metric::UpgradeP99 => format!("{v:.1}"),
        }
    }
}

impl Metrics {
    /// Derives the metrics of one run from the generator's report and the CPU window.
    pub fn derive(load: Option<&LoadReport>, cpu: Option<&CpuWindow>) -> Metrics {
        let cpu_pct = |seconds: f64| {
            cpu.filter(|c| c.window_s > 0.0)
                .map(|c| 100.0 * seconds / c.window_s)
        };
        let server_cpu_pct = cpu.and_then(|c| cpu_pct(c.server_cpu_s));
        let msgs_per_s = load.map(|l| l.msgs_per_s);
        Metrics {
            msgs_per_s,
            p50_us: load.map(|l| l.latency_us.p50),
            p99_us: load.map(|l| l.latency_us.p99),
            server_cpu_pct,
            // A rate over a share of a core: both are per wall-clock second, so the windows need
            // not coincide exactly, only lie in the same steady state.
            msgs_per_server_cpu_s: match (msgs_per_s, server_cpu_pct) {
                (Some(rate), Some(pct)) if pct > 0.0 => Some(rate / (pct / 100.0)),
                _ => None,
            },
            load_cpu_pct: cpu.and_then(|c| cpu_pct(c.load_cpu_s)),
            upgrade_p50_us: None,
            upgrade_p99_us: None,
        }
    }

    /// Metrics with each value given by `value`.
    fn from_fn(value: impl Fn(Metric) -> Option<f64>) -> Metrics {
        Metrics {
            msgs_per_s: value(Metric::MsgsPerS),
            p50_us: value(Metric::P50),
            p99_us: value(Metric::P99),
            server_cpu_pct: value(Metric::ServerCpu),
            msgs_per_server_cpu_s: value(Metric::MsgsPerServerCpuS),
            load_cpu_pct: value(Metric::LoadCpu),
            upgrade_p50_us: value(Metric::UpgradeP50),
            upgrade_p99_us: value(Metric::UpgradeP99),
        }
    }

    /// `self / base`, metric by metric, where both exist and the base is not 0.
    pub fn ratio_to(&self, base: &Metrics) -> Metrics {
        Metrics::from_fn(|metric| match (metric.of(self), metric.of(base)) {
            (Some(v), Some(b)) if b != 0.0 => Some(v / b),
            _ => None,
        })
    }

    /// The median of each metric over `all` (over those that have it).
    fn median<'a>(all: impl Iterator<Item = &'a Metrics> + Clone) -> Metrics {
        Metrics::from_fn(|metric| median(all.clone().filter_map(|m| metric.of(m)).collect()))
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// One server under one load: what was measured, derived, and what went wrong.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// Server name (`ringws`, `ringws-before`, `fastwebsockets`, `tungstenite`).
    pub server: String,
    /// Connections the load generator opened.
    pub connections: u32,
    /// Message size in bytes.
    pub size: usize,
    /// Which of the `--repeat` rounds of its scenario this run belongs to, from 1.
    #[serde(default = "first_round")]
    pub round: u32,
    /// Fixed-rate runs (`--rate`): the target and whether the run achieved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateCheck>,
    /// The load generator's report, if it produced one.
    pub load: Option<LoadReport>,
    /// CPU use over the measuring window, if it was measured.
    pub cpu: Option<CpuWindow>,
    /// Derived metrics.
    pub metrics: Metrics,
    /// `metrics` divided by ringws's for the same connections, size and round.
    pub ratio_to_ringws: Option<Metrics>,
    /// Upgrade latency while the load ran (`--upgrade-probes`), if probed.
    #[serde(default)]
    pub upgrades: Option<Upgrades>,
    /// Why the run failed, if it did (then the numbers above are partial or absent).
    pub error: Option<String>,
    /// Caveats that do not invalidate the run (window overlap, generator saturated, ...).
    pub notes: Vec<String>,
}

impl Run {
    /// A run record from its parts, with metrics derived and notes about its caveats filled in.
    pub fn new(
        server: &str,
        connections: u32,
        size: usize,
        load: Option<LoadReport>,
        cpu: Option<CpuWindow>,
        error: Option<String>,
    ) -> Run {
        let metrics = Metrics::derive(load.as_ref(), cpu.as_ref());
        let mut notes = Vec::new();
        if let Some(l) = &load
            && (l.errors.total() > 0 || l.connections_failed > 0)
        {
            notes.push(format!(
                "load errors: {} failed connects, {} mismatch, {} closed, {} connect, {} timeout, \
                 {} dropped",
                l.connections_failed,
                l.errors.mismatch,
                l.errors.closed,
                l.errors.connect,
                l.errors.timeout,
                l.errors.dropped.unwrap_or(0)
            ));
        }
        if cpu.is_some_and(|c| c.anchor == Anchor::Start) {
            notes.push(
                "CPU window timed from the generator's start (no established line): connection \
                 set-up may overlap it"
                    .to_owned(),
            );
        }
        if cpu.is_some_and(|c| c.truncated) {
            notes.push("load generator exited before the CPU window's end".to_owned());
        }
        if let Some(other) = cpu.and_then(|c| c.others_pct())
            && other >= DISTURBED_CPU_PCT
        {
            notes.push(format!(
                "other work used {other:.0}% of a core on the pinned CPUs: this run was disturbed"
            ));
        }
        if metrics.load_cpu_pct.is_some_and(|p| p >= SATURATED_CPU_PCT) {
            notes.push("load generator saturated: its CPU may be the limit".to_owned());
        }
        Run {
            server: server.to_owned(),
            connections,
            size,
            load,
            cpu,
            round: first_round(),
            rate: None,
            metrics,
            ratio_to_ringws: None,
            upgrades: None,
            error,
            notes,
        }
    }

    /// Sets the `--repeat` round this run belongs to.
    pub fn with_round(mut self, round: u32) -> Run {
        self.round = round;
        self
    }

    /// Checks a fixed-rate run's achieved rate against its `target` (closed-loop: `None`, no
    /// check), noting a run that fell short.
    pub fn with_target_rate(mut self, target: Option<f64>) -> Run {
        self.rate = target.map(|t| RateCheck::new(t, self.metrics.msgs_per_s));
        if let Some(check) = &self.rate
            && check.short
            && self.error.is_none()
        {
            self.notes.push(format!(
                "achieved {:.1}% of the {} msg/s target (more than {}% short): the server did not \
                 keep up, its CPU per message is not comparable",
                check.achieved_pct.unwrap_or(0.0),
                thousands(check.target_msgs_per_s),
                rate::SHORTFALL_PCT
            ));
        }
        self
    }

    /// Whether this fixed-rate run fell short of its target.
    fn short_of_rate(&self) -> bool {
        self.rate.is_some_and(|r| r.short)
    }

    /// Adds what the upgrade probes measured during the run.
    pub fn with_upgrades(mut self, upgrades: Option<Upgrades>) -> Run {
        if let Some(u) = &upgrades {
            self.metrics.upgrade_p50_us = Some(u.p50_us);
            self.metrics.upgrade_p99_us = Some(u.p99_us);
            if u.failed > 0 {
                self.notes.push(format!(
                    "{} of {} upgrade probes failed",
                    u.failed,
                    u.done + u.failed
                ));
            }
        }
        self.upgrades = upgrades;
        self
    }

    /// Total of the generator's failure counters and failed connects (0 without a report).
    fn failures(&self) -> u64 {
        self.load
            .as_ref()
            .map_or(0, |l| l.errors.total() + l.connections_failed)
    }
}

/// The round of a run recorded before `--repeat` existed.
fn first_round() -> u32 {
    1
}

/// One server in one scenario over its `--repeat` rounds: the median of each metric over its
/// successful runs, and the ratio of those medians to ringws's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Median {
    /// Server name.
    pub server: String,
    /// Connections the load generator opened.
    pub connections: u32,
    /// Message size in bytes.
    pub size: usize,
    /// Runs the medians are taken over: those without an error and, at a fixed rate, that met
    /// their target (all runs without an error when none met it).
    pub runs: u32,
    /// Runs that failed (left out).
    pub failed: u32,
    /// The generator's failure counters summed over every round (see [`Run`]'s failures).
    pub failures: u64,
    /// Fixed-rate runs without an error that fell short of their target: left out of the medians
    /// unless no run met the target, flagged either way.
    pub short_of_rate: u32,
    /// Whether those short runs were left out of the medians (some run met the target).
    pub short_left_out: bool,
    /// Fixed rate: the median achieved rate of the runs in the medians, in % of the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub achieved_pct: Option<f64>,
    /// The median of each metric.
    pub metrics: Metrics,
    /// `metrics` divided by ringws's medians for the same scenario.
    pub ratio_to_ringws: Option<Metrics>,
}

/// How the runs were made, recorded next to the results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Measured seconds per run.
    pub duration_s: f64,
    /// Warm-up seconds per run (not measured).
    pub warmup_s: f64,
    /// Messages in flight per connection given to the generator (`None`: its own default cap,
    /// at a fixed rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u32>,
    /// Fixed rate per message size (`--rate`); empty when closed-loop (flat out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rates: Vec<SizeRate>,
    /// Rounds per scenario (`--repeat`).
    #[serde(default = "first_round")]
    pub repeat: u32,
    /// Connection counts tried.
    pub connections: Vec<u32>,
    /// Message sizes tried, bytes.
    pub sizes: Vec<usize>,
    /// Servers compared.
    pub servers: Vec<String>,
    /// The `--baseline` binary run as `ringws-before`, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// CPU the server is pinned to.
    pub server_cpu: usize,
    /// CPU the load generator is pinned to.
    pub load_cpu: usize,
    /// The load generator's command line, with placeholders.
    pub load_command: String,
    /// How the CPU window is placed.
    pub cpu_window: String,
}

/// Everything compare.json holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Machine, software versions, date, commit.
    pub environment: Environment,
    /// Options of this comparison.
    pub config: Config,
    /// One record per server × connections × size × round, in the order run.
    pub runs: Vec<Run>,
    /// Per server × connections × size: the medians over the rounds (with one round, that run's
    /// numbers).
    #[serde(default)]
    pub medians: Vec<Median>,
    /// The harness was stopped by a signal before finishing every run.
    pub interrupted: bool,
}

impl Report {
    /// Fills every run's `ratio_to_ringws` from the ringws run with the same connections, size
    /// and round (left `None` where that run failed or is missing), then the medians over the
    /// rounds and their ratios.
    pub fn fill_ratios(&mut self) {
        let bases: Vec<(u32, usize, u32, Metrics)> = self
            .runs
            .iter()
            .filter(|r| r.server == BASELINE && r.error.is_none())
            .map(|r| (r.connections, r.size, r.round, r.metrics))
            .collect();
        for run in &mut self.runs {
            run.ratio_to_ringws = bases
                .iter()
                .find(|(c, s, round, _)| {
                    *c == run.connections && *s == run.size && *round == run.round
                })
                .map(|(_, _, _, base)| run.metrics.ratio_to(base));
        }
        self.medians = self.median_rows();
    }

    /// The medians of every server in every scenario, in the order first run.
    fn median_rows(&self) -> Vec<Median> {
        let mut rows: Vec<Median> = Vec::new();
        for run in &self.runs {
            let seen = rows.iter().any(|m| {
                m.server == run.server && m.size == run.size && m.connections == run.connections
            });
            if seen {
                continue;
            }
            let all: Vec<&Run> = self
                .runs
                .iter()
                .filter(|r| {
                    r.server == run.server && r.size == run.size && r.connections == run.connections
                })
                .collect();
            let ok: Vec<&Run> = all.iter().copied().filter(|r| r.error.is_none()).collect();
            // A run short of its rate did not serve the same load: its CPU per message is left
            // out, unless every run fell short (then the row is all there is, and flagged).
            let met: Vec<&Run> = ok.iter().copied().filter(|r| !r.short_of_rate()).collect();
            let used = if met.is_empty() { &ok } else { &met };
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            rows.push(Median {
                server: run.server.clone(),
                connections: run.connections,
                size: run.size,
                runs: count(used.len()),
                failed: count(all.len() - ok.len()),
                failures: all.iter().map(|r| r.failures()).sum(),
                short_of_rate: count(ok.len() - met.len()),
                short_left_out: !met.is_empty() && met.len() < ok.len(),
                achieved_pct: median(
                    used.iter()
                        .filter_map(|r| r.rate.and_then(|c| c.achieved_pct))
                        .collect(),
                ),
                metrics: Metrics::median(used.iter().map(|r| &r.metrics)),
                ratio_to_ringws: None,
            });
        }
        let bases: Vec<(u32, usize, Metrics)> = rows
            .iter()
            .filter(|m| m.server == BASELINE && m.runs > 0)
            .map(|m| (m.connections, m.size, m.metrics))
            .collect();
        for row in &mut rows {
            row.ratio_to_ringws = bases
                .iter()
                .find(|(c, s, _)| *c == row.connections && *s == row.size)
                .map(|(_, _, base)| row.metrics.ratio_to(base));
        }
        rows
    }

    /// The median row of `server` in a scenario, once [`Report::fill_ratios`] has run.
    pub fn median_of(&self, server: &str, size: usize, connections: u32) -> Option<&Median> {
        self.medians
            .iter()
            .find(|m| m.server == server && m.size == size && m.connections == connections)
    }

    /// The (size, connections) scenarios present, in the order first run.
    pub fn scenarios(&self) -> Vec<(usize, u32)> {
        let mut seen = Vec::new();
        for run in &self.runs {
            if !seen.contains(&(run.size, run.connections)) {
                seen.push((run.size, run.connections));
            }
        }
        seen
    }

    /// The comparison as Markdown: environment, method, an overview of ratios, then one table per
    /// scenario with every metric and its ratio to ringws.
    pub fn markdown(&self) -> String {
        let env = &self.environment;
        let cfg = &self.config;
        let mut md = String::new();
        let _ = writeln!(md, "# ringws vs. peers: echo throughput, latency and CPU\n");
        if self.interrupted {
            let _ = writeln!(md, "**Interrupted: only the runs below were completed.**\n");
        }
        let _ = writeln!(md, "| | |\n|---|---|");
        let _ = writeln!(md, "| date (UTC) | {} |", env.date_utc);
        let _ = writeln!(
            md,
            "| commit | {}{} |",
            env.git_commit,
            if env.git_dirty { " (dirty)" } else { "" }
        );
        let _ = writeln!(md, "| kernel | {} |", env.kernel);
        let _ = writeln!(md, "| CPU | {} ({} online) |", env.cpu_model, env.cpus);
        let _ = writeln!(md, "| rustc | {} |", env.rustc);
        let versions: Vec<String> = env
            .libraries
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(md, "| peer libraries | {} |", versions.join(", "));
        let in_flight = cfg.in_flight.map_or_else(
            || "the generator's own cap on messages in flight".to_owned(),
            |n| format!("{n} in flight per connection"),
        );
        let _ = writeln!(
            md,
            "| load | {} s warm-up + {} s measured, {in_flight}, binary messages |",
            cfg.warmup_s, cfg.duration_s
        );
        let _ = writeln!(md, "| mode | {} |", self.mode());
        if cfg.repeat > 1 {
            let _ = writeln!(
                md,
                "| rounds | {} per scenario, the servers interleaved within each round; medians over the rounds |",
                cfg.repeat
            );
        }
        let _ = writeln!(
            md,
            "| pinning | server on CPU {}, load generator on CPU {} |",
            cfg.server_cpu, cfg.load_cpu
        );
        let _ = writeln!(md, "| load command | `{}` |", cfg.load_command);
        if let Some(baseline) = &cfg.baseline {
            let _ = writeln!(
                md,
                "| ringws-before | `{baseline}`, run like ringws (`serve --addr ADDR --workers 1`) |"
            );
        }
        let _ = writeln!(
            md,
            "\nCPU: {}. Ratios are value ÷ ringws's value for the same scenario: above 1 is",
            cfg.cpu_window
        );
        let _ = writeln!(
            md,
            "better for msg/s and msg per server CPU-s, worse for latency and CPU %. Load-gen CPU ≥ {SATURATED_CPU_PCT}% \
             is marked ⚠: the generator, not the server, may set the pace there. \"Others on pinned CPUs\" is \
             the CPU time other processes and kernel threads took on the two pinned CPUs during the window, \
             in % of one core; ≥ {DISTURBED_CPU_PCT}% is marked ⚠: that run competed for its \
             cores.\n"
        );
        if !cfg.rates.is_empty() {
            let _ = writeln!(
                md,
                "Fixed rate: every server is sent the same messages per second, so msg per server CPU-s \
                 compares CPU per message under the same load. \"% of rate\" is the achieved rate ÷ the \
                 target; below {} % it is marked ⚠ (the server, or the generator, did not keep up: that \
                 run's CPU per message is not comparable).\n",
                100.0 - rate::SHORTFALL_PCT
            );
        }
        if cfg.repeat > 1 {
            let _ = writeln!(
                md,
                "Each run's ratio is to ringws's run in the same round; a server's **median** row is \
                 the median of each metric over its successful rounds (at a fixed rate, those that \
                 met the rate, unless none did), with the ratio of its medians to ringws's medians. \
                 The overview and the chart show the medians.\n"
            );
        }
        self.overview(&mut md);
        let rated = !cfg.rates.is_empty();
        for (size, connections) in self.scenarios() {
            let _ = writeln!(
                md,
                "## {}, {} connections\n",
                size_label(size),
                thousands(connections as f64)
            );
            let _ = write!(md, "| server |");
            for metric in Metric::ALL {
                let _ = write!(md, " {} |", metric.title());
            }
            if rated {
                md.push_str(" % of rate |");
            }
            let _ = writeln!(md, " failures | others on pinned CPUs % |");
            let _ = writeln!(
                md,
                "|---|{}---:|---:|{}",
                "---:|".repeat(Metric::ALL.len()),
                if rated { "---:|" } else { "" }
            );
            let runs = self
                .runs
                .iter()
                .filter(|r| r.size == size && r.connections == connections);
            let mut notes = Vec::new();
            for run in runs {
                let name = if cfg.repeat > 1 {
                    format!("{} #{}", run.server, run.round)
                } else {
                    run.server.clone()
                };
                let _ = write!(md, "| {name} |");
                for metric in Metric::ALL {
                    let _ = write!(
                        md,
                        " {} |",
                        cell(
                            &run.server,
                            &run.metrics,
                            run.ratio_to_ringws.as_ref(),
                            metric
                        )
                    );
                }
                if rated {
                    let pct = run.rate.and_then(|r| r.achieved_pct);
                    let _ = write!(md, " {} |", rate_cell(pct, run.short_of_rate()));
                }
                let others = run.cpu.as_ref().and_then(CpuWindow::others_pct);
                let _ = writeln!(
                    md,
                    " {} | {} |",
                    run.failures(),
                    others.map_or("–".to_owned(), |p| {
                        let mark = if p >= DISTURBED_CPU_PCT { " ⚠" } else { "" };
                        format!("{p:.1}{mark}")
                    })
                );
                if let Some(e) = &run.error {
                    notes.push(format!("{name}: **failed**: {}", e.replace('\n', " ")));
                }
                notes.extend(run.notes.iter().map(|n| format!("{name}: {n}")));
            }
            if cfg.repeat > 1 {
                let medians = self
                    .medians
                    .iter()
                    .filter(|m| m.size == size && m.connections == connections);
                for m in medians {
                    let _ = write!(md, "| **{} median** |", m.server);
                    for metric in Metric::ALL {
                        let _ = write!(
                            md,
                            " {} |",
                            cell(&m.server, &m.metrics, m.ratio_to_ringws.as_ref(), metric)
                        );
                    }
                    if rated {
                        let _ = write!(md, " {} |", rate_cell(m.achieved_pct, m.short_of_rate > 0));
                    }
                    let mut left_out = Vec::new();
                    if m.failed > 0 {
                        left_out.push(format!("{} failed", m.failed));
                    }
                    if m.short_left_out {
                        left_out.push(format!("{} short of the rate", m.short_of_rate));
                    }
                    let left_out = if left_out.is_empty() {
                        String::new()
                    } else {
                        format!("; left out: {}", left_out.join(", "))
                    };
                    let _ = writeln!(md, " {} in all{left_out} | |", m.failures);
                }
            }
            let _ = writeln!(md);
            for note in notes {
                let _ = writeln!(md, "- {note}");
            }
            let _ = writeln!(md);
        }
        md
    }

    /// How the servers were loaded, for the Markdown header.
    fn mode(&self) -> String {
        if self.config.rates.is_empty() {
            return "closed loop: each connection sends its next message when its echo is back (flat out)"
                .to_owned();
        }
        let rates: Vec<String> = self
            .config
            .rates
            .iter()
            .map(|r| format!("{} at {}", size_label(r.size), thousands(r.msgs_per_s)))
            .collect();
        format!(
            "fixed rate (open loop), messages per second over all connections: {}",
            rates.join(", ")
        )
    }

    /// A compact table: each peer's msg/s and msg-per-CPU-s ratios (of the medians over the rounds),
    /// one row per scenario.
    fn overview(&self, md: &mut String) {
        let peers: Vec<&str> = self
            .config
            .servers
            .iter()
            .map(String::as_str)
            .filter(|s| *s != BASELINE)
            .collect();
        if peers.is_empty() {
            return;
        }
        let _ = writeln!(md, "## Overview: peers as a ratio to ringws\n");
        if self.config.repeat > 1 {
            let _ = writeln!(
                md,
                "Ratios of the medians over {} rounds.\n",
                self.config.repeat
            );
        }
        if !self.config.rates.is_empty() {
            let _ = writeln!(
                md,
                "⚠: ringws or that peer fell short of the fixed rate in some round (see the scenario's \
                 table); its medians leave such rounds out, unless every round fell short.\n"
            );
        }
        let _ = write!(md, "| scenario |");
        for peer in &peers {
            let _ = write!(md, " {peer} msg/s | {peer} msg per CPU-s |");
        }
        let _ = writeln!(md, "\n|---|{}", "---:|".repeat(2 * peers.len()));
        for (size, connections) in self.scenarios() {
            let _ = write!(
                md,
                "| {}, {} conns |",
                size_label(size),
                thousands(connections as f64)
            );
            let ringws_short = self
                .median_of(BASELINE, size, connections)
                .is_some_and(|m| m.short_of_rate > 0);
            for peer in &peers {
                let row = self.median_of(peer, size, connections);
                let mark = if ringws_short || row.is_some_and(|m| m.short_of_rate > 0) {
                    " ⚠"
                } else {
                    ""
                };
                let ratio = row.and_then(|m| m.ratio_to_ringws);
                for metric in [Metric::MsgsPerS, Metric::MsgsPerServerCpuS] {
                    match ratio.as_ref().and_then(|m| metric.of(m)) {
                        Some(x) => {
                            let _ = write!(md, " {x:.2}×{mark} |");
                        }
                        None => md.push_str(" – |"),
                    }
                }
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md);
    }
}

/// One table cell: `server`'s value of `metric`, its ratio to ringws for other servers, and ⚠ on a
/// saturated generator.
fn cell(server: &str, metrics: &Metrics, ratio: Option<&Metrics>, metric: Metric) -> String {
    let Some(value) = metric.of(metrics) else {
        return "–".to_owned();
    };
    let mut text = metric.format(value);
    if server != BASELINE
        && let Some(ratio) = ratio.and_then(|m| metric.of(m))
    {
        let _ = write!(text, " ({ratio:.2}×)");
    }
    if metric == Metric::LoadCpu && value >= SATURATED_CPU_PCT {
        text.push_str(" ⚠");
    }
    text
}

/// The "% of rate" cell: the achieved rate in % of the target, ⚠ when short of it.
fn rate_cell(achieved_pct: Option<f64>, short: bool) -> String {
    let mark = if short { " ⚠" } else { "" };
    match achieved_pct {
        Some(p) => format!("{p:.1}{mark}"),
        None => format!("–{mark}"),
    }
}

/// `20 B`, `1 KiB`, `16 KiB`, `1.5 KiB`, `1 MiB`.
pub fn size_label(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    let scaled = |unit: usize, name: &str| {
        if bytes.is_multiple_of(unit) {
            format!("{} {name}", bytes / unit)
        } else {
            format!("{:.1} {name}", bytes as f64 / unit as f64)
        }
    };
    match bytes {
        b if b >= MIB => scaled(MIB, "MiB"),
        b if b >= KIB => scaled(KIB, "KiB"),
        b => format!("{b} B"),
    }
}

/// A rounded number with `,` between thousands: `1234567.8` -> `1,234,568`.
pub fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 && digits != "0" {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The contract's example report.
    pub const SAMPLE: &str = r#"{"url":"ws://127.0.0.1:9001/","connections":100,"size":20,"in_flight":1,"duration_s":10.0,
 "connections_established":100,"connections_failed":0,"connect_rate_per_s":12345.6,
 "messages":1234567,"msgs_per_s":123456.7,"mb_per_s":2.47,
 "latency_us":{"p50":12.3,"p90":20.1,"p99":45.6,"p999":80.0,"max":900.0},
 "errors":{"mismatch":0,"closed":0,"connect":0,"timeout":0}}"#;

    pub fn load(msgs_per_s: f64, p50: f64, p99: f64) -> LoadReport {
        let mut l: LoadReport = serde_json::from_str(SAMPLE).unwrap();
        l.msgs_per_s = msgs_per_s;
        l.latency_us.p50 = p50;
        l.latency_us.p99 = p99;
        l
    }

    pub fn cpu(window_s: f64, server_cpu_s: f64, load_cpu_s: f64) -> CpuWindow {
        CpuWindow {
            window_s,
            server_cpu_s,
            load_cpu_s,
            cores_busy_s: server_cpu_s + load_cpu_s + 0.2,
            cores_interrupt_s: 0.1,
            cores_steal_s: 0.05,
            anchor: Anchor::Established,
            truncated: false,
        }
    }

    #[test]
    fn parses_the_contract_and_keeps_every_field() {
        let l: LoadReport = serde_json::from_str(SAMPLE).unwrap();
        assert_eq!(l.messages, 1_234_567);
        assert_eq!(l.latency_us.p99, 45.6);
        assert_eq!(l.errors.total(), 0);
        let back = serde_json::to_value(&l).unwrap();
        let original: Value = serde_json::from_str(SAMPLE).unwrap();
        assert_eq!(back, original, "round trip loses nothing");
    }

    #[test]
    fn derives_cpu_share_and_efficiency() {
        let m = Metrics::derive(
            Some(&load(100_000.0, 10.0, 40.0)),
            Some(&cpu(10.0, 5.0, 9.9)),
        );
        assert_eq!(m.server_cpu_pct, Some(50.0));
        assert_eq!(m.msgs_per_server_cpu_s, Some(200_000.0));
        assert!((m.load_cpu_pct.unwrap() - 99.0).abs() < 1e-9);
        let idle = Metrics::derive(Some(&load(0.0, 0.0, 0.0)), Some(&cpu(10.0, 0.0, 0.0)));
        assert_eq!(idle.msgs_per_server_cpu_s, None, "no division by zero CPU");
        let none = Metrics::derive(None, None);
        assert_eq!(none, Metrics::default());
    }

    #[test]
    fn ratios_and_notes() {
        let mut report = Report {
            environment: Environment::sample(),
            config: Config {
                duration_s: 10.0,
                warmup_s: 2.0,
                in_flight: Some(1),
                rates: Vec::new(),
                repeat: 1,
                connections: vec![100],
                sizes: vec![20],
                servers: vec![
                    "ringws".into(),
                    "fastwebsockets".into(),
                    "tungstenite".into(),
                ],
                baseline: None,
                server_cpu: 0,
                load_cpu: 1,
                load_command: "ringws load ...".into(),
                cpu_window: "test".into(),
            },
            runs: vec![
                Run::new(
                    "ringws",
                    100,
                    20,
                    Some(load(200_000.0, 10.0, 20.0)),
                    Some(cpu(10.0, 5.0, 9.6)),
                    None,
                ),
                Run::new(
                    "fastwebsockets",
                    100,
                    20,
                    Some(load(100_000.0, 20.0, 50.0)),
                    Some(cpu(10.0, 10.0, 5.0)),
                    None,
                ),
                Run::new(
                    "tungstenite",
                    100,
                    20,
                    None,
                    None,
                    Some("server exited early".into()),
                ),
            ],
            medians: Vec::new(),
            interrupted: false,
        };
        report.fill_ratios();
        let fws = report.runs[1].ratio_to_ringws.unwrap();
        assert_eq!(fws.msgs_per_s, Some(0.5));
        assert_eq!(fws.p99_us, Some(2.5));
        assert_eq!(fws.server_cpu_pct, Some(2.0));
        assert_eq!(fws.msgs_per_server_cpu_s, Some(0.25));
        assert_eq!(
            report.runs[0].ratio_to_ringws.unwrap().msgs_per_s,
            Some(1.0)
        );
        assert_eq!(report.runs[2].ratio_to_ringws.unwrap().msgs_per_s, None);
        assert!(report.runs[0].notes.iter().any(|n| n.contains("saturated")));
        assert!(report.runs[1].notes.is_empty());

        let md = report.markdown();
        assert!(md.contains("## 20 B, 100 connections"), "{md}");
        assert!(
            md.contains(
                "| ringws | 200,000 | 10.0 | 20.0 | 50.0 | 400,000 | 96.0 ⚠ | – | – | 0 | 1.5 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| fastwebsockets | 100,000 (0.50×) | 20.0 (2.00×) | 50.0 (2.50×) |"),
            "{md}"
        );
        assert!(
            md.contains("tungstenite: **failed**: server exited early"),
            "{md}"
        );
        assert!(
            md.contains("| 20 B, 100 conns | 0.50× | 0.25× | – | – |"),
            "{md}"
        );
        assert!(!md.contains("% of rate") && !md.contains("median"), "{md}");
        assert!(md.contains("| mode | closed loop"), "{md}");
        assert!(md.contains("1 in flight per connection"), "{md}");
        // With one round the medians are the runs themselves.
        let fws_median = report.median_of("fastwebsockets", 20, 100).unwrap();
        assert_eq!(fws_median.metrics, report.runs[1].metrics);
        assert_eq!(fws_median.ratio_to_ringws, report.runs[1].ratio_to_ringws);
        let failed = report.median_of("tungstenite", 20, 100).unwrap();
        assert_eq!((failed.runs, failed.failed), (0, 1));
        assert_eq!(
            failed.metrics,
            Metrics::default(),
            "no medians from a failed run"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["config"].get("rates").is_none());
        assert_eq!(json["config"]["in_flight"], 1);
    }

    #[test]
    fn ringws_before_is_a_ratio_to_ringws() {
        let mut report = Report {
            environment: Environment::sample(),
            config: Config {
                duration_s: 3.0,
                warmup_s: 1.0,
                in_flight: Some(1),
                rates: Vec::new(),
                repeat: 1,
                connections: vec![100],
                sizes: vec![20],
                servers: vec!["ringws".into(), "ringws-before".into()],
                baseline: Some("/b/ringws-before".into()),
                server_cpu: 0,
                load_cpu: 1,
                load_command: "ringws load ...".into(),
                cpu_window: "test".into(),
            },
            runs: vec![
                Run::new(
                    "ringws",
                    100,
                    20,
                    Some(load(100_000.0, 10.0, 20.0)),
                    Some(cpu(10.0, 5.0, 9.0)),
                    None,
                ),
                Run::new(
                    "ringws-before",
                    100,
                    20,
                    Some(load(100_000.0, 10.0, 20.0)),
                    Some(cpu(10.0, 4.0, 9.0)),
                    None,
                ),
            ],
            medians: Vec::new(),
            interrupted: false,
        };
        report.fill_ratios();
        let before = report.runs[1].ratio_to_ringws.unwrap();
        assert_eq!(before.server_cpu_pct, Some(0.8));
        assert_eq!(before.msgs_per_server_cpu_s, Some(1.25));
        let md = report.markdown();
        assert!(
            md.contains("| ringws-before | `/b/ringws-before`, run like ringws"),
            "{md}"
        );
        assert!(md.contains("| 20 B, 100 conns | 1.00× | 1.25× |"), "{md}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["config"]["baseline"], "/b/ringws-before");
        assert_eq!(json["runs"][1]["server"], "ringws-before");
        // Without --baseline compare.json has no such key, as before.
        report.config.baseline = None;
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["config"].get("baseline").is_none());
    }

    /// A fixed-rate report over two rounds: ringws keeps up both times, fastwebsockets falls 10%
    /// short in round 2.
    pub fn rated_report() -> Report {
        let run = |server: &str, round, msgs, server_cpu_s| {
            Run::new(
                server,
                100,
                1024,
                Some(load(msgs, 10.0, 20.0)),
                Some(cpu(10.0, server_cpu_s, 5.0)),
                None,
            )
            .with_round(round)
            .with_target_rate(Some(10_000.0))
        };
        let mut report = Report {
            environment: Environment::sample(),
            config: Config {
                duration_s: 10.0,
                warmup_s: 2.0,
                in_flight: None,
                rates: vec![SizeRate {
                    size: 1024,
                    msgs_per_s: 10_000.0,
                }],
                repeat: 2,
                connections: vec![100],
                sizes: vec![1024],
                servers: vec!["ringws".into(), "fastwebsockets".into()],
                baseline: None,
                server_cpu: 0,
                load_cpu: 1,
                load_command: "ringws load ... --rate RATE".into(),
                cpu_window: "test".into(),
            },
            runs: vec![
                run("ringws", 1, 10_000.0, 2.0),
                run("fastwebsockets", 1, 10_000.0, 4.0),
                run("ringws", 2, 9_990.0, 2.5),
                run("fastwebsockets", 2, 9_000.0, 3.0),
            ],
            medians: Vec::new(),
            interrupted: false,
        };
        report.fill_ratios();
        report
    }

    #[test]
    fn fixed_rate_runs_are_checked_against_their_target() {
        let report = rated_report();
        let check = |i: usize| report.runs[i].rate.unwrap();
        assert!(!check(0).short);
        assert_eq!(check(3).achieved_pct, Some(90.0));
        assert!(check(3).short);
        assert!(
            report.runs[3]
                .notes
                .iter()
                .any(|n| n.contains("achieved 90.0% of the 10,000 msg/s")),
            "{:?}",
            report.runs[3].notes
        );
        assert!(report.runs[2].notes.is_empty(), "99.9% is on target");
        // Closed-loop runs have no check, and compare.json no rate keys.
        let closed = Run::new("ringws", 100, 20, Some(load(1.0, 1.0, 1.0)), None, None)
            .with_target_rate(None);
        assert_eq!(closed.rate, None);
        assert!(serde_json::to_value(&closed).unwrap().get("rate").is_none());
    }

    #[test]
    fn repeated_rounds_pair_ratios_by_round_and_report_medians() {
        let report = rated_report();
        // Each run's ratio is to ringws's run of the same round.
        let ratio = |i: usize| report.runs[i].ratio_to_ringws.unwrap();
        assert_eq!(ratio(1).msgs_per_server_cpu_s, Some(0.5));
        assert!((ratio(3).msgs_per_server_cpu_s.unwrap() - 30_000.0 / 39_960.0).abs() < 1e-9);

        assert_eq!(report.medians.len(), 2);
        let ringws = report.median_of("ringws", 1024, 100).unwrap();
        let fws = report.median_of("fastwebsockets", 1024, 100).unwrap();
        assert_eq!(
            (ringws.runs, ringws.failed, ringws.short_of_rate),
            (2, 0, 0)
        );
        // Round 2 fell short: its CPU per message is left out.
        assert_eq!((fws.runs, fws.short_of_rate), (1, 1));
        // Two rounds: the mean of the two.
        assert_eq!(ringws.metrics.msgs_per_s, Some(9_995.0));
        assert_eq!(ringws.metrics.msgs_per_server_cpu_s, Some(44_980.0));
        assert_eq!(fws.metrics.msgs_per_server_cpu_s, Some(25_000.0));
        assert_eq!(fws.achieved_pct, Some(100.0));
        // The ratio of the medians, not the median of the ratios.
        let r = fws.ratio_to_ringws.unwrap().msgs_per_server_cpu_s.unwrap();
        assert!((r - 25_000.0 / 44_980.0).abs() < 1e-9);

        let md = report.markdown();
        for text in [
            "| mode | fixed rate (open loop), messages per second over all connections: 1 KiB at 10,000 |",
            "| rounds | 2 per scenario",
            "the generator's own cap on messages in flight",
            "| server | msg/s | p50 µs | p99 µs | server CPU % | msg per server CPU-s | load-gen CPU % | upgrade p50 µs | upgrade p99 µs | % of rate | failures | others on pinned CPUs % |",
            "| ringws #1 | 10,000 | 10.0 | 20.0 | 20.0 | 50,000 | 50.0 | – | – | 100.0 | 0 | 1.5 |",
            "| fastwebsockets #2 | 9,000 (0.90×) |",
            "| 90.0 ⚠ | 0 | 1.5 |",
            "| **ringws median** | 9,995 | 10.0 | 20.0 | 22.5 | 44,980 |",
            "| **fastwebsockets median** | 10,000 (1.00×) |",
            "| 100.0 ⚠ | 0 in all; left out: 1 short of the rate | |",
            "| 1 KiB, 100 conns | 1.00× ⚠ | 0.56× ⚠ |",
            "fastwebsockets #2: achieved 90.0%",
        ] {
            assert!(md.contains(text), "missing {text:?} in\n{md}");
        }

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["config"]["rates"][0]["msgs_per_s"], 10_000.0);
        assert_eq!(json["config"]["repeat"], 2);
        assert!(json["config"].get("in_flight").is_none());
        assert_eq!(json["runs"][3]["round"], 2);
        assert_eq!(json["runs"][3]["rate"]["short"], true);
        assert_eq!(json["medians"][1]["server"], "fastwebsockets");
        assert_eq!(json["medians"][1]["short_of_rate"], 1);
        // And compare.json reads back.
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back.medians.len(), 2);
    }

    #[test]
    fn all_rounds_short_still_give_flagged_medians() {
        let mut report = rated_report();
        for run in &mut report.runs {
            run.rate = Some(RateCheck::new(20_000.0, run.metrics.msgs_per_s));
        }
        report.fill_ratios();
        let ringws = report.median_of("ringws", 1024, 100).unwrap();
        assert_eq!((ringws.runs, ringws.short_of_rate), (2, 2));
        assert_eq!(ringws.metrics.msgs_per_s, Some(9_995.0));
        assert!(
            report.markdown().contains("| 50.0 ⚠ | 0 in all | |"),
            "nothing left out when every round fell short:\n{}",
            report.markdown()
        );
    }

    #[test]
    fn median_of_odd_even_and_none() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn notes_start_anchor_truncation_and_errors() {
        let mut window = cpu(10.0, 1.0, 1.0);
        window.anchor = Anchor::Start;
        window.truncated = true;
        // 1.5 s of the window went to someone else: 15% of a core.
        window.cores_busy_s = 1.0 + 1.0 + 0.05 + 1.5; // server + load + steal + others
        assert!((window.others_pct().unwrap() - 15.0).abs() < 1e-9);
        let mut report = load(1.0, 1.0, 1.0);
        report.errors.dropped = Some(3);
        let run = Run::new("ringws", 100, 20, Some(report), Some(window), None);
        let has = |text: &str| run.notes.iter().any(|n| n.contains(text));
        assert!(has("set-up may overlap"), "{:?}", run.notes);
        assert!(has("exited before"), "{:?}", run.notes);
        assert!(has("3 dropped"), "{:?}", run.notes);
        assert!(has("other work used 15%"), "{:?}", run.notes);
        let clean = Run::new(
            "ringws",
            100,
            20,
            Some(load(1.0, 1.0, 1.0)),
            Some(cpu(10.0, 1.0, 1.0)),
            None,
        );
        assert!(clean.notes.is_empty(), "{:?}", clean.notes);
    }

    #[test]
    fn reads_the_errors_ringws_load_adds() {
        let text = SAMPLE.replace(r#""timeout":0}"#, r#""timeout":0,"dropped":2,"later":5}"#);
        let l: LoadReport = serde_json::from_str(&text).unwrap();
        assert_eq!(l.errors.dropped, Some(2));
        assert_eq!(l.errors.total(), 2);
        assert_eq!(
            serde_json::to_value(&l.errors).unwrap()["later"],
            5,
            "unknown counters kept"
        );
    }

    #[test]
    fn formats_numbers_and_sizes() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(-12_345.0), "-12,345");
        assert_eq!(size_label(20), "20 B");
        assert_eq!(size_label(1024), "1 KiB");
        assert_eq!(size_label(16384), "16 KiB");
        assert_eq!(size_label(1536), "1.5 KiB");
        assert_eq!(size_label(1 << 20), "1 MiB");
    }
}
