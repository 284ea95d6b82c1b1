//! The host tuning scripts under `tuning/`, run as subprocesses: the `sysctl.sh` apply → show → revert
//! round trip, `--dry-run`, a knob the kernel refuses, usage errors, `show` as an unprivileged user,
//! `ulimit.sh`'s report, limits.d snippet and fs.nr_open refusal, and shellcheck.
//!
//! The tests that need root (writing sysctls, mount namespaces) are `#[ignore = "needs root ..."]`:
//! `scripts/test.sh` runs them when it runs as root (CI does), and they fail, not skip, when run
//! without root. The ones that touch sysctls take one lock (they share the host's `/proc/sys`) and
//! restore every value they found through [`Restore`], also when an assertion fails. Every
//! subprocess has a deadline. shellcheck must be installed (`scripts/test.sh` installs it as root).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The knobs the tuning issue asks `sysctl.sh` to manage, with the direction `apply` may move each
/// element in: `>` never lower, `<` never higher, `=` set exactly.
const KNOBS: [(&str, &str); 14] = [
    ("net.core.somaxconn", ">"),
    ("net.ipv4.tcp_max_syn_backlog", ">"),
    ("net.core.netdev_max_backlog", ">"),
    ("net.ipv4.ip_local_port_range", "<>"),
    ("net.ipv4.tcp_tw_reuse", "="),
    ("net.ipv4.tcp_fin_timeout", "<"),
    ("fs.file-max", ">"),
    ("fs.nr_open", ">"),
    ("net.ipv4.tcp_mem", ">>>"),
    ("net.ipv4.tcp_rmem", ">>>"),
    ("net.ipv4.tcp_wmem", ">>>"),
    ("net.ipv4.tcp_keepalive_time", "<"),
    ("net.ipv4.tcp_keepalive_intvl", "<"),
    ("net.ipv4.tcp_keepalive_probes", "<"),
];

/// How long one script run may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Connection target large enough that the connection-dependent knobs (`fs.nr_open`, `fs.file-max`,
/// `tcp_mem`) change on a host with default values.
const BIG_TARGET: u64 = 1_500_000;

/// Serialises the tests that read or write the host's sysctls.
static SYSCTLS: Mutex<()> = Mutex::new(());

fn sysctl_lock() -> MutexGuard<'static, ()> {
    SYSCTLS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tuning")
        .join(name)
}

/// Runs `cmd` with no stdin, collecting its output; fails the test if it runs past [`RUN_TIMEOUT`].
fn run(cmd: &mut Command) -> Output {
    common::output_bounded(cmd, RUN_TIMEOUT)
}

fn sysctl_sh(args: &[&str]) -> Output {
    run(Command::new(script("sysctl.sh")).args(args))
}

fn ulimit_sh(args: &[&str]) -> Output {
    run(Command::new(script("ulimit.sh")).args(args))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Everything about a run, for assertion messages.
fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        stdout(out),
        stderr(out)
    )
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", describe(out));
}

fn is_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    uids.split_whitespace().nth(1) == Some("0")
}

/// Fails the test unless it runs as root: for the `#[ignore = "needs root ..."]` tests, which a run
/// without root must not count as passed.
fn assert_root() {
    assert!(
        is_root(),
        "this test needs root (it writes sysctls or makes mount namespaces); run it as root, as \
         scripts/test.sh does under root and CI always does"
    );
}

fn knob_path(knob: &str) -> PathBuf {
    Path::new("/proc/sys").join(knob.replace('.', "/"))
}

/// The knob's value with its elements separated by single spaces, as the scripts print it.
fn read_knob(knob: &str) -> String {
    let raw = fs::read_to_string(knob_path(knob)).unwrap_or_else(|e| panic!("reading {knob}: {e}"));
    raw.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn write_knob(knob: &str, value: &str) {
    fs::write(knob_path(knob), format!("{value}\n"))
        .unwrap_or_else(|e| panic!("writing {value} to {knob}: {e}"));
}

fn numbers(value: &str) -> Vec<u64> {
    value
        .split_whitespace()
        .map(|n| n.parse().unwrap_or_else(|e| panic!("{value:?}: {e}")))
        .collect()
}

/// Every required knob this kernel has, with its value.
fn snapshot() -> BTreeMap<&'static str, String> {
    KNOBS
        .iter()
        .filter(|(knob, _)| knob_path(knob).exists())
        .map(|&(knob, _)| (knob, read_knob(knob)))
        .collect()
}

