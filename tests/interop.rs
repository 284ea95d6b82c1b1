//! Interop with two independent WebSocket implementations: Python `websockets` and Node `ws` run
//! their client scripts (`tests/interop/python/client.py`, `tests/interop/node/client.mjs`) against a
//! live `ringws serve`. A script's non-zero exit fails the test with everything it printed.
//!
//! The interpreters and libraries come from `scripts/test.sh` (venv at `tests/interop/.venv`,
//! `node_modules` at `tests/interop/node/node_modules`); when they are missing the tests fail and say
//! so — they never pass without having run.

mod common;

use common::{Server, run_bounded};
use std::process::Command;
use std::time::Duration;

/// The bound on one script run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

fn run_script(mut cmd: Command, server: &Server) {
    let (status, output) = run_bounded(&mut cmd, SCRIPT_TIMEOUT);
    match status {
        Some(s) if s.success() => {
            assert!(
                output.contains("ok:"),
                "the script reported no check:\n{output}"
            );
        }
        Some(s) => panic!(
            "{cmd:?} failed ({s}):\n{output}\n--- server ---\n{}",
            server.log()
        ),
        None => panic!("{cmd:?} did not finish within {SCRIPT_TIMEOUT:?}:\n{output}"),
    }
}

#[test]
fn python_websockets_client() {
    let server = Server::start(&["--max-message-size", "4194304"]);
    let mut cmd = common::python("client.py");
    cmd.arg(server.addr.to_string());
    run_script(cmd, &server);
}

#[test]
fn node_ws_client() {
    let server = Server::start(&["--max-message-size", "4194304"]);
    let mut cmd = common::node("client.mjs");
    cmd.arg(server.addr.to_string());
    run_script(cmd, &server);
}
