//! The industry yardstick: the original Autobahn|Testsuite case files, driven by `kosoku` (a runner
//! in Rust that executes Autobahn's own Python case files), against a live `ringws serve`.
//!
//! - cases 1-10 (framing, pings, reserved bits, opcodes, fragmentation, UTF-8, close handling,
//!   limits) against the plain echo server: 301 cases;
//! - cases 12-13 (permessage-deflate, every parameter combination) against `serve --deflate`:
//!   216 cases.
//!
//! - all 517 again over wss:// (`serve --tls-cert`): kosoku speaks ws:// only, so a TLS relay
//!   (tests/common/tls.rs) carries its bytes unchanged in TLS records to the server's TLS port.
//!
//! Every case must end `OK`, `NON-STRICT` or `INFORMATIONAL`, both for its behaviour and its close
//! behaviour; the test prints the summary and, on failure, each failing case with kosoku's reason.
//! kosoku comes from `tests/interop/.venv` (installed by `scripts/test.sh`, which also patches a
//! Python 3 quirk of its case 12 file: see `tests/interop/python/patch_kosoku.py`); without it the
//! test fails and says so.

mod common;

use common::tls::{Certs, TlsRelay};
use common::{Server, repo_root, run_bounded};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Bound on one kosoku run (12-13 take ~3 minutes on a loaded 2-core machine).
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// Outcomes that pass: the case behaved as the RFC requires, or in a way the RFC allows.
const PASSING: [&str; 3] = ["OK", "NON-STRICT", "INFORMATIONAL"];

/// Runs kosoku with `selection` (its `-i`/`-x` arguments) against `server`, reached at `addr` (the
/// server itself or a relay in front of it), and checks the report: exactly `expected` cases, each
/// passing. `run` names the run (its reports go to their own folder).
fn run_cases(server: &Server, addr: SocketAddr, run: &str, selection: &[&str], expected: usize) {
    let kosoku = common::venv_bin("kosoku");
    let out = report_dir(run, selection);
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = Command::new(&kosoku);
    cmd.arg(addr.to_string())
        .args(selection)
        .args(["-p", "8", "-o"])
        .arg(&out);
    let (status, output) = run_bounded(&mut cmd, RUN_TIMEOUT);
    let Some(status) = status else {
        panic!("kosoku did not finish within {RUN_TIMEOUT:?}:\n{output}");
    };
    let results = read_report(&out.join("index.json")).unwrap_or_else(|e| {
        panic!(
            "no report from kosoku ({status}): {e}\n{output}\n--- server ---\n{}",
            server.log()
        )
    });
    let mut by_outcome: BTreeMap<String, usize> = BTreeMap::new();
    let mut failing = Vec::new();
    for (case, r) in &results {
        *by_outcome
            .entry(format!("{}/{}", r.behavior, r.close))
            .or_default() += 1;
        if !PASSING.contains(&r.behavior.as_str()) || !PASSING.contains(&r.close.as_str()) {
            failing.push(format!(
                "  {case}: {} / close {} ({})",
                r.behavior, r.close, r.reportfile
            ));
        }
    }
    println!(
        "autobahn {run} {selection:?}: {} cases, by behaviour/close behaviour: {by_outcome:?}",
        results.len()
    );
    assert!(
        failing.is_empty(),
        "{} of {} cases failed (reports in {}):\n{}\n--- kosoku ---\n{output}",
        failing.len(),
        results.len(),
        out.display(),
        failing.join("\n")
    );
    assert_eq!(
        results.len(),
        expected,
        "kosoku ran another number of cases than the suite has:\n{output}"
    );
    assert!(
        status.success(),
        "kosoku failed ({status}) though every case passed:\n{output}"
    );
}

/// Where a run's reports go: under the target directory, one folder per run and selection.
fn report_dir(run: &str, selection: &[&str]) -> PathBuf {
    let name: String = std::iter::once(run)
        .chain(selection.iter().copied())
        .collect::<String>()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("autobahn").join(name)
}

/// One case's outcome in kosoku's `index.json`.
struct Outcome {
    behavior: String,
    close: String,
    reportfile: String,
}

/// Reads `index.json` (`{ agent: { case id: { behavior, behaviorClose, reportfile, .. } } }`).
fn read_report(path: &Path) -> Result<BTreeMap<String, Outcome>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let agents = json.as_object().ok_or("index.json is not an object")?;
    let mut out = BTreeMap::new();
    for cases in agents.values() {
        for (case, r) in cases
            .as_object()
            .ok_or("an agent's cases are not an object")?
        {
            let field = |name: &str| r.get(name).and_then(|v| v.as_str()).map(str::to_owned);
            out.insert(
                case.clone(),
                Outcome {
                    behavior: field("behavior").ok_or("a case without behavior")?,
                    close: field("behaviorClose").ok_or("a case without behaviorClose")?,
                    reportfile: field("reportfile").unwrap_or_default(),
                },
            );
        }
    }
    Ok(out)
}

#[test]
fn autobahn_cases_1_to_10() {
    let server = Server::start(&[]);
    run_cases(
        &server,
        server.addr,
        "ws",
        &["-x", "12.*", "-x", "13.*"],
        301,
    );
}

/// Every case over wss://: the plain server's cases 1-10, then 12-13 with `--deflate`.
#[test]
fn autobahn_all_cases_over_tls() {
    let certs = Certs::new("autobahn", "localhost");
    for (extra, selection, expected) in [
        (None, ["-x", "12.*", "-x", "13.*"], 301),
        (Some("--deflate"), ["-i", "12.*", "-i", "13.*"], 216),
    ] {
        let mut args = certs.args();
        args.extend(extra.map(str::to_owned));
        let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let relay = TlsRelay::start(server.addr, &certs.ca_der);
        run_cases(&server, relay.addr, "wss", &selection, expected);
    }
}

#[test]
fn autobahn_cases_12_and_13_permessage_deflate() {
    let server = Server::start(&["--deflate"]);
    run_cases(
        &server,
        server.addr,
        "ws",
        &["-i", "12.*", "-i", "13.*"],
        216,
    );
}