/// Puts back the sysctl values it was created with when dropped, whatever the test did meanwhile.
struct Restore(BTreeMap<&'static str, String>);

impl Restore {
    fn new() -> Self {
        Restore(snapshot())
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        for (knob, value) in &self.0 {
            if read_knob(knob) != *value
                && let Err(e) = fs::write(knob_path(knob), format!("{value}\n"))
            {
                eprintln!("could not restore {knob} to {value}: {e}");
            }
        }
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("ringws-tuning-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("creating a temp dir");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One row of `sysctl.sh show`.
#[derive(Debug)]
struct Row {
    current: String,
    recommended: String,
    status: String,
}

const STATUSES: [&str; 6] = [
    "ok",
    "change",
    "read-only",
    "absent",
    "unreadable",
    "unexpected",
];

/// The knob table of `sysctl.sh show`, by knob. Values may hold several numbers, so a row is split
/// at its status word: before it, current and recommended values have the same element count.
fn show_rows(text: &str) -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = tokens.iter().position(|t| STATUSES.contains(t)) else {
            continue;
        };
        if at < 3 || (at - 1) % 2 != 0 || !tokens[0].contains('.') {
            continue;
        }
        let half = (at - 1) / 2;
        rows.insert(
            tokens[0].to_string(),
            Row {
                current: tokens[1..1 + half].join(" "),
                recommended: tokens[1 + half..at].join(" "),
                status: tokens[at].to_string(),
            },
        );
    }
    rows
}

/// The `name = value` lines of a backup file.
fn backup_entries(path: &Path) -> BTreeMap<String, String> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("backup line {l:?}"));
            (
                name.trim().to_string(),
                value.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

/// Asserts that `after` moved from `before` only in the knob's allowed directions.
fn assert_never_less_generous(knob: &str, directions: &str, before: &str, after: &str) {
    let (b, a) = (numbers(before), numbers(after));
    assert_eq!(b.len(), a.len(), "{knob}: {before} -> {after}");
    for ((d, b), a) in directions.chars().zip(b).zip(a) {
        match d {
            '>' => assert!(a >= b, "{knob} lowered: {before} -> {after}"),
            '<' => assert!(a <= b, "{knob} raised: {before} -> {after}"),
            _ => {}
        }
    }
}

/// Sets two knobs to kernel defaults the scripts must change, so every apply has work to do even on
/// an already tuned host. Call with a [`Restore`] alive.
fn untune() {
    write_knob("net.core.netdev_max_backlog", "1000");
    write_knob("net.ipv4.tcp_fin_timeout", "60");
}

#[test]
#[ignore = "needs root: writes sysctls"]
fn apply_show_revert_round_trip() {
    assert_root();
    let _lock = sysctl_lock();
    let original = Restore::new();
    untune();
    let before = snapshot();
    let dir = TempDir::new("round-trip");
    let backup = dir.path().join("nested/backup.conf");
    let backup_arg = backup.to_str().unwrap();
    let n = BIG_TARGET.to_string();

    let out = sysctl_sh(&["apply", "--connections", &n, "--backup", backup_arg]);
    assert_exit(&out, 0);
    let after = snapshot();

    // The backup holds exactly the knobs that changed, with their values from before.
    let saved = backup_entries(&backup);
    for (knob, value) in &before {
        if after[knob] != *value {
            assert_eq!(
                saved.get(*knob),
                Some(value),
                "{knob} changed but is not saved right"
            );
        } else {
            assert!(
                !saved.contains_key(*knob),
                "{knob} did not change but is in the backup"
            );
        }
    }
    assert!(saved.len() >= 2, "apply changed too little: {saved:?}");

    // show reports every knob as applied, with the value that is in /proc/sys.
    let out = sysctl_sh(&["show", "--connections", &n]);
    assert_exit(&out, 0);
    let rows = show_rows(&stdout(&out));
    for (knob, value) in &after {
        let row = rows
            .get(*knob)
            .unwrap_or_else(|| panic!("{knob} missing:\n{}", stdout(&out)));
        assert_eq!(row.status, "ok", "{knob}: {row:?}");
        assert_eq!(row.current, *value, "{knob}");
        assert_eq!(row.recommended, *value, "{knob}");
    }
    for &(knob, directions) in &KNOBS {
        if let Some(b) = before.get(knob) {
            assert_never_less_generous(knob, directions, b, &after[knob]);
        }
    }

    // The promised numbers, read straight from /proc/sys.
    let n: u64 = BIG_TARGET;
    let get = |knob: &str| numbers(&read_knob(knob))[0];
    assert!(get("fs.nr_open") >= n + 16384);
    assert!(get("fs.file-max") >= 2 * n + 65536);
    assert!(get("net.core.netdev_max_backlog") >= 16384);
    assert!(get("net.ipv4.tcp_fin_timeout") <= 15);
    assert_eq!(get("net.ipv4.tcp_tw_reuse"), 1);
    assert_eq!(
        numbers(&read_knob("net.ipv4.ip_local_port_range"))[1],
        65535
    );

    // A second apply must not overwrite the originals.
    let saved_text = fs::read_to_string(&backup).unwrap();
    let out = sysctl_sh(&["apply", "--backup", backup_arg]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("already exists"),
        "{}",
        describe(&out)
    );
    assert_eq!(fs::read_to_string(&backup).unwrap(), saved_text);

    let out = sysctl_sh(&["revert", "--backup", backup_arg]);
    assert_exit(&out, 0);
    assert_eq!(snapshot(), before, "revert did not restore every value");
    assert!(!backup.exists(), "revert keeps the backup");

    let out = sysctl_sh(&["revert", "--backup", backup_arg]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("no backup at"), "{}", describe(&out));

    let expected = original.0.clone();
    drop(original);
    assert_eq!(snapshot(), expected, "the guard did not restore the host");
}

#[test]
#[ignore = "needs root: writes sysctls"]
fn dry_run_changes_nothing() {
    assert_root();
    let _lock = sysctl_lock();
    let _restore = Restore::new();
    untune();
    let before = snapshot();
    let dir = TempDir::new("dry-run");
    let backup = dir.path().join("backup.conf");
    let backup_arg = backup.to_str().unwrap();

    let out = sysctl_sh(&["apply", "--dry-run", "--backup", backup_arg]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("would set  net.core.netdev_max_backlog: 1000 -> 16384"),
        "{}",
        describe(&out)
    );
    assert_eq!(snapshot(), before);
    assert!(!backup.exists(), "a dry run wrote the backup");

    fs::write(
        &backup,
        "# hand-written\nnet.core.netdev_max_backlog = 2000\n",
    )
    .unwrap();
    let out = sysctl_sh(&["revert", "--dry-run", "--backup", backup_arg]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("would restore net.core.netdev_max_backlog: 1000 -> 2000"),
        "{}",
        describe(&out)
    );
    assert_eq!(snapshot(), before);
    assert!(backup.exists(), "a dry run deleted the backup");
}

#[test]
#[ignore = "needs root: writes sysctls and bind-mounts in a mount namespace"]
fn knob_that_cannot_be_set_is_reported_and_left_out_of_the_backup() {
    assert_root();
    let _lock = sysctl_lock();
    // A read-only bind mount over one knob, in a private mount namespace, is what a container with a
    // read-only /proc/sys looks like to the script.
    let probe = run(Command::new("unshare").args(["--mount", "--propagation", "private", "true"]));
    assert!(
        probe.status.success(),
        "unshare --mount fails here (root without CAP_SYS_ADMIN?): {}",
        describe(&probe)
    );
    let _restore = Restore::new();
    untune();
    let before = snapshot();
    let dir = TempDir::new("read-only");
    let backup = dir.path().join("backup.conf");
    let backup_arg = backup.to_str().unwrap();
    let frozen = knob_path("net.core.netdev_max_backlog");
    let frozen = frozen.to_str().unwrap();

    let out = run(Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!("mount --bind -o ro {frozen} {frozen} && exec \"$0\" \"$@\""),
        script("sysctl.sh").to_str().unwrap(),
        "apply",
        "--backup",
        backup_arg,
    ]));
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("cannot set net.core.netdev_max_backlog: 1000 -> 16384"),
        "{}",
        describe(&out)
    );
    assert_eq!(read_knob("net.core.netdev_max_backlog"), "1000");
    assert_eq!(
        read_knob("net.ipv4.tcp_fin_timeout"),
        "15",
        "apply stopped half-way"
    );

    let saved = backup_entries(&backup);
    assert!(
        !saved.contains_key("net.core.netdev_max_backlog"),
        "{saved:?}"
    );
    assert_eq!(
        saved.get("net.ipv4.tcp_fin_timeout").map(String::as_str),
        Some("60")
    );

    let out = sysctl_sh(&["revert", "--backup", backup_arg]);
    assert_exit(&out, 0);
    assert_eq!(snapshot(), before);
}

