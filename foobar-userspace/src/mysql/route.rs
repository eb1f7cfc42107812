//! The routing rules, as pure functions of what the monitor sees: which server is the
//! primary, and which server a new read-write or read-only connection goes to (or why none).

use super::monitor::{Lag, ServerState};
use crate::config::database::{NoReplica, Role};
use std::net::SocketAddr;

/// The limits a pick respects.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Replicas lagging more than this get no new read-only connections.
    pub max_lag_s: u64,
    /// The lag assumed for a replica that reports NULL.
    pub unknown_lag_s: u64,
    /// What read-only connections get when no replica qualifies.
    pub when_no_replica: NoReplica,
    /// Connections per server at most (0 = unlimited).
    pub max_connections: u32,
    /// Galera: a state-transfer donor serves.
    pub donors_serve: bool,
}

/// The primary: the current one while it stays up and writable, else the up, writable server
/// that most servers replicate from (a returning old primary that nobody follows loses to the
/// promoted one), then the first in configuration order.
pub fn primary(servers: &[ServerState], addresses: &[SocketAddr], current: Option<usize>) -> Option<usize> {
    let writable = |i: &usize| servers.get(*i).is_some_and(|s| s.up && !s.read_only);
    let followers = |i: usize| {
        servers
            .iter()
            .filter(|s| s.up && s.replication.as_ref().is_some_and(|r| r.follows(addresses[i])))
            .count()
    };
    current.filter(writable).or_else(|| {
        (0..servers.len().min(addresses.len()))
            .filter(writable)
            .max_by_key(|&i| (followers(i), std::cmp::Reverse(i)))
    })
}

/// The writer of a Galera cluster: the first member in configuration order that is fit to
/// serve. Every edge that sees the same members picks the same one, so writes from all edges
/// meet on one member and never conflict in certification.
pub fn galera_writer(servers: &[ServerState], donors_serve: bool) -> Option<usize> {
    servers.iter().position(|s| s.serves(donors_serve))
}

/// Why no server qualifies, twice: for the client, who may not be trusted with internal
/// addresses or the monitor's errors, and for the log and status, which say everything.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Refusal {
    /// What the client is told: the reason and how many servers stand where.
    pub public: String,
    /// The same with each server's address and standing.
    pub detail: String,
}

impl Refusal {
    fn new(public: String, detail: String) -> Self {
        Self { public, detail }
    }
}

/// The server a new connection of `role` goes to, or why there is none. `active` holds each
/// server's open connections; `tried` the servers this connection already failed to reach.
pub fn pick(
    role: Role,
    servers: &[ServerState],
    addresses: &[SocketAddr],
    primary: Option<usize>,
    active: &[u32],
    tried: &[usize],
    rules: &Rules,
) -> Result<usize, Refusal> {
    let full = |i: usize| rules.max_connections != 0 && active.get(i).copied().unwrap_or(0) >= rules.max_connections;
    let name = |i: usize| {
        addresses
            .get(i)
            .map_or_else(|| format!("server {i}"), |a| a.to_string())
    };
    let use_primary = |why_not: &str| match primary {
        None => Err(Refusal::new(
            format!("no primary ({})", summarise(servers, tried, rules)),
            format!("no primary ({})", describe(servers, addresses, tried, rules)),
        )),
        Some(p) if tried.contains(&p) => Err(Refusal::new(
            format!("{why_not}; the primary did not accept the connection"),
            format!("{why_not}; primary {} is unreachable", name(p)),
        )),
        Some(p) if full(p) => Err(Refusal::new(
            format!(
                "{why_not}; the primary has {} connections (max_connections_per_server)",
                rules.max_connections
            ),
            format!(
                "{why_not}; primary {} has {} connections (max_connections_per_server)",
                name(p),
                rules.max_connections
            ),
        )),
        Some(p) => Ok(p),
    };
    match role {
        Role::ReadWrite => use_primary("no writable server"),
        Role::ReadOnly => {
            let best = (0..servers.len())
                .filter(|&i| Some(i) != primary && !full(i))
                .filter(|&i| {
                    matches!(
                        Standing::of(i, &servers[i], tried, rules, primary.is_some()),
                        Standing::ReadOnly(_)
                    )
                })
                .min_by_key(|&i| active.get(i).copied().unwrap_or(0));
            match (best, rules.when_no_replica) {
                (Some(i), _) => Ok(i),
                (None, NoReplica::Primary) => use_primary("no replica qualifies").map_err(|r| Refusal {
                    detail: format!("{}; replicas: {}", r.detail, describe(servers, addresses, tried, rules)),
                    ..r
                }),
                (None, NoReplica::Refuse) => Err(Refusal::new(
                    format!(
                        "no replica qualifies ({}); when_no_replica = refuse",
                        summarise(servers, tried, rules)
                    ),
                    format!(
                        "no replica qualifies ({}); when_no_replica = refuse",
                        describe(servers, addresses, tried, rules)
                    ),
                )),
            }
        }
    }
}

