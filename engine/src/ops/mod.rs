//! Operations: what the server tells the people and machines that run it. `/metrics` (the
//! Prometheus text format: every worker's counters, pub/sub, the process, the build), `/health`
//! (every worker answered within `health_timeout`) and `/ready` (accepting and not draining), on
//! the WebSocket port before `on_http` or on an admin listener of their own ([`admin`]); and the
//! same numbers as a typed [`Stats`] for [`ServerHandle::stats`](crate::ServerHandle::stats).
//!
//! Nothing here runs on a worker's hot path: scrapes read the workers' single-writer cells from
//! the thread that answers them.

pub(crate) mod admin;
mod exposition;
mod process;

use crate::config::Config;
use crate::handler::HttpResponse;
use crate::pubsub::Hub;
use crate::ring::probe::{ProbeReport, Support};
use crate::ring::sys;
use crate::stats::{Stats, WorkerStats};
use exposition::Writer;
use ringws_protocol::handshake::Request;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The paths the engine answers itself.
pub(crate) const PATHS: [&str; 3] = ["/metrics", "/health", "/ready"];

/// What the endpoints read: the workers' counters, pub/sub, readiness, the build.
pub(crate) struct Ops {
    /// Each worker's counters, by index (written by that worker only).
    pub workers: Vec<Arc<WorkerStats>>,
    hub: Arc<Hub>,
    /// Every worker accepts; cleared when a drain or a shutdown starts.
    pub accepting: AtomicBool,
    /// A drain started.
    pub draining: AtomicBool,
    /// A worker whose last loop turn ended longer ago than this is stalled.
    health_ms: u64,
    /// Whether the endpoints are answered on the WebSocket port (else on the admin listener, or
    /// not at all).
    pub on_main_port: bool,
    /// `ringws_build_info`'s labels.
    build: [(&'static str, String); 3],
}

impl Ops {
    /// The endpoints of a server with `cfg`, its pub/sub `hub` and what the kernel `probe` found.
    pub fn new(cfg: &Config, hub: Arc<Hub>, probe: &ProbeReport) -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        // The optional features in use (the required ones are always there).
        let optional: Vec<&str> = probe
            .features()
            .iter()
            .filter(|f| !f.required && matches!(f.support, Support::Yes))
            .filter_map(|f| f.name.split(' ').next())
            .collect();
        Self {
            workers: (0..cfg.workers).map(|_| Arc::default()).collect(),
            hub,
            accepting: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            health_ms: cfg.health_timeout.as_millis() as u64,
            on_main_port: cfg.ops_endpoints && cfg.admin_addr.is_none(),
            build: [
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("kernel", kernel),
                ("io_uring", optional.join(",")),
            ],
        }
    }

    /// Every worker's counters and the shared ones, read now.
    pub fn stats(&self) -> Stats {
        let now_ms = sys::monotonic().as_millis() as u64;
        let hub = self.hub.summary();
        let draining = self.draining.load(Ordering::Acquire);
        Stats {
            workers: self
                .workers
                .iter()
                .enumerate()
                .map(|(i, w)| w.snapshot(i, now_ms, hub.subscriptions.get(i).copied().unwrap_or(0)))
                .collect(),
            published: hub.published,
            topics: hub.topics,
            history_bytes: hub.history_bytes,
            ready: self.accepting.load(Ordering::Acquire) && !draining,
            draining,
            bridge: hub.bridge,
        }
    }

    /// The `/metrics` body.
    pub fn metrics(&self) -> String {
        let stats = self.stats();
        let mut w = Writer::new();
        exposition::engine_metrics(&mut w, &stats);
        w.family(
            "ringws_build_info",
            "gauge",
            "Always 1: the version, the kernel and the optional io_uring features in use.",
        );
        let labels: Vec<(&str, &str)> = self.build.iter().map(|(k, v)| (*k, v.as_str())).collect();
        w.sample("ringws_build_info", &labels, 1);
        process::Process::read().write(&mut w);
        w.finish()
    }

    /// The answer to `req` if it is a `GET` of one of [`PATHS`].
    pub fn respond(&self, req: &Request<'_>) -> Option<HttpResponse> {
        if req.method() != "GET" || !PATHS.contains(&req.path()) {
            return None;
        }
        let resp = match req.path() {
            "/metrics" => HttpResponse::new(200)
                .header("Content-Type", exposition::CONTENT_TYPE)
                .body(self.metrics().into_bytes()),
            "/health" => {
                let stalled = self.stats().stalled(self.health_ms);
                if stalled.is_empty() {
                    HttpResponse::text(200, "ok\n")
                } else {
                    let list: Vec<String> = stalled.iter().map(usize::to_string).collect();
                    HttpResponse::text(
                        503,
                        &format!(
                            "stalled workers (no loop turn for over {} ms): {}\n",
                            self.health_ms,
                            list.join(", ")
                        ),
                    )
                }
            }
            _ => {
                let stats = self.stats();
                if stats.ready {
                    HttpResponse::text(200, "ready\n")
                } else if stats.draining {
                    HttpResponse::text(503, "draining\n")
                } else {
                    HttpResponse::text(503, "not accepting\n")
                }
            }
        };
        Some(resp.header("Cache-Control", "no-store"))
    }
}
