//! The real XDP program under BPF_PROG_TEST_RUN: verdicts and output bytes for every path,
//! with next hops from a real kernel FIB inside a namespace.

use anyhow::{Context, Result};
use foobar::stats;
use foobar_tests::{
    packet::{self, checksum, icmp_frag_needed, icmpv6_checksum, v4_addrs, v6_addrs, Spec, ACK, SYN},
    testrun::{Fixture, Variant, BACKEND4B_MAC, BACKEND4_MAC, BACKEND6_MAC, XDP_DROP, XDP_PASS, XDP_TX},
};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Checks an IPv4-in-IPv4 frame to `backend` carrying exactly `inner`.
fn assert_ipip4(fx: &Fixture, out: &[u8], backend: Ipv4Addr, backend_mac: [u8; 6], inner: &[u8], l2_len: usize) {
    assert_eq!(&out[0..6], &backend_mac, "destination MAC is the backend's");
    assert_eq!(&out[6..12], &fx.node_mac, "source MAC is the egress interface's");
    assert_eq!(&out[l2_len - 2..l2_len], &[0x08, 0x00]);
    let outer = &out[l2_len..l2_len + 20];
    assert_eq!(outer[0], 0x45);
    assert_eq!(outer[9], if inner[0] >> 4 == 4 { 4 } else { 41 }, "outer protocol");
    assert_eq!(v4_addrs(outer), (Ipv4Addr::new(10, 20, 0, 1), backend));
    assert_eq!(u16::from_be_bytes([outer[2], outer[3]]) as usize, 20 + inner.len());
    assert_eq!(checksum(0, outer), 0, "outer header checksum");
    assert_eq!(&out[l2_len + 20..], inner, "inner packet untouched");
}

#[test]
fn ipv4_syn_is_encapsulated_to_its_backend() -> Result<()> {
    let mut fx = Fixture::new("t-v4syn")?;
    let spec = Spec::tcp("198.51.100.7", 40000, "192.0.2.1", 80, SYN);
    let (verdict, out) = fx.run(&spec.frame())?;
    assert_eq!(verdict, XDP_TX);
    assert_ipip4(&fx, &out, Ipv4Addr::new(10, 20, 0, 2), BACKEND4_MAC, &spec.ip(), 14);
    assert_eq!(fx.counter("transmitted")?, 1);
    assert_eq!(fx.counter("conntrack_miss")?, 1);
    let snap = stats::snapshot(&fx.pins.path)?;
    let web = snap
        .services
        .iter()
        .find(|s| s.vip.port() == 80 && s.vip.is_ipv4())
        .context("web4 service")?;
    assert_eq!((web.traffic.packets, web.traffic.new_flows), (1, 1));
    Ok(())
}

#[test]
fn ipv6_syn_is_encapsulated_in_ipv6() -> Result<()> {
    let mut fx = Fixture::new("t-v6syn")?;
    let spec = Spec::tcp("2001:db8:ffff::7", 40000, "2001:db8::1", 80, SYN);
    let (verdict, out) = fx.run(&spec.frame())?;
    assert_eq!(verdict, XDP_TX);
    assert_eq!(&out[0..6], &BACKEND6_MAC);
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    let outer = &out[14..54];
    assert_eq!(outer[0] >> 4, 6);
    assert_eq!(outer[6], 41, "IPv6-in-IPv6");
    assert_eq!(
        v6_addrs(outer),
        ("fd20::1".parse::<Ipv6Addr>()?, "fd20::2".parse::<Ipv6Addr>()?)
    );
    assert_eq!(u16::from_be_bytes([outer[4], outer[5]]) as usize, spec.ip().len());
    assert_eq!(&out[54..], &spec.ip()[..]);
    Ok(())
}

#[test]
fn udp_l2_dsr_rewrites_only_the_mac() -> Result<()> {
    let mut fx = Fixture::new("t-l2dsr")?;
    let spec = Spec::udp("198.51.100.7", 5353, "192.0.2.2", 53);
    let frame = spec.frame();
    let (verdict, out) = fx.run(&frame)?;
    assert_eq!(verdict, XDP_TX);
    assert_eq!(&out[0..6], &BACKEND4B_MAC);
    assert_eq!(&out[6..12], &fx.node_mac);
    assert_eq!(&out[12..], &frame[12..], "everything past the MACs is unchanged");
    Ok(())
}

