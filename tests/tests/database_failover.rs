//! Database high availability against real MariaDB (a GTID primary and two replicas) with
//! foobar's `[database.failover]`: a primary killed under a write load is replaced by one edge
//! without losing an acknowledged write, a partition only the monitor sees fails nothing over,
//! a returning old primary is fenced and rejoins (or stays out with errant transactions), and a
//! switchover under load loses nothing and reports its write pause.

use anyhow::{ensure, Context, Result};
use foobar_tests::{
    dblab::{router_addr, server_addr, DbLab, Shape, Writer, MAIN},
    wait_until,
};
use std::time::{Duration, Instant};

/// `[database.failover] after_ms` in these labs.
const AFTER: Duration = Duration::from_millis(1000);
/// How long a step of a failover may take to show on a loaded machine: noticing a server
/// that stopped answering takes `fall` checks of up to their timeout each, then `after_ms`.
const STEP: Duration = Duration::from_secs(15);

fn failover_lab(tag: &str, edges: usize, semi_sync: bool, rejoin: bool) -> Result<DbLab> {
    let mut lab = DbLab::build_shaped(
        tag,
        Shape {
            servers: 3,
            edges,
            semi_sync,
            failover: Some(format!(
                "after_ms = {}\nrejoin = {rejoin}\nsemi_sync = {semi_sync}",
                AFTER.as_millis()
            )),
            ..Shape::default()
        },
    )?;
    lab.start_router()?;
    for edge in 0..edges {
        wait_until(STEP, "every edge to route writes to db1", || {
            lab.query_via(edge, MAIN.0, "SELECT @@server_id")
                .is_ok_and(|(ok, id)| ok && id == "1")
        })
        .with_context(|| lab.logs())?;
    }
    Ok(lab)
}

/// Waits until some edge's failover status waits for a reason containing `needle`.
fn wait_waiting(lab: &DbLab, edge: usize, needle: &str) -> Result<String> {
    let mut last = None;
    wait_until(STEP, &format!("the failover to wait: {needle}"), || {
        last = lab.failover_of(edge).ok().flatten().and_then(|f| f.waiting);
        last.as_deref().is_some_and(|w| w.contains(needle))
    })
    .with_context(|| format!("waiting: {last:?}\n{}", lab.logs()))?;
    Ok(last.unwrap_or_default())
}

fn read_only(lab: &DbLab, i: usize) -> bool {
    lab.servers[i].sql("SELECT @@global.read_only").is_ok_and(|v| v == "1")
}

