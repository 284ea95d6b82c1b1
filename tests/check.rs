//! `ringws check` on this machine: the table has every row, the kernel and io_uring rows pass here,
//! FAIL rows make the exit status 1, `--json` says the same as the table, the sysctl rows are the
//! tuning script's knobs, the nofile and memlock numbers agree with `tuning/ulimit.sh`, the default
//! target is 10,000 connections and says how to check for more, and (as root,
//! run as unprivileged users under `prlimit`) the memlock number is what the kernel really charges.
//! The root-only test is `#[ignore = "needs root ..."]` (scripts/test.sh runs it as root) and fails
//! without root.

mod common;

use ringws::engine::{MemlockNeed, ProbeReport, Server};
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::Duration;

/// Bound on one `ringws check` run (it probes io_uring and runs a shell script: well under a second).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a command with a deadline, keeping stdout and stderr apart.
fn run(cmd: &mut Command) -> Output {
    common::output_bounded(cmd, CHECK_TIMEOUT)
}

fn check(args: &[&str]) -> Output {
    run(Command::new(common::binary()).arg("check").args(args))
}

/// `ringws check ARGS` with its nofile limit set to `soft`:`hard` before it starts (lowering a limit
/// needs no privilege), so the test does not depend on the limits it was started with.
fn check_with_nofile(soft: u64, hard: u64, args: &[&str]) -> Output {
    let mut cmd = Command::new(common::binary());
    cmd.arg("check").args(args);
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: the hook runs in the child between fork and exec and only calls setrlimit, which is
    // async-signal-safe, on a copy of `limit`.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    run(&mut cmd)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A row of the table: status and value, by check name.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    status: String,
    value: String,
    fix: Option<String>,
}

/// Parses the table: `STATUS  CHECK  VALUE` lines, each optionally followed by a `fix:` line, with the
/// columns found from the header line.
fn table(text: &str) -> BTreeMap<String, Row> {
    let header = text
        .lines()
        .find(|l| l.starts_with("STATUS"))
        .unwrap_or_else(|| panic!("no header in:\n{text}"));
    let check_col = header.find("CHECK").unwrap();
    let value_col = header.find("VALUE").unwrap();
    let mut rows = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text
        .lines()
        .skip_while(|l| !l.starts_with("STATUS"))
        .skip(1)
    {
        if line.is_empty() {
            break;
        }
        if let Some(fix) = line.get(value_col..).and_then(|v| v.strip_prefix("fix: "))
            && line[..value_col].trim().is_empty()
        {
            let name = last.as_ref().expect("a fix line follows a row");
            let row: &mut Row = rows.get_mut(name).unwrap();
            assert!(row.fix.is_none(), "two fix lines for {name}");
            row.fix = Some(fix.to_string());
            continue;
        }
        let status = line[..check_col].trim().to_string();
        let name = line[check_col..value_col].trim().to_string();
        let value = line[value_col..].to_string();
        assert!(
            ["OK", "WARN", "FAIL"].contains(&status.as_str()),
            "{line:?}"
        );
        assert!(
            rows.insert(
                name.clone(),
                Row {
                    status,
                    value,
                    fix: None
                }
            )
            .is_none(),
            "duplicate row {name}"
        );
        last = Some(name);
    }
    rows
}

/// The knobs `tuning/sysctl.sh show --porcelain` prints: name -> (state, current, recommended).
fn porcelain(connections: u64) -> BTreeMap<String, (String, String, String)> {
    let out = run(
        Command::new(common::repo_root().join("tuning/sysctl.sh")).args([
            "--porcelain",
            "--connections",
            &connections.to_string(),
            "show",
        ]),
    );
    assert!(out.status.success(), "{}", describe(&out));
    stdout(&out)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 5, "{l:?}");
            (
                f[0].to_string(),
                (f[1].to_string(), f[2].to_string(), f[3].to_string()),
            )
        })
        .collect()
}

