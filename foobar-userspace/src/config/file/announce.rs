//! The `[announce]` section as the file has it.

use super::Range;
use crate::config::announce::DEFAULT_TABLE;
use serde::Deserialize;
use std::path::PathBuf;
use toml::Spanned;

/// The `[announce]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    /// Kernel routing table foobar writes one blackhole route per announced VIP to (protocol
    /// `crate::announce::routes::PROTOCOL`); the BGP daemon learns the table and exports it.
    /// No rule routes packets through it. 1..=4294967295 except 253, 254 and 255 (the
    /// kernel's default, main and local tables); FRR 8's `ip import-table` takes 1..=252.
    #[serde(default = "default_table")]
    pub table: Spanned<u32>,
    /// On `foobar drain` and on stop: how long the node keeps serving after withdrawing its
    /// announcements, while the routers move flows to the other edges, ms.
    #[serde(default = "default_drain_ms")]
    pub drain_ms: u64,
    /// BIRD's control socket, read for the BGP sessions' state (status, page and metrics).
    pub bird_socket: Option<PathBuf>,
    /// FRR's vty socket directory: the BGP sessions' state is read with `vtysh --vty_socket
    /// DIR -c 'show bgp summary json'` instead. Neither set: the sessions are not shown.
    pub frr_vty_dir: Option<PathBuf>,
}

fn default_table() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_TABLE)
}

fn default_drain_ms() -> u64 {
    5000
}

/// Checks the section; `vrrp` is whether the file also has `[[vrrp]]` instances.
pub(super) fn validate(a: &Spanned<Announce>, vrrp: bool, report: &mut dyn FnMut(&Range<usize>, String)) {
    let table = *a.get_ref().table.get_ref();
    if matches!(table, 0 | 253..=255) {
        report(
            &a.get_ref().table.span(),
            format!("table {table} is the kernel's own (0, 253 default, 254 main, 255 local): name a table of its own, such as {DEFAULT_TABLE}"),
        );
    }
    if vrrp {
        report(
            &a.span(),
            "[announce] and [[vrrp]] both claim the VIPs: a node owns them one way, announced (every edge active) or elected".into(),
        );
    }
    if a.get_ref().bird_socket.is_some() && a.get_ref().frr_vty_dir.is_some() {
        report(
            &a.span(),
            "bird_socket and frr_vty_dir both name the BGP daemon: the host runs one of them".into(),
        );
    }
    if a.get_ref().drain_ms > 600_000 {
        report(&a.span(), "drain_ms is at most 600000 (ten minutes)".into());
    }
}
