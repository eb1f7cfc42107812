//! `cargo xtask bench scaleout`: announcing edges behind a BIRD router (the scale-out lab)
//! under one fixed client load, beside the VRRP pair on the same kind of lab. Per edge count
//! (3, 2, 1: the others drained), the busiest edge's share of the forwarded packets; the time
//! from an edge crash (link down, processes killed) until the router stops using it; from
//! `foobar drain` until no new flow reaches the edge; from `foobar undrain` until the router
//! uses it again; and the share of long-lived connections that survive each. The VRRP pair's
//! baselines: everything through the master; the takeover after a crash, after `foobar vrrp
//! step-down`, and the preempting return after `vrrp resume`.

use crate::{
    failover::{measure, median, Takeover},
    Row,
};
use anyhow::{Context, Result};
use foobar::operate::Operation;
use foobar_tests::{
    lab::{edge_addr, LabSpec, LbLab},
    scalelab::{Daemon, ScaleLab},
    transfer::Transfers,
    wait_until, Netns,
};
use nix::sys::signal::Signal;
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    thread::sleep,
    time::{Duration, Instant},
};

const EDGES: usize = 3;
const CONNECTIONS: usize = 150;
const PACE: Duration = Duration::from_millis(20);
const ROUNDS: usize = 3;

/// Forwarded packets of each data plane (by pin directory) so far.
fn packets(pins: &[&std::path::Path]) -> Result<Vec<u64>> {
    pins.iter()
        .map(|pin_dir| {
            let snapshot = foobar::stats::snapshot(pin_dir)?;
            Ok(snapshot.services.iter().map(|s| s.traffic.packets).sum())
        })
        .collect()
}

/// The busiest of the edges' (by pin directory) share (%) of the packets forwarded under the
/// fixed load from `client` for 3 s.
fn busiest_share(client: &Netns, vip: SocketAddr, pins: &[&std::path::Path]) -> Result<f64> {
    let transfers = Transfers::start(client, vip, CONNECTIONS, PACE)?;
    let before = packets(pins)?;
    sleep(Duration::from_secs(3));
    let after = packets(pins)?;
    transfers.finish()?;
    let forwarded: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: u64 = forwarded.iter().sum();
    Ok(forwarded.iter().max().copied().unwrap_or(0) as f64 * 100.0 / total.max(1) as f64)
}

/// Runs the load, triggers `event`, times it until `done` holds (polled every 5 ms), and counts
/// the transfers that complete intact.
fn timed(lab: &ScaleLab, event: impl FnOnce() -> Result<()>, done: impl Fn() -> bool) -> Result<Takeover> {
    let transfers = Transfers::start(&lab.client, lab.vip(), CONNECTIONS, PACE)?;
    sleep(Duration::from_millis(500));
    let at = Instant::now();
    event()?;
    let deadline = at + Duration::from_secs(10);
    while !done() {
        if Instant::now() > deadline {
            anyhow::bail!("the router did not follow within 10 s");
        }
        sleep(Duration::from_millis(5));
    }
    let ms = at.elapsed().as_secs_f64() * 1000.0;
    sleep(Duration::from_secs(2));
    let (reports, _) = transfers.outcome();
    Ok(Takeover {
        ms,
        survived_percent: reports.len() as f64 * 100.0 / CONNECTIONS as f64,
    })
}

/// Carries out `op` on the edge listening on `socket`; its refusal is an error.
fn operate(socket: &std::path::Path, op: Operation) -> Result<()> {
    foobar::ctl::operate(socket, &op)?.map_err(anyhow::Error::msg)?;
    Ok(())
}

fn hops(edges: &[usize]) -> BTreeSet<Ipv4Addr> {
    edges.iter().map(|i| edge_addr(*i)).collect()
}

/// One round on a fresh scale-out lab: the busiest share with 3, 2 and 1 active edges, then
/// drain, undrain and crash timings.
fn scale_round() -> Result<(Vec<f64>, [Takeover; 3])> {
    let mut lab = ScaleLab::build(&[Daemon::Bird; EDGES], 3)?;
    let pins: Vec<&std::path::Path> = lab.edges.iter().map(|e| e.pins.path.as_path()).collect();
    let share = |lab: &ScaleLab| busiest_share(&lab.client, lab.vip(), &pins);
    let mut shares = vec![share(&lab)?];
    for drained in [2, 1] {
        operate(&lab.edge_socket(drained), Operation::DrainNode)?;
        lab.wait_for_next_hops(&hops(&(0..drained).collect::<Vec<_>>()), Duration::from_secs(5))?;
        shares.push(share(&lab)?);
    }
    for edge in [1, 2] {
        operate(&lab.edge_socket(edge), Operation::UndrainNode)?;
    }
    lab.wait_for_next_hops(&hops(&[0, 1, 2]), Duration::from_secs(5))?;
    let drain = timed(
        &lab,
        || operate(&lab.edge_socket(2), Operation::DrainNode),
        || lab.next_hops().is_ok_and(|h| h == hops(&[0, 1])),
    )?;
    let join = timed(
        &lab,
        || operate(&lab.edge_socket(2), Operation::UndrainNode),
        || lab.next_hops().is_ok_and(|h| h == hops(&[0, 1, 2])),
    )?;
    let foobar = lab.edges[1].foobar.take().context("edge 2 runs")?;
    let crash = timed(
        &lab,
        || {
            lab.edges[1].ns.exec(&["ip", "link", "set", "eth0", "down"])?;
            foobar.signal(Signal::SIGKILL)?;
            for daemon in &lab.edge_daemons[1] {
                daemon.signal(Signal::SIGKILL)?;
            }
            Ok(())
        },
        || lab.next_hops().is_ok_and(|h| h == hops(&[0, 2])),
    )?;
    lab.stop_daemon(1);
    Ok((shares, [crash, drain, join]))
}

