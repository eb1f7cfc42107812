//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) with exact weights.
//!
//! Each backend gets a permutation of the table's slots from two hashes of its identity and the
//! configured seed; backends take turns claiming their next preferred free slot. Unlike the
//! paper's (and Katran's) weighting, each backend's share is fixed up front to
//! `M * weight / total` by largest remainder, and a backend stops claiming once it has its
//! share, so weights are honoured to the slot. The result depends only on the seed, the
//! backends' identities and weights, and their order, so two nodes with the same configuration
//! compute identical tables.

/// Table entry of a slot no candidate took (every weight is zero).
pub const NO_CANDIDATE: u32 = u32::MAX;

/// Default table size: the classic prime, > 100 x backends for up to 655 backends.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// One candidate backend: an identity that is stable across nodes and restarts, and a weight.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    /// Stable identity (e.g. the backend's address as text).
    pub identity: &'a str,
    /// Relative weight; 0 takes no slots (drain).
    pub weight: u32,
}

/// Builds a table of `size` slots (a prime) whose entries index `candidates`; slots are
/// [`NO_CANDIDATE`] when no candidate has a positive weight.
pub fn build_table(seed: u64, candidates: &[Candidate<'_>], size: u32) -> Vec<u32> {
    let m = size as u64;
    let mut table = vec![NO_CANDIDATE; size as usize];
    let quotas = quotas(candidates, size);
    let total: u64 = quotas.iter().sum();
    if total == 0 {
        return table;
    }
    let perms: Vec<(u64, u64)> = candidates
        .iter()
        .map(|c| {
            let offset = hash(seed, 0x6f66_6673_6574, c.identity) % m;
            let skip = hash(seed, 0x736b_6970, c.identity) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; candidates.len()];
    let mut taken = vec![0u64; candidates.len()];
    let mut filled = 0u64;
    while filled < total {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            if taken[i] == quotas[i] {
                continue;
            }
            loop {
                let slot = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if table[slot] == NO_CANDIDATE {
                    table[slot] = i as u32;
                    taken[i] += 1;
                    filled += 1;
                    break;
                }
            }
            if filled == total {
                break;
            }
        }
    }
    table
}

/// Each candidate's number of slots: `size * weight / total`, remainders given out largest
/// first (ties to the earlier candidate), so the shares sum to `size` exactly.
fn quotas(candidates: &[Candidate<'_>], size: u32) -> Vec<u64> {
    let total: u64 = candidates.iter().map(|c| c.weight as u64).sum();
    if total == 0 {
        return vec![0; candidates.len()];
    }
    let m = size as u64;
    let mut quotas: Vec<u64> = candidates.iter().map(|c| m * c.weight as u64 / total).collect();
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(m * candidates[i].weight as u64 % total));
    let short = m - quotas.iter().sum::<u64>();
    for &i in order.iter().take(short as usize) {
        quotas[i] += 1;
    }
    quotas
}

/// FNV-1a over the seed, a domain tag and the identity, finished with the splitmix64 mixer:
/// stable across builds and platforms (unlike std's hasher).
fn hash(seed: u64, domain: u64, identity: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed
        .to_le_bytes()
        .iter()
        .chain(&domain.to_le_bytes())
        .chain(identity.as_bytes())
    {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// True when `n` is prime (table sizes must be).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = n as u64;
    (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256))
            .collect()
    }

    fn equal(names: &[String]) -> Vec<Candidate<'_>> {
        names.iter().map(|n| Candidate { identity: n, weight: 1 }).collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for &b in table {
            c[b as usize] += 1;
        }
        c
    }

    #[test]
    fn balance_within_one_percent_up_to_1000_backends() {
        for n in [1usize, 2, 3, 10, 100, 1000] {
            let names = names(n);
            let table = build_table(7, &equal(&names), DEFAULT_TABLE_SIZE);
            assert!(table.iter().all(|&b| (b as usize) < n));
            let ideal = DEFAULT_TABLE_SIZE as f64 / n as f64;
            for (i, c) in counts(&table, n).into_iter().enumerate() {
                let dev = (c as f64 - ideal).abs() / ideal;
                assert!(
                    dev <= 0.01 || (c as f64 - ideal).abs() <= 1.0,
                    "n={n} backend {i}: {c} vs {ideal}"
                );
            }
        }
    }

    #[test]
    fn removing_one_backend_moves_little() {
        for n in [5usize, 10, 50, 100, 1000] {
            let names = names(n);
            let before = build_table(7, &equal(&names), DEFAULT_TABLE_SIZE);
            let removed = n / 2;
            let rest: Vec<String> = names
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != removed)
                .map(|(_, s)| s.clone())
                .collect();
            let after = build_table(7, &equal(&rest), DEFAULT_TABLE_SIZE);
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| names[**b as usize] != rest[**a as usize])
                .count();
            let share = moved as f64 / DEFAULT_TABLE_SIZE as f64;
            assert!(share <= 1.0 / n as f64 + 0.01, "n={n}: moved {share}");
        }
    }

    #[test]
    fn weights_are_exact() {
        let names = names(4);
        let weights = [1u32, 2, 3, 0];
        let cands: Vec<Candidate<'_>> = names
            .iter()
            .zip(weights)
            .map(|(n, w)| Candidate { identity: n, weight: w })
            .collect();
        let c = counts(&build_table(1, &cands, 65537), 4);
        assert_eq!(c.iter().sum::<u64>(), 65537);
        // 65537 * w / 6 = 10922.83, 21845.67, 32768.5: largest remainders get the 2 extra slots.
        assert_eq!(c, vec![10923, 21846, 32768, 0]);
    }

    #[test]
    fn identical_across_runs_and_seed_sensitive() {
        let names = names(50);
        let a = build_table(42, &equal(&names), 65537);
        let b = build_table(42, &equal(&names), 65537);
        assert_eq!(a, b);
        let c = build_table(43, &equal(&names), 65537);
        assert_ne!(a, c);
    }

    #[test]
    fn no_weight_means_no_backend() {
        let names = names(2);
        let cands: Vec<Candidate<'_>> = names.iter().map(|n| Candidate { identity: n, weight: 0 }).collect();
        assert!(build_table(1, &cands, 251).iter().all(|&b| b == NO_CANDIDATE));
        assert!(build_table(1, &[], 251).iter().all(|&b| b == NO_CANDIDATE));
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(251) && is_prime(2));
        assert!(!is_prime(65536) && !is_prime(1) && !is_prime(0));
    }
}
