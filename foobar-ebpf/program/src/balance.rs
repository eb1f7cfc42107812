//! Backend choice: the connection table first, Maglev for flows it does not know.

use crate::{
    access::{coarse_now_ns, lookup_lru, per_cpu},
    maps::{count, BACKENDS, CONNTRACK, CONNTRACK6, INSERT_BUDGET, MAGLEV},
};
use foobar_common::{
    maglev_elements, Backend, Counter, FlowKey, FlowKey4, FlowValue, NodeConfig, ServiceInfo, BACKEND_ACTIVE,
    FAMILY_V4, MAGLEV_EMPTY, MAGLEV_LANES, SERVICE_LIVE_HALF,
};

/// Length of the new-flow insert window.
const INSERT_WINDOW_NS: u64 = 1_000_000_000;

/// The backend a packet goes to.
pub struct Choice {
    /// Backend id (index into `BACKENDS` and `BACKEND_STATS`).
    pub id: u32,
    /// The backend itself (its map slot).
    pub backend: &'static Backend,
    /// True when Maglev picked it (a connection-table miss).
    pub new_flow: bool,
}

/// Hash of a flow's 5-tuple (murmur3 mixing over its 32-bit words). Every node runs the same
/// program, so a flow hashes to the same Maglev slot on either edge.
#[inline(always)]
pub fn flow_hash(flow: &FlowKey) -> u32 {
    let mut h: u32 = 0x5f0f_ba11;
    let mut i = 0;
    while i < 4 {
        h = mix(h, flow.src[i]);
        h = mix(h, flow.dst[i]);
        i += 1;
    }
    h = mix(h, (flow.sport_be as u32) << 16 | flow.dport_be as u32);
    h = mix(h, flow.proto as u32);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn mix(h: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// Returns the active backend with this id.
#[inline(always)]
fn active_backend(id: u32) -> Option<&'static Backend> {
    let backend = BACKENDS.get(id)?;
    if backend.flags & BACKEND_ACTIVE == 0 {
        return None;
    }
    Some(backend)
}

/// The backend the connection table has for `flow`, if it is still active: established flows
/// need neither the service table nor Maglev.
#[inline(always)]
pub fn established(flow: &FlowKey) -> Option<Choice> {
    let entry = if flow.family == FAMILY_V4 {
        lookup_lru(&CONNTRACK, FlowKey4::of(flow))
    } else {
        lookup_lru(&CONNTRACK6, flow)
    };
    let id = entry?.backend;
    let backend = active_backend(id)?;
    count(Counter::ConntrackHit);
    Some(Choice {
        id,
        backend,
        new_flow: false,
    })
}

/// Picks a backend for a flow the connection table does not know from service `svc`'s live
/// Maglev table, and records the choice within the per-CPU insert budget. `None` means the
/// service has no usable backend.
#[inline(always)]
pub fn pick(flow: &FlowKey, svc: &ServiceInfo, node: &NodeConfig) -> Option<Choice> {
    count(Counter::ConntrackMiss);
    let size = node.maglev_size;
    let slot = flow_hash(flow).checked_rem(size)?;
    let table = svc.id.wrapping_mul(2).wrapping_add(svc.flags & SERVICE_LIVE_HALF);
    let slots = MAGLEV.get(
        table
            .wrapping_mul(maglev_elements(size))
            .wrapping_add(slot / MAGLEV_LANES),
    )?;
    let id = slots[(slot % MAGLEV_LANES) as usize];
    if id == MAGLEV_EMPTY {
        return None;
    }
    let id = id as u32;
    let backend = active_backend(id)?;
    if may_insert(node) {
        // An LRU insert only fails under memory pressure; the packet is forwarded either way.
        let value = FlowValue { backend: id };
        let _ = if flow.family == FAMILY_V4 {
            CONNTRACK.insert(FlowKey4::of(flow), value, 0)
        } else {
            CONNTRACK6.insert(flow, value, 0)
        };
    } else {
        count(Counter::ConntrackInsertCapped);
    }
    Some(Choice {
        id,
        backend,
        new_flow: true,
    })
}

/// Takes one insert from this CPU's budget for the current second.
#[inline(always)]
fn may_insert(node: &NodeConfig) -> bool {
    let cap = node.new_flow_cap as u64;
    if cap == 0 {
        return true;
    }
    let Some(budget) = per_cpu(&INSERT_BUDGET, 0) else {
        return true;
    };
    let now = coarse_now_ns();
    if now.wrapping_sub(budget.window_start_ns) >= INSERT_WINDOW_NS {
        budget.window_start_ns = now;
        budget.inserted = 0;
    }
    if budget.inserted >= cap {
        return false;
    }
    budget.inserted += 1;
    true
}
