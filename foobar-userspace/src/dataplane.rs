//! The XDP data plane as the control plane sees it: loading the embedded program, pinning its
//! maps and links so forwarding outlives this process, adopting a previous run's state, and
//! turning a validated configuration plus health into map contents.

pub mod plan;

use crate::{
    config::{self, Config},
    health::Health,
};
use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapInfo},
    programs::{
        links::{FdLink, PinnedLink},
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use foobar_common::{
    addr_octets, maglev_elements, names, vip_filter_slot, Addr, AddrKey, Backend, LinkMac, MaglevSlots, NodeConfig,
    ServiceInfo, ServiceKey, BACKEND_IN_USE, FAMILY_V4, LAYOUT_VERSION, MAGLEV_EMPTY, MAGLEV_LANES, NODE_FORWARDING,
    VIP_CLAIMED, VIP_FILTER_WORDS,
};
use plan::{addr_key, Layout, Plan};
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
};
use tracing::{info, warn};

/// The XDP program, built by build.rs and embedded in the binary.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/foobar-xdp.o"));

/// Directory under `pin_dir` that holds this layout version's pinned maps and links.
pub fn pin_root(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("v{LAYOUT_VERSION}"))
}

/// Pin path of the XDP link on `interface`.
fn link_pin(root: &Path, interface: &str) -> PathBuf {
    root.join(format!("link_{interface}"))
}

