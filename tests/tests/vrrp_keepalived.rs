//! foobar's VRRPv3 against a real keepalived 2.2.7: we decode what keepalived sends, keepalived
//! accepts what we send (it yields to our higher priority and logs no invalid packet), and a
//! `foobar run` and a keepalived elect each other in both roles, by multicast and by unicast.

use anyhow::{bail, Context, Result};
use foobar::vrrp::{Advert, Ipv4Checksum, IPPROTO_VRRP, VRRP_TTL};
use foobar_tests::{foobar_bin, veth, wait_until, ChildGuard, Netns, PinDir, Scratch};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    time::Duration,
};

const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
const KA_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const OUR_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const VIP: &str = "192.0.2.10";

/// A raw VRRP socket in the calling thread's namespace, joined to the VRRP group on `local`.
fn vrrp_socket(local: Ipv4Addr) -> Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_VRRP as i32)))?;
    socket.join_multicast_v4(&GROUP, &local)?;
    socket.set_multicast_if_v4(&local)?;
    socket.set_multicast_ttl_v4(VRRP_TTL as u32)?;
    socket.set_ttl(VRRP_TTL as u32)?;
    socket.set_multicast_loop_v4(false)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(socket)
}

fn start_keepalived(ns: &Netns, scratch: &Scratch, conf: &std::path::Path) -> Result<ChildGuard> {
    foobar_tests::classic::keepalived(ns, conf, scratch, "keepalived")
}

fn keepalived_logs(scratch: &Scratch) -> String {
    std::fs::read_to_string(scratch.file("keepalived.log")).unwrap_or_default()
}

