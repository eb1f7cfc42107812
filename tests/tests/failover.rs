//! Two edges electing the VIP's owner with VRRP, a client and backends on one bridge: the
//! master crashes or stops while 200 long-lived transfers run through the VIP, the old master
//! comes back with and without preemption, the VRRP path is cut (split brain) and healed, and
//! hostile adverts arrive. Takeover times come from the new master's own transition record.

use anyhow::{bail, ensure, Context, Result};
use foobar::{
    track::Fault,
    vrrp::{
        election::{Reason, State},
        master_down_interval_cs, seal, Advert, Ipv4Checksum, IPPROTO_VRRP,
    },
};
use foobar_tests::{
    lab::{LabSpec, LbLab, PAIR_INTERVAL_MS, PAIR_PRIORITIES, VIP},
    transfer::Transfers,
    wait_until,
};
use nix::sys::signal::Signal;
use std::{
    net::{IpAddr, Ipv4Addr},
    thread::sleep,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const INTERVAL_MS: u32 = PAIR_INTERVAL_MS;
const PRIORITIES: [u8; 2] = PAIR_PRIORITIES;
const TRANSFERS: usize = 200;
const PACE: Duration = Duration::from_millis(50);

fn lab(preempt: bool) -> Result<LbLab> {
    let lab = LbLab::build(LabSpec::pair(3, preempt, false))?;
    let master = lab.wait_for_master(Duration::from_secs(10))?;
    ensure!(master == 0, "the priority-150 edge should be master");
    Ok(lab)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Stops edge `i`'s foobar with `signal` and returns when (Unix ms) the signal was sent.
fn stop_edge(lab: &mut LbLab, i: usize, signal: Signal) -> Result<u64> {
    let mut child = lab.edges[i].foobar.take().context("edge running")?;
    let sent = now_ms();
    child.signal(signal)?;
    child.wait(Duration::from_secs(5))?;
    Ok(sent)
}

/// Waits until edge `i` is master and returns when it became master (Unix ms).
fn became_master(lab: &LbLab, i: usize) -> Result<u64> {
    wait_until(Duration::from_secs(5), "the backup to take over", || {
        lab.vrrp_state(i) == "master"
    })
    .with_context(|| lab.edge_log(i))?;
    let status = lab.status(i)?;
    Ok(status.vrrp[0].since_unix_ms)
}

fn check_transfers(transfers: Transfers) -> Result<()> {
    let reports = transfers.finish()?;
    ensure!(reports.len() == TRANSFERS, "{} transfers reported", reports.len());
    let backends: std::collections::BTreeSet<&str> = reports.iter().map(|r| r.backend.as_str()).collect();
    ensure!(
        backends.len() == 3,
        "transfers should spread over the backends: {backends:?}"
    );
    ensure!(
        reports.iter().all(|r| r.bytes > 0),
        "every transfer moved data through the takeover"
    );
    // A takeover costs a few TCP retransmissions, not a neighbour-cache timeout.
    let stall = reports.iter().map(|r| r.longest_stall).max().unwrap_or_default();
    eprintln!("longest stall of a transfer: {stall:?}");
    ensure!(stall < Duration::from_secs(3), "a transfer stalled for {stall:?}");
    Ok(())
}

/// VIP packets edge `i`'s data plane has balanced so far.
fn balanced(lab: &LbLab, i: usize) -> Result<u64> {
    let snap = foobar::stats::snapshot(&lab.edges[i].pins.path)?;
    Ok(snap.services.iter().map(|s| s.traffic.packets).sum())
}

/// Waits until edge `i` balances the running transfers: `packets` more VIP packets than now.
fn carries(lab: &LbLab, i: usize, packets: u64) -> Result<()> {
    let before = balanced(lab, i)?;
    wait_until(
        Duration::from_secs(5),
        &format!("edge{} to carry the transfers", i + 1),
        || balanced(lab, i).is_ok_and(|n| n >= before + packets),
    )
}

#[test]
fn crash_of_the_master_moves_the_vip_and_every_transfer_survives() -> Result<()> {
    let mut lab = lab(true)?;
    let transfers = Transfers::start(&lab.client, lab.vip(), TRANSFERS, PACE)?;
    carries(&lab, 0, 200)?;
    ensure!(balanced(&lab, 1)? == 0, "only the master balances");
    let killed = stop_edge(&mut lab, 0, Signal::SIGKILL)?;
    let took = became_master(&lab, 1)?.saturating_sub(killed);
    let limit = master_down_interval_cs(PRIORITIES[1], (INTERVAL_MS / 10) as u16) as u64 * 10 + 100;
    eprintln!("takeover after kill -9: {took} ms (limit {limit} ms)");
    ensure!(took <= limit, "takeover took {took} ms, more than {limit} ms");
    carries(&lab, 1, 1000).context("the new master does not carry the established transfers")?;
    check_transfers(transfers)?;
    // The new master announced itself: the client's neighbour entry for the VIP moved.
    let neigh = lab.client.exec(&["ip", "neigh", "show", &VIP.to_string()])?;
    let mac2 = foobar_tests::mac_of(&lab.edges[1].ns, "eth0")?;
    let mac2 = mac2.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    ensure!(
        neigh.contains(&mac2),
        "client neighbour entry {neigh:?} is not edge2's {mac2}"
    );
    // Only the new master answers ARP for the VIP now: the crashed edge's claim was a lease its
    // dead control plane no longer renews. Its data plane still sees the requests (counted as
    // lapsed claims), so the probe reaches it.
    let counter = |i: usize, name: &str| -> Result<u64> {
        let snap = foobar::stats::snapshot(&lab.edges[i].pins.path)?;
        Ok(snap.counters.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v))
    };
    let (replied1, lapsed1, replied2) = (
        counter(0, "arp_replied")?,
        counter(0, "claim_lapsed")?,
        counter(1, "arp_replied")?,
    );
    lab.client
        .exec(&["ip", "neigh", "flush", "to", &VIP.to_string(), "dev", "eth0"])?;
    let vip_addr = lab.vip();
    lab.client
        .run(move || foobar_tests::EchoClient::connect(vip_addr).map(drop))??;
    wait_until(Duration::from_secs(3), "edge2 to answer ARP for the VIP", || {
        counter(1, "arp_replied").is_ok_and(|n| n > replied2)
    })?;
    ensure!(
        counter(0, "arp_replied")? == replied1 && counter(0, "claim_lapsed")? > lapsed1,
        "the crashed edge still answers ARP for the VIP"
    );
    // The crashed edge's data plane carries on without its control plane (pinned program and
    // maps): new connections sent to its MAC are balanced by it and reach a backend.
    let mac1 = foobar_tests::mac_of(&lab.edges[0].ns, "eth0")?;
    let mac1 = mac1.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let vip = VIP.to_string();
    lab.client.exec(&[
        "ip",
        "neigh",
        "replace",
        &vip,
        "lladdr",
        &mac1,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    let before = balanced(&lab, 0)?;
    let vip_addr = lab.vip();
    let mut through_edge1 = lab.client.run(move || {
        (0..10)
            .map(|_| foobar_tests::EchoClient::connect(vip_addr))
            .collect::<Result<Vec<_>>>()
    })??;
    for (i, c) in through_edge1.iter_mut().enumerate() {
        c.round_trip(&format!("through the crashed edge {i}"))?;
    }
    lab.client.exec(&["ip", "neigh", "del", &vip, "dev", "eth0"])?;
    ensure!(
        balanced(&lab, 0)? >= before + 10,
        "the crashed edge's data plane did not balance the connections sent to it"
    );
    Ok(())
}

#[test]
fn graceful_stop_hands_over_within_one_interval() -> Result<()> {
    let mut lab = lab(true)?;
    let transfers = Transfers::start(&lab.client, lab.vip(), TRANSFERS, PACE)?;
    carries(&lab, 0, 200)?;
    let stopped = stop_edge(&mut lab, 0, Signal::SIGTERM)?;
    let took = became_master(&lab, 1)?.saturating_sub(stopped);
    // The backup takes over after its skew time (RFC 5798: (256 - priority) / 256 of an
    // interval, 61 ms here): within one interval.
    let limit = INTERVAL_MS as u64;
    eprintln!("takeover after a graceful stop: {took} ms (limit {limit} ms)");
    ensure!(took <= limit, "takeover took {took} ms, more than {limit} ms");
    carries(&lab, 1, 1000)?;
    check_transfers(transfers)?;
    ensure!(
        lab.edge_log(0).contains("\"state\":\"initialize\"") || lab.edge_log(0).contains("reason\":\"shutdown"),
        "edge1 did not log its shutdown transition:\n{}",
        lab.edge_log(0)
    );
    Ok(())
}

/// Stops edge 1 (the master) with `signal`, starts it again at once and checks that it resumes
/// as master while edge 2 never moves (`transitions` is edge 2's count before): it returns
/// edge 1's log of the stopped process.
fn restart_resumes(lab: &mut LbLab, signal: Signal, transitions: u64) -> Result<String> {
    stop_edge(lab, 0, signal)?;
    let old_log = lab.edge_log(0);
    lab.start_edge(0)?;
    wait_until(Duration::from_secs(5), "edge1 to resume as master", || {
        lab.status(0)
            .is_ok_and(|s| s.vrrp[0].state == State::Master && s.vrrp[0].reason == Reason::Resumed)
    })
    .with_context(|| format!("after {signal}: {}", lab.edge_log(0)))?;
    // Past the backup's master-down interval from the stop: it never took over.
    sleep(Duration::from_secs(4));
    let backup = lab.status(1)?;
    ensure!(
        backup.vrrp[0].transitions == transitions && lab.vrrp_state(1) == "backup",
        "edge2 moved when edge1 got {signal}: {backup:?}"
    );
    carries(lab, 0, 500)?;
    Ok(old_log)
}

#[test]
fn a_restarted_or_crashed_master_keeps_the_vip_and_the_backup_never_takes_over() -> Result<()> {
    // Intervals of a second: the backup waits 3.6 s before taking over, longer than a restart.
    let mut spec = LabSpec::pair(3, true, false);
    spec.vrrp.as_mut().context("a VRRP lab")?.interval_ms = 1000;
    let mut lab = LbLab::build(spec)?;
    ensure!(
        lab.wait_for_master(Duration::from_secs(10))? == 0,
        "edge1 should be master"
    );
    let transfers = Transfers::start(&lab.client, lab.vip(), TRANSFERS, PACE)?;
    carries(&lab, 0, 200)?;
    let transitions = lab.status(1)?.vrrp[0].transitions;
    // A restart (SIGUSR2, systemd's RestartKillSignal): the claim is left to the next process.
    let old_log = restart_resumes(&mut lab, Signal::SIGUSR2, transitions)?;
    ensure!(
        old_log.contains("vrrp claims handed over to the next process"),
        "edge1 did not log its hand-over:\n{old_log}"
    );
    // A crash restarted at once (systemd's Restart=always) resumes too: with most of the lease
    // left, no backup can have taken over.
    restart_resumes(&mut lab, Signal::SIGKILL, transitions)?;
    check_transfers(transfers)?;
    Ok(())
}

#[test]
fn the_old_master_returning_preempts_without_breaking_connections() -> Result<()> {
    let mut lab = lab(true)?;
    let transfers = Transfers::start(&lab.client, lab.vip(), TRANSFERS, PACE)?;
    stop_edge(&mut lab, 0, Signal::SIGTERM)?;
    became_master(&lab, 1)?;
    carries(&lab, 1, 500)?;
    lab.start_edge(0)?;
    became_master(&lab, 0)?;
    wait_until(Duration::from_secs(2), "edge2 to step down", || {
        lab.vrrp_state(1) == "backup"
    })?;
    carries(&lab, 0, 1000)?;
    check_transfers(transfers)?;
    let status = lab.status(1)?;
    ensure!(
        status.vrrp[0].reason == Reason::Superseded && !status.forwarding,
        "edge2 should be a superseded, non-forwarding backup: {status:?}"
    );
    Ok(())
}

#[test]
fn without_preemption_the_old_master_stays_backup() -> Result<()> {
    let mut lab = lab(false)?;
    let transfers = Transfers::start(&lab.client, lab.vip(), 50, PACE)?;
    stop_edge(&mut lab, 0, Signal::SIGKILL)?;
    became_master(&lab, 1)?;
    lab.start_edge(0)?;
    wait_until(Duration::from_secs(3), "edge1 to start as backup", || {
        lab.vrrp_state(0) == "backup"
    })?;
    sleep(Duration::from_secs(2));
    ensure!(lab.vrrp_state(0) == "backup", "edge1 preempted with preempt = false");
    ensure!(lab.vrrp_state(1) == "master");
    let reports = transfers.finish()?;
    ensure!(reports.len() == 50);
    Ok(())
}

/// Drops (or stops dropping) VRRP in the input path of edge `i`.
fn cut_vrrp(lab: &LbLab, i: usize, cut: bool) -> Result<()> {
    let ns = &lab.edges[i].ns;
    if cut {
        ns.exec(&["nft", "add", "table", "inet", "fbt_cut"])?;
        ns.exec(&[
            "nft",
            "add chain inet fbt_cut input { type filter hook input priority 0; }",
        ])?;
        ns.exec(&["nft", "add rule inet fbt_cut input meta l4proto 112 drop"])?;
    } else {
        ns.exec(&["nft", "delete", "table", "inet", "fbt_cut"])?;
    }
    Ok(())
}

#[test]
fn split_brain_keeps_delivering_and_heals_within_an_interval() -> Result<()> {
    let lab = lab(true)?;
    let transfers = Transfers::start(&lab.client, lab.vip(), TRANSFERS, PACE)?;
    cut_vrrp(&lab, 0, true)?;
    cut_vrrp(&lab, 1, true)?;
    wait_until(Duration::from_secs(3), "both edges to be master", || {
        lab.vrrp_state(0) == "master" && lab.vrrp_state(1) == "master"
    })
    .with_context(|| lab.edge_log(1))?;
    sleep(Duration::from_secs(1));
    let healed = now_ms();
    cut_vrrp(&lab, 0, false)?;
    cut_vrrp(&lab, 1, false)?;
    wait_until(Duration::from_secs(2), "edge2 to step down", || {
        lab.vrrp_state(1) == "backup"
    })?;
    let took = lab.status(1)?.vrrp[0].since_unix_ms.saturating_sub(healed);
    // The higher-priority master's next advert (at most one interval away) ends it.
    let limit = INTERVAL_MS as u64 + 20;
    eprintln!("one master again {took} ms after the VRRP path healed (limit {limit} ms)");
    ensure!(took <= limit, "healing took {took} ms");
    ensure!(lab.vrrp_state(0) == "master");
    carries(&lab, 0, 500)?;
    check_transfers(transfers)?;
    Ok(())
}

/// A valid advert for the lab's router (VRID 51, its VIP) from `src` to the VRRP group.
fn advert_from(src: IpAddr, priority: u8, interval_cs: u16) -> Vec<u8> {
    let group = IpAddr::V4(Ipv4Addr::new(224, 0, 0, 18));
    Advert {
        vrid: 51,
        priority,
        interval_cs,
        addresses: vec![IpAddr::V4(VIP)],
    }
    .encode(src, group, Ipv4Checksum::PseudoHeader)
}

/// Sends `message` as a VRRP packet with this TTL from the client to the VRRP group.
fn send_raw(lab: &LbLab, message: Vec<u8>, ttl: u8) -> Result<()> {
    lab.client.run(move || -> Result<()> {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_VRRP as i32)))?;
        socket.set_header_included_v4(true)?;
        socket.bind_device(Some(b"eth0"))?;
        let src = foobar_tests::lab::CLIENT.octets();
        let dst = [224, 0, 0, 18];
        let total = (20 + message.len()) as u16;
        let mut packet = vec![0x45, 0xc0];
        packet.extend_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0, 0, ttl, IPPROTO_VRRP, 0, 0]);
        packet.extend_from_slice(&src);
        packet.extend_from_slice(&dst);
        packet.extend_from_slice(&message);
        let to = SockAddr::from(std::net::SocketAddrV4::new(Ipv4Addr::from(dst), 0));
        for _ in 0..3 {
            socket.send_to(&packet, &to)?;
        }
        Ok(())
    })?
}

