//! Every map of the data plane, in one place. All but scratch and cache maps are pinned by name,
//! so forwarding state survives a restart of the control plane. Sizes here are defaults; the control plane sets
//! the real ones from its configuration before the maps are created.

use crate::access::per_cpu;
use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use foobar_common::{
    Addr, AddrKey, Backend, Counter, FlowKey, FlowKey4, FlowValue, InsertBudget, LinkMac, MaglevSlots, NodeConfig,
    ServiceInfo, ServiceKey, SourceKey, TrafficStats, VIP_FILTER_WORDS,
};

/// A backend's next hop as the FIB last said, and until when to trust it.
#[repr(C)]
pub struct CachedHop {
    /// The backend address it was looked up for (ids can be reassigned).
    pub addr: Addr,
    /// bpf_ktime_get_coarse_ns after which the entry is stale (0: empty).
    pub expires_ns: u64,
    /// Uses since it was filled (the clock is read on every 16th).
    pub uses: u32,
    /// Egress interface.
    pub ifindex: u32,
    /// Egress MTU.
    pub mtu: u32,
    /// Egress MAC.
    pub smac: [u8; 6],
    /// Next hop's MAC.
    pub dmac: [u8; 6],
}

/// VIP services.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceInfo> = HashMap::pinned(256, 0);

/// Backends by id.
#[map]
pub static BACKENDS: Array<Backend> = Array::pinned(4096, 0);

/// Maglev lookup tables: for service id `s`, half `h`, slot `i`: element
/// `(2s + h) * E + i / 4`, lane `i % 4`, where E = ceil(M / 4).
#[map]
pub static MAGLEV: Array<MaglevSlots> = Array::pinned(2 * 16385, 0);

/// One-hash Bloom filter over the VIPs (see `foobar_common::vip_filter_slot`).
#[map]
pub static VIP_FILTER: Array<u64> = Array::pinned(VIP_FILTER_WORDS, 0);

/// Per-CPU cache of each backend's next hop, refreshed from the FIB when it expires.
#[map]
pub static NEXT_HOPS: PerCpuArray<CachedHop> = PerCpuArray::with_max_entries(4096, 0);

/// Connection table of IPv4 flows; per-CPU LRU lists so CPUs do not contend on eviction.
#[map]
pub static CONNTRACK: LruHashMap<FlowKey4, FlowValue> = LruHashMap::pinned(65536, BPF_F_NO_COMMON_LRU);

/// Connection table of IPv6 flows.
#[map]
pub static CONNTRACK6: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(16384, BPF_F_NO_COMMON_LRU);

/// Node-wide settings (one entry).
#[map]
pub static NODE: Array<NodeConfig> = Array::pinned(1, 0);

/// Until when (coarse monotonic ns) the VIPs may be answered for (`CLAIM_LEASE`).
#[map]
pub static CLAIM_LEASE: Array<u64> = Array::pinned(1, 0);

/// The VIPs of all services (value unused, 1).
#[map]
pub static VIPS: HashMap<AddrKey, u32> = HashMap::pinned(256, 0);

/// MAC of each interface the program runs on, by ifindex.
#[map]
pub static LINK_MACS: HashMap<u32, LinkMac> = HashMap::pinned(64, 0);

/// This node's tunnel endpoint addresses: IPIP addressed to them is decapsulated.
#[map]
pub static LOCAL_ADDRS: HashMap<AddrKey, u32> = HashMap::pinned(64, 0);

/// The only sources whose tunnels to this node are decapsulated (`[node] tunnel_peers`).
#[map]
pub static TUNNEL_PEERS: HashMap<AddrKey, u32> = HashMap::pinned(1024, 0);

/// The services' source policies: a service id and a source prefix -> verdict.
#[map]
pub static SOURCES: LpmTrie<SourceKey, u32> = LpmTrie::pinned(65536, 0);

/// Global counters.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

/// Per-service traffic.
#[map]
pub static SERVICE_STATS: PerCpuArray<TrafficStats> = PerCpuArray::pinned(256, 0);

/// Per-backend traffic.
#[map]
pub static BACKEND_STATS: PerCpuArray<TrafficStats> = PerCpuArray::pinned(4096, 0);

/// New-flow insert budget per CPU.
#[map]
pub static INSERT_BUDGET: PerCpuArray<InsertBudget> = PerCpuArray::pinned(1, 0);

/// Scratch space for bpf_fib_lookup's parameters (too large for the 512-byte stack budget).
#[map]
pub static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// Adds one to a global counter.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = per_cpu(&COUNTERS, counter as u32) {
        *slot += 1;
    }
}

/// Adds a packet of `bytes` (and a new flow when `new_flow`) to a per-CPU traffic slot.
#[inline(always)]
pub fn account(stats: &PerCpuArray<TrafficStats>, index: u32, bytes: usize, new_flow: bool) {
    if let Some(slot) = per_cpu(stats, index) {
        slot.packets += 1;
        slot.bytes += bytes as u64;
        if new_flow {
            slot.new_flows += 1;
        }
    }
}
