//! Headless Chromium driven through the Chrome DevTools Protocol, for tests that need a real
//! browser: start it (fresh profile, own process group, killed and cleaned up on drop), find a page's
//! DevTools target, evaluate JavaScript in the page.
//!
//! Every wait has a deadline: start-up, the target's appearance, each DevTools call.

use super::Ws;
use futures_util::{SinkExt, StreamExt};
use ringws_cli::feed::control::push_json_str;
use simd_json::OwnedValue;
use simd_json::prelude::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// Fails the test, saying how to install it, unless `chromium` runs.
pub fn require_chromium() {
    assert!(
        Command::new("chromium")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "chromium not found: apt-get install chromium (scripts/test.sh installs it)"
    );
}

/// Headless Chromium with a fresh profile; killed and cleaned up when dropped.
pub struct Chromium {
    child: Child,
    profile: PathBuf,
    /// The DevTools port, sent by the stderr reader when Chromium says it listens; disconnected when
    /// Chromium's stderr closes.
    devtools: mpsc::Receiver<u16>,
}

impl Chromium {
    /// Starts Chromium on `url` with a DevTools port of its choosing.
    pub fn start(url: &str) -> Chromium {
        Self::start_with(url, &[])
    }

    /// [`start`](Self::start) with extra command-line flags (e.g. a pinned test certificate).
    pub fn start_with(url: &str, flags: &[String]) -> Chromium {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let profile =
            std::env::temp_dir().join(format!("ringws-chromium-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&profile).unwrap();
        let mut log = std::fs::File::create(profile.join("stderr.log")).unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .args(flags)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            // Its own process group, so that Drop can kill the renderer and helper processes too.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromium ({e}); install it: apt-get install chromium")
            });
        // Copies stderr into the profile's log file (for `log`) and reports the port of its
        // `DevTools listening on ws://127.0.0.1:PORT/...` line.
        let stderr = child.stderr.take().expect("piped stderr");
        let (port_tx, devtools) = mpsc::channel();
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                let port = line
                    .split_once("DevTools listening on ws://")
                    .and_then(|(_, url)| url.split_once('/'))
                    .and_then(|(host, _)| host.rsplit_once(':'))
                    .and_then(|(_, port)| port.parse::<u16>().ok());
                if let Some(port) = port
                    && let Some(tx) = port_tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        Chromium {
            child,
            profile,
            devtools,
        }
    }

    /// The DevTools port, from the line Chromium prints once it listens (bounded wait: 30 s).
    pub fn devtools_port(&mut self) -> u16 {
        match self.devtools.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => port,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = super::wait_timeout(&mut self.child, Duration::from_secs(5));
                panic!(
                    "chromium closed its stderr without a DevTools port ({status:?}):\n{}",
                    self.log()
                )
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "chromium printed no DevTools port within 30 s:\n{}",
                self.log()
            ),
        }
    }

    /// What Chromium printed on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.profile.join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) takes plain integers; the group is the one this test created for the
            // Chromium it started (the leader is not reaped yet, so the id cannot have been reused).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        // Helpers may still be exiting and writing: the removal is retried (a bounded poll, for up
        // to a second) until the directory is gone.
        super::eventually(Duration::from_secs(1), || {
            std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists()
        });
    }
}

/// `GET path` from the DevTools HTTP server (HTTP/1.1 only); the body, parsed as JSON.
pub fn get_json(port: u16, path: &str) -> OwnedValue {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (mut resp, mut buf) = (Vec::new(), [0u8; 16 << 10]);
    for _ in 0..1000 {
        if let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&resp[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
            if resp.len() >= end + 4 + len {
                let mut body = resp[end + 4..end + 4 + len].to_vec();
                return simd_json::to_owned_value(&mut body).expect("a JSON body");
            }
        }
        let n = s.read(&mut buf).expect("reading the DevTools answer");
        assert!(n > 0, "DevTools closed before answering: {resp:?}");
        resp.extend_from_slice(&buf[..n]);
    }
    panic!("DevTools answer too large");
}

/// Connects to the DevTools target of the page showing `url` (waiting up to 20 s for it to appear).
pub async fn connect_page(chromium: &mut Chromium, url: &str) -> Ws {
    let port = chromium.devtools_port();
    let deadline = Instant::now() + Duration::from_secs(20);
    let target = loop {
        let list = get_json(port, "/json/list");
        let found = list.as_array().unwrap().iter().find_map(|t| {
            (t.get_str("type") == Some("page") && t.get_str("url") == Some(url))
                .then(|| t.get_str("webSocketDebuggerUrl").map(str::to_owned))
                .flatten()
        });
        if let Some(ws_url) = found {
            break ws_url;
        }
        assert!(
            Instant::now() < deadline,
            "no page target for {url}: {list:?}"
        );
        // A bounded poll: the DevTools HTTP list has no call that waits for a target to appear.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (ws, _) = timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(target.as_str()),
    )
    .await
    .expect("DevTools connect timed out")
    .expect("DevTools connect");
    ws
}

/// Evaluates the JavaScript `expression` in the page (awaiting it if it is a promise, for up to
/// `wait`) and returns its value, which must be a string. `id` numbers the DevTools calls.
pub async fn evaluate(ws: &mut Ws, id: &mut u64, expression: &str, wait: Duration) -> String {
    *id += 1;
    let mut expr = String::new();
    push_json_str(&mut expr, expression);
    let call = format!(
        r#"{{"id":{id},"method":"Runtime.evaluate","params":{{"expression":{expr},"returnByValue":true,"awaitPromise":true}}}}"#
    );
    timeout(Duration::from_secs(10), ws.send(Message::text(call)))
        .await
        .expect("DevTools send timed out")
        .expect("DevTools send");
    let deadline = Instant::now() + wait;
    for _ in 0..100_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no DevTools answer within {wait:?}"))
            .expect("DevTools closed")
            .expect("DevTools read");
        let Message::Text(text) = msg else { continue };
        let v = simd_json::to_owned_value(&mut text.as_bytes().to_vec()).unwrap();
        if v.get_u64("id") != Some(*id) {
            continue; // an event
        }
        return v
            .get("result")
            .and_then(|r| r.get("result"))
            .and_then(|r| r.get_str("value"))
            .unwrap_or_else(|| panic!("evaluate failed: {text}"))
            .to_owned();
    }
    panic!("no answer to DevTools call {id}");
}
