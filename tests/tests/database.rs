//! Database routing against real MariaDB: a GTID primary and replica in namespaces, foobar
//! routing read-write connections to the primary and read-only ones to the fresh replica, and
//! what happens when replication stops, servers die, a replica is promoted by hand, the
//! cluster is unreachable at startup, and the monitor's password is wrong.

use anyhow::{ensure, Result};
use foobar_tests::{
    dblab::{DbLab, MAIN, NOTICE, ROUTER, STRICT},
    mariadb::{app_query, APP_USER, MONITOR_USER},
    wait_until,
};
use mysql_async::prelude::Queryable;
use std::time::Duration;

#[test]
fn writes_reach_the_primary_and_reads_the_fresh_replica() -> Result<()> {
    let lab = DbLab::start("rw")?;
    lab.must_query(MAIN.0, "INSERT INTO appdb.t (v) VALUES ('through the router')")?;
    ensure!(lab.servers[0].sql("SELECT v FROM appdb.t")? == "through the router");
    lab.wait_for(MAIN.1, "SELECT v FROM appdb.t", "through the router")?;
    ensure!(
        lab.must_query(MAIN.1, "SELECT @@server_id")? == "2",
        "reads go to the replica"
    );
    ensure!(lab.must_query(STRICT.1, "SELECT @@server_id")? == "2");
    // TLS is the client's and the server's business: it passes through the router.
    let (_, tls) = app_query(
        &lab.client,
        &ROUTER.to_string(),
        MAIN.0,
        "SHOW SESSION STATUS LIKE 'Ssl_version'",
        &["--ssl"],
    )?;
    ensure!(tls.trim() == "Ssl_version\tTLSv1.3", "TLS through the router: {tls}");
    let (ok, out) = lab.query(MAIN.1, "INSERT INTO appdb.t (v) VALUES ('nope')")?;
    ensure!(
        !ok && out.contains("read-only"),
        "the replica refuses writes itself: {out}"
    );

    // Replication stops applying: the lag is unknown, reads leave the replica.
    lab.servers[1].sql("STOP SLAVE SQL_THREAD")?;
    lab.wait_for(MAIN.1, "SELECT @@server_id", "1")?;
    let refusal = lab.wait_for_refusal(STRICT.1, "no replica qualifies")?;
    // The client learns why in counts, never the servers' addresses; the log says which.
    ensure!(!refusal.contains("10.20.0."), "an internal address in: {refusal}");
    ensure!(
        lab.router_log()
            .contains("10.20.0.12:3306 has its replication SQL thread stopped"),
        "{}",
        lab.router_log()
    );
    for part in [
        "9001 - foobar: database strict (read-only)",
        "servers: 1 writable, 1 replication stopped",
        "when_no_replica = refuse",
    ] {
        ensure!(refusal.contains(part), "{part:?} missing from: {refusal}");
    }
    ensure!(
        lab.must_query(STRICT.0, "SELECT @@server_id")? == "1",
        "writes are unaffected"
    );

    // Applying again: the replica catches up and gets the reads back.
    lab.servers[1].sql("START SLAVE SQL_THREAD")?;
    lab.wait_for(MAIN.1, "SELECT @@server_id", "2")?;
    lab.wait_for(STRICT.1, "SELECT @@server_id", "2")?;

    let status = lab.status_text()?;
    for part in [
        "database main: primary 10.20.0.11:3306",
        "10.20.0.12:3306 read-only, lag 0 s",
        "refused read-write 0",
    ] {
        ensure!(status.contains(part), "{part:?} missing from status:\n{status}");
    }
    let log = lab.router_log();
    ensure!(
        !log.contains(MONITOR_USER.1),
        "the monitor password leaked into the log"
    );
    Ok(())
}

#[test]
fn dead_servers_move_reads_and_refuse_writes_with_the_reason() -> Result<()> {
    let mut lab = DbLab::start("dead")?;
    lab.wait_for(MAIN.1, "SELECT @@server_id", "2")?;

    lab.servers[1].kill()?;
    lab.wait_for(MAIN.1, "SELECT @@server_id", "1")?;
    let refusal = lab.wait_for_refusal(STRICT.1, "servers: 1 writable, 1 down")?;
    ensure!(refusal.contains("no replica qualifies"), "{refusal}");
    ensure!(
        lab.router_log().contains("10.20.0.12:3306 is down"),
        "{}",
        lab.router_log()
    );
    ensure!(lab.must_query(MAIN.0, "SELECT @@server_id")? == "1");

    let ns = &lab.server_ns[1];
    lab.servers[1].run(ns)?;
    lab.wait_for(MAIN.1, "SELECT @@server_id", "2")?;

    // The primary dies: writes are refused and say why; the replica keeps serving reads (it
    // holds everything the dead primary sent it).
    lab.servers[0].kill()?;
    let refusal = lab.wait_for_refusal(MAIN.0, "no primary")?;
    for part in [
        "9001 - foobar: database main (read-write)",
        "servers: 1 down, 1 read-only",
    ] {
        ensure!(refusal.contains(part), "{part:?} missing from: {refusal}");
    }
    ensure!(!refusal.contains("10.20.0."), "an internal address in: {refusal}");
    ensure!(
        lab.router_log().contains("10.20.0.11:3306 is down"),
        "{}",
        lab.router_log()
    );
    ensure!(lab.must_query(MAIN.1, "SELECT @@server_id")? == "2");
    ensure!(lab.must_query(STRICT.1, "SELECT @@server_id")? == "2");
    let status = lab.status_text()?;
    ensure!(status.contains("10.20.0.11:3306 DOWN"), "status:\n{status}");
    Ok(())
}

