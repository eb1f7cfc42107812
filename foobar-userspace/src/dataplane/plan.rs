//! What the data-plane maps should hold for a configuration and a health view, computed
//! without touching the kernel: service and backend ids, backend entries, Maglev tables, the
//! VIP set and the node settings. [`plan`] is pure (its inputs are the configuration, the
//! health view, the interfaces' MACs and the [`Layout`] the maps hold now); writing a plan is
//! [`super::Dataplane::commit`].

use crate::{
    config::{self, Config, Forwarding, Protocol},
    health::Health,
    maglev,
};
use anyhow::{bail, Result};
use foobar_common::{
    addr_from_octets, Addr, AddrKey, Backend, NodeConfig, ServiceInfo, ServiceKey, SourceKey, BACKEND_ACTIVE,
    BACKEND_IN_USE, BACKEND_LOCAL, FAMILY_V4, FAMILY_V6, MAGLEV_EMPTY, MODE_IPIP, MODE_L2DSR, PROTO_TCP, PROTO_UDP,
    SERVICE_DEFAULT_DENY, SERVICE_SOURCE_POLICY, SOURCE_ALLOW, SOURCE_DENY,
};
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

/// What the service and backend maps hold, as this process wrote or adopted them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layout {
    /// The service table: id and live table half per service.
    pub services: HashMap<ServiceKey, ServiceInfo>,
    /// Backend ids by (service id, address).
    pub backends: HashMap<(u32, IpAddr), u32>,
    /// The live Maglev table of each service id, as backend ids.
    pub tables: HashMap<u32, Vec<u16>>,
    /// Where the round-robin search for a free backend id starts.
    pub cursor: u32,
    /// The source-policy entries: (prefix length, key) -> verdict.
    pub sources: HashMap<(u32, SourceKey), u32>,
}

/// One service as the plan wants it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePlan {
    /// Its service-table key.
    pub key: ServiceKey,
    /// Its id (kept across plans while the service exists).
    pub id: u32,
    /// Its backends' entries, by backend id.
    pub backends: Vec<(u32, Backend)>,
    /// The Maglev table to publish, when it differs from the live one.
    pub table: Option<Vec<u16>>,
    /// A table to publish first when `table` names backend ids that other services free in
    /// this plan: the same members without those (so no table ever names a reused id while
    /// its old owner's table may still be live).
    pub interim: Option<Vec<u16>>,
    /// Its source-policy flags ([`SERVICE_SOURCE_POLICY`], [`SERVICE_DEFAULT_DENY`]).
    pub policy: u32,
}

/// Everything one sync writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Node settings (the forwarding flag is the data plane's own and is added on write).
    pub node: NodeConfig,
    /// This node's own addresses.
    pub locals: HashSet<AddrKey>,
    /// The sources whose tunnels to this node are decapsulated.
    pub tunnel_peers: HashSet<AddrKey>,
    /// MACs of the attached interfaces, by ifindex.
    pub links: Vec<(u32, [u8; 6])>,
    /// The configured VIPs.
    pub vips: BTreeSet<IpAddr>,
    /// Every configured service.
    pub services: Vec<ServicePlan>,
    /// Services no longer configured.
    pub stale_services: Vec<ServiceKey>,
    /// Backend ids no longer used.
    pub freed: Vec<u32>,
    /// Freed ids that new backends take over in this same plan.
    pub reused: BTreeSet<u32>,
    /// Backend ids after the plan is written.
    pub backends: HashMap<(u32, IpAddr), u32>,
    /// The backend-id cursor after the plan.
    pub cursor: u32,
    /// Every service's source-policy entries: (prefix length, key) -> verdict.
    pub sources: HashMap<(u32, SourceKey), u32>,
}

impl Plan {
    /// Whether writing this plan changes no service, backend id or table.
    pub fn changes_no_table(&self) -> bool {
        self.stale_services.is_empty() && self.freed.is_empty() && self.services.iter().all(|s| s.table.is_none())
    }
}

