//! Global transaction ids as the failover compares them: which replica received the most, how
//! many transactions a promoted replica misses, and whether a server's history is part of the
//! new primary's.
//!
//! Two shapes, told apart by their text:
//! - **MariaDB** lists: a position (`@@gtid_current_pos`, a replica's `Gtid_IO_Pos`: the last
//!   transaction per replication domain, `domain-server-sequence`) or a binary log's state
//!   (`@@gtid_binlog_state`: the last transaction per domain *and* originating server);
//! - **MySQL** sets (`@@gtid_executed`, `Retrieved_Gtid_Set`: every transaction,
//!   `uuid:1-100:105,uuid2:1-5`), where a position and a history are the same thing.

use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, fmt, str::FromStr};

/// One MariaDB transaction id: `domain-server-sequence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gtid {
    /// Replication domain.
    pub domain: u32,
    /// `server_id` of the server that committed it first.
    pub server: u32,
    /// Sequence number within the domain.
    pub sequence: u64,
}

/// Transaction ids as a server prints them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Gtids {
    /// A MariaDB list, kept sorted: one id per domain (a position) or per domain and server
    /// (a binary log state).
    MariaDb(Vec<Gtid>),
    /// A MySQL set: per source uuid, the sorted, disjoint intervals of transaction numbers.
    MySql(BTreeMap<String, Vec<(u64, u64)>>),
}

impl Default for Gtids {
    fn default() -> Self {
        Gtids::MariaDb(Vec::new())
    }
}

impl Gtids {
    /// No transaction at all.
    pub fn is_empty(&self) -> bool {
        match self {
            Gtids::MariaDb(ids) => ids.is_empty(),
            Gtids::MySql(set) => set.is_empty(),
        }
    }

    /// The highest sequence number of MariaDB `domain`.
    fn sequence(ids: &[Gtid], domain: u32) -> Option<u64> {
        ids.iter().filter(|g| g.domain == domain).map(|g| g.sequence).max()
    }

    /// Transactions `other` has that this one lacks: per domain by sequence (MariaDB), or the
    /// size of the set difference (MySQL). Shapes that differ count all of `other`.
    pub fn missing_from(&self, other: &Gtids) -> u64 {
        match (self, other) {
            (Gtids::MariaDb(mine), Gtids::MariaDb(theirs)) => {
                let mut domains: Vec<u32> = theirs.iter().map(|g| g.domain).collect();
                domains.dedup();
                domains
                    .into_iter()
                    .map(|d| {
                        let t = Self::sequence(theirs, d).unwrap_or(0);
                        t.saturating_sub(Self::sequence(mine, d).unwrap_or(0))
                    })
                    .fold(0, u64::saturating_add)
            }
            (Gtids::MySql(mine), Gtids::MySql(theirs)) => theirs
                .iter()
                .map(|(uuid, intervals)| {
                    let have = mine.get(uuid).map_or(&[][..], Vec::as_slice);
                    intervals
                        .iter()
                        .map(|&i| uncovered(i, have))
                        .fold(0, u64::saturating_add)
                })
                .fold(0, u64::saturating_add),
            (_, other) => other.progress(),
        }
    }

    /// How much it holds, to rank replicas of one cluster: the sum of every domain's highest
    /// sequence number (MariaDB), or the number of transactions (MySQL); saturating, since a
    /// server reports what it likes.
    pub fn progress(&self) -> u64 {
        match self {
            Gtids::MariaDb(ids) => {
                let mut domains: Vec<u32> = ids.iter().map(|g| g.domain).collect();
                domains.dedup();
                domains
                    .into_iter()
                    .filter_map(|d| Self::sequence(ids, d))
                    .fold(0, u64::saturating_add)
            }
            Gtids::MySql(set) => set
                .values()
                .flat_map(|intervals| intervals.iter().map(|(a, b)| b - a + 1))
                .fold(0, u64::saturating_add),
        }
    }

    /// Whether every transaction of `position` is in the history this describes. MariaDB: for
    /// each id of `position`, this binary log state holds the same domain and originating
    /// server at that sequence or later (a server's sequence numbers only grow). MySQL: the
    /// set contains `position`'s. False means `position` has transactions this history never
    /// had (errant ones); shapes that differ never match.
    pub fn contains_history_of(&self, position: &Gtids) -> bool {
        match (self, position) {
            (Gtids::MariaDb(state), Gtids::MariaDb(ids)) => ids.iter().all(|g| {
                state
                    .iter()
                    .any(|s| s.domain == g.domain && s.server == g.server && s.sequence >= g.sequence)
            }),
            (Gtids::MySql(_), _) | (_, Gtids::MySql(_)) if position.is_empty() => true,
            (Gtids::MySql(_), Gtids::MySql(_)) => self.missing_from(position) == 0,
            _ => position.is_empty(),
        }
    }

    /// The union of two MySQL sets (a replica's received and executed transactions); for
    /// MariaDB lists, or shapes that differ, the one that holds more.
    pub fn union(&self, other: &Gtids) -> Gtids {
        match (self, other) {
            (Gtids::MySql(a), Gtids::MySql(b)) => {
                let mut out = a.clone();
                for (uuid, intervals) in b {
                    let merged = out.entry(uuid.clone()).or_default();
                    merged.extend(intervals);
                    *merged = normalise(std::mem::take(merged));
                }
                Gtids::MySql(out)
            }
            _ if other.progress() > self.progress() => other.clone(),
            _ => self.clone(),
        }
    }
}

/// How many numbers of `interval` none of the sorted, disjoint `have` covers.
fn uncovered((start, end): (u64, u64), have: &[(u64, u64)]) -> u64 {
    let covered: u64 = have
        .iter()
        .map(|&(a, b)| {
            let (lo, hi) = (a.max(start), b.min(end));
            if lo <= hi {
                hi - lo + 1
            } else {
                0
            }
        })
        .fold(0, u64::saturating_add);
    (end - start + 1).saturating_sub(covered)
}