/// Sends `inner` (a whole IPv4 packet) in an IPIP tunnel from the client to `to`, three times.
fn send_tunnelled(lab: &LbLab, to: Ipv4Addr, inner: Vec<u8>) -> Result<()> {
    lab.client.run(move || -> Result<()> {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc_ipproto_raw())))?;
        socket.set_header_included_v4(true)?;
        let total = (20 + inner.len()) as u16;
        let mut packet = vec![0x45, 0];
        packet.extend_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0, 0, 64, 4, 0, 0]);
        packet.extend_from_slice(&foobar_tests::lab::CLIENT.octets());
        packet.extend_from_slice(&to.octets());
        packet.extend_from_slice(&inner);
        let dest = SockAddr::from(std::net::SocketAddrV4::new(to, 0));
        for _ in 0..3 {
            socket.send_to(&packet, &dest)?;
        }
        Ok(())
    })?
}

/// IPPROTO_RAW: a raw socket that sends whole IP packets of any protocol.
fn libc_ipproto_raw() -> i32 {
    255
}

#[test]
fn a_forged_long_interval_does_not_stretch_the_takeover() -> Result<()> {
    let mut lab = lab(true)?;
    became_master(&lab, 0)?;
    // The master dies; before its peer takes over, a forged advert (priority 149, above the
    // backup's, claiming a 40.95 s interval) reaches the backup. Adopted as it is, the VIP
    // would stay dark for three of those intervals.
    stop_edge(&mut lab, 0, Signal::SIGKILL)?;
    let received = lab.status(1)?.vrrp[0].adverts_received;
    let forged = advert_from(IpAddr::V4(foobar_tests::lab::CLIENT), 149, 4095);
    let sent = now_ms();
    send_raw(&lab, forged, 255)?;
    let took = became_master(&lab, 1)?.saturating_sub(sent);
    // The probe reached the election: the three copies were accepted, none discarded.
    let status = lab.status(1)?;
    ensure!(
        status.vrrp[0].adverts_received >= received + 3 && status.vrrp[0].discards.values().sum::<u64>() == 0,
        "the forged adverts did not reach the election: {status:?}"
    );
    // The backup's ceiling (its own 100 ms interval) bounds the wait: 3 × 100 ms + skew.
    let limit = master_down_interval_cs(PRIORITIES[1], (INTERVAL_MS / 10) as u16) as u64 * 10 + 100;
    eprintln!("takeover {took} ms after a forged 40.95 s advert (limit {limit} ms)");
    ensure!(took <= limit, "the forged interval stretched the takeover to {took} ms");
    Ok(())
}

