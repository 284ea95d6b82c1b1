//! `ringws check`: is this host ready to serve `--connections N`? One row per check, each OK, WARN
//! or FAIL with the fix; the exit status is 1 when any row is FAIL.
//!
//! - the kernel version, whether io_uring can be set up, and every io_uring feature the engine uses,
//!   probed on a throwaway ring ([`ProbeReport`]), not guessed from the version;
//! - `kernel.io_uring_disabled`;
//! - this process's `nofile` limit against N plus the engine's own descriptors, and its `memlock`
//!   limit against what the workers' rings are charged ([`MemlockNeed`]) where the kernel enforces it;
//! - the sysctls of `tuning/sysctl.sh`, which is embedded in the binary and run with `--porcelain`:
//!   the knob table and its arithmetic live in that script only;
//! - the CPUs available and the SIMD level the unmasking uses.
//!
//! The limits are those of the `ringws check` process, which a `ringws serve` started from the same
//! shell inherits.

use super::{describe, note, print_or_report};
use clap::Args;
use ringws::engine::{Config, MemlockNeed, ProbeReport, Support, kernel_version};
use std::fmt::Write as _;
use std::process::{Command, ExitCode, Stdio};

/// The host tuning script; `check` runs it with `bash -c` so an installed binary needs no checkout.
const SYSCTL_SH: &str = include_str!("../../tuning/sysctl.sh");

/// Descriptors a process should have besides its connections, as `tuning/ulimit.sh` and
/// `tuning/sysctl.sh` recommend (`NOFILE_HEADROOM` there; `tests/check.rs` checks they agree).
const NOFILE_HEADROOM: u64 = 16384;

/// The connection target without `--connections`: what a stock host (a few thousand descriptors per
/// process allowed) can reach after `ulimit -n`, not the 100,000 the tuning is made for.
const DEFAULT_CONNECTIONS: u64 = 10_000;

/// `CAP_IPC_LOCK`: exempts a process from the memlock charge.
const CAP_IPC_LOCK: u32 = 14;

/// Options of `ringws check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Concurrent connections this process (one `ringws serve`) should hold (default 10000; the
    /// host tuning in tuning/ is made for --connections 100000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    connections: Option<u64>,
    /// Worker threads the server will run (default: the CPUs this process may use, as `serve`).
    #[arg(long)]
    workers: Option<usize>,
    /// Provided receive buffers per worker, as `serve --buffer-count` (default 512).
    #[arg(long)]
    buffer_count: Option<u16>,
    /// Submission queue entries per worker ring, as `serve --ring-entries` (default 2048).
    #[arg(long)]
    ring_entries: Option<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// The verdict of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Nothing to do.
    Ok,
    /// Works, but below the recommendation.
    Warn,
    /// The server will not start or will not reach the target.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug)]
struct Row {
    check: String,
    status: Status,
    value: String,
    fix: Option<String>,
}

