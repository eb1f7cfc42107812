//! Announcement's configuration (`[announce]`): VIP ownership by route announcement instead of
//! VRRP. Every edge forwards; each VIP this node is fit to serve is a route in a kernel table
//! that the host's BGP daemon (BIRD 2 or FRR) exports to the routers, which spread flows over
//! the edges.

use super::{file, ms};
use std::{path::PathBuf, time::Duration};

/// The `[announce]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    /// Kernel routing table foobar writes one blackhole route per announced VIP to (protocol
    /// [`crate::announce::routes::PROTOCOL`]); never 0, 253, 254 or 255.
    pub table: u32,
    /// On `foobar drain` and on stop: how long the node keeps serving after withdrawing its
    /// announcements.
    pub drain: Duration,
    /// BIRD's control socket, read for the BGP sessions' state.
    pub bird_socket: Option<PathBuf>,
    /// FRR's vty socket directory, read for the BGP sessions' state instead.
    pub frr_vty_dir: Option<PathBuf>,
}

/// The table foobar writes to unless configured.
pub const DEFAULT_TABLE: u32 = 242;

/// The section's domain values.
pub(super) fn lower(a: &file::announce::Announce) -> Announce {
    Announce {
        table: *a.table.get_ref(),
        drain: ms(a.drain_ms),
        bird_socket: a.bird_socket.clone(),
        frr_vty_dir: a.frr_vty_dir.clone(),
    }
}
