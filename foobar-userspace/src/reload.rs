//! What a configuration change may do while foobar runs, and what became of one. The daemon
//! applies a new file in two steps ([`crate::daemon`]): every subsystem first *prepares* all
//! that can fail without touching running state, and only when all have prepared are they
//! *committed*. This module declares, in one place, the keys whose change takes a restart,
//! describes what a reload changed, and carries the outcome to `foobar reload` and the log.

use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A configuration key that a running foobar cannot change: a reload that changes it is
/// refused as a whole, naming it.
pub struct RestartOnly {
    /// The key as the configuration reference names it.
    pub key: &'static str,
    /// Whether it differs between the running and the new configuration.
    pub changed: fn(&Config, &Config) -> bool,
    /// Why it takes a restart.
    pub why: &'static str,
}

/// Every restart-only key (docs/configuration.md lists them from this table; a test keeps the
/// two in step).
pub const RESTART_ONLY: &[RestartOnly] = &[
    RestartOnly {
        key: "[node] name",
        changed: |a, b| a.node.name != b.node.name,
        why: "status, metrics and the push exporter were started under it",
    },
    RestartOnly {
        key: "[node] interfaces",
        changed: |a, b| a.node.interfaces != b.node.interfaces,
        why: "the program is attached to them at start",
    },
    RestartOnly {
        key: "[node] xdp_mode",
        changed: |a, b| a.node.xdp_mode != b.node.xdp_mode,
        why: "the attach mode is chosen at start",
    },
    RestartOnly {
        key: "[node] pin_dir",
        changed: |a, b| a.node.pin_dir != b.node.pin_dir,
        why: "the maps and links are pinned there at start",
    },
    RestartOnly {
        key: "[node] control_socket",
        changed: |a, b| a.node.control_socket != b.node.control_socket,
        why: "the socket is bound at start",
    },
    RestartOnly {
        key: "[node] user",
        changed: |a, b| a.node.user != b.node.user,
        why: "the process switches to it at start and cannot switch back",
    },
    RestartOnly {
        key: "[dataplane] maglev_table_size",
        changed: |a, b| a.dataplane.maglev_table_size != b.dataplane.maglev_table_size,
        why: "it sizes a map",
    },
    RestartOnly {
        key: "[dataplane] conntrack_entries",
        changed: |a, b| a.dataplane.conntrack_entries != b.dataplane.conntrack_entries,
        why: "it sizes a map",
    },
    RestartOnly {
        key: "[dataplane] conntrack_entries_v6",
        changed: |a, b| a.dataplane.conntrack_entries_v6 != b.dataplane.conntrack_entries_v6,
        why: "it sizes a map",
    },
    RestartOnly {
        key: "[dataplane] max_services",
        changed: |a, b| a.dataplane.max_services != b.dataplane.max_services,
        why: "it sizes a map",
    },
    RestartOnly {
        key: "[dataplane] max_backends",
        changed: |a, b| a.dataplane.max_backends != b.dataplane.max_backends,
        why: "it sizes a map",
    },
    RestartOnly {
        key: "[dataplane] max_source_prefixes",
        changed: |a, b| a.dataplane.max_source_prefixes != b.dataplane.max_source_prefixes,
        why: "it sizes a map",
    },
    RestartOnly {
        key: "[[vrrp]]",
        changed: |a, b| a.vrrp != b.vrrp,
        why: "instances are elected from start; a restart hands over without a forwarding gap",
    },
    RestartOnly {
        key: "[announce] (added or removed)",
        changed: |a, b| a.announce.is_some() != b.announce.is_some(),
        why: "the way the node owns the VIPs (announced or elected) is chosen at start",
    },
    RestartOnly {
        key: "[announce] table",
        changed: |a, b| announce_table(a).zip(announce_table(b)).is_some_and(|(x, y)| x != y),
        why: "the BGP daemon is configured to learn that table",
    },
    RestartOnly {
        key: "[web] (added or removed)",
        changed: |a, b| a.web.is_some() != b.web.is_some(),
        why: "the web tier's threads and listeners start with the daemon",
    },
    RestartOnly {
        key: "[[web.listener]]",
        changed: |a, b| web_part(a, b, |w| format!("{:?}", w.listeners)),
        why: "listening sockets are bound at start",
    },
    RestartOnly {
        key: "[web] workers",
        changed: |a, b| web_part(a, b, |w| w.workers.to_string()),
        why: "worker threads start with the daemon",
    },
    RestartOnly {
        key: "[web] ticket_keys",
        changed: |a, b| web_part(a, b, |w| format!("{:?}", w.ticket_keys)),
        why: "the session ticketer is made at start (a reload re-reads the keys in the file)",
    },
    RestartOnly {
        key: "[web.limits]",
        changed: |a, b| web_part(a, b, |w| format!("{:?}", w.limits)),
        why: "open connections were admitted under them",
    },
    RestartOnly {
        key: "[[database]]",
        changed: |a, b| a.databases != b.databases,
        why: "listeners and monitors start with the daemon (a reload re-reads the credentials files)",
    },
    RestartOnly {
        key: "[monitoring]",
        changed: |a, b| a.monitoring != b.monitoring,
        why: "the management listener and the push exporter start with the daemon",
    },
];