/// Sizes of the maps the configuration asks for, by map name.
fn map_sizes(c: &Config) -> [(&'static str, u32); 8] {
    let dp = &c.dataplane;
    let services = *dp.max_services.get_ref();
    let backends = *dp.max_backends.get_ref();
    [
        (names::SERVICES, services),
        (names::VIPS, services),
        (names::SERVICE_STATS, services),
        (names::BACKENDS, backends),
        (names::BACKEND_STATS, backends),
        (names::CONNTRACK, *dp.conntrack_entries.get_ref()),
        (names::CONNTRACK6, *dp.conntrack_entries_v6.get_ref()),
        (names::COUNTERS, foobar_common::Counter::COUNT),
    ]
}

/// Size of the MAGLEV map for a configuration.
fn maglev_entries(c: &Config) -> u32 {
    2 * c.dataplane.max_services.get_ref() * maglev_elements(*c.dataplane.maglev_table_size.get_ref())
}

/// A loaded data plane with its maps adopted or created under the pin directory.
pub struct Dataplane {
    ebpf: Ebpf,
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
        ensure_bpffs(&c.node.pin_dir)?;
        std::fs::create_dir_all(&root).with_context(|| format!("creating pin directory {}", root.display()))?;
        let mut sizes: Vec<(&str, u32)> = map_sizes(c).to_vec();
        sizes.push((names::MAGLEV, maglev_entries(c)));
        sizes.push((names::NEXT_HOPS, *c.dataplane.max_backends.get_ref()));
        for (name, size) in &sizes {
            replace_if_resized(&root.join(name), *size)?;
        }
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&root);
        for (name, size) in &sizes {
            loader.map_max_entries(name, *size);
        }
        let ebpf = loader
            .load(BPF_OBJECT)
            .context("loading the XDP program and its maps")?;
        let mut dp = Self {
            ebpf,
            root,
            layout: Layout::default(),
            // With VRRP a node starts as a backup: silent, not forwarding, until elected.
            forwarding: c.vrrp.is_empty(),
            claimed: (!c.vrrp.is_empty()).then(HashSet::new),
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
        let services: BpfHashMap<_, ServiceKey, ServiceInfo> = BpfHashMap::try_from(self.map(names::SERVICES)?)?;
        let services: Vec<(ServiceKey, ServiceInfo)> = services.iter().collect::<Result<_, _>>()?;
        let backends: Array<_, Backend> = Array::try_from(self.map(names::BACKENDS)?)?;
        let mut in_use = Vec::new();
        for id in 0..backends.len() {
            let b = backends.get(&id, 0)?;
            if b.flags & BACKEND_IN_USE != 0 {
                in_use.push(((b.service_id, ip_from(&b.addr, b.family)), id));
            }
        }
        self.layout.services.extend(services);
        self.layout.backends.extend(in_use);
        if !self.layout.services.is_empty() {
            info!(
                services = self.layout.services.len(),
                backends = self.layout.backends.len(),
                "adopted pinned data-plane state"
            );
        }
        Ok(())
    }

    fn map(&self, name: &str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("the BPF object has no map {name}"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("the BPF object has no map {name}"))
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

    /// Attaches the program to every configured interface, or swaps it into the XDP link a
    /// previous run pinned there (atomically: no packet sees no program).
    pub fn attach(&mut self, c: &Config) -> Result<()> {
        let root = self.root.clone();
        for interface in c.node.interfaces.get_ref() {
            enable_forwarding(interface)?;
            let pin = link_pin(&root, interface);
            let program = self.program(names::PROGRAM)?;
            if pin.exists() {
                let pinned =
                    PinnedLink::from_pin(&pin).with_context(|| format!("opening pinned link {}", pin.display()))?;
                let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned))?;
                let id = program
                    .attach_to_link(link)
                    .with_context(|| format!("replacing the program on {interface}"))?;
                // The pin keeps the link; this process's handle may go.
                drop(program.take_link(id)?);
                info!(interface, "replaced the XDP program in the pinned link");
                continue;
            }
            let id = match c.node.xdp_mode {
                config::XdpMode::Native => program.attach(interface, XdpMode::Driver),
                config::XdpMode::Generic => program.attach(interface, XdpMode::Skb),
                config::XdpMode::Auto => program.attach(interface, XdpMode::Driver).or_else(|e| {
                    warn!(interface, error = %e, "native XDP unavailable; using generic mode");
                    program.attach(interface, XdpMode::Skb)
                }),
            }
            .with_context(|| format!("attaching XDP to {interface}"))?;
            let link = FdLink::try_from(program.take_link(id)?)?;
            link.pin(&pin)
                .with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
            info!(interface, "attached XDP program");
        }
        Ok(())
    }

    /// Computes what the maps should hold for `c` and `health` without writing anything (the
    /// interfaces' MACs are read here): the prepare half of an apply.
    pub fn prepare(&self, c: &Config, health: &Health) -> Result<Plan> {
        let links = c
            .node
            .interfaces
            .get_ref()
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
        let mut backends: Array<_, Backend> = Array::try_from(self.map_mut(names::BACKENDS)?)?;
        for svc in &plan.services {
            for (id, entry) in svc.backends.iter().filter(|(id, _)| !plan.reused.contains(id)) {
                backends.set(*id, *entry, 0)?;
            }
        }
        for svc in &plan.services {
            if let Some(table) = svc.interim.as_ref().or(svc.table.as_ref()) {
                self.publish_table(plan.node.maglev_size, svc.key, svc.id, table)?;
            }
        }
        // Services and backends no longer configured: unlink first, then free.
        for key in &plan.stale_services {
            let mut services: BpfHashMap<_, ServiceKey, ServiceInfo> =
                BpfHashMap::try_from(self.map_mut(names::SERVICES)?)?;
            services.remove(key)?;
            if let Some(info) = self.layout.services.remove(key) {
                self.layout.tables.remove(&info.id);
            }
        }
        let mut backends: Array<_, Backend> = Array::try_from(self.map_mut(names::BACKENDS)?)?;
        let unused = Backend {
            addr: [0; 4],
            family: 0,
            flags: 0,
            mode: 0,
            _pad: 0,
            service_id: 0,
        };
        for id in plan.freed.iter().filter(|id| !plan.reused.contains(id)) {
            backends.set(*id, unused, 0)?;
        }
        for svc in &plan.services {
            for (id, entry) in svc.backends.iter().filter(|(id, _)| plan.reused.contains(id)) {
                backends.set(*id, *entry, 0)?;
            }
        }
        for svc in plan.services.iter().filter(|s| s.interim.is_some()) {
            if let Some(table) = &svc.table {
                self.publish_table(plan.node.maglev_size, svc.key, svc.id, table)?;
            }
        }
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
    fn publish_table(&mut self, maglev_size: u32, key: ServiceKey, sid: u32, table: &[u16]) -> Result<()> {
        let half = match self.layout.services.get(&key) {
            Some(info) => 1 - (info.table_half & 1),
            None => 0,
        };
        let base = (sid * 2 + half) * maglev_elements(maglev_size);
        let mut maglev: Array<_, MaglevSlots> = Array::try_from(self.map_mut(names::MAGLEV)?)?;
        for (i, lanes) in table.chunks(MAGLEV_LANES as usize).enumerate() {
            let mut slots = [MAGLEV_EMPTY; MAGLEV_LANES as usize];
            slots[..lanes.len()].copy_from_slice(lanes);
            maglev.set(base + i as u32, slots, 0)?;
        }
        let info = ServiceInfo {
            id: sid,
            table_half: half,
        };
        let mut services: BpfHashMap<_, ServiceKey, ServiceInfo> =
            BpfHashMap::try_from(self.map_mut(names::SERVICES)?)?;
        services.insert(key, info, 0)?;
        self.layout.services.insert(key, info);
        Ok(())
    }

    fn write_node(&mut self, plan: &Plan) -> Result<()> {
        self.node = NodeConfig {
            flags: if self.forwarding { NODE_FORWARDING } else { 0 },
            ..plan.node
        };
        let node = self.node;
        let mut array: Array<_, NodeConfig> = Array::try_from(self.map_mut(names::NODE)?)?;
        array.set(0, node, 0)?;
        let mut locals: BpfHashMap<_, AddrKey, u32> = BpfHashMap::try_from(self.map_mut(names::LOCAL_ADDRS)?)?;
        replace_set(&mut locals, &plan.locals)?;
        let mut links: BpfHashMap<_, u32, LinkMac> = BpfHashMap::try_from(self.map_mut(names::LINK_MACS)?)?;
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
        let node = self.node;
        let mut array: Array<_, NodeConfig> = Array::try_from(self.map_mut(names::NODE)?)?;
        array.set(0, node, 0)?;
        Ok(())
    }

    /// Whether the data plane balances VIP traffic now.
    pub fn forwarding(&self) -> bool {
        self.forwarding
    }

    /// True while the XDP link pinned for `interface` is attached to it (a detached link, for
    /// example after `bpftool link detach` or a re-created interface, reports no device).
    pub fn attached(&mut self, interface: &str) -> Result<bool> {
        let Ok(ifindex) = crate::iface::index(interface) else {
            return Ok(false);
        };
        let fd = match self.link_fds.entry(interface.to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(open_pin(&link_pin(&self.root, interface))?),
        };
        Ok(link_ifindex(fd)? == ifindex)
    }

    /// Sets the VIPs this node answers ARP / neighbour solicitations for while forwarding
    /// (None: all of them).
    pub fn set_claimed(&mut self, c: &Config, claimed: Option<HashSet<IpAddr>>) -> Result<()> {
        self.claimed = claimed;
        let vips = c.services.iter().map(|s| *s.vip.get_ref()).collect();
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
        let mut words: Array<_, u64> = Array::try_from(self.map_mut(names::VIP_FILTER)?)?;
        let mut current = Vec::with_capacity(filter.len());
        for (i, want) in filter.iter().enumerate() {
            let have = words.get(&(i as u32), 0)?;
            if have | want != have {
                words.set(i as u32, have | want, 0)?;
            }
            current.push(have);
        }
        let mut vips: BpfHashMap<_, AddrKey, u32> = BpfHashMap::try_from(self.map_mut(names::VIPS)?)?;
        let present: Vec<AddrKey> = vips.keys().collect::<Result<_, _>>()?;
        for (key, flags) in &wanted {
            vips.insert(key, flags, 0)?;
        }
        for key in present.iter().filter(|k| !wanted.contains_key(k)) {
            vips.remove(key)?;
        }
        let mut words: Array<_, u64> = Array::try_from(self.map_mut(names::VIP_FILTER)?)?;
        for (i, (have, want)) in current.iter().zip(&filter).enumerate() {
            if have & !want != 0 {
                words.set(i as u32, *want, 0)?;
            }
        }
        self.vips = Some(wanted);
        Ok(())
    }
}