#[test]
fn a_dead_primary_under_load_is_replaced_by_one_edge_without_losing_an_acknowledged_write() -> Result<()> {
    let mut lab = failover_lab("fo", 2, true, true)?;
    let acting = lab.acting_edge()?;
    // Writes go through the other edge: it routes to the new primary without acting itself.
    let through = 1 - acting;
    let started = Instant::now();
    let writer = Writer::start(&lab, through);
    std::thread::sleep(Duration::from_secs(1));
    lab.servers[0].kill()?;
    let killed = started.elapsed();
    let new = lab.new_primary(through, 0, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(1));
    let written = writer.stop()?;

    let lost = Writer::lost_on(&lab.servers[new], &written)?;
    ensure!(
        lost.is_empty(),
        "acknowledged writes missing on the new primary db{}: {lost:?}",
        new + 1
    );
    let resumed = written
        .acked_at
        .iter()
        .find(|at| **at > killed)
        .context("no write was acknowledged after the primary died")?;
    let outage = *resumed - killed;
    // after_ms, plus the monitor noticing (fall 2 × 200 ms) and one round to promote, and
    // slack for a loaded machine.
    ensure!(
        outage < AFTER + Duration::from_secs(4),
        "writes resumed {outage:?} after the crash"
    );
    ensure!(written.acked.len() > 20, "too few writes to say anything: {written:?}");

    let failovers: Vec<u64> = (0..2)
        .map(|e| lab.failover_of(e).ok().flatten().map_or(0, |f| f.failovers))
        .collect();
    ensure!(
        failovers[acting] == 1 && failovers[through] == 0,
        "exactly the acting edge promotes: {failovers:?}"
    );
    let other = 3 - new;
    lab.wait_replicating(other, new, STEP)?;
    for edge in 0..2 {
        let (ok, id) = lab.query_via(edge, MAIN.0, "SELECT @@server_id")?;
        ensure!(ok && id == (new + 1).to_string(), "edge {edge} writes to db{id}");
    }
    let events = lab.failover_of(acting)?.context("no failover status")?.events;
    ensure!(
        events
            .iter()
            .any(|e| e.what.contains("is down and no replica receives from it: promoting")),
        "{events:?}"
    );

    // The old primary comes back writable: fenced at once, then rejoined when its history is
    // part of the new primary's (a transaction it wrote but never had acknowledged may keep it
    // out, and then the status says so and the GTIDs prove it).
    lab.servers[0].run(&lab.server_ns[0])?;
    wait_until(STEP, "the old primary to be fenced", || read_only(&lab, 0)).with_context(|| lab.logs())?;
    let mut errant = None;
    wait_until(STEP, "the old primary to rejoin or be kept out", || {
        errant = lab
            .failover_of(acting)
            .ok()
            .flatten()
            .and_then(|f| f.waiting)
            .filter(|w| w.contains("errant"));
        let s = lab.servers[0].replica_status().unwrap_or_default();
        errant.is_some() || s.get("Slave_IO_Running").map(String::as_str) == Some("Yes")
    })
    .with_context(|| lab.logs())?;
    match errant {
        None => {
            lab.wait_replicating(0, new, STEP)?;
            let (ok, out) = lab.query_via(through, MAIN.0, "INSERT INTO appdb.t (v) VALUES ('after the rejoin')")?;
            ensure!(ok, "{out}");
            wait_until(STEP, "the rejoined old primary to replicate", || {
                lab.servers[0]
                    .sql("SELECT COUNT(*) FROM appdb.t WHERE v = 'after the rejoin'")
                    .is_ok_and(|n| n == "1")
            })
            .with_context(|| format!("{:?}", lab.servers[0].replica_status()))?;
        }
        Some(why) => {
            let old: String = lab.servers[0].sql("SELECT @@global.gtid_current_pos")?;
            let history: String = lab.servers[new].sql("SELECT @@global.gtid_binlog_state")?;
            let (old, history): (foobar::mysql::gtid::Gtids, foobar::mysql::gtid::Gtids) =
                (old.parse()?, history.parse()?);
            ensure!(!history.contains_history_of(&old), "kept out wrongly: {why}");
        }
    }
    Ok(())
}