/// One round on a fresh VRRP pair: the busiest edge's share, then the master crashes; on
/// another pair it steps down, then resumes and takes the VIP back (preemption).
fn vrrp_round() -> Result<(f64, [Takeover; 3])> {
    let mut lab = LbLab::build(LabSpec::pair(3, true, false))?;
    let master = lab.edges[0].foobar.take().context("edge1 running")?;
    let crash = measure(
        &lab.client,
        lab.vip(),
        || {
            lab.edges[0].ns.exec(&["ip", "link", "set", "eth0", "down"])?;
            master.signal(Signal::SIGKILL)?;
            Ok(())
        },
        || lab.notifications(1),
    )?;
    drop(lab);
    let lab = LbLab::build(LabSpec::pair(3, true, false))?;
    let pins: Vec<&std::path::Path> = lab.edges.iter().map(|e| e.pins.path.as_path()).collect();
    let share = busiest_share(&lab.client, lab.vip(), &pins)?;
    let op = |op: Operation| operate(&lab.edge_socket(0), op);
    let step_down = measure(
        &lab.client,
        lab.vip(),
        || op(Operation::StepDown { instance: "vip".into() }),
        || lab.notifications(1),
    )?;
    let resume = measure(
        &lab.client,
        lab.vip(),
        || op(Operation::Resume { instance: "vip".into() }),
        // The first edge's own notify log says when it became master again.
        || lab.notifications(0),
    )?;
    wait_until(Duration::from_secs(5), "edge1 master again", || {
        lab.vrrp_state(0) == "master"
    })?;
    Ok((share, [crash, step_down, resume]))
}

/// Rounds of both, reported as medians.
pub fn run() -> Result<Vec<Row>> {
    let bird = crate::peer_version("BIRD", &["bird", "--version"])?;
    let mut shares: Vec<Vec<f64>> = vec![Vec::new(); EDGES];
    let mut ours: Vec<[Takeover; 3]> = Vec::new();
    let mut pair: Vec<[Takeover; 3]> = Vec::new();
    let mut pair_shares = Vec::new();
    for round in 0..ROUNDS {
        eprintln!("scaleout bench: round {}", round + 1);
        let (s, t) = scale_round()?;
        for (i, share) in s.into_iter().enumerate() {
            shares[i].push(share);
        }
        ours.push(t);
        let (share, takeovers) = vrrp_round()?;
        pair_shares.push(share);
        pair.push(takeovers);
    }
    let baseline = "the VRRP pair (100 ms adverts), same load".to_string();
    let mut rows = Vec::new();
    let pair_share = median(pair_shares);
    for (i, s) in shares.into_iter().enumerate() {
        let edges = EDGES - i;
        rows.push(Row {
            name: format!("busiest_edge_share_{edges}_edges"),
            value: median(s),
            unit: "%",
            baseline: format!("{baseline}: the master's share"),
            baseline_value: pair_share,
        });
    }
    for (k, (event, vrrp_event)) in [
        ("crash", "master crash"),
        ("drain", "vrrp step-down"),
        ("join", "vrrp resume (preempt)"),
    ]
    .into_iter()
    .enumerate()
    {
        let what = if event == "join" { "until_used" } else { "until_unused" };
        rows.push(Row {
            name: format!("{event}_{what}"),
            value: median(ours.iter().map(|t| t[k].ms).collect()),
            unit: "ms",
            baseline: format!("{baseline}: takeover after {vrrp_event}; {bird} on the router, 100 ms BFD"),
            baseline_value: median(pair.iter().map(|t| t[k].ms).collect()),
        });
        rows.push(Row {
            name: format!("connections_surviving_{event}"),
            value: median(ours.iter().map(|t| t[k].survived_percent).collect()),
            unit: "%",
            baseline: format!("{baseline}: {vrrp_event}"),
            baseline_value: median(pair.iter().map(|t| t[k].survived_percent).collect()),
        });
    }
    Ok(rows)
}
