//! foobar's XDP data plane.
//!
//! The entry function reads as a packet's path: parse (ARP for a VIP is answered by the
//! master), tunnel decapsulation, neighbour solicitations for a VIP, VIP check,
//! connection table, or (a new flow in a frame addressed to this host) service lookup (the VIP
//! firewall) and Maglev, then local delivery,
//! L2 direct server return or IPIP encapsulation. Every exit names its verdict and bumps a
//! counter. Everything that is not VIP traffic is passed to the kernel untouched.
#![no_std]
#![no_main]

#[macro_use]
mod access;
mod balance;
mod csum;
mod encap;
mod icmp;
mod maps;
mod parse;
mod policy;
mod vip;

use access::lookup;
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use foobar_common::{
    vip_filter_slot, Addr, AddrKey, Counter, FlowKey, ServiceInfo, ServiceKey, BACKEND_LOCAL, FAMILY_V6,
    NODE_FORWARDING, PROTO_TCP, PROTO_UDP,
};
use maps::{account, count, BACKEND_STATS, LOCAL_ADDRS, NODE, SERVICES, SERVICE_STATS, TUNNEL_PEERS, VIPS, VIP_FILTER};
use parse::{
    Frame, ParseError, IPPROTO_DSTOPTS, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IPIP, IPPROTO_IPV6,
    IPPROTO_ROUTING,
};