/// Where one server stands, for refusals.
enum Standing {
    DidNotAccept,
    Down,
    Writable,
    NotServing(&'static str),
    NotReplicating,
    ReplicationStopped,
    NotConnected,
    Lagging(u64),
    ReadOnly(u64),
}

impl Standing {
    fn of(i: usize, s: &ServerState, tried: &[usize], rules: &Rules, primary_up: bool) -> Self {
        if tried.contains(&i) {
            return Standing::DidNotAccept;
        }
        if !s.up {
            return Standing::Down;
        }
        if let Some(g) = &s.galera {
            // Every fit member serves reads (the writer is skipped by the caller).
            return match g.unfit(rules.donors_serve) {
                Some(why) => Standing::NotServing(why),
                None => Standing::ReadOnly(0),
            };
        }
        if !s.read_only {
            return Standing::Writable;
        }
        if s.lag == Lag::NotReplica && primary_up {
            // Read-only beside a primary it does not follow (a fenced old primary): stale.
            return Standing::NotReplicating;
        }
        let lag = s.effective_lag(rules.unknown_lag_s, primary_up);
        let over = lag > rules.max_lag_s;
        match s.lag {
            Lag::Stopped => Standing::ReplicationStopped,
            Lag::Disconnected(_) if over => Standing::NotConnected,
            _ if over => Standing::Lagging(lag),
            _ => Standing::ReadOnly(lag),
        }
    }

    /// The category, as the client's summary counts it.
    fn category(&self) -> &'static str {
        match self {
            Standing::DidNotAccept => "did not accept",
            Standing::Down => "down",
            Standing::Writable => "writable",
            Standing::NotReplicating => "not replicating",
            Standing::NotServing(_) => "not synced",
            Standing::ReplicationStopped => "replication stopped",
            Standing::NotConnected => "not connected to the primary",
            Standing::Lagging(_) => "lagging",
            Standing::ReadOnly(_) => "read-only",
        }
    }
}