/// Stores an address the way the maps do.
pub fn map_addr(addr: IpAddr) -> (Addr, u8) {
    match addr {
        IpAddr::V4(a) => (addr_from_octets(&a.octets()), FAMILY_V4),
        IpAddr::V6(a) => (addr_from_octets(&a.octets()), FAMILY_V6),
    }
}

/// The address-set key of an address.
pub fn addr_key(addr: IpAddr) -> AddrKey {
    let (addr, family) = map_addr(addr);
    AddrKey {
        addr,
        family,
        _pad: [0; 3],
    }
}

/// The service-table key of a configured service.
pub fn service_key(svc: &config::Service) -> ServiceKey {
    let (addr, family) = map_addr(svc.vip);
    let proto = match svc.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    };
    ServiceKey {
        addr,
        port_be: svc.port.to_be(),
        proto,
        family,
    }
}

/// One backend of a service as the Maglev table sees it.
struct Member {
    id: u32,
    identity: String,
    weight: u32,
    up: bool,
}

/// The Maglev table of the healthy members, as backend ids.
fn maglev_table(c: &Config, members: &[&Member]) -> Vec<u16> {
    let healthy: Vec<&&Member> = members.iter().filter(|m| m.up).collect();
    let candidates: Vec<maglev::Candidate<'_>> = healthy
        .iter()
        .map(|m| maglev::Candidate {
            identity: &m.identity,
            weight: m.weight,
        })
        .collect();
    // Backend ids are below max_backends <= MAX_BACKENDS, so they fit the u16 lanes.
    maglev::build_table(c.dataplane.maglev_seed, &candidates, c.dataplane.maglev_table_size)
        .into_iter()
        .map(|i| healthy.get(i as usize).map_or(MAGLEV_EMPTY, |m| m.id as u16))
        .collect()
}