#[test]
fn adverts_interoperate_with_keepalived() -> Result<()> {
    let scratch = Scratch::new("vrrp-ka")?;
    let ka = Netns::new("ka")?;
    let us = Netns::new("us")?;
    veth(&ka, "kav", &us, "usv")?;
    ka.exec(&["ip", "addr", "add", &format!("{KA_ADDR}/24"), "dev", "kav"])?;
    us.exec(&["ip", "addr", "add", &format!("{OUR_ADDR}/24"), "dev", "usv"])?;
    let conf = scratch.file("keepalived.conf");
    std::fs::write(
        &conf,
        format!(
            "global_defs {{\n  vrrp_version 3\n}}\nvrrp_instance VI_1 {{\n  state MASTER\n  interface kav\n  \
             virtual_router_id 51\n  priority 150\n  advert_int 0.1\n  virtual_ipaddress {{\n    {VIP}/32\n  }}\n}}\n"
        ),
    )?;
    let keepalived = start_keepalived(&ka, &scratch, &conf)?;
    let logs = || keepalived_logs(&scratch);

    // keepalived's adverts decode, and use the pseudo-header checksum.
    let (advert, convention) = us.run(|| -> Result<(Advert, Ipv4Checksum)> {
        let mut socket = vrrp_socket(OUR_ADDR)?;
        let mut buf = [0u8; 1500];
        loop {
            let n = socket.read(&mut buf).context("no advert from keepalived")?;
            let ihl = ((buf[0] & 0x0f) as usize) * 4;
            let src = IpAddr::from([buf[12], buf[13], buf[14], buf[15]]);
            let dst = IpAddr::from([buf[16], buf[17], buf[18], buf[19]]);
            if src != IpAddr::V4(KA_ADDR) {
                continue;
            }
            return Advert::decode(&buf[ihl..n], buf[8], src, dst).map_err(|d| anyhow::anyhow!("discarded: {d:?}"));
        }
    })??;
    assert_eq!(
        convention,
        Ipv4Checksum::PseudoHeader,
        "keepalived 2.2.7 checksums over the pseudo-header"
    );
    assert_eq!((advert.vrid, advert.priority, advert.interval_cs), (51, 150, 10));
    assert_eq!(advert.addresses, vec![VIP.parse::<IpAddr>()?]);

    wait_until(Duration::from_secs(4), "keepalived to be master", || {
        logs().contains("Entering MASTER STATE")
    })
    .with_context(logs)?;

    // A message-only checksum is invalid to keepalived (the negative control), the
    // pseudo-header one is accepted: our higher priority makes it step down.
    let ours = Advert {
        vrid: 51,
        priority: 200,
        interval_cs: 10,
        addresses: vec![VIP.parse()?],
    };
    for (convention, expect) in [
        (Ipv4Checksum::MessageOnly, "Invalid VRRPv3 checksum"),
        (
            Ipv4Checksum::PseudoHeader,
            "Master received advert from 10.77.0.2 with higher priority 200, ours 150",
        ),
    ] {
        let message = ours.encode(IpAddr::V4(OUR_ADDR), IpAddr::V4(GROUP), convention);
        let invalid_before = logs().matches("Invalid").count();
        let sender = us.thread(move || -> Result<()> {
            let socket = vrrp_socket(OUR_ADDR)?;
            let to = SockAddr::from(SocketAddrV4::new(GROUP, 0));
            for _ in 0..10 {
                socket.send_to(&message, &to)?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        });
        let seen = wait_until(Duration::from_secs(3), expect, || logs().contains(expect));
        let _ = sender.join();
        seen.with_context(logs)?;
        if convention == Ipv4Checksum::PseudoHeader && logs().matches("Invalid").count() != invalid_before {
            bail!("keepalived found our pseudo-header adverts invalid:\n{}", logs());
        }
    }
    let text = logs();
    let after_master = &text[text.find("Entering MASTER STATE").unwrap_or(0)..];
    if !after_master.contains("Entering BACKUP STATE\n") {
        bail!("keepalived did not step down to BACKUP:\n{text}");
    }
    drop(keepalived);
    Ok(())
}

/// keepalived's configuration for the peer scenarios.
fn keepalived_conf(priority: u8, unicast: bool) -> String {
    let unicast = if unicast {
        format!("  unicast_src_ip {KA_ADDR}\n  unicast_peer {{\n    {OUR_ADDR}\n  }}\n")
    } else {
        String::new()
    };
    format!(
        "global_defs {{\n  vrrp_version 3\n}}\nvrrp_instance VI_1 {{\n  state BACKUP\n  interface kav\n  \
         virtual_router_id 51\n  priority {priority}\n  advert_int 0.1\n{unicast}  virtual_ipaddress {{\n    {VIP}/32\n  }}\n}}\n"
    )
}

/// foobar's configuration for the peer scenarios: no services, one VRRP instance.
fn foobar_conf(pins: &PinDir, socket: &std::path::Path, priority: u8, unicast: bool) -> String {
    let peers = if unicast {
        format!("\"{KA_ADDR}\"")
    } else {
        String::new()
    };
    format!(
        "[node]\nname = \"us\"\ninterfaces = [\"usv\"]\npin_dir = \"{}\"\ncontrol_socket = \"{}\"\n\n\
         [[vrrp]]\nname = \"vi\"\nvrid = 51\ninterface = \"usv\"\npriority = {priority}\nadvert_interval_ms = 100\n\
         vips = [\"{VIP}\"]\nunicast_peers = [{peers}]\n",
        pins.path.display(),
        socket.display()
    )
}

/// Our VRRP state and the master we heard, from the control socket.
fn our_view(socket: &std::path::Path) -> (String, Option<IpAddr>) {
    foobar::ctl::query(socket)
        .ok()
        .and_then(|s| s.vrrp.first().map(|v| (v.state.name().to_string(), v.master)))
        .unwrap_or_default()
}

fn keepalived_with_foobar(unicast: bool) -> Result<()> {
    // Names of their own per variant: the two variants may run at once in one process.
    let variant = if unicast { "uni" } else { "multi" };
    let scratch = Scratch::new(&format!("ka-{variant}"))?;
    let ka = Netns::new(&format!("ka{variant}"))?;
    let us = Netns::new(&format!("us{variant}"))?;
    veth(&ka, "kav", &us, "usv")?;
    ka.exec(&["ip", "addr", "add", &format!("{KA_ADDR}/24"), "dev", "kav"])?;
    us.exec(&["ip", "addr", "add", &format!("{OUR_ADDR}/24"), "dev", "usv"])?;
    let pins = PinDir::new(&format!("ka{variant}"));
    let socket = scratch.file("us.sock");
    let ka_conf = scratch.file("keepalived.conf");
    let our_conf = scratch.file("foobar.toml");
    let logs = || keepalived_logs(&scratch);
    let entered = |state: &str| logs().matches(&format!("Entering {state} STATE")).count();
    let start_foobar = |priority: u8| -> Result<ChildGuard> {
        std::fs::write(&our_conf, foobar_conf(&pins, &socket, priority, unicast))?;
        let conf = our_conf.display().to_string();
        let log = scratch.file("foobar.log");
        let child = us.spawn(&foobar_bin(), &["run", "--config", &conf], &log)?;
        wait_until(Duration::from_secs(10), "foobar to start", || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("foobar is running"))
        })
        .with_context(|| child.log_text())?;
        Ok(child)
    };

    // keepalived (150) is master; foobar (100) is its backup and names it master.
    std::fs::write(&ka_conf, keepalived_conf(150, unicast))?;
    let mut keepalived = Some(start_keepalived(&ka, &scratch, &ka_conf)?);
    wait_until(Duration::from_secs(5), "keepalived to be master", || {
        entered("MASTER") == 1
    })
    .with_context(logs)?;
    let mut ours = start_foobar(100)?;
    wait_until(Duration::from_secs(3), "foobar to follow keepalived", || {
        our_view(&socket) == ("backup".into(), Some(IpAddr::V4(KA_ADDR)))
    })
    .with_context(|| ours.log_text())?;
    std::thread::sleep(Duration::from_millis(500));
    ensure_state(&socket, "backup")?;

    // keepalived stops (priority 0): foobar takes over at once.
    if let Some(mut k) = keepalived.take() {
        k.signal(nix::sys::signal::Signal::SIGTERM)?;
        k.wait(Duration::from_secs(5))?;
    }
    wait_until(Duration::from_secs(2), "foobar to take over", || {
        our_view(&socket).0 == "master"
    })
    .with_context(|| ours.log_text())?;

    // keepalived returns with the higher priority and preempts foobar.
    let masters_before = entered("MASTER");
    keepalived = Some(start_keepalived(&ka, &scratch, &ka_conf)?);
    wait_until(Duration::from_secs(5), "keepalived to preempt foobar", || {
        entered("MASTER") > masters_before && our_view(&socket).0 == "backup"
    })
    .with_context(|| format!("{}\n{}", logs(), ours.log_text()))?;

    // foobar restarts with priority 200 and preempts keepalived; a graceful stop hands back.
    ours.signal(nix::sys::signal::Signal::SIGTERM)?;
    ours.wait(Duration::from_secs(5))?;
    let backups_before = entered("BACKUP");
    let mut ours = start_foobar(200)?;
    wait_until(Duration::from_secs(5), "keepalived to yield to foobar", || {
        entered("BACKUP") > backups_before && our_view(&socket).0 == "master"
    })
    .with_context(|| format!("{}\n{}", logs(), ours.log_text()))?;
    let status = foobar::ctl::query(&socket)?;
    let discards: u64 = status.vrrp[0].discards.values().sum();
    if discards != 0 || status.vrrp[0].adverts_received == 0 {
        bail!(
            "foobar discarded keepalived's adverts or heard none: {:?}",
            status.vrrp[0]
        );
    }
    let masters_before = entered("MASTER");
    ours.signal(nix::sys::signal::Signal::SIGTERM)?;
    ours.wait(Duration::from_secs(5))?;
    wait_until(Duration::from_secs(2), "keepalived to take over from foobar", || {
        entered("MASTER") > masters_before
    })
    .with_context(logs)?;

    let text = logs().to_lowercase();
    for bad in ["invalid", "bad ", "wrong", "error", "mismatch"] {
        if text.contains(bad) {
            bail!("keepalived logged {bad:?}:\n{}", logs());
        }
    }
    drop(keepalived);
    Ok(())
}

