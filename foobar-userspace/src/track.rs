//! Tracked conditions that take a node out of VIP ownership, shared by both ways of owning
//! the VIPs: a VRRP instance in fault steps down, an announced VIP is withdrawn. The main loop
//! reads them on every tracking tick and after every health change.

use crate::{config::Config, dataplane::Dataplane, health::Health};
use nix::net::if_::InterfaceFlags;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A tracked condition that fails: while any does, a VRRP instance is in fault (silent, never
/// master) and an announced VIP is withdrawn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// The instance's interface does not exist.
    InterfaceMissing {
        /// Its name.
        interface: String,
    },
    /// The instance's interface is down or has no carrier.
    InterfaceDown {
        /// Its name.
        interface: String,
    },
    /// The XDP program is not attached to a data interface (its pinned link reports none).
    NotAttached {
        /// The interface.
        interface: String,
    },
    /// Whether the XDP program is attached could not be read.
    AttachmentUnknown {
        /// The interface.
        interface: String,
        /// Why not.
        error: String,
    },
    /// Every backend of a tracked service is down.
    ServiceDown {
        /// The service.
        service: String,
    },
    /// An operator stepped the instance down (`foobar vrrp step-down`).
    SteppedDown,
    /// An operator is draining the node (`foobar drain`), or it is stopping.
    Draining,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::InterfaceMissing { interface } => write!(f, "interface {interface} is missing"),
            Fault::InterfaceDown { interface } => write!(f, "interface {interface} is down"),
            Fault::NotAttached { interface } => write!(f, "XDP program not attached to {interface}"),
            Fault::AttachmentUnknown { interface, error } => {
                write!(f, "XDP attachment on {interface} unknown: {error}")
            }
            Fault::ServiceDown { service } => write!(f, "every backend of service {service} is down"),
            Fault::SteppedDown => write!(f, "stepped down by an operator (foobar vrrp resume)"),
            Fault::Draining => write!(f, "the node is draining (foobar undrain)"),
        }
    }
}

/// The interfaces' flags now, by name.
pub fn interface_flags() -> nix::Result<HashMap<String, InterfaceFlags>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .map(|a| (a.interface_name, a.flags))
        .collect())
}

/// What is wrong with `interface` (missing, or not both up and running), if anything.
pub fn interface_fault(flags: &HashMap<String, InterfaceFlags>, interface: &str) -> Option<Fault> {
    let interface = interface.to_owned();
    match flags.get(&interface) {
        None => Some(Fault::InterfaceMissing { interface }),
        Some(f) if !f.contains(InterfaceFlags::IFF_UP | InterfaceFlags::IFF_RUNNING) => {
            Some(Fault::InterfaceDown { interface })
        }
        Some(_) => None,
    }
}

/// The data interfaces the XDP program is not attached to (or whose attachment is unknown).
pub fn attachment_faults(c: &Config, dp: &mut Dataplane) -> Vec<Fault> {
    let mut faults = Vec::new();
    for interface in &c.node.interfaces {
        let interface = interface.clone();
        match dp.attached(&interface) {
            Ok(true) => {}
            Ok(false) => faults.push(Fault::NotAttached { interface }),
            Err(e) => faults.push(Fault::AttachmentUnknown {
                interface,
                error: format!("{e:#}"),
            }),
        }
    }
    faults
}

/// Whether `service` has a backend whose checks pass (drained or weight-0 ones count: their
/// established flows still need this node).
pub fn service_up(c: &Config, health: &Health, service: &str) -> bool {
    c.services
        .iter()
        .filter(|s| s.name == service)
        .flat_map(|s| s.backends.iter())
        .any(|b| health.is_up(service, b.address))
}