/// Computes what the maps should hold for `c` and `health`, given what they hold now. Fails
/// only when the backend table has no room, and then nothing has been written.
pub fn plan(c: &Config, health: &Health, now: &Layout, links: Vec<(u32, [u8; 6])>) -> Result<Plan> {
    let node = NodeConfig {
        flags: 0,
        maglev_size: c.dataplane.maglev_table_size,
        new_flow_cap: c.dataplane.new_flow_cap,
        _pad: 0,
        encap_src_v4: c.node.tunnel_source_v4.map_or(0, |a| map_addr(IpAddr::V4(a)).0[0]),
        encap_src_v6: c.node.tunnel_source_v6.map_or([0; 4], |a| map_addr(IpAddr::V6(a)).0),
    };
    let keys: Vec<ServiceKey> = c.services.iter().map(service_key).collect();
    // Service ids: existing services keep theirs, new ones get the lowest free id.
    let mut service_ids: HashSet<u32> = now
        .services
        .iter()
        .filter(|(k, _)| keys.contains(k))
        .map(|(_, v)| v.id)
        .collect();
    let sids: Vec<u32> = keys
        .iter()
        .map(|key| match now.services.get(key) {
            Some(info) => info.id,
            None => {
                let id = (0..).find(|i| !service_ids.contains(i)).unwrap_or(0);
                service_ids.insert(id);
                id
            }
        })
        .collect();
    // Backend ids: kept backends keep theirs; new ones take free ids round-robin (a freed id
    // is reused as late as possible, since stale connection-table entries may still name
    // it), ids freed by this plan only when nothing else is free.
    let wanted: Vec<(u32, IpAddr)> = c
        .services
        .iter()
        .zip(&sids)
        .flat_map(|(svc, sid)| svc.backends.iter().map(move |b| (*sid, b.address)))
        .collect();
    let wanted_set: HashSet<&(u32, IpAddr)> = wanted.iter().collect();
    let mut backends: HashMap<(u32, IpAddr), u32> = now
        .backends
        .iter()
        .filter(|(k, _)| wanted_set.contains(k))
        .map(|(k, v)| (*k, *v))
        .collect();
    let freed: Vec<u32> = now
        .backends
        .iter()
        .filter(|(k, _)| !wanted_set.contains(k))
        .map(|(_, v)| *v)
        .collect();
    let max = c.dataplane.max_backends;
    let mut in_use: HashSet<u32> = backends.values().copied().collect();
    let before: HashSet<u32> = now.backends.values().copied().collect();
    let mut cursor = now.cursor % max.max(1);
    let mut reused = BTreeSet::new();
    for key in &wanted {
        if backends.contains_key(key) {
            continue;
        }
        let free = |taken: &HashSet<u32>, cursor: u32| {
            (0..max)
                .map(|step| (cursor + step) % max)
                .find(|id| !taken.contains(id))
        };
        let taken_before: HashSet<u32> = in_use.union(&before).copied().collect();
        let id = match free(&taken_before, cursor).or_else(|| free(&in_use, cursor)) {
            Some(id) => id,
            None => bail!("no free backend slot (max_backends = {max})"),
        };
        if before.contains(&id) {
            reused.insert(id);
        }
        in_use.insert(id);
        cursor = (id + 1) % max;
        backends.insert(*key, id);
    }
    let mut services = Vec::with_capacity(c.services.len());
    let mut sources = HashMap::new();
    for ((svc, key), sid) in c.services.iter().zip(&keys).zip(&sids) {
        for (listed, verdict) in [(&svc.allow, SOURCE_ALLOW), (&svc.deny, SOURCE_DENY)] {
            for prefix in listed {
                let key = SourceKey {
                    service: *sid,
                    addr: map_addr(prefix.addr).0,
                };
                sources.insert((SOURCE_SERVICE_BITS + u32::from(prefix.len), key), verdict);
            }
        }
        let policy = match (svc.allow.is_empty(), svc.deny.is_empty()) {
            (true, true) => 0,
            (true, false) => SERVICE_SOURCE_POLICY,
            (false, _) => SERVICE_SOURCE_POLICY | SERVICE_DEFAULT_DENY,
        };
        let mode = match svc.forwarding {
            Forwarding::Ipip => MODE_IPIP,
            Forwarding::L2dsr => MODE_L2DSR,
        };
        let mut entries = Vec::with_capacity(svc.backends.len());
        let mut members = Vec::with_capacity(svc.backends.len());
        for b in &svc.backends {
            let address = b.address;
            let Some(&id) = backends.get(&(*sid, address)) else {
                bail!("backend {address} of service {} has no id", svc.name);
            };
            let up = health.is_up(&svc.name, address);
            let (addr, family) = map_addr(address);
            let mut flags = BACKEND_IN_USE;
            if up {
                flags |= BACKEND_ACTIVE;
            }
            if c.node.addresses.contains(&address) {
                flags |= BACKEND_LOCAL;
            }
            entries.push((
                id,
                Backend {
                    addr,
                    family,
                    flags,
                    mode,
                    _pad: 0,
                    service_id: *sid,
                },
            ));
            members.push(Member {
                id,
                identity: address.to_string(),
                weight: health.weight(&svc.name, address, b.weight),
                up,
            });
        }
        let all: Vec<&Member> = members.iter().collect();
        let table = maglev_table(c, &all);
        let changed = now.tables.get(sid) != Some(&table) || !now.services.contains_key(key);
        let interim = (changed && members.iter().any(|m| reused.contains(&m.id))).then(|| {
            let settled: Vec<&Member> = members.iter().filter(|m| !reused.contains(&m.id)).collect();
            maglev_table(c, &settled)
        });
        services.push(ServicePlan {
            key: *key,
            id: *sid,
            backends: entries,
            table: changed.then_some(table),
            interim,
            policy,
        });
    }
    Ok(Plan {
        node,
        locals: c.node.addresses.iter().map(|a| addr_key(*a)).collect(),
        tunnel_peers: c.node.tunnel_peers.iter().map(|a| addr_key(*a)).collect(),
        links,
        vips: c.services.iter().map(|s| s.vip).collect(),
        services,
        stale_services: now.services.keys().filter(|k| !keys.contains(k)).copied().collect(),
        freed,
        reused,
        backends,
        cursor,
        sources,
    })
}

