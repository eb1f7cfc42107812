//! Connection admission by client: a total cap and a per-client cap, where a client is an
//! IPv4 address or an IPv6 prefix (one host holds a whole /64). The web tier, database routing
//! and the management listener each keep one; a connection over a cap is refused at accept.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
};

/// Who `addr` is as a client: its IPv4 address, or its IPv6 address's first
/// `ipv6_prefix_len` bits (one host usually holds a whole /64).
pub fn client_of(addr: IpAddr, ipv6_prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(_) => crate::config::web::truncate(addr, ipv6_prefix_len),
    }
}

/// The caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Open connections in all.
    pub total: usize,
    /// Open connections per client.
    pub per_client: usize,
    /// How much of an IPv6 address names a client.
    pub ipv6_prefix_len: u8,
}

/// Open connections per client (their sum is the total), under [`Caps`].
pub struct Admission {
    caps: Caps,
    open: Mutex<Open>,
}

/// Open connections: the total and by client.
#[derive(Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it gives the slot back.
pub struct Admitted {
    admission: Arc<Admission>,
    client: IpAddr,
}

impl Admission {
    /// An empty table under `caps`.
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            open: Mutex::new(Open::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Who a connection counts against.
    fn client_key(&self, addr: IpAddr) -> IpAddr {
        client_of(addr, self.caps.ipv6_prefix_len)
    }

    /// A slot for a connection from `addr`, unless a cap is reached.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Option<Admitted> {
        let client = self.client_key(addr);
        let mut open = self.lock();
        if open.total >= self.caps.total || open.per_client.get(&client).is_some_and(|n| *n >= self.caps.per_client) {
            return None;
        }
        open.total += 1;
        *open.per_client.entry(client).or_default() += 1;
        Some(Admitted {
            admission: self.clone(),
            client,
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.admission.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_their_prefix_cap_and_ipv4_ones_do_not() {
        let admission = Admission::new(Caps {
            total: 100,
            per_client: 2,
            ipv6_prefix_len: 64,
        });
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let a = admission.admit(ip("2001:db8:1:2::1"));
        let b = admission.admit(ip("2001:db8:1:2::ffff"));
        assert!(a.is_some() && b.is_some());
        // A third address in the same /64 is the same client.
        assert!(admission.admit(ip("2001:db8:1:2:abcd::9")).is_none());
        // Another /64, and IPv4 addresses next to each other, are clients of their own.
        assert!(admission.admit(ip("2001:db8:1:3::1")).is_some());
        let v4: Vec<_> = ["192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.2"]
            .iter()
            .map(|s| admission.admit(ip(s)))
            .collect();
        assert!(v4.iter().all(Option::is_some));
        assert!(admission.admit(ip("192.0.2.1")).is_none());
        // A slot given back is a slot taken again.
        drop(a);
        assert!(admission.admit(ip("2001:db8:1:2::7")).is_some());
    }

    #[test]
    fn the_total_cap_holds_across_clients() {
        let admission = Admission::new(Caps {
            total: 2,
            per_client: 10,
            ipv6_prefix_len: 64,
        });
        let held: Vec<_> = ["192.0.2.1", "192.0.2.2"]
            .iter()
            .filter_map(|s| admission.admit(s.parse().expect("ip")))
            .collect();
        assert_eq!((held.len(), admission.open()), (2, 2));
        assert!(admission.admit("192.0.2.3".parse().expect("ip")).is_none());
    }
}