impl Row {
    fn ok(check: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            status: Status::Ok,
            value: value.into(),
            fix: None,
        }
    }

    fn bad(
        check: impl Into<String>,
        status: Status,
        value: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            check: check.into(),
            status,
            value: value.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Runs every check, prints the table (or JSON) to stdout; exit 1 on any FAIL, 2 on bad options.
pub fn run(args: CheckArgs) -> ExitCode {
    let mut cfg = Config::default();
    if let Some(w) = args.workers {
        cfg.workers = w;
    }
    if let Some(b) = args.buffer_count {
        cfg.buffer_count = b;
    }
    if let Some(e) = args.ring_entries {
        cfg.ring_entries = e;
    }
    if let Err(e) = cfg.validate() {
        note!("error: {}", describe(&e));
        return ExitCode::from(2);
    }
    let n = args.connections.unwrap_or(DEFAULT_CONNECTIONS);
    let kernel = Kernel::read();
    let process = Process::read();
    let probe = ProbeReport::run();

    let mut rows = vec![kernel_row(&kernel)];
    rows.extend(io_uring_rows(&probe));
    rows.push(nofile_row(n, cfg.workers, &process));
    let memlock = MemlockNeed::of(&cfg);
    rows.push(memlock_row(&memlock, &cfg, &kernel, &process));
    rows.extend(sysctl_rows(n));
    rows.push(cpu_row(cfg.workers));
    rows.push(simd_row());

    let report = if args.json {
        json(n, cfg.workers, &memlock, &rows) + "\n"
    } else {
        table(n, args.connections.is_none(), cfg.workers, &process, &rows)
    };
    if !print_or_report(&report) {
        return ExitCode::FAILURE;
    }
    if rows.iter().any(|r| r.status == Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The running kernel's release string and (major, minor).
struct Kernel {
    release: String,
    version: Option<(u32, u32)>,
}

impl Kernel {
    fn read() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        let version = kernel_version(&release).map(|(major, minor, _)| (major, minor));
        Self { release, version }
    }
}

/// A soft or hard resource limit; `None` is unlimited.
type Limit = Option<u64>;

/// This process's limits and whether it may lock memory without limit.
struct Process {
    nofile: Option<(Limit, Limit)>,
    memlock: Option<(Limit, Limit)>,
    ipc_lock: bool,
    uid: Option<u32>,
}

impl Process {
    fn read() -> Self {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let ipc_lock = field("CapEff:")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .is_some_and(|caps| caps >> CAP_IPC_LOCK & 1 == 1);
        let uid = field("Uid:")
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|euid| euid.parse().ok());
        Self {
            nofile: parse_limit(&limits, "Max open files"),
            memlock: parse_limit(&limits, "Max locked memory"),
            ipc_lock,
            uid,
        }
    }
}

/// The (soft, hard) pair of the `/proc/PID/limits` line starting with `name`.
fn parse_limit(limits: &str, name: &str) -> Option<(Limit, Limit)> {
    let rest = limits.lines().find_map(|l| l.strip_prefix(name))?;
    let mut words = rest.split_whitespace();
    let mut next = || match words.next()? {
        "unlimited" => Some(None),
        v => v.parse().ok().map(Some),
    };
    Some((next()?, next()?))
}

fn spell(limit: Limit) -> String {
    limit.map_or_else(|| "unlimited".to_string(), |v| v.to_string())
}

/// A byte limit in KiB, rounded up (as `ulimit -l` takes it).
fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

fn spell_kib(limit: Limit) -> String {
    limit.map_or_else(|| "unlimited".to_string(), |v| format!("{} KiB", kib(v)))
}

fn at_least(limit: Limit, need: u64) -> bool {
    limit.is_none_or(|v| v >= need)
}

fn kernel_row(kernel: &Kernel) -> Row {
    match kernel.version {
        Some(v) if v >= (6, 1) => Row::ok("kernel", format!("Linux {}", kernel.release)),
        _ => Row::bad(
            "kernel",
            Status::Warn,
            format!("Linux {}", kernel.release),
            "the engine needs Linux 6.0 (multishot receive) and prefers 6.1 or later \
             (DEFER_TASKRUN); the io_uring rows say what is missing",
        ),
    }
}

fn io_uring_rows(probe: &ProbeReport) -> Vec<Row> {
    let mut rows = Vec::new();
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|s| s.trim().to_string());
    let setup_ok = probe.setup_error().is_none();
    let knob = "kernel.io_uring_disabled";
    let enable = "sysctl -w kernel.io_uring_disabled=0";
    rows.push(match disabled.as_deref() {
        None => Row::ok(knob, "absent (Linux < 6.6: io_uring is always enabled)"),
        Some("0") => Row::ok(knob, "0 (enabled)"),
        Some("1") if setup_ok => Row::ok(
            knob,
            "1 (restricted; this process is allowed: CAP_SYS_ADMIN or kernel.io_uring_group)",
        ),
        Some("1") => Row::bad(
            knob,
            Status::Fail,
            "1 (restricted to CAP_SYS_ADMIN and kernel.io_uring_group)",
            format!("{enable}, or add this user to the group in kernel.io_uring_group"),
        ),
        Some(v) => Row::bad(knob, Status::Fail, format!("{v} (disabled)"), enable),
    });
    rows.push(match probe.setup_error() {
        None => Row::ok("io_uring setup", "a ring can be created"),
        Some(e) => Row::bad("io_uring setup", Status::Fail, "fails", e.to_string()),
    });
    for f in probe.features() {
        let lacking = if f.required {
            Status::Fail
        } else {
            Status::Warn
        };
        rows.push(match &f.support {
            Support::Yes => Row::ok(f.name, format!("supported (Linux {}+)", f.kernel)),
            Support::No => Row::bad(
                f.name,
                lacking,
                format!("missing (needs Linux {})", f.kernel),
                if f.required {
                    format!("upgrade to Linux {} or later", f.kernel)
                } else {
                    format!(
                        "the engine falls back; Linux {} or later is faster",
                        f.kernel
                    )
                },
            ),
            Support::Untested => {
                Row::bad(f.name, lacking, "not probed", "fix the failure above first")
            }
            Support::Unknown(e) => Row::bad(f.name, lacking, "probe failed", e.to_string()),
        });
    }
    rows
}