#[test]
fn established_flow_keeps_its_backend_when_the_set_changes() -> Result<()> {
    let mut fx = Fixture::new("t-sticky")?;
    // Open many flows, then add a backend: every established flow stays on 10.20.0.2, while
    // some new flows go to the new one.
    let flows: Vec<u16> = (41000..41064).collect();
    for &port in &flows {
        let (verdict, _) = fx.run(&Spec::tcp("198.51.100.7", port, "192.0.2.1", 80, SYN).frame())?;
        assert_eq!(verdict, XDP_TX);
    }
    fx.reconfigure(Variant {
        extra_backend: true,
        ..Variant::default()
    })?;
    for &port in &flows {
        let (verdict, out) = fx.run(&Spec::tcp("198.51.100.7", port, "192.0.2.1", 80, ACK).frame())?;
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            v4_addrs(&out[14..34]).1,
            Ipv4Addr::new(10, 20, 0, 2),
            "flow {port} moved"
        );
    }
    assert_eq!(fx.counter("conntrack_hit")?, flows.len() as u64);
    let mut moved = 0;
    for port in 50000..50064u16 {
        let (_, out) = fx.run(&Spec::tcp("198.51.100.7", port, "192.0.2.1", 80, SYN).frame())?;
        if v4_addrs(&out[14..34]).1 == Ipv4Addr::new(10, 20, 0, 3) {
            moved += 1;
        }
    }
    assert!(
        (16..=48).contains(&moved),
        "new flows should split between two backends, {moved}/64 went to the new one"
    );
    Ok(())
}

#[test]
fn vip_frames_for_another_hosts_mac_are_left_to_the_kernel() -> Result<()> {
    let mut fx = Fixture::new("t-otherhost")?;
    // The same SYN, flooded by a switch or seen by a promiscuous port: unicast to another MAC.
    let frame = Spec::tcp("198.51.100.7", 40000, "192.0.2.1", 80, SYN).frame();
    let mut elsewhere = frame.clone();
    elsewhere[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    assert_eq!(fx.run(&elsewhere)?, (XDP_PASS, elsewhere.clone()));
    assert_eq!(fx.counter("passed_other_host")?, 1);
    assert_eq!(fx.counter("conntrack_miss")?, 0, "no flow learnt from it");
    // The probe: addressed to this node, or to every host, the same SYN is balanced.
    assert_eq!(fx.run(&frame)?.0, XDP_TX);
    let mut broadcast = frame;
    broadcast[..6].copy_from_slice(&[0xff; 6]);
    assert_eq!(fx.run(&broadcast)?.0, XDP_TX);
    assert_eq!(fx.counter("transmitted")?, 2);
    Ok(())
}

#[test]
fn source_policies_decide_new_flows_and_change_without_a_gap() -> Result<()> {
    let mut fx = Fixture::new("t-policy")?;
    let syn = |src: &str, port: u16| Spec::tcp(src, port, "192.0.2.1", 80, SYN).frame();
    // The probe: without a policy, new flows from anywhere are balanced.
    for (i, src) in ["198.51.100.8", "198.51.100.66", "203.0.113.5"].iter().enumerate() {
        assert_eq!(fx.run(&syn(src, 41000 + i as u16))?.0, XDP_TX, "{src}");
    }
    fx.reconfigure(Variant {
        source_policy: true,
        ..Variant::default()
    })?;
    // allow 198.51.100.0/24 with 198.51.100.66/32 denied inside it: the longest prefix
    // decides; a source outside the allow list is dropped.
    assert_eq!(fx.run(&syn("198.51.100.9", 42000))?.0, XDP_TX);
    assert_eq!(fx.run(&syn("198.51.100.66", 42001))?.0, XDP_DROP);
    assert_eq!(fx.run(&syn("203.0.113.6", 42002))?.0, XDP_DROP);
    assert_eq!(fx.counter("drop_source_denied")?, 2);
    // Flows established before the policy keep going: it decides new flows.
    let established = Spec::tcp("203.0.113.5", 41002, "192.0.2.1", 80, ACK).frame();
    assert_eq!(fx.run(&established)?.0, XDP_TX);
    // IPv6, a deny list only: everyone else is let through.
    let syn6 = |src: &str| Spec::tcp(src, 43000, "2001:db8::1", 80, SYN).frame();
    assert_eq!(fx.run(&syn6("2001:db8:bad::1"))?.0, XDP_DROP);
    assert_eq!(fx.run(&syn6("2001:db8:ffff::7"))?.0, XDP_TX);
    // A service without a policy is not affected.
    assert_eq!(
        fx.run(&Spec::udp("203.0.113.6", 44000, "192.0.2.2", 53).frame())?.0,
        XDP_TX
    );
    // The policy removed again: the denied source's new flows are balanced.
    fx.reconfigure(Variant::default())?;
    assert_eq!(fx.run(&syn("198.51.100.66", 42003))?.0, XDP_TX);
    assert_eq!(fx.counter("drop_source_denied")?, 3);
    Ok(())
}

#[test]
fn non_vip_traffic_passes_untouched() -> Result<()> {
    let mut fx = Fixture::new("t-nonvip")?;
    for spec in [
        Spec::tcp("198.51.100.7", 40000, "203.0.113.9", 80, SYN),
        Spec::udp("2001:db8:ffff::7", 40000, "2001:db8::99", 53),
    ] {
        let frame = spec.frame();
        let (verdict, out) = fx.run(&frame)?;
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, frame);
    }
    let arp = [&[0xffu8; 6][..], &packet::CLIENT_MAC, &[0x08, 0x06], &[0u8; 28]].concat();
    assert_eq!(fx.run(&arp)?.0, XDP_PASS);
    assert_eq!(fx.counter("passed")?, 3);
    Ok(())
}

