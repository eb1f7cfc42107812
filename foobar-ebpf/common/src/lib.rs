//! Map keys, values and constants shared by the foobar XDP program and its control plane.
//!
//! Every type here is `#[repr(C)]` with explicit padding, so the kernel and user-space sides
//! agree byte for byte. Changing any layout means bumping [`LAYOUT_VERSION`]: pinned maps live
//! under a directory named after it, so an incompatible layout is never adopted silently.
#![no_std]

/// Version of the map layouts below; part of the bpffs pin path.
pub const LAYOUT_VERSION: u32 = 1;

/// Names of the program and its maps, as they appear in the BPF object and under the pin directory.
pub mod names {
    /// The XDP entry point.
    pub const PROGRAM: &str = "foobar_xdp";
    /// An empty XDP_PASS program (veth peers, benchmark baseline).
    pub const PASS_PROGRAM: &str = "foobar_pass";
    /// A swap-MACs-and-XDP_TX program (benchmark baseline).
    pub const REFLECT_PROGRAM: &str = "foobar_reflect";
    /// [`crate::ServiceKey`] -> [`crate::ServiceInfo`].
    pub const SERVICES: &str = "SERVICES";
    /// Backend id -> [`crate::Backend`].
    pub const BACKENDS: &str = "BACKENDS";
    /// Flat array of Maglev lookup tables (two halves per service), [`crate::MaglevSlots`].
    pub const MAGLEV: &str = "MAGLEV";
    /// Bitmap pre-filter of VIP addresses ([`crate::vip_filter_slot`]), u64 words.
    pub const VIP_FILTER: &str = "VIP_FILTER";
    /// ifindex -> [`crate::LinkMac`]: the MAC of each interface the program runs on, for the
    /// ARP replies and neighbour advertisements that claim the VIPs.
    pub const LINK_MACS: &str = "LINK_MACS";
    /// Per-CPU cache of each backend's next hop (kernel-only; not pinned).
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    /// [`crate::FlowKey4`] -> [`crate::FlowValue`], the LRU connection table of IPv4 flows.
    pub const CONNTRACK: &str = "CONNTRACK";
    /// [`crate::FlowKey`] -> [`crate::FlowValue`], the LRU connection table of IPv6 flows.
    pub const CONNTRACK6: &str = "CONNTRACK6";
    /// Single-entry array holding the [`crate::NodeConfig`].
    pub const NODE: &str = "NODE";
    /// Single-entry array: until when (`CLOCK_MONOTONIC_COARSE` ns) this node may answer ARP /
    /// ND for the VIPs it claims. The control plane renews it; a dead one lets it lapse.
    pub const CLAIM_LEASE: &str = "CLAIM_LEASE";
    /// [`crate::AddrKey`] -> u32 flags ([`crate::VIP_CLAIMED`]): the VIPs (any service); traffic
    /// to them is balanced or dropped.
    pub const VIPS: &str = "VIPS";
    /// [`crate::AddrKey`] -> u32: this node's addresses that terminate IPIP tunnels.
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    /// [`crate::AddrKey`] -> u32: the only sources whose tunnels this node decapsulates.
    pub const TUNNEL_PEERS: &str = "TUNNEL_PEERS";
    /// LPM trie of [`crate::SourceKey`] (a service id, then a source prefix) -> verdict
    /// ([`crate::SOURCE_ALLOW`] or [`crate::SOURCE_DENY`]): the services' source policies.
    pub const SOURCES: &str = "SOURCES";
    /// Per-CPU global counters indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Per-CPU [`crate::TrafficStats`] indexed by service id.
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    /// Per-CPU [`crate::TrafficStats`] indexed by backend id.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// Per-CPU [`crate::InsertBudget`] for the new-flow insert rate cap.
    pub const INSERT_BUDGET: &str = "INSERT_BUDGET";
}

/// Address family tag used in keys: IPv4.
pub const FAMILY_V4: u8 = 4;
/// Address family tag used in keys: IPv6.
pub const FAMILY_V6: u8 = 6;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Service forwarding mode: encapsulate in IPIP (IPv4 backend) or IPv6-in-IPv6, direct server return.
pub const MODE_IPIP: u8 = 1;
/// Service forwarding mode: rewrite the destination MAC to the backend's (same L2 segment).
pub const MODE_L2DSR: u8 = 2;