/// Descriptors the engine itself holds besides connections: per worker a listener, a ring and an
/// eventfd; per process stdio, the shutdown eventfd and signal handling, and the start-up probe's
/// sockets (which may overlap the first accepts).
fn engine_fds(workers: usize) -> u64 {
    3 * workers as u64 + 16
}

fn nofile_row(n: u64, workers: usize, p: &Process) -> Row {
    let check = "nofile (open files)";
    let Some((soft, hard)) = p.nofile else {
        return Row::bad(
            check,
            Status::Warn,
            "unknown",
            "cannot read /proc/self/limits",
        );
    };
    let need = n.saturating_add(engine_fds(workers));
    let recommended = n.saturating_add(NOFILE_HEADROOM);
    let value = format!(
        "soft {}, hard {}; {n} connections need {need}, recommended {recommended} \
         (+{NOFILE_HEADROOM})",
        spell(soft),
        spell(hard)
    );
    let raise_hard = format!(
        "raise the hard limit to {recommended} (root with CAP_SYS_RESOURCE: prlimit \
         --nofile={recommended}:{recommended}, tuning/ulimit.sh --write /etc/security/limits.d, \
         or LimitNOFILE= in a systemd unit; fs.nr_open must allow it), or split the connections \
         over several `ringws serve` processes on the same port (SO_REUSEPORT)"
    );
    if at_least(soft, recommended) {
        Row::ok(check, value)
    } else if at_least(soft, need) {
        let fix = if at_least(hard, recommended) {
            format!("ulimit -Sn {recommended}")
        } else {
            raise_hard
        };
        Row::bad(check, Status::Warn, value, fix)
    } else if at_least(hard, need) {
        let to = hard.map_or(recommended, |h| h.min(recommended));
        Row::bad(check, Status::Fail, value, format!("ulimit -Sn {to}"))
    } else {
        Row::bad(check, Status::Fail, value, raise_hard)
    }
}

fn memlock_row(need: &MemlockNeed, cfg: &Config, kernel: &Kernel, p: &Process) -> Row {
    let check = "memlock (locked memory)";
    let sizes = format!(
        "the rings need {} KiB ({} workers x {} KiB + {} KiB probe)",
        kib(need.total),
        cfg.workers,
        kib(need.per_worker),
        kib(need.probe)
    );
    // Charged against RLIMIT_MEMLOCK before 5.12 and from 6.14 on; 5.12 to 6.13 charge the cgroup.
    let enforced = kernel
        .version
        .is_none_or(|v| !((5, 12)..(6, 14)).contains(&v));
    let Some((soft, hard)) = p.memlock else {
        return Row::bad(
            check,
            Status::Warn,
            "unknown",
            "cannot read /proc/self/limits",
        );
    };
    let value = |note: &str| {
        format!(
            "soft {}, hard {}{note}; {sizes}",
            spell_kib(soft),
            spell_kib(hard)
        )
    };
    if p.ipc_lock {
        return Row::ok(check, value(" (not enforced: CAP_IPC_LOCK)"));
    }
    if !enforced {
        return Row::ok(
            check,
            value(" (not charged on Linux 5.12 to 6.13: the memory cgroup is)"),
        );
    }
    let restart = need.total.saturating_mul(2);
    let fix = format!(
        "ulimit -l {} (KiB; twice the need, for a restart while the kernel still frees the old \
         rings), or see tuning/ulimit.sh",
        kib(restart)
    );
    if at_least(soft, restart) {
        Row::ok(check, value(""))
    } else if at_least(soft, need.total) {
        Row::bad(check, Status::Warn, value(""), fix)
    } else {
        Row::bad(check, Status::Fail, value(""), fix)
    }
}

/// One row per knob of `tuning/sysctl.sh show --porcelain --connections n`.
fn sysctl_rows(n: u64) -> Vec<Row> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(SYSCTL_SH)
        .arg("sysctl.sh")
        .args(["--porcelain", "--connections", &n.to_string(), "show"])
        .stdin(Stdio::null())
        .output();
    let failed = |why: String| {
        vec![Row::bad(
            "sysctls",
            Status::Warn,
            "not checked",
            format!("running the embedded tuning/sysctl.sh failed: {why}"),
        )]
    };
    let out = match out {
        Ok(o) if o.status.success() => o,
        // The script's first line of complaint (the second only points at --help).
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            return failed(err.lines().next().unwrap_or("no output").to_string());
        }
        Err(e) => return failed(format!("bash: {e}")),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Row> = text.lines().filter_map(sysctl_row).collect();
    if rows.is_empty() {
        return failed("it printed no knobs".to_string());
    }
    rows
}