/// Intervals sorted, with overlapping and touching ones merged.
fn normalise(mut intervals: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    intervals.sort();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(intervals.len());
    for (a, b) in intervals {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Why a GTID text did not parse.
#[derive(Debug, PartialEq, Eq)]
pub struct BadGtids(String);

impl fmt::Display for BadGtids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a MariaDB GTID list (domain-server-sequence, ...) nor a MySQL GTID set (uuid:1-5, ...): {:?}",
            self.0
        )
    }
}

impl std::error::Error for BadGtids {}

impl FromStr for Gtids {
    type Err = BadGtids;

    fn from_str(text: &str) -> Result<Self, BadGtids> {
        let bad = || BadGtids(text.chars().take(80).collect());
        let parts = || text.split(',').map(str::trim).filter(|p| !p.is_empty());
        if text.contains(':') {
            let mut set: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
            for part in parts() {
                let mut fields = part.split(':');
                let uuid = fields.next().filter(|u| u.len() == 36).ok_or_else(bad)?;
                let intervals = set.entry(uuid.to_ascii_lowercase()).or_default();
                let mut fields = fields.peekable();
                if fields.peek().is_none() {
                    return Err(bad());
                }
                for interval in fields {
                    let (a, b) = interval.split_once('-').unwrap_or((interval, interval));
                    let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                    if a == 0 || b < a {
                        return Err(bad());
                    }
                    intervals.push((a, b));
                }
            }
            for intervals in set.values_mut() {
                *intervals = normalise(std::mem::take(intervals));
            }
            return Ok(Gtids::MySql(set));
        }
        let mut ids = Vec::new();
        for part in parts() {
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
        Ok(Gtids::MariaDb(ids))
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
        match self {
            Gtids::MariaDb(ids) => {
                for (i, g) in ids.iter().enumerate() {
                    let comma = if i == 0 { "" } else { "," };
                    write!(f, "{comma}{}-{}-{}", g.domain, g.server, g.sequence)?;
                }
            }
            Gtids::MySql(set) => {
                for (i, (uuid, intervals)) in set.iter().enumerate() {
                    f.write_str(if i == 0 { "" } else { "," })?;
                    f.write_str(uuid)?;
                    for (a, b) in intervals {
                        if a == b {
                            write!(f, ":{a}")?;
                        } else {
                            write!(f, ":{a}-{b}")?;
                        }
                    }
                }
            }
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

    const A: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const B: &str = "4f22fa47-71ca-11e1-9e33-c80aa9429562";

    #[test]
    fn parses_prints_and_refuses() {
        assert_eq!(g("0-1-100, 1-2-5\n").to_string(), "0-1-100,1-2-5");
        assert_eq!(g("1-2-5,0-1-100").to_string(), "0-1-100,1-2-5");
        assert!(g("").is_empty());
        for bad in [
            "0-1",
            "a-1-2",
            "0-1-2-3",
            "0--1",
            "0-1-99999999999999999999",
            "x:1-5",
            &format!("{A}:0-3"),
            &format!("{A}:5-3"),
            &format!("{A}:1-3,{B}"),
            &format!("{A}:"),
        ] {
            assert!(bad.parse::<Gtids>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&g("0-1-7")).unwrap();
        assert_eq!(json, "\"0-1-7\"");
        assert_eq!(serde_json::from_str::<Gtids>(&json).unwrap(), g("0-1-7"));
        // MySQL: intervals merge, upper-case uuids fold, the text survives a round trip.
        let set = g(&format!("{B}:1-3,\n{}:1-5:7:6", A.to_uppercase()));
        assert_eq!(set.to_string(), format!("{A}:1-7,{B}:1-3"));
        assert_eq!(set.progress(), 10);
    }

    #[test]
    fn compares_progress_and_counts_what_is_missing() {
        assert_eq!(g("0-1-100").missing_from(&g("0-1-103")), 3);
        assert_eq!(g("0-1-103").missing_from(&g("0-1-100")), 0);
        assert_eq!(g("0-1-10,1-1-4").missing_from(&g("0-1-12,1-1-5")), 3);
        assert_eq!(g("").missing_from(&g("0-1-2")), 2);
        assert!(g("0-1-12,1-1-5").progress() > g("0-1-12,1-1-4").progress());
        let have = g(&format!("{A}:1-100"));
        assert_eq!(have.missing_from(&g(&format!("{A}:1-103,{B}:1-2"))), 5);
        assert_eq!(
            g(&format!("{A}:1-50")).union(&g(&format!("{A}:40-60:62"))).to_string(),
            format!("{A}:1-60:62")
        );
    }

    #[test]
    fn huge_numbers_saturate_instead_of_overflowing() {
        // Found by the fuzz target: sums of sequence numbers a server reported.
        let huge = g(&format!("0-1-{max},1-1-{max}", max = u64::MAX));
        assert_eq!(huge.progress(), u64::MAX);
        assert_eq!(g("").missing_from(&huge), u64::MAX);
        let set = g(&format!("{A}:1-{max},{B}:1-{max}", max = u64::MAX));
        assert_eq!(set.progress(), u64::MAX);
        assert_eq!(set.missing_from(&set), 0);
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
        let executed = g(&format!("{A}:1-100,{B}:1-30"));
        assert!(executed.contains_history_of(&g(&format!("{A}:1-98"))));
        assert!(!executed.contains_history_of(&g(&format!("{A}:1-101"))));
        assert!(
            !executed.contains_history_of(&g("0-1-5")),
            "shapes that differ never match"
        );
    }
}
