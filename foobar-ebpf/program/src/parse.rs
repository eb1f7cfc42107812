//! Header layouts and the parser that turns a frame into a [`Packet`] summary.
//!
//! Every read goes through [`ptr_at`], which checks the access against `data_end` so the verifier
//! can prove it. Multi-byte fields are kept in network byte order as byte arrays or `u16`s read
//! unaligned, and converted only where arithmetic needs it.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use foobar_common::{Addr, FAMILY_V4, FAMILY_V6};

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// EtherType of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ) service tag.
pub const ETH_P_8021AD: u16 = 0x88A8;

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of IPv4-in-IP (IPIP).
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6-in-IP.
pub const IPPROTO_IPV6: u8 = 41;
/// IPv6 next header: hop-by-hop options.
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IPv6 next header: routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 next header: destination options.
pub const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 next header: fragment extension header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

// Header layouts use their natural field widths, so the compiler emits word loads and stores
// (the BPF JIT and verifier allow unaligned packet access on the architectures foobar runs on).
// Multi-byte fields hold network-order values: `u16::from_be` to read, `to_be` to write.

/// Ethernet header.
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}
/// Length of an untagged Ethernet header.
pub const ETH_LEN: usize = size_of::<EthHdr>();

/// 802.1Q / 802.1ad tag (TCI, then the next EtherType).
#[repr(C)]
pub struct VlanHdr {
    pub tci: u16,
    pub proto: u16,
}
/// Length of one VLAN tag.
pub const VLAN_LEN: usize = size_of::<VlanHdr>();

/// IPv4 header without options.
#[repr(C)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}
/// Length of an IPv4 header without options.
pub const IPV4_LEN: usize = size_of::<Ipv4Hdr>();

/// IPv6 fixed header.
#[repr(C)]
pub struct Ipv6Hdr {
    pub ver_tc_flow: u32,
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: Addr,
    pub dst: Addr,
}
/// Length of the IPv6 fixed header.
pub const IPV6_LEN: usize = size_of::<Ipv6Hdr>();

/// The first bytes of a TCP or UDP header: the ports.
#[repr(C)]
pub struct PortsHdr {
    pub sport: u16,
    pub dport: u16,
}

/// ICMP / ICMPv6 header (type, code, checksum, 4 bytes of rest).
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    pub rest: u32,
}
/// Length of an ICMP header.
pub const ICMP_LEN: usize = size_of::<IcmpHdr>();

/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;

/// ARP for IPv4 over Ethernet.
#[repr(C)]
pub struct ArpHdr {
    pub htype: u16,
    pub ptype: u16,
    pub hlen: u8,
    pub plen: u8,
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

/// A neighbour solicitation or advertisement with one link-layer address option.
#[repr(C)]
pub struct NdMsg {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    pub flags: u32,
    pub target: Addr,
    pub opt_type: u8,
    pub opt_len: u8,
    pub mac: [u8; 6],
}

/// What a frame is.
pub enum Frame {
    /// An IP packet.
    Ip(Packet),
    /// An ARP packet at this offset.
    Arp(usize),
}

/// Why a frame could not be parsed or rewritten.
pub enum ParseError {
    /// Shorter than a header it announces, or a header field out of range.
    Malformed,
    /// A kernel helper refused to resize the frame (see [`crate::access::adjust_head`]).
    HelperFailed,
    /// Not IP, or an IP shape the data plane leaves to the kernel.
    NotIp,
}

/// Returns a pointer to a `T` at `offset` bytes into the frame, if the whole `T` is inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ParseError> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(ParseError::Malformed);
    }
    Ok((start + offset) as *mut T)
}

/// What the data plane needs to know about an IP packet.
pub struct Packet {
    /// Offset of the IP header (after Ethernet and up to two VLAN tags): 14, 18 or 22.
    pub l3_off: usize,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// L4 protocol (IPv6: the first next-header value).
    pub proto: u8,
    /// Length of the IP packet (header included) as the IP header says.
    pub ip_len: usize,
    /// True for IPv4 fragments (MF set or offset non-zero).
    pub fragment: bool,
    /// IPv4 header length in bytes (20..=60); 40 for IPv6.
    pub ip_hdr_len: usize,
    /// IPv4 TOS or IPv6 traffic class.
    pub tos: u8,
    /// Set by the caller when the packet is an ICMP error about a VIP flow (whose flow key
    /// then describes the quoted packet, not this one).
    pub quotes_flow: bool,
}