/// [`Backend::flags`]: the backend may receive traffic (healthy and configured).
pub const BACKEND_ACTIVE: u8 = 1;
/// [`Backend::flags`]: the backend is this node; its traffic is delivered locally (XDP_PASS).
pub const BACKEND_LOCAL: u8 = 2;
/// [`Backend::flags`]: the slot holds a configured backend (active or not).
pub const BACKEND_IN_USE: u8 = 4;

/// [`NodeConfig::flags`]: this node balances VIP traffic (it is master of a VRRP instance, or
/// runs without VRRP).
pub const NODE_FORWARDING: u32 = 1;

/// [`NodeConfig::flags`]: a control plane stopping for a restart left its VRRP claims for its
/// successor, within the claim lease (the program ignores it; the next process clears it).
pub const NODE_HANDED_OVER: u32 = 2;

/// Value flag of the VIP table: this node claims the VIP (answers ARP / neighbour solicitations
/// for it) while it forwards.
pub const VIP_CLAIMED: u32 = 1;

/// Backend id stored in an unfilled Maglev slot; packets hitting it are dropped and counted.
pub const MAGLEV_EMPTY: u16 = u16::MAX;
/// Largest number of backends (ids are u16 in Maglev tables; [`MAGLEV_EMPTY`] is reserved).
pub const MAX_BACKENDS: u32 = MAGLEV_EMPTY as u32;
/// Maglev slots per map element: array elements are 8 bytes anyway, so four u16 ids share one.
pub const MAGLEV_LANES: u32 = 4;
/// One element of the `MAGLEV` map: four consecutive slots' backend ids.
pub type MaglevSlots = [u16; MAGLEV_LANES as usize];

/// Map elements one service's table of `size` slots takes.
pub const fn maglev_elements(size: u32) -> u32 {
    size.div_ceil(MAGLEV_LANES)
}

/// Words (u64) in the VIP pre-filter bitmap (a power of two).
pub const VIP_FILTER_WORDS: u32 = 4096;

/// Word index and bit mask of `addr` in the VIP pre-filter: a one-hash Bloom filter that lets
/// the data plane pass non-VIP traffic after one array read, without a hash-map lookup.
#[inline(always)]
pub fn vip_filter_slot(addr: &Addr) -> (u32, u64) {
    let h = (addr[0] ^ addr[1].rotate_left(7) ^ addr[2].rotate_left(13) ^ addr[3].rotate_left(19))
        .wrapping_mul(0x9e37_79b1);
    ((h >> 20) & (VIP_FILTER_WORDS - 1), 1u64 << (h & 63))
}

/// An IPv4 or IPv6 address as the maps store it: the address bytes in network order, read as
/// four native 32-bit words (as the data plane loads them from packets); IPv4 in the first
/// word, the rest zero.
pub type Addr = [u32; 4];

/// An address's map form from its network-order bytes (4 or 16).
pub fn addr_from_octets(octets: &[u8]) -> Addr {
    let mut addr = [0u32; 4];
    for (word, chunk) in addr.iter_mut().zip(octets.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    addr
}

/// An address's network-order bytes from its map form (all 16; IPv4 uses the first 4).
pub fn addr_octets(addr: &Addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(addr) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    out
}

/// Service table key: where a VIP service listens.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// VIP address.
    pub addr: Addr,
    /// Destination port in network byte order, or 0 for "any port".
    pub port_be: u16,
    /// IP protocol (TCP or UDP).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// Service table value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceInfo {
    /// Index into the per-service arrays (statistics, Maglev tables).
    pub id: u32,
    /// [`SERVICE_LIVE_HALF`], [`SERVICE_SOURCE_POLICY`], [`SERVICE_DEFAULT_DENY`].
    pub flags: u32,
}

/// [`ServiceInfo::flags`]: which half of the service's double-buffered Maglev table is live
/// (the bit's value, 0 or 1).
pub const SERVICE_LIVE_HALF: u32 = 1;
/// [`ServiceInfo::flags`]: new flows' sources are looked up in [`names::SOURCES`].
pub const SERVICE_SOURCE_POLICY: u32 = 2;
/// [`ServiceInfo::flags`]: a source that no prefix of the policy covers is dropped (the
/// service has an allow list).
pub const SERVICE_DEFAULT_DENY: u32 = 4;

