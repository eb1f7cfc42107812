//! Scale-out: edges that all forward, announcing an IPv4 VIP (and with BIRD an IPv6 one) through
//! real BIRD 2 and FRR to a router that spreads flows with ECMP ([`foobar_tests::scalelab`]).
//! New flows reach every edge; long-lived
//! transfers survive an edge draining, crashing (link down, processes killed) and joining again,
//! every byte checked; an announcement follows the node's fitness (data plane detached, every
//! backend down, stopping), outlives a restart of foobar and of BIRD, and `foobar detach
//! --config` removes what a crashed foobar left.

use anyhow::{ensure, Context, Result};
use foobar::{operate::Operation, track::Fault};
use foobar_tests::{
    lab::{round_trip_all, VIP},
    scalelab::{self, Daemon, ScaleLab, DRAIN_MS},
    scrape,
    transfer::Transfers,
    wait_until, EchoClient,
};
use nix::sys::signal::Signal;
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// The edges' addresses, by index.
fn hops(edges: &[usize]) -> BTreeSet<Ipv4Addr> {
    edges.iter().map(|i| foobar_tests::lab::edge_addr(*i)).collect()
}

/// Opens `n` connections to the VIP from the client, one round trip each, and closes them;
/// returns how many new flows each edge balanced meanwhile.
fn new_flows_per_edge(lab: &ScaleLab, n: usize) -> Result<Vec<u64>> {
    new_flows_per_edge_to(lab, lab.vip(), n)
}

/// [`new_flows_per_edge`] to `vip`.
fn new_flows_per_edge_to(lab: &ScaleLab, vip: std::net::SocketAddr, n: usize) -> Result<Vec<u64>> {
    let before: Vec<u64> = (0..lab.edges.len()).map(|i| lab.new_flows(i)).collect::<Result<_>>()?;
    let mut conns = lab
        .client
        .run(move || (0..n).map(|_| EchoClient::connect(vip)).collect::<Result<Vec<_>>>())??;
    round_trip_all(&mut conns, "new flow")?;
    drop(conns);
    (0..lab.edges.len())
        .map(|i| Ok(lab.new_flows(i)? - before[i]))
        .collect()
}

/// Edge `i`'s announcement of the VIP: (announced, faults).
fn announcement(lab: &ScaleLab, i: usize) -> Result<(bool, Vec<Fault>)> {
    let status = lab.status(i)?;
    let a = status.announce.context("the edge reports no announcements")?;
    let vip = a.vips.first().context("no VIP in the announcements")?;
    ensure!(vip.vip == VIP, "announces {} instead of the VIP", vip.vip);
    Ok((vip.announced, vip.faults.clone()))
}

