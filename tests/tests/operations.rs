//! Runtime operations through real traffic on two edges with VRRP in front of three IPIP
//! backends: `foobar backend drain` takes a backend out of new flows while its established
//! ones carry on (and a reload keeps the drain), `enable` brings it back; `clear-health` marks
//! a failed backend up at once and its checks start over; `foobar vrrp step-down` hands the
//! VIP to the peer without dropping a connection and `resume` takes it back. Each shows in
//! `foobar status` and the metrics; a request naming what does not exist is refused.

use anyhow::{ensure, Context, Result};
use foobar::health::Standing;
use foobar_tests::{
    foobar_bin,
    lab::{backend_addr, edge_addr, round_trip_all, spread, LabSpec, LbLab, METRICS_PORT},
    scrape, wait_until,
};
use nix::sys::signal::Signal;
use std::{net::Ipv4Addr, time::Duration};

/// `foobar ARGS --socket EDGE_SOCKET`: whether it succeeded, and everything it printed.
fn foobar(lab: &LbLab, edge: usize, args: &[&str]) -> Result<(bool, String)> {
    let out = std::process::Command::new(foobar_bin())
        .args(args)
        .arg("--socket")
        .arg(lab.edge_socket(edge))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}

/// `foobar ARGS` on every edge, each expected to succeed.
fn on_both(lab: &LbLab, args: &[&str]) -> Result<()> {
    for edge in 0..lab.edges.len() {
        let (ok, out) = foobar(lab, edge, args)?;
        ensure!(ok, "foobar {args:?} on edge {edge} failed: {out}");
    }
    Ok(())
}

/// Backend `addr` of service `web` as edge `edge`'s status shows it.
fn backend(lab: &LbLab, edge: usize, addr: Ipv4Addr) -> Result<foobar::ctl::BackendStatus> {
    let status = lab.status(edge)?;
    let svc = status
        .services
        .iter()
        .find(|s| s.name == "web")
        .context("no service web")?;
    svc.backends
        .iter()
        .find(|b| b.address == addr)
        .cloned()
        .with_context(|| format!("no backend {addr}"))
}

/// The value of `foobar_backend_drained_by_operator` for `addr` on edge `edge`.
fn drained_metric(lab: &LbLab, edge: usize, addr: Ipv4Addr) -> Result<f64> {
    let url = format!("http://{}:{METRICS_PORT}/metrics", edge_addr(edge));
    let (_, text) = scrape::fetch(&lab.client, &url, false)?;
    let samples = scrape::parse(&text, false)?;
    Ok(scrape::sum(
        &samples,
        "foobar_backend_drained_by_operator",
        &[("service", "web"), ("backend", &addr.to_string())],
    ))
}

