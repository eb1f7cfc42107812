//! Owning the VIPs: while this node forwards and claims a VIP (it is master of the VRRP instance
//! holding it), ARP requests and IPv6 neighbour solicitations for the VIP are answered here, in place, with the receiving
//! interface's MAC. Otherwise they go to the kernel, which does not answer for VIPs (they sit on
//! `lo`), so only the master claims them.

use crate::{
    access::{adjust_tail, coarse_now_ns, lookup},
    csum,
    maps::{count, CLAIM_LEASE, LINK_MACS, VIPS},
    parse::{ptr_at, ArpHdr, EthHdr, Ipv6Hdr, NdMsg, Packet, ParseError, IPPROTO_ICMPV6, IPV6_LEN},
};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use foobar_common::{Addr, AddrKey, Counter, NodeConfig, FAMILY_V4, FAMILY_V6, NODE_FORWARDING, VIP_CLAIMED};

const ARP_HTYPE_ETHERNET: u16 = 1;
const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;
const ND_SOLICIT: u8 = 135;
const ND_ADVERT: u8 = 136;
/// Neighbour advertisement flags (first byte of the 32-bit field): solicited, override.
const ND_SOLICITED: u32 = 0x40;
const ND_OVERRIDE: u32 = 0x20;
/// ND option: target link-layer address, in units of 8 bytes.
const ND_OPT_TARGET_LL: u8 = 2;
/// Length of a neighbour advertisement with one link-layer option.
const ND_MSG_LEN: usize = core::mem::size_of::<NdMsg>();
/// All-nodes multicast, ff02::1, as map words.
const ALL_NODES: Addr = [u32::from_be(0xff02_0000), 0, 0, u32::from_be(1)];

/// This node's MAC on the receiving interface, if it claims `vip` now.
#[inline(always)]
fn claimant(ctx: &XdpContext, node: &NodeConfig, vip: Addr, family: u8) -> Option<[u8; 6]> {
    if node.flags & NODE_FORWARDING == 0 {
        return None;
    }
    let flags = lookup(
        &VIPS,
        AddrKey {
            addr: vip,
            family,
            _pad: [0; 3],
        },
    )?;
    if flags & VIP_CLAIMED == 0 {
        return None;
    }
    // The claim is a lease the control plane renews: a dead one stops answering within the
    // lease, before the peer takes over, while forwarding goes on.
    if CLAIM_LEASE.get(0).is_none_or(|until| coarse_now_ns() >= *until) {
        count(Counter::ClaimLapsed);
        return None;
    }
    let ifindex = ctx.ingress_ifindex() as u32;
    lookup(&LINK_MACS, ifindex).map(|m| m.mac)
}

/// Whether the frame is unicast to a MAC other than the receiving interface's. Such a frame
/// reaches XDP only on a promiscuous interface (a bridge port, a sniffer) or when a switch
/// floods unknown unicast; the kernel would discard it. Unknown interfaces count as ours.
#[inline(always)]
pub fn for_another_host(ctx: &XdpContext) -> bool {
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    let dst = get!(eth.dst);
    if dst[0] & 1 != 0 {
        return false; // broadcast or multicast: for every host on the segment
    }
    lookup(&LINK_MACS, ctx.ingress_ifindex() as u32).is_some_and(|link| link.mac != dst)
}

/// Answers an ARP request for a VIP at `l3_off`; anything else is passed.
#[inline(always)]
pub fn answer_arp(ctx: &XdpContext, l3_off: usize, node: &NodeConfig) -> u32 {
    let Ok(arp) = ptr_at::<ArpHdr>(ctx, l3_off) else {
        count(Counter::MalformedPassed);
        return xdp_action::XDP_PASS;
    };
    let is_request = u16::from_be(get!(arp.htype)) == ARP_HTYPE_ETHERNET
        && u16::from_be(get!(arp.ptype)) == crate::parse::ETH_P_IP
        && get!(arp.hlen) == 6
        && get!(arp.plen) == 4
        && u16::from_be(get!(arp.op)) == ARP_OP_REQUEST;
    let vip = [u32::from_ne_bytes(get!(arp.tpa)), 0, 0, 0];
    let Some(mac) = is_request.then(|| claimant(ctx, node, vip, FAMILY_V4)).flatten() else {
        count(Counter::Passed);
        return xdp_action::XDP_PASS;
    };
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    set!(eth.dst = get!(eth.src));
    set!(eth.src = mac);
    let (asker_mac, asker_ip, vip_ip) = (get!(arp.sha), get!(arp.spa), get!(arp.tpa));
    set!(arp.op = ARP_OP_REPLY.to_be());
    set!(arp.tha = asker_mac);
    set!(arp.sha = mac);
    set!(arp.spa = vip_ip);
    set!(arp.tpa = asker_ip);
    count(Counter::ArpReplied);
    xdp_action::XDP_TX
}