/// A porcelain line `KNOB STATUS CURRENT RECOMMENDED REASON` as a row.
fn sysctl_row(line: &str) -> Option<Row> {
    let mut f = line.split('\t');
    let (knob, state, current, target, reason) =
        (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    let set = || {
        let v = if target.contains(' ') {
            format!("\"{target}\"")
        } else {
            target.to_string()
        };
        format!("sysctl -w {knob}={v}: {reason}")
    };
    Some(match state {
        "ok" => Row::ok(knob, current),
        "absent" => Row::ok(knob, "absent on this kernel"),
        "change" => Row::bad(
            knob,
            Status::Warn,
            format!("{current} (recommended {target})"),
            set(),
        ),
        "read-only" => Row::bad(
            knob,
            Status::Warn,
            format!("{current} (recommended {target}; read-only here)"),
            format!(
                "set it on the host (read-only in this container): {}",
                set()
            ),
        ),
        other => Row::bad(
            knob,
            Status::Warn,
            format!("{current} ({other})"),
            "inspect it: tuning/sysctl.sh show",
        ),
    })
}

fn cpu_row(workers: usize) -> Row {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| count_cpus(s.trim()));
    let value = format!(
        "{available} available to this process{}; {workers} workers",
        online.map_or(String::new(), |o| format!(" ({o} online)"))
    );
    if workers > available {
        Row::bad(
            "CPUs",
            Status::Warn,
            value,
            format!("use at most {available} workers: more than one per CPU only adds switching"),
        )
    } else {
        Row::ok("CPUs", value)
    }
}

/// Counts a CPU list such as `0-3,8,10-11`.
fn count_cpus(list: &str) -> Option<usize> {
    list.split(',').try_fold(0usize, |sum, part| {
        let n = match part.split_once('-') {
            Some((a, b)) => {
                b.parse::<usize>()
                    .ok()?
                    .checked_sub(a.parse::<usize>().ok()?)?
                    + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
        sum.checked_add(n)
    })
}

fn simd_row() -> Row {
    use ringws::protocol::mask::{SimdLevel, simd_level};
    let level = simd_level();
    let check = "SIMD (unmasking)";
    match level {
        SimdLevel::Portable => Row::bad(
            check,
            Status::Warn,
            level.to_string(),
            "no vector unit detected: unmasking runs word-at-a-time (about 2.5x slower)",
        ),
        _ => Row::ok(check, level.to_string()),
    }
}

/// The report as a table. With `default_target` (no `--connections`) the header also says how to
/// check for more.
fn table(n: u64, default_target: bool, workers: usize, p: &Process, rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.check.len()).max().unwrap_or(0);
    let mut s = String::new();
    let who = p.uid.map_or(String::new(), |u| format!(", uid {u}"));
    let _ = writeln!(
        s,
        "ringws check: {n} connections, {workers} workers (this process's limits{who})"
    );
    if default_target {
        let _ = writeln!(
            s,
            "{n} is the default target; for more: ringws check --connections 100000"
        );
    }
    s.push('\n');
    let _ = writeln!(s, "{:<6}  {:<width$}  VALUE", "STATUS", "CHECK");
    for r in rows {
        let _ = writeln!(
            s,
            "{:<6}  {:<width$}  {}",
            r.status.label(),
            r.check,
            r.value
        );
        if let Some(fix) = &r.fix {
            let _ = writeln!(s, "{:<6}  {:<width$}  fix: {fix}", "", "");
        }
    }
    let count = |st| rows.iter().filter(|r| r.status == st).count();
    let _ = write!(
        s,
        "\n{} OK, {} WARN, {} FAIL",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    );
    if rows.iter().any(|r| {
        r.status != Status::Ok && r.fix.as_deref().is_some_and(|f| f.starts_with("sysctl -w"))
    }) {
        let _ = write!(
            s,
            "\nall sysctls at once (saves the old values): sudo tuning/sysctl.sh apply --connections {n}"
        );
    }
    s.push('\n');
    s
}

/// The report as one JSON object: the target, the locked memory the rings need (bytes; what
/// `tuning/ulimit.sh` recommends from), the rows and their counts.
fn json(n: u64, workers: usize, memlock: &MemlockNeed, rows: &[Row]) -> String {
    let mut s = format!(
        "{{\"connections\":{n},\"workers\":{workers},\"memlock\":{{\"per_worker\":{},\"probe\":{},\
         \"total\":{}}},\"rows\":[",
        memlock.per_worker, memlock.probe, memlock.total
    );
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"check\":{},\"status\":\"{}\",\"value\":{},\"fix\":{}}}",
            json_str(&r.check),
            r.status.label(),
            json_str(&r.value),
            r.fix.as_deref().map_or("null".to_string(), json_str)
        );
    }
    let count = |st| rows.iter().filter(|r| r.status == st).count();
    let _ = write!(
        s,
        "],\"ok\":{},\"warn\":{},\"fail\":{}}}",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    );
    s
}

