//! `bench mysql`: sysbench `oltp_point_select` and `oltp_read_only` against the MariaDB primary
//! of the database lab directly, through foobar's read-write listener, and through HAProxy 2.6
//! in TCP mode beside it (same namespace, same path to the server), in one run; queries per
//! second and p95 latency. Three rounds, each measuring the three paths in a rotated order; the
//! median round of each path counts (two cores shared by client, proxy and server are noisy).

use super::Row;
use anyhow::{Context, Result};
use foobar_tests::{
    dblab::{server_addr, DbLab, MAIN, ROUTER},
    mariadb::APP_USER,
    ChildGuard,
};
use std::time::Duration;

/// HAProxy's port on the router's address.
const HAPROXY_PORT: u16 = 4306;
/// Client threads of each sysbench run.
const THREADS: &str = "8";
/// Seconds per sysbench run.
const SECONDS: &str = "5";
/// Rounds per workload.
const ROUNDS: usize = 3;
/// Rows in the benchmark table.
const TABLE_SIZE: &str = "10000";

/// What one sysbench run measured.
struct Run {
    queries_per_s: f64,
    p95_ms: f64,
}

fn sysbench(lab: &DbLab, workload: &str, host: &str, port: u16, command: &str) -> Result<String> {
    let (user, password) = APP_USER;
    lab.client.exec(&[
        "sysbench",
        workload,
        &format!("--mysql-host={host}"),
        &format!("--mysql-port={port}"),
        &format!("--mysql-user={user}"),
        &format!("--mysql-password={password}"),
        "--mysql-db=appdb",
        "--tables=1",
        &format!("--table-size={TABLE_SIZE}"),
        &format!("--threads={THREADS}"),
        &format!("--time={SECONDS}"),
        "--percentile=95",
        command,
    ])
}

/// `queries: N (X per sec.)` and `95th percentile: Y` from sysbench's report.
fn parse(report: &str) -> Result<Run> {
    let queries_per_s = report
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("queries:")?;
            let per_s = rest.split('(').nth(1)?.split_whitespace().next()?;
            per_s.parse().ok()
        })
        .context("no queries per second in the sysbench report")?;
    let p95_ms = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("95th percentile:")?.trim().parse().ok())
        .context("no 95th percentile in the sysbench report")?;
    Ok(Run { queries_per_s, p95_ms })
}

/// The run with the median queries per second.
fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.queries_per_s.total_cmp(&b.queries_per_s));
    let middle = runs.len() / 2;
    runs.swap_remove(middle)
}

fn start_haproxy(lab: &DbLab) -> Result<ChildGuard> {
    let conf = format!(
        r#"global
    maxconn 5000
defaults
    mode tcp
    timeout connect 1s
    timeout client 1m
    timeout server 1m
listen mysql
    bind {ROUTER}:{HAPROXY_PORT}
    server db1 {db}:3306
"#,
        db = server_addr(0)
    );
    let path = lab.scratch.file("haproxy.cfg");
    std::fs::write(&path, conf)?;
    let path = path.display().to_string();
    let guard = lab.routers[0]
        .ns
        .spawn_system(&["haproxy", "-db", "-f", &path], &lab.scratch.file("haproxy.log"))?;
    foobar_tests::wait_until(Duration::from_secs(5), "HAProxy to listen", || {
        lab.query(HAPROXY_PORT, "SELECT 1").is_ok_and(|(ok, _)| ok)
    })
    .with_context(|| guard.log_text())?;
    Ok(guard)
}

/// Runs both workloads against the three paths.
pub fn run() -> Result<Vec<Row>> {
    let lab = DbLab::start("bench")?;
    let _haproxy = start_haproxy(&lab)?;
    let haproxy_version = crate::peer_version("HAProxy", &["haproxy", "-v"])?;
    let direct_version = crate::peer_version("MariaDB", &["mariadbd", "--version"])?;
    let primary = server_addr(0).to_string();
    let router = ROUTER.to_string();
    sysbench(&lab, "oltp_point_select", &primary, 3306, "prepare")?;
    let mut rows = Vec::new();
    for workload in ["oltp_point_select", "oltp_read_only"] {
        let measure = |host: &str, port: u16| -> Result<Run> {
            let report = sysbench(&lab, workload, host, port, "run")?;
            parse(&report).with_context(|| report)
        };
        let paths = [
            (primary.as_str(), 3306),
            (router.as_str(), MAIN.0),
            (router.as_str(), HAPROXY_PORT),
        ];
        let mut runs: [Vec<Run>; 3] = Default::default();
        for round in 0..ROUNDS {
            for k in 0..paths.len() {
                let which = (round + k) % paths.len();
                let (host, port) = paths[which];
                runs[which].push(measure(host, port)?);
            }
        }
        let [direct, foobar, haproxy] = runs.map(median);
        println!(
            "{workload}: direct {:.0} q/s p95 {:.2} ms; foobar {:.0} q/s p95 {:.2} ms; HAProxy {:.0} q/s p95 {:.2} ms",
            direct.queries_per_s,
            direct.p95_ms,
            foobar.queries_per_s,
            foobar.p95_ms,
            haproxy.queries_per_s,
            haproxy.p95_ms
        );
        let row = |name: String, value: f64, unit: &'static str, baseline: &str, baseline_value: f64| Row {
            name,
            value,
            unit,
            baseline: baseline.into(),
            baseline_value,
        };
        rows.push(row(
            format!("{workload} through foobar"),
            foobar.queries_per_s,
            "queries/s",
            &format!("direct to {direct_version}"),
            direct.queries_per_s,
        ));
        rows.push(row(
            format!("{workload} through foobar"),
            foobar.queries_per_s,
            "queries/s",
            &format!("{haproxy_version} TCP"),
            haproxy.queries_per_s,
        ));
        rows.push(row(
            format!("{workload} added p95 through foobar"),
            foobar.p95_ms - direct.p95_ms,
            "ms",
            &format!("{haproxy_version}'s added p95"),
            haproxy.p95_ms - direct.p95_ms,
        ));
    }
    Ok(rows)
}