#[test]
fn usage_errors_exit_2_and_errors_exit_1() {
    for args in [
        &[][..],
        &["show", "apply"],
        &["--bogus", "show"],
        &["--connections", "0", "show"],
        &["--connections", "012", "show"],
        &["--connections", "lots", "show"],
        &["--connections", "10000001", "show"],
        &["show", "--connections"],
        &["--backup=", "show"],
    ] {
        let out = sysctl_sh(args);
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains("sysctl.sh: "),
            "{args:?}: {}",
            describe(&out)
        );
    }
    let out = sysctl_sh(&["--help"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).starts_with("Usage: sysctl.sh"));

    let dir = TempDir::new("errors");
    let backup = dir.path().join("backup.conf");
    let backup_arg = backup.to_str().unwrap();
    let out = sysctl_sh(&["revert", "--backup", backup_arg]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("no backup at"), "{}", describe(&out));

    // A backup may only name the knobs the script manages, with numbers; nothing is written otherwise.
    for (content, complaint) in [
        ("kernel.panic = 1\n", "not a knob this script manages"),
        (
            "net.ipv4.tcp_fin_timeout = 60; reboot\n",
            "is not 'knob = numbers'",
        ),
        (
            "net.ipv4.tcp_fin_timeout = 60\nnet.ipv4.tcp_fin_timeout = 61\n",
            "appears twice",
        ),
        (
            "net.ipv4.tcp_fin_timeout = 99999999999999999999\n",
            "out of range",
        ),
    ] {
        fs::write(&backup, content).unwrap();
        let out = sysctl_sh(&["revert", "--backup", backup_arg]);
        assert_exit(&out, 1);
        assert!(
            stderr(&out).contains(complaint),
            "{content:?}: {}",
            describe(&out)
        );
        assert!(backup.exists());
    }

    for args in [
        &["--bogus"][..],
        &["--connections", "0"],
        &["--workers", "0"],
        &["--pid", "self"],
        &["--user", "bob"],
        &["--write"],
    ] {
        let out = ulimit_sh(args);
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains("ulimit.sh: "),
            "{args:?}: {}",
            describe(&out)
        );
    }
    let missing = dir.path().join("missing");
    let out = ulimit_sh(&["--write", missing.to_str().unwrap()]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("is not a directory"),
        "{}",
        describe(&out)
    );
}

