//! The descriptor limit, fitted to the configuration at start. A service manager's default
//! soft limit (1024) is far below what the connection limits allow, and running out of
//! descriptors fails the edge's own health checks and monitors first.
//!
//! What a configuration may need: each web client connection, each relayed database connection
//! twice (client and server side), and headroom for listeners, checks, monitors, maps and logs
//! — the minimum, refused when the limit cannot reach it — and up to one upstream connection
//! more per web client connection when all of them are proxied. The soft limit is raised to
//! the latter where the hard limit allows (root may raise the hard one too), else as far as
//! it goes, with a warning.

use crate::config::Config;
use anyhow::{bail, Result};
use tracing::{info, warn};

/// Descriptors beyond the connection limits: listeners, health checks, database monitors,
/// pinned maps and links, the control and management sockets, log files.
pub const HEADROOM: u64 = 1024;

/// Connections a database server takes when its limit is 0 (unlimited), for the estimate.
const UNLIMITED_SERVER_ESTIMATE: u64 = 1024;

/// What a configuration needs: at least `minimum`, up to `full`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    /// Client connections, database relays (both sides) and headroom.
    pub minimum: u64,
    /// The minimum plus an upstream connection for every web client connection.
    pub full: u64,
    /// How the numbers come about.
    pub why: String,
}

/// The descriptors `c` may need.
pub fn needed(c: &Config) -> Need {
    let web = c.web.as_ref().map_or(0, |w| w.limits.max_connections as u64);
    let db: u64 = c
        .databases
        .iter()
        .map(|d| {
            let per_server = match d.max_connections_per_server {
                0 => UNLIMITED_SERVER_ESTIMATE,
                n => u64::from(n),
            };
            // The cluster's own cap bounds its relays whatever the servers take.
            (per_server * d.servers.len() as u64).min(d.max_client_connections as u64)
        })
        .sum();
    let minimum = web + 2 * db + HEADROOM;
    Need {
        minimum,
        full: minimum + web,
        why: format!(
            "{web} web connections (and as many upstream ones when all are proxied), {db} database \
             relays x 2, {HEADROOM} headroom"
        ),
    }
}

/// Raises the soft descriptor limit to what `c` may need; refuses to start when the limit
/// cannot reach the minimum. Returns the limit in force.
pub fn fit(c: &Config) -> Result<u64> {
    let need = needed(c);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("reading the descriptor limit: {}", std::io::Error::last_os_error());
    }
    let (soft, hard) = (limit.rlim_cur, limit.rlim_max);
    if soft >= need.full {
        return Ok(soft);
    }
    let set = |cur: u64, max: u64| {
        let wanted = libc::rlimit {
            rlim_cur: cur,
            rlim_max: max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 }
    };
    if set(need.full, hard.max(need.full)) {
        info!(
            from = soft,
            to = need.full,
            why = need.why,
            "raised the descriptor limit"
        );
        return Ok(need.full);
    }
    if hard >= need.minimum && (soft >= hard || set(hard, hard)) {
        let now = soft.max(hard);
        warn!(
            limit = now,
            wanted = need.full,
            why = need.why,
            "the descriptor limit cannot be raised to what fully proxied load may need; raise LimitNOFILE"
        );
        return Ok(now);
    }
    bail!(
        "the descriptor limit is {soft} (hard {hard}) and cannot be raised to the {} this configuration \
         needs at least ({}); raise LimitNOFILE (systemd) or `ulimit -n`, or lower [web.limits] \
         max_connections / [[database]] max_connections_per_server",
        need.minimum,
        need.why
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_need_counts_clients_relays_and_upstreams() {
        let text = format!(
            "{}\n[[web.listener]]\naddress = \"127.0.0.1:80\"\n[[web.site]]\nnames = [\"a\"]\nroot = \"/\"\n\
             [web.limits]\nmax_connections = 4000\n",
            crate::config::tests::GOOD
        );
        let c = crate::config::parse(&text).expect("valid");
        let need = needed(&c);
        assert_eq!((need.minimum, need.full), (4000 + HEADROOM, 8000 + HEADROOM));
    }

    #[test]
    fn a_clusters_client_cap_bounds_its_relays() {
        let cluster = |extra: &str| {
            format!(
                "{}
[[database]]
name = \"main\"
address = \"127.0.0.1\"
servers = [\"127.0.0.2:3306\", \"127.0.0.3:3306\"]
                 credentials = \"/etc/foobar/monitor.toml\"
max_connections_per_server = 0
{extra}",
                crate::config::tests::GOOD
            )
        };
        let unbounded = needed(&crate::config::parse(&cluster("")).expect("valid"));
        assert_eq!(unbounded.minimum, 2 * 2 * UNLIMITED_SERVER_ESTIMATE + HEADROOM);
        let capped = needed(&crate::config::parse(&cluster("max_client_connections = 300\n")).expect("valid"));
        assert_eq!(capped.minimum, 2 * 300 + HEADROOM);
    }
}