/// Bits of the service id in front of the address in a source-policy key.
const SOURCE_SERVICE_BITS: u32 = 32;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(services: &[(&str, &[(&str, u32)])], max_backends: u32) -> Config {
        let mut text = format!(
            "[node]\nname = \"t\"\ninterfaces = [\"t0\"]\ntunnel_source_v4 = \"10.0.0.1\"\n\
             [dataplane]\nmaglev_table_size = 1009\nmax_backends = {max_backends}\n"
        );
        for (i, (name, backends)) in services.iter().enumerate() {
            text += &format!(
                "[[service]]\nname = \"{name}\"\nvip = \"192.0.2.{}\"\nport = 80\n",
                i + 1
            );
            for (addr, weight) in backends.iter() {
                text += &format!("[[service.backend]]\naddress = \"{addr}\"\nweight = {weight}\n");
            }
        }
        config::parse(&text).expect("valid test configuration")
    }

    /// The layout after writing `p` on top of `now` (what commit records).
    fn written(now: &Layout, p: &Plan) -> Layout {
        let mut next = now.clone();
        for s in &p.services {
            if let Some(t) = &s.table {
                let half = next
                    .services
                    .get(&s.key)
                    .map_or(0, |i| 1 - (i.flags & foobar_common::SERVICE_LIVE_HALF));
                next.services.insert(
                    s.key,
                    ServiceInfo {
                        id: s.id,
                        flags: half | s.policy,
                    },
                );
                next.tables.insert(s.id, t.clone());
            }
        }
        for k in &p.stale_services {
            if let Some(info) = next.services.remove(k) {
                next.tables.remove(&info.id);
            }
        }
        next.backends = p.backends.clone();
        next.cursor = p.cursor;
        next
    }

    #[test]
    fn a_source_policy_is_entries_keyed_by_service_and_flags_on_the_service() {
        let mut c = config(&[("a", &[("10.0.0.2", 100)]), ("b", &[("10.0.0.4", 100)])], 16);
        c.services[1].allow = vec![crate::config::web::Prefix::parse("198.51.100.0/24").expect("prefix")];
        c.services[1].deny = vec![crate::config::web::Prefix::parse("198.51.100.66").expect("prefix")];
        let p = plan(&c, &Health::default(), &Layout::default(), vec![]).expect("plan");
        assert_eq!(
            (p.services[0].policy, p.services[1].policy),
            (0, SERVICE_SOURCE_POLICY | SERVICE_DEFAULT_DENY)
        );
        let sid = p.services[1].id;
        let verdict = |len: u32, ip: &str| {
            let addr = map_addr(ip.parse().expect("ip")).0;
            p.sources.get(&(len, SourceKey { service: sid, addr })).copied()
        };
        assert_eq!(p.sources.len(), 2);
        assert_eq!(verdict(32 + 24, "198.51.100.0"), Some(SOURCE_ALLOW));
        assert_eq!(verdict(32 + 32, "198.51.100.66"), Some(SOURCE_DENY));
    }

    #[test]
    fn a_weight_change_rewrites_only_its_own_service_table() {
        let first = config(
            &[
                ("a", &[("10.0.0.2", 100), ("10.0.0.3", 100)]),
                ("b", &[("10.0.0.4", 100)]),
            ],
            16,
        );
        let p = plan(&first, &Health::default(), &Layout::default(), vec![]).expect("plan");
        assert!(p.services.iter().all(|s| s.table.is_some() && s.interim.is_none()));
        let now = written(&Layout::default(), &p);
        let same = plan(&first, &Health::default(), &now, vec![]).expect("plan");
        assert!(same.changes_no_table(), "{same:?}");
        let weighted = config(
            &[
                ("a", &[("10.0.0.2", 100), ("10.0.0.3", 50)]),
                ("b", &[("10.0.0.4", 100)]),
            ],
            16,
        );
        let p = plan(&weighted, &Health::default(), &now, vec![]).expect("plan");
        assert!(p.services[0].table.is_some());
        assert!(p.services[1].table.is_none(), "service b is untouched");
        assert_eq!(p.backends, now.backends, "ids stay");
        assert!(p.freed.is_empty() && p.stale_services.is_empty());
    }

    #[test]
    fn health_moves_slots_and_marks_the_backend_inactive() {
        let c = config(&[("a", &[("10.0.0.2", 100), ("10.0.0.3", 100)])], 16);
        let now = written(
            &Layout::default(),
            &plan(&c, &Health::default(), &Layout::default(), vec![]).expect("plan"),
        );
        let mut health = Health::default();
        health.set("a", "10.0.0.3".parse().expect("address"), Some("refused".into()));
        let p = plan(&c, &health, &now, vec![]).expect("plan");
        let down = now.backends[&(0, "10.0.0.3".parse().expect("address"))];
        let table = p.services[0].table.as_ref().expect("the table changes");
        assert!(!table.contains(&(down as u16)), "no slot for a down backend");
        let entry = p.services[0]
            .backends
            .iter()
            .find(|(id, _)| *id == down)
            .expect("entry");
        assert_eq!(entry.1.flags & BACKEND_ACTIVE, 0);
        assert_ne!(entry.1.flags & BACKEND_IN_USE, 0);
    }

    #[test]
    fn new_backends_take_fresh_ids_before_freed_ones() {
        let c = config(&[("a", &[("10.0.0.2", 1), ("10.0.0.3", 1)])], 4);
        let now = written(
            &Layout::default(),
            &plan(&c, &Health::default(), &Layout::default(), vec![]).expect("plan"),
        );
        // One replaced: a fresh id (2), not the freed one.
        let c = config(&[("a", &[("10.0.0.2", 1), ("10.0.0.9", 1)])], 4);
        let p = plan(&c, &Health::default(), &now, vec![]).expect("plan");
        assert_eq!(p.freed, vec![1]);
        assert!(p.reused.is_empty() && p.services[0].interim.is_none());
        assert_eq!(p.backends[&(0, "10.0.0.9".parse().expect("address"))], 2);
    }

    #[test]
    fn replacing_every_backend_at_capacity_reuses_ids_through_an_interim_table() {
        let full = config(
            &[
                ("a", &[("10.0.0.2", 1), ("10.0.0.3", 1)]),
                ("b", &[("10.0.0.4", 1), ("10.0.0.5", 1)]),
            ],
            4,
        );
        let now = written(
            &Layout::default(),
            &plan(&full, &Health::default(), &Layout::default(), vec![]).expect("plan"),
        );
        // b's backends all change while the table is full: the old sync allocated before it
        // freed and failed here.
        let swapped = config(
            &[
                ("a", &[("10.0.0.2", 1), ("10.0.0.3", 1)]),
                ("b", &[("10.0.0.6", 1), ("10.0.0.7", 1)]),
            ],
            4,
        );
        let p = plan(&swapped, &Health::default(), &now, vec![]).expect("plan");
        assert_eq!(p.reused.len(), 2);
        let b = &p.services[1];
        let interim = b.interim.as_ref().expect("an interim table");
        assert!(
            interim.iter().all(|id| *id == MAGLEV_EMPTY),
            "the interim table names no reused id"
        );
        assert!(p.services[0].table.is_none(), "service a is untouched");
        // More backends than ids: refused by the plan, so nothing is written.
        let mut over = config(
            &[
                ("a", &[("10.0.0.2", 1), ("10.0.0.3", 1), ("10.0.0.8", 1)]),
                ("b", &[("10.0.0.4", 1), ("10.0.0.5", 1)]),
            ],
            5,
        );
        over.dataplane.max_backends = 4;
        assert!(plan(&over, &Health::default(), &now, vec![]).is_err());
    }

    #[test]
    fn removed_services_are_stale_and_free_their_ids() {
        let two = config(&[("a", &[("10.0.0.2", 1)]), ("b", &[("10.0.0.4", 1)])], 8);
        let now = written(
            &Layout::default(),
            &plan(&two, &Health::default(), &Layout::default(), vec![]).expect("plan"),
        );
        let one = config(&[("a", &[("10.0.0.2", 1)])], 8);
        let p = plan(&one, &Health::default(), &now, vec![]).expect("plan");
        assert_eq!(p.stale_services.len(), 1);
        assert_eq!(p.freed.len(), 1);
        assert_eq!(p.vips.len(), 1);
        assert!(p.services[0].table.is_none());
    }
}
