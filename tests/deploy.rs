//! The deployment files in `deploy/`, checked by the tools that read them: `haproxy -c`, `nginx -t`,
//! `systemd-analyze verify` (where systemd is installed), and the Kubernetes manifests parsed as
//! YAML with their shutdown timing compared against the drain they configure.
//!
//! HAProxy and nginx come from Debian's packages (`scripts/test.sh` installs them); a missing one
//! fails the test with the install command.

mod common;

use common::brokers::{TempDir, require};
use common::{binary, repo_root, run_bounded};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use yaml_rust2::{Yaml, YamlLoader};

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn deploy(file: &str) -> PathBuf {
    repo_root().join("deploy").join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

#[test]
fn haproxy_accepts_its_config_which_checks_ready_and_keeps_tunnels_open() {
    let haproxy = require("haproxy", "haproxy");
    let (status, out) = run_bounded(
        Command::new(haproxy)
            .arg("-c")
            .arg("-f")
            .arg(deploy("haproxy.cfg")),
        TOOL_TIMEOUT,
    );
    assert!(status.is_some_and(|s| s.success()), "haproxy -c:\n{out}");
    assert!(!out.contains("[WARNING]"), "haproxy -c warns:\n{out}");
    let cfg = read("haproxy.cfg");
    for needed in [
        "http-check send meth GET uri /ready",
        "timeout tunnel",
        "balance leastconn",
        "option redispatch",
    ] {
        assert!(cfg.contains(needed), "deploy/haproxy.cfg lacks {needed:?}");
    }
}

#[test]
fn nginx_accepts_its_config_which_passes_the_upgrade_on() {
    let nginx = require("nginx", "nginx");
    let (status, out) = run_bounded(
        Command::new(nginx)
            .arg("-t")
            .arg("-c")
            .arg(deploy("nginx.conf")),
        TOOL_TIMEOUT,
    );
    assert!(status.is_some_and(|s| s.success()), "nginx -t:\n{out}");
    assert!(out.contains("test is successful"), "{out}");
    let cfg = read("nginx.conf");
    for needed in [
        "proxy_http_version 1.1",
        "proxy_set_header Upgrade $http_upgrade",
        "proxy_set_header Connection $connection_upgrade",
        "proxy_read_timeout 1h",
    ] {
        assert!(cfg.contains(needed), "deploy/nginx.conf lacks {needed:?}");
    }
}

#[test]
fn systemd_verifies_the_unit_whose_limits_are_the_tuning_scripts() {
    let unit = read("ringws.service");
    // The limits tuning/ulimit.sh prints for 100,000 connections and 16 workers.
    let out = Command::new("bash")
        .arg(repo_root().join("tuning/ulimit.sh"))
        .args(["--connections", "100000", "--workers", "16"])
        .output()
        .expect("tuning/ulimit.sh");
    let advice = String::from_utf8_lossy(&out.stdout);
    for line in ["LimitNOFILE=", "LimitMEMLOCK="] {
        let want = advice
            .lines()
            .find_map(|l| l.trim().strip_prefix(line))
            .unwrap_or_else(|| panic!("ulimit.sh prints no {line}:\n{advice}"));
        assert!(
            unit.contains(&format!("{line}{want}\n")),
            "deploy/ringws.service: {line} should be {want}"
        );
    }
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        eprintln!("systemd-analyze is not installed: the unit's syntax was not verified");
        return;
    };
    // The unit names the installed binary; verify it against the one built here.
    let dir = TempDir::new("systemd");
    let path = dir.path.join("ringws.service");
    let exe = binary();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/ringws", exe.to_str().expect("UTF-8 path")),
    )
    .unwrap();
    let (status, out) = run_bounded(Command::new(analyze).arg("verify").arg(&path), TOOL_TIMEOUT);
    // verify exits 0 on settings it ignores, but says so: any output is a problem.
    assert!(
        status.is_some_and(|s| s.success()) && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
}

/// Every document of a manifest file.
fn manifests(file: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(file)).unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn kubernetes_manifests_parse_and_give_the_drain_its_time() {
    let docs = manifests("k8s/ringws.yaml");
    let deployment = of_kind(&docs, "Deployment", "ringws");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/ready")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/health")
    );
    let args: Vec<&str> = c["args"]
        .as_vec()
        .expect("args")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let arg = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("no --{name}= in {args:?}"))
    };
    let drain: i64 = arg("drain-delay").parse().expect("--drain-delay seconds");
    assert!(arg("bridge").starts_with("nats://"));
    assert_eq!(
        arg("rate"),
        "0",
        "the nodes get their quotes from the broker"
    );
    // The admin port of --admin-addr is the probes' port.
    let admin_port: i64 = arg("admin-addr")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ports = c["ports"].as_vec().expect("ports");
    assert!(
        ports.iter().any(|p| p["name"].as_str() == Some("admin")
            && p["containerPort"].as_i64() == Some(admin_port))
    );
    // preStop, then the drain, then shutdown_timeout (5 s): all inside the grace period.
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .expect("preStop sleep");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("grace period");
    let shutdown_timeout = 5;
    assert!(
        grace > pre_stop + drain + shutdown_timeout,
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {drain} + {shutdown_timeout}"
    );
    // The readiness probe fails within the drain: the pod leaves the endpoints before 1001.
    let probe = &c["readinessProbe"];
    let detect = probe["periodSeconds"].as_i64().unwrap_or(10)
        * probe["failureThreshold"].as_i64().unwrap_or(3);
    assert!(
        detect < drain,
        "the probe takes {detect} s to fail, the drain is {drain} s"
    );

    let service = of_kind(&docs, "Service", "ringws");
    let labels = &pod_labels(deployment);
    for (k, v) in service["spec"]["selector"].as_hash().expect("selector") {
        assert_eq!(
            labels[k.as_str().expect("label")],
            *v,
            "the Service selects the pods"
        );
    }
    let ingress = of_kind(&docs, "Ingress", "ringws");
    let backend = &ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
    assert_eq!(backend["name"].as_str(), Some("ringws"));
    let timeout: i64 =
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]
            .as_str()
            .expect("proxy-read-timeout")
            .parse()
            .unwrap();
    assert!(
        timeout >= 60,
        "upgraded connections need a long read timeout"
    );

    let broker = manifests("k8s/nats.yaml");
    of_kind(&broker, "Service", "nats");
    let ticker = of_kind(&broker, "Deployment", "ringws-ticker");
    let targs = &ticker["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(targs[0].as_str(), Some("ticker"));
}

fn pod_labels(deployment: &Yaml) -> Yaml {
    deployment["spec"]["template"]["metadata"]["labels"].clone()
}
