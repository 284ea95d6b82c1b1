//! Child processes and what `/proc` says about them: pinned spawning in a process group of its own,
//! waiting for a ready line, CPU time, and stopping (SIGTERM, then SIGKILL).
//!
//! Every child is the leader of its own process group, so a signal to `-pid` reaches it and anything
//! it started; [`Child`]'s `Drop` kills that group, which is what cleans up on an error, a panic or
//! Ctrl-C (the harness turns SIGINT/SIGTERM into a flag and unwinds normally).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{self, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How many of a child's last stderr lines are kept for error messages.
const STDERR_TAIL_LINES: usize = 20;

/// How often waiting loops look at their children and at the interrupt flag.
pub const POLL: Duration = Duration::from_millis(10);

/// Why waiting on a child ended without the thing waited for.
#[derive(Debug)]
pub enum WaitError {
    /// SIGINT or SIGTERM reached the harness.
    Interrupted,
    /// The time limit passed.
    TimedOut,
    /// The child exited first, with this status.
    Exited(ExitStatus),
    /// Asking the OS about the child failed.
    Io(io::Error),
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::Interrupted => f.write_str("interrupted"),
            WaitError::TimedOut => f.write_str("timed out"),
            WaitError::Exited(status) => write!(f, "exited early ({status})"),
            WaitError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for WaitError {
    fn from(e: io::Error) -> Self {
        WaitError::Io(e)
    }
}

/// A running child pinned to one CPU, leader of its own process group, with its stderr collected by
/// a thread (a bounded tail, plus a flag raised when a line containing the ready marker appears).
pub struct Child {
    name: String,
    inner: process::Child,
    ready: Arc<AtomicBool>,
    tail: Arc<Mutex<VecDeque<String>>>,
    stdout: Option<JoinHandle<io::Result<String>>>,
    reaped: bool,
}

impl Child {
    /// Starts `taskset -c CPU PROGRAM ARGS...` (taskset execs the program, so the pid is the
    /// program's own). `ready_marker` is the stderr text that [`Child::wait_ready`] waits for, if
    /// any; `capture_stdout` keeps stdout for [`Child::take_stdout`], otherwise it is discarded.
    pub fn spawn<I, S>(
        name: &str,
        cpu: usize,
        program: &Path,
        args: I,
        ready_marker: Option<&'static str>,
        capture_stdout: bool,
    ) -> io::Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut inner = Command::new("taskset")
            .arg("-c")
            .arg(cpu.to_string())
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(if capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting taskset for {name}: {e}")))?;
        let ready = Arc::new(AtomicBool::new(false));
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = inner.stderr.take() {
            let (ready, tail) = (Arc::clone(&ready), Arc::clone(&tail));
            thread::spawn(move || collect_stderr(stderr, ready_marker, &ready, &tail));
        }
        let stdout = inner.stdout.take().map(|mut out| {
            thread::spawn(move || {
                let mut text = String::new();
                out.read_to_string(&mut text).map(|_| text)
            })
        });
        Ok(Child {
            name: name.to_owned(),
            inner,
            ready,
            tail,
            stdout,
            reaped: false,
        })
    }

    /// Whether the ready marker has appeared on stderr yet (never, without a marker).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// The last lines the child wrote to stderr, oldest first, joined for an error message.
    pub fn stderr_tail(&self) -> String {
        let tail = self
            .tail
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits until the ready marker appeared on stderr, the child exited, `interrupted` was raised,
    /// or `timeout` passed.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        interrupted: &AtomicBool,
    ) -> Result<(), WaitError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_ready() {
                return Ok(());
            }
            self.check_running(interrupted)?;
            if Instant::now() >= deadline {
                return Err(WaitError::TimedOut);
            }
            thread::sleep(POLL);
        }
    }

    /// Fails if `interrupted` is raised or the child has exited (the exit is reaped).
    pub fn check_running(&mut self, interrupted: &AtomicBool) -> Result<(), WaitError> {
        if interrupted.load(Ordering::Relaxed) {
            return Err(WaitError::Interrupted);
        }
        match self.inner.try_wait()? {
            Some(status) => {
                self.reaped = true;
                Err(WaitError::Exited(status))
            }
            None => Ok(()),
        }
    }

    /// Reaps the child if it has exited; `None` while it still runs.
    pub fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
        let status = self.inner.try_wait()?;
        self.reaped |= status.is_some();
        Ok(status)
    }

    /// The child's stdout, once it has exited (the reader thread ends at end of file).
    pub fn take_stdout(&mut self) -> io::Result<String> {
        match self.stdout.take() {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("stdout reader panicked"))),
            None => Ok(String::new()),
        }
    }

    /// Sends SIGTERM to the child's group, waits up to `grace` for it to exit, then SIGKILLs the
    /// group and reaps it. Returns the exit status, or `None` if it had to be killed.
    pub fn stop(&mut self, grace: Duration) -> io::Result<Option<ExitStatus>> {
        if self.reaped {
            return Ok(None);
        }
        signal_group(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            // Exited but not reaped yet (a zombie still holds its pid, so the group id is still
            // ours): kill whatever the leader left behind in its group, then reap it.
            if ProcStat::read(self.pid()).is_ok_and(|stat| stat.state == 'Z') {
                signal_group(self.pid(), libc::SIGKILL);
                let status = self.inner.wait()?;
                self.reaped = true;
                return Ok(Some(status));
            }
            thread::sleep(POLL);
        }
        eprintln!("  {} ignored SIGTERM for {grace:?}: SIGKILL", self.name);
        signal_group(self.pid(), libc::SIGKILL);
        self.inner.wait()?;
        self.reaped = true;
        Ok(None)
    }
}