/// Opens a connection as the application user through the router's `port`, from the client
/// namespace's point of view (the test thread has entered it).
async fn connect(port: u16) -> Result<mysql_async::Conn> {
    let (user, password) = APP_USER;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(foobar_tests::dblab::ROUTER.to_string())
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false);
    Ok(mysql_async::Conn::new(opts).await?)
}

async fn server_id(conn: &mut mysql_async::Conn) -> Result<u32> {
    let id: Option<u32> = conn.query_first("SELECT @@server_id").await?;
    id.ok_or_else(|| anyhow::anyhow!("no row"))
}

#[test]
fn promoting_the_replica_moves_writes_and_closes_old_write_connections() -> Result<()> {
    let lab = DbLab::start("promote")?;
    lab.wait_for(MAIN.1, "SELECT @@server_id", "2")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Sockets belong to the namespace they were made in: connect from inside the client's.
    let (runtime, mut writer, mut reader) = lab.client.run(move || {
        let conns = runtime.block_on(async {
            let mut writer = connect(MAIN.0).await?;
            let mut reader = connect(MAIN.1).await?;
            ensure!(server_id(&mut writer).await? == 1 && server_id(&mut reader).await? == 2);
            Ok::<_, anyhow::Error>((writer, reader))
        });
        conns.map(|(w, r)| (runtime, w, r))
    })??;

    // An operator's failover: the old primary goes read-only, the replica stops replicating
    // and becomes writable.
    lab.servers[0].sql("SET GLOBAL read_only = 1")?;
    lab.servers[1].sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0")?;
    lab.wait_for(MAIN.0, "SELECT @@server_id", "2")?;
    lab.must_query(MAIN.0, "INSERT INTO appdb.t (v) VALUES ('after the promotion')")?;
    ensure!(lab.servers[1].sql("SELECT v FROM appdb.t")? == "after the promotion");

    runtime.block_on(async {
        let old = server_id(&mut writer).await;
        ensure!(
            old.is_err(),
            "the write connection to the demoted server is still open: {old:?}"
        );
        ensure!(server_id(&mut reader).await? == 2, "read connections stay");
        drop((writer, reader));
        Ok(())
    })?;
    let status = lab.status()?;
    let main = status
        .databases
        .first()
        .ok_or_else(|| anyhow::anyhow!("no database in {status:?}"))?;
    ensure!(main.primary.as_deref() == Some("10.20.0.12:3306"), "{main:?}");
    let old = &main.servers[0];
    ensure!(
        old.closed_by_router >= 1 && old.active == 0 && old.state.read_only,
        "{old:?}"
    );
    Ok(())
}

