//! The standard `process_*` metrics, read from `/proc` at scrape time (Linux only, as the engine).

use super::exposition::{Float, Writer};
use std::fs;

/// `USER_HZ`: the unit of the CPU times in `/proc/<pid>/stat`, 100 on every Linux architecture
/// (fixed by the kernel's user-space ABI, whatever `CONFIG_HZ` is).
const USER_HZ: f64 = 100.0;

/// What `/proc` says about this process (fields it could not read are `None`).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Process {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
    pub threads: Option<u64>,
}

impl Process {
    /// Reads this process's numbers.
    pub fn read() -> Self {
        let mut p = Self::default();
        if let Ok(stat) = fs::read_to_string("/proc/self/stat") {
            // The command name (field 2) is in parentheses and may hold spaces: split after it.
            if let Some((_, rest)) = stat.rsplit_once(") ") {
                let f: Vec<&str> = rest.split_whitespace().collect();
                // `rest` starts at field 3 (state): field n is f[n - 3].
                let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
                if let (Some(user), Some(system)) = (field(14), field(15)) {
                    p.cpu_seconds = Some((user + system) as f64 / USER_HZ);
                }
                p.threads = field(20);
                p.virtual_bytes = field(23);
                if let (Some(start), Some(boot)) = (field(22), boot_time()) {
                    p.start_time_seconds = Some(boot as f64 + start as f64 / USER_HZ);
                }
            }
        }
        if let Ok(status) = fs::read_to_string("/proc/self/status") {
            p.resident_bytes = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024);
        }
        p.open_fds = fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
        if let Ok(limits) = fs::read_to_string("/proc/self/limits") {
            p.max_fds = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok());
        }
        p
    }

    /// Writes the families it could read.
    pub fn write(&self, w: &mut Writer) {
        let mut one = |name: &str, kind: &str, help: &str, value: Option<f64>| {
            if let Some(v) = value {
                w.family(name, kind, help);
                w.sample(name, &[], Float(v));
            }
        };
        one(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds,
        );
        one(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.resident_bytes.map(|v| v as f64),
        );
        one(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            self.virtual_bytes.map(|v| v as f64),
        );
        one(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            self.open_fds.map(|v| v as f64),
        );
        one(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            self.max_fds.map(|v| v as f64),
        );
        one(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            self.start_time_seconds,
        );
        one(
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            self.threads.map(|v| v as f64),
        );
    }
}

/// Boot time, seconds since the epoch (`btime` in `/proc/stat`).
fn boot_time() -> Option<u64> {
    fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_readable() {
        let p = Process::read();
        assert!(p.resident_bytes.unwrap() > 0);
        assert!(p.open_fds.unwrap() >= 3);
        assert!(p.max_fds.unwrap() >= p.open_fds.unwrap());
        assert!(p.threads.unwrap() >= 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = p.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start}"
        );
    }
}