#[test]
fn drain_clear_health_and_step_down_work_through_real_traffic() -> Result<()> {
    let mut lab = LbLab::build(LabSpec::pair(3, true, false))?;
    let master = lab.wait_for_master(Duration::from_secs(10))?;
    let b1 = backend_addr(0);
    let b1s = b1.to_string();
    let mut conns = lab.connect(30)?;
    ensure!(
        conns.iter().any(|c| c.backend == "b1"),
        "no flow on b1: {:?}",
        spread(&conns)
    );

    // Drain b1 on both edges: no new flows, the established ones go on.
    on_both(&lab, &["backend", "drain", "web", &b1s])?;
    let fresh = lab.connect(30)?;
    ensure!(
        !fresh.iter().any(|c| c.backend == "b1"),
        "a new flow went to drained b1: {:?}",
        spread(&fresh)
    );
    round_trip_all(&mut conns, "while b1 is drained")?;
    let shown = backend(&lab, master, b1)?;
    ensure!(
        shown.standing == Standing::Drained && shown.drained_by_operator && shown.weight == 100,
        "status: {shown:?}"
    );
    ensure!(
        drained_metric(&lab, master, b1)? == 1.0,
        "the metric does not show the drain"
    );
    let printed = foobar(&lab, master, &["status"])?.1;
    ensure!(printed.contains(&format!("{b1} drained by an operator")), "{printed}");
    let page = lab
        .client
        .exec(&["curl", "-sS", &format!("http://{}:{METRICS_PORT}/", edge_addr(master))])?;
    ensure!(
        page.contains(&format!(
            "<td>{b1}</td><td class=\"drained\">drained by an operator</td>"
        )),
        "the status page does not show the drain"
    );

    // A reload keeps the drain.
    let before = lab.edge_log(master).matches("configuration reloaded").count();
    lab.edges[master]
        .foobar
        .as_ref()
        .context("master runs")?
        .signal(Signal::SIGHUP)?;
    wait_until(Duration::from_secs(5), "the reload", || {
        lab.edge_log(master).matches("configuration reloaded").count() > before
    })?;
    ensure!(
        backend(&lab, master, b1)?.drained_by_operator,
        "the reload forgot the drain"
    );
    let fresh = lab.connect(30)?;
    ensure!(
        !fresh.iter().any(|c| c.backend == "b1"),
        "after the reload: {:?}",
        spread(&fresh)
    );

    // What does not exist is refused, saying what does.
    let (ok, out) = foobar(&lab, master, &["backend", "drain", "web", "10.10.0.99"])?;
    ensure!(
        !ok && out.contains("has no backend 10.10.0.99") && out.contains(&b1s),
        "{out}"
    );
    let (ok, out) = foobar(&lab, master, &["vrrp", "step-down", "nope"])?;
    ensure!(
        !ok && out.contains("no vrrp instance \"nope\" (instances: vip)"),
        "{out}"
    );

    // Enable: new flows reach b1 again.
    on_both(&lab, &["backend", "enable", "web", &b1s])?;
    let fresh = lab.connect(30)?;
    ensure!(
        fresh.iter().any(|c| c.backend == "b1"),
        "b1 takes no new flow after enable: {:?}",
        spread(&fresh)
    );
    ensure!(
        drained_metric(&lab, master, b1)? == 0.0,
        "the metric still shows the drain"
    );

    // Clear health: b3 down (its server stopped) is marked up at once, then its checks, started
    // over, put it down again.
    let b3 = backend_addr(2);
    if let Some(server) = lab.servers[2].as_mut() {
        server.stop();
    }
    wait_until(Duration::from_secs(5), "b3 down", || {
        backend(&lab, master, b3).is_ok_and(|b| b.standing == Standing::Down)
    })?;
    let reason = backend(&lab, master, b3)?.down_reason;
    ensure!(
        reason.as_deref().is_some_and(|r| r.contains("connect")),
        "down reason: {reason:?}"
    );
    let (ok, out) = foobar(&lab, master, &["backend", "clear-health", "web", &b3.to_string()])?;
    ensure!(
        ok && out.contains("marked up") && out.contains("1 check(s) started over"),
        "{out}"
    );
    let cleared = backend(&lab, master, b3)?;
    ensure!(
        cleared.standing == Standing::Active,
        "right after clear-health: {cleared:?}"
    );
    wait_until(Duration::from_secs(5), "b3 down again", || {
        backend(&lab, master, b3).is_ok_and(|b| b.standing == Standing::Down)
    })?;

    // Step down: the peer takes the VIP over at once; no connection breaks; resume takes it
    // back (preemption, the higher priority).
    let mut conns: Vec<_> = conns.into_iter().filter(|c| c.backend != "b3").collect();
    let peer = 1 - master;
    let (ok, out) = foobar(&lab, master, &["vrrp", "step-down", "vip"])?;
    ensure!(ok && out.contains("stepped down"), "{out}");
    wait_until(Duration::from_millis(500), "the peer to take over", || {
        lab.vrrp_state(peer) == "master"
    })?;
    let stepped = lab.status(master)?;
    let v = stepped.vrrp.first().context("no vrrp instance")?;
    ensure!(
        v.state.name() == "fault" && v.faults_text().contains("stepped down by an operator"),
        "{v:?}"
    );
    round_trip_all(&mut conns, "after the step-down")?;
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        lab.vrrp_state(master) == "fault",
        "the stepped-down edge came back by itself"
    );
    on_both(&lab, &["vrrp", "resume", "vip"])?;
    wait_until(Duration::from_secs(2), "the resumed edge to preempt", || {
        lab.vrrp_state(master) == "master"
    })?;
    round_trip_all(&mut conns, "after the resume")?;
    Ok(())
}
