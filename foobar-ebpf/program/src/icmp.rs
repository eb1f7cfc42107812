//! ICMP about VIP flows: path-MTU errors sent to a VIP are routed to the flow's backend, and a
//! packet too big to encapsulate gets "fragmentation needed" / "packet too big" back.

use crate::{
    access::{adjust_head, adjust_tail, read_words, write_words},
    csum,
    maps::count,
    parse::{
        ptr_at, EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr, Packet, ParseError, PortsHdr, ICMP_LEN, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPV4_LEN, IPV6_LEN,
    },
};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use foobar_common::{Counter, FlowKey, FAMILY_V4};

/// ICMP destination unreachable / fragmentation needed.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMPv6 packet too big.
const ICMPV6_PKT_TOOBIG: u8 = 2;
/// Bytes of the offending packet's L4 header quoted in an ICMP error.
const QUOTED_L4: usize = 8;
/// Hop limit of ICMP errors this program originates.
const ICMP_TTL: u8 = 64;

/// For an ICMP "fragmentation needed" / ICMPv6 "packet too big" sent to a VIP (`flow.dst`),
/// rewrites `flow` to the flow it is about, in the client-to-VIP direction (the quoted packet
/// is the backend's reply, sent from the VIP), and returns true. Any other ICMP message
/// returns false and is left to the kernel.
#[inline(always)]
pub fn quoted_flow(ctx: &XdpContext, pkt: &Packet, flow: &mut FlowKey) -> Result<bool, ParseError> {
    let icmp: *const IcmpHdr = ptr_at(ctx, pkt.l4_off)?;
    let (kind, code) = (get!(icmp.kind), get!(icmp.code));
    let inner_off = pkt.l4_off + ICMP_LEN;
    let ports_off = if pkt.family == FAMILY_V4 {
        if pkt.proto != IPPROTO_ICMP || kind != ICMP_DEST_UNREACH || code != ICMP_FRAG_NEEDED {
            return Ok(false);
        }
        let ip: *const Ipv4Hdr = ptr_at(ctx, inner_off)?;
        if get!(ip.ver_ihl) != 0x45 || get!(ip.src) != flow.dst[0] {
            return Ok(false);
        }
        flow.src[0] = get!(ip.dst);
        flow.proto = get!(ip.proto);
        inner_off + IPV4_LEN
    } else {
        if pkt.proto != IPPROTO_ICMPV6 || kind != ICMPV6_PKT_TOOBIG {
            return Ok(false);
        }
        let ip: *const Ipv6Hdr = ptr_at(ctx, inner_off)?;
        if get!(ip.src) != flow.dst {
            return Ok(false);
        }
        flow.src = get!(ip.dst);
        flow.proto = get!(ip.next_hdr);
        inner_off + IPV6_LEN
    };
    let ports: *const PortsHdr = ptr_at(ctx, ports_off)?;
    flow.sport_be = get!(ports.dport);
    flow.dport_be = get!(ports.sport);
    Ok(true)
}

/// Turns `pkt` (of `flow`, from a client, too big for the egress MTU once encapsulated) into an ICMP
/// "fragmentation needed" / ICMPv6 "packet too big" reporting `mtu`, and sends it back.
#[inline(always)]
pub fn send_too_big(ctx: &XdpContext, pkt: &Packet, flow: &FlowKey, mtu: usize) -> u32 {
    let built = if pkt.family == FAMILY_V4 {
        build_frag_needed(ctx, pkt, flow, mtu)
    } else {
        build_packet_too_big(ctx, pkt, flow, mtu)
    };
    match built {
        Ok(()) => {
            count(Counter::IcmpTooBigSent);
            xdp_action::XDP_TX
        }
        Err(ParseError::HelperFailed) => {
            count(Counter::HelperFailed);
            xdp_action::XDP_DROP
        }
        Err(_) => {
            count(Counter::DropMalformed);
            xdp_action::XDP_DROP
        }
    }
}

/// Grows the head by `grow` bytes, moves the L2 header to the new front with its MACs swapped,
/// and trims the frame to `l3_off + keep` bytes.
#[inline(always)]
fn reframe(ctx: &XdpContext, l3_off: usize, grow: usize, keep: usize) -> Result<(), ParseError> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let (dst, src) = (get!(eth.dst), get!(eth.src));
    adjust_head(ctx, -(grow as i32))?;
    // Tags (if any) stay where they were relative to the IP header: copy them along.
    match l3_off {
        14 => copy_tags::<1>(ctx, grow)?,
        18 => copy_tags::<3>(ctx, grow)?,
        22 => copy_tags::<5>(ctx, grow)?,
        _ => return Err(ParseError::Malformed),
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    set!(eth.dst = src);
    set!(eth.src = dst);
    let len = (ctx.data_end() - ctx.data()) as i32;
    let want = (l3_off + keep) as i32;
    if want > len {
        return Err(ParseError::Malformed);
    }
    adjust_tail(ctx, want - len)?;
    Ok(())
}