#[test]
fn every_edge_forwards_and_connections_survive_edges_leaving_and_joining() -> Result<()> {
    let mut lab = ScaleLab::build(&[Daemon::Bird, Daemon::Bird, Daemon::Frr], 2)?;
    // Edge 3 runs FRR: status reads its session with vtysh.
    wait_until(Duration::from_secs(3), "edge 3's FRR session in status", || {
        lab.status(2).ok().and_then(|s| s.announce).is_some_and(|a| {
            a.sessions
                .iter()
                .any(|s| s.name == scalelab::ROUTER.to_string() && s.established())
        })
    })
    .with_context(|| format!("{:?}", lab.status(2).map(|s| s.announce)))?;
    // New flows spread over all three edges (an even 5-tuple hash gives each about 40), and
    // IPv6 ones (IPv6-in-IPv6 to the backends) over the two BIRD edges.
    let spread = new_flows_per_edge(&lab, 120)?;
    ensure!(
        spread.iter().all(|n| *n >= 10) && spread.iter().sum::<u64>() >= 120,
        "new flows per edge: {spread:?}"
    );
    let spread = new_flows_per_edge_to(&lab, lab.vip6(), 80)?;
    ensure!(
        spread[0] >= 10 && spread[1] >= 10 && spread[2] == 0,
        "new IPv6 flows per edge: {spread:?}"
    );

    let transfers = Transfers::start(&lab.client, lab.vip(), 60, Duration::from_millis(20))?;
    let transfers6 = Transfers::start(&lab.client, lab.vip6(), 30, Duration::from_millis(20))?;
    std::thread::sleep(Duration::from_millis(500));

    // Edge 3 drains: its announcement goes, it keeps forwarding what still reaches it, and no
    // new flow reaches it once the router has moved.
    let answer = foobar::ctl::operate(&lab.edge_socket(2), &Operation::DrainNode)?;
    ensure!(answer.as_ref().is_ok_and(|a| a.contains("draining")), "{answer:?}");
    lab.wait_for_next_hops(&hops(&[0, 1]), Duration::from_secs(5))?;
    let (announced, faults) = announcement(&lab, 2)?;
    ensure!(!announced && faults == vec![Fault::Draining], "{faults:?}");
    ensure!(lab.status(2)?.forwarding, "a draining edge keeps forwarding");
    let spread = new_flows_per_edge(&lab, 40)?;
    ensure!(
        spread[2] == 0 && spread[0] > 0 && spread[1] > 0,
        "new flows while edge 3 drains: {spread:?}"
    );

    // Edge 2 crashes: its link goes down, then its processes die (their sockets' goodbyes
    // cannot leave); BFD takes it out of the router's route long before BGP's 240 s hold time.
    let crashed = Instant::now();
    lab.edges[1].ns.exec(&["ip", "link", "set", "eth0", "down"])?;
    lab.edges[1]
        .foobar
        .take()
        .context("edge 2 runs")?
        .signal(Signal::SIGKILL)?;
    lab.stop_daemon(1);
    lab.wait_for_next_hops(&hops(&[0]), Duration::from_secs(3))?;
    eprintln!(
        "edge 2 crashed: the router stopped using it after {:?}",
        crashed.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));

    // Edge 2 comes back (adopting its pinned data plane) and edge 3 ends its drain.
    lab.edges[1].ns.exec(&["ip", "link", "set", "eth0", "up"])?;
    lab.start_daemon(1)?;
    lab.start_edge(1)?;
    lab.wait_for_next_hops(&hops(&[0, 1]), Duration::from_secs(10))?;
    let answer = foobar::ctl::operate(&lab.edge_socket(2), &Operation::UndrainNode)?;
    ensure!(answer.is_ok(), "{answer:?}");
    lab.wait_for_next_hops(&hops(&[0, 1, 2]), Duration::from_secs(5))?;
    // A restarted FRR (stopped as systemd stops it) imports the table again and announces
    // what foobar left there.
    lab.stop_daemon_gracefully(2)?;
    lab.wait_for_next_hops(&hops(&[0, 1]), Duration::from_secs(5))?;
    lab.start_daemon(2)?;
    lab.wait_for_next_hops(&hops(&[0, 1, 2]), Duration::from_secs(15))?;
    std::thread::sleep(Duration::from_millis(500));

    // Every transfer moved between edges several times and lost nothing.
    let reports = transfers.finish()?;
    ensure!(reports.len() == 60, "{} transfers reported", reports.len());
    let reports6 = transfers6.finish().context("the IPv6 transfers")?;
    ensure!(reports6.len() == 30, "{} IPv6 transfers reported", reports6.len());
    // The crashed edge's flows were black-holed until the router moved them.
    let stalled = reports.iter().map(|r| r.longest_stall).max().unwrap_or_default();
    eprintln!("longest stall of a transfer: {stalled:?}");
    let spread = new_flows_per_edge(&lab, 120)?;
    ensure!(
        spread.iter().all(|n| *n >= 10),
        "new flows per edge after the rejoin: {spread:?}"
    );
    Ok(())
}

