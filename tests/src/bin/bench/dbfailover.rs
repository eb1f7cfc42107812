//! `cargo xtask bench db-failover`: a MariaDB primary with two semi-synchronous replicas, two
//! edges with `[database.failover]` (after_ms 1000, monitor every 200 ms, fall 2, rejoin), and a
//! steady write load through the edge that does not act. Per round: how long writes are
//! unavailable after the primary is killed (from the kill to the first acknowledged write
//! after it) beside the configured bound (after_ms, plus the monitor's fall checks, plus one
//! interval); and how long a switchover pauses writes (as foobar reports it, and as the client
//! sees it: its longest wait between two acknowledged writes) beside the crash outage of the
//! same run; and every acknowledged write counted on the new primary (none may be lost).

use crate::{failover::median, Row};
use anyhow::{ensure, Context, Result};
use foobar_tests::dblab::{server_addr, DbLab, Shape, Writer, Written};
use std::{
    thread::sleep,
    time::{Duration, Instant},
};

const ROUNDS: usize = 3;
/// `after_ms`, and the monitor's interval and fall, as configured below and by the lab.
const AFTER_MS: f64 = 1000.0;
const INTERVAL_MS: f64 = 200.0;
const FALL: f64 = 2.0;
const STEP: Duration = Duration::from_secs(30);

/// One crash round: the client-seen outage (ms) and the acknowledged writes lost.
struct Crash {
    outage_ms: f64,
    lost: usize,
    acked: usize,
}

/// One switchover round: the pause foobar reports, the client's longest wait (ms), and the
/// acknowledged writes lost.
struct Switch {
    reported_ms: f64,
    client_ms: f64,
    lost: usize,
    acked: usize,
}

/// The index of the server writes reach now through `edge`.
fn primary(lab: &DbLab, edge: usize) -> Result<usize> {
    let (ok, id) = lab.query_via(edge, foobar_tests::dblab::MAIN.0, "SELECT @@server_id")?;
    ensure!(ok, "no primary: {id}");
    Ok(id.parse::<usize>()? - 1)
}

/// Starts the write load and lets it run for a second: the writer, its start.
fn load(lab: &DbLab, edge: usize) -> (Writer, Instant) {
    let started = Instant::now();
    let writer = Writer::start(lab, edge);
    sleep(Duration::from_secs(1));
    (writer, started)
}

/// Lets the load run on for a second and stops it.
fn finish(writer: Writer) -> Result<Written> {
    sleep(Duration::from_secs(1));
    writer.stop()
}

fn crash(lab: &mut DbLab, edge: usize) -> Result<Crash> {
    let old = primary(lab, edge)?;
    let (writer, started) = load(lab, edge);
    let at = started.elapsed();
    lab.servers[old].kill()?;
    lab.new_primary(edge, old, STEP)?;
    let written = finish(writer)?;
    let new = primary(lab, edge)?;
    let resumed = written
        .acked_at
        .iter()
        .find(|t| **t > at)
        .context("no write acknowledged after the crash")?;
    let lost = Writer::lost_on(&lab.servers[new], &written)?.len();
    // The old primary returns and rejoins (or stays out, fenced): the next round starts whole.
    lab.servers[old].run(&lab.server_ns[old])?;
    let _ = lab.wait_replicating(old, new, STEP);
    Ok(Crash {
        outage_ms: (*resumed - at).as_secs_f64() * 1000.0,
        lost,
        acked: written.acked.len(),
    })
}

fn switchover(lab: &DbLab, edge: usize, acting: usize) -> Result<Switch> {
    let old = primary(lab, edge)?;
    let target = (0..lab.servers.len())
        .find(|&i| {
            i != old
                && lab.servers[i]
                    .replica_status()
                    .is_ok_and(|s| s.get("Slave_IO_Running").map(String::as_str) == Some("Yes"))
        })
        .context("no replica to switch over to")?;
    let (writer, _) = load(lab, edge);
    let (ok, said) = lab.switchover(acting, Some(server_addr(target)))?;
    ensure!(ok, "switchover failed: {said}");
    let written = finish(writer)?;
    let reported_ms: f64 = said
        .rsplit("writes paused for ")
        .next()
        .and_then(|t| t.trim().trim_end_matches("ms").trim().parse().ok())
        .with_context(|| format!("no pause in {said:?}"))?;
    lab.wait_replicating(old, target, STEP)?;
    Ok(Switch {
        reported_ms,
        client_ms: written.longest_gap.as_secs_f64() * 1000.0,
        lost: Writer::lost_on(&lab.servers[target], &written)?.len(),
        acked: written.acked.len(),
    })
}

/// Runs the rounds.
pub fn run() -> Result<Vec<Row>> {
    let mut lab = DbLab::build_shaped(
        "bench-dbf",
        Shape {
            servers: 3,
            edges: 2,
            semi_sync: true,
            failover: Some(format!("after_ms = {AFTER_MS}\nrejoin = true\nsemi_sync = true")),
            ..Shape::default()
        },
    )?;
    lab.start_router()?;
    let acting = lab.acting_edge()?;
    let edge = 1 - acting;
    foobar_tests::wait_until(STEP, "writes to reach the primary", || primary(&lab, edge).is_ok())?;
    let mut crashes = Vec::new();
    for _ in 0..ROUNDS {
        crashes.push(crash(&mut lab, edge)?);
    }
    let mut switches = Vec::new();
    for _ in 0..ROUNDS {
        switches.push(switchover(&lab, edge, acting)?);
    }
    let version = crate::peer_version("MariaDB", &["mariadbd", "--version"])?;
    let bound = AFTER_MS + FALL * INTERVAL_MS + INTERVAL_MS;
    let crash_outage = median(crashes.iter().map(|c| c.outage_ms).collect());
    let setup = format!("{version}, semi-sync, after_ms {AFTER_MS}, monitor {INTERVAL_MS} ms × fall {FALL}");
    let against_crash = |name: &str, ms: fn(&Switch) -> f64| Row {
        name: name.into(),
        value: median(switches.iter().map(ms).collect()),
        unit: "ms",
        baseline: "the crash outage of the same run".into(),
        baseline_value: crash_outage,
    };
    Ok(vec![
        Row {
            name: "crash_write_outage".into(),
            value: crash_outage,
            unit: "ms",
            baseline: format!("the configured bound: after_ms + fall × interval + one interval ({setup})"),
            baseline_value: bound,
        },
        Row {
            name: "crash_acknowledged_writes_lost".into(),
            value: crashes.iter().map(|c| c.lost).sum::<usize>() as f64,
            unit: "writes",
            baseline: format!("writes acknowledged over {ROUNDS} crash rounds"),
            baseline_value: crashes.iter().map(|c| c.acked).sum::<usize>() as f64,
        },
        against_crash("switchover_write_pause_reported", |s| s.reported_ms),
        against_crash("switchover_client_longest_wait", |s| s.client_ms),
        Row {
            name: "switchover_acknowledged_writes_lost".into(),
            value: switches.iter().map(|s| s.lost).sum::<usize>() as f64,
            unit: "writes",
            baseline: format!("writes acknowledged over {ROUNDS} switchovers"),
            baseline_value: switches.iter().map(|s| s.acked).sum::<usize>() as f64,
        },
    ])
}
