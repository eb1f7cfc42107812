//! Getting a packet to its backend: next hop from the kernel FIB, IPIP / IPv6-in-IPv6
//! encapsulation or an L2 rewrite, and decapsulation of tunnels addressed to this node.

use crate::{
    access::{adjust_head, coarse_now_ns, per_cpu, read_words, write_words},
    balance, csum, icmp,
    maps::{count, CachedHop, FIB_SCRATCH, NEXT_HOPS},
    parse::{
        ptr_at, EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr, Packet, ParseError, ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS,
        IPPROTO_HOPOPTS, IPPROTO_ICMPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_ROUTING, IPPROTO_VRRP, IPV4_LEN, IPV6_LEN,
    },
};
use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use core::mem::{size_of, zeroed};
use foobar_common::{Addr, Backend, Counter, FlowKey, NodeConfig, FAMILY_V4, MODE_L2DSR};

/// ICMPv6 neighbour discovery: router solicitation (133) to redirect (137).
const ND_FIRST: u8 = 133;
const ND_LAST: u8 = 137;

/// TTL / hop limit of outer headers.
const OUTER_TTL: u8 = 64;
/// AF_INET / AF_INET6 as bpf_fib_lookup wants them.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// How long a CPU trusts a cached next hop before asking the FIB again.
const NEXT_HOP_TTL_NS: u64 = 500_000_000;
/// A cached next hop's age is checked on every this-many uses, so a changed route or neighbour
/// takes effect within NEXT_HOP_TTL_NS plus this many packets (per CPU and backend).
const NEXT_HOP_CHECK_EVERY: u32 = 16;

/// Where a packet to the backend leaves.
struct NextHop {
    ifindex: u32,
    mtu: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

/// The next hop to backend `id`: this CPU's cached answer while fresh, otherwise the kernel
/// FIB's (route, neighbour, egress MTU), which is then cached. Freshness is checked against the
/// clock on every [`NEXT_HOP_CHECK_EVERY`]th use only (a clock read costs as much as the rest of
/// the lookup). `None`: no route or neighbour.
#[inline(always)]
fn next_hop(ctx: &XdpContext, id: u32, backend: &Backend, src: &Addr) -> Option<NextHop> {
    let cached = per_cpu(&NEXT_HOPS, id)?;
    if cached.expires_ns != 0 && cached.addr == backend.addr {
        cached.uses = cached.uses.wrapping_add(1);
        if cached.uses % NEXT_HOP_CHECK_EVERY != 0 || coarse_now_ns() < cached.expires_ns {
            return Some(NextHop {
                ifindex: cached.ifindex,
                mtu: cached.mtu,
                smac: cached.smac,
                dmac: cached.dmac,
            });
        }
    }
    let hop = fib_lookup(ctx, backend.family, src, &backend.addr)?;
    *cached = CachedHop {
        addr: backend.addr,
        expires_ns: coarse_now_ns() + NEXT_HOP_TTL_NS,
        uses: 0,
        ifindex: hop.ifindex,
        mtu: hop.mtu,
        smac: hop.smac,
        dmac: hop.dmac,
    };
    Some(hop)
}

/// Asks the kernel FIB for the next hop to `dst` and the egress MTU.
#[inline(always)]
fn fib_lookup(ctx: &XdpContext, family: u8, src: &Addr, dst: &Addr) -> Option<NextHop> {
    let params = per_cpu(&FIB_SCRATCH, 0)?;
    // SAFETY: the parameter block is plain integers and byte arrays: all zeroes is valid.
    *params = unsafe { zeroed() };
    params.ifindex = ctx.ingress_ifindex() as u32;
    if family == FAMILY_V4 {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = src[0];
        params.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = *src;
        params.__bindgen_anon_4.ipv6_dst = *dst;
    }
    // SAFETY: the program's own context and a parameter block of the size passed, which the
    // helper fills in.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx as *mut _, params, size_of::<FibParams>() as i32, 0) };
    if rc as u32 != BPF_FIB_LKUP_RET_SUCCESS {
        return None;
    }
    // On success the kernel reports the route's MTU in mtu_result (a union with tot_len).
    Some(NextHop {
        ifindex: params.ifindex,
        // SAFETY: both members of the union are a u16 at the same place; on success the
        // kernel wrote mtu_result.
        mtu: unsafe { params.__bindgen_anon_1.mtu_result } as u32,
        smac: params.smac,
        dmac: params.dmac,
    })
}

/// Sends `pkt` (of `flow`) to remote backend `id`: rewrites the MACs (L2 DSR) or encapsulates
/// (IPIP), then transmits. A packet that would not fit the egress MTU gets ICMP "too big"
/// back instead.
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Packet, flow: &FlowKey, id: u32, backend: &Backend, node: &NodeConfig) -> u32 {
    let (overhead, src) = if backend.mode == MODE_L2DSR {
        (0, flow.src)
    } else if backend.family == FAMILY_V4 {
        (IPV4_LEN, [node.encap_src_v4, 0, 0, 0])
    } else {
        (IPV6_LEN, node.encap_src_v6)
    };
    let Some(hop) = next_hop(ctx, id, backend, &src) else {
        count(Counter::DropNoRoute);
        return xdp_action::XDP_DROP;
    };
    if pkt.ip_len + overhead > hop.mtu as usize {
        // An ICMP error being forwarded is never answered with another one.
        if pkt.quotes_flow {
            count(Counter::DropTooBig);
            return xdp_action::XDP_DROP;
        }
        return icmp::send_too_big(ctx, pkt, flow, (hop.mtu as usize).saturating_sub(overhead));
    }
    if overhead != 0 && encapsulate(ctx, pkt, flow, backend, &src).is_err() {
        count(Counter::DropEncapFailed);
        return xdp_action::XDP_DROP;
    }
    transmit(ctx, pkt, &hop)
}