#[test]
fn hostile_adverts_are_discarded_and_counted() -> Result<()> {
    let lab = lab(true)?;
    let transitions = |i| -> Result<u64> { Ok(lab.status(i)?.vrrp[0].transitions) };
    let before = [transitions(0)?, transitions(1)?];
    let src = IpAddr::V4(foobar_tests::lab::CLIENT);
    let group = IpAddr::V4(Ipv4Addr::new(224, 0, 0, 18));
    // Each would make both edges yield (priority 254) if it were accepted.
    let advert = |vrid: u8, vip: Ipv4Addr, interval_cs: u16| Advert {
        vrid,
        priority: 254,
        interval_cs,
        addresses: vec![IpAddr::V4(vip)],
    };
    let good = advert(51, VIP, 10).encode(src, group, Ipv4Checksum::PseudoHeader);
    let reseal = |mut m: Vec<u8>| {
        // A careful attacker gets the checksum right.
        seal(&mut m, src, group, Ipv4Checksum::PseudoHeader);
        m
    };
    let mut version = good.clone();
    version[0] = 0x21;
    let mut kind = good.clone();
    kind[0] = 0x32;
    let mut checksum = good.clone();
    checksum[7] ^= 0x55;
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        ("version", reseal(version), 255),
        ("type", reseal(kind), 255),
        ("ttl", good.clone(), 64),
        ("checksum", checksum, 255),
        ("truncated", good[..6].to_vec(), 255),
        (
            "vrid",
            advert(52, VIP, 10).encode(src, group, Ipv4Checksum::PseudoHeader),
            255,
        ),
        (
            "address_mismatch",
            advert(51, Ipv4Addr::new(192, 0, 2, 99), 10).encode(src, group, Ipv4Checksum::PseudoHeader),
            255,
        ),
        (
            "interval_zero",
            advert(51, VIP, 0).encode(src, group, Ipv4Checksum::PseudoHeader),
            255,
        ),
    ];
    for (_, message, ttl) in &cases {
        send_raw(&lab, message.clone(), *ttl)?;
    }
    // Each edge counts every hostile packet (three of each kind) by its reason.
    wait_until(Duration::from_secs(3), "every hostile advert to be counted", || {
        (0..2).all(|i| {
            lab.status(i).is_ok_and(|s| {
                let v = &s.vrrp[0];
                cases
                    .iter()
                    .all(|(reason, _, _)| v.discards.get(*reason).copied().unwrap_or(0) >= 3)
            })
        })
    })?;
    for (i, transitions_before) in before.iter().enumerate() {
        let status = lab.status(i)?;
        let v = &status.vrrp[0];
        for (reason, _, _) in &cases {
            let n = v.discards.get(*reason).copied().unwrap_or(0);
            if n != 3 {
                bail!(
                    "edge{} counted {n} {reason} discards, expected 3: {:?}",
                    i + 1,
                    v.discards
                );
            }
        }
        ensure!(
            v.transitions == *transitions_before,
            "edge{} changed state on hostile adverts",
            i + 1
        );
    }
    ensure!(lab.vrrp_state(0) == "master" && lab.vrrp_state(1) == "backup");
    // A flood of valid adverts from a lower-priority "master": each reaches the election, the
    // real master answers (an advert and a burst of announcements per VIP) once per interval,
    // the rest are counted as suppressed.
    let received = lab.status(0)?.vrrp[0].adverts_received;
    let low = advert_from(src, 120, 10);
    for _ in 0..7 {
        send_raw(&lab, low.clone(), 255)?;
    }
    wait_until(Duration::from_secs(3), "the flood to reach edge1's election", || {
        lab.status(0).is_ok_and(|s| s.vrrp[0].adverts_received >= received + 21)
    })?;
    let status = lab.status(0)?;
    ensure!(
        status.vrrp[0].answers_suppressed >= 15 && status.vrrp[0].transitions == before[0],
        "a flood of lower-priority adverts was answered one by one: {status:?}"
    );
    ensure!(lab.vrrp_state(0) == "master");
    // The master's own adverts kept their rhythm: the backup hears it as master again.
    let edge1_addr = IpAddr::V4(foobar_tests::lab::edge_addr(0));
    wait_until(Duration::from_secs(2), "edge2 to hear edge1 again", || {
        lab.status(1).is_ok_and(|s| s.vrrp[0].master == Some(edge1_addr))
    })?;
    // The same advert in an IPIP tunnel to each edge's own address (which it decapsulates for
    // its peers), posing as edge1 with priority 254 and a good checksum: anyone who can route a
    // packet to an edge used to have it passed up as if it came from the link. Dropped as from
    // no tunnel peer, counted, and the election does not move.
    let posing = advert_from(IpAddr::V4(foobar_tests::lab::edge_addr(0)), 254, 10);
    let mut inner = vec![0x45, 0xc0];
    inner.extend_from_slice(&((20 + posing.len()) as u16).to_be_bytes());
    inner.extend_from_slice(&[0, 0, 0, 0, 255, IPPROTO_VRRP, 0, 0]);
    inner.extend_from_slice(&foobar_tests::lab::edge_addr(0).octets());
    inner.extend_from_slice(&[224, 0, 0, 18]);
    inner.extend_from_slice(&posing);
    let not_peer = |i: usize| -> Result<u64> {
        let snap = foobar::stats::snapshot(&lab.edges[i].pins.path)?;
        Ok(snap
            .counters
            .iter()
            .find(|(n, _)| n == "drop_tunnel_not_peer")
            .map_or(0, |(_, v)| *v))
    };
    for i in 0..2 {
        send_tunnelled(&lab, foobar_tests::lab::edge_addr(i), inner.clone())?;
    }
    wait_until(Duration::from_secs(3), "the tunnelled adverts to be dropped", || {
        (0..2).all(|i| not_peer(i).is_ok_and(|n| n >= 3))
    })?;
    for (i, transitions_before) in before.iter().enumerate() {
        ensure!(
            lab.status(i)?.vrrp[0].transitions == *transitions_before,
            "edge{} changed state on a tunnelled advert",
            i + 1
        );
    }
    ensure!(lab.vrrp_state(0) == "master" && lab.vrrp_state(1) == "backup");
    // `foobar status` tells a person the same.
    let socket = lab.edge_socket(1).display().to_string();
    let shown = lab.edges[1]
        .ns
        .exec_direct(&foobar_tests::foobar_bin(), &["status", "--socket", &socket])?;
    for expected in [
        "vrrp vip (vrid 51 on eth0): BACKUP",
        "master 10.10.0.1 (priority 150",
        "ttl 3",
    ] {
        ensure!(shown.contains(expected), "`foobar status` lacks {expected:?}:\n{shown}");
    }
    Ok(())
}

