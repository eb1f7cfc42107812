//! Real TCP connections through the VIP in network namespaces: spread, stickiness, health
//! checks, drain, backend removal, and control-plane restarts, in IPIP and L2 DSR modes.

use anyhow::{bail, Context, Result};
use foobar::stats;
use foobar_tests::{
    lab::{backend_name, round_trip_all, spread, BackendSetting, LbLab},
    wait_until, EchoClient, EchoServer,
};
use nix::sys::signal::Signal;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

fn backend_active(lab: &LbLab, i: usize) -> Result<bool> {
    let addr = foobar_tests::lab::backend_addr(i);
    let snap = stats::snapshot(&lab.edges[0].pins.path)?;
    Ok(snap.backends.iter().any(|b| b.address == addr && b.active))
}

fn reload(lab: &LbLab, settings: &[BackendSetting]) -> Result<()> {
    let before = lab.edge_log(0).matches("configuration reloaded").count();
    lab.write_edge_config(0, settings)?;
    lab.edges[0]
        .foobar
        .as_ref()
        .context("edge running")?
        .signal(Signal::SIGHUP)?;
    wait_until(Duration::from_secs(5), "the reload", || {
        lab.edge_log(0).matches("configuration reloaded").count() > before
    })
    .with_context(|| lab.edge_log(0))
}

#[test]
fn ipip_spreads_sticks_follows_health_and_survives_restarts() -> Result<()> {
    let mut lab = LbLab::start(3, "ipip")?;

    // b3 decapsulates with generic (skb-mode) XDP, b1 and b2 natively.
    if !lab.backends[2]
        .exec(&["ip", "link", "show", "eth0"])?
        .contains("xdpgeneric")
    {
        bail!("b3 should run generic XDP");
    }

    // Spread: 60 new flows land on every backend.
    let mut conns = lab.connect(60)?;
    let by = spread(&conns);
    for i in 0..3 {
        let got = by.get(&backend_name(i)).copied().unwrap_or(0);
        if got < 5 {
            bail!("backend {} got {got} of 60 flows: {by:?}", backend_name(i));
        }
    }
    round_trip_all(&mut conns, "spread")?;

    // Health: b3's server stops; the checks take it out, new flows avoid it, others live on.
    conns.retain(|c| c.backend != "b3");
    if let Some(mut server) = lab.servers[2].take() {
        server.stop();
    }
    wait_until(Duration::from_secs(5), "b3 to be marked down", || {
        backend_active(&lab, 2).is_ok_and(|a| !a)
    })?;
    let fresh = lab.connect(30)?;
    if fresh.iter().any(|c| c.backend == "b3") {
        bail!("a new flow went to the down backend: {:?}", spread(&fresh));
    }
    round_trip_all(&mut conns, "after b3 went down")?;
    // It comes back when its server does.
    let addr = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), foobar_tests::lab::PORT);
    lab.servers[2] = Some(EchoServer::start(&lab.backends[2], addr, "b3")?);
    wait_until(Duration::from_secs(5), "b3 to be marked up", || {
        backend_active(&lab, 2).unwrap_or(false)
    })?;
    // The backend is marked up before its Maglev slots are published (so no slot ever points
    // at an inactive backend), and publishing a table takes a while on a slow (emulated) CPU:
    // new flows must reach it once the table is out. Every connection meanwhile must work.
    let mut fresh = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fresh.iter().any(|c: &EchoClient| c.backend == "b3") {
        if Instant::now() > deadline {
            bail!("b3 got no new flows within 10 s of recovering: {:?}", spread(&fresh));
        }
        fresh.extend(lab.connect(10).context("a new connection failed while b3 recovered")?);
    }
    round_trip_all(&mut fresh, "while b3 recovered")?;

    // Drain: b1 at weight 0 takes no new flows but keeps its established ones.
    let all = [BackendSetting {
        present: true,
        weight: 100,
    }; 3];
    let mut drained = all;
    drained[0].weight = 0;
    reload(&lab, &drained)?;
    let fresh = lab.connect(30)?;
    if fresh.iter().any(|c| c.backend == "b1") {
        bail!("a new flow went to the drained backend: {:?}", spread(&fresh));
    }
    if !conns.iter().any(|c| c.backend == "b1") {
        bail!("no established flow on b1 to check draining with");
    }
    round_trip_all(&mut conns, "while b1 drains")?;

    // A bad file on SIGHUP is refused with its reason; the running configuration stays.
    std::fs::write(
        lab.edge_config(0),
        "[node]\nname = \"edge\"\ninterfaces = [\"eth0\"]\nbogus = 1\n",
    )?;
    lab.edges[0]
        .foobar
        .as_ref()
        .context("edge running")?
        .signal(Signal::SIGHUP)?;
    wait_until(Duration::from_secs(5), "the refusal", || {
        lab.edge_log(0).contains("reload refused")
    })?;
    if !lab.edge_log(0).contains("unknown field `bogus`") {
        bail!("the refusal does not say why:\n{}", lab.edge_log(0));
    }
    let fresh = lab.connect(20)?;
    if fresh.iter().any(|c| c.backend == "b1") {
        bail!(
            "the refused file changed the running configuration: {:?}",
            spread(&fresh)
        );
    }
    round_trip_all(&mut conns, "after a refused reload")?;

    // Removing b2 from the configuration with 100 connections open breaks none of the others.
    reload(&lab, &all)?;
    let mut many = lab.connect(100)?;
    let mut without_b2 = all;
    without_b2[1].present = false;
    reload(&lab, &without_b2)?;
    many.retain(|c| c.backend != "b2");
    round_trip_all(&mut many, "after b2 was removed")?;
    conns.retain(|c| c.backend != "b2");
    round_trip_all(&mut conns, "after b2 was removed (older flows)")?;

    // Restarts: SIGTERM, then kill -9, with connections open; forwarding never stops.
    reload(&lab, &all)?;
    let mut held = lab.connect(30)?;
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let mut edge = lab.edges[0].foobar.take().context("edge running")?;
        edge.signal(signal)?;
        edge.wait(Duration::from_secs(5))?;
        round_trip_all(&mut held, &format!("while foobar is stopped by {signal}"))?;
        round_trip_all(&mut many, &format!("while foobar is stopped by {signal} (older)"))?;
        lab.start_edge(0)?;
        round_trip_all(&mut held, &format!("after restart from {signal}"))?;
        let mut fresh = lab
            .connect(10)
            .with_context(|| format!("new connections after restart from {signal}"))?;
        round_trip_all(&mut fresh, &format!("new after restart from {signal}"))?;
    }
    if !lab.edge_log(0).contains("replaced the XDP program in the pinned link") {
        bail!(
            "the restarted foobar did not adopt the pinned link:\n{}",
            lab.edge_log(0)
        );
    }
    Ok(())
}