/// The servers' standing as counts, for the client: `servers: 1 down, 1 lagging`.
fn summarise(servers: &[ServerState], tried: &[usize], rules: &Rules) -> String {
    let primary_up = servers.iter().any(|s| s.up && !s.read_only);
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let category = Standing::of(i, s, tried, rules, primary_up).category();
        match counts.iter_mut().find(|(c, _)| *c == category) {
            Some((_, n)) => *n += 1,
            None => counts.push((category, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(c, n)| format!("{n} {c}")).collect();
    format!("servers: {}", parts.join(", "))
}

/// Each server's standing, for the log and status: `10.0.0.2:3306 lags 35 s (max 10)`.
fn describe(servers: &[ServerState], addresses: &[SocketAddr], tried: &[usize], rules: &Rules) -> String {
    let primary_up = servers.iter().any(|s| s.up && !s.read_only);
    let standing: Vec<String> = servers
        .iter()
        .zip(addresses)
        .enumerate()
        .map(|(i, (s, a))| match Standing::of(i, s, tried, rules, primary_up) {
            Standing::DidNotAccept => format!("{a} did not accept the connection"),
            Standing::Down => {
                let why = s.last_error.as_deref().unwrap_or("not checked yet");
                format!("{a} is down: {why}")
            }
            Standing::Writable => format!("{a} is writable"),
            Standing::NotReplicating => format!("{a} is read-only and replicates from nobody"),
            Standing::NotServing(why) => format!("{a} is {why}"),
            Standing::ReplicationStopped => format!("{a} has its replication SQL thread stopped"),
            Standing::NotConnected => format!("{a} is not connected to its primary"),
            Standing::Lagging(lag) => format!("{a} lags {lag} s (max {})", rules.max_lag_s),
            Standing::ReadOnly(lag) => format!("{a} is read-only, lag {lag} s"),
        })
        .collect();
    standing.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, i as u8 + 1], 3306)))
            .collect()
    }

    fn server(up: bool, read_only: bool, lag: Option<u64>) -> ServerState {
        ServerState {
            up,
            read_only,
            lag: match (read_only, lag) {
                (false, _) => Lag::NotReplica,
                (true, Some(s)) => Lag::Seconds(s),
                (true, None) => Lag::Stopped,
            },
            last_error: (!up).then(|| "login: Connection refused".into()),
            ..ServerState::default()
        }
    }

    fn rules(when_no_replica: NoReplica) -> Rules {
        Rules {
            max_lag_s: 10,
            unknown_lag_s: 86_400,
            when_no_replica,
            max_connections: 2,
            donors_serve: false,
        }
    }

    #[test]
    fn primary_is_sticky_and_follows_read_only() {
        let a = addrs(3);
        let mut s = vec![server(true, false, None), server(true, false, None)];
        assert_eq!(primary(&s, &a, None), Some(0));
        assert_eq!(
            primary(&s, &a, Some(1)),
            Some(1),
            "two writable servers: keep the current one"
        );
        s[1].read_only = true;
        assert_eq!(
            primary(&s, &a, Some(1)),
            Some(0),
            "demoted: the writable one takes over"
        );
        s[0].up = false;
        assert_eq!(primary(&s, &a, Some(0)), None);
    }

    #[test]
    fn without_a_current_primary_the_followed_writable_server_wins() {
        let a = addrs(3);
        // A returning old primary (0) is writable again; the promoted one (1) has a replica.
        let mut s = vec![
            server(true, false, None),
            server(true, false, None),
            server(true, true, Some(0)),
        ];
        s[2].replication = Some(crate::mysql::monitor::Replication {
            source: "10.0.0.2:3306".into(),
            receiving: true,
            received: Default::default(),
        });
        assert_eq!(primary(&s, &a, None), Some(1));
        assert_eq!(primary(&s, &a, Some(0)), Some(0), "the current one stays");
        // The fenced old primary is read-only and follows nobody: no reads for it.
        s[0].read_only = true;
        let r = rules(NoReplica::Refuse);
        assert_eq!(pick(Role::ReadOnly, &s, &a, Some(1), &[0; 3], &[], &r), Ok(2));
        assert_eq!(pick(Role::ReadOnly, &s, &a, Some(1), &[0; 3], &[2], &r).map_err(|r| r.public),
            Err("no replica qualifies (servers: 1 not replicating, 1 writable, 1 did not accept); when_no_replica = refuse".into()));
    }

    #[test]
    fn galera_writes_meet_on_the_first_fit_member_and_reads_avoid_unfit_ones() {
        use crate::mysql::monitor::GaleraMember;
        let member = |status: &str, state: u8, desync: bool| ServerState {
            up: true,
            galera: Some(GaleraMember {
                cluster_status: status.into(),
                local_state: state,
                ready: true,
                desync,
            }),
            ..ServerState::default()
        };
        let a = addrs(3);
        let mut s = vec![
            member("Primary", 4, false),
            member("Primary", 4, false),
            member("Primary", 4, false),
        ];
        let r = rules(NoReplica::Refuse);
        assert_eq!(galera_writer(&s, false), Some(0));
        assert_eq!(pick(Role::ReadOnly, &s, &a, Some(0), &[0, 1, 0], &[], &r), Ok(2));
        s[0] = member("non-Primary", 4, false);
        s[2] = member("Primary", 2, true);
        assert_eq!(galera_writer(&s, true), Some(1), "a desynced member never serves");
        let why = pick(Role::ReadOnly, &s, &a, Some(1), &[0; 3], &[], &r)
            .err()
            .unwrap_or_default();
        assert!(
            why.detail.contains("10.0.0.1:3306 is not in the primary component")
                && why.detail.contains("10.0.0.3:3306 is desynced"),
            "{why:?}"
        );
        s[2] = member("Primary", 2, false);
        assert_eq!(galera_writer(&s, false), Some(1));
        assert!(
            pick(Role::ReadOnly, &s, &a, Some(1), &[0; 3], &[], &r).is_err(),
            "a donor"
        );
        let donors = Rules {
            donors_serve: true,
            ..r
        };
        assert_eq!(pick(Role::ReadOnly, &s, &a, Some(1), &[0; 3], &[], &donors), Ok(2));
    }

    #[test]
    fn reads_go_to_the_least_loaded_fresh_replica() {
        let s = vec![
            server(true, false, None),
            server(true, true, Some(0)),
            server(true, true, Some(3)),
            server(true, true, Some(11)),
        ];
        let a = addrs(4);
        let r = rules(NoReplica::Refuse);
        assert_eq!(pick(Role::ReadOnly, &s, &a, Some(0), &[0, 1, 0, 0], &[], &r), Ok(2));
        assert_eq!(pick(Role::ReadOnly, &s, &a, Some(0), &[0, 0, 1, 0], &[], &r), Ok(1));
        assert_eq!(pick(Role::ReadOnly, &s, &a, Some(0), &[0, 0, 0, 0], &[1], &r), Ok(2));
        assert_eq!(
            pick(Role::ReadOnly, &s, &a, Some(0), &[0, 2, 2, 0], &[], &r).map_err(|_| ()),
            Err(())
        );
        assert_eq!(pick(Role::ReadWrite, &s, &a, Some(0), &[0, 0, 0, 0], &[], &r), Ok(0));
    }

    #[test]
    fn lagging_replicas_fall_back_or_refuse_with_the_reason() {
        let s = vec![
            server(true, false, None),
            server(true, true, None),
            server(true, true, Some(35)),
        ];
        let a = addrs(3);
        assert_eq!(
            pick(
                Role::ReadOnly,
                &s,
                &a,
                Some(0),
                &[0; 3],
                &[],
                &rules(NoReplica::Primary)
            ),
            Ok(0)
        );
        let refused = pick(Role::ReadOnly, &s, &a, Some(0), &[0; 3], &[], &rules(NoReplica::Refuse));
        let why = refused.err().unwrap_or_default();
        assert!(why.detail.contains("10.0.0.3:3306 lags 35 s (max 10)"), "{why:?}");
        assert!(
            why.detail
                .contains("10.0.0.2:3306 has its replication SQL thread stopped"),
            "{why:?}"
        );
        assert!(why.detail.contains("when_no_replica = refuse"), "{why:?}");
        // The client is told the same in counts, without addresses.
        assert_eq!(
            why.public,
            "no replica qualifies (servers: 1 writable, 1 replication stopped, 1 lagging); when_no_replica = refuse"
        );
    }

    #[test]
    fn a_replica_cut_off_from_a_dead_primary_keeps_serving_reads() {
        let mut s = vec![server(true, false, None), server(true, true, None)];
        s[1].lag = Lag::Disconnected(Some(1));
        let a = addrs(2);
        let r = rules(NoReplica::Refuse);
        assert!(
            pick(Role::ReadOnly, &s, &a, Some(0), &[0; 2], &[], &r).is_err(),
            "primary up: stale"
        );
        s[0].up = false;
        assert_eq!(pick(Role::ReadOnly, &s, &a, None, &[0; 2], &[], &r), Ok(1));
    }

    #[test]
    fn writes_without_a_primary_say_why() {
        let s = vec![server(false, false, None), server(true, true, Some(0))];
        let a = addrs(2);
        let why = pick(Role::ReadWrite, &s, &a, None, &[0; 2], &[], &rules(NoReplica::Primary))
            .err()
            .unwrap_or_default();
        assert!(
            why.detail
                .contains("no primary (10.0.0.1:3306 is down: login: Connection refused"),
            "{why:?}"
        );
        assert_eq!(why.public, "no primary (servers: 1 down, 1 read-only)");
        assert_eq!(
            pick(Role::ReadOnly, &s, &a, None, &[0; 2], &[], &rules(NoReplica::Primary)),
            Ok(1),
            "reads keep being served by the replica"
        );
        let full = pick(
            Role::ReadWrite,
            &s,
            &a,
            Some(1),
            &[0, 2],
            &[],
            &rules(NoReplica::Primary),
        );
        let full = full.err().unwrap_or_default();
        assert!(
            full.detail.contains("primary 10.0.0.2:3306 has 2 connections"),
            "{full:?}"
        );
        assert_eq!(
            full.public,
            "no writable server; the primary has 2 connections (max_connections_per_server)"
        );
    }
}