/// Waits until edge1 is in fault for exactly `why` and edge2 took over, then until `heal`
/// brings edge1 back as master (preemption).
fn fault_and_recover(lab: &LbLab, why: Fault, heal: impl FnOnce() -> Result<()>) -> Result<()> {
    wait_until(Duration::from_secs(5), &why.to_string(), || {
        lab.status(0)
            .is_ok_and(|s| s.vrrp[0].state == State::Fault && s.vrrp[0].faults == [why.clone()])
    })
    .with_context(|| lab.edge_log(0))?;
    became_master(lab, 1)?;
    ensure!(!lab.status(0)?.forwarding, "a node in fault stops forwarding");
    heal()?;
    became_master(lab, 0)?;
    Ok(())
}

#[test]
fn tracked_conditions_put_the_master_in_fault() -> Result<()> {
    let lab = lab(true)?;
    let edge1 = &lab.edges[0].ns;
    // Every backend of the tracked service fails edge1's checks (its own health checks are
    // blocked; forwarding from XDP does not pass netfilter).
    edge1.exec(&["nft", "add", "table", "inet", "fbt_hc"])?;
    edge1.exec(&[
        "nft",
        "add chain inet fbt_hc output { type filter hook output priority 0; }",
    ])?;
    edge1.exec(&["nft", "add rule inet fbt_hc output tcp dport 80 drop"])?;
    let service = Fault::ServiceDown { service: "web".into() };
    fault_and_recover(&lab, service, || {
        edge1.exec(&["nft", "delete", "table", "inet", "fbt_hc"]).map(drop)
    })?;
    // The data interface goes down.
    edge1.exec(&["ip", "link", "set", "eth0", "down"])?;
    let interface = Fault::InterfaceDown {
        interface: "eth0".into(),
    };
    fault_and_recover(&lab, interface, || {
        edge1.exec(&["ip", "link", "set", "eth0", "up"]).map(drop)
    })?;
    // The XDP program is detached behind foobar's back.
    let pin = foobar::dataplane::pin_root(&lab.edges[0].pins.path).join("link_eth0");
    foobar_tests::detach_pinned_link(&pin)?;
    wait_until(Duration::from_secs(3), "the detached program to be noticed", || {
        lab.status(0).is_ok_and(|s| {
            s.vrrp[0].state == State::Fault
                && s.vrrp[0].faults
                    == [Fault::NotAttached {
                        interface: "eth0".into(),
                    }]
        })
    })?;
    became_master(&lab, 1)?;
    // The notify command saw every change.
    let notes = lab.notifications(0);
    for expected in [
        "vip fault fault edge1",
        "vip backup fault_cleared edge1",
        "vip master master_down edge1",
    ] {
        if !notes.contains(expected) {
            bail!("edge1's notify command did not see {expected:?}:\n{notes}");
        }
    }
    Ok(())
}