/// Opens a pinned BPF object (map, program or link) by path (BPF_OBJ_GET).
pub fn open_pin(pin: &Path) -> Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    /// The BPF_OBJ_GET part of `union bpf_attr`.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        /// Explicit so the padding is zero: the kernel refuses non-zero bytes past the fields.
        _pad: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())?;
    let attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: attr is a valid BPF_OBJ_GET attribute naming a NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("opening pinned object {}", pin.display()));
    }
    // SAFETY: fd is a fresh descriptor owned from here on.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// The ifindex an XDP link is attached to, 0 once detached (from the link's fdinfo).
fn link_ifindex(link: &std::os::fd::OwnedFd) -> Result<u32> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", link.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("ifindex:"))
        .and_then(|v| v.trim().parse().ok())
        .context("the pinned link is not an XDP link")
}

/// Makes a set-like BPF hash map hold exactly `wanted` (value 1).
fn replace_set(map: &mut BpfHashMap<&mut MapData, AddrKey, u32>, wanted: &HashSet<AddrKey>) -> Result<()> {
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

/// Removes a pinned map whose capacity differs from what the configuration asks for, so the
/// loader creates it anew. Its state (e.g. connection-table entries) is lost; Maglev keeps
/// flows on their backends while the backend set is unchanged.
fn replace_if_resized(path: &Path, size: u32) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let info = MapInfo::from_pin(path).with_context(|| format!("reading pinned map {}", path.display()))?;
    if info.max_entries() != size {
        warn!(map = %path.display(), was = info.max_entries(), now = size, "map size changed: replacing the pinned map");
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there and the pin directory is under it.
fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("bpf"));
    if !mounted && pin_dir.starts_with("/sys/fs/bpf") {
        nix::mount::mount(
            Some("bpf"),
            "/sys/fs/bpf",
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting bpffs at /sys/fs/bpf")?;
    }
    Ok(())
}

/// bpf_fib_lookup forwards only on interfaces with forwarding enabled.
fn enable_forwarding(interface: &str) -> Result<()> {
    for family in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{family}/conf/{interface}/forwarding");
        if Path::new(&path).exists() {
            std::fs::write(&path, "1").with_context(|| format!("enabling forwarding: {path}"))?;
        }
    }
    Ok(())
}

