//! Per-client request rate limits (nginx's `limit_req ... burst=N nodelay`): each client (an
//! IPv4 address, an IPv6 prefix) may make `per_second` requests a second on average and
//! `burst` more at once; a request past that is answered 429 with how long to wait.
//!
//! The generic cell rate algorithm keeps one instant per client, the theoretical arrival time
//! of its next request: a request is let through when that time is at most `burst` emission
//! intervals ahead of now, and moves it one interval on. A client whose time has passed is in
//! the state of one never seen, so the table drops such clients whenever it fills up: only
//! clients making requests faster than the rate take room.

use crate::admission::client_of;
use crate::config::web::RequestRate;
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Clients tracked at most; past it the ones at rest are dropped, and if every one is busy a
/// new client goes untracked (its requests pass) until room frees up.
const MAX_CLIENTS: usize = 65_536;

/// The rate limit of one web tier.
pub struct RateLimit {
    /// Nanoseconds between requests at the rate.
    interval_ns: u64,
    /// How far ahead of now a client's next-arrival time may run, ns.
    tolerance_ns: u64,
    ipv6_prefix_len: u8,
    start: Instant,
    /// Next-arrival time by client, ns since `start`.
    clients: Mutex<HashMap<IpAddr, u64>>,
}

impl RateLimit {
    /// A limit of `rate`, counting IPv6 clients by prefixes of `ipv6_prefix_len` bits.
    pub fn new(rate: RequestRate, ipv6_prefix_len: u8) -> Self {
        let interval_ns = 1_000_000_000 / u64::from(rate.per_second.max(1));
        Self {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(rate.burst)),
            ipv6_prefix_len,
            start: Instant::now(),
            clients: Mutex::default(),
        }
    }

    /// Lets a request from `addr` through, or says how long until one would be.
    pub fn admit(&self, addr: IpAddr) -> Result<(), Duration> {
        self.admit_at(client_of(addr, self.ipv6_prefix_len), self.start.elapsed())
    }

    fn admit_at(&self, client: IpAddr, now: Duration) -> Result<(), Duration> {
        let now = now.as_nanos() as u64;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            clients.retain(|_, next| *next > now);
            if clients.len() >= MAX_CLIENTS {
                return Ok(());
            }
        }
        let next = clients.entry(client).or_insert(now);
        let arrival = (*next).max(now);
        if arrival - now > self.tolerance_ns {
            return Err(Duration::from_nanos(arrival - now - self.tolerance_ns));
        }
        *next = arrival + self.interval_ns;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds_and_clients_are_apart() {
        // 2 a second (one every 500 ms) and 3 more at once.
        let limit = RateLimit::new(
            RequestRate {
                per_second: 2,
                burst: 3,
            },
            64,
        );
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..4 {
            assert_eq!(limit.admit_at(a, at(0)), Ok(()));
        }
        assert_eq!(limit.admit_at(a, at(0)), Err(at(500)));
        assert_eq!(limit.admit_at(a, at(100)), Err(at(400)));
        // Another client has its own allowance.
        assert_eq!(limit.admit_at("198.51.100.8".parse().unwrap(), at(100)), Ok(()));
        // One more every 500 ms.
        assert_eq!(limit.admit_at(a, at(500)), Ok(()));
        assert_eq!(limit.admit_at(a, at(600)), Err(at(400)));
        // At rest long enough, the whole burst is back.
        for _ in 0..4 {
            assert_eq!(limit.admit_at(a, at(5000)), Ok(()));
        }
        assert!(limit.admit_at(a, at(5000)).is_err());
    }

    #[test]
    fn an_ipv6_client_is_its_prefix() {
        let limit = RateLimit::new(
            RequestRate {
                per_second: 1,
                burst: 0,
            },
            64,
        );
        assert_eq!(
            limit.admit_at(client_of("2001:db8::1".parse().unwrap(), 64), at(0)),
            Ok(())
        );
        assert!(limit
            .admit_at(client_of("2001:db8::2".parse().unwrap(), 64), at(0))
            .is_err());
        assert_eq!(
            limit.admit_at(client_of("2001:db8:0:1::1".parse().unwrap(), 64), at(0)),
            Ok(())
        );
    }

    #[test]
    fn a_full_table_drops_the_clients_at_rest() {
        let limit = RateLimit::new(
            RequestRate {
                per_second: 1000,
                burst: 0,
            },
            64,
        );
        for i in 0..MAX_CLIENTS as u32 {
            assert_eq!(limit.admit_at(IpAddr::from(i.to_be_bytes()), at(0)), Ok(()));
        }
        // Everyone's next arrival (1 ms) has passed at 2 ms: they make room for a newcomer.
        assert_eq!(limit.admit_at("203.0.113.1".parse().unwrap(), at(2)), Ok(()));
        assert_eq!(limit.clients.lock().unwrap().len(), 1);
    }
}