#[test]
fn vip_on_a_closed_port_is_dropped() -> Result<()> {
    let mut fx = Fixture::new("t-closed")?;
    assert_eq!(
        fx.run(&Spec::tcp("198.51.100.7", 40000, "192.0.2.1", 22, SYN).frame())?
            .0,
        XDP_DROP
    );
    assert_eq!(
        fx.run(&Spec::udp("198.51.100.7", 40000, "192.0.2.1", 80).frame())?.0,
        XDP_DROP
    );
    assert_eq!(
        fx.run(&Spec::new("198.51.100.7", "192.0.2.1", 47, vec![0; 8]).frame())?
            .0,
        XDP_DROP
    );
    assert_eq!(fx.counter("drop_no_service")?, 3);
    Ok(())
}

#[test]
fn ipv6_extension_headers_to_a_vip_are_dropped_as_unsupported() -> Result<()> {
    let mut fx = Fixture::new("t-v6ext")?;
    // Hop-by-hop, routing and destination options before the transport header: not balanced,
    // counted apart from protocols no service names.
    for next_header in [0u8, 43, 60] {
        let frame = Spec::new(
            "2001:db8:ffff::7",
            "2001:db8::1",
            next_header,
            vec![6, 0, 0, 0, 0, 0, 0, 0],
        )
        .frame();
        assert_eq!(fx.run(&frame)?.0, XDP_DROP, "next header {next_header}");
    }
    assert_eq!(fx.counter("drop_unsupported")?, 3);
    assert_eq!(fx.counter("drop_no_service")?, 0);
    let other = Spec::new("2001:db8:ffff::7", "2001:db8::1", 47, vec![0; 8]).frame();
    assert_eq!(fx.run(&other)?.0, XDP_DROP);
    assert_eq!(fx.counter("drop_no_service")?, 1);
    // The same shape to an address that is no VIP is the kernel's.
    let frame = Spec::new("2001:db8:ffff::7", "2001:db8::99", 0, vec![6, 0, 0, 0, 0, 0, 0, 0]).frame();
    assert_eq!(fx.run(&frame)?, (XDP_PASS, frame));
    Ok(())
}

