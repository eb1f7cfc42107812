//! Galera routing against a real three-member MariaDB Galera cluster (galera-4) and two edges:
//! writes from both edges meet on one member, reads spread over the others, and a member that
//! desyncs, drops out of the primary component or dies is taken out (its connections closed)
//! and taken back once synced; the writer moves when it leaves, the same on both edges.

use anyhow::{ensure, Context, Result};
use foobar_tests::{
    dblab::{router_addr, server_addr, DbLab, Shape, MAIN},
    mariadb::APP_USER,
    wait_until,
};
use mysql_async::prelude::Queryable;
use std::time::Duration;

/// How long a member's change may take to show (Galera's own detection included).
const STEP: Duration = Duration::from_secs(20);

fn galera_lab(tag: &str) -> Result<DbLab> {
    let mut lab = DbLab::build_shaped(
        tag,
        Shape {
            servers: 3,
            edges: 2,
            galera: true,
            ..Shape::default()
        },
    )?;
    lab.start_router()?;
    for edge in 0..2 {
        wait_writer(&lab, edge, 1)?;
    }
    Ok(lab)
}

/// Waits until writes through `edge` land on server id `id`.
fn wait_writer(lab: &DbLab, edge: usize, id: u32) -> Result<()> {
    let mut last = String::new();
    wait_until(STEP, &format!("edge {edge} to write to db{id}"), || {
        last = lab
            .query_via(edge, MAIN.0, "SELECT @@server_id")
            .map(|(_, out)| out)
            .unwrap_or_else(|e| e.to_string());
        last == id.to_string()
    })
    .with_context(|| format!("last: {last}\n{}", lab.logs()))
}

/// Opens `n` read-only connections through edge 0 at once (from the client namespace) and
/// keeps them: the runtime that drives them, and each one with its server id.
fn open_reads(lab: &DbLab, n: usize) -> Result<(tokio::runtime::Runtime, Vec<(mysql_async::Conn, u32)>)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    lab.client.run(move || {
        let conns = runtime.block_on(async {
            let mut conns = Vec::new();
            for _ in 0..n {
                let (user, password) = APP_USER;
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname(router_addr(0).to_string())
                    .tcp_port(MAIN.1)
                    .user(Some(user))
                    .pass(Some(password))
                    .prefer_socket(false);
                let mut conn = mysql_async::Conn::new(opts).await?;
                let id: Option<u32> = conn.query_first("SELECT @@server_id").await?;
                conns.push((conn, id.context("no row")?));
            }
            Ok::<_, anyhow::Error>(conns)
        });
        conns.map(|c| (runtime, c))
    })?
}

/// The server ids `n` read connections opened at once through edge 0 reach.
fn read_ids(lab: &DbLab, n: usize) -> Result<Vec<u32>> {
    let (runtime, conns) = open_reads(lab, n)?;
    let mut ids: Vec<u32> = conns.iter().map(|(_, id)| *id).collect();
    ids.sort();
    runtime.block_on(async {
        for (conn, _) in conns {
            let _ = conn.disconnect().await;
        }
    });
    Ok(ids)
}

/// Waits until `n` reads through edge 0 reach exactly `expected` (sorted).
fn wait_reads(lab: &DbLab, n: usize, expected: &[u32]) -> Result<()> {
    let mut last = Vec::new();
    wait_until(STEP, &format!("reads to reach {expected:?}"), || {
        last = read_ids(lab, n).unwrap_or_default();
        last == expected
    })
    .with_context(|| format!("reads reached {last:?}\n{:?}", lab.status_text()))
}

/// Waits until edge 0's status shows server `i` in `state`.
fn wait_state(lab: &DbLab, i: usize, state: &str) -> Result<()> {
    let mut last = String::new();
    wait_until(STEP, &format!("db{} to be {state}", i + 1), || {
        last = lab
            .status()
            .ok()
            .and_then(|s| s.databases.into_iter().next())
            .and_then(|d| d.servers.into_iter().nth(i))
            .map(|s| s.state.role().to_owned())
            .unwrap_or_default();
        last == state
    })
    .with_context(|| format!("db{} is {last}\n{}", i + 1, lab.logs()))
}