/// The load balancer.
#[xdp]
pub fn foobar_xdp(ctx: XdpContext) -> u32 {
    let mut pkt = match parse::parse(&ctx) {
        Ok(Frame::Ip(pkt)) => pkt,
        Ok(Frame::Arp(l3_off)) => {
            return match NODE.get(0) {
                Some(node) => vip::answer_arp(&ctx, l3_off, node),
                None => pass(Counter::Passed),
            }
        }
        Err(ParseError::NotIp) => return pass(Counter::Passed),
        Err(ParseError::Malformed | ParseError::HelperFailed) => return pass(Counter::MalformedPassed),
    };
    let mut flow = FlowKey {
        src: [0; 4],
        dst: [0; 4],
        sport_be: 0,
        dport_be: 0,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    if parse::read_addr(&ctx, &pkt, parse::End::Dst, &mut flow.dst).is_err() {
        return pass(Counter::MalformedPassed);
    }

    // Tunnels to this node: only from a configured peer (anyone else could otherwise hand the
    // host packets as if they came from the link).
    if (pkt.proto == IPPROTO_IPIP || pkt.proto == IPPROTO_IPV6)
        && lookup(&LOCAL_ADDRS, addr_key(&flow.dst, pkt.family)).is_some()
    {
        let mut outer_src = [0; 4];
        if parse::read_addr(&ctx, &pkt, parse::End::Src, &mut outer_src).is_err() {
            return pass(Counter::MalformedPassed);
        }
        if lookup(&TUNNEL_PEERS, addr_key(&outer_src, pkt.family)).is_none() {
            return drop(Counter::DropTunnelNotPeer);
        }
        return encap::decapsulate(&ctx, &pkt);
    }

    // Neighbour solicitations for a VIP go to a multicast group, not to the VIP.
    if vip::maybe_solicitation(&pkt) {
        if let Some(verdict) = NODE.get(0).and_then(|node| vip::answer_solicitation(&ctx, &pkt, node)) {
            return verdict;
        }
    }

    // Most traffic is not for a VIP: one array read tells (a one-hash Bloom filter). Past it,
    // a packet may still not be VIP traffic; `not_a_service` decides pass or drop.
    if !maybe_vip(&flow.dst) {
        return pass(Counter::Passed);
    }
    let Some(node) = NODE.get(0) else {
        return pass(Counter::Passed);
    };
    if parse::read_addr(&ctx, &pkt, parse::End::Src, &mut flow.src).is_err() {
        return pass(Counter::MalformedPassed);
    }
    if node.flags & NODE_FORWARDING == 0 {
        return pass(if is_vip(&flow) {
            Counter::PassedNotForwarding
        } else {
            Counter::Passed
        });
    }
    if pkt.fragment {
        return not_a_service(&flow, Counter::DropFragment);
    }

    match pkt.proto {
        PROTO_TCP | PROTO_UDP => match parse::ports_at(&ctx, pkt.l4_off) {
            Ok((sport_be, dport_be)) => {
                flow.sport_be = sport_be;
                flow.dport_be = dport_be;
            }
            Err(_) => return not_a_service(&flow, Counter::DropMalformed),
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 => match icmp::quoted_flow(&ctx, &pkt, &mut flow) {
            Ok(true) => pkt.quotes_flow = true,
            // Echo requests and other ICMP to the VIP: the kernel holding the VIP answers.
            Ok(false) => return pass(Counter::Passed),
            Err(_) => return not_a_service(&flow, Counter::DropMalformed),
        },
        // IPv6 extension headers before the transport header: not balanced.
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS if pkt.family == FAMILY_V6 => {
            return not_a_service(&flow, Counter::DropUnsupported)
        }
        _ => return not_a_service(&flow, Counter::DropNoService),
    }

    let choice = match balance::established(&flow) {
        Some(choice) => choice,
        None => {
            // A new flow in a frame meant for another host (flooded, or seen by a promiscuous
            // port) is that host's: balancing it would forward a copy. Established flows were
            // learnt from frames addressed here, so only new ones pay for the check.
            if vip::for_another_host(&ctx) {
                return pass(Counter::PassedOtherHost);
            }
            let Some(svc) = lookup_service(&flow) else {
                return not_a_service(&flow, Counter::DropNoService);
            };
            if !policy::admits(&flow, &svc) {
                return drop(Counter::DropSourceDenied);
            }
            let Some(choice) = balance::pick(&flow, &svc, node) else {
                return drop(Counter::DropNoBackend);
            };
            choice
        }
    };
    account(&SERVICE_STATS, choice.backend.service_id, pkt.ip_len, choice.new_flow);
    account(&BACKEND_STATS, choice.id, pkt.ip_len, choice.new_flow);
    if pkt.quotes_flow {
        count(Counter::IcmpForwarded);
    }
    if choice.backend.flags & BACKEND_LOCAL != 0 {
        return pass(Counter::LocalDelivered);
    }
    encap::forward(&ctx, &pkt, &flow, choice.id, choice.backend, node)
}

/// False when `addr` is certainly not a VIP.
#[inline(always)]
fn maybe_vip(addr: &Addr) -> bool {
    let (word, bit) = vip_filter_slot(addr);
    VIP_FILTER.get(word).is_some_and(|w| w & bit != 0)
}

/// True when the flow's destination is a VIP.
#[inline(always)]
fn is_vip(flow: &FlowKey) -> bool {
    lookup(&VIPS, addr_key(&flow.dst, flow.family)).is_some()
}

/// A packet the balancer will not forward: dropped (and counted as `reason`) when it is VIP
/// traffic, passed to the kernel untouched when it is not (a VIP filter false positive).
#[inline(always)]
fn not_a_service(flow: &FlowKey, reason: Counter) -> u32 {
    if is_vip(flow) {
        drop(reason)
    } else {
        pass(Counter::Passed)
    }
}

/// Finds the service for a flow: exact port first, then the VIP's any-port service.
#[inline(always)]
fn lookup_service(flow: &FlowKey) -> Option<ServiceInfo> {
    let mut key = ServiceKey {
        addr: flow.dst,
        port_be: flow.dport_be,
        proto: flow.proto,
        family: flow.family,
    };
    if let Some(svc) = lookup(&SERVICES, key) {
        return Some(svc);
    }
    key.port_be = 0;
    lookup(&SERVICES, key)
}

#[inline(always)]
fn addr_key(addr: &Addr, family: u8) -> AddrKey {
    AddrKey {
        addr: *addr,
        family,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn pass(counter: Counter) -> u32 {
    count(counter);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn drop(counter: Counter) -> u32 {
    count(counter);
    xdp_action::XDP_DROP
}

/// An empty program that passes every frame. Attach it to veth peers that must receive
/// frames other XDP programs transmit into them, and use it as the benchmarks' baseline.
#[xdp]
pub fn foobar_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Swaps the Ethernet addresses and bounces the frame: the benchmarks' XDP_TX baseline.
#[xdp]
pub fn foobar_reflect(ctx: XdpContext) -> u32 {
    let Ok(eth) = parse::ptr_at::<parse::EthHdr>(&ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    let (dst, src) = (get!(eth.dst), get!(eth.src));
    set!(eth.dst = src);
    set!(eth.src = dst);
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// License of the program, which must allow GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