#[test]
fn local_backend_is_delivered_to_the_kernel() -> Result<()> {
    let mut fx = Fixture::new("t-local")?;
    let frame = Spec::tcp("198.51.100.7", 40000, "192.0.2.3", 443, SYN).frame();
    let (verdict, out) = fx.run(&frame)?;
    assert_eq!((verdict, out), (XDP_PASS, frame));
    assert_eq!(fx.counter("local_delivered")?, 1);
    Ok(())
}

/// Opens flows from `client` to `vip`:80 while its service has one backend, then gives the
/// service a second one (Maglev sends part of every new flow set there); the flows' ports.
fn flows_then_a_second_backend(fx: &mut Fixture, client: &str, vip: &str) -> Result<Vec<u16>> {
    let ports: Vec<u16> = (40000..40032).collect();
    for &port in &ports {
        fx.run(&Spec::tcp(client, port, vip, 80, SYN).frame())?;
    }
    fx.reconfigure(Variant {
        extra_backend: true,
        ..Variant::default()
    })?;
    Ok(ports)
}

#[test]
fn icmp_frag_needed_goes_to_the_flows_backend() -> Result<()> {
    let mut fx = Fixture::new("t-icmp")?;
    // An ICMP error about an established flow's reply (VIP -> client) must reach the backend
    // the flow is on, though new flows now split between two.
    let ports = flows_then_a_second_backend(&mut fx, "198.51.100.7", "192.0.2.1")?;
    let mut moved = 0;
    for &port in &ports {
        let reply = Spec::tcp("192.0.2.1", 80, "198.51.100.7", port, ACK).ip();
        let spec = icmp_frag_needed("203.0.113.1", "192.0.2.1", &reply, 1200);
        let (verdict, out) = fx.run(&spec.frame())?;
        assert_eq!(verdict, XDP_TX);
        assert_ipip4(&fx, &out, Ipv4Addr::new(10, 20, 0, 2), BACKEND4_MAC, &spec.ip(), 14);
        // The same flow, unknown to the connection table, would now go to...
        let (_, fresh) = fx.run(&Spec::tcp("198.51.100.9", port, "192.0.2.1", 80, SYN).frame())?;
        moved += usize::from(v4_addrs(&fresh[14..34]).1 == Ipv4Addr::new(10, 20, 0, 3));
    }
    assert!(moved > 0, "no new flow goes to the new backend: the probe cannot tell");
    assert_eq!(fx.counter("icmp_forwarded")?, ports.len() as u64);
    Ok(())
}

#[test]
fn vlan_tagged_frames_keep_their_tags() -> Result<()> {
    let mut fx = Fixture::new("t-vlan")?;
    for vlans in [vec![100u16], vec![200, 100]] {
        let mut spec = Spec::tcp("198.51.100.7", 40001, "192.0.2.1", 80, SYN);
        spec.vlans = vlans.clone();
        let frame = spec.frame();
        let l2_len = 14 + 4 * vlans.len();
        let (verdict, out) = fx.run(&frame)?;
        assert_eq!(verdict, XDP_TX, "vlans {vlans:?}");
        assert_eq!(&out[12..l2_len - 2], &frame[12..l2_len - 2], "tags preserved");
        assert_ipip4(&fx, &out, Ipv4Addr::new(10, 20, 0, 2), BACKEND4_MAC, &spec.ip(), l2_len);
    }
    Ok(())
}

