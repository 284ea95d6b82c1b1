//! The machine and software a comparison ran on, recorded so results can be compared across runs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

/// Peer libraries whose resolved versions are recorded (from the compare workspace's Cargo.lock).
const LIBRARIES: [&str; 5] = [
    "fastwebsockets",
    "tokio-tungstenite",
    "tungstenite",
    "hyper",
    "tokio",
];

/// Where and with what the comparison ran. Fields that could not be read say `unknown`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Environment {
    /// `uname -r`, from /proc/sys/kernel/osrelease.
    pub kernel: String,
    /// The first `model name` in /proc/cpuinfo.
    pub cpu_model: String,
    /// CPUs online.
    pub cpus: usize,
    /// When the comparison started, ISO 8601 UTC.
    pub date_utc: String,
    /// `git rev-parse HEAD` of the ringws repository.
    pub git_commit: String,
    /// The work tree had uncommitted changes.
    pub git_dirty: bool,
    /// `rustc --version`.
    pub rustc: String,
    /// Clock ticks per second of /proc times.
    pub clock_ticks_per_s: f64,
    /// Soft and hard open-file limits the children inherit.
    pub nofile_limit: (u64, u64),
    /// Resolved versions of the peer libraries.
    pub libraries: BTreeMap<String, String>,
}

impl Environment {
    /// Gathers the environment; `repo` is the ringws repository, `lockfile` the compare workspace's
    /// Cargo.lock.
    pub fn collect(
        repo: &Path,
        lockfile: &Path,
        clock_ticks_per_s: f64,
        nofile_limit: (u64, u64),
    ) -> Environment {
        let git =
            |args: &[&str]| command_output(Command::new("git").arg("-C").arg(repo).args(args));
        Environment {
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            cpu_model: fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|info| cpu_model(&info))
                .unwrap_or_else(unknown),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            date_utc: command_output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
                .unwrap_or_else(unknown),
            git_commit: git(&["rev-parse", "HEAD"]).unwrap_or_else(unknown),
            git_dirty: git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()),
            rustc: command_output(Command::new("rustc").arg("--version")).unwrap_or_else(unknown),
            clock_ticks_per_s,
            nofile_limit,
            libraries: fs::read_to_string(lockfile)
                .map(|lock| locked_versions(&lock, &LIBRARIES))
                .unwrap_or_default(),
        }
    }

    /// A fixed environment for tests.
    #[cfg(test)]
    pub fn sample() -> Environment {
        Environment {
            kernel: "6.18.0".into(),
            cpu_model: "Test CPU".into(),
            cpus: 2,
            date_utc: "2025-01-01T00:00:00Z".into(),
            git_commit: "0123abc".into(),
            git_dirty: false,
            rustc: "rustc 1.95.0".into(),
            clock_ticks_per_s: 100.0,
            nofile_limit: (20000, 20000),
            libraries: BTreeMap::from([("fastwebsockets".into(), "0.10.0".into())]),
        }
    }
}

fn unknown() -> String {
    "unknown".to_owned()
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path).map_or_else(|_| unknown(), |s| s.trim().to_owned())
}

/// A command's trimmed stdout, if it ran and succeeded.
fn command_output(command: &mut Command) -> Option<String> {
    let out = command.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The first `model name : ...` value of /proc/cpuinfo text.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// Versions of `names` in Cargo.lock text (`name = "x"` followed by `version = "y"`). A crate locked
/// at several versions lists them all, joined by `, `.
fn locked_versions(lock: &str, names: &[&str]) -> BTreeMap<String, String> {
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        let Some(name) = quoted_value(line, "name") else {
            continue;
        };
        if !names.contains(&name) {
            continue;
        }
        if let Some(version) = lines.next().and_then(|l| quoted_value(l, "version")) {
            found
                .entry(name.to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(version);
                })
                .or_insert_with(|| version.to_owned());
        }
    }
    found
}

/// The value of a `key = "value"` line.
fn quoted_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let (k, v) = line.split_once('=')?;
    (k.trim() == key).then(|| v.trim().trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cpu_model() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.0GHz\n";
        assert_eq!(
            cpu_model(info).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.0GHz")
        );
        assert_eq!(cpu_model("processor : 0\n"), None);
    }

    #[test]
    fn reads_locked_versions() {
        let lock = "[[package]]\nname = \"tokio\"\nversion = \"1.48.0\"\n\n[[package]]\nname = \"fastwebsockets\"\n\
                    version = \"0.10.0\"\n\n[[package]]\nname = \"tokio-util\"\nversion = \"0.7.0\"\n\n\
                    [[package]]\nname = \"tokio\"\nversion = \"1.49.0\"\n";
        let found = locked_versions(lock, &["tokio", "fastwebsockets", "hyper"]);
        assert_eq!(
            found.get("tokio").map(String::as_str),
            Some("1.48.0, 1.49.0")
        );
        assert_eq!(
            found.get("fastwebsockets").map(String::as_str),
            Some("0.10.0")
        );
        assert!(!found.contains_key("hyper") && !found.contains_key("tokio-util"));
    }

    #[test]
    fn collects_this_machine() {
        let env = Environment::collect(Path::new("."), Path::new("/nonexistent"), 100.0, (1, 2));
        assert_ne!(env.kernel, "unknown");
        assert!(env.cpus >= 1);
        assert!(env.date_utc.ends_with('Z'), "{}", env.date_utc);
        assert!(env.libraries.is_empty());
    }
}