/// The `[announce]` table, when announcing.
fn announce_table(c: &Config) -> Option<u32> {
    c.announce.as_ref().map(|a| a.table)
}

/// Whether one part of the `[web]` sections differs (both present).
fn web_part(a: &Config, b: &Config, part: fn(&crate::config::web::Web) -> String) -> bool {
    match (&a.web, &b.web) {
        (Some(x), Some(y)) => part(x) != part(y),
        _ => false,
    }
}

/// The restart-only keys that differ between `running` and `new`.
pub fn restart_keys(running: &Config, new: &Config) -> Vec<&'static str> {
    RESTART_ONLY
        .iter()
        .filter(|r| (r.changed)(running, new))
        .map(|r| r.key)
        .collect()
}

/// What a reload changes, one line per service or section, for the log and `foobar reload`.
pub fn changes(running: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for svc in &new.services {
        let name = &svc.name;
        match running.services.iter().find(|s| s.name == *name) {
            None => out.push(format!("service {name} added")),
            Some(old) if old != svc => {
                let addresses = |s: &crate::config::Service| s.backends.iter().map(|b| b.address).collect::<Vec<_>>();
                let (was, now) = (addresses(old), addresses(svc));
                let added = now.iter().filter(|a| !was.contains(a)).count();
                let removed = was.iter().filter(|a| !now.contains(a)).count();
                let reweighted = svc
                    .backends
                    .iter()
                    .filter(|b| {
                        old.backends
                            .iter()
                            .any(|o| o.address == b.address && o.weight != b.weight)
                    })
                    .count();
                let mut what = Vec::new();
                if added > 0 {
                    what.push(format!("{added} backend(s) added"));
                }
                if removed > 0 {
                    what.push(format!("{removed} removed"));
                }
                if reweighted > 0 {
                    what.push(format!("{reweighted} weight(s) changed"));
                }
                if what.is_empty() {
                    what.push("settings changed".into());
                }
                out.push(format!("service {name}: {}", what.join(", ")));
            }
            Some(_) => {}
        }
    }
    for svc in &running.services {
        let name = &svc.name;
        if !new.services.iter().any(|s| s.name == *name) {
            out.push(format!("service {name} removed"));
        }
    }
    if running.node.addresses != new.node.addresses
        || running.node.tunnel_peers != new.node.tunnel_peers
        || running.node.tunnel_source_v4 != new.node.tunnel_source_v4
        || running.node.tunnel_source_v6 != new.node.tunnel_source_v6
    {
        out.push("[node] addresses, tunnel peers or tunnel sources changed".into());
    }
    if running.dataplane.maglev_seed != new.dataplane.maglev_seed
        || running.dataplane.new_flow_cap != new.dataplane.new_flow_cap
    {
        out.push("[dataplane] maglev_seed or new_flow_cap changed".into());
    }
    if let (Some(a), Some(b)) = (&running.web, &new.web) {
        if a.certificates != b.certificates {
            out.push("[[web.certificate]] changed".into());
        }
        if a.sites != b.sites {
            out.push("[[web.site]] changed".into());
        }
        for u in &b.upstreams {
            match a.upstreams.iter().find(|o| o.name == u.name) {
                None => out.push(format!("upstream {} added", u.name)),
                Some(o) if o != u => out.push(format!("upstream {} changed (its pool starts afresh)", u.name)),
                Some(_) => {}
            }
        }
        for u in &a.upstreams {
            if !b.upstreams.iter().any(|n| n.name == u.name) {
                out.push(format!("upstream {} removed", u.name));
            }
        }
    }
    out
}