#[test]
fn fragments_to_a_vip_are_dropped_and_counted() -> Result<()> {
    let mut fx = Fixture::new("t-frag")?;
    let mut first = Spec::tcp("198.51.100.7", 40000, "192.0.2.1", 80, ACK);
    first.frag_off = 0x2000; // MF
    let mut later = Spec::new("198.51.100.7", "192.0.2.1", 6, vec![0; 32]);
    later.frag_off = 0x0004;
    let v6 = Spec::new(
        "2001:db8:ffff::7",
        "2001:db8::1",
        44,
        vec![6, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    for spec in [first, later, v6] {
        assert_eq!(fx.run(&spec.frame())?.0, XDP_DROP);
    }
    assert_eq!(fx.counter("drop_fragment")?, 3);
    Ok(())
}

#[test]
fn truncated_frames_are_never_forwarded_and_always_counted() -> Result<()> {
    let mut fx = Fixture::new("t-trunc")?;
    let mut tagged = Spec::tcp("198.51.100.7", 40002, "192.0.2.1", 80, SYN);
    tagged.vlans = vec![7, 8];
    let specs = [
        Spec::tcp("198.51.100.7", 40002, "192.0.2.1", 80, SYN),
        Spec::tcp("2001:db8:ffff::7", 40002, "2001:db8::1", 80, SYN),
        Spec::udp("198.51.100.7", 40002, "192.0.2.2", 53),
        tagged,
    ];
    for spec in specs {
        let frame = spec.frame();
        for len in 0..frame.len() {
            let before = fx.total_counted()?;
            let result = fx.run(&frame[..len]);
            if len < 14 {
                // The kernel refuses test frames shorter than an Ethernet header.
                continue;
            }
            let (verdict, _) = result?;
            assert!(
                verdict == XDP_PASS || verdict == XDP_DROP,
                "len {len}: verdict {verdict}"
            );
            assert_eq!(fx.total_counted()?, before + 1, "len {len} counted once");
        }
        assert_eq!(fx.run(&frame)?.0, XDP_TX, "the whole frame is forwarded");
    }
    Ok(())
}

#[test]
fn ipip_to_this_node_is_decapsulated() -> Result<()> {
    let mut fx = Fixture::new("t-decap")?;
    let inner = Spec::tcp("198.51.100.7", 40000, "192.0.2.9", 443, SYN).ip();
    let outer = Spec::new("10.20.0.9", "10.20.0.1", 4, inner.clone());
    let (verdict, out) = fx.run(&outer.frame())?;
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    assert_eq!(&out[14..], &inner[..]);
    let inner6 = Spec::tcp("2001:db8:ffff::7", 40000, "2001:db8::9", 443, SYN).ip();
    let outer6 = Spec::new("fd20::9", "fd20::1", 41, inner6.clone());
    let (verdict, out) = fx.run(&outer6.frame())?;
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(&out[14..], &inner6[..]);
    assert_eq!(fx.counter("decapsulated")?, 2);
    // A tunnel to someone else is not ours to open.
    let other = Spec::new("10.20.0.9", "10.20.0.77", 4, inner);
    let frame = other.frame();
    assert_eq!(fx.run(&frame)?, (XDP_PASS, frame));
    Ok(())
}

/// A VRRPv3 advert for VRID 51 at priority 255 (what would take a VIP over), as its IP payload.
fn hostile_advert() -> Vec<u8> {
    vec![0x31, 51, 255, 1, 0x00, 0x0a, 0, 0, 192, 0, 2, 1]
}

#[test]
fn tunnels_only_from_peers_and_never_with_link_only_packets() -> Result<()> {
    let mut fx = Fixture::new("t-tunnel")?;
    // From an address that is not a tunnel peer (anyone who can route to the node): dropped,
    // whatever it carries; the same packet from a peer is decapsulated.
    let inner = Spec::tcp("198.51.100.7", 40000, "192.0.2.9", 443, SYN).ip();
    let stranger = Spec::new("203.0.113.66", "10.20.0.1", 4, inner.clone()).frame();
    assert_eq!(fx.run(&stranger)?.0, XDP_DROP);
    assert_eq!(fx.counter("drop_tunnel_not_peer")?, 1);
    let from_peer = Spec::new("10.20.0.9", "10.20.0.1", 4, inner).frame();
    assert_eq!(fx.run(&from_peer)?.0, XDP_PASS);
    assert_eq!(fx.counter("decapsulated")?, 1);
    // Even from a peer, a VRRP advert or IPv6 neighbour discovery never comes out of a tunnel:
    // the same frames not in a tunnel are passed to the host (the control).
    let advert = Spec::new("10.20.0.9", "224.0.0.18", 112, hostile_advert()).ip();
    let tunnelled = Spec::new("10.20.0.9", "10.20.0.1", 4, advert.clone()).frame();
    assert_eq!(fx.run(&tunnelled)?.0, XDP_DROP);
    let plain = Spec::new("10.20.0.9", "224.0.0.18", 112, hostile_advert()).frame();
    assert_eq!(fx.run(&plain)?.0, XDP_PASS);
    let mut ns = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>()?.octets());
    let solicitation = Spec::new("fd20::9", "ff02::1:ff00:1", 58, ns).ip();
    let tunnelled6 = Spec::new("fd20::9", "fd20::1", 41, solicitation).frame();
    assert_eq!(fx.run(&tunnelled6)?.0, XDP_DROP);
    let advert6 = Spec::new("fe80::9", "ff02::12", 112, hostile_advert()).ip();
    assert_eq!(
        fx.run(&Spec::new("fd20::9", "fd20::1", 41, advert6).frame())?.0,
        XDP_DROP
    );
    assert_eq!(fx.counter("drop_tunnel_forbidden")?, 3);
    assert_eq!(fx.counter("decapsulated")?, 1);
    Ok(())
}

#[test]
fn too_big_to_encapsulate_gets_icmp_back() -> Result<()> {
    let mut fx = Fixture::new("t-toobig")?;
    fx.ns.exec(&["ip", "link", "set", "t0", "mtu", "1400"])?;
    // A small packet first, so the big ones take the cached next hop (and its MTU) as well.
    for spec in [
        Spec::tcp("198.51.100.7", 40000, "192.0.2.1", 80, SYN),
        Spec::tcp("2001:db8:ffff::7", 40000, "2001:db8::1", 80, SYN),
    ] {
        assert_eq!(fx.run(&spec.frame())?.0, XDP_TX);
    }
    let spec = Spec::new("198.51.100.7", "192.0.2.1", 6, packet::tcp(40000, 80, ACK, 1390 - 40));
    let (verdict, out) = fx.run(&spec.frame())?;
    assert_eq!(verdict, XDP_TX);
    assert_eq!(&out[0..6], &packet::CLIENT_MAC, "back to the client");
    let ip = &out[14..];
    assert_eq!(ip.len(), 20 + 8 + 28);
    assert_eq!(
        v4_addrs(ip),
        (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 7))
    );
    assert_eq!(checksum(0, &ip[..20]), 0);
    let icmp = &ip[20..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
    assert_eq!(
        u16::from_be_bytes([icmp[6], icmp[7]]),
        1380,
        "MTU minus the tunnel header"
    );
    assert_eq!(checksum(0, icmp), 0);
    assert_eq!(&icmp[8..], &spec.ip()[..28], "quotes the packet");

    let spec6 = Spec::new(
        "2001:db8:ffff::7",
        "2001:db8::1",
        6,
        packet::tcp(40000, 80, ACK, 1390 - 60),
    );
    let (verdict, out) = fx.run(&spec6.frame())?;
    assert_eq!(verdict, XDP_TX);
    let ip = &out[14..];
    assert_eq!(ip.len(), 40 + 8 + 48);
    let (src, dst) = v6_addrs(ip);
    assert_eq!(
        (src, dst),
        (
            "2001:db8::1".parse::<Ipv6Addr>()?,
            "2001:db8:ffff::7".parse::<Ipv6Addr>()?
        )
    );
    let icmp = &ip[40..];
    assert_eq!(icmp[0], 2, "packet too big");
    assert_eq!(u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]), 1360);
    assert_eq!(icmpv6_checksum(ip), 0, "ICMPv6 checksum");
    assert_eq!(fx.counter("icmp_too_big_sent")?, 2);
    Ok(())
}

