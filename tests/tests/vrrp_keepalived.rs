//! foobar's VRRPv3 adverts against a real keepalived 2.2.7: we decode what keepalived sends, and
//! keepalived accepts what we send (it yields to our higher priority and logs no invalid packet).

use anyhow::{bail, Context, Result};
use foobar::vrrp::{Advert, Ipv4Checksum, IPPROTO_VRRP, VRRP_TTL};
use foobar_tests::{veth, wait_until, Netns, Scratch};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    process::{Command, Stdio},
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

#[test]
fn adverts_interoperate_with_keepalived() -> Result<()> {
    if Command::new("keepalived").arg("--version").output().is_err() {
        bail!("keepalived is not installed (cargo xtask test installs it)");
    }
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
    let log = scratch.file("keepalived.log");
    let pid = |name: &str| scratch.file(name).display().to_string();
    let child = Command::new("ip")
        .args(["netns", "exec", &ka.name, "keepalived", "-n", "-l", "-D", "-P", "-f"])
        .arg(&conf)
        .args(["-p", &pid("a.pid"), "-r", &pid("b.pid"), "-c", &pid("c.pid")])
        .stdout(Stdio::from(std::fs::File::create(&log)?))
        .stderr(Stdio::from(std::fs::File::create(scratch.file("keepalived.err"))?))
        .spawn()
        .context("starting keepalived")?;
    let keepalived = foobar_tests::ChildGuard::adopt(child, &log);
    let logs = || {
        std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(scratch.file("keepalived.err")).unwrap_or_default()
    };

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
