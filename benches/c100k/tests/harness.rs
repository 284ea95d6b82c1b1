//! Runs `benches/c100k.sh` end to end at a small scale (600 connections over three server and three
//! client processes) and checks what it reports: every connection up and echoed, zero errors, a clean
//! teardown, and no process left behind. Builds `target/release/ringws` first if it is missing.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A number from the one-line JSON the script writes with --out.
fn number(json: &str, key: &str) -> f64 {
    let start = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + key.len()
        + 3;
    let end = json[start..]
        .find([',', '}'])
        .map_or(json.len(), |i| start + i);
    json[start..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} in {json}"))
}

/// Runs `benches/c100k.sh` with `args` (plus this crate's client and an output file), asserts it
/// succeeded, and returns its report (stdout) and the JSON it wrote.
fn c100k(name: &str, args: &[&str]) -> (String, String) {
    let out = std::env::temp_dir().join(format!("c100k-{name}-{}.json", std::process::id()));
    let run = Command::new(repo().join("benches/c100k.sh"))
        .args(args)
        .arg("--out")
        .arg(&out)
        .args(["--client", env!("CARGO_BIN_EXE_c100k-client")])
        .output()
        .expect("run benches/c100k.sh");
    let report = String::from_utf8_lossy(&run.stdout).into_owned();
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{:?}\n{report}\n{log}", run.status);
    let json = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    (report, json)
}

#[test]
fn six_hundred_connections_up_echoed_and_down() {
    let started = Instant::now();
    let (report, json) = c100k(
        "test",
        &[
            "--connections",
            "600",
            "--per-process",
            "200",
            "--port",
            "19071",
            "--timeout",
            "240",
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(240));
    for (key, want) in [
        ("connections", 600.0),
        ("servers", 3.0),
        ("clients", 3.0),
        ("established", 600.0),
        ("server_side", 600.0),
        ("count", 600.0),
        ("left", 0.0),
        ("errors", 0.0),
        ("failed", 0.0),
    ] {
        assert_eq!(number(&json, key), want, "{key}: {json}");
    }
    assert!(number(&json, "p50") <= number(&json, "p99"), "{json}");
    assert!(report.contains("every process exited 0"), "{report}");
    // Nothing the script started is still running.
    let left = Command::new("pgrep")
        .args(["-f", "serve --addr 127.0.0.1:19071"])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "servers left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn storms_repeated_under_echo_load_upgrade_every_connection() {
    let (report, json) = c100k(
        "storm",
        &[
            "--connections",
            "600",
            "--per-process",
            "300",
            "--dial",
            "300",
            "--port",
            "19072",
            "--echo",
            "20",
            "--runs",
            "2",
            "--timeout",
            "120",
            "--server",
            "ringws",
        ],
    );
    // One JSON object per run, each with the storm under echo load complete.
    let runs: Vec<&str> = json.lines().collect();
    assert_eq!(runs.len(), 2, "{json}");
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(number(run, "round"), (i + 1) as f64, "{run}");
        for (key, want) in [
            ("established", 600.0),
            ("servers", 2.0),
            ("echo", 20.0),
            ("echo_errors", 0.0),
            ("errors", 0.0),
            ("failed", 0.0),
        ] {
            assert_eq!(number(run, key), want, "{key}: {run}");
        }
        assert!(number(run, "echo_messages_per_second") > 0.0, "{run}");
        assert!(
            number(run, "handshakes_per_second_per_worker") > 0.0,
            "{run}"
        );
    }
    assert!(report.contains("2/2 all upgraded"), "{report}");
}

#[test]
fn the_script_is_shellcheck_clean() {
    let Ok(version) = Command::new("shellcheck").arg("--version").output() else {
        eprintln!("SKIP the_script_is_shellcheck_clean: shellcheck is not installed");
        return;
    };
    assert!(version.status.success());
    // -x: follow the `source` of benches/lib/procs.sh (its path is given by a directive).
    let run = Command::new("shellcheck")
        .arg("-x")
        .arg(repo().join("benches/c100k.sh"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--connections", "0"][..],
        &["--bogus"],
        &["--port", "70000"],
        &["--dial"],
        &["--server", "nginx"],
        &["--echo", "x"],
        &["--runs", "0"],
    ] {
        let run = Command::new(repo().join("benches/c100k.sh"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(2), "{args:?}");
    }
}