/// A JSON string literal (RFC 8259 escapes).
fn json_str(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", u32::from(c));
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            20000                40000                files     \n\
                      Max locked memory         8388608              unlimited            bytes     \n";
        assert_eq!(
            parse_limit(limits, "Max open files"),
            Some((Some(20000), Some(40000)))
        );
        assert_eq!(
            parse_limit(limits, "Max locked memory"),
            Some((Some(8388608), None))
        );
        assert_eq!(parse_limit(limits, "Max processes"), None);
    }

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(count_cpus("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpus("0"), Some(1));
        assert_eq!(count_cpus("3-1"), None);
    }

    fn process(nofile: (Limit, Limit), memlock: (Limit, Limit), ipc_lock: bool) -> Process {
        Process {
            nofile: Some(nofile),
            memlock: Some(memlock),
            ipc_lock,
            uid: Some(1000),
        }
    }

    #[test]
    fn nofile_thresholds() {
        let n = 10_000;
        let need = n + engine_fds(2);
        let at = |soft, hard| {
            nofile_row(
                n,
                2,
                &process((Some(soft), Some(hard)), (None, None), false),
            )
        };
        assert_eq!(
            at(n + NOFILE_HEADROOM, n + NOFILE_HEADROOM).status,
            Status::Ok
        );
        let warn = at(need, need);
        assert_eq!(warn.status, Status::Warn);
        assert!(warn.fix.unwrap().contains("SO_REUSEPORT"));
        let warn = at(need, 1 << 20);
        assert_eq!(warn.fix.as_deref(), Some("ulimit -Sn 26384"));
        let fail = at(need - 1, 1 << 20);
        assert_eq!(fail.status, Status::Fail);
        assert_eq!(fail.fix.as_deref(), Some("ulimit -Sn 26384"));
        assert_eq!(at(need - 1, need - 1).status, Status::Fail);
    }

    #[test]
    fn memlock_thresholds() {
        let mut cfg = Config::default();
        cfg.workers = 2;
        let need = MemlockNeed::of(&cfg);
        let new = Kernel {
            release: "6.18.0".into(),
            version: Some((6, 18)),
        };
        let middle = Kernel {
            release: "6.1.0".into(),
            version: Some((6, 1)),
        };
        let row = |soft, cap, k: &Kernel| {
            memlock_row(
                &need,
                &cfg,
                k,
                &process((None, None), (Some(soft), None), cap),
            )
            .status
        };
        assert_eq!(row(0, false, &new), Status::Fail);
        assert_eq!(row(need.total - 1, false, &new), Status::Fail);
        assert_eq!(row(need.total, false, &new), Status::Warn);
        assert_eq!(row(2 * need.total, false, &new), Status::Ok);
        assert_eq!(row(0, true, &new), Status::Ok);
        assert_eq!(row(0, false, &middle), Status::Ok);
    }

    #[test]
    fn sysctl_lines_become_rows() {
        let r = sysctl_row("net.ipv4.ip_local_port_range\tchange\t32768 60999\t1024 65535\tports")
            .unwrap();
        assert_eq!(r.status, Status::Warn);
        assert_eq!(r.value, "32768 60999 (recommended 1024 65535)");
        assert_eq!(
            r.fix.as_deref(),
            Some("sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\": ports")
        );
        let r = sysctl_row("net.core.somaxconn\tok\t4096\t4096\twhy").unwrap();
        assert_eq!((r.status, r.value.as_str()), (Status::Ok, "4096"));
        assert!(sysctl_row("truncated\tok").is_none());
    }

    #[test]
    fn json_escapes_strings() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