#[test]
fn any_port_service_takes_every_port_of_its_protocol() -> Result<()> {
    let mut fx = Fixture::new("t-anyport")?;
    for port in [1u16, 8080, 65535] {
        let spec = Spec::tcp("198.51.100.7", 40000, "192.0.2.4", port, SYN);
        let (verdict, out) = fx.run(&spec.frame())?;
        assert_eq!(verdict, XDP_TX, "port {port}");
        assert_ipip4(&fx, &out, Ipv4Addr::new(10, 20, 0, 2), BACKEND4_MAC, &spec.ip(), 14);
    }
    // It is a TCP service: UDP to the same VIP is firewalled.
    assert_eq!(
        fx.run(&Spec::udp("198.51.100.7", 40000, "192.0.2.4", 53).frame())?.0,
        XDP_DROP
    );
    assert_eq!(fx.counter("drop_no_service")?, 1);
    Ok(())
}

#[test]
fn ipv6_l2_dsr_and_local_delivery() -> Result<()> {
    let mut fx = Fixture::new("t-v6modes")?;
    let frame = Spec::udp("2001:db8:ffff::7", 5353, "2001:db8::2", 53).frame();
    let (verdict, out) = fx.run(&frame)?;
    assert_eq!(verdict, XDP_TX);
    assert_eq!(&out[0..6], &BACKEND6_MAC);
    assert_eq!(&out[6..12], &fx.node_mac);
    assert_eq!(&out[12..], &frame[12..], "everything past the MACs is unchanged");
    let frame = Spec::tcp("2001:db8:ffff::7", 40000, "2001:db8::3", 443, SYN).frame();
    assert_eq!(fx.run(&frame)?, (XDP_PASS, frame));
    assert_eq!(fx.counter("local_delivered")?, 1);
    Ok(())
}

