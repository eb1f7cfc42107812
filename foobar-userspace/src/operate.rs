//! Runtime operations without editing files, in the spirit of HAProxy's runtime API: drain
//! and enable an L4 backend or a web upstream server, clear a backend's failed health, step a
//! VRRP instance down and let it resume, drain the whole node. `foobar backend|upstream|vrrp ...` send them over the
//! control socket; the daemon's main loop carries them out. A reload keeps drains and
//! step-downs (a drain of a backend the new configuration no longer has goes with it); a
//! restart forgets them.

use crate::{
    config::Config,
    health::{Checks, Health},
    vrrp::instance::Handle,
    web::WebTier,
};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, SocketAddr},
};
use tokio::sync::{mpsc, oneshot, watch};

/// One operation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum Operation {
    /// The backend gets no new flows (weight 0 whatever the configuration says); established
    /// flows stay with it.
    Drain {
        /// The `[[service]]` name.
        service: String,
        /// The backend's address.
        backend: IpAddr,
    },
    /// Undoes a drain: the configured weight applies again.
    Enable {
        /// The `[[service]]` name.
        service: String,
        /// The backend's address.
        backend: IpAddr,
    },
    /// Forgets the backend's failed checks: it is up, and its checks start over (it goes down
    /// again after `fall` failures).
    ClearHealth {
        /// The `[[service]]` name.
        service: String,
        /// The backend's address.
        backend: IpAddr,
    },
    /// The upstream server gets no new proxied requests; those in flight finish.
    DrainUpstream {
        /// The `[[web.upstream]]` name.
        upstream: String,
        /// The server's address and port.
        server: SocketAddr,
    },
    /// Undoes an upstream drain.
    EnableUpstream {
        /// The `[[web.upstream]]` name.
        upstream: String,
        /// The server's address and port.
        server: SocketAddr,
    },
    /// The instance gives up mastership (a priority-0 advert hands the VIPs to the peer at
    /// once) and stays out of the election until resumed.
    StepDown {
        /// The `[[vrrp]]` name.
        instance: String,
    },
    /// Undoes a step-down: the instance takes part in the election again.
    Resume {
        /// The `[[vrrp]]` name.
        instance: String,
    },
    /// The node gives up its VIPs and keeps forwarding what still reaches it: announcements
    /// are withdrawn (the routers move flows to the other edges), VRRP instances step down.
    DrainNode,
    /// Undoes a node drain.
    UndrainNode,
    /// A planned switchover of a database cluster to another primary (carried out by the
    /// cluster's failover coordinator, not by [`apply`]).
    Switchover {
        /// The `[[database]]` name.
        database: String,
        /// The replica to promote; None: the one that received the most.
        to: Option<SocketAddr>,
    },
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Drain { service, backend } => write!(f, "drain {backend} of service {service}"),
            Operation::Enable { service, backend } => write!(f, "enable {backend} of service {service}"),
            Operation::ClearHealth { service, backend } => {
                write!(f, "clear the health of {backend} of service {service}")
            }
            Operation::DrainUpstream { upstream, server } => write!(f, "drain {server} of upstream {upstream}"),
            Operation::EnableUpstream { upstream, server } => write!(f, "enable {server} of upstream {upstream}"),
            Operation::StepDown { instance } => write!(f, "step vrrp instance {instance} down"),
            Operation::Resume { instance } => write!(f, "resume vrrp instance {instance}"),
            Operation::DrainNode => write!(f, "drain the node"),
            Operation::UndrainNode => write!(f, "undrain the node"),
            Operation::Switchover { database, to: Some(to) } => write!(f, "switch database {database} over to {to}"),
            Operation::Switchover { database, to: None } => write!(f, "switch database {database} over"),
        }
    }
}

/// What the daemon answered: done (what happened), or refused (why).
pub type Answer = Result<String, String>;

/// Operations to the daemon's main loop, each with where its answer goes.
pub type Operations = mpsc::Sender<(Operation, oneshot::Sender<Answer>)>;

/// What runtime operations changed that the configuration does not say: instances stepped
/// down, and whether the node drains. A reload keeps it; a restart forgets it.
#[derive(Debug, Default)]
pub struct Overrides {
    /// VRRP instances an operator stepped down, by name.
    pub stepped_down: BTreeSet<String>,
    /// The node is draining (`foobar drain`).
    pub draining: bool,
}

