//! Source policy per service: a new flow's source is looked up in the service's allow and deny
//! prefixes (one LPM trie for every service, keyed by service id then address), and the
//! longest prefix that covers it decides; a source no prefix covers is let through unless the
//! service has an allow list. Services without a policy skip the lookup.

use crate::maps::SOURCES;
use aya_ebpf::maps::lpm_trie::Key;
use foobar_common::{
    FlowKey, ServiceInfo, SourceKey, FAMILY_V4, SERVICE_DEFAULT_DENY, SERVICE_SOURCE_POLICY, SOURCE_ALLOW,
};

/// Bits of the service id in front of the address in a [`SOURCES`] key.
const SERVICE_BITS: u32 = 32;

/// Whether service `svc` takes a new flow from `flow.src`.
#[inline(always)]
pub fn admits(flow: &FlowKey, svc: &ServiceInfo) -> bool {
    if svc.flags & SERVICE_SOURCE_POLICY == 0 {
        return true;
    }
    let address_bits = if flow.family == FAMILY_V4 { 32 } else { 128 };
    let key = Key::new(
        SERVICE_BITS + address_bits,
        SourceKey {
            service: svc.id,
            addr: flow.src,
        },
    );
    match SOURCES.get(&key) {
        Some(verdict) => *verdict == SOURCE_ALLOW,
        None => svc.flags & SERVICE_DEFAULT_DENY == 0,
    }
}
