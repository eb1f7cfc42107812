//! The pinned data-plane maps a configuration writes, read back as text: every entry of every
//! map the control plane owns (not the connection table or the counters, which traffic moves),
//! in key order, with every field, padding included, so two snapshots are equal exactly when
//! the maps hold the same bytes.

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use foobar::dataplane::open_pinned;
use foobar_common::{names, AddrKey, Backend, LinkMac, MaglevSlots, NodeConfig, ServiceInfo, ServiceKey};
use std::{fmt::Debug, path::Path};

/// Every entry of the control plane's maps under `pin_dir`, one line each.
pub fn snapshot(pin_dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    hash::<ServiceKey, ServiceInfo>(pin_dir, names::SERVICES, &mut out)?;
    hash::<AddrKey, u32>(pin_dir, names::VIPS, &mut out)?;
    hash::<AddrKey, u32>(pin_dir, names::LOCAL_ADDRS, &mut out)?;
    hash::<u32, LinkMac>(pin_dir, names::LINK_MACS, &mut out)?;
    array::<Backend>(pin_dir, names::BACKENDS, &mut out)?;
    array::<MaglevSlots>(pin_dir, names::MAGLEV, &mut out)?;
    array::<NodeConfig>(pin_dir, names::NODE, &mut out)?;
    array::<u64>(pin_dir, names::VIP_FILTER, &mut out)?;
    Ok(out)
}

/// The service-table entries: (key, value) pairs in key order.
pub fn services(pin_dir: &Path) -> Result<Vec<(ServiceKey, ServiceInfo)>> {
    let map: BpfHashMap<MapData, ServiceKey, ServiceInfo> =
        BpfHashMap::try_from(Map::HashMap(open_pinned(pin_dir, names::SERVICES)?))?;
    let mut entries: Vec<(ServiceKey, ServiceInfo)> = map.iter().collect::<Result<_, _>>()?;
    entries.sort_by_key(|(k, _)| format!("{k:?}"));
    Ok(entries)
}

fn hash<K: aya::Pod + Debug, V: aya::Pod + Debug>(pin_dir: &Path, name: &str, out: &mut Vec<String>) -> Result<()> {
    let map: BpfHashMap<MapData, K, V> =
        BpfHashMap::try_from(Map::HashMap(open_pinned(pin_dir, name)?)).with_context(|| format!("opening {name}"))?;
    let mut lines: Vec<String> = map
        .iter()
        .map(|entry| entry.map(|(k, v)| format!("{name} {k:?} = {v:?}")))
        .collect::<Result<_, _>>()?;
    lines.sort();
    out.extend(lines);
    Ok(())
}

fn array<V: aya::Pod + Debug>(pin_dir: &Path, name: &str, out: &mut Vec<String>) -> Result<()> {
    let map: Array<MapData, V> =
        Array::try_from(Map::Array(open_pinned(pin_dir, name)?)).with_context(|| format!("opening {name}"))?;
    for i in 0..map.len() {
        out.push(format!("{name}[{i}] = {:?}", map.get(&i, 0)?));
    }
    Ok(())
}
