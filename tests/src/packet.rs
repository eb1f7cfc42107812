//! Frame builders and readers for driving the XDP program with BPF_PROG_TEST_RUN.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Client MAC used in test frames.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
/// Destination MAC of test frames: the test node's (frames for other MACs are not balanced).
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// RFC 1071 checksum of `data` plus an initial sum.
pub fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            (chunk[0] as u16) << 8
        };
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum over an IPv6 packet's ICMPv6 message and pseudo-header: 0 when the message's
/// own checksum is right.
pub fn icmpv6_checksum(ip: &[u8]) -> u16 {
    let message = &ip[40..];
    let pseudo: u32 = ip[8..40]
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    checksum(pseudo + message.len() as u32 + 58, message)
}

/// What to put in a test frame.
#[derive(Clone)]
pub struct Spec {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// L4 protocol number (6, 17, 1, 58, 4, 41, ...).
    pub proto: u8,
    /// L4 header and payload (ports first for TCP/UDP).
    pub l4: Vec<u8>,
    /// VLAN ids to push (outermost first), up to two.
    pub vlans: Vec<u16>,
    /// IPv4 only: MF flag / fragment offset (raw frag_off field).
    pub frag_off: u16,
}

/// A TCP segment header with the given ports and flags, plus `payload` bytes of 'x'.
pub fn tcp(sport: u16, dport: u16, flags: u8, payload: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(20 + payload);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&1u32.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes());
    h.push(5 << 4);
    h.push(flags);
    h.extend_from_slice(&65535u16.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h.extend(std::iter::repeat_n(b'x', payload));
    h
}

/// A UDP header and payload.
pub fn udp(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend(std::iter::repeat_n(b'u', payload));
    h
}

/// TCP SYN flag.
pub const SYN: u8 = 0x02;
/// TCP ACK flag.
pub const ACK: u8 = 0x10;

impl Spec {
    /// A TCP packet.
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Self {
        Self::new(src, dst, 6, tcp(sport, dport, flags, 0))
    }

    /// A UDP packet.
    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self::new(src, dst, 17, udp(sport, dport, 16))
    }

    /// Any packet.
    pub fn new(src: &str, dst: &str, proto: u8, l4: Vec<u8>) -> Self {
        Self {
            src: src.parse().expect("test address"),
            dst: dst.parse().expect("test address"),
            proto,
            l4,
            vlans: Vec::new(),
            frag_off: 0,
        }
    }

    /// The IP packet (header and payload).
    pub fn ip(&self) -> Vec<u8> {
        ip_packet(self.src, self.dst, self.proto, &self.l4, self.frag_off)
    }

    /// The Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&NODE_MAC);
        f.extend_from_slice(&CLIENT_MAC);
        let mut tpids = vec![];
        if self.vlans.len() == 2 {
            tpids.push(0x88a8u16);
        }
        tpids.extend(std::iter::repeat_n(0x8100u16, self.vlans.len().min(1)));
        for (tpid, vid) in tpids.iter().zip(&self.vlans) {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        let ether_type: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        f.extend_from_slice(&ether_type.to_be_bytes());
        f.extend_from_slice(&self.ip());
        f
    }
}

/// An IPv4 or IPv6 packet around `l4`, with valid IPv4 header checksum.
pub fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8], frag_off: u16) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.push(0x45);
            p.push(0);
            p.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            p.extend_from_slice(&[0x12, 0x34]);
            p.extend_from_slice(&frag_off.to_be_bytes());
            p.push(64);
            p.push(proto);
            p.extend_from_slice(&[0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let c = checksum(0, &p);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.push(proto);
            p.push(64);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed address families in a test packet"),
    }
    p.extend_from_slice(l4);
    p
}

/// An ICMP "fragmentation needed" (IPv4) from `router` to `vip` quoting `quoted` (an IP packet).
pub fn icmp_frag_needed(router: &str, vip: &str, quoted: &[u8], mtu: u16) -> Spec {
    let mut m = vec![3, 4, 0, 0, 0, 0];
    m.extend_from_slice(&mtu.to_be_bytes());
    m.extend_from_slice(&quoted[..quoted.len().min(28)]);
    let c = checksum(0, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    Spec::new(router, vip, 1, m)
}

/// Source and destination of an IPv4 header.
pub fn v4_addrs(ip: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    (
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    )
}

/// Source and destination of an IPv6 header.
pub fn v6_addrs(ip: &[u8]) -> (Ipv6Addr, Ipv6Addr) {
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    s.copy_from_slice(&ip[8..24]);
    d.copy_from_slice(&ip[24..40]);
    (Ipv6Addr::from(s), Ipv6Addr::from(d))
}