#[test]
fn show_works_without_root_and_apply_refuses() {
    let _lock = sysctl_lock();
    let dir = TempDir::new("unprivileged");
    let copy = dir.path().join("sysctl.sh");
    fs::copy(script("sysctl.sh"), &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    let unprivileged = |args: &[&str]| {
        if is_root() {
            run(Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&copy)
                .args(args))
        } else {
            run(Command::new(&copy).args(args))
        }
    };

    let out = unprivileged(&["show"]);
    assert_exit(&out, 0);
    let rows = show_rows(&stdout(&out));
    for (knob, _) in &KNOBS {
        if knob_path(knob).exists() {
            let row = rows
                .get(*knob)
                .unwrap_or_else(|| panic!("{knob} missing:\n{}", stdout(&out)));
            assert_eq!(row.current, read_knob(knob), "{knob}");
            assert!(
                row.status == "ok" || row.status == "change",
                "{knob}: {row:?}"
            );
        }
    }
    assert!(
        stdout(&out).contains("fs.nr_open      >= 100000 + 16384 headroom = 116384"),
        "{}",
        describe(&out)
    );

    let backup = dir.path().join("backup.conf");
    let out = unprivileged(&["apply", "--backup", backup.to_str().unwrap()]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("apply needs root"),
        "{}",
        describe(&out)
    );
    assert!(!backup.exists());
    let out = unprivileged(&["apply", "--dry-run", "--backup", backup.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("would save the"),
        "{}",
        describe(&out)
    );
}

/// This process's (soft, hard) `nofile` and `memlock` limits, spelled as /proc/PID/limits does.
fn own_limits() -> [(String, String); 2] {
    let spell = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    [libc::RLIMIT_NOFILE, libc::RLIMIT_MEMLOCK].map(|resource| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a live, writable rlimit for the whole call, which only writes into it.
        let rc = unsafe { libc::getrlimit(resource, &mut limit) };
        assert_eq!(rc, 0, "getrlimit");
        (spell(limit.rlim_cur), spell(limit.rlim_max))
    })
}

