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
}

/// The primary: the current one while it stays up and writable, else the first up, writable
/// server in configuration order.
pub fn primary(servers: &[ServerState], current: Option<usize>) -> Option<usize> {
    let writable = |i: &usize| servers.get(*i).is_some_and(|s| s.up && !s.read_only);
    current.filter(writable).or_else(|| (0..servers.len()).find(writable))
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
) -> Result<usize, String> {
    let full = |i: usize| rules.max_connections != 0 && active.get(i).copied().unwrap_or(0) >= rules.max_connections;
    let name = |i: usize| {
        addresses
            .get(i)
            .map_or_else(|| format!("server {i}"), |a| a.to_string())
    };
    let use_primary = |why_not: String| match primary {
        None => Err(format!("no primary ({})", describe(servers, addresses, tried, rules))),
        Some(p) if tried.contains(&p) => Err(format!("{why_not}; primary {} is unreachable", name(p))),
        Some(p) if full(p) => Err(format!(
            "{why_not}; primary {} has {} connections (max_connections_per_server)",
            name(p),
            rules.max_connections
        )),
        Some(p) => Ok(p),
    };
    match role {
        Role::ReadWrite => use_primary(String::from("no writable server")),
        Role::ReadOnly => {
            let best = (0..servers.len())
                .filter(|&i| Some(i) != primary && !tried.contains(&i) && !full(i))
                .filter(|&i| {
                    let s = &servers[i];
                    s.up && s.read_only && s.effective_lag(rules.unknown_lag_s, primary.is_some()) <= rules.max_lag_s
                })
                .min_by_key(|&i| active.get(i).copied().unwrap_or(0));
            match (best, rules.when_no_replica) {
                (Some(i), _) => Ok(i),
                (None, NoReplica::Primary) => use_primary(format!(
                    "no replica qualifies ({})",
                    describe(servers, addresses, tried, rules)
                )),
                (None, NoReplica::Refuse) => Err(format!(
                    "no replica qualifies ({}); when_no_replica = refuse",
                    describe(servers, addresses, tried, rules)
                )),
            }
        }
    }
}

/// Each server's standing, for error messages: `10.0.0.2:3306 lags 35 s (max 10)`.
fn describe(servers: &[ServerState], addresses: &[SocketAddr], tried: &[usize], rules: &Rules) -> String {
    let primary_up = servers.iter().any(|s| s.up && !s.read_only);
    let standing: Vec<String> = servers
        .iter()
        .zip(addresses)
        .enumerate()
        .map(|(i, (s, a))| {
            if tried.contains(&i) {
                format!("{a} did not accept the connection")
            } else if !s.up {
                let why = s.last_error.as_deref().unwrap_or("not checked yet");
                format!("{a} is down: {why}")
            } else if !s.read_only {
                format!("{a} is writable")
            } else {
                let lag = s.effective_lag(rules.unknown_lag_s, primary_up);
                let over = lag > rules.max_lag_s;
                match s.lag {
                    Lag::Stopped => format!("{a} has its replication SQL thread stopped"),
                    Lag::Disconnected(_) if over => format!("{a} is not connected to its primary"),
                    _ if over => format!("{a} lags {lag} s (max {})", rules.max_lag_s),
                    _ => format!("{a} is read-only, lag {lag} s"),
                }
            }
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
        }
    }

    fn rules(when_no_replica: NoReplica) -> Rules {
        Rules {
            max_lag_s: 10,
            unknown_lag_s: 86_400,
            when_no_replica,
            max_connections: 2,
        }
    }

    #[test]
    fn primary_is_sticky_and_follows_read_only() {
        let mut s = vec![server(true, false, None), server(true, false, None)];
        assert_eq!(primary(&s, None), Some(0));
        assert_eq!(
            primary(&s, Some(1)),
            Some(1),
            "two writable servers: keep the current one"
        );
        s[1].read_only = true;
        assert_eq!(primary(&s, Some(1)), Some(0), "demoted: the writable one takes over");
        s[0].up = false;
        assert_eq!(primary(&s, Some(0)), None);
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
        assert!(why.contains("10.0.0.3:3306 lags 35 s (max 10)"), "{why}");
        assert!(
            why.contains("10.0.0.2:3306 has its replication SQL thread stopped"),
            "{why}"
        );
        assert!(why.contains("when_no_replica = refuse"), "{why}");
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
            why.contains("no primary (10.0.0.1:3306 is down: login: Connection refused"),
            "{why}"
        );
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
        assert!(full.err().unwrap_or_default().contains("max_connections_per_server"));
    }
}