#[test]
fn a_partition_only_the_monitor_sees_fails_nothing_over_and_errant_servers_stay_out() -> Result<()> {
    let mut lab = failover_lab("fp", 1, false, true)?;
    ensure!(lab.acting_edge()? == 0);
    let router = format!("{}/32", router_addr(0));
    // The router loses db1; the replicas do not.
    lab.server_ns[0].exec(&["ip", "route", "add", "blackhole", &router])?;
    wait_waiting(&lab, 0, "still receives from it: no failover")?;
    std::thread::sleep(AFTER * 2);
    let f = lab.failover_of(0)?.context("no failover status")?;
    ensure!(f.failovers == 0, "{f:?}");
    ensure!(read_only(&lab, 1) && read_only(&lab, 2), "a replica was promoted");
    lab.server_ns[0].exec(&["ip", "route", "del", "blackhole", &router])?;
    wait_until(STEP, "db1 to take writes again", || {
        lab.query(MAIN.0, "SELECT @@server_id")
            .is_ok_and(|(ok, id)| ok && id == "1")
    })?;

    // A crash with nothing in flight: a replica is promoted and the old primary rejoins.
    lab.must_query(MAIN.0, "INSERT INTO appdb.t (v) VALUES ('before the crash')")?;
    lab.servers[0].kill()?;
    let new = lab.new_primary(0, 0, Duration::from_secs(30))?;
    lab.servers[0].run(&lab.server_ns[0])?;
    lab.wait_replicating(0, new, STEP)?;
    ensure!(read_only(&lab, 0), "the rejoined old primary is writable");
    lab.must_query(MAIN.0, "INSERT INTO appdb.t (v) VALUES ('after the rejoin')")?;
    wait_until(STEP, "the rejoined server to replicate", || {
        lab.servers[0]
            .sql("SELECT COUNT(*) FROM appdb.t WHERE v = 'after the rejoin'")
            .is_ok_and(|n| n == "1")
    })?;

    // The primary commits a transaction no replica receives, then dies: when it returns it is
    // fenced and stays out, and reads never reach it.
    let replicas: Vec<usize> = (0..3).filter(|&i| i != new).collect();
    wait_until(STEP, "both replicas to hold every row", || {
        replicas.iter().all(|&i| {
            lab.servers[i]
                .sql("SELECT COUNT(*) FROM appdb.t WHERE v = 'after the rejoin'")
                .is_ok_and(|n| n == "1")
        })
    })?;
    for &i in &replicas {
        lab.servers[i].sql("STOP SLAVE IO_THREAD")?;
    }
    lab.servers[new].sql("INSERT INTO appdb.t (v) VALUES ('errant')")?;
    lab.servers[new].kill()?;
    let newer = lab.new_primary(0, new, Duration::from_secs(30))?;
    lab.servers[new].run(&lab.server_ns[new])?;
    wait_until(STEP, "the returning primary to be fenced", || read_only(&lab, new)).with_context(|| lab.logs())?;
    let why = wait_waiting(&lab, 0, "errant")?;
    ensure!(why.contains(&server_addr(new).to_string()), "{why}");
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        lab.servers[new].replica_status()?.is_empty(),
        "the errant server was made a replica"
    );
    for _ in 0..5 {
        let id = lab.must_query(MAIN.1, "SELECT @@server_id")?;
        ensure!(id != (new + 1).to_string(), "a read reached the errant server");
    }
    ensure!(
        lab.must_query(MAIN.0, "SELECT COUNT(*) FROM appdb.t WHERE v = 'errant'")? == "0",
        "writes went to a server with the errant row (new primary: db{})",
        newer + 1
    );
    let status = lab.status_text()?;
    ensure!(
        status.contains("failover waits:") && status.contains("errant"),
        "{status}"
    );
    Ok(())
}

#[test]
fn a_switchover_under_load_loses_no_write_and_reports_the_pause() -> Result<()> {
    let lab = failover_lab("fs", 2, true, false)?;
    let acting = lab.acting_edge()?;
    let (ok, out) = lab.switchover(1 - acting, None)?;
    ensure!(!ok && out.contains("does not act"), "the other edge: {out}");

    let writer = Writer::start(&lab, 1 - acting);
    std::thread::sleep(Duration::from_secs(1));
    let (ok, out) = lab.switchover(acting, Some(server_addr(2)))?;
    ensure!(
        ok && out.contains("switched over from 10.20.0.11:3306 to 10.20.0.13:3306; writes paused for"),
        "{out}\n{}",
        lab.logs()
    );
    std::thread::sleep(Duration::from_secs(1));
    let written = writer.stop()?;
    let lost = Writer::lost_on(&lab.servers[2], &written)?;
    ensure!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    ensure!(written.acked.len() > 20, "too few writes: {written:?}");

    for edge in 0..2 {
        wait_until(STEP, "every edge to write to db3", || {
            lab.query_via(edge, MAIN.0, "SELECT @@server_id")
                .is_ok_and(|(ok, id)| ok && id == "3")
        })?;
    }
    // The old primary and the other replica follow the new one.
    lab.wait_replicating(0, 2, STEP)?;
    lab.wait_replicating(1, 2, STEP)?;
    ensure!(read_only(&lab, 0) && read_only(&lab, 1));
    let f = lab.failover_of(acting)?.context("no failover status")?;
    ensure!(
        f.switchovers == 1 && f.failovers == 0 && f.last_write_pause_ms.is_some(),
        "{f:?}"
    );
    Ok(())
}