#[test]
fn an_unreachable_cluster_at_startup_and_bad_monitor_credentials() -> Result<()> {
    let mut lab = DbLab::build("start")?;
    // Credentials others could read are refused before anything starts.
    lab.write_credentials(MONITOR_USER.1, 0o644)?;
    let config = lab.config().display().to_string();
    let out = foobar_tests::foobar_refuses(
        &lab.routers[0].ns,
        &["run", "--config", &config],
        Duration::from_secs(10),
    )?;
    ensure!(
        out.contains("must not be accessible to group or others (mode 644)"),
        "{out}"
    );

    // Nothing reachable at startup: foobar starts, refuses with the reason, and routes as soon
    // as the servers answer.
    lab.write_credentials(MONITOR_USER.1, 0o600)?;
    lab.servers[0].kill()?;
    lab.servers[1].kill()?;
    lab.start_router()?;
    let refusal = lab.wait_for_refusal(MAIN.0, "no primary (servers: 2 down)")?;
    ensure!(!refusal.contains("10.20.0."), "an internal address in: {refusal}");
    let log = lab.router_log();
    ensure!(
        log.contains("10.20.0.11:3306 is down") && (log.contains("Connection refused") || log.contains("login")),
        "{log}"
    );
    let ns = &lab.server_ns[0];
    lab.servers[0].run(ns)?;
    lab.wait_for(MAIN.0, "SELECT @@server_id", "1")?;

    // A graceful stop: listeners close at once, open connections get the drain time (1 s).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (runtime, mut open) = lab.client.run(move || {
        let conn = runtime.block_on(connect(MAIN.0));
        conn.map(|c| (runtime, c))
    })??;
    let mut router = lab.routers[0]
        .process
        .take()
        .ok_or_else(|| anyhow::anyhow!("no router"))?;
    router.signal(nix::sys::signal::Signal::SIGTERM)?;
    let mut out = String::new();
    wait_until(Duration::from_secs(3), "the listeners to close", || {
        lab.query(MAIN.0, "SELECT 1").is_ok_and(|(ok, o)| {
            out = o;
            !ok
        })
    })?;
    ensure!(
        runtime.block_on(server_id(&mut open))? == 1,
        "an open connection is served while draining"
    );
    ensure!(
        out.contains("Can't connect"),
        "new connections are not taken while draining: {out}"
    );
    ensure!(
        router.wait(Duration::from_secs(5))?,
        "foobar exits cleanly after the drain"
    );
    ensure!(
        runtime.block_on(server_id(&mut open)).is_err(),
        "closed after the drain time"
    );
    drop(runtime);

    // A wrong monitor password: every server is down for the router, and the reason is the
    // server's own refusal; the password itself appears nowhere.
    let wrong = "not-the-password";
    lab.write_credentials(wrong, 0o600)?;
    lab.start_router()?;
    // Unauthenticated clients are not told the monitor's error; the log and status are.
    let refusal = lab.wait_for_refusal(MAIN.0, "no primary (servers: 2 down)")?;
    ensure!(
        !refusal.contains("Access denied"),
        "the monitor's error reached a client: {refusal}"
    );
    wait_until(NOTICE, "the log to show the monitor's refusal", || {
        lab.router_log().contains("Access denied for user 'monitor'")
    })?;
    wait_until(NOTICE, "the status to show the refusal", || {
        lab.status_text().is_ok_and(|s| s.contains("Access denied"))
    })?;
    let status = lab.status_text()?;
    ensure!(
        !status.contains(wrong) && !lab.router_log().contains(wrong),
        "the password leaked"
    );
    Ok(())
}