/// This process's (soft, hard) nofile limit; `None` is unlimited.
fn nofile() -> (Option<u64>, Option<u64>) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live, writable rlimit for the whole call, which only writes into it.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    let finite = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    (finite(limit.rlim_cur), finite(limit.rlim_max))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn table_has_every_row_and_io_uring_passes_here() {
    // 1000 connections + the 16384 headroom fit the 20,000 descriptors of this machine's processes.
    let out = check(&["--connections", "1000"]);
    let text = stdout(&out);
    let rows = table(&text);
    let mut expected: Vec<String> = ["kernel", "kernel.io_uring_disabled", "io_uring setup"]
        .map(String::from)
        .into();
    let report = ProbeReport::run();
    expected.extend(report.features().iter().map(|f| f.name.to_string()));
    let knobs = porcelain(1000);
    expected.extend(knobs.keys().cloned());
    expected.extend(
        [
            "nofile (open files)",
            "memlock (locked memory)",
            "CPUs",
            "SIMD (unmasking)",
        ]
        .map(String::from),
    );
    let mut names: Vec<&String> = rows.keys().collect();
    names.sort();
    let mut want: Vec<&String> = expected.iter().collect();
    want.sort();
    assert_eq!(names, want, "{text}");

    // The development machine runs Linux 6.18 with io_uring enabled: every one of these passes.
    for name in ["kernel", "kernel.io_uring_disabled", "io_uring setup"]
        .into_iter()
        .chain(report.features().iter().map(|f| f.name))
    {
        let row = &rows[name];
        assert_eq!(row.status, "OK", "{name}: {row:?}\n{text}");
        assert_eq!(row.fix, None, "{name}");
    }
    assert!(
        rows["kernel"].value.contains(
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap()
                .trim()
        )
    );
    let level = ringws::protocol::mask::simd_level().to_string();
    assert_eq!(rows["SIMD (unmasking)"].value, level);

    // Exit status: 1 exactly when some row is FAIL; every non-OK row names a fix.
    let any_fail = rows.values().any(|r| r.status == "FAIL");
    assert_eq!(out.status.code(), Some(i32::from(any_fail)), "{text}");
    for (name, row) in &rows {
        assert_eq!(row.status == "OK", row.fix.is_none(), "{name}: {row:?}");
    }
    let count = |s: &str| rows.values().filter(|r| r.status == s).count();
    assert!(
        text.contains(&format!(
            "{} OK, {} WARN, {} FAIL",
            count("OK"),
            count("WARN"),
            count("FAIL")
        )),
        "{text}"
    );
}

#[test]
fn sysctl_rows_are_the_tuning_scripts_knobs() {
    let rows = table(&stdout(&check(&["--connections", "1000"])));
    for (knob, (state, current, recommended)) in porcelain(1000) {
        let row = &rows[&knob];
        match state.as_str() {
            "ok" => {
                assert_eq!(row.status, "OK", "{knob}");
                assert_eq!(row.value, current, "{knob}");
            }
            "change" => {
                assert_eq!(row.status, "WARN", "{knob}");
                assert_eq!(
                    row.value,
                    format!("{current} (recommended {recommended})"),
                    "{knob}"
                );
                let fix = row.fix.as_deref().unwrap();
                assert!(
                    fix.starts_with(&format!("sysctl -w {knob}=")) && fix.contains(&recommended),
                    "{knob}: {fix}"
                );
            }
            _ => assert_eq!(row.status, "WARN", "{knob} ({state}): {row:?}"),
        }
    }
}

#[test]
fn more_connections_than_the_nofile_limit_fail() {
    // A finite hard limit, at or below this process's own (a lower one can always be set).
    let hard = nofile().1.unwrap_or(u64::MAX).min(4096);
    let soft = hard.min(1024);
    for n in [hard + 1, 100_000_000] {
        let out = check_with_nofile(soft, hard, &["--connections", &n.to_string()]);
        let rows = table(&stdout(&out));
        let row = &rows["nofile (open files)"];
        assert_eq!(row.status, "FAIL", "{n}: {}", describe(&out));
        assert!(
            row.value.contains(&format!("{n} connections need")),
            "{row:?}"
        );
        // No soft-limit raise can help above the hard limit: the fix says how to go past it.
        assert!(
            row.fix.as_deref().unwrap().contains("raise the hard limit"),
            "{row:?}"
        );
        assert_eq!(out.status.code(), Some(1), "{n}: {}", describe(&out));
    }
    // Beyond the tuning script's range the sysctls are reported unchecked, not silently skipped.
    let rows = table(&stdout(&check(&["--connections", "100000000"])));
    assert_eq!(rows["sysctls"].status, "WARN");
    assert!(rows["sysctls"].fix.as_deref().unwrap().contains("10000000"));
}