/// True for an ICMPv6 packet that may be a neighbour solicitation.
#[inline(always)]
pub fn maybe_solicitation(pkt: &Packet) -> bool {
    pkt.family == FAMILY_V6 && pkt.proto == IPPROTO_ICMPV6
}

/// Answers a neighbour solicitation for a VIP with a neighbour advertisement built in place;
/// `None` when the packet is not one (the caller goes on with it).
#[inline(always)]
pub fn answer_solicitation(ctx: &XdpContext, pkt: &Packet, node: &NodeConfig) -> Option<u32> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, pkt.l3_off).ok()?;
    let ns: *const NdMsg = ptr_at::<[u8; 24]>(ctx, pkt.l4_off).ok()? as *const NdMsg;
    let (kind, code, hop_limit) = (get!(ns.kind), get!(ns.code), get!(ip.hop_limit));
    if kind != ND_SOLICIT || code != 0 || hop_limit != 255 {
        return None;
    }
    let (vip, asker) = (get!(ns.target), get!(ip.src));
    let mac = claimant(ctx, node, vip, FAMILY_V6)?;
    Some(match build_advert(ctx, pkt, vip, asker, mac) {
        Ok(()) => {
            count(Counter::NeighbourAdvertised);
            xdp_action::XDP_TX
        }
        Err(ParseError::HelperFailed) => {
            count(Counter::HelperFailed);
            xdp_action::XDP_PASS
        }
        Err(_) => {
            count(Counter::MalformedPassed);
            xdp_action::XDP_PASS
        }
    })
}

#[inline(always)]
fn build_advert(ctx: &XdpContext, pkt: &Packet, vip: Addr, asker: Addr, mac: [u8; 6]) -> Result<(), ParseError> {
    // The advertisement is 32 bytes. A solicitation that long or longer is rewritten in place
    // (bytes past the new IPv6 payload length are ignored by receivers); a 24-byte one (no
    // source link-layer option, as in duplicate address detection) grows by 8.
    match pkt.ip_len - IPV6_LEN {
        len if len >= ND_MSG_LEN => {}
        24 => adjust_tail(ctx, 8)?,
        _ => return Err(ParseError::Malformed),
    }
    // A solicitation from :: (duplicate address detection) is answered to all nodes, unsolicited.
    let dad = asker == [0; 4];
    let (dst, flags) = if dad {
        (ALL_NODES, ND_OVERRIDE)
    } else {
        (asker, ND_SOLICITED | ND_OVERRIDE)
    };
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, pkt.l3_off)?;
    let msg: *mut NdMsg = ptr_at(ctx, pkt.l3_off + IPV6_LEN)?;
    let mut advert = NdMsg {
        kind: ND_ADVERT,
        code: 0,
        check: 0,
        flags: u32::from_ne_bytes([flags as u8, 0, 0, 0]),
        target: vip,
        opt_type: ND_OPT_TARGET_LL,
        opt_len: 1,
        mac,
    };
    let mut sum = csum::add_addr(csum::add_addr(0, &vip), &dst);
    sum += (ND_MSG_LEN as u16).to_be() as u32 + (IPPROTO_ICMPV6 as u16).to_be() as u32;
    // The message's words: type and code, flags, target, option type and length, MAC.
    sum += advert.kind as u32 | (advert.code as u32) << 8;
    sum += (advert.flags & 0xffff) + (advert.flags >> 16);
    sum = csum::add_addr(sum, &advert.target);
    sum += advert.opt_type as u32 | (advert.opt_len as u32) << 8;
    let m = advert.mac;
    sum += u16::from_ne_bytes([m[0], m[1]]) as u32 + u16::from_ne_bytes([m[2], m[3]]) as u32;
    sum += u16::from_ne_bytes([m[4], m[5]]) as u32;
    advert.check = csum::finish(sum);
    set!(eth.dst = if dad { [0x33, 0x33, 0, 0, 0, 1] } else { get!(eth.src) });
    set!(eth.src = mac);
    set!(
        ip = Ipv6Hdr {
            ver_tc_flow: 0x6000_0000u32.to_be(),
            payload_len: (ND_MSG_LEN as u16).to_be(),
            next_hdr: IPPROTO_ICMPV6,
            hop_limit: 255,
            src: vip,
            dst,
        }
    );
    set!(msg = advert);
    Ok(())
}