/// Carries out `op` on the running daemon's state (the main loop calls it): a backend drain is
/// part of the health view, a step-down or a node drain is kept in `overrides` and becomes a
/// tracked fault; what happened, or why not.
pub fn apply(
    op: &Operation,
    c: &Config,
    health: &watch::Sender<Health>,
    checks: &mut Checks,
    web: Option<&WebTier>,
    instances: &[Handle],
    overrides: &mut Overrides,
) -> Answer {
    let stepped_down = &mut overrides.stepped_down;
    let backend_of = |service: &str, backend: IpAddr| -> Result<(), String> {
        let svc = c.services.iter().find(|s| s.name == service).ok_or_else(|| {
            let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
            format!("no service {service:?} (services: {})", names.join(", "))
        })?;
        if svc.backends.iter().any(|b| b.address == backend) {
            return Ok(());
        }
        let addresses: Vec<String> = svc.backends.iter().map(|b| b.address.to_string()).collect();
        Err(format!(
            "service {service} has no backend {backend} (backends: {})",
            addresses.join(", ")
        ))
    };
    let instance = |name: &str| -> Result<(), String> {
        if instances.iter().any(|h| h.spec.name == name) {
            return Ok(());
        }
        let names: Vec<&str> = instances.iter().map(|h| h.spec.name.as_str()).collect();
        Err(format!("no vrrp instance {name:?} (instances: {})", names.join(", ")))
    };
    match op {
        Operation::Drain { service, backend } => {
            backend_of(service, *backend)?;
            Ok(if health.send_if_modified(|h| h.set_drained(service, *backend, true)) {
                format!("{backend} of service {service} drained: no new flows, established ones stay")
            } else {
                format!("{backend} of service {service} was drained already")
            })
        }
        Operation::Enable { service, backend } => {
            backend_of(service, *backend)?;
            Ok(
                if health.send_if_modified(|h| h.set_drained(service, *backend, false)) {
                    format!("{backend} of service {service} enabled: its configured weight applies")
                } else {
                    format!("{backend} of service {service} was not drained")
                },
            )
        }
        Operation::ClearHealth { service, backend } => {
            backend_of(service, *backend)?;
            let was_down = health.send_if_modified(|h| h.set(service, *backend, None));
            let restarted = checks.restart(service, *backend, health);
            Ok(format!(
                "{backend} of service {service}: {}; {restarted} check(s) started over",
                if was_down { "marked up" } else { "was up" }
            ))
        }
        Operation::DrainUpstream { upstream, server } | Operation::EnableUpstream { upstream, server } => {
            let drain = matches!(op, Operation::DrainUpstream { .. });
            let tier = web.ok_or("this node runs no web tier")?;
            let changed = tier.set_drained(upstream, *server, drain)?;
            Ok(match (drain, changed) {
                (true, true) => {
                    format!("{server} of upstream {upstream} drained: no new requests, those in flight finish")
                }
                (true, false) => format!("{server} of upstream {upstream} was drained already"),
                (false, true) => format!("{server} of upstream {upstream} enabled"),
                (false, false) => format!("{server} of upstream {upstream} was not drained"),
            })
        }
        Operation::StepDown { instance: name } => {
            instance(name)?;
            Ok(if stepped_down.insert(name.clone()) {
                format!("vrrp instance {name} stepped down: it hands its VIPs over and stays out until resumed")
            } else {
                format!("vrrp instance {name} was stepped down already")
            })
        }
        Operation::Resume { instance: name } => {
            instance(name)?;
            Ok(if stepped_down.remove(name) {
                format!("vrrp instance {name} resumed: it takes part in the election again")
            } else {
                format!("vrrp instance {name} was not stepped down")
            })
        }
        Operation::DrainNode | Operation::UndrainNode => {
            let drain = matches!(op, Operation::DrainNode);
            let changed = overrides.draining != drain;
            overrides.draining = drain;
            let how = if c.announce.is_some() {
                "its announcements are withdrawn and it forwards what the routers still send it"
            } else {
                "every vrrp instance steps down and hands its VIPs over"
            };
            Ok(match (drain, changed) {
                (true, true) => format!("the node is draining: {how} (foobar undrain ends it)"),
                (true, false) => "the node was draining already".into(),
                (false, true) => "the node is no longer draining: it owns its VIPs again when fit".into(),
                (false, false) => "the node was not draining".into(),
            })
        }
        Operation::Switchover { .. } => Err("a switchover is the database router's to carry out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_travel_as_tagged_json() {
        let op = Operation::Drain {
            service: "web".into(),
            backend: "10.0.0.1".parse().unwrap(),
        };
        let line = serde_json::to_string(&op).unwrap();
        assert_eq!(line, r#"{"op":"drain","service":"web","backend":"10.0.0.1"}"#);
        assert_eq!(serde_json::from_str::<Operation>(&line).unwrap(), op);
        let step = r#"{"op":"step-down","instance":"vip4"}"#;
        assert_eq!(
            serde_json::from_str::<Operation>(step).unwrap(),
            Operation::StepDown {
                instance: "vip4".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&Operation::DrainNode).unwrap(),
            r#"{"op":"drain-node"}"#
        );
    }
}
