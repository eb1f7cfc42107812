//! Runtime operations without editing files, in the spirit of HAProxy's runtime API: drain
//! and enable an L4 backend, clear a backend's failed health, step a VRRP instance down and let
//! it resume. `foobar backend ...` and `foobar vrrp ...` send them over the control socket; the
//! daemon's main loop carries them out. A reload keeps drains and step-downs (a drain of a
//! backend the new configuration no longer has goes with it); a restart forgets them.

use serde::{Deserialize, Serialize};
use std::{fmt, net::IpAddr};
use tokio::sync::{mpsc, oneshot};

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
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Drain { service, backend } => write!(f, "drain {backend} of service {service}"),
            Operation::Enable { service, backend } => write!(f, "enable {backend} of service {service}"),
            Operation::ClearHealth { service, backend } => {
                write!(f, "clear the health of {backend} of service {service}")
            }
            Operation::StepDown { instance } => write!(f, "step vrrp instance {instance} down"),
            Operation::Resume { instance } => write!(f, "resume vrrp instance {instance}"),
        }
    }
}

/// What the daemon answered: done (what happened), or refused (why).
pub type Answer = Result<String, String>;

/// Operations to the daemon's main loop, each with where its answer goes.
pub type Operations = mpsc::Sender<(Operation, oneshot::Sender<Answer>)>;

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
    }
}