/// Writes the next hop's MACs and sends the frame: XDP_TX when it leaves where it came in (or
/// carries VLAN tags, which belong to the ingress link), otherwise a redirect.
#[inline(always)]
fn transmit(ctx: &XdpContext, pkt: &Packet, hop: &NextHop) -> u32 {
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        count(Counter::DropEncapFailed);
        return xdp_action::XDP_DROP;
    };
    set!(eth.dst = hop.dmac);
    set!(eth.src = hop.smac);
    if hop.ifindex == ctx.ingress_ifindex() as u32 || pkt.l3_off != ETH_LEN {
        count(Counter::Transmitted);
        xdp_action::XDP_TX
    } else {
        count(Counter::Redirected);
        // SAFETY: the helper takes an interface index and flags by value.
        unsafe { bpf_redirect(hop.ifindex, 0) as u32 }
    }
}

/// Moves the L2 header (Ethernet plus tags, `l3_off` bytes) from `from` to `to`, setting its
/// innermost EtherType. Each arm has constant offsets, which keeps the verifier's packet
/// range tracking exact.
#[inline(always)]
fn move_l2(ctx: &XdpContext, l3_off: usize, from: usize, to: usize, ether_type: u16) -> Result<(), ParseError> {
    match l3_off {
        14 => move_words::<7>(ctx, from, to, ether_type),
        18 => move_words::<9>(ctx, from, to, ether_type),
        22 => move_words::<11>(ctx, from, to, ether_type),
        _ => Err(ParseError::Malformed),
    }
}

#[inline(always)]
fn move_words<const N: usize>(ctx: &XdpContext, from: usize, to: usize, ether_type: u16) -> Result<(), ParseError> {
    let src: *const [u16; N] = ptr_at(ctx, from)?;
    let dst: *mut [u16; N] = ptr_at(ctx, to)?;
    let mut words = read_words(src);
    words[N - 1] = ether_type.to_be();
    write_words(dst, &words);
    Ok(())
}