#[test]
fn bad_options_are_usage_errors() {
    for args in [
        &["--connections", "0"][..],
        &["--connections", "lots"],
        &["--buffer-count", "1000"],
        &["--workers", "0"],
    ] {
        let out = check(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn json_says_what_the_table_says() {
    for n in ["1000", "100000000"] {
        let plain = check(&["--connections", n]);
        let json = check(&["--connections", n, "--json"]);
        assert_eq!(plain.status.code(), json.status.code(), "{n}");
        let v: Value = serde_json::from_slice(&json.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", describe(&json)));
        assert_eq!(v["connections"], n.parse::<u64>().unwrap());
        let from_json: BTreeMap<String, Row> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["check"].as_str().unwrap().to_string(),
                    Row {
                        status: r["status"].as_str().unwrap().to_string(),
                        value: r["value"].as_str().unwrap().to_string(),
                        fix: r["fix"].as_str().map(String::from),
                    },
                )
            })
            .collect();
        assert_eq!(from_json, table(&stdout(&plain)), "{n}");
        for (key, status) in [("ok", "OK"), ("warn", "WARN"), ("fail", "FAIL")] {
            let count = from_json.values().filter(|r| r.status == status).count();
            assert_eq!(v[key], count as u64, "{key}");
        }
    }
}

/// The first line of `tuning/ulimit.sh`'s report starting with `prefix`, split into words.
fn ulimit_line(args: &[&str], prefix: &str) -> Vec<String> {
    let out = run(Command::new(common::repo_root().join("tuning/ulimit.sh")).args(args));
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn nofile_recommendation_agrees_with_ulimit_sh() {
    // check keeps its own copy of the scripts' 16384-descriptor headroom; this keeps them equal.
    let words = ulimit_line(&["--connections", "50000"], "nofile  >=");
    let script = words[2].trim_end_matches(':').to_string();
    let rows = table(&stdout(&check(&["--connections", "50000"])));
    let value = &rows["nofile (open files)"].value;
    assert!(
        value.contains(&format!("recommended {script} ")),
        "ulimit.sh says {script}, check says {value}"
    );
}

#[test]
fn ulimit_sh_memlock_is_what_check_computes() {
    // Both compute the engine's MemlockNeed::of: check calls it, ulimit.sh repeats its arithmetic.
    for (workers, extra) in [
        (1, &[][..]),
        (3, &[][..]),
        (2, &["--buffer-count", "4096"][..]),
        (2, &["--ring-entries", "100", "--buffer-count", "1"][..]),
    ] {
        let w = workers.to_string();
        let mut args = vec!["--workers", w.as_str()];
        args.extend_from_slice(extra);
        let words = ulimit_line(&args, "memlock >=");
        // memlock >= TOTAL KiB: W workers x P KiB + Q KiB probe of io_uring rings; ...
        let kib = |i: usize| -> u64 { words[i].parse().unwrap_or_else(|_| panic!("{words:?}")) };
        let x = words
            .iter()
            .position(|w| w == "x")
            .expect("W workers x P KiB");
        let (total, per_worker, probe) = (kib(2), kib(x + 1), kib(x + 4));

        let mut builder = Server::builder().workers(workers);
        for pair in extra.chunks(2) {
            builder = match pair[0] {
                "--buffer-count" => builder.buffer_count(pair[1].parse().unwrap()),
                "--ring-entries" => builder.ring_entries(pair[1].parse().unwrap()),
                other => unreachable!("{other}"),
            };
        }
        let need = MemlockNeed::of(builder.config());
        assert_eq!(
            (total, per_worker, probe),
            (
                need.total.div_ceil(1024),
                need.per_worker.div_ceil(1024),
                need.probe.div_ceil(1024)
            ),
            "ulimit.sh {args:?} vs the engine"
        );

        // And `ringws check --json` reports the same need, in bytes.
        let mut check_args = vec!["--connections", "1000", "--json"];
        check_args.extend_from_slice(&args);
        let out = check(&check_args);
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
        let m = &v["memlock"];
        assert_eq!(
            (
                m["per_worker"].as_u64(),
                m["probe"].as_u64(),
                m["total"].as_u64()
            ),
            (Some(need.per_worker), Some(need.probe), Some(need.total)),
            "{v}"
        );
        let row = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["check"] == "memlock (locked memory)")
            .unwrap();
        let value = row["value"].as_str().unwrap();
        assert!(
            value.contains(&format!(
                "the rings need {total} KiB ({workers} workers x {per_worker} KiB + {probe} KiB probe)"
            )),
            "check says {value}, ulimit.sh {words:?}"
        );
    }
}

#[test]
fn the_default_target_is_modest_and_says_how_to_check_for_more() {
    let out = check(&[]);
    let text = stdout(&out);
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("ringws check: 10000 connections, "),
        "{text}"
    );
    assert_eq!(
        lines.next(),
        Some("10000 is the default target; for more: ringws check --connections 100000"),
        "{text}"
    );
    // Exit status as for an explicit --connections 10000, which does not print the hint.
    let explicit = check(&["--connections", "10000"]);
    assert_eq!(out.status.code(), explicit.status.code(), "{text}");
    assert!(!stdout(&explicit).contains("default target"));
    assert_eq!(table(&text), table(&stdout(&explicit)));
    let json: Value = serde_json::from_slice(&check(&["--json"]).stdout).unwrap();
    assert_eq!(json["connections"], 10_000);
}