/// Parses Ethernet, up to two VLAN tags, and the IPv4 or IPv6 header (or finds ARP).
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Frame, ParseError> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let mut ether_type = u16::from_be(get!(eth.proto));
    let mut l3_off = ETH_LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let tag: *const VlanHdr = ptr_at(ctx, l3_off)?;
        ether_type = u16::from_be(get!(tag.proto));
        l3_off += VLAN_LEN;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            let tag: *const VlanHdr = ptr_at(ctx, l3_off)?;
            ether_type = u16::from_be(get!(tag.proto));
            l3_off += VLAN_LEN;
        }
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(ctx, l3_off).map(Frame::Ip),
        ETH_P_IPV6 => parse_ipv6(ctx, l3_off).map(Frame::Ip),
        ETH_P_ARP => Ok(Frame::Arp(l3_off)),
        _ => Err(ParseError::NotIp),
    }
}

/// Whether `len` bytes from `off` are inside the frame. Compared as lengths, not as
/// `data + off + len > data_end`: older verifiers (Debian bookworm's 6.1 among them) keep no
/// bounds for a byte-swapped value and refuse to add an unbounded value to a packet pointer,
/// while comparing scalars is fine (`data_end - data` is allowed to root). Found by the VM.
#[inline(always)]
fn fits(ctx: &XdpContext, off: usize, len: usize) -> bool {
    len <= ctx.data_end() - ctx.data() - off
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3_off: usize) -> Result<Packet, ParseError> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3_off)?;
    let ver_ihl = get!(ip.ver_ihl);
    let hdr_len = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || hdr_len < IPV4_LEN {
        return Err(ParseError::Malformed);
    }
    let ip_len = u16::from_be(get!(ip.tot_len)) as usize;
    if ip_len < hdr_len || !fits(ctx, l3_off, ip_len) {
        return Err(ParseError::Malformed);
    }
    let frag = u16::from_be(get!(ip.frag_off));
    Ok(Packet {
        l3_off,
        l4_off: l3_off + hdr_len,
        family: FAMILY_V4,
        proto: get!(ip.proto),
        ip_len,
        fragment: frag & 0x3fff != 0,
        ip_hdr_len: hdr_len,
        tos: get!(ip.tos),
        quotes_flow: false,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3_off: usize) -> Result<Packet, ParseError> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3_off)?;
    let first = u32::from_be(get!(ip.ver_tc_flow));
    if first >> 28 != 6 {
        return Err(ParseError::Malformed);
    }
    let ip_len = u16::from_be(get!(ip.payload_len)) as usize + IPV6_LEN;
    if !fits(ctx, l3_off, ip_len) {
        return Err(ParseError::Malformed);
    }
    let next = get!(ip.next_hdr);
    Ok(Packet {
        l3_off,
        l4_off: l3_off + IPV6_LEN,
        family: FAMILY_V6,
        proto: next,
        ip_len,
        fragment: next == IPPROTO_FRAGMENT,
        ip_hdr_len: IPV6_LEN,
        tos: (first >> 20) as u8,
        quotes_flow: false,
    })
}

/// Which address of a packet.
pub enum End {
    /// The source address.
    Src,
    /// The destination address.
    Dst,
}

/// Copies one of the packet's addresses into `out` (IPv4 in the first word; the rest must
/// already be zero).
#[inline(always)]
pub fn read_addr(ctx: &XdpContext, pkt: &Packet, end: End, out: &mut Addr) -> Result<(), ParseError> {
    if pkt.family == FAMILY_V4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, pkt.l3_off)?;
        out[0] = match end {
            End::Src => get!(ip.src),
            End::Dst => get!(ip.dst),
        };
    } else {
        let ip: *const Ipv6Hdr = ptr_at(ctx, pkt.l3_off)?;
        *out = match end {
            End::Src => get!(ip.src),
            End::Dst => get!(ip.dst),
        };
    }
    Ok(())
}

/// Reads the source and destination ports (network byte order) at `l4_off`.
#[inline(always)]
pub fn ports_at(ctx: &XdpContext, l4_off: usize) -> Result<(u16, u16), ParseError> {
    let ports: *const PortsHdr = ptr_at(ctx, l4_off)?;
    Ok((get!(ports.sport), get!(ports.dport)))
}
