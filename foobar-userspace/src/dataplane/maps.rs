//! The maps the control plane writes, as typed handles taken from the loaded object once.

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{lpm_trie::LpmTrie, Array, HashMap as BpfHashMap, Map, MapData},
    Ebpf,
};
use foobar_common::{names, AddrKey, Backend, LinkMac, MaglevSlots, NodeConfig, ServiceInfo, ServiceKey, SourceKey};

/// Typed handles on the control plane's maps (the program keeps its own references).
pub(super) struct Maps {
    /// VIP, port and protocol → service id and live table half.
    pub services: BpfHashMap<MapData, ServiceKey, ServiceInfo>,
    /// The VIPs, with whether this node claims them.
    pub vips: BpfHashMap<MapData, AddrKey, u32>,
    /// This node's own addresses.
    pub locals: BpfHashMap<MapData, AddrKey, u32>,
    /// The sources whose tunnels are decapsulated.
    pub tunnel_peers: BpfHashMap<MapData, AddrKey, u32>,
    /// MACs of the attached interfaces.
    pub link_macs: BpfHashMap<MapData, u32, LinkMac>,
    /// Backends by id.
    pub backends: Array<MapData, Backend>,
    /// Both halves of every service's Maglev table.
    pub maglev: Array<MapData, MaglevSlots>,
    /// Node settings (one entry).
    pub node: Array<MapData, NodeConfig>,
    /// Until when the VIPs may be answered for (one entry, coarse monotonic ns).
    pub claim_lease: Array<MapData, u64>,
    /// The VIP pre-filter's bit words.
    pub vip_filter: Array<MapData, u64>,
    /// The services' source policies.
    pub sources: LpmTrie<MapData, SourceKey, u32>,
}

impl Maps {
    /// Takes the maps out of the loaded object (their pins keep them in bpffs).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            services: take(ebpf, names::SERVICES)?,
            vips: take(ebpf, names::VIPS)?,
            locals: take(ebpf, names::LOCAL_ADDRS)?,
            tunnel_peers: take(ebpf, names::TUNNEL_PEERS)?,
            link_macs: take(ebpf, names::LINK_MACS)?,
            backends: take(ebpf, names::BACKENDS)?,
            maglev: take(ebpf, names::MAGLEV)?,
            node: take(ebpf, names::NODE)?,
            claim_lease: take(ebpf, names::CLAIM_LEASE)?,
            vip_filter: take(ebpf, names::VIP_FILTER)?,
            sources: take(ebpf, names::SOURCES)?,
        })
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("the BPF object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}