impl Drop for Child {
    /// Kills the whole group and reaps the leader, so no child outlives an error or an interrupt.
    fn drop(&mut self) {
        if !self.reaped {
            signal_group(self.pid(), libc::SIGKILL);
            let _ = self.inner.wait();
        }
    }
}

/// Sends `signal` to the process group led by `pid`.
fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours. The group id is one of our
    // children that has not been reaped yet (callers check), so the id cannot have been reused by an
    // unrelated process group; a group that is already gone yields ESRCH, which is harmless.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Stderr reader thread: keeps the last lines and raises `ready` when `marker` appears.
fn collect_stderr(
    stderr: impl Read,
    marker: Option<&str>,
    ready: &AtomicBool,
    tail: &Mutex<VecDeque<String>>,
) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { return };
        if marker.is_some_and(|m| line.contains(m)) {
            ready.store(true, Ordering::Release);
        }
        let mut tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// What `/proc/PID/stat` says about a process: its state letter and CPU time used so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStat {
    /// `R`, `S`, `Z` (exited, not yet reaped: its times are still readable), ...
    pub state: char,
    /// utime + stime of all its threads, in clock ticks.
    pub cpu_ticks: u64,
}

impl ProcStat {
    /// Reads `/proc/PID/stat`.
    pub fn read(pid: u32) -> io::Result<ProcStat> {
        let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        ProcStat::parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected /proc/{pid}/stat: {text}"),
            )
        })
    }

    /// Parses a stat line. The command name (field 2) sits in parentheses and may itself contain
    /// spaces and parentheses, so fields are counted from the last `)`: state is field 3, utime and
    /// stime are fields 14 and 15 (proc(5)).
    pub fn parse(text: &str) -> Option<ProcStat> {
        let rest = &text[text.rfind(')')? + 1..];
        let mut fields = rest.split_ascii_whitespace();
        let state = fields.next()?.chars().next()?;
        let mut times = fields.skip(10);
        let utime: u64 = times.next()?.parse().ok()?;
        let stime: u64 = times.next()?.parse().ok()?;
        Some(ProcStat {
            state,
            cpu_ticks: utime + stime,
        })
    }
}

/// What some CPUs did, in clock ticks since boot, from their `cpuN` lines in `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CoreTicks {
    /// Everything but idle and iowait: user + nice + system + irq + softirq + steal.
    pub busy: u64,
    /// irq + softirq: interrupt work, which no process is charged for.
    pub interrupts: u64,
    /// Time the hypervisor ran something else on these virtual CPUs.
    pub steal: u64,
}

impl CoreTicks {
    /// Reads the totals of `cpus` from `/proc/stat`.
    pub fn read(cpus: &[usize]) -> io::Result<CoreTicks> {
        let text = fs::read_to_string("/proc/stat")?;
        CoreTicks::parse(&text, cpus).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/stat lacks a line for one of CPUs {cpus:?}"),
            )
        })
    }

    /// Sums the `cpuN` lines of `cpus` (proc(5): user nice system idle iowait irq softirq steal
    /// ...); `None` if one is missing or malformed. Each CPU counts once, however often listed.
    pub fn parse(stat: &str, cpus: &[usize]) -> Option<CoreTicks> {
        let mut total = CoreTicks::default();
        let mut found = Vec::new();
        for line in stat.lines() {
            let mut fields = line.split_ascii_whitespace();
            let Some(cpu) = fields.next().and_then(|f| f.strip_prefix("cpu")) else {
                continue;
            };
            let Ok(n) = cpu.parse::<usize>() else {
                continue; // the aggregate "cpu" line
            };
            if !cpus.contains(&n) || found.contains(&n) {
                continue;
            }
            let v: Vec<u64> = fields
                .take(8)
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let &[user, nice, system, _idle, _iowait, irq, softirq, steal] = v.as_slice() else {
                return None;
            };
            total.busy += user + nice + system + irq + softirq + steal;
            total.interrupts += irq + softirq;
            total.steal += steal;
            found.push(n);
        }
        cpus.iter().all(|c| found.contains(c)).then_some(total)
    }
}