/// Verdict of a [`names::SOURCES`] prefix: let new flows from it through.
pub const SOURCE_ALLOW: u32 = 1;
/// Verdict of a [`names::SOURCES`] prefix: drop new flows from it.
pub const SOURCE_DENY: u32 = 2;

/// The data of a [`names::SOURCES`] key: every bit of the service id is matched, then the
/// prefix's bits of the address (an IPv4 address in the first word).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// The service's id.
    pub service: u32,
    /// The source address, as [`Addr`] stores it.
    pub addr: Addr,
}

/// A backend ("real") of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Backend address (the IPIP outer destination, or the L2 next hop).
    pub addr: Addr,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// [`BACKEND_ACTIVE`], [`BACKEND_LOCAL`], [`BACKEND_IN_USE`].
    pub flags: u8,
    /// Its service's forwarding mode ([`MODE_IPIP`] or [`MODE_L2DSR`]), so packets of
    /// established flows need no service lookup.
    pub mode: u8,
    /// Padding, always zero.
    pub _pad: u8,
    /// Id of its service (for statistics, and so a restarted control plane can adopt the maps).
    pub service_id: u32,
}

/// Connection table key: one direction of a flow, client to VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address.
    pub src: Addr,
    /// VIP address.
    pub dst: Addr,
    /// Client port, network byte order.
    pub sport_be: u16,
    /// VIP port, network byte order.
    pub dport_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Padding, always zero.
    pub _pad: [u8; 2],
}

/// Connection table key of an IPv4 flow: the fields of [`FlowKey`] that IPv4 uses, so the
/// kernel hashes and compares 16 bytes instead of 40.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    /// Client address.
    pub src: u32,
    /// VIP address.
    pub dst: u32,
    /// Client port, network byte order.
    pub sport_be: u16,
    /// VIP port, network byte order.
    pub dport_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// Padding, always zero.
    pub _pad: [u8; 3],
}

impl FlowKey4 {
    /// The compact key of an IPv4 flow.
    #[inline(always)]
    pub fn of(flow: &FlowKey) -> Self {
        Self {
            src: flow.src[0],
            dst: flow.dst[0],
            sport_be: flow.sport_be,
            dport_be: flow.dport_be,
            proto: flow.proto,
            _pad: [0; 3],
        }
    }
}

/// Connection table value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowValue {
    /// Backend id the flow is pinned to.
    pub backend: u32,
}

/// Node-wide settings, written by the control plane.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// [`NODE_FORWARDING`].
    pub flags: u32,
    /// Maglev table size M (prime); every service table has M slots.
    pub maglev_size: u32,
    /// Maximum new connection-table inserts per CPU per second (0 = unlimited).
    pub new_flow_cap: u32,
    /// Padding, always zero.
    pub _pad: u32,
    /// Outer source address for IPv4 IPIP packets (network-order bytes as a native word).
    pub encap_src_v4: u32,
    /// Outer source address for IPv6-in-IPv6 packets.
    pub encap_src_v6: Addr,
}

/// Value of the interface-MAC table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkMac {
    /// The interface's MAC address.
    pub mac: [u8; 6],
    /// Padding, always zero.
    pub _pad: [u8; 2],
}

/// Key of the tunnel-endpoint table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey {
    /// The address.
    pub addr: Addr,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Padding, always zero.
    pub _pad: [u8; 3],
}

/// Packet, byte and new-flow counts of one service or backend (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (L3 and up, as received).
    pub bytes: u64,
    /// Flows that were assigned a backend by Maglev (connection-table misses).
    pub new_flows: u64,
}

/// State of the per-CPU new-flow insert rate cap.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InsertBudget {
    /// Start of the current one-second window (bpf_ktime_get_ns).
    pub window_start_ns: u64,
    /// Inserts made in the current window.
    pub inserted: u64,
}

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)+) => {
        /// Global data-plane counters, one slot each in the per-CPU `COUNTERS` array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)+
        }

        impl Counter {
            /// Every counter, in slot order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)+];
            /// Number of counter slots.
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable snake_case name, used in `foobar stats` and metrics.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)+ }
            }
        }
    };
}