/// Copies the N 16-bit words after the MACs (tags and EtherType) from `grow` bytes further in.
#[inline(always)]
fn copy_tags<const N: usize>(ctx: &XdpContext, grow: usize) -> Result<(), ParseError> {
    let from: *const [u16; N] = ptr_at(ctx, grow + 12)?;
    let to: *mut [u16; N] = ptr_at(ctx, 12)?;
    write_words(to, &read_words(from));
    Ok(())
}

#[inline(always)]
fn build_frag_needed(ctx: &XdpContext, pkt: &Packet, flow: &FlowKey, mtu: usize) -> Result<(), ParseError> {
    if pkt.ip_hdr_len != IPV4_LEN {
        return Err(ParseError::Malformed);
    }
    const QUOTE: usize = IPV4_LEN + QUOTED_L4;
    const TOTAL: usize = IPV4_LEN + ICMP_LEN + QUOTE;
    let l3 = pkt.l3_off;
    reframe(ctx, l3, IPV4_LEN + ICMP_LEN, TOTAL)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, l3)?;
    let icmp: *mut IcmpHdr = ptr_at(ctx, l3 + IPV4_LEN)?;
    let quote: *const [u16; QUOTE / 2] = ptr_at(ctx, l3 + IPV4_LEN + ICMP_LEN)?;
    let mut hdr = Ipv4Hdr {
        ver_ihl: 0x45,
        tos: 0,
        tot_len: (TOTAL as u16).to_be(),
        id: 0,
        frag_off: 0,
        ttl: ICMP_TTL,
        proto: IPPROTO_ICMP,
        check: 0,
        src: flow.dst[0],
        dst: flow.src[0],
    };
    hdr.check = csum::ipv4_header(&hdr);
    // RFC 1191: the next-hop MTU in the low 16 bits of the second word.
    let mut message = IcmpHdr {
        kind: ICMP_DEST_UNREACH,
        code: ICMP_FRAG_NEEDED,
        check: 0,
        rest: (mtu as u32).to_be(),
    };
    let sum = (message.kind as u32 | (message.code as u32) << 8) + (message.rest & 0xffff) + (message.rest >> 16);
    message.check = csum::finish(csum::add_words(sum, &read_words(quote)));
    set!(ip = hdr);
    set!(icmp = message);
    Ok(())
}

#[inline(always)]
fn build_packet_too_big(ctx: &XdpContext, pkt: &Packet, flow: &FlowKey, mtu: usize) -> Result<(), ParseError> {
    const QUOTE: usize = IPV6_LEN + QUOTED_L4;
    const PAYLOAD: usize = ICMP_LEN + QUOTE;
    let l3 = pkt.l3_off;
    reframe(ctx, l3, IPV6_LEN + ICMP_LEN, IPV6_LEN + PAYLOAD)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, l3)?;
    let icmp: *mut IcmpHdr = ptr_at(ctx, l3 + IPV6_LEN)?;
    let quote: *const [u16; QUOTE / 2] = ptr_at(ctx, l3 + IPV6_LEN + ICMP_LEN)?;
    let hdr = Ipv6Hdr {
        ver_tc_flow: 0x6000_0000u32.to_be(),
        payload_len: (PAYLOAD as u16).to_be(),
        next_hdr: IPPROTO_ICMPV6,
        hop_limit: ICMP_TTL,
        src: flow.dst,
        dst: flow.src,
    };
    let mut message = IcmpHdr {
        kind: ICMPV6_PKT_TOOBIG,
        code: 0,
        check: 0,
        rest: (mtu as u32).to_be(),
    };
    // Pseudo-header (addresses, upper-layer length, next header), then the message.
    let mut sum = csum::add_addr(csum::add_addr(0, &flow.dst), &flow.src);
    sum += (PAYLOAD as u16).to_be() as u32 + (IPPROTO_ICMPV6 as u16).to_be() as u32;
    sum += (message.kind as u32 | (message.code as u32) << 8) + (message.rest & 0xffff) + (message.rest >> 16);
    message.check = csum::finish(csum::add_words(sum, &read_words(quote)));
    set!(ip = hdr);
    set!(icmp = message);
    Ok(())
}
