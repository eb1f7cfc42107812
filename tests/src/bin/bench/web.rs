//! `cargo xtask bench web`: foobar's web tier against Debian's nginx 1.22 in one run, in one
//! namespace: same certificate (ECDSA P-256), same files, same upstream application servers,
//! as many workers each as this machine has CPUs (foobar's `[web] workers`, nginx's worker processes), access logs off
//! for both, the same client (wrk, HTTP/1.1). Measured, alternating servers, best of rounds:
//! small-file keep-alive HTTPS requests/s with p99 latency, new TLS 1.3 connections/s (one
//! request per connection: a full handshake each), proxied requests/s to keep-alive upstreams,
//! and resident memory after the runs. Each run also measures the CPU time the server spent
//! (foobar's threads; nginx's master and workers): requests per server CPU-second is the
//! server's own cost, which the shared cores hide in requests/s when the client is the
//! bottleneck. `FOOBAR_BENCH_CASES=a,b` runs only the cases whose names contain one of them.

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
    /// Requests per CPU-second the server spent during the run.
    per_server_cpu_s: f64,
    /// The server's user and system CPU time per request, µs.
    user_us: f64,
    system_us: f64,
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

fn wrk(lab: &WebLab, server_pid: u32, url: &str, connections: &str, extra: &[&str]) -> Result<Wrk> {
    let mut args = vec!["wrk", "-t2", "-c", connections, "-d", SECONDS, "--latency"];
    args.extend_from_slice(extra);
    args.push(url);
    let (user_before, system_before) = cpu_seconds(server_pid)?;
    let out = lab.ns.exec(&args)?;
    let (user_after, system_after) = cpu_seconds(server_pid)?;
    let (user_s, system_s) = (user_after - user_before, system_after - system_before);
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
    let requests: f64 = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("no request count in wrk's output:\n{out}"))?;
    Ok(Wrk {
        requests_per_s,
        p99_ms,
        per_server_cpu_s: if user_s + system_s > 0.0 {
            requests / (user_s + system_s)
        } else {
            0.0
        },
        user_us: user_s * 1e6 / requests.max(1.0),
        system_us: system_s * 1e6 / requests.max(1.0),
    })
}

/// The pids of a process and its children (nginx's workers), recursively.
fn process_tree(pid: u32) -> Vec<u32> {
    let children: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect();
    std::iter::once(pid)
        .chain(children.into_iter().flat_map(process_tree))
        .collect()
}

/// User and system CPU time of a process and its children so far, seconds.
fn cpu_seconds(pid: u32) -> Result<(f64, f64)> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut ticks = [0u64; 2];
    for pid in process_tree(pid) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) in parentheses; utime and
        // stime are the 14th and 15th fields of the line.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        for (i, sum) in [11, 12].into_iter().zip(&mut ticks) {
            *sum += fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .with_context(|| format!("no CPU times in /proc/{pid}/stat"))?;
        }
    }
    Ok((ticks[0] as f64 / ticks_per_s, ticks[1] as f64 / ticks_per_s))
}

/// Resident memory of a process and its children (nginx's workers), KiB.
fn rss_kib(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
        })
        .sum()
}

fn start_nginx(lab: &WebLab, workers: usize) -> Result<ChildGuard> {
    let dir = lab.scratch.path.display().to_string();
    let conf = format!(
        r#"daemon off;
master_process on;
worker_processes {workers};
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
    // The same number of workers for both, one per CPU. No access log for either.
    std::env::set_var("RUST_LOG", "info,foobar::access=off");
    let workers = std::thread::available_parallelism()?.get();
    let lab = WebLab::start_with("bench", &format!("\n[web]\nworkers = {workers}\n"))?;
    let nginx = start_nginx(&lab, workers)?;
    let nginx_version = crate::peer_version("nginx", &["nginx", "-v"])?;
    let foobar_pid = lab.foobar.as_ref().map(pid_of).transpose()?.unwrap_or(0);
    let nginx_pid = pid_of(&nginx)?;
    let only = std::env::var("FOOBAR_BENCH_CASES").unwrap_or_default();
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
        if !only.is_empty() && !only.split(',').any(|o| name.contains(o.trim())) {
            continue;
        }
        let (mut best_ours, mut best_theirs): (Option<Wrk>, Option<Wrk>) = (None, None);
        for round in 0..ROUNDS {
            eprintln!("web bench: {name} round {}", round + 1);
            let a = wrk(&lab, foobar_pid, &format!("{ours}{path}"), connections, extra)?;
            let b = wrk(&lab, nginx_pid, &format!("{theirs}{path}"), connections, extra)?;
            for (server, w) in [("foobar", &a), ("nginx", &b)] {
                eprintln!(
                    "  {server:>6}: {:>7.0} requests/s, p99 {:.1} ms, server CPU per request {:.1} µs user + {:.1} µs system",
                    w.requests_per_s, w.p99_ms, w.user_us, w.system_us
                );
            }
            if best_ours.as_ref().is_none_or(|w| a.requests_per_s > w.requests_per_s) {
                best_ours = Some(a);
            }
            if best_theirs.as_ref().is_none_or(|w| b.requests_per_s > w.requests_per_s) {
                best_theirs = Some(b);
            }
        }
        let (a, b) = (best_ours.context("no run")?, best_theirs.context("no run")?);
        let baseline = format!("{nginx_version}, {workers} workers (foobar: {workers})");
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
            baseline: baseline.clone(),
            baseline_value: b.p99_ms,
        });
        rows.push(Row {
            name: format!("{name}_per_server_cpu_s"),
            value: a.per_server_cpu_s,
            unit: "requests/CPU-s",
            baseline,
            baseline_value: b.per_server_cpu_s,
        });
    }
    rows.push(Row {
        name: "resident_memory".into(),
        value: rss_kib(foobar_pid) as f64 / 1024.0,
        unit: "MiB",
        baseline: format!("{nginx_version}, master + {workers} workers"),
        baseline_value: rss_kib(nginx_pid) as f64 / 1024.0,
    });
    Ok(rows)
}