counters! {
    /// Packets that were not VIP traffic and went to the kernel untouched.
    Passed = "passed",
    /// VIP packets sent out with XDP_TX.
    Transmitted = "transmitted",
    /// VIP packets sent out with bpf_redirect to another interface.
    Redirected = "redirected",
    /// VIP packets for a local backend, delivered with XDP_PASS.
    LocalDelivered = "local_delivered",
    /// IPIP packets addressed to this node, decapsulated and passed up.
    Decapsulated = "decapsulated",
    /// Frames whose Ethernet or IP header is truncated or inconsistent: passed to the kernel
    /// untouched (it drops them itself).
    MalformedPassed = "malformed_passed",
    /// VIP packets too short for their L4 header: dropped.
    DropMalformed = "drop_malformed",
    /// VIP traffic on a port/protocol no service names (the VIP firewall).
    DropNoService = "drop_no_service",
    /// IP fragments addressed to a VIP.
    DropFragment = "drop_fragment",
    /// VIP packets with IPv6 extension headers or other shapes the data plane does not balance.
    DropUnsupported = "drop_unsupported",
    /// The service has no usable backend (empty or all-down Maglev table).
    DropNoBackend = "drop_no_backend",
    /// The FIB had no route or neighbour for the backend.
    DropNoRoute = "drop_no_route",
    /// Encapsulation failed (headroom could not be grown).
    DropEncapFailed = "drop_encap_failed",
    /// Forwarded ICMP errors too big for the egress MTU (never answered with another ICMP).
    DropTooBig = "drop_too_big",
    /// ARP requests for a VIP answered by this node (it forwards: it owns the VIP).
    ArpReplied = "arp_replied",
    /// IPv6 neighbour solicitations for a VIP answered by this node.
    NeighbourAdvertised = "neighbour_advertised",
    /// VIP packets while this node does not forward (backup) and no local delivery applies.
    PassedNotForwarding = "passed_not_forwarding",
    /// Connection-table hits.
    ConntrackHit = "conntrack_hit",
    /// Connection-table misses (Maglev picks).
    ConntrackMiss = "conntrack_miss",
    /// New flows forwarded by Maglev but not inserted because the per-CPU insert cap was reached.
    ConntrackInsertCapped = "conntrack_insert_capped",
    /// Packets too big for the egress MTU after encapsulation: ICMP sent back to the client.
    IcmpTooBigSent = "icmp_too_big_sent",
    /// ICMP errors about a VIP flow forwarded to that flow's backend.
    IcmpForwarded = "icmp_forwarded",
    /// A kernel helper refused to resize a frame this program rewrites (decapsulation, an ICMP
    /// "too big" or a neighbour advertisement built in place): the frame is passed or dropped
    /// as its path says.
    HelperFailed = "helper_failed",
    /// Tunnel packets to this node from a source that is not a configured tunnel peer.
    DropTunnelNotPeer = "drop_tunnel_not_peer",
    /// Tunnel packets from a peer whose inner packet may not arrive through a tunnel (VRRP,
    /// IPv6 neighbour discovery, IPv6 extension headers in front of them).
    DropTunnelForbidden = "drop_tunnel_forbidden",
    /// ARP requests or neighbour solicitations for a claimed VIP left unanswered because the
    /// control plane's claim lease lapsed (it is dead or stuck; the peer takes over).
    ClaimLapsed = "claim_lapsed",
    /// VIP frames unicast to another host's MAC (seen on a promiscuous interface, or flooded by
    /// a switch): passed to the kernel, which discards them, instead of forwarding a copy of a
    /// flow another edge serves.
    PassedOtherHost = "passed_other_host",
    /// New flows from a source a service's policy denies (a deny prefix, or no allow prefix).
    DropSourceDenied = "drop_source_denied",
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is #[repr(C)], made only of integers and byte arrays, with explicit
    // padding fields, so any bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceInfo {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKey4 {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::LinkMac {}
    unsafe impl aya::Pod for super::TrafficStats {}
    unsafe impl aya::Pod for super::InsertBudget {}
}