/// The `nofile` and `memlock` (soft, hard) pairs `ulimit.sh` printed under the block titled `title`.
fn reported(text: &str, title: &str) -> [(String, String); 2] {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(title));
    assert!(lines.next().is_some(), "no {title:?} block in:\n{text}");
    let mut pair = |name: &str| {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{title:?} block ends early:\n{text}"));
        let t: Vec<&str> = line.split_whitespace().collect();
        assert!(
            t.len() >= 5 && t[0] == name && t[1] == "soft" && t[3] == "hard",
            "{line:?}"
        );
        (t[2].to_string(), t[4].to_string())
    };
    [pair("nofile"), pair("memlock")]
}

#[test]
fn ulimit_reports_this_process() {
    let pid = std::process::id().to_string();
    let out = ulimit_sh(&["--connections", "100000", "--workers", "2", "--pid", &pid]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let expected = own_limits();
    assert_eq!(reported(&text, &format!("pid {pid} (")), expected);
    // The script's own shell inherits this process's limits.
    assert_eq!(reported(&text, "this shell: pid "), expected);
    assert!(
        text.contains("nofile  >= 116384: 100000 connections + 16384 headroom"),
        "{text}"
    );
    assert!(
        text.contains("memlock >= 564 KiB: 2 workers x 276 KiB + 12 KiB probe"),
        "{text}"
    );
    assert!(text.contains("LimitNOFILE=116384"), "{text}");
}

#[test]
fn ulimit_writes_a_limits_d_snippet() {
    let nr_open: u64 = fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let n = 200_000.min(nr_open.saturating_sub(16384)).max(1);
    let [(_, hard), _] = own_limits();
    let hard: u64 = hard.parse().expect("nofile cannot be unlimited");
    let nofile = (n + 16384).max(hard).to_string();

    let dir = TempDir::new("limits-d");
    let out = ulimit_sh(&[
        "--connections",
        &n.to_string(),
        "--write",
        dir.path().to_str().unwrap(),
    ]);
    assert_exit(&out, 0);
    let snippet = fs::read_to_string(dir.path().join("90-ringws.conf")).unwrap();
    let entries: Vec<Vec<&str>> = snippet
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    for domain in ["*", "root"] {
        for kind in ["soft", "hard"] {
            assert!(
                entries.contains(&vec![domain, kind, "nofile", &nofile]),
                "{domain} {kind}:\n{snippet}"
            );
            let memlock = entries
                .iter()
                .find(|e| e[..3] == [domain, kind, "memlock"])
                .unwrap_or_else(|| panic!("{domain} {kind} memlock:\n{snippet}"));
            assert!(
                memlock[3] == "unlimited" || memlock[3].parse::<u64>().unwrap() >= 8192,
                "{snippet}"
            );
        }
    }
    assert_eq!(entries.len(), 8, "{snippet}");

    // sysctl.sh sizes fs.nr_open with the same headroom, so the snippet is always settable after it.
    let show = sysctl_sh(&["show", "--connections", &n.to_string()]);
    assert!(
        stdout(&show).contains(&format!(
            "fs.nr_open      >= {n} + 16384 headroom = {}",
            n + 16384
        )),
        "{}",
        describe(&show)
    );

    let out = ulimit_sh(&["--write", dir.path().to_str().unwrap(), "--user", "@ringws"]);
    assert_exit(&out, 0);
    let snippet = fs::read_to_string(dir.path().join("90-ringws.conf")).unwrap();
    let domains: Vec<&str> = snippet
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(domains, ["@ringws"; 4], "{snippet}");
}

/// A nofile above fs.nr_open would make pam_limits fail: `ulimit.sh --write` refuses it and writes
/// nothing. The host's nr_open may be above anything the script accepts (it goes up to 10,000,000
/// connections), so the script runs in a private mount namespace where a file with a known value is
/// bind-mounted over `/proc/sys/fs/nr_open`; the host's value is not touched.
#[test]
#[ignore = "needs root: bind-mounts over /proc/sys/fs/nr_open in a mount namespace"]
fn ulimit_refuses_a_nofile_above_fs_nr_open() {
    assert_root();
    let host_nr_open = read_knob("fs.nr_open");
    // Above this process's hard nofile limit (which the snippet never goes below), so that a target
    // under it is accepted.
    let [(_, hard), _] = own_limits();
    let hard: u64 = hard.parse().expect("nofile cannot be unlimited");
    let nr_open = (hard + 65536).max(1_048_576);
    let dir = TempDir::new("nr-open");
    let fake = dir.path().join("nr_open");
    fs::write(&fake, format!("{nr_open}\n")).unwrap();
    let refused = dir.path().join("limits.d");
    fs::create_dir(&refused).unwrap();
    let in_namespace = |connections: u64, write_dir: &Path| {
        run(Command::new("unshare").args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!(
                "mount --bind {} /proc/sys/fs/nr_open && exec \"$0\" \"$@\"",
                fake.display()
            ),
            script("ulimit.sh").to_str().unwrap(),
            "--connections",
            &connections.to_string(),
            "--write",
            write_dir.to_str().unwrap(),
        ]))
    };
    // nr_open connections need nr_open + 16384 descriptors: refused.
    let out = in_namespace(nr_open, &refused);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains(&format!("exceeds fs.nr_open {nr_open}")),
        "{}",
        describe(&out)
    );
    assert_eq!(fs::read_dir(&refused).unwrap().count(), 0);
    // The same namespace with a target that fits writes the snippet: the refusal above was the
    // nr_open check, not the namespace.
    let out = in_namespace(nr_open - 16384 - 1024, &refused);
    assert_exit(&out, 0);
    assert!(
        refused.join("90-ringws.conf").exists(),
        "{}",
        describe(&out)
    );
    assert_eq!(
        read_knob("fs.nr_open"),
        host_nr_open,
        "the host's nr_open changed"
    );
}

#[test]
fn scripts_are_shellcheck_clean() {
    let version = Command::new("shellcheck").arg("--version").output();
    let Ok(version) = version else {
        panic!(
            "shellcheck is not installed ({}): install it (Debian: apt-get install shellcheck; \
             scripts/test.sh does that when run as root)",
            version.unwrap_err()
        );
    };
    assert!(version.status.success());
    let out = run(Command::new("shellcheck")
        .arg(script("sysctl.sh"))
        .arg(script("ulimit.sh")));
    assert_exit(&out, 0);
}
