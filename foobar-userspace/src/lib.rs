//! foobar's control plane: configuration, Maglev tables, the XDP data plane's maps and links,
//! health checks, VRRPv3 adverts, the web tier, database routing, and the `foobar` commands
//! built on them.
#![warn(missing_docs)]

pub mod admission;
pub mod announce;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod dataplane;
pub mod fdlimit;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod health;
pub mod iface;
pub mod listen;
pub mod maglev;
pub mod metrics;
pub mod mysql;
pub mod notify;
pub mod operate;
pub mod privileges;
pub mod push;
pub mod relay;
pub mod reload;
pub mod stats;
pub mod track;
pub mod vrrp;
pub mod web;
pub mod workers;
