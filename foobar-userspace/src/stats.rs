//! `foobar stats`: the data plane's counters, read from the pinned maps whether or not
//! `foobar run` is running.

use crate::dataplane::{ip_from, open_pinned};
use anyhow::Result;
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use foobar_common::{
    names, Backend, Counter, ServiceInfo, ServiceKey, TrafficStats, BACKEND_ACTIVE, BACKEND_IN_USE, PROTO_TCP,
};
use serde::Serialize;
use std::{net::SocketAddr, path::Path};

/// Everything `foobar stats` reports.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Global counters by name, summed over CPUs.
    pub counters: Vec<(String, u64)>,
    /// Per-service traffic.
    pub services: Vec<ServiceStats>,
    /// Per-backend traffic.
    pub backends: Vec<BackendStats>,
}

/// One service's traffic.
#[derive(Debug, Serialize)]
pub struct ServiceStats {
    /// Its name, when a configuration was given to name it ([`name_services`]).
    pub name: Option<String>,
    /// VIP and port.
    pub vip: SocketAddr,
    /// "tcp" or "udp".
    pub protocol: &'static str,
    /// Service id.
    pub id: u32,
    /// Counts summed over CPUs.
    pub traffic: Traffic,
}

/// One backend's traffic.
#[derive(Debug, Serialize)]
pub struct BackendStats {
    /// Backend id.
    pub id: u32,
    /// Id of its service.
    pub service_id: u32,
    /// Address.
    pub address: std::net::IpAddr,
    /// Whether it takes traffic.
    pub active: bool,
    /// Counts summed over CPUs.
    pub traffic: Traffic,
}

/// Packets, bytes, new flows.
#[derive(Debug, Default, Serialize)]
pub struct Traffic {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
    /// Flows assigned by Maglev.
    pub new_flows: u64,
}

fn sum(values: &[TrafficStats]) -> Traffic {
    values.iter().fold(Traffic::default(), |t, v| Traffic {
        packets: t.packets + v.packets,
        bytes: t.bytes + v.bytes,
        new_flows: t.new_flows + v.new_flows,
    })
}

/// The pinned maps the counters are read from, opened once (a daemon opens them before it
/// switches to its unprivileged user).
pub struct CounterMaps {
    counters: PerCpuArray<MapData, u64>,
    services: BpfHashMap<MapData, ServiceKey, ServiceInfo>,
    service_stats: PerCpuArray<MapData, TrafficStats>,
    backends: Array<MapData, Backend>,
    backend_stats: PerCpuArray<MapData, TrafficStats>,
}

impl CounterMaps {
    /// Opens the maps pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            counters: PerCpuArray::try_from(Map::PerCpuArray(open_pinned(pin_dir, names::COUNTERS)?))?,
            services: BpfHashMap::try_from(Map::HashMap(open_pinned(pin_dir, names::SERVICES)?))?,
            service_stats: PerCpuArray::try_from(Map::PerCpuArray(open_pinned(pin_dir, names::SERVICE_STATS)?))?,
            backends: Array::try_from(Map::Array(open_pinned(pin_dir, names::BACKENDS)?))?,
            backend_stats: PerCpuArray::try_from(Map::PerCpuArray(open_pinned(pin_dir, names::BACKEND_STATS)?))?,
        })
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut totals = Vec::new();
        for c in Counter::ALL {
            let per_cpu = self.counters.get(&(*c as u32), 0)?;
            totals.push((c.name().to_string(), per_cpu.iter().sum()));
        }
        let mut services = Vec::new();
        for entry in self.services.iter() {
            let (key, info) = entry?;
            services.push(ServiceStats {
                name: None,
                vip: SocketAddr::new(ip_from(&key.addr, key.family), u16::from_be(key.port_be)),
                protocol: if key.proto == PROTO_TCP { "tcp" } else { "udp" },
                id: info.id,
                traffic: sum(&self.service_stats.get(&info.id, 0)?),
            });
        }
        services.sort_by_key(|s| s.id);
        let mut backends = Vec::new();
        for id in 0..self.backends.len() {
            let b = self.backends.get(&id, 0)?;
            if b.flags & BACKEND_IN_USE == 0 {
                continue;
            }
            backends.push(BackendStats {
                id,
                service_id: b.service_id,
                address: ip_from(&b.addr, b.family),
                active: b.flags & BACKEND_ACTIVE != 0,
                traffic: sum(&self.backend_stats.get(&id, 0)?),
            });
        }
        Ok(Snapshot {
            counters: totals,
            services,
            backends,
        })
    }
}

/// Reads every counter from the pinned maps under `pin_dir`.
pub fn snapshot(pin_dir: &Path) -> Result<Snapshot> {
    CounterMaps::open(pin_dir)?.snapshot()
}

/// Names the snapshot's services after the configuration's `[[service]]` sections (by VIP, port
/// and protocol).
pub fn name_services(s: &mut Snapshot, c: &crate::config::Config) {
    for svc in &mut s.services {
        svc.name = c
            .services
            .iter()
            .find(|cs| SocketAddr::new(cs.vip, cs.port) == svc.vip && cs.protocol.name() == svc.protocol)
            .map(|cs| cs.name.clone());
    }
}

/// Prints a snapshot as aligned text.
pub fn print(s: &Snapshot) {
    println!("counters");
    for (name, value) in &s.counters {
        println!("  {name:<26} {value:>14}");
    }
    println!("services");
    // A service as people know it: its name, or its VIP, port and protocol.
    let label = |id: u32| {
        s.services.iter().find(|svc| svc.id == id).map_or_else(
            || format!("service {id}"),
            |svc| {
                svc.name
                    .clone()
                    .unwrap_or_else(|| format!("{} {}", svc.vip, svc.protocol))
            },
        )
    };
    for svc in &s.services {
        let t = &svc.traffic;
        println!(
            "  {:<28} {:<28} packets {:>12} bytes {:>14} new_flows {:>10}",
            svc.name.as_deref().unwrap_or("-"),
            format!("{} {}", svc.vip, svc.protocol),
            t.packets,
            t.bytes,
            t.new_flows
        );
    }
    println!("backends");
    for b in &s.backends {
        let t = &b.traffic;
        let state = if b.active { "up" } else { "down" };
        println!(
            "  {:<28} {:<28} {:<4} packets {:>12} bytes {:>14} new_flows {:>10}",
            b.address,
            label(b.service_id),
            state,
            t.packets,
            t.bytes,
            t.new_flows
        );
    }
}
