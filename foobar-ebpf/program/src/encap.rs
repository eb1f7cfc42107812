//! Getting a packet to its backend: next hop from the kernel FIB, IPIP / IPv6-in-IPv6
//! encapsulation or an L2 rewrite, and decapsulation of tunnels addressed to this node.

use crate::{
    balance, csum, icmp,
    maps::{count, FIB_SCRATCH},
    parse::{
        ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, ParseError, ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP,
        IPPROTO_IPV6, IPV4_LEN, IPV6_LEN,
    },
};
use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use core::mem::{size_of, zeroed};
use foobar_common::{Backend, Counter, FlowKey, NodeConfig, FAMILY_V4, MODE_L2DSR};

/// TTL / hop limit of outer headers.
const OUTER_TTL: u8 = 64;
/// AF_INET / AF_INET6 as bpf_fib_lookup wants them.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where the FIB says a packet to the backend leaves.
struct NextHop {
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

enum FibError {
    /// The packet (of the length asked about) does not fit the egress MTU, which is given.
    TooBig(u16),
    /// No route, no neighbour, forwarding disabled: nothing to send to.
    NoRoute,
}

/// Asks the kernel FIB for the next hop to `dst`, for a packet of `tot_len` bytes.
#[inline(always)]
fn fib_lookup(
    ctx: &XdpContext,
    family: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
    tot_len: usize,
) -> Result<NextHop, FibError> {
    let params = FIB_SCRATCH.get_ptr_mut(0).ok_or(FibError::NoRoute)?;
    let params = unsafe { &mut *params };
    *params = unsafe { zeroed() };
    params.ifindex = ctx.ingress_ifindex() as u32;
    params.__bindgen_anon_1.tot_len = tot_len as u16;
    if family == FAMILY_V4 {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    } else {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words(src);
        params.__bindgen_anon_4.ipv6_dst = words(dst);
    }
    let rc = unsafe { bpf_fib_lookup(ctx.ctx as *mut _, params, size_of::<FibParams>() as i32, 0) };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(NextHop {
            ifindex: params.ifindex,
            smac: params.smac,
            dmac: params.dmac,
        }),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(FibError::TooBig(unsafe { params.__bindgen_anon_1.mtu_result })),
        _ => Err(FibError::NoRoute),
    }
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// Sends `pkt` (of `flow`) to a remote `backend`: rewrites the MACs (L2 DSR) or encapsulates
/// (IPIP), then transmits. A packet that would not fit the egress MTU gets ICMP "too big"
/// back instead.
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Packet, flow: &FlowKey, backend: &Backend, mode: u8, node: &NodeConfig) -> u32 {
    if mode == MODE_L2DSR {
        let hop = match fib_lookup(ctx, backend.family, &flow.src, &backend.addr, pkt.ip_len) {
            Ok(hop) => hop,
            Err(e) => return fib_failed(ctx, pkt, flow, e, 0),
        };
        return transmit(ctx, pkt, &hop);
    }
    let (outer_len, src) = if backend.family == FAMILY_V4 {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&node.encap_src_v4);
        (IPV4_LEN, src)
    } else {
        (IPV6_LEN, node.encap_src_v6)
    };
    let hop = match fib_lookup(ctx, backend.family, &src, &backend.addr, pkt.ip_len + outer_len) {
        Ok(hop) => hop,
        Err(e) => return fib_failed(ctx, pkt, flow, e, outer_len),
    };
    if encapsulate(ctx, pkt, flow, backend, &src).is_err() {
        count(Counter::DropEncapFailed);
        return xdp_action::XDP_DROP;
    }
    transmit(ctx, pkt, &hop)
}

#[inline(always)]
fn fib_failed(ctx: &XdpContext, pkt: &Packet, flow: &FlowKey, error: FibError, overhead: usize) -> u32 {
    match error {
        // An ICMP error being forwarded is never answered with another one.
        FibError::TooBig(mtu) if !pkt.quotes_flow => {
            icmp::send_too_big(ctx, pkt, flow, (mtu as usize).saturating_sub(overhead))
        }
        _ => {
            count(Counter::DropNoRoute);
            xdp_action::XDP_DROP
        }
    }
}

/// Writes the next hop's MACs and sends the frame: XDP_TX when it leaves where it came in (or
/// carries VLAN tags, which belong to the ingress link), otherwise a redirect.
#[inline(always)]
fn transmit(ctx: &XdpContext, pkt: &Packet, hop: &NextHop) -> u32 {
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        count(Counter::DropEncapFailed);
        return xdp_action::XDP_DROP;
    };
    unsafe {
        (*eth).dst = hop.dmac;
        (*eth).src = hop.smac;
    }
    if hop.ifindex == ctx.ingress_ifindex() as u32 || pkt.l3_off != ETH_LEN {
        count(Counter::Transmitted);
        xdp_action::XDP_TX
    } else {
        count(Counter::Redirected);
        unsafe { bpf_redirect(hop.ifindex, 0) as u32 }
    }
}