/// Prepends an outer IPv4 or IPv6 header addressed to `backend`, keeping the L2 header in front.
/// Headers are written field by field into the packet to keep the stack small.
#[inline(always)]
fn encapsulate(
    ctx: &XdpContext,
    pkt: &Packet,
    flow: &FlowKey,
    backend: &Backend,
    src: &Addr,
) -> Result<(), ParseError> {
    let inner_proto = if pkt.family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    let l3_off = pkt.l3_off;
    if backend.family == FAMILY_V4 {
        adjust_head(ctx, -(IPV4_LEN as i32))?;
        move_l2(ctx, l3_off, IPV4_LEN, 0, ETH_P_IP)?;
        let ip: *mut Ipv4Hdr = ptr_at(ctx, l3_off)?;
        let mut hdr = Ipv4Hdr {
            ver_ihl: 0x45,
            tos: pkt.tos,
            tot_len: ((pkt.ip_len + IPV4_LEN) as u16).to_be(),
            id: 0,
            frag_off: 0,
            ttl: OUTER_TTL,
            proto: inner_proto,
            check: 0,
            src: src[0],
            dst: backend.addr[0],
        };
        hdr.check = csum::ipv4_header(&hdr);
        set!(ip = hdr);
    } else {
        adjust_head(ctx, -(IPV6_LEN as i32))?;
        move_l2(ctx, l3_off, IPV6_LEN, 0, ETH_P_IPV6)?;
        let ip: *mut Ipv6Hdr = ptr_at(ctx, l3_off)?;
        // The flow label carries a flow hash so ECMP and RSS on the way spread the tunnels.
        let label = balance::flow_hash(flow) & 0x000f_ffff;
        let first = 0x6000_0000u32 | ((pkt.tos as u32) << 20) | label;
        set!(
            ip = Ipv6Hdr {
                ver_tc_flow: first.to_be(),
                payload_len: (pkt.ip_len as u16).to_be(),
                next_hdr: inner_proto,
                hop_limit: OUTER_TTL,
                src: *src,
                dst: backend.addr,
            }
        );
    }
    Ok(())
}

/// Strips an outer IPv4 (without options) or IPv6 header addressed to this node by a tunnel
/// peer and passes the inner packet up. What only the link may carry (VRRP, IPv6 neighbour
/// discovery) is dropped instead; other tunnel shapes go to the kernel untouched.
#[inline(always)]
pub fn decapsulate(ctx: &XdpContext, pkt: &Packet) -> u32 {
    let outer_len = if pkt.family == FAMILY_V4 { IPV4_LEN } else { IPV6_LEN };
    if pkt.ip_hdr_len != outer_len {
        count(Counter::Passed);
        return xdp_action::XDP_PASS;
    }
    match inner_allowed(ctx, pkt.l3_off + outer_len, pkt.proto == IPPROTO_IPIP) {
        Ok(true) => {}
        Ok(false) => {
            count(Counter::DropTunnelForbidden);
            return xdp_action::XDP_DROP;
        }
        Err(_) => {
            count(Counter::DropMalformed);
            return xdp_action::XDP_DROP;
        }
    }
    let inner_type = if pkt.proto == IPPROTO_IPIP {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    let stripped = move_l2(ctx, pkt.l3_off, 0, outer_len, inner_type).and_then(|()| adjust_head(ctx, outer_len as i32));
    count(match stripped {
        Ok(()) => Counter::Decapsulated,
        Err(ParseError::HelperFailed) => Counter::HelperFailed,
        Err(_) => Counter::MalformedPassed,
    });
    xdp_action::XDP_PASS
}

/// Whether the packet inside a tunnel (at `inner_off`, IPv4 when `v4`) may reach the host as if
/// it had come from the link: not VRRP (an advert would take part in the election) and not
/// IPv6 neighbour discovery (router, neighbour and redirect messages rewrite the host's
/// tables); IPv6 extension headers, which could hide either, are refused too.
#[inline(always)]
fn inner_allowed(ctx: &XdpContext, inner_off: usize, v4: bool) -> Result<bool, ParseError> {
    if v4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, inner_off)?;
        return Ok(get!(ip.proto) != IPPROTO_VRRP);
    }
    let ip: *const Ipv6Hdr = ptr_at(ctx, inner_off)?;
    match get!(ip.next_hdr) {
        IPPROTO_VRRP | IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => Ok(false),
        IPPROTO_ICMPV6 => {
            let icmp: *const IcmpHdr = ptr_at(ctx, inner_off + IPV6_LEN)?;
            Ok(!(ND_FIRST..=ND_LAST).contains(&get!(icmp.kind)))
        }
        _ => Ok(true),
    }
}