/// Clock ticks per second, the unit of `/proc/PID/stat` times.
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // Linux has reported 100 on every architecture for decades; the call cannot really fail.
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Raises this process's soft open-file limit to its hard limit; children inherit it. 10,000
/// connections need 10,000 descriptors in the server and as many in the load generator.
///
/// Returns the (soft, hard) limit now in force.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit that setrlimit only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // rlim_t is u64 on Linux.
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        // Fields after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime ...
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1";
        assert_eq!(
            ProcStat::parse(line),
            Some(ProcStat {
                state: 'S',
                cpu_ticks: 325
            })
        );
        let zombie = "7 (load) Z 1 7 7 0 -1 0 0 0 0 0 12 3 0 0 20 0 1 0 1";
        assert_eq!(
            ProcStat::parse(zombie),
            Some(ProcStat {
                state: 'Z',
                cpu_ticks: 15
            })
        );
    }

    #[test]
    fn rejects_truncated_stat() {
        assert_eq!(ProcStat::parse("1 (x) S 1 2 3"), None);
        assert_eq!(ProcStat::parse("no parenthesis"), None);
        assert_eq!(ProcStat::parse("1 (x) S 1 1 1 0 -1 0 0 0 0 0 ab 3"), None);
    }

    #[test]
    fn sums_the_chosen_cpus() {
        let stat = "cpu  30 0 30 100 0 0 0 0 0 0\n\
                    cpu0 10 1 5 50 7 2 3 1 0 0\n\
                    cpu1 20 0 25 50 0 0 4 0 0 0\n\
                    intr 1 2 3\n";
        let both = CoreTicks::parse(stat, &[0, 1]).unwrap();
        assert_eq!(
            both,
            CoreTicks {
                busy: 22 + 49,
                interrupts: 9,
                steal: 1
            }
        );
        let one = CoreTicks::parse(stat, &[1, 1]).unwrap();
        assert_eq!(
            one,
            CoreTicks {
                busy: 49,
                interrupts: 4,
                steal: 0
            }
        );
        assert_eq!(CoreTicks::parse(stat, &[2]), None, "missing CPU");
        assert_eq!(CoreTicks::parse("cpu0 1 2 3\n", &[0]), None, "short line");
        assert!(CoreTicks::read(&[0]).unwrap().busy > 0);
    }

    #[test]
    fn reads_own_stat() {
        let me = std::process::id();
        let before = ProcStat::read(me).unwrap();
        // The main thread (whose state this is) waits for the test threads; it is alive either way.
        assert!(matches!(before.state, 'R' | 'S'), "{before:?}");
        // Burn a little CPU: the tick counter must not go backwards and must parse.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(ProcStat::read(me).unwrap().cpu_ticks >= before.cpu_ticks);
    }

    #[test]
    fn spawn_ready_stop_and_zombie_times() {
        let flag = AtomicBool::new(false);
        let sh = Path::new("/bin/sh");
        // Burns CPU, announces readiness, then waits for SIGTERM.
        let script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo 'listening on x' >&2; \
                      trap 'exit 7' TERM; while :; do sleep 0.01; done";
        let mut child =
            Child::spawn("sh", 0, sh, ["-c", script], Some("listening on"), false).unwrap();
        child.wait_ready(Duration::from_secs(10), &flag).unwrap();
        assert!(child.is_ready());
        assert!(child.stderr_tail().contains("listening on x"));
        assert!(ProcStat::read(child.pid()).unwrap().cpu_ticks > 0);
        let status = child
            .stop(Duration::from_secs(5))
            .unwrap()
            .expect("exits on SIGTERM");
        assert_eq!(status.code(), Some(7));

        // A child that exits on its own is a zombie until reaped, and its times stay readable.
        let mut quick = Child::spawn("sh", 0, sh, ["-c", "echo out"], None, true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ProcStat::read(quick.pid()).unwrap().state != 'Z' {
            assert!(Instant::now() < deadline, "child did not exit");
            thread::sleep(POLL);
        }
        assert!(!quick.is_ready(), "no marker, never ready");
        assert!(quick.try_reap().unwrap().unwrap().success());
        assert_eq!(quick.take_stdout().unwrap(), "out\n");
        assert!(
            ProcStat::read(quick.pid()).is_err(),
            "reaped child left /proc"
        );
    }

    #[test]
    fn wait_ready_reports_exit_interrupt_and_timeout() {
        let sh = Path::new("/bin/sh");
        let flag = AtomicBool::new(false);
        let mut dies = Child::spawn(
            "sh",
            0,
            sh,
            ["-c", "echo boom >&2; exit 3"],
            Some("ready"),
            false,
        )
        .unwrap();
        match dies.wait_ready(Duration::from_secs(10), &flag) {
            Err(WaitError::Exited(status)) => assert_eq!(status.code(), Some(3)),
            other => panic!("expected an early exit, got {other:?}"),
        }
        let mut slow = Child::spawn("sh", 0, sh, ["-c", "sleep 30"], Some("ready"), false).unwrap();
        assert!(matches!(
            slow.wait_ready(Duration::from_millis(50), &flag),
            Err(WaitError::TimedOut)
        ));
        flag.store(true, Ordering::Relaxed);
        assert!(matches!(
            slow.wait_ready(Duration::from_secs(10), &flag),
            Err(WaitError::Interrupted)
        ));
        let pid = slow.pid();
        drop(slow);
        assert!(
            ProcStat::read(pid).is_err(),
            "Drop kills and reaps the group"
        );
    }
}