/// Copies the L2 header (Ethernet plus tags, `l3_off` bytes) from `from` to `to`.
#[inline(always)]
fn move_l2(ctx: &XdpContext, l3_off: usize, from: usize, to: usize) -> Result<(), ParseError> {
    match l3_off {
        14 => move_bytes::<14>(ctx, from, to),
        18 => move_bytes::<18>(ctx, from, to),
        22 => move_bytes::<22>(ctx, from, to),
        _ => Err(ParseError::Malformed),
    }
}

#[inline(always)]
fn move_bytes<const N: usize>(ctx: &XdpContext, from: usize, to: usize) -> Result<(), ParseError> {
    let src: *const [u8; N] = ptr_at(ctx, from)?;
    let dst: *mut [u8; N] = ptr_at(ctx, to)?;
    unsafe {
        let tmp = core::ptr::read_volatile(src);
        core::ptr::write_volatile(dst, tmp);
    }
    Ok(())
}

/// Sets the innermost EtherType (the two bytes before the IP header).
#[inline(always)]
fn set_ether_type(ctx: &XdpContext, l3_off: usize, ether_type: u16) -> Result<(), ParseError> {
    let p: *mut [u8; 2] = ptr_at(ctx, l3_off - 2)?;
    unsafe { *p = ether_type.to_be_bytes() };
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
    src: &[u8; 16],
) -> Result<(), ParseError> {
    let inner_proto = if pkt.family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    let l3_off = pkt.l3_off;
    if backend.family == FAMILY_V4 {
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV4_LEN as i32)) } != 0 {
            return Err(ParseError::Malformed);
        }
        move_l2(ctx, l3_off, IPV4_LEN, 0)?;
        set_ether_type(ctx, l3_off, ETH_P_IP)?;
        let ip: *mut Ipv4Hdr = ptr_at(ctx, l3_off)?;
        unsafe {
            (*ip).ver_ihl = 0x45;
            (*ip).tos = pkt.tos;
            (*ip).tot_len = ((pkt.ip_len + IPV4_LEN) as u16).to_be_bytes();
            (*ip).id = [0; 2];
            (*ip).frag_off = [0; 2];
            (*ip).ttl = OUTER_TTL;
            (*ip).proto = inner_proto;
            (*ip).check = [0; 2];
            (*ip).src = [src[0], src[1], src[2], src[3]];
            (*ip).dst = [backend.addr[0], backend.addr[1], backend.addr[2], backend.addr[3]];
            (*ip).check = csum::ipv4_header(&*ip).to_be_bytes();
        }
    } else {
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV6_LEN as i32)) } != 0 {
            return Err(ParseError::Malformed);
        }
        move_l2(ctx, l3_off, IPV6_LEN, 0)?;
        set_ether_type(ctx, l3_off, ETH_P_IPV6)?;
        let ip: *mut Ipv6Hdr = ptr_at(ctx, l3_off)?;
        // The flow label carries a flow hash so ECMP and RSS on the way spread the tunnels.
        let label = balance::flow_hash(flow) & 0x000f_ffff;
        let first = 0x6000_0000u32 | ((pkt.tos as u32) << 20) | label;
        unsafe {
            (*ip).ver_tc_flow = first.to_be_bytes();
            (*ip).payload_len = (pkt.ip_len as u16).to_be_bytes();
            (*ip).next_hdr = inner_proto;
            (*ip).hop_limit = OUTER_TTL;
            (*ip).src = *src;
            (*ip).dst = backend.addr;
        }
    }
    Ok(())
}

/// Strips an outer IPv4 (without options) or IPv6 header addressed to this node and passes the
/// inner packet up. Other tunnel shapes go to the kernel untouched.
#[inline(always)]
pub fn decapsulate(ctx: &XdpContext, pkt: &Packet) -> u32 {
    let outer_len = if pkt.family == FAMILY_V4 { IPV4_LEN } else { IPV6_LEN };
    if pkt.ip_hdr_len != outer_len {
        count(Counter::Passed);
        return xdp_action::XDP_PASS;
    }
    let inner_type = if pkt.proto == IPPROTO_IPIP {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    let moved =
        move_l2(ctx, pkt.l3_off, 0, outer_len).and_then(|()| set_ether_type(ctx, pkt.l3_off + outer_len, inner_type));
    if moved.is_err() || unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        count(Counter::MalformedPassed);
        return xdp_action::XDP_PASS;
    }
    count(Counter::Decapsulated);
    xdp_action::XDP_PASS
}
