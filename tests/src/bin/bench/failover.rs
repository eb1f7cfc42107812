//! `cargo xtask bench failover`: takeover time after a crash and after a graceful stop of the
//! master, and the share of established connections that survive each, for two foobar edges
//! and for the keepalived + HAProxy (TCP mode) pair they replace, with the same 100 ms adverts,
//! in one run. A crash is the master node going away: its processes killed and its link down.
//! Takeover is the time from the event to the new master's notify command (both run one).

use crate::Row;
use anyhow::{Context, Result};
use foobar_tests::{
    classic::ClassicLab,
    lab::{master_since, LabSpec, LbLab},
    transfer::Transfers,
    ChildGuard, Netns,
};
use nix::sys::signal::Signal;
use std::{
    thread::sleep,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const INTERVAL_MS: u32 = foobar_tests::lab::PAIR_INTERVAL_MS;
const ROUNDS: usize = 3;
const CONNECTIONS: usize = 100;
const PACE: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, PartialEq)]
enum Event {
    Crash,
    GracefulStop,
}

/// One measured failover.
pub struct Takeover {
    /// Time from the event to the new master, ms.
    pub ms: f64,
    /// Share of the transfers that completed intact, %.
    pub survived_percent: f64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs transfers, triggers the event, waits for the new master's notify, and counts the
/// transfers that completed intact.
pub fn measure(
    client: &Netns,
    vip: std::net::SocketAddr,
    trigger: impl FnOnce() -> Result<()>,
    new_master_notes: impl Fn() -> String,
) -> Result<Takeover> {
    let transfers = Transfers::start(client, vip, CONNECTIONS, PACE)?;
    sleep(Duration::from_millis(500));
    let at = now_ms();
    trigger()?;
    let mut became = None;
    foobar_tests::wait_until(Duration::from_secs(5), "the new master's notify", || {
        became = master_since(&new_master_notes(), at);
        became.is_some()
    })?;
    sleep(Duration::from_secs(2));
    let (reports, _) = transfers.outcome();
    Ok(Takeover {
        ms: became.unwrap_or(at).saturating_sub(at) as f64,
        survived_percent: reports.len() as f64 * 100.0 / CONNECTIONS as f64,
    })
}

fn foobar_round(event: Event) -> Result<Takeover> {
    let mut lab = LbLab::build(LabSpec::pair(3, true, false))?;
    let master = lab.edges[0].foobar.take().context("edge1 running")?;
    measure(
        &lab.client,
        lab.vip(),
        || fail(event, &lab.edges[0].ns, &master, &[]),
        || lab.notifications(1),
    )
}

/// Makes the master node fail. A crash takes its link down first (keepalived's VRRP process
/// says goodbye with priority 0 when its parent dies, which a crashed node cannot do), then
/// kills `vrrp` and `others`; a graceful stop sends `vrrp` SIGTERM and leaves the rest running.
fn fail(event: Event, ns: &Netns, vrrp: &ChildGuard, others: &[&ChildGuard]) -> Result<()> {
    match event {
        Event::Crash => {
            ns.exec(&["ip", "link", "set", "eth0", "down"])?;
            for p in std::iter::once(vrrp).chain(others.iter().copied()) {
                p.signal(Signal::SIGKILL)?;
            }
        }
        Event::GracefulStop => vrrp.signal(Signal::SIGTERM)?,
    }
    Ok(())
}

fn classic_round(event: Event) -> Result<Takeover> {
    let mut lab = ClassicLab::start(3, INTERVAL_MS)?;
    let lb1 = &mut lab.lbs[0];
    let keepalived = lb1.keepalived.take().context("keepalived running")?;
    let haproxy = lb1.haproxy.take().context("haproxy running")?;
    let notes = lab.scratch.file("lb2.notify");
    measure(
        &lab.client,
        lab.vip(),
        || fail(event, &lab.lbs[0].ns, &keepalived, &[&haproxy]),
        || std::fs::read_to_string(&notes).unwrap_or_default(),
    )
}

/// The median of `v` (not empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Rounds of each event for both systems, alternating, reported as medians.
pub fn run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let keepalived = crate::peer_version("keepalived", &["keepalived", "--version"])?;
    let haproxy = crate::peer_version("HAProxy", &["haproxy", "-v"])?;
    for (event, label) in [(Event::Crash, "crash"), (Event::GracefulStop, "graceful_stop")] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            eprintln!("failover bench: {label} round {}", round + 1);
            ours.push(foobar_round(event)?);
            theirs.push(classic_round(event)?);
        }
        let baseline = format!("{keepalived} + {haproxy} (TCP mode), {INTERVAL_MS} ms adverts");
        rows.push(Row {
            name: format!("takeover_after_{label}"),
            value: median(ours.iter().map(|t| t.ms).collect()),
            unit: "ms",
            baseline: baseline.clone(),
            baseline_value: median(theirs.iter().map(|t| t.ms).collect()),
        });
        rows.push(Row {
            name: format!("connections_surviving_{label}"),
            value: median(ours.iter().map(|t| t.survived_percent).collect()),
            unit: "%",
            baseline,
            baseline_value: median(theirs.iter().map(|t| t.survived_percent).collect()),
        });
    }
    Ok(rows)
}