#[test]
fn icmpv6_packet_too_big_goes_to_the_flows_backend() -> Result<()> {
    let mut fx = Fixture::new("t-icmp6")?;
    // As for IPv4: flows on web6's one backend, then a second joins.
    let ports = flows_then_a_second_backend(&mut fx, "2001:db8:ffff::7", "2001:db8::1")?;
    let mut moved = 0;
    for &port in &ports {
        let reply = Spec::tcp("2001:db8::1", 80, "2001:db8:ffff::7", port, ACK).ip();
        let mut message = vec![2u8, 0, 0, 0];
        message.extend_from_slice(&1280u32.to_be_bytes());
        message.extend_from_slice(&reply[..48]);
        let spec = Spec::new("2001:db8:ffff::1", "2001:db8::1", 58, message);
        let (verdict, out) = fx.run(&spec.frame())?;
        assert_eq!(verdict, XDP_TX);
        assert_eq!(&out[0..6], &BACKEND6_MAC, "port {port}");
        assert_eq!(v6_addrs(&out[14..54]).1, "fd20::2".parse::<Ipv6Addr>()?, "port {port}");
        assert_eq!(&out[54..], &spec.ip()[..], "the ICMPv6 message travels intact");
        let (_, fresh) = fx.run(&Spec::tcp("2001:db8:ffff::9", port, "2001:db8::1", 80, SYN).frame())?;
        moved += usize::from(v6_addrs(&fresh[14..54]).1 == "fd20::3".parse::<Ipv6Addr>()?);
    }
    assert!(moved > 0, "no new flow goes to the new backend: the probe cannot tell");
    assert_eq!(fx.counter("icmp_forwarded")?, ports.len() as u64);
    Ok(())
}

#[test]
fn new_flow_cap_limits_inserts_not_forwarding() -> Result<()> {
    // The budget is per CPU: keep every run on one.
    let mut cpu = nix::sched::CpuSet::new();
    cpu.set(0)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu)?;
    let mut fx = Fixture::new("t-cap")?;
    fx.reconfigure(Variant {
        new_flow_cap: 5,
        ..Variant::default()
    })?;
    for port in 42000..42012u16 {
        let (verdict, _) = fx.run(&Spec::tcp("198.51.100.7", port, "192.0.2.1", 80, SYN).frame())?;
        assert_eq!(verdict, XDP_TX, "flows over the cap are still forwarded");
    }
    assert_eq!(fx.counter("conntrack_insert_capped")?, 7);
    // Recorded flows hit the table; capped ones miss it again.
    for port in 42000..42012u16 {
        fx.run(&Spec::tcp("198.51.100.7", port, "192.0.2.1", 80, ACK).frame())?;
    }
    assert_eq!(fx.counter("conntrack_hit")?, 5);
    Ok(())
}

fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&packet::CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&packet::CLIENT_MAC);
    f.extend_from_slice(&[198, 51, 100, 7]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// A neighbour solicitation from `src` for `target`, with a source link-layer option.
fn solicitation(src: &str, target: &str) -> Result<Vec<u8>> {
    let target: Ipv6Addr = target.parse()?;
    let mut m = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[1, 1]);
    m.extend_from_slice(&packet::CLIENT_MAC);
    let t = target.octets();
    let group = format!("ff02::1:ff{:02x}:{:02x}{:02x}", t[13], t[14], t[15]);
    let mut ip = packet::ip_packet(src.parse()?, group.parse()?, 58, &m, 0);
    ip[7] = 255; // hop limit
    let mut f = vec![0x33, 0x33, 0xff, t[13], t[14], t[15]];
    f.extend_from_slice(&packet::CLIENT_MAC);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&ip);
    Ok(f)
}

#[test]
fn master_answers_arp_and_neighbour_solicitations_for_vips() -> Result<()> {
    let mut fx = Fixture::new("t-arp")?;
    let (verdict, out) = fx.run(&arp_request([192, 0, 2, 1]))?;
    assert_eq!(verdict, XDP_TX);
    assert_eq!(&out[0..6], &packet::CLIENT_MAC, "back to the asker");
    assert_eq!(&out[6..12], &fx.node_mac);
    assert_eq!(&out[20..22], &[0, 2], "ARP reply");
    assert_eq!(&out[22..28], &fx.node_mac, "sender MAC is ours");
    assert_eq!(&out[28..32], &[192, 0, 2, 1], "sender IP is the VIP");
    assert_eq!(&out[32..38], &packet::CLIENT_MAC);
    assert_eq!(&out[38..42], &[198, 51, 100, 7]);
    // Not a VIP: the kernel's business.
    let other = arp_request([10, 20, 0, 1]);
    assert_eq!(fx.run(&other)?, (XDP_PASS, other));
    assert_eq!(fx.counter("arp_replied")?, 1);

    let (verdict, out) = fx.run(&solicitation("2001:db8:ffff::7", "2001:db8::1")?)?;
    assert_eq!(verdict, XDP_TX);
    assert_eq!(&out[0..6], &packet::CLIENT_MAC);
    assert_eq!(&out[6..12], &fx.node_mac);
    let ip = &out[14..];
    assert_eq!(ip.len(), 40 + 32);
    assert_eq!(ip[7], 255, "hop limit");
    let (src, dst) = v6_addrs(ip);
    assert_eq!(
        (src, dst),
        (
            "2001:db8::1".parse::<Ipv6Addr>()?,
            "2001:db8:ffff::7".parse::<Ipv6Addr>()?
        )
    );
    let na = &ip[40..];
    assert_eq!((na[0], na[4]), (136, 0x60), "advertisement, solicited + override");
    assert_eq!(&na[8..24], &"2001:db8::1".parse::<Ipv6Addr>()?.octets());
    assert_eq!(&na[24..26], &[2, 1]);
    assert_eq!(&na[26..32], &fx.node_mac);
    assert_eq!(icmpv6_checksum(ip), 0, "ICMPv6 checksum");
    let other = solicitation("2001:db8:ffff::7", "2001:db8::99")?;
    assert_eq!(fx.run(&other)?, (XDP_PASS, other));
    assert_eq!(fx.counter("neighbour_advertised")?, 1);
    Ok(())
}

#[test]
fn backup_stays_silent_and_delivers_vip_traffic_locally() -> Result<()> {
    let mut fx = Fixture::new("t-backup")?;
    fx.dp.set_forwarding(false)?;
    for frame in [
        arp_request([192, 0, 2, 1]),
        solicitation("2001:db8:ffff::7", "2001:db8::1")?,
    ] {
        assert_eq!(fx.run(&frame)?, (XDP_PASS, frame));
    }
    let syn = Spec::tcp("198.51.100.7", 40000, "192.0.2.1", 80, SYN).frame();
    assert_eq!(fx.run(&syn)?, (XDP_PASS, syn));
    assert_eq!(fx.counter("passed_not_forwarding")?, 1);
    assert_eq!(fx.counter("arp_replied")? + fx.counter("neighbour_advertised")?, 0);
    // Back to master: it answers again.
    fx.dp.set_forwarding(true)?;
    assert_eq!(fx.run(&arp_request([192, 0, 2, 1]))?.0, XDP_TX);
    Ok(())
}
