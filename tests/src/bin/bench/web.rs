//! `cargo xtask bench web`: foobar's web tier against Debian's nginx 1.22 in one run, in one
//! namespace: same certificate (ECDSA P-256), same files, same upstream application servers,
//! two workers each (foobar: a runtime thread per CPU, two here; nginx: two worker processes), access logs off
//! for both, the same client (wrk, HTTP/1.1). Measured, alternating servers, best of rounds:
//! small-file keep-alive HTTPS requests/s with p99 latency, new TLS 1.3 connections/s (one
//! request per connection: a full handshake each), proxied requests/s to keep-alive upstreams,
//! and resident memory after the runs.

use crate::Row;
use anyhow::{bail, Context, Result};
use foobar_tests::{
    weblab::{WebLab, ADDR, APP1, APP2},
    ChildGuard,
};
use std::time::Duration;

const ROUNDS: usize = 3;
const SECONDS: &str = "5s";
const NGINX_PORT: u16 = 8443;

/// One wrk run's results.
struct Wrk {
    requests_per_s: f64,
    p99_ms: f64,
}

fn parse_ms(value: &str) -> Option<f64> {
    let (number, unit) = value.split_at(value.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => return None,
    })
}

fn wrk(lab: &WebLab, url: &str, connections: &str, extra: &[&str]) -> Result<Wrk> {
    let mut args = vec!["wrk", "-t2", "-c", connections, "-d", SECONDS, "--latency"];
    args.extend_from_slice(extra);
    args.push(url);
    let out = lab.ns.exec(&args)?;
    if out.contains("Non-2xx") || out.contains("Socket errors") {
        bail!("wrk saw errors against {url}:\n{out}");
    }
    let requests_per_s = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?;
    let p99_ms = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| parse_ms(v.trim()))
        .with_context(|| format!("no 99% latency in wrk's output:\n{out}"))?;
    Ok(Wrk { requests_per_s, p99_ms })
}

/// Resident memory of a process and its children (nginx's workers), KiB.
fn rss_kib(pid: u32) -> u64 {
    let own = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let children: u64 = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .map(rss_kib)
        .sum();
    own + children
}

fn start_nginx(lab: &WebLab) -> Result<ChildGuard> {
    let dir = lab.scratch.path.display().to_string();
    let conf = format!(
        r#"daemon off;
master_process on;
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    upstream app {{
        server {ADDR}:{APP1};
        server {ADDR}:{APP2};
        keepalive 64;
    }}
    server {{
        listen {ADDR}:{NGINX_PORT} ssl http2;
        ssl_certificate {dir}/www-ec.crt;
        ssl_certificate_key {dir}/www-ec.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root {dir}/www;
        location /api/ {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"#
    );
    let path = lab.scratch.file("nginx.conf");
    std::fs::write(&path, conf)?;
    let path = path.display().to_string();
    let guard = lab
        .ns
        .spawn_system(&["nginx", "-c", &path], &lab.scratch.file("nginx.out"))?;
    foobar_tests::wait_until(Duration::from_secs(5), "nginx to listen", || {
        lab.ns
            .exec(&[
                "curl",
                "-sk",
                "-o",
                "/dev/null",
                &format!("https://{ADDR}:{NGINX_PORT}/"),
            ])
            .is_ok()
    })
    .with_context(|| guard.log_text())?;
    Ok(guard)
}

fn pid_of(child: &ChildGuard) -> Result<u32> {
    child.pid().context("process gone")
}

/// Runs every measurement against both servers.
pub fn run() -> Result<Vec<Row>> {
    // foobar's runtime has one thread per CPU: two here, like nginx's two workers. No access
    // log for either.
    std::env::set_var("RUST_LOG", "info,foobar::access=off");
    let lab = WebLab::start("bench")?;
    let nginx = start_nginx(&lab)?;
    let ours = format!("https://{ADDR}");
    let theirs = format!("https://{ADDR}:{NGINX_PORT}");
    let cases: [(&str, &str, &str, &[&str]); 3] = [
        ("small_file_keepalive", "/assets/style.css", "32", &[]),
        (
            "tls13_new_connections",
            "/assets/style.css",
            "16",
            &["-H", "Connection: close"],
        ),
        ("proxied_keepalive", "/api/name", "32", &[]),
    ];
    let mut rows = Vec::new();
    for (name, path, connections, extra) in cases {
        let (mut best_ours, mut best_theirs): (Option<Wrk>, Option<Wrk>) = (None, None);
        for round in 0..ROUNDS {
            eprintln!("web bench: {name} round {}", round + 1);
            let a = wrk(&lab, &format!("{ours}{path}"), connections, extra)?;
            let b = wrk(&lab, &format!("{theirs}{path}"), connections, extra)?;
            if best_ours.as_ref().is_none_or(|w| a.requests_per_s > w.requests_per_s) {
                best_ours = Some(a);
            }
            if best_theirs.as_ref().is_none_or(|w| b.requests_per_s > w.requests_per_s) {
                best_theirs = Some(b);
            }
        }
        let (a, b) = (best_ours.context("no run")?, best_theirs.context("no run")?);
        let baseline = "nginx 1.22, 2 workers".to_string();
        rows.push(Row {
            name: format!("{name}_requests_per_s"),
            value: a.requests_per_s,
            unit: "requests/s",
            baseline: baseline.clone(),
            baseline_value: b.requests_per_s,
        });
        rows.push(Row {
            name: format!("{name}_p99"),
            value: a.p99_ms,
            unit: "ms",
            baseline,
            baseline_value: b.p99_ms,
        });
    }
    let foobar_pid = lab.foobar.as_ref().map(pid_of).transpose()?.unwrap_or(0);
    rows.push(Row {
        name: "resident_memory".into(),
        value: rss_kib(foobar_pid) as f64 / 1024.0,
        unit: "MiB",
        baseline: "nginx 1.22, master + 2 workers".into(),
        baseline_value: rss_kib(pid_of(&nginx)?) as f64 / 1024.0,
    });
    Ok(rows)
}
