//! TLS session tickets sealed with keys shared by every edge (`[web] ticket_keys`), so a client
//! that resumes on another edge than the one that issued its ticket still resumes, as nginx's
//! `ssl_session_ticket_key` allows. The file holds one key per line, each 32 random bytes in
//! base64 (`openssl rand -base64 32`): the first seals new tickets, every one opens them, so a
//! rotation adds a new first line on every edge, reloads, and drops the last line a ticket
//! lifetime later. Without the file each process makes its own keys (rustls's rotating
//! ticketer): tickets then resume only where they were issued.
//!
//! A ticket is a key id (4 bytes of the key's SHA-256), a random 12-byte nonce and the session
//! state sealed with AES-256-GCM.

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine;
use rustls::server::ProducesTickets;
use std::{path::Path, sync::Arc};

/// How long a client may keep a ticket, seconds (the hint sent with it).
const LIFETIME_S: u32 = 6 * 60 * 60;
/// Bytes of the key id in front of each ticket.
const ID_LEN: usize = 4;

/// One ticket key.
pub struct TicketKey {
    id: [u8; ID_LEN],
    key: LessSafeKey,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketKey({:02x?})", self.id)
    }
}

/// Reads the keys of a ticket key file: the first seals, all open.
pub fn read_keys(path: &Path) -> Result<Vec<TicketKey>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading ticket keys {}", path.display()))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(line)
            .ok()
            .filter(|b| b.len() == 32)
            .with_context(|| {
                format!(
                    "{} line {}: a key is 32 bytes in base64 (openssl rand -base64 32)",
                    path.display(),
                    i + 1
                )
            })?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
        let mut id = [0; ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..ID_LEN]);
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| anyhow::anyhow!("an AES-256 key"))?;
        keys.push(TicketKey {
            id,
            key: LessSafeKey::new(key),
        });
    }
    if keys.is_empty() {
        bail!("{}: no key (one per line: openssl rand -base64 32)", path.display());
    }
    Ok(keys)
}

/// Seals and opens tickets with the shared keys; a reload swaps them.
#[derive(Debug)]
pub struct SharedTicketer {
    keys: ArcSwap<Vec<TicketKey>>,
}

impl SharedTicketer {
    /// A ticketer with `keys` (at least one).
    pub fn new(keys: Vec<TicketKey>) -> Arc<Self> {
        Arc::new(Self {
            keys: ArcSwap::from_pointee(keys),
        })
    }

    /// Uses `keys` from now on (tickets sealed with a key no longer listed stop resuming).
    pub fn set_keys(&self, keys: Vec<TicketKey>) {
        self.keys.store(Arc::new(keys));
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_S
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let sealing = keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        sealing
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&sealing.id), &mut sealed)
            .ok()?;
        let mut ticket = Vec::with_capacity(ID_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&sealing.id);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < ID_LEN + NONCE_LEN {
            return None;
        }
        let (id, rest) = ticket.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys.load();
        let opening = keys.iter().find(|k| k.id == id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = sealed.to_vec();
        let plain = opening
            .key
            .open_in_place(nonce, Aad::from(&opening.id), &mut buffer)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file in the temp directory, removed when dropped.
    struct KeyFile(std::path::PathBuf);

    impl KeyFile {
        fn new(text: &str) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("foobar-tickets-{}-{n}", std::process::id()));
            std::fs::write(&path, text).expect("write");
            Self(path)
        }
    }

    impl Drop for KeyFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn keys(text: &str) -> Result<Vec<TicketKey>> {
        read_keys(&KeyFile::new(text).0)
    }

    const OLD: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const NEW: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    #[test]
    fn tickets_open_on_another_ticketer_with_the_same_keys_and_survive_a_rotation() {
        let issuer = SharedTicketer::new(keys(OLD).unwrap());
        let ticket = issuer.encrypt(b"session state").unwrap();
        // Another edge (another process) with the same file opens it.
        let other = SharedTicketer::new(keys(&format!("# shared\n{OLD}\n")).unwrap());
        assert_eq!(other.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        // Rotated: a new first key seals, the old one still opens.
        other.set_keys(keys(&format!("{NEW}\n{OLD}\n")).unwrap());
        assert_eq!(other.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        let fresh = other.encrypt(b"x").unwrap();
        assert_ne!(fresh[..ID_LEN], ticket[..ID_LEN], "the new key seals");
        // The old key dropped: its tickets no longer open; tampering never does.
        other.set_keys(keys(NEW).unwrap());
        assert_eq!(other.decrypt(&ticket), None);
        let mut forged = fresh.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(other.decrypt(&forged), None);
        assert_eq!(other.decrypt(&fresh).as_deref(), Some(&b"x"[..]));
        assert_eq!(other.decrypt(&fresh[..10]), None);
    }

    #[test]
    fn a_key_file_says_what_is_wrong() {
        let short = keys("c2hvcnQ=\n").unwrap_err().to_string();
        assert!(short.contains("line 1") && short.contains("32 bytes"), "{short}");
        let empty = keys("# nothing\n\n").unwrap_err().to_string();
        assert!(empty.contains("no key"), "{empty}");
    }
}