#[test]
fn l2_dsr_spreads_real_connections() -> Result<()> {
    let lab = LbLab::start(3, "l2dsr")?;
    let mut conns = lab.connect(45)?;
    let by = spread(&conns);
    if by.len() != 3 {
        bail!("flows did not reach all three backends: {by:?}");
    }
    round_trip_all(&mut conns, "l2dsr")?;
    // An HTTP request through the VIP reaches a backend's server.
    let out = lab
        .client
        .exec(&["curl", "-s", "--max-time", "5", &format!("http://{}/", lab.vip())])?;
    if !out.starts_with("hello from b") {
        bail!("unexpected HTTP answer: {out:?}");
    }
    // `foobar stats` reads the same story from the pinned maps.
    let pin_dir = lab.edges[0].pins.path.display().to_string();
    let json = foobar_tests::sh(&[
        &foobar_tests::foobar_bin().display().to_string(),
        "stats",
        "--json",
        "--pin-dir",
        &pin_dir,
    ])?;
    let stats: serde_json::Value = serde_json::from_str(&json)?;
    let counter = |name: &str| {
        stats["counters"]
            .as_array()
            .and_then(|c| c.iter().find(|e| e[0] == name))
            .and_then(|e| e[1].as_u64())
    };
    if counter("transmitted").unwrap_or(0) < 45 || counter("conntrack_miss").unwrap_or(0) < 45 {
        bail!("stats do not show the traffic:\n{json}");
    }
    let backends = stats["backends"].as_array().map_or(0, |b| {
        b.iter().filter(|b| b["traffic"]["packets"].as_u64() > Some(0)).count()
    });
    if backends != 3 {
        bail!("stats should show traffic on 3 backends:\n{json}");
    }
    // Given the configuration, services and their backends go by the service's name.
    let config = lab.edge_config(0).display().to_string();
    let text = foobar_tests::sh(&[
        &foobar_tests::foobar_bin().display().to_string(),
        "stats",
        "--pin-dir",
        &pin_dir,
        "--config",
        &config,
    ])?;
    let named = text
        .lines()
        .filter(|l| l.trim_start().starts_with("10.10.0.1") && l.contains(" web "))
        .count();
    if named != 3 || !text.lines().any(|l| l.trim_start().starts_with("web ")) {
        bail!("stats --config does not name the service:\n{text}");
    }
    Ok(())
}