/// What became of a reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The new configuration runs; what it changed (empty: nothing).
    Applied {
        /// One line per change.
        changes: Vec<String>,
    },
    /// The new configuration was refused; the running one stays. Every reason found.
    Refused {
        /// One line per problem, `FILE:LINE:COLUMN: reason` where it has a place.
        reasons: Vec<String>,
    },
    /// The new configuration changes restart-only keys; nothing was applied.
    NeedsRestart {
        /// The keys, as [`RESTART_ONLY`] names them.
        keys: Vec<String>,
    },
}

impl Outcome {
    /// The exit status of `foobar reload`: 0 applied, 1 refused, 3 needs a restart.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Applied { .. } => 0,
            Outcome::Refused { .. } => 1,
            Outcome::NeedsRestart { .. } => 3,
        }
    }

    /// A few words for the service manager's status line.
    pub fn summary(&self) -> &'static str {
        match self {
            Outcome::Applied { .. } => "running; last reload applied",
            Outcome::Refused { .. } => "running; last reload refused (see the log)",
            Outcome::NeedsRestart { .. } => "running; last reload needs a restart (see the log)",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Applied { changes } if changes.is_empty() => write!(f, "applied: nothing changed"),
            Outcome::Applied { changes } => write!(f, "applied: {}", changes.join("; ")),
            Outcome::Refused { reasons } => {
                write!(f, "refused, the running configuration stays:")?;
                reasons.iter().try_for_each(|r| write!(f, "\n  {r}"))
            }
            Outcome::NeedsRestart { keys } => write!(
                f,
                "needs a restart, nothing applied: {} changed (foobar run adopts the pinned data plane without a forwarding gap)",
                keys.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tests::GOOD as BASE;

    fn parse(text: &str) -> Config {
        crate::config::parse(text).expect("valid test configuration")
    }

    #[test]
    fn a_weight_change_is_reloadable_and_described() {
        let a = parse(BASE);
        let b = parse(&BASE.replace("weight = 50", "weight = 0"));
        assert!(restart_keys(&a, &b).is_empty());
        assert_eq!(changes(&a, &b), vec!["service web: 1 weight(s) changed"]);
        assert!(changes(&a, &a).is_empty());
    }

    #[test]
    fn restart_only_keys_are_named() {
        let a = parse(BASE);
        let b = parse(
            &BASE
                .replace("interfaces = [\"eth0\"]", "interfaces = [\"eth1\"]")
                .replace("[[service]]", "[dataplane]\nmax_backends = 100\n\n[[service]]"),
        );
        assert_eq!(
            restart_keys(&a, &b),
            vec!["[node] interfaces", "[dataplane] max_backends"]
        );
    }

    #[test]
    fn the_configuration_reference_lists_every_restart_only_key() {
        let docs = include_str!("../../docs/configuration.md");
        for r in RESTART_ONLY {
            assert!(
                docs.contains(&format!("| `{}` | {} |", r.key, r.why)),
                "docs/configuration.md lacks the row of {}",
                r.key
            );
        }
    }

    #[test]
    fn outcomes_carry_exit_codes_and_say_what_happened() {
        let refused = Outcome::Refused {
            reasons: vec!["f.toml:3:1: bad".into()],
        };
        assert_eq!(refused.exit_code(), 1);
        assert!(refused.to_string().contains("f.toml:3:1: bad"));
        let json = serde_json::to_string(&refused).expect("serialises");
        assert!(json.contains("\"outcome\":\"refused\""), "{json}");
        assert_eq!(serde_json::from_str::<Outcome>(&json).expect("parses"), refused);
        assert_eq!(Outcome::NeedsRestart { keys: vec![] }.exit_code(), 3);
    }
}