/// `ringws ARGS` as user `uid` (no capabilities) with RLIMIT_MEMLOCK `memlock` bytes.
fn unprivileged(uid: u32, memlock: u64, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "prlimit"])
        .arg(format!("--memlock={memlock}:{memlock}"))
        .arg(common::binary())
        .args(args);
    cmd
}

/// Whether `ringws serve --workers 1` starts as `uid` under `memlock` bytes: it prints its
/// `listening on` line (and is killed then), or it exits first (bounded wait for either).
fn serve_starts(uid: u32, memlock: u64) -> (bool, String) {
    let (outcome, log) = common::run_until_listening(
        &mut unprivileged(
            uid,
            memlock,
            &["serve", "--workers", "1", "--addr", "127.0.0.1:0"],
        ),
        Duration::from_secs(20),
    );
    match outcome {
        common::Started::Listening => {
            assert!(log.contains("listening on 127.0.0.1:"), "{log}");
            (true, log)
        }
        common::Started::Exited(_) => (false, log),
        common::Started::Neither => panic!("neither started nor exited within 20 s:\n{log}"),
    }
}

#[test]
#[ignore = "needs root: runs ringws as other users (setpriv) under a lowered memlock limit"]
fn memlock_need_is_what_the_kernel_charges_an_unprivileged_user() {
    assert!(
        is_root(),
        "this test needs root to run ringws as other users; run it as root (scripts/test.sh does \
         under root, CI always does)"
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = kernel.trim().split(['.', '-']).map(|p| p.parse::<u32>());
    let version = (v.next().unwrap().unwrap(), v.next().unwrap().unwrap());
    assert!(
        ((6, 14)..).contains(&version),
        "Linux {version:?} does not charge io_uring rings to RLIMIT_MEMLOCK (6.14 and later do): \
         this test checks that charge, so it needs a 6.14+ kernel like the project's machines"
    );
    let need = MemlockNeed::of(Server::builder().workers(1).config());
    // The charge is per user and freed asynchronously after a process exits, so every run gets a
    // user of its own that owns no other io_uring memory.
    let base = 200_000 + (std::process::id() % 100_000) * 4;

    // check, as that user with less than the need, says FAIL for memlock and exits 1.
    let out = run(&mut unprivileged(
        base,
        64 << 10,
        &["check", "--workers", "1", "--connections", "1000"],
    ));
    let rows = table(&stdout(&out));
    let row = &rows["memlock (locked memory)"];
    assert_eq!(row.status, "FAIL", "{}", describe(&out));
    assert!(
        row.value
            .starts_with("soft 64 KiB, hard 64 KiB; the rings need"),
        "{row:?}"
    );
    assert_eq!(out.status.code(), Some(1));
    // With twice the need (the recommendation) it is OK.
    let out = run(&mut unprivileged(
        base + 1,
        2 * need.total,
        &["check", "--workers", "1", "--connections", "1000"],
    ));
    assert_eq!(table(&stdout(&out))["memlock (locked memory)"].status, "OK");

    // The server starts with exactly the need, and does not with one page less than a worker's own
    // rings: the computed charge is neither too low nor more than a page too high.
    let (started, log) = serve_starts(base + 2, need.total);
    assert!(
        started,
        "serve did not start with memlock {}:\n{log}",
        need.total
    );
    let (started, log) = serve_starts(base + 3, need.per_worker - 4096);
    assert!(
        !started,
        "serve started with memlock {}:\n{log}",
        need.per_worker - 4096
    );
    assert!(log.contains("error:"), "{log}");
}
