//! Host-name tables: exact names and `*.suffix` wildcards, case-insensitive, looked up the same
//! way for certificate choice by SNI and for routing requests to sites.

use std::collections::HashMap;

/// Values by host name.
#[derive(Debug)]
pub struct NameTable<T> {
    exact: HashMap<String, T>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, T>,
}

impl<T> Default for NameTable<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<T> NameTable<T> {
    /// The value for `name` (`host` or `*.suffix`), inserted with `T::default()` when new.
    pub fn entry(&mut self, name: &str) -> &mut T
    where
        T: Default,
    {
        let name = name.to_ascii_lowercase();
        match name.strip_prefix("*.") {
            Some(suffix) => self.wildcard.entry(suffix.to_string()),
            None => self.exact.entry(name),
        }
        .or_default()
    }

    /// Sets the value for `name` (`host` or `*.suffix`).
    pub fn insert(&mut self, name: &str, value: T) {
        let name = name.to_ascii_lowercase();
        match name.strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.to_string(), value),
            None => self.exact.insert(name, value),
        };
    }

    /// The value for a host: its exact name, else a wildcard one label up.
    pub fn get(&self, host: &str) -> Option<&T> {
        let host = host.to_ascii_lowercase();
        self.exact
            .get(&host)
            .or_else(|| host.split_once('.').and_then(|(_, suffix)| self.wildcard.get(suffix)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_win_over_wildcards_one_label_deep() {
        let mut t = NameTable::default();
        t.insert("*.Foobar.com", 1);
        t.insert("www.foobar.com", 2);
        assert_eq!(t.get("WWW.foobar.com"), Some(&2));
        assert_eq!(t.get("api.foobar.com"), Some(&1));
        assert_eq!(t.get("a.b.foobar.com"), None);
        assert_eq!(t.get("foobar.com"), None);
    }
}