/// Through the VIP: both edges run the database router as backends of the read-write and
/// read-only services (the master serves some connections itself and sends the others to the
/// backup by IPIP); when one edge stops, the other carries every new connection.
#[test]
fn database_services_on_the_vip_are_routed_by_both_edges() -> Result<()> {
    use foobar_tests::lab::{edge_addr, LabSpec, LbLab, MYSQL_PORTS, VIP};
    let mut lab = LbLab::build(LabSpec::pair(1, true, false).with_database())?;
    let query = |port: u16, sql: &str| -> Result<String> {
        match app_query(&lab.client, &VIP.to_string(), port, sql, &[])? {
            (true, rows) => Ok(rows),
            (false, error) => anyhow::bail!("{sql} through {VIP}:{port}: {error}"),
        }
    };
    // The servers see the routing edge's address as the client's.
    let mut routed_by = Vec::new();
    wait_until(
        Duration::from_secs(15),
        "both edges to route database connections",
        || {
            match query(MYSQL_PORTS.0, "SELECT SUBSTRING_INDEX(USER(), '@', -1), @@server_id") {
                Ok(who) => routed_by.push(who),
                Err(e) => routed_by.push(e.to_string()),
            }
            let seen = |i: usize| routed_by.iter().any(|w| *w == format!("{}\t1", edge_addr(i)));
            seen(0) && seen(1)
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}: {routed_by:?}"))?;
    query(MYSQL_PORTS.0, "INSERT INTO appdb.t (v) VALUES ('via the VIP')")?;
    let mut last = String::new();
    wait_until(NOTICE, "the read-only service to read from the replica", || {
        last = query(MYSQL_PORTS.1, "SELECT @@server_id, v FROM appdb.t").unwrap_or_else(|e| e.to_string());
        last == "2\tvia the VIP"
    })
    .map_err(|e| anyhow::anyhow!("{e}: {last}"))?;

    // The backup edge stops: the master's health check takes it out of both services.
    let backup = 1 - lab.wait_for_master(Duration::from_secs(5))?;
    if let Some(mut edge) = lab.edges[backup].foobar.take() {
        edge.signal(nix::sys::signal::Signal::SIGTERM)?;
        edge.wait(Duration::from_secs(10))?;
    }
    let master = 1 - backup;
    let stopped = edge_addr(backup);
    // Out as the checks see it, and out of the master's maps (the checks' view is published
    // a moment before the maps are written).
    let stopped_ip = std::net::IpAddr::V4(stopped);
    wait_until(
        Duration::from_secs(10),
        "the master's checks to take the stopped edge out",
        || {
            let checked_out = lab.status(master).is_ok_and(|s| {
                let listed: Vec<_> = s
                    .services
                    .iter()
                    .flat_map(|svc| svc.backends.iter().filter(|b| b.address == stopped))
                    .collect();
                !listed.is_empty() && listed.iter().all(|b| b.standing == foobar::health::Standing::Down)
            });
            let mapped_out = foobar::stats::snapshot(&lab.edges[master].pins.path).is_ok_and(|snap| {
                snap.backends
                    .iter()
                    .filter(|b| b.address == stopped_ip)
                    .all(|b| !b.active)
            });
            checked_out && mapped_out
        },
    )?;
    for _ in 0..10 {
        let who = query(MYSQL_PORTS.0, "SELECT SUBSTRING_INDEX(USER(), '@', -1)")?;
        ensure!(who == edge_addr(1 - backup).to_string(), "routed by {who}");
    }
    // No health check or router connection ever aborted a handshake (the servers run with
    // max_connect_errors = 10 and would block the edges).
    for db in &lab.databases {
        let aborted = db.sql("SHOW GLOBAL STATUS LIKE 'Aborted_connects'")?;
        ensure!(aborted.ends_with("\t0"), "server {}: {aborted}", db.server_id);
    }
    Ok(())
}

#[test]
fn a_client_that_never_logs_in_is_closed_after_the_handshake_timeout() -> Result<()> {
    let lab = DbLab::start("hs")?;
    // A login within handshake_timeout_ms (1 s) is relayed as always (the control).
    ensure!(lab.must_query(MAIN.0, "SELECT @@server_id")? == "1");
    // A client that takes the server's greeting and sends nothing holds a server connection:
    // closed after the timeout, and counted.
    let (greeting, closed_after) = lab.client.run(|| -> Result<(usize, Duration)> {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect((ROUTER, MAIN.0))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let began = std::time::Instant::now();
        let mut buf = [0u8; 1024];
        let greeting = stream.read(&mut buf)?;
        let rest = stream.read(&mut buf);
        ensure!(matches!(rest, Ok(0)), "the silent client was not closed: {rest:?}");
        Ok((greeting, began.elapsed()))
    })??;
    ensure!(greeting > 0, "no greeting: the probe never reached a server");
    ensure!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    wait_until(NOTICE, "the timeout to be counted", || {
        lab.status()
            .is_ok_and(|s| s.databases.iter().any(|d| d.name == "main" && d.timed_out == 1))
    })?;
    Ok(())
}

#[test]
fn a_client_over_its_connection_cap_is_refused_and_counted() -> Result<()> {
    let mut lab = DbLab::build("cap")?;
    let text = std::fs::read_to_string(lab.config())?;
    let capped = text.replacen(
        "handshake_timeout_ms = 1000\n",
        "handshake_timeout_ms = 1000\nmax_connections_per_client = 2\n",
        1,
    );
    ensure!(capped != text, "the cap was not written");
    std::fs::write(lab.config(), capped)?;
    lab.start_router()?;
    lab.wait_for(MAIN.0, "SELECT @@server_id", "1")?;
    lab.client.run(|| -> Result<()> {
        use std::io::Read;
        // The first packet's payload: a greeting starts with protocol version 10, an error
        // packet with 0xff.
        let first_packet = |stream: &mut std::net::TcpStream| -> Result<Vec<u8>> {
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = vec![0u8; 1024];
            let n = stream.read(&mut buf)?;
            ensure!(n > 4, "no packet ({n} bytes)");
            Ok(buf[4..n].to_vec())
        };
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = std::net::TcpStream::connect((ROUTER, MAIN.0))?;
            ensure!(
                first_packet(&mut stream)?[0] == 10,
                "a connection under the cap got no greeting"
            );
            held.push(stream);
        }
        let mut over = std::net::TcpStream::connect((ROUTER, MAIN.0))?;
        let refusal = first_packet(&mut over)?;
        let text = String::from_utf8_lossy(&refusal).into_owned();
        ensure!(
            refusal[0] == 0xff && text.contains("too many connections"),
            "the third connection: {text:?}"
        );
        // A slot given back (once the router sees the close) is taken again.
        held.pop();
        let began = std::time::Instant::now();
        loop {
            let mut again = std::net::TcpStream::connect((ROUTER, MAIN.0))?;
            if first_packet(&mut again)?[0] == 10 {
                return Ok(());
            }
            ensure!(
                began.elapsed() < Duration::from_secs(2),
                "a freed slot was not given again"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })??;
    wait_until(NOTICE, "the refusal to be counted", || {
        lab.status().is_ok_and(|s| {
            s.databases
                .iter()
                .any(|d| d.name == "main" && d.refused_over_limit >= 1)
        })
    })?;
    Ok(())
}