/// Attaches the empty `foobar_pass` program to `interface` and pins its link under `pin_dir`.
/// A veth drops frames that an XDP program on its peer transmits into it unless it has an
/// XDP program itself; labs attach this one to such peers (bridge ports included).
pub fn attach_pass(pin_dir: &Path, interface: &str) -> Result<()> {
    ensure_bpffs(pin_dir)?;
    let root = pin_root(pin_dir);
    std::fs::create_dir_all(&root).with_context(|| format!("creating pin directory {}", root.display()))?;
    let pin = root.join(format!("pass_{interface}"));
    if pin.exists() {
        return Ok(());
    }
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&root)
        .load(BPF_OBJECT)
        .context("loading the BPF object")?;
    let program: &mut Xdp = ebpf
        .program_mut(names::PASS_PROGRAM)
        .ok_or_else(|| anyhow!("the BPF object has no program {}", names::PASS_PROGRAM))?
        .try_into()?;
    program.load()?;
    let id = program
        .attach(interface, XdpMode::Driver)
        .or_else(|_| program.attach(interface, XdpMode::Skb))
        .with_context(|| format!("attaching {} to {interface}", names::PASS_PROGRAM))?;
    FdLink::try_from(program.take_link(id)?)?
        .pin(&pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

/// Detaches the program from every pinned link and removes all pinned state under `pin_dir`.
pub fn detach(pin_dir: &Path) -> Result<()> {
    let root = pin_root(pin_dir);
    if !root.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))? {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    std::fs::remove_dir(&root).with_context(|| format!("removing {}", root.display()))?;
    let _ = std::fs::remove_dir(pin_dir);
    Ok(())
}

/// Opens one pinned map of a running (or stopped) data plane.
pub fn open_pinned(pin_dir: &Path, name: &str) -> Result<MapData> {
    let path = pin_root(pin_dir).join(name);
    MapData::from_pin(&path).with_context(|| format!("opening {} (is the data plane loaded?)", path.display()))
}
