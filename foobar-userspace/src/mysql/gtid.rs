//! MariaDB global transaction ids: a position (`@@gtid_current_pos`, a replica's `Gtid_IO_Pos`:
//! the last transaction per replication domain) and a binary log's state
//! (`@@gtid_binlog_state`: the last transaction per domain *and* originating server), as the
//! failover compares them: which replica received the most, how many transactions a promoted
//! replica misses, and whether a server's history is part of the new primary's.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// One transaction id: `domain-server-sequence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gtid {
    /// Replication domain.
    pub domain: u32,
    /// `server_id` of the server that committed it first.
    pub server: u32,
    /// Sequence number within the domain.
    pub sequence: u64,
}

/// A list of transaction ids as the server prints it, kept sorted: a position (one per domain)
/// or a binary log state (one per domain and server).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Gtids(Vec<Gtid>);

impl Gtids {
    /// No transaction at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The highest sequence number of `domain`.
    fn sequence(&self, domain: u32) -> Option<u64> {
        self.0.iter().filter(|g| g.domain == domain).map(|g| g.sequence).max()
    }

    /// Transactions `other` has that this position lacks, counted per domain by sequence.
    pub fn missing_from(&self, other: &Gtids) -> u64 {
        let mut domains: Vec<u32> = other.0.iter().map(|g| g.domain).collect();
        domains.dedup();
        domains
            .into_iter()
            .map(|d| {
                let theirs = other.sequence(d).unwrap_or(0);
                theirs.saturating_sub(self.sequence(d).unwrap_or(0))
            })
            .sum()
    }

    /// The sum of every domain's highest sequence number: which of two positions of one
    /// cluster received more.
    pub fn progress(&self) -> u64 {
        let mut domains: Vec<u32> = self.0.iter().map(|g| g.domain).collect();
        domains.dedup();
        domains.into_iter().filter_map(|d| self.sequence(d)).sum()
    }

    /// Whether every transaction of `position` is in the history this binary log state
    /// describes: for each of its ids the state holds the same domain and originating server
    /// at that sequence or later (a server's sequence numbers only grow). False means
    /// `position` has transactions this history never had (errant ones).
    pub fn contains_history_of(&self, position: &Gtids) -> bool {
        position.0.iter().all(|g| {
            self.0
                .iter()
                .any(|s| s.domain == g.domain && s.server == g.server && s.sequence >= g.sequence)
        })
    }
}

/// Why a GTID list did not parse.
#[derive(Debug, PartialEq, Eq)]
pub struct BadGtids(String);

impl fmt::Display for BadGtids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a MariaDB GTID list (domain-server-sequence, ...): {:?}", self.0)
    }
}

impl std::error::Error for BadGtids {}

impl FromStr for Gtids {
    type Err = BadGtids;

    fn from_str(text: &str) -> Result<Self, BadGtids> {
        let bad = || BadGtids(text.chars().take(80).collect());
        let mut ids = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut fields = part.splitn(3, '-');
            let mut next = || fields.next().ok_or_else(bad);
            let (domain, server, sequence) = (next()?, next()?, next()?);
            ids.push(Gtid {
                domain: domain.parse().map_err(|_| bad())?,
                server: server.parse().map_err(|_| bad())?,
                sequence: sequence.parse().map_err(|_| bad())?,
            });
        }
        ids.sort();
        Ok(Self(ids))
    }
}

impl TryFrom<String> for Gtids {
    type Error = BadGtids;

    fn try_from(text: String) -> Result<Self, BadGtids> {
        text.parse()
    }
}

impl From<Gtids> for String {
    fn from(g: Gtids) -> String {
        g.to_string()
    }
}

impl fmt::Display for Gtids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.0.iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            write!(f, "{comma}{}-{}-{}", g.domain, g.server, g.sequence)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(text: &str) -> Gtids {
        text.parse().unwrap()
    }

    #[test]
    fn parses_prints_and_refuses() {
        assert_eq!(g("0-1-100, 1-2-5\n").to_string(), "0-1-100,1-2-5");
        assert_eq!(g("1-2-5,0-1-100").to_string(), "0-1-100,1-2-5");
        assert!(g("").is_empty());
        for bad in ["0-1", "a-1-2", "0-1-2-3", "0--1", "0-1-99999999999999999999"] {
            assert!(bad.parse::<Gtids>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&g("0-1-7")).unwrap();
        assert_eq!(json, "\"0-1-7\"");
        assert_eq!(serde_json::from_str::<Gtids>(&json).unwrap(), g("0-1-7"));
    }

    #[test]
    fn compares_progress_and_counts_what_is_missing() {
        assert_eq!(g("0-1-100").missing_from(&g("0-1-103")), 3);
        assert_eq!(g("0-1-103").missing_from(&g("0-1-100")), 0);
        assert_eq!(g("0-1-10,1-1-4").missing_from(&g("0-1-12,1-1-5")), 3);
        assert_eq!(g("").missing_from(&g("0-1-2")), 2);
        assert!(g("0-1-12,1-1-5").progress() > g("0-1-12,1-1-4").progress());
    }

    #[test]
    fn finds_errant_transactions() {
        // The new primary (server 2) applied server 1's transactions up to 100, then wrote its own.
        let state = g("0-1-100,0-2-130");
        assert!(state.contains_history_of(&g("0-1-100")), "caught up before it died");
        assert!(state.contains_history_of(&g("0-1-98")), "behind: a prefix");
        assert!(
            !state.contains_history_of(&g("0-1-101")),
            "committed one nobody received"
        );
        assert!(
            !state.contains_history_of(&g("0-3-5")),
            "from a server the history never saw"
        );
        assert!(state.contains_history_of(&g("")));
    }
}
