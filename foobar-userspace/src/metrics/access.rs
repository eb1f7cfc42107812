//! Who may use the management listener, and over what: TLS with a configured certificate and
//! HTTP basic authentication against bcrypt hashes, in the shape of the Prometheus
//! exporter-toolkit's web configuration (`tls_server_config`, `basic_auth_users`), so the same
//! scrape configuration works against either.
//!
//! bcrypt is slow on purpose, so a scraper pays it once: a user and password that passed are
//! remembered (as a SHA-256 digest) until the process ends or the memory fills. At most two
//! hashes are checked at once, on blocking threads; an unknown user is checked against a decoy
//! hash of the same cost, so the answer's timing does not tell which users exist.

use crate::{config::monitoring::Monitoring, web::tls};
use anyhow::{Context, Result};
use base64::Engine;
use hyper::header::HeaderValue;
use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// Remembered passes at most; then the memory starts afresh.
const MAX_REMEMBERED: usize = 1024;

/// bcrypt checks running at once at most.
const CONCURRENT_CHECKS: usize = 2;

/// What the management listener refused, by kind.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Connections closed at accept over the connection caps.
    pub over_caps: AtomicU64,
    /// Connections whose TLS handshake failed or timed out.
    pub tls_handshake: AtomicU64,
    /// Requests answered 401: no credentials, or wrong ones.
    pub unauthorized: AtomicU64,
}

impl Refusals {
    /// Adds one to `counter`.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The management listener's TLS and authentication.
pub struct Access {
    tls: Option<TlsAcceptor>,
    /// bcrypt hashes by user name; empty: everyone is let in.
    users: BTreeMap<String, String>,
    /// Digests of user and password pairs that passed.
    passed: Mutex<HashSet<[u8; 32]>>,
    /// Checked instead when the user is unknown (made on first need, at the users' highest cost).
    decoy: OnceLock<String>,
    checks: Semaphore,
}

impl Access {
    /// Loads the certificate (when TLS is configured) and takes the users.
    pub fn new(m: &Monitoring) -> Result<Self> {
        let tls = match &m.tls {
            Some(files) => {
                let provider = tls::provider();
                let (certified, _) =
                    tls::load_pair(&files.cert_file, &files.key_file, &provider).map_err(|(_, e)| e)?;
                let mut config = rustls::ServerConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .context("the management listener's TLS versions")?
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(TlsAcceptor::from(Arc::new(config)))
            }
            None => None,
        };
        Ok(Self {
            tls,
            users: m.basic_auth_users.clone(),
            passed: Mutex::default(),
            decoy: OnceLock::new(),
            checks: Semaphore::new(CONCURRENT_CHECKS),
        })
    }

    /// The TLS acceptor, when connections must be TLS.
    pub fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    /// Whether a request with this `Authorization` header is let in (always, with no users).
    pub async fn allows(self: &Arc<Self>, authorization: Option<&HeaderValue>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return false;
        };
        let digest = pair_digest(&user, &password);
        if self.passed.lock().is_ok_and(|p| p.contains(&digest)) {
            return true;
        }
        let Ok(_permit) = self.checks.acquire().await else {
            return false;
        };
        let access = self.clone();
        let passed = tokio::task::spawn_blocking(move || access.verify(&user, &password))
            .await
            .unwrap_or(false);
        if passed {
            if let Ok(mut remembered) = self.passed.lock() {
                if remembered.len() >= MAX_REMEMBERED {
                    remembered.clear();
                }
                remembered.insert(digest);
            }
        }
        passed
    }

    /// The bcrypt check itself (blocking).
    fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let decoy = self.decoy.get_or_init(|| {
                    let cost = self
                        .users
                        .values()
                        .filter_map(|h| h.parse::<bcrypt::HashParts>().ok())
                        .map(|h| h.get_cost())
                        .max()
                        .unwrap_or(bcrypt::DEFAULT_COST);
                    bcrypt::hash("foobar decoy", cost).unwrap_or_default()
                });
                let _ = bcrypt::verify(password, decoy);
                false
            }
        }
    }
}

/// The user and password of a `Basic` authorization (RFC 7617), if it is one.
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// SHA-256 of a user and password pair, as remembered.
fn pair_digest(user: &str, password: &str) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(user.as_bytes());
    context.update(&[0]);
    context.update(password.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// A bcrypt hash of `password` at `cost` (for `foobar hash-password`).
pub fn hash_password(password: &str, cost: u32) -> Result<String> {
    bcrypt::hash(password, cost).context("hashing the password")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(users: &[(&str, &str)]) -> Arc<Access> {
        Arc::new(Access {
            tls: None,
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), bcrypt::hash(p, 4).unwrap()))
                .collect(),
            passed: Mutex::default(),
            decoy: OnceLock::new(),
            checks: Semaphore::new(CONCURRENT_CHECKS),
        })
    }

    fn basic(user_password: &str) -> HeaderValue {
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_password);
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    #[tokio::test]
    async fn only_a_configured_user_with_the_right_password_passes() {
        let a = access(&[("prometheus", "s3cret:with colon")]);
        assert!(a.allows(Some(&basic("prometheus:s3cret:with colon"))).await);
        // Remembered: passes again without bcrypt.
        assert_eq!(a.passed.lock().unwrap().len(), 1);
        assert!(a.allows(Some(&basic("prometheus:s3cret:with colon"))).await);
        for refused in ["prometheus:wrong", "nobody:s3cret:with colon", "prometheus", ""] {
            assert!(!a.allows(Some(&basic(refused))).await, "{refused:?}");
        }
        assert!(a.decoy.get().is_some(), "an unknown user is checked against the decoy");
        assert!(!a.allows(None).await);
        assert!(!a.allows(Some(&HeaderValue::from_static("Bearer abc"))).await);
        assert!(!a.allows(Some(&HeaderValue::from_static("Basic not-base64!"))).await);
        assert!(access(&[]).allows(None).await, "no users: open");
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let value = HeaderValue::from_static("bAsIc dTpw");
        assert_eq!(basic_credentials(&value), Some(("u".into(), "p".into())));
    }
}