fn ensure_state(socket: &std::path::Path, state: &str) -> Result<()> {
    let (now, _) = our_view(socket);
    if now != state {
        bail!("foobar is {now}, expected {state}");
    }
    Ok(())
}

#[test]
fn foobar_and_keepalived_elect_each_other_by_multicast() -> Result<()> {
    keepalived_with_foobar(false)
}

#[test]
fn foobar_and_keepalived_elect_each_other_by_unicast() -> Result<()> {
    keepalived_with_foobar(true)
}

/// Two `foobar run` nodes elect over IPv6: adverts to ff02::12 from their link-local
/// addresses, the backup names the master's link-local address, and takes over when the
/// master stops.
#[test]
fn two_foobar_nodes_elect_over_ipv6() -> Result<()> {
    let scratch = Scratch::new("vrrp6")?;
    let a = Netns::new("v6a")?;
    let b = Netns::new("v6b")?;
    for ns in [&a, &b] {
        // Link-local addresses are usable at once (no duplicate address detection wait).
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    }
    veth(&a, "v6", &b, "v6")?;
    let mut nodes = Vec::new();
    for (ns, priority) in [(&a, 150u8), (&b, 100u8)] {
        let pins = PinDir::new(&format!("{}-pins", ns.name));
        let socket = scratch.file(&format!("{}.sock", ns.name));
        let conf = scratch.file(&format!("{}.toml", ns.name));
        std::fs::write(
            &conf,
            format!(
                "[node]\nname = \"{name}\"\ninterfaces = [\"v6\"]\npin_dir = \"{pins}\"\ncontrol_socket = \"{socket}\"\n\n\
                 [[vrrp]]\nname = \"vi6\"\nvrid = 61\ninterface = \"v6\"\npriority = {priority}\nadvert_interval_ms = 100\n\
                 vips = [\"2001:db8::10\"]\n",
                name = ns.name,
                pins = pins.path.display(),
                socket = socket.display(),
            ),
        )?;
        let log = scratch.file(&format!("{}.log", ns.name));
        let child = ns.spawn(&foobar_bin(), &["run", "--config", &conf.display().to_string()], &log)?;
        nodes.push((child, pins, socket));
    }
    let link_local = |ns: &Netns| -> Result<IpAddr> {
        let out = ns.exec(&["ip", "-6", "-o", "addr", "show", "dev", "v6", "scope", "link"])?;
        let addr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .context("no link-local address")?;
        Ok(addr.parse()?)
    };
    let master_ll = link_local(&a)?;
    wait_until(Duration::from_secs(5), "node a master, node b following it", || {
        our_view(&nodes[0].2).0 == "master" && our_view(&nodes[1].2) == ("backup".into(), Some(master_ll))
    })
    .with_context(|| format!("{}\n{}", nodes[0].0.log_text(), nodes[1].0.log_text()))?;
    let (mut first, _, _) = nodes.remove(0);
    first.signal(nix::sys::signal::Signal::SIGTERM)?;
    first.wait(Duration::from_secs(5))?;
    wait_until(Duration::from_secs(2), "node b to take over", || {
        our_view(&nodes[0].2).0 == "master"
    })
    .with_context(|| nodes[0].0.log_text())?;
    let status = foobar::ctl::query(&nodes[0].2)?;
    let v = &status.vrrp[0];
    if v.reason != foobar::vrrp::election::Reason::MasterDown
        || v.discards.values().sum::<u64>() != 0
        || v.adverts_received == 0
    {
        bail!("unexpected IPv6 election record: {v:?}");
    }
    Ok(())
}