#[test]
fn announcements_follow_the_node_and_outlive_restarts() -> Result<()> {
    let mut lab = ScaleLab::build(&[Daemon::Bird, Daemon::Bird], 2)?;
    let both = hops(&[0, 1]);
    // Status reads the session from BIRD once a second.
    let mut sessions = String::new();
    wait_until(
        Duration::from_secs(3),
        "status to show the BGP session established",
        || {
            let a = lab.status(0).ok().and_then(|s| s.announce);
            sessions = format!("{:?}", a.as_ref().map(|a| (&a.sessions, &a.sessions_error)));
            a.is_some_and(|a| a.sessions.iter().any(|s| s.name == "uplink" && s.established()))
        },
    )
    .context(sessions.clone())?;
    let status = lab.status(0)?;
    let privileges = status.privileges.context("privileges")?;
    ensure!(
        privileges.uid != 0 && privileges.control_thread.contains(&"cap_net_admin".to_string()),
        "an announcing edge runs as nobody and keeps cap_net_admin for the table: {privileges:?}"
    );
    let printed = lab.edges[0].ns.exec_direct(
        &foobar_tests::foobar_bin(),
        &["status", "--socket", &lab.edge_socket(0).display().to_string()],
    )?;
    ensure!(
        printed.contains(&format!("VIP {VIP} announced")) && printed.contains("bgp session uplink: Established"),
        "{printed}"
    );

    // Nobody answers ARP for the VIP: the router is the next hop.
    ensure!(!lab.vip_answers_arp()?, "an announcing edge answered ARP for the VIP");

    // The metrics and the status page say the same (read from the client, across the router).
    let metrics = format!(
        "http://{}:{}/metrics",
        foobar_tests::lab::edge_addr(0),
        foobar_tests::lab::METRICS_PORT
    );
    let (_, text) = scrape::fetch(&lab.client, &metrics, false)?;
    let samples = scrape::parse(&text, false)?;
    let vip = VIP.to_string();
    for (name, labels, value) in [
        ("foobar_vip_announced", vec![("vip", vip.as_str())], 1.0),
        ("foobar_vip_announced", vec![("vip", "2001:db8::10")], 1.0),
        ("foobar_vip_announce_faults", vec![("vip", vip.as_str())], 0.0),
        ("foobar_bgp_session_established", vec![("session", "uplink")], 1.0),
        ("foobar_draining", vec![], 0.0),
        ("foobar_vip_claimed", vec![("vip", vip.as_str())], 0.0),
    ] {
        ensure!(
            samples.iter().any(|s| s.name == name) && scrape::sum(&samples, name, &labels) == value,
            "{name}{labels:?} is not {value}:\n{text}"
        );
    }
    let page = lab
        .client
        .exec(&["curl", "-sS", "--max-time", "5", &metrics.replace("/metrics", "/")])?;
    ensure!(
        page.contains("<h2>Announcements</h2>") && page.contains(r#"<td class="up">announced</td>"#),
        "{page}"
    );

    // A restart of foobar (SIGUSR2, the unit's restart signal) leaves the announcement: the
    // router keeps both edges throughout.
    let flapped = AtomicBool::new(false);
    let watching = AtomicBool::new(true);
    let mut old = lab.edges[1].foobar.take().context("edge 2 runs")?;
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(|| {
            while watching.load(Ordering::Relaxed) {
                if lab.next_hops().is_ok_and(|h| h != both) {
                    flapped.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let result = (|| -> Result<()> {
            old.signal(Signal::SIGUSR2)?;
            ensure!(old.wait(Duration::from_secs(5))?, "{}", lab.edge_log(1));
            ensure!(
                lab.table_routes(1)?.contains(&VIP.to_string()),
                "the route left with foobar"
            );
            Ok(())
        })();
        watching.store(false, Ordering::Relaxed);
        result
    })?;
    ensure!(
        !flapped.load(Ordering::Relaxed),
        "the router lost an edge while foobar restarted"
    );
    ensure!(
        lab.edge_log(1).contains("stopping for a restart"),
        "{}",
        lab.edge_log(1)
    );
    lab.start_edge(1)?;
    std::thread::sleep(Duration::from_millis(300));
    ensure!(announcement(&lab, 1)?.0, "announced again after the restart");
    ensure!(lab.next_hops()? == both, "{:?}", lab.next_hops()?);

    // A restarted BIRD learns the table again.
    lab.stop_daemon(1);
    lab.wait_for_next_hops(&hops(&[0]), Duration::from_secs(3))?;
    lab.start_daemon(1)?;
    lab.wait_for_next_hops(&both, Duration::from_secs(10))?;

    // foobar crashes on edge 2: its announcements stay (the data plane forwards on), and
    // `foobar detach --config` removes them with the data plane; a new run starts over.
    lab.edges[1]
        .foobar
        .take()
        .context("edge 2 runs")?
        .signal(Signal::SIGKILL)?;
    std::thread::sleep(Duration::from_millis(300));
    ensure!(lab.next_hops()? == both, "a crashed foobar's announcement went");
    let (config, pins) = (
        lab.edge_config(1).display().to_string(),
        lab.edges[1].pins.path.display().to_string(),
    );
    let said = lab.edges[1].ns.exec_direct(
        &foobar_tests::foobar_bin(),
        &["detach", "--pin-dir", &pins, "--config", &config],
    )?;
    ensure!(said.contains("withdrew 2 announcement(s)"), "{said}");
    ensure!(lab.table_routes(1)?.trim().is_empty(), "{}", lab.table_routes(1)?);
    lab.wait_for_next_hops(&hops(&[0]), Duration::from_secs(3))?;
    lab.start_edge(1)?;
    lab.wait_for_next_hops(&both, Duration::from_secs(5))?;

    // The data plane is detached behind foobar's back: edge 1 withdraws.
    let pin = foobar::dataplane::pin_root(&lab.edges[0].pins.path).join("link_eth0");
    foobar_tests::detach_pinned_link(&pin)?;
    lab.wait_for_next_hops(&hops(&[1]), Duration::from_secs(3))?;
    let (announced, faults) = announcement(&lab, 0)?;
    ensure!(
        !announced
            && faults.contains(&Fault::NotAttached {
                interface: "eth0".into()
            }),
        "{faults:?}"
    );

    // A stop (SIGTERM) withdraws first and serves on for drain_ms.
    let mut stopping = lab.edges[1].foobar.take().context("edge 2 runs")?;
    let asked = Instant::now();
    stopping.signal(Signal::SIGTERM)?;
    lab.wait_for_next_hops(&BTreeSet::new(), Duration::from_secs(3))?;
    ensure!(
        stopping.pid().is_some() && !lab.table_routes(1)?.contains(&VIP.to_string()),
        "withdrawn while still serving"
    );
    ensure!(stopping.wait(Duration::from_secs(5))?, "{}", lab.edge_log(1));
    ensure!(
        asked.elapsed() >= Duration::from_millis(DRAIN_MS),
        "stopped after {:?}, before drain_ms",
        asked.elapsed()
    );

    // Edge 2 starts again; then every backend fails its checks: the VIP is withdrawn.
    lab.start_edge(1)?;
    lab.wait_for_next_hops(&hops(&[1]), Duration::from_secs(5))?;
    for server in &mut lab.servers {
        server.stop();
    }
    lab.wait_for_next_hops(&BTreeSet::new(), Duration::from_secs(5))?;
    let (announced, faults) = announcement(&lab, 1)?;
    ensure!(
        !announced && faults == vec![Fault::ServiceDown { service: "web".into() }],
        "{faults:?}"
    );
    wait_until(Duration::from_secs(1), "the log to say why", || {
        lab.edge_log(1).contains("VIP withdrawn")
    })?;
    Ok(())
}
