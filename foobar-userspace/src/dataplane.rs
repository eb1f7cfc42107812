//! The XDP data plane as the control plane sees it: loading the embedded program with its
//! pinned maps ([`pins`]), attaching it ([`attach`]), adopting a previous run's state, and
//! writing what a [`plan`] computed from the configuration and health into the maps.

mod attach;
mod maps;
mod pins;
pub mod plan;

pub use attach::attach_pass;
pub use pins::{detach, open_pin, open_pinned, pin_root};

use crate::{config::Config, health::Health};
use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{lpm_trie::Key as LpmKey, HashMap as BpfHashMap, MapData},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use foobar_common::{
    addr_octets, maglev_elements, names, vip_filter_slot, Addr, AddrKey, Backend, LinkMac, MaglevSlots, NodeConfig,
    ServiceInfo, ServiceKey, SourceKey, BACKEND_IN_USE, FAMILY_V4, MAGLEV_EMPTY, MAGLEV_LANES, NODE_FORWARDING,
    NODE_HANDED_OVER, SERVICE_LIVE_HALF, VIP_CLAIMED, VIP_FILTER_WORDS,
};
use maps::Maps;
use plan::{addr_key, Layout, Plan};
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
};
use tracing::info;

/// `CLOCK_MONOTONIC_COARSE` in ns: the clock the program reads (`bpf_ktime_get_coarse_ns`).
fn coarse_now_ns() -> Result<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the struct it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } != 0 {
        bail!("reading the coarse clock: {}", std::io::Error::last_os_error());
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// The XDP program, built by build.rs and embedded in the binary.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/foobar-xdp.o"));

/// A loaded data plane with its maps adopted or created under the pin directory.
pub struct Dataplane {
    ebpf: Ebpf,
    maps: Maps,
    root: PathBuf,
    /// Ids, table halves and tables as last written.
    layout: Layout,
    forwarding: bool,
    /// The VIPs this node claims (answers ARP/ND for); None claims every VIP (no VRRP).
    claimed: Option<HashSet<IpAddr>>,
    node: NodeConfig,
    /// The VIP table last written, with its flags (None until the first sync).
    vips: Option<HashMap<AddrKey, u32>>,
    /// The pinned XDP links, opened once, by interface (for [`Dataplane::attached`]).
    link_fds: HashMap<String, std::os::fd::OwnedFd>,
}

impl Dataplane {
    /// Loads the program, creating the pinned maps or adopting those a previous run left.
    /// A pinned map whose size no longer matches the configuration is replaced (and logged).
    pub fn load(c: &Config) -> Result<Self> {
        if BPF_OBJECT.is_empty() {
            bail!("this foobar binary was built with FOOBAR_SKIP_BPF and has no XDP program; build it with `cargo xtask build`");
        }
        let root = pin_root(&c.node.pin_dir);
        pins::ensure_bpffs(&c.node.pin_dir)?;
        std::fs::create_dir_all(&root).with_context(|| format!("creating pin directory {}", root.display()))?;
        let mut sizes: Vec<(&str, u32)> = pins::map_sizes(c).to_vec();
        sizes.push((names::MAGLEV, pins::maglev_entries(c)));
        sizes.push((names::NEXT_HOPS, c.dataplane.max_backends));
        for (name, size) in &sizes {
            pins::replace_if_resized(&root.join(name), *size)?;
        }
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&root);
        for (name, size) in &sizes {
            loader.map_max_entries(name, *size);
        }
        let mut ebpf = loader
            .load(BPF_OBJECT)
            .context("loading the XDP program and its maps")?;
        let maps = Maps::take(&mut ebpf)?;
        let mut dp = Self {
            ebpf,
            maps,
            root,
            layout: Layout::default(),
            // With VRRP a node starts as a backup: silent, not forwarding, until elected. A node
            // that announces forwards and claims nothing: the routers route the VIPs to it.
            forwarding: c.vrrp.is_empty(),
            claimed: (!c.vrrp.is_empty() || c.announce.is_some()).then(HashSet::new),
            vips: None,
            link_fds: HashMap::new(),
            node: NodeConfig {
                flags: 0,
                maglev_size: 0,
                new_flow_cap: 0,
                _pad: 0,
                encap_src_v4: 0,
                encap_src_v6: [0; 4],
            },
        };
        dp.program(names::PROGRAM)
            .context("the kernel verifier refused the XDP program")?;
        dp.adopt()?;
        Ok(dp)
    }

    /// Reads back the services and backends a previous run wrote, so ids (which the connection
    /// table refers to) and live table halves stay as they are.
    fn adopt(&mut self) -> Result<()> {
        let services: Vec<(ServiceKey, ServiceInfo)> = self.maps.services.iter().collect::<Result<_, _>>()?;
        let mut in_use = Vec::new();
        for id in 0..self.maps.backends.len() {
            let b = self.maps.backends.get(&id, 0)?;
            if b.flags & BACKEND_IN_USE != 0 {
                in_use.push(((b.service_id, ip_from(&b.addr, b.family)), id));
            }
        }
        self.layout.services.extend(services);
        self.layout.backends.extend(in_use);
        for entry in self.maps.sources.iter() {
            let (key, verdict) = entry?;
            self.layout.sources.insert((key.prefix_len(), key.data()), verdict);
        }
        if !self.layout.services.is_empty() {
            info!(
                services = self.layout.services.len(),
                backends = self.layout.backends.len(),
                "adopted pinned data-plane state"
            );
        }
        Ok(())
    }

    /// The named XDP program of the object, loaded into the kernel on first use. Besides the
    /// load balancer the object carries `foobar_pass` and `foobar_reflect` (benchmark baselines).
    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("the BPF object has no program {name}"))?
            .try_into()?;
        if program.fd().is_err() {
            program.load().with_context(|| format!("loading program {name}"))?;
        }
        Ok(program)
    }

    /// Computes what the maps should hold for `c` and `health` without writing anything (the
    /// interfaces' MACs are read here): the prepare half of an apply.
    pub fn prepare(&self, c: &Config, health: &Health) -> Result<Plan> {
        let links = c
            .node
            .interfaces
            .iter()
            .map(|name| crate::iface::link(name))
            .collect::<Result<_>>()?;
        plan::plan(c, health, &self.layout, links)
    }

    /// Makes the maps say what the configuration and the health view say.
    pub fn sync(&mut self, c: &Config, health: &Health) -> Result<()> {
        let plan = self.prepare(c, health)?;
        self.commit(&plan)
    }

    /// Writes a plan: node settings, VIPs, backends, then Maglev tables (each into the idle
    /// half, switched live by one service-table update, so packets never see a half-written
    /// table), then removes what is no longer configured. Ids freed and taken over in the same
    /// plan go through an interim table so that no live table names a backend id while its
    /// entry belongs to another service. Only the kernel refusing a map update fails it.
    pub fn commit(&mut self, plan: &Plan) -> Result<()> {
        self.write_node(plan)?;
        self.sync_vips(&plan.vips)?;
        for svc in &plan.services {
            for (id, entry) in svc.backends.iter().filter(|(id, _)| !plan.reused.contains(id)) {
                self.maps.backends.set(*id, *entry, 0)?;
            }
        }
        // New source-policy entries before any service is told to look them up.
        for (key, verdict) in &plan.sources {
            if self.layout.sources.get(key) != Some(verdict) {
                self.maps.sources.insert(&LpmKey::new(key.0, key.1), *verdict, 0)?;
            }
        }
        for svc in &plan.services {
            if let Some(table) = svc.interim.as_ref().or(svc.table.as_ref()) {
                self.publish_table(plan.node.maglev_size, svc.key, svc.id, table, svc.policy)?;
            } else {
                self.set_policy(svc.key, svc.policy)?;
            }
        }
        // Services and backends no longer configured: unlink first, then free.
        for key in &plan.stale_services {
            self.maps.services.remove(key)?;
            if let Some(info) = self.layout.services.remove(key) {
                self.layout.tables.remove(&info.id);
            }
        }
        let unused = Backend {
            addr: [0; 4],
            family: 0,
            flags: 0,
            mode: 0,
            _pad: 0,
            service_id: 0,
        };
        for id in plan.freed.iter().filter(|id| !plan.reused.contains(id)) {
            self.maps.backends.set(*id, unused, 0)?;
        }
        for svc in &plan.services {
            for (id, entry) in svc.backends.iter().filter(|(id, _)| plan.reused.contains(id)) {
                self.maps.backends.set(*id, *entry, 0)?;
            }
        }
        for svc in plan.services.iter().filter(|s| s.interim.is_some()) {
            if let Some(table) = &svc.table {
                self.publish_table(plan.node.maglev_size, svc.key, svc.id, table, svc.policy)?;
            }
        }
        // Entries no service looks up any more go last.
        let stale: Vec<(u32, SourceKey)> = self
            .layout
            .sources
            .keys()
            .filter(|k| !plan.sources.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            self.maps.sources.remove(&LpmKey::new(key.0, key.1))?;
        }
        self.layout.sources = plan.sources.clone();
        for svc in &plan.services {
            if let Some(table) = &svc.table {
                self.layout.tables.insert(svc.id, table.clone());
            }
        }
        self.layout.backends = plan.backends.clone();
        self.layout.cursor = plan.cursor;
        Ok(())
    }

    /// Writes `table` into the idle half of service `sid`'s Maglev table, then makes that half
    /// live with one service-table update.
    fn publish_table(&mut self, maglev_size: u32, key: ServiceKey, sid: u32, table: &[u16], policy: u32) -> Result<()> {
        let half = match self.layout.services.get(&key) {
            Some(info) => 1 - (info.flags & SERVICE_LIVE_HALF),
            None => 0,
        };
        let base = (sid * 2 + half) * maglev_elements(maglev_size);
        for (i, lanes) in table.chunks(MAGLEV_LANES as usize).enumerate() {
            let mut slots: MaglevSlots = [MAGLEV_EMPTY; MAGLEV_LANES as usize];
            slots[..lanes.len()].copy_from_slice(lanes);
            self.maps.maglev.set(base + i as u32, slots, 0)?;
        }
        let info = ServiceInfo {
            id: sid,
            flags: half | policy,
        };
        self.maps.services.insert(key, info, 0)?;
        self.layout.services.insert(key, info);
        Ok(())
    }

    /// Gives a service whose table stays its new source-policy flags, when they changed.
    fn set_policy(&mut self, key: ServiceKey, policy: u32) -> Result<()> {
        let Some(info) = self.layout.services.get(&key).copied() else {
            return Ok(());
        };
        if info.flags & !SERVICE_LIVE_HALF == policy {
            return Ok(());
        }
        let info = ServiceInfo {
            id: info.id,
            flags: (info.flags & SERVICE_LIVE_HALF) | policy,
        };
        self.maps.services.insert(key, info, 0)?;
        self.layout.services.insert(key, info);
        Ok(())
    }

    fn write_node(&mut self, plan: &Plan) -> Result<()> {
        self.node = NodeConfig {
            flags: if self.forwarding { NODE_FORWARDING } else { 0 },
            ..plan.node
        };
        self.maps.node.set(0, self.node, 0)?;
        replace_set(&mut self.maps.locals, &plan.locals)?;
        replace_set(&mut self.maps.tunnel_peers, &plan.tunnel_peers)?;
        let links = &mut self.maps.link_macs;
        let stale: Vec<u32> = links.keys().collect::<Result<Vec<_>, _>>()?;
        for (ifindex, mac) in &plan.links {
            links.insert(
                ifindex,
                LinkMac {
                    mac: *mac,
                    _pad: [0; 2],
                },
                0,
            )?;
        }
        for ifindex in stale.iter().filter(|i| !plan.links.iter().any(|(j, _)| j == *i)) {
            links.remove(ifindex)?;
        }
        Ok(())
    }

    /// Makes this node forward VIP traffic, or pass it to the local stack (a backup: VIP
    /// traffic reaching it was sent to it as a backend).
    pub fn set_forwarding(&mut self, forwarding: bool) -> Result<()> {
        if self.forwarding == forwarding {
            return Ok(());
        }
        self.forwarding = forwarding;
        self.node.flags = if forwarding { NODE_FORWARDING } else { 0 };
        self.maps.node.set(0, self.node, 0)?;
        Ok(())
    }

    /// Lets the data plane answer ARP / ND for the VIPs it claims for `lease` more (`None`: for
    /// good, a node without VRRP). Renewed while the control plane lives; a dead one's claim
    /// lapses, so only the peer that took over answers.
    pub fn renew_claim(&mut self, lease: Option<std::time::Duration>) -> Result<()> {
        let until = match lease {
            None => u64::MAX,
            Some(lease) => coarse_now_ns()?.saturating_add(lease.as_nanos() as u64),
        };
        self.maps.claim_lease.set(0, until, 0)?;
        Ok(())
    }

    /// Marks the claims as left for the next process (a restart): it finds them with
    /// [`Dataplane::handed_over`] if it starts within `lease`, renewed here from now.
    pub fn hand_over(&mut self, lease: std::time::Duration) -> Result<()> {
        self.renew_claim(Some(lease))?;
        self.node.flags |= NODE_HANDED_OVER;
        self.maps.node.set(0, self.node, 0)?;
        Ok(())
    }

    /// The VIPs a previous process claimed and the next one can go on claiming without a gap:
    /// it handed them over on its way out (a restart) and its lease still runs, or it died
    /// with more than `interval` (the fastest advert interval) of its lease left. A lease runs
    /// three intervals from its last renewal, when the last advert was at most one interval
    /// old; a backup takes over three intervals and a skew after the last advert it heard, so
    /// with more than one interval left none can have. Read before the first sync, which
    /// clears the hand-over mark.
    pub fn held_claims(&self, interval: std::time::Duration) -> Result<Option<HashSet<IpAddr>>> {
        let node = self.maps.node.get(&0, 0)?;
        let lease = self.maps.claim_lease.get(&0, 0)?;
        let now = coarse_now_ns()?;
        let left = lease.saturating_sub(now);
        let handed_over = node.flags & NODE_HANDED_OVER != 0 && left > 0;
        let survivable = left > interval.as_nanos() as u64;
        if node.flags & NODE_FORWARDING == 0 || !(handed_over || survivable) {
            return Ok(None);
        }
        let mut claimed = HashSet::new();
        for entry in self.maps.vips.iter() {
            let (key, flags) = entry?;
            if flags & VIP_CLAIMED != 0 {
                claimed.insert(ip_from(&key.addr, key.family));
            }
        }
        Ok(Some(claimed))
    }

    /// Goes on claiming `vips` (handed over by the previous process) from the first sync on,
    /// forwarding meanwhile.
    pub fn resume_claims(&mut self, vips: HashSet<IpAddr>) {
        self.forwarding = !vips.is_empty();
        self.claimed = Some(vips);
    }

    /// Whether the data plane balances VIP traffic now.
    pub fn forwarding(&self) -> bool {
        self.forwarding
    }

    /// Whether it answers ARP / ND for every VIP (no VRRP election, no announcing).
    pub fn claims_every_vip(&self) -> bool {
        self.claimed.is_none()
    }

    /// Sets the VIPs this node answers ARP / neighbour solicitations for while forwarding
    /// (None: all of them).
    pub fn set_claimed(&mut self, c: &Config, claimed: Option<HashSet<IpAddr>>) -> Result<()> {
        self.claimed = claimed;
        let vips = c.services.iter().map(|s| s.vip).collect();
        self.sync_vips(&vips)
    }

    /// Writes the VIP set and its pre-filter when the set changed (health changes, the usual
    /// reason for a sync, leave it alone). New VIPs enter the filter before the set, and bits
    /// leave the filter only after the VIPs behind them left the set.
    fn sync_vips(&mut self, vips: &BTreeSet<IpAddr>) -> Result<()> {
        let wanted: HashMap<AddrKey, u32> = vips
            .iter()
            .map(|&vip| {
                let claimed = self.claimed.as_ref().is_none_or(|set| set.contains(&vip));
                (addr_key(vip), if claimed { VIP_CLAIMED } else { 0 })
            })
            .collect();
        if self.vips.as_ref() == Some(&wanted) {
            return Ok(());
        }
        let mut filter = vec![0u64; VIP_FILTER_WORDS as usize];
        for key in wanted.keys() {
            let (word, bit) = vip_filter_slot(&key.addr);
            filter[word as usize] |= bit;
        }
        let words = &mut self.maps.vip_filter;
        let mut current = Vec::with_capacity(filter.len());
        for (i, want) in filter.iter().enumerate() {
            let have = words.get(&(i as u32), 0)?;
            if have | want != have {
                words.set(i as u32, have | want, 0)?;
            }
            current.push(have);
        }
        let vips = &mut self.maps.vips;
        let present: Vec<AddrKey> = vips.keys().collect::<Result<_, _>>()?;
        for (key, flags) in &wanted {
            vips.insert(key, flags, 0)?;
        }
        for key in present.iter().filter(|k| !wanted.contains_key(k)) {
            vips.remove(key)?;
        }
        let words = &mut self.maps.vip_filter;
        for (i, (have, want)) in current.iter().zip(&filter).enumerate() {
            if have & !want != 0 {
                words.set(i as u32, *want, 0)?;
            }
        }
        self.vips = Some(wanted);
        Ok(())
    }
}

/// Makes a set-like BPF hash map hold exactly `wanted` (value 1).
fn replace_set(map: &mut BpfHashMap<MapData, AddrKey, u32>, wanted: &HashSet<AddrKey>) -> Result<()> {
    let present: Vec<AddrKey> = map.keys().collect::<Result<_, _>>()?;
    for key in wanted {
        map.insert(key, 1, 0)?;
    }
    for key in present.iter().filter(|k| !wanted.contains(k)) {
        map.remove(key)?;
    }
    Ok(())
}

/// Turns map address bytes back into an address.
pub fn ip_from(addr: &Addr, family: u8) -> IpAddr {
    let octets = addr_octets(addr);
    if family == FAMILY_V4 {
        IpAddr::from([octets[0], octets[1], octets[2], octets[3]])
    } else {
        IpAddr::from(octets)
    }
}