#[test]
fn writes_meet_on_one_member_and_reads_avoid_desynced_and_partitioned_ones() -> Result<()> {
    let lab = galera_lab("ga")?;
    // Two reads at once: one on each member other than the writer (least connections).
    wait_reads(&lab, 2, &[2, 3])?;

    // Desynced on purpose: its open reads are closed, new ones avoid it.
    let (runtime, mut held) = open_reads(&lab, 2)?;
    let on_db2 = held
        .iter()
        .position(|(_, id)| *id == 2)
        .context("no read connection on db2")?;
    lab.servers[1].sql("SET GLOBAL wsrep_desync = ON")?;
    wait_state(&lab, 1, "desynced")?;
    let (mut conn, _) = held.swap_remove(on_db2);
    let after = runtime.block_on(conn.query_first::<u32, _>("SELECT @@server_id"));
    ensure!(
        after.is_err(),
        "a read connection to the desynced member stayed open: {after:?}"
    );
    // One read stays open on db3: the next two go there (db2 is out).
    wait_reads(&lab, 2, &[3, 3])?;
    lab.servers[1].sql("SET GLOBAL wsrep_desync = OFF")?;
    wait_state(&lab, 1, "synced")?;
    // db3 holds the open read, so db2 takes the next one first.
    wait_reads(&lab, 1, &[2])?;
    // Closed from inside their runtime: a connection dropped without it may stay open.
    runtime.block_on(async {
        drop(conn);
        for (conn, _) in held {
            let _ = conn.disconnect().await;
        }
    });

    // Cut off from the other members: out of the primary component, out of service.
    for peer in [0, 1] {
        let to = format!("{}/32", server_addr(peer));
        lab.server_ns[2].exec(&["ip", "route", "add", "blackhole", &to])?;
    }
    wait_state(&lab, 2, "non-primary")?;
    wait_reads(&lab, 2, &[2, 2])?;
    let status = lab.status_text()?;
    ensure!(status.contains("10.20.0.13:3306 non-primary"), "{status}");
    for peer in [0, 1] {
        let to = format!("{}/32", server_addr(peer));
        lab.server_ns[2].exec(&["ip", "route", "del", "blackhole", &to])?;
    }
    wait_state(&lab, 2, "synced")?;
    wait_reads(&lab, 2, &[2, 3])?;
    for edge in 0..2 {
        wait_writer(&lab, edge, 1)?;
    }
    Ok(())
}

#[test]
fn the_writer_moves_when_it_leaves_and_both_edges_agree() -> Result<()> {
    let mut lab = galera_lab("gw")?;
    lab.must_query(MAIN.0, "INSERT INTO appdb.t (v) VALUES ('before')")?;
    lab.servers[0].kill()?;
    for edge in 0..2 {
        wait_writer(&lab, edge, 2)?;
    }
    let (ok, out) = lab.query_via(1, MAIN.0, "INSERT INTO appdb.t (v) VALUES ('while db1 is away')")?;
    ensure!(ok, "{out}");
    // Reads: the one member left besides the writer.
    wait_reads(&lab, 2, &[3, 3])?;

    // Back and synced (it catches up by state transfer): the first member writes again.
    lab.servers[0].run(&lab.server_ns[0])?;
    lab.servers[0].wait_synced()?;
    for edge in 0..2 {
        wait_writer(&lab, edge, 1)?;
    }
    ensure!(
        lab.servers[0].sql("SELECT COUNT(*) FROM appdb.t WHERE v = 'while db1 is away'")? == "1",
        "the returning member missed a write"
    );
    wait_reads(&lab, 2, &[2, 3])?;
    Ok(())
}
